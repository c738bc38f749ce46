"""Shared memory between a worker and the engine, and the layout of tensors in it.

Memory is a memfd (anonymous shared memory): it has no name in /dev/shm, its file descriptor
travels over the control socket (SCM_RIGHTS), and the kernel frees it when the last process that
maps it exits. So no segment can outlive the server, whatever kills it, and no resource tracker is
involved.

Each worker owns one arena (allocated by the worker, reused); a request takes one chunk of it for
its inputs and room for its outputs, which the engine writes in place. Numeric tensors are the raw
array bytes; BYTES tensors are Triton's binary layout: each element a 4-byte little-endian length,
then the bytes.
Strings that are all str cross instead as fixed-width UCS4 (numpy unicode, datatype ``STR:<chars>``): the
worker converts them in one pass in C and the engine maps them as a view, where the BYTES layout costs
Python work per element on both sides. Bytes (which need not be UTF-8) and strings much wider than
their BYTES layout keep that layout (:func:`transport_strings`).
"""

from __future__ import annotations

import bisect
import math
import mmap
import os
import struct
from typing import Any

import numpy as np

from runtime.serving.datatypes import numpy_to_wire, serialize_bytes, wire_to_numpy
from runtime.serving.tensors import to_bytes_array

ALIGN = 64
# A tensor for the peer: name, datatype, shape, buf (0: the arena, n: the frame's n-th fd), offset, nbytes.
Meta = dict[str, Any]
_LENGTH = struct.Struct("<I")
# The transport's own datatype for numpy unicode (UCS4) tensors, followed by the characters per element.
STR = "STR:"
# Fixed-width strings cross as such while they take at most this many times their BYTES layout's room, or
# at most SMALL_STRINGS bytes (BiDAF's words: 1.8 kB, 5.8 times their BYTES layout; padding that small is free).
WIDE_FACTOR = 4
SMALL_STRINGS = 64 << 10
_STR_TYPES = {str, np.str_}


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Region:
    """One shared-memory file mapped here; ``fd`` stays open while we may send it."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.map = mmap.mmap(fd, size) if size > 0 else None

    @classmethod
    def create(cls, name: str, size: int) -> Region:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, max(size, 1))
        return cls(fd, max(size, 1))

    @classmethod
    def attach(cls, fd: int) -> Region:
        return cls(fd, os.fstat(fd).st_size)

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        assert self.map is not None
        return np.frombuffer(self.map, np.uint8, nbytes, offset)

    def close_fd(self) -> None:
        """Close the descriptor; the mapping (and arrays on it) stay valid."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Allocator:
    """First fit over free blocks kept sorted by offset, merged on free."""

    def __init__(self, size: int) -> None:
        self._offsets = [0]
        self._sizes = [size]

    def alloc(self, size: int) -> int | None:
        size = align(max(size, 1))
        for i, free in enumerate(self._sizes):
            if free >= size:
                offset = self._offsets[i]
                if free == size:
                    del self._offsets[i], self._sizes[i]
                else:
                    self._offsets[i] += size
                    self._sizes[i] -= size
                return offset
        return None

    def free(self, offset: int, size: int) -> None:
        size = align(max(size, 1))
        i = bisect.bisect_left(self._offsets, offset)
        self._offsets.insert(i, offset)
        self._sizes.insert(i, size)
        if i + 1 < len(self._offsets) and offset + size == self._offsets[i + 1]:
            self._sizes[i] += self._sizes.pop(i + 1)
            self._offsets.pop(i + 1)
        if i > 0 and self._offsets[i - 1] + self._sizes[i - 1] == offset:
            self._sizes[i - 1] += self._sizes.pop(i)
            self._offsets.pop(i)

    @property
    def free_bytes(self) -> int:
        return sum(self._sizes)


def tensor_nbytes(array: np.ndarray) -> int:
    if array.dtype.kind == "O":
        return sum(_LENGTH.size + len(item) for item in array.reshape(-1))
    return int(array.nbytes)


