"""Control frames between a worker and the engine over one Unix stream socket.

A frame is a fixed header (metadata length, attached file descriptors, request id) and small JSON
metadata (orjson: microseconds a frame); tensor bytes never cross the socket, but memfd descriptors
may ride along (SCM_RIGHTS).
Requests are multiplexed by id. Everything runs on the event loop's thread, without extra tasks:
the socket is non-blocking and read from a reader callback.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

logger = logging.getLogger("runtime.engine")

HEADER = struct.Struct("<IIQ")
MAX_FDS = 32  # per frame, and per sendmsg when frames are joined
MAX_META = 16 * 1024 * 1024
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * 4)
_NONE: list[int] = []  # shared, never mutated: frames without descriptors
# A plain int: socket.MSG_CTRUNC is an IntFlag member, and ``flags & socket.MSG_CTRUNC`` built one per read (3 µs).
_CTRUNC = int(socket.MSG_CTRUNC)

Meta = dict[str, Any]
OnFrame = Callable[[int, Meta, list[int]], None]


def socket_address(address: str) -> str:
    """``@name`` is a Linux abstract socket (nothing on disk to clean up); anything else is a path."""
    return "\0" + address[1:] if address.startswith("@") else address


class ChannelClosed(ConnectionError):
    pass


class Channel:
    def __init__(
        self,
        sock: socket.socket,
        on_frame: OnFrame,
        on_close: Callable[[], None],
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        """``on_drained``: called once the frames of a read are handled (none left whole in what was read)."""
        self.sock = sock
        self.sock.setblocking(False)
        self._on_frame = on_frame
        self._on_drained = on_drained
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._scratch = memoryview(bytearray(1 << 16))  # read into, not a new bytes object per read
        self._fds: collections.deque[int] = collections.deque()
        # Frames not yet sent: data, descriptors to attach, descriptors to close once sent.
        self._out: collections.deque[tuple[bytes, list[int], list[int]]] = collections.deque()
        self._writing = False
        self._flush_scheduled: asyncio.Handle | None = None
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    def send(self, rid: int, meta: Meta, fds: Sequence[int] = (), give: bool = False) -> None:
        """Queue a frame; frames queued in one turn of the event loop leave in one ``sendmsg``.

        With ``give``, the channel closes ``fds`` once they are sent (or the connection closes, or the frame
        cannot be sent at all).
        """
        try:
            if self.closed:
                raise ChannelClosed("the connection is closed")
            if len(fds) > MAX_FDS:
                raise ValueError(f"a frame carries at most {MAX_FDS} descriptors")
            body = orjson.dumps(meta)
        except BaseException:
            if give:
                close_all(fds)
            raise
        attached = list(fds) if fds else _NONE
        self._out.append((HEADER.pack(len(body), len(fds), rid) + body, attached, attached if give else _NONE))
        if self._flush_scheduled is None and not self._writing:
            self._flush_scheduled = self._loop.call_soon(self._flush)

    def flush(self) -> None:
        """Send what is queued now, not in the next turn of the loop (the caller has sent all it will)."""
        if self._flush_scheduled is not None:
            self._flush_scheduled.cancel()
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = None
        while self._out and not self.closed:
            # Join what is queued (the peer takes the descriptors in frame order, whichever read brings them).
            parts: list[bytes] = []
            fds: list[int] = []
            owned: list[int] = []
            while self._out and len(fds) + len(self._out[0][1]) <= MAX_FDS:
                data, more, mine = self._out.popleft()
                parts.append(data)
                fds += more
                owned += mine
            payload = b"".join(parts)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                sent = self.sock.sendmsg([payload], ancillary)
            except BlockingIOError:
                self._out.appendleft((payload, fds, owned))
                self._want_writable(True)
                return
            except OSError:
                self._out.appendleft((payload, [], owned))
                self.close()
                return
            for fd in owned:  # the descriptors went with the first byte
                _close_quietly(fd)
            if sent < len(payload):
                self._out.appendleft((payload[sent:], [], []))
                self._want_writable(True)
                return
        self._want_writable(False)

    def _want_writable(self, wanted: bool) -> None:
        if wanted != self._writing:
            self._writing = wanted
            if wanted:
                self._loop.add_writer(self.sock.fileno(), self._flush)
            else:
                self._loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        while True:
            try:
                size, ancillary, flags, _ = self.sock.recvmsg_into([self._scratch], _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                size, ancillary, flags = 0, [], 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not size:
                self.close()
                return
            self._buffer += self._scratch[:size]
            if flags & _CTRUNC:
                logger.error("Control frame lost file descriptors (MSG_CTRUNC); closing the connection")
                self.close()
                return
            if size < len(self._scratch):
                break  # drained: no second recvmsg (and its exception) per wake-up; the loop calls again for more
        self._dispatch()

    def _dispatch(self) -> None:
        buffer = self._buffer
        position = 0
        while len(buffer) - position >= HEADER.size:
            length, nfds, rid = HEADER.unpack_from(buffer, position)
            if length > MAX_META or nfds > MAX_FDS:
                logger.error("Malformed control frame (%d bytes, %d fds); closing the connection", length, nfds)
                self.close()
                return
            end = position + HEADER.size + length
            if len(buffer) < end:
                break
            meta = orjson.loads(memoryview(buffer)[position + HEADER.size : end])
            fds = [self._fds.popleft() for _ in range(min(nfds, len(self._fds)))]
            position = end
            try:
                self._on_frame(rid, meta, fds)
            except Exception:
                # One frame's failure is its own: the frames after it are handled now (not when more bytes come,
                # if ever), and the frames before it are not handled again on the next read.
                logger.exception("Control frame %d (%r) could not be handled", rid, meta.get("op"))
            if self.closed:
                return
        del buffer[:position]
        if self._on_drained is not None and position:
            self._on_drained()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            self._loop.remove_writer(fileno)
        self.sock.close()
        while self._fds:
            _close_quietly(self._fds.popleft())
        for _, _, owned in self._out:
            for fd in owned:
                _close_quietly(fd)
        self._out.clear()
        self._on_close()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        _close_quietly(fd)
