"""An instance process (``runtime-inst``): one model instance, run in a process of its own.

The engine starts one per instance when instance processes apply (``RUNTIME_INSTANCE_PROCESSES``,
:mod:`.remote`) and keeps the sockets, the batcher and the queue. This process's only Python thread
runs the model: a TorchScript forward releases and retakes the GIL at every operator, and in the
engine each retake waited for the event loop (a DenseNet-121 batch took 63 ms instead of 15 on an H100).

It maps the shared-memory regions the engine passes (the workers' arenas, by SCM_RIGHTS, once each),
reads a batch's inputs where the workers wrote them, joins them, runs the model and writes each
request's outputs into the room reserved next to its inputs. Control frames are small JSON messages
on a SOCK_SEQPACKET socket pair, one message a frame, descriptors attached::

    engine -> {"op": "forget", "forget": [key, ...]} (no answer: regions gone while the process was idle)
    engine -> {"op": "run", "regions": [key, ...] (one per attached fd), "forget": [key, ...],
               "parts": [{"inputs": [{name, datatype, shape, region, offset, nbytes}], "reply": [key, offset, room]}]}
    instance -> {"op": "done", "parts": [{"placed": true|false, "outputs": [meta, ...]}], "out": size (fd attached)}
              | {"op": "error", "message": ...} | {"op": "too_large"} (the answer would exceed MAX_FRAME)

A frame over MAX_FRAME is refused before it is sent (the reader's buffer holds MAX_FRAME): the engine
then runs the batch in halves.

Outputs that do not fit the reserved room (BYTES, dynamic shapes, a request without room) go into this
process's own output region instead, which the engine copies from. The process exits when the socket
closes (the engine stopped or died) and, by PR_SET_PDEATHSIG, when the engine dies.
"""

from __future__ import annotations

import argparse
import array
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from runtime.errors import STARTUP_EXIT_CODE, StartupError
from runtime.prctl import name_and_tie_to_parent
from runtime.serving.batching import check_rows, join
from runtime.serving.engine.arena import Region, align, read_tensor, tensor_nbytes, write_tensors
from runtime.serving.tensors import to_bytes_array

logger = logging.getLogger("runtime.engine")

PROCESS_NAME = b"runtime-inst"
MAX_FRAME = 1 << 20
MAX_FDS = 16
Meta = dict[str, Any]
Tensors = dict[str, np.ndarray]


# -- frames (both sides) -------------------------------------------------------------------------
class FrameTooLarge(ValueError):
    """A message over :data:`MAX_FRAME`, refused before it is sent (the peer reads into MAX_FRAME)."""