def transport_strings(array: np.ndarray) -> np.ndarray:
    """A string tensor (numpy unicode or bytes, or an object array) in the layout it crosses in cheapest.

    Numpy unicode when every element is a str and the fixed width costs at most WIDE_FACTOR times the
    BYTES layout or SMALL_STRINGS bytes (one long element among many short ones would make it huge);
    otherwise an object array of bytes (str UTF-8 encoded), whose bytes arrive exactly as sent.
    """
    flat = array.reshape(-1)
    if array.dtype.kind == "U":
        chars = array.itemsize // 4
        if array.dtype.byteorder != ">" and chars and _narrow(chars, flat.size, int(np.strings.str_len(flat).sum())):
            return array
    elif array.dtype.kind == "O" and flat.size:
        items = flat.tolist()  # passes over a list, in C: several times faster than over the object array
        if not set(map(type, items)) <= _STR_TYPES:
            return to_bytes_array(array)
        lengths = np.fromiter(map(len, items), np.int64, flat.size)
        total, longest = int(lengths.sum()), max(int(lengths.max()), 1)
        if _narrow(longest, flat.size, total):
            unicode = array.astype(f"<U{longest}")  # the width given: np.asarray(dtype=str) would scan for it
            # numpy drops trailing NULs: such strings keep the BYTES layout, which keeps them.
            if int(np.strings.str_len(unicode).sum()) == total:
                return unicode
    return to_bytes_array(array)


def _narrow(chars: int, size: int, total_chars: int) -> bool:
    # The BYTES layout takes at least 4 bytes per element plus one per character.
    return chars * 4 * size <= max(WIDE_FACTOR * (4 * size + total_chars), SMALL_STRINGS)


def tensor_datatype(array: np.ndarray) -> str:
    """The datatype a tensor crosses with: BYTES for an object array, STR:<chars> for numpy unicode."""
    kind = array.dtype.kind
    if kind == "O":
        return "BYTES"
    if kind == "U":
        return f"{STR}{array.itemsize // 4}"
    return numpy_to_wire(array.dtype)


def write_tensor(target: np.ndarray, array: np.ndarray) -> str:
    """Copy ``array`` (numeric, numpy unicode, or an object array of bytes) into ``target`` (uint8,
    tensor_nbytes long).

    Returns the tensor's datatype.
    """
    if array.dtype.kind != "O":
        # Unless an instance process wrote it there already. (may_share_memory compares bounds: a fraction of
        # a microsecond, where each __array_interface__ builds a dict.)
        if not np.may_share_memory(array, target) or _start(array) != _start(target):
            target.view(array.dtype).reshape(array.shape)[...] = array
        return tensor_datatype(array)
    target[:] = np.frombuffer(serialize_bytes(array), np.uint8)
    return "BYTES"


def _start(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def write_tensors(space: np.ndarray, offset: int, tensors: list[tuple[str, np.ndarray, int]], buf: int) -> list[Meta]:
    """Write ``(name, array, nbytes)`` one after the other from ``offset``; their metadata for the peer."""
    metas = []
    for name, array, size in tensors:
        datatype = write_tensor(space[offset : offset + size], array)
        metas.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "buf": buf,
                "offset": offset,
                "nbytes": size,
            }
        )
        offset += align(size)
    return metas


def read_tensor(raw: np.ndarray, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor in ``raw`` (uint8): a view for numbers and STR, an object array of bytes for BYTES."""
    if datatype.startswith(STR):
        return raw.view(f"<U{datatype[len(STR) :]}").reshape(shape)
    if datatype != "BYTES":
        return raw.view(wire_to_numpy(datatype)).reshape(shape)
    out = np.empty(math.prod(shape), dtype=np.object_)
    data = raw.tobytes()
    position = 0
    for i in range(out.size):
        (length,) = _LENGTH.unpack_from(data, position)
        position += _LENGTH.size
        out[i] = data[position : position + length]
        position += length
    return out.reshape(shape)
