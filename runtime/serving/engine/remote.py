"""The engine's side of instance processes (:mod:`.instance`): when they apply, start, feed, restart.

A :class:`RemoteInstance` stands where an in-process instance would (the runner's thread for that
instance calls it and waits, with the GIL released), and hands the instance process a batch as
descriptors: for every request, where its inputs lie (region key, offset, datatype, shape) and the room
reserved for its outputs. The regions are the workers' arenas, registered in :data:`REGIONS` when a worker
connects; their descriptors travel to an instance process once (SCM_RIGHTS). An input that lies in no
registered region (warm-up samples, BYTES the engine decoded) is copied into a scratch region first.

Each request's inputs (:class:`Request`) record whether an instance process holds them: a worker's
cancel then waits for the batch instead of freeing room the process may still write into.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import ServiceUnavailable, ServingError, StartupError
from runtime.serving.engine.arena import (
    ALIGN,
    Meta,
    Region,
    align,
    read_tensor,
    tensor_datatype,
    tensor_nbytes,
    write_tensor,
)
from runtime.serving.engine.channel import close_all
from runtime.serving.engine.instance import MAX_FDS, MAX_FRAME, FrameTooLarge, Receiver, send

if TYPE_CHECKING:
    from runtime.serving.platforms import Device
    from runtime.serving.repository import ModelConfig

logger = logging.getLogger("runtime.engine")

RESTART_WAIT_S = 120.0  # how long a batch waits for its instance process to come back
CLOSE_WAIT_S = 5.0  # how long close() waits for a process after SIGTERM before SIGKILL
# Processes are started from this one long-lived thread: PR_SET_PDEATHSIG fires when the thread that forked
# the child exits, and the threads that load models or notice a death do not live as long as the engine.
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="instance-spawner")
# Tells instance processes busy with a batch, once it is done, to unmap the regions that went meanwhile.
_FORGETTER = ThreadPoolExecutor(1, thread_name_prefix="instance-forgetter")
LOGGING = {"level": "INFO", "format": "text"}  # the engine's, for its instance processes


def applies(mode: str, device: Device) -> bool:
    """``auto``: GPU instances (whose forward contends for the GIL with the event loop); ``on``/``off``: all or none."""
    return mode == "on" or (mode == "auto" and device.kind == "gpu")


class Regions:
    """The shared-memory regions mapped in the engine that instance processes may read and write."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._starts: list[int] = []  # sorted addresses, and alongside them:
        self._spans: list[tuple[int, int]] = []  # (end address, key)
        self._owned: dict[int, tuple[int, np.ndarray]] = {}  # key -> (fd, view)
        self._listeners: list[Callable[[int], None]] = []  # told of every removal (after it)

    def add(self, fd: int, view: np.ndarray) -> int:
        """Register a mapping; the registry owns ``fd`` from now on."""
        start = int(view.__array_interface__["data"][0])
        with self._lock:
            key = next(self._keys)
            i = bisect.bisect(self._starts, start)
            self._starts.insert(i, start)
            self._spans.insert(i, (start + view.nbytes, key))
            self._owned[key] = (fd, view)
        return key

    def remove(self, key: int) -> None:
        with self._lock:
            fd, _ = self._owned.pop(key)
            i = next(i for i, (_, k) in enumerate(self._spans) if k == key)
            del self._starts[i], self._spans[i]
            os.close(fd)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(key)

    def listen(self, listener: Callable[[int], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener: Callable[[int], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):  # a second close()
            self._listeners.remove(listener)

    def find(self, array: np.ndarray) -> tuple[int, int] | None:
        """(key, offset) of a C-contiguous array lying in a registered region; None otherwise."""
        if not array.flags.c_contiguous or array.dtype.kind == "O":
            return None
        start = int(array.__array_interface__["data"][0])
        with self._lock:
            i = bisect.bisect(self._starts, start) - 1
            if i < 0:
                return None
            end, key = self._spans[i]
            return (key, start - self._starts[i]) if start + array.nbytes <= end else None

    def view(self, key: int) -> np.ndarray | None:
        with self._lock:
            owned = self._owned.get(key)
        return owned[1] if owned else None

    def dup(self, key: int) -> int | None:
        """A descriptor of the region to send (the registry may close its own meanwhile)."""
        with self._lock:
            owned = self._owned.get(key)
            return os.dup(owned[0]) if owned else None

    def keys(self) -> set[int]:
        with self._lock:
            return set(self._owned)


REGIONS = Regions()
_HOLD = threading.Lock()
QUEUED, HELD, DROPPED = 0, 1, 2
Tensors = dict[str, np.ndarray]


class Request(dict[str, np.ndarray]):
    """A request's inputs, with where its outputs go: ``reply`` is (region key, offset, room)."""

    __slots__ = ("reply", "state")

    def __init__(self, reply: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.reply = reply
        self.state = QUEUED

    def drop(self) -> bool:
        """A cancel: False while an instance process holds the inputs (the answer then comes when it is done)."""
        with _HOLD:
            if self.state == HELD:
                return False
            self.state = DROPPED
            return True


class InstanceLost(ServiceUnavailable):
    def __init__(self, what: str) -> None:
        super().__init__(f"The model engine (runtime-engine) lost {what}; it is restarting it. Retry shortly.")


class RemoteInstance:
    """One instance of a model version in its own process."""

    def __init__(self, config: ModelConfig, version: str, device: Device, threads: int) -> None:
        self.device = device
        self.config = config
        self._version = version
        self._threads = threads
        self._lock = threading.Lock()  # one batch at a time, as an in-process instance runs
        self._ready = threading.Event()
        self._closing = False
        self._sock: socket.socket | None = None
        self._receive: Receiver | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sent: set[int] = set()
        self._out: np.ndarray | None = None
        self._scratch: tuple[int, Region] | None = None
        self._starting: socket.socket | None = None
        self._restart_failed = False  # batches fail at once instead of waiting for a restart that keeps failing
        self._life = threading.Lock()  # _closing against the swap of the process a restart starts
        self._restarter: threading.Thread | None = None
        self._closed = threading.Event()  # wakes a restart waiting to retry
        REGIONS.listen(self._region_removed)
        self._spawn()  # loads meanwhile: wait_ready() waits for it (load_runners, before the first batch)

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def _command(self, fd: int) -> list[str]:
        where = "cpu" if self.device.kind == "cpu" else f"gpu:{self.device.index}"
        return [
            sys.executable, "-m", "runtime.serving.engine.instance", "--socket-fd", str(fd),
            "--parent", str(os.getpid()), "--model-path", str(self.config.path), "--version", self._version,
            "--device", where, "--threads", str(self._threads),
            "--log-level", LOGGING["level"], "--log-format", LOGGING["format"],
        ]  # fmt: skip

    def _start(self) -> None:
        self._spawn()
        self.wait_ready()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):  # a message must fit the send buffer: the default (~200 KB) may not hold a big batch
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_FRAME)
        try:
            command = self._command(theirs.fileno())
            proc = _SPAWNER.submit(subprocess.Popen, command, pass_fds=[theirs.fileno()]).result()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        with self._life:
            if not self._closing:
                self._proc, self._starting = proc, ours
                return
        ours.close()  # close() came while it started: it must not outlive the engine's instance
        proc.kill()
        proc.wait()
        raise StartupError(f"model {self.config.name!r} on {self.device}: closed while its process started")

    def wait_ready(self) -> None:
        """Until the process has loaded its model; a start-up error if it cannot."""
        with self._life:
            ours, self._starting = self._starting, None
        if ours is None:
            return
        assert self._proc is not None
        receive = Receiver(ours)
        try:
            meta, _ = receive()
        except (EOFError, OSError):
            meta = {"op": "failed", "message": f"its process exited with status {self._proc.wait()}"}
        if meta.get("op") != "ready":
            ours.close()
            raise StartupError(f"model {self.config.name!r} on {self.device}: {meta.get('message')}")
        with self._life:
            if self._closing:  # close() stopped the process it found: this one
                ours.close()
                raise StartupError(f"model {self.config.name!r} on {self.device}: closed while its process started")
            self._sock, self._receive, self._sent, self._out = ours, receive, set(), None
            self._ready.set()
        logger.info("Instance process %d runs model %s on %s", self.pid, self.config.name, self.device)

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        return self.run_parts([dict(inputs)])[0]

    def run_parts(self, parts: list[Tensors]) -> list[Tensors]:
        """Run the requests ``parts`` as one batch; the outputs of each (empty for one cancelled meanwhile).

        Call :meth:`wait_ready` once first (``load_runners`` does, before the model serves).
        """
        if not self._ready.is_set():
            self._wait_restarted()
        with self._lock:
            held = _hold(parts)
            try:
                return self._exchange(parts)
            finally:
                with _HOLD:
                    for part in held:
                        part.state = QUEUED

    def _exchange(self, parts: list[Tensors]) -> list[Tensors]:
        """One frame each way; a batch whose request or answer frame would exceed MAX_FRAME runs in halves."""
        try:
            return self._exchange_frame(parts)
        except _TooLarge:
            if len(parts) == 1:
                raise ServingError(
                    f"A request of model '{self.config.name}' has too many tensors to pass to its instance "
                    f"process (its description exceeds {MAX_FRAME} bytes)."
                ) from None
            half = len(parts) // 2
            return self._exchange(parts[:half]) + self._exchange(parts[half:])

    def _exchange_frame(self, parts: list[Tensors]) -> list[Tensors]:
        sock = self._sock
        if sock is None:  # lost by the batch before this one, which held the lock
            raise self._gone("it exited")
        regions: list[int] = []
        fds: list[int] = []
        scratch = _Scratch(self, sum(tensor_nbytes(a) + ALIGN for p in parts for a in p.values()))
        live: list[int] = []  # indexes of the parts sent
        used: set[int] = set()  # the regions this frame describes inputs in
        described = []
        for index, part in enumerate(parts):
            if isinstance(part, Request) and part.state == DROPPED:
                continue
            metas = []
            for name, array in part.items():
                found = REGIONS.find(array)
                if found is not None and self._unsent(found[0], regions) and len(fds) >= MAX_FDS - 1:
                    found = None  # the frame carries all the descriptors it may (and the scratch's): copy
                key, offset = found if found is not None else scratch.put(array)
                if self._unsent(key, regions):
                    fd = REGIONS.dup(key)
                    if fd is None:  # its worker went away meanwhile: the request is cancelled
                        break
                    regions.append(key)
                    fds.append(fd)
                used.add(key)
                metas.append(
                    {"name": name, "datatype": tensor_datatype(array), "shape": list(array.shape), "region": key,
                     "offset": offset, "nbytes": tensor_nbytes(array)}
                )  # fmt: skip
            else:
                reply = part.reply if isinstance(part, Request) else None
                described.append({"inputs": metas, "reply": list(reply) if reply else None})
                live.append(index)
        results: list[Tensors] = [{} for _ in parts]
        if not live:
            close_all(fds)
            return results
        # A worker that left after its inputs were described here is forgotten by a later batch, not this one.
        forget = sorted(self._sent - REGIONS.keys() - used)
        try:
            send(sock, {"op": "run", "regions": regions, "forget": forget, "parts": described}, fds)
            # Only a frame that went out changes what the process knows.
            self._sent.difference_update(forget)
            self._sent.update(regions)
            assert self._receive is not None
            answer, got = self._receive()
        except (FrameTooLarge, OSError) as ex:
            if isinstance(ex, FrameTooLarge) or ex.errno == errno.EMSGSIZE:  # nothing was sent: the process is fine
                raise _TooLarge from None
            self._lost()
            raise self._gone("it exited") from None
        except EOFError:
            self._lost()
            raise self._gone("it exited") from None
        finally:
            close_all(fds)
        if answer["op"] == "too_large":
            raise _TooLarge
        if answer["op"] == "error":
            raise RuntimeError(answer["message"])
        if got:
            out = Region.attach(got[0])
            out.close_fd()
            self._out = out.view(0, out.size)
        for index, done in zip(live, answer["parts"], strict=True):
            results[index] = self._outputs(parts[index], done)
        return results

    def _unsent(self, key: int, regions: list[int]) -> bool:
        """Whether the process lacks region ``key`` and the frame being built carries none for it yet."""
        return key not in self._sent and key not in regions

    def _outputs(self, part: Tensors, answer: Meta) -> Tensors:
        if answer["placed"]:
            # Written where the engine would have written them: views there, which the reply sends as they are.
            reply = part.reply  # type: ignore[attr-defined]
            space = REGIONS.view(reply[0])
            if space is None:
                return {}
        else:
            # This process's output region is reused by the next batch: copy out now.
            assert self._out is not None
            space = self._out
        outputs = {}
        for t in answer["outputs"]:
            array = read_tensor(space[t["offset"] : t["offset"] + t["nbytes"]], t["datatype"], tuple(t["shape"]))
            outputs[t["name"]] = array if answer["placed"] or array.dtype.kind == "O" else array.copy()
        return outputs

    def _region_removed(self, key: int) -> None:
        """A worker left (or a scratch region was replaced): the process unmaps it now, not at its next batch,
        which an idle model may not get for a long time. Called on the engine's event loop: never waits."""
        if key not in self._sent:
            return
        if self._lock.acquire(blocking=False):
            try:
                self._forget()
            finally:
                self._lock.release()
        else:  # a batch runs (perhaps the very one that removed it): right after it
            _FORGETTER.submit(self._forget_when_idle)

    def _forget_when_idle(self) -> None:
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        """With ``_lock`` held: a frame that needs no answer, telling the process to unmap the regions gone."""
        sock, forget = self._sock, sorted(self._sent - REGIONS.keys())
        if sock is None or not forget:
            return
        try:
            send(sock, {"op": "forget", "forget": forget})
        except OSError:
            return  # the process is gone: the next batch finds out and restarts it
        self._sent.difference_update(forget)

    def _gone(self, why: str) -> InstanceLost:
        return InstanceLost(f"the process of model '{self.config.name}' on {self.device} ({why})")

    def _lost(self) -> None:
        """The process died mid-batch: the batch fails with a 503; start a new one in the background."""
        with self._life:
            if self._closing:  # close() stopped it: nothing was lost, nothing is to be restarted
                return
            self._ready.clear()
            sock, self._sock = self._sock, None
            proc = self._proc
        if sock is not None:
            sock.close()
        status = None
        if proc is not None:
            proc.kill()  # a garbled frame leaves it running: it must not write into the arenas any more
            status = proc.wait()
        logger.error(
            "Instance process %d of model %s exited (status %s); restarting it", self.pid, self.config.name, status
        )
        with self._life:
            if self._closing:
                return
            self._restarter = threading.Thread(target=self._restart, name=f"restart-{self.config.name}", daemon=True)
            self._restarter.start()

    def _wait_restarted(self) -> None:
        """Until the process is back; at once an InstanceLost while its restart is failing (or after RESTART_WAIT_S)."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while not self._ready.wait(0.05):
            if self._restart_failed:
                raise self._gone("it cannot be restarted yet: see the engine's log")
            if time.monotonic() > deadline:
                raise self._gone("still starting")

    def _restart(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                self._start()
                self._restart_failed = False
                return
            except Exception:  # any failure (a fork, a load): log it and try again, never leave it down for good
                if self._closing:
                    return
                self._restart_failed = True
                logger.exception(
                    "Cannot restart the instance process of model %s on %s; retrying in %.1f s",
                    self.config.name, self.device, delay,
                )  # fmt: skip
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        """Stop the process: it holds nothing to clean up (the kernel frees its mappings), so SIGTERM at once."""
        REGIONS.unlisten(self._region_removed)
        with self._life:  # from here no restart swaps in a process: one under way stops its own
            self._closing = True
            self._closed.set()
            proc, socks, restarter = self._proc, (self._sock, self._starting), self._restarter
        if proc is not None:
            proc.terminate()
        for sock in socks:
            if sock is not None:
                sock.close()
        if proc is not None:
            _reap(proc)
        if restarter is not None and restarter is not threading.current_thread():
            restarter.join(CLOSE_WAIT_S)  # a restart loading its model: its process was the one just stopped
        if self._scratch is not None:
            REGIONS.remove(self._scratch[0])
            self._scratch = None


class _TooLarge(Exception):
    """A frame over MAX_FRAME, not sent: the batch is split."""


def _hold(parts: list[Tensors]) -> list[Request]:
    """Mark the requests not cancelled yet as held by an instance process."""
    held = []
    with _HOLD:
        for part in parts:
            if isinstance(part, Request) and part.state == QUEUED:
                part.state = HELD
                held.append(part)
    return held


class _Scratch:
    """Inputs that lie in no registered region are copied into the instance's scratch region, one after another."""

    def __init__(self, owner: RemoteInstance, need: int) -> None:
        self._owner = owner
        self._need = need
        self._offset = 0

    def put(self, array: np.ndarray) -> tuple[int, int]:
        owner = self._owner
        if owner._scratch is None or owner._scratch[1].size < self._need:
            old = owner._scratch
            region = Region.create("runtime-inst-in", max(self._need, 2 * (old[1].size if old else 0)))
            owner._scratch = (REGIONS.add(region.fd, region.view(0, region.size)), region)
            region.fd = -1  # the registry owns it
            if old is not None:
                REGIONS.remove(old[0])
        key, region = owner._scratch
        size = tensor_nbytes(array)
        offset = self._offset
        write_tensor(region.view(offset, size), array)
        self._offset += align(size)
        return key, offset


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a process told to stop; SIGKILL it if it has not stopped within CLOSE_WAIT_S."""
    try:
        proc.wait(CLOSE_WAIT_S)
    except subprocess.TimeoutExpired:
        logger.warning("Instance process %d did not stop within %.0f s of SIGTERM: killing it", proc.pid, CLOSE_WAIT_S)
        proc.kill()
        proc.wait()