def send(sock: socket.socket, meta: Meta, fds: Sequence[int] = ()) -> None:
    data = orjson.dumps(meta)
    if len(data) > MAX_FRAME:
        raise FrameTooLarge(f"a control frame of {len(data)} bytes exceeds the limit of {MAX_FRAME} bytes")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class Receiver:
    """Reads frames from one socket into a buffer of its own (a fresh 1 MiB bytes per frame costs more
    than the rest of a round trip)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(MAX_FRAME)
        self._view = memoryview(self._buffer)

    def __call__(self) -> tuple[Meta, list[int]]:
        """The next frame; EOFError when the peer is gone."""
        size, ancillary, flags, _ = self.sock.recvmsg_into([self._buffer], _ANCILLARY)
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not size or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            raise EOFError("the peer closed the connection" if not size else "a control frame was truncated")
        return orjson.loads(self._view[:size]), list(fds)


# -- the instance process ------------------------------------------------------------------------
def name_process(parent: int) -> None:
    """``runtime-inst`` in /proc/PID/comm; SIGKILL when the engine dies (nothing here needs cleaning up)."""
    name_and_tie_to_parent(PROCESS_NAME, signal.SIGKILL)
    if os.getppid() != parent:  # the engine died before the death signal was armed
        os._exit(0)


class InstanceServer:
    def __init__(
        self,
        sock: socket.socket,
        instance: Any,
        batched: bool,
        strings: frozenset[str] = frozenset(),
        name: str = "model",
    ) -> None:
        self.sock = sock
        self.name = name  # the model's, for errors
        self.instance = instance
        self.batched = batched
        # Outputs declared BYTES are converted here, as the engine would: a number placed in the reply room
        # and converted there would grow over the outputs placed after it.
        self.strings = strings
        self.regions: dict[int, np.ndarray] = {}
        self.out: Region | None = None
        self.receive = Receiver(sock)

    def serve(self) -> None:
        while True:
            try:
                meta, fds = self.receive()
            except (EOFError, OSError):
                return
            if meta.get("op") == "forget":
                for key in meta["forget"]:
                    self.regions.pop(key, None)  # the last view of the mapping: munmap
                continue
            try:
                answer, attach = self.run(meta, fds)
            except Exception as ex:  # the engine logs it and fails the batch with its usual 500
                answer, attach = {"op": "error", "message": f"{type(ex).__name__}: {ex}"}, []
            try:
                send(self.sock, answer, attach)
            except FrameTooLarge:  # the engine splits the batch and sends it again
                if answer.get("out") is not None and self.out is not None:
                    self.out.close_fd()  # the engine never got this region: the next batch sends a new one
                    self.out = None
                send(self.sock, {"op": "too_large"})
            except OSError:
                return  # the engine is gone
            if self.out is not None:
                self.out.close_fd()  # sent (or never to be): the mapping is what this process needs

    def run(self, meta: Meta, fds: list[int]) -> tuple[Meta, list[int]]:
        for key, fd in zip(meta.get("regions", []), fds, strict=True):
            region = Region.attach(fd)
            region.close_fd()
            self.regions[key] = region.view(0, region.size)
        for key in meta.get("forget", []):
            self.regions.pop(key, None)
        parts: list[Tensors] = []
        for part in meta["parts"]:
            inputs = {}
            for t in part["inputs"]:
                raw = self.regions[t["region"]][t["offset"] : t["offset"] + t["nbytes"]]
                inputs[t["name"]] = read_tensor(raw, t["datatype"], tuple(t["shape"]))
            parts.append(inputs)
        inputs = join(parts)
        outputs = self.instance.run(inputs)
        if self.batched:
            check_rows(outputs, int(next(iter(inputs.values())).shape[0]), self.name)
        answers: list[Meta] = []
        spill: list[tuple[int, list[tuple[str, np.ndarray, int]]]] = []
        start = 0
        for index, (part, inputs) in enumerate(zip(meta["parts"], parts, strict=True)):
            size = int(next(iter(inputs.values())).shape[0]) if self.batched else 0
            tensors = []
            for name, value in outputs.items():
                array = value[start : start + size] if self.batched else value
                strings = array.dtype.kind in "OSU" or name in self.strings
                array = to_bytes_array(array) if strings else np.ascontiguousarray(array)
                tensors.append((name, array, tensor_nbytes(array)))
            start += size
            reply = part.get("reply")
            numeric = all(a.dtype.kind != "O" for _, a, _ in tensors)
            if reply and numeric and reply[0] in self.regions and sum(align(n) for *_, n in tensors) <= reply[2]:
                answers.append({"placed": True, "outputs": write_tensors(self.regions[reply[0]], reply[1], tensors, 0)})
            else:
                answers.append({"placed": False, "outputs": []})
                spill.append((index, tensors))
        answer: Meta = {"op": "done", "parts": answers}
        attach: list[int] = []
        if spill:
            total = sum(align(n) for _, tensors in spill for *_, n in tensors)
            if self.out is None or self.out.size < total:
                self.out = Region.create("runtime-inst-out", max(total, 2 * (self.out.size if self.out else 0)))
                answer["out"] = self.out.size
                attach.append(self.out.fd)
            space = self.out.view(0, self.out.size)
            offset = 0
            for index, tensors in spill:
                answers[index]["outputs"] = write_tensors(space, offset, tensors, 1)
                offset += sum(align(n) for *_, n in tensors)
        return answer, attach


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtime-inst")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--device", default="cpu", help="cpu, or gpu:N")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    args = parser.parse_args(argv)
    name_process(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when its instances stop
    from pathlib import Path

    from runtime.logs import configure
    from runtime.serving import platforms
    from runtime.serving.repository import load_model
    from runtime.settings import Settings

    configure(args.log_level, args.log_format)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=args.socket_fd)
    kind, _, index = args.device.partition(":")
    device = platforms.Device("gpu", int(index)) if kind == "gpu" else platforms.Device("cpu")
    try:
        platforms.configure(Settings.from_env())
        config = load_model(Path(args.model_path))
        instance = platforms.load_instance(config, args.version, device, args.threads)
    except StartupError as ex:
        send(sock, {"op": "failed", "message": str(ex)})
        return STARTUP_EXIT_CODE
    send(sock, {"op": "ready", "pid": os.getpid()})
    strings = frozenset(t.name for t in config.outputs if t.datatype == "BYTES")
    InstanceServer(sock, instance, config.max_batch_size > 0, strings, config.name).serve()
    instance.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
