"""Instance processes without a server: the region registry, cancels against held requests, and one
RemoteInstance (a real ``runtime-inst`` process) fed from a registered region."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ServiceUnavailable, ServingError
from runtime.serving.check import check_repository
from runtime.serving.engine.arena import Region, align, read_tensor
from runtime.serving.engine.instance import MAX_FRAME, FrameTooLarge, InstanceServer, send
from runtime.serving.engine.remote import (
    _FORGETTER,
    REGIONS,
    RESTART_WAIT_S,
    InstanceLost,
    Regions,
    RemoteInstance,
    Request,
    _hold,
    applies,
)
from runtime.serving.platforms import Device
from runtime.serving.repository import load_model
from runtime.settings import Settings
from tests.support.engine import comm, wait_for
from tests.test_torchscript import in_process


def test_auto_runs_gpu_instances_in_processes_and_on_off_force_it() -> None:
    assert applies("auto", Device("gpu", 0)) and not applies("auto", Device("cpu"))
    assert applies("on", Device("cpu")) and not applies("off", Device("gpu", 1))
    assert Settings.from_env({}).instance_processes == "auto"
    assert Settings.from_env({"RUNTIME_INSTANCE_PROCESSES": "ON"}).instance_processes == "on"
    with pytest.raises(ValueError, match="RUNTIME_INSTANCE_PROCESSES must be one of auto, on, off"):
        Settings.from_env({"RUNTIME_INSTANCE_PROCESSES": "yes"})


def test_regions_find_arrays_lying_in_them() -> None:
    regions = Regions()
    region = Region.create("test-region", 4096)
    space = region.view(0, region.size)
    key = regions.add(region.fd, space)
    inside = space[128:192].view(np.float32)
    assert regions.find(inside) == (key, 128)
    assert regions.find(space[4000:4200]) == (key, 4000)  # a view cannot reach past the mapping
    assert regions.find(inside[::2]) is None  # not contiguous: copied instead
    assert regions.find(np.zeros(4, np.float32)) is None
    assert regions.find(np.array([b"a"], dtype=object)) is None
    assert regions.view(key) is space and regions.keys() == {key}
    regions.remove(key)
    assert regions.find(inside) is None and regions.keys() == set()
    with pytest.raises(OSError):
        os.fstat(region.fd)  # the registry closed the descriptor it owned


def test_a_cancel_waits_while_an_instance_process_holds_the_request() -> None:
    held, queued = Request((1, 0, 64)), Request()
    assert _hold([held, {}]) == [held]
    assert not held.drop()  # the process may still write into its room: the answer comes later
    dropped = Request()
    assert dropped.drop()
    assert _hold([dropped, queued]) == [queued]  # a cancelled request is not sent


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteInstance]:
    from tests.support import torch_models  # imports torch: only where it is used

    repo = torch_models.write_repository(tmp_path_factory.mktemp("units") / "triton")
    config = load_model(repo / "t_linear")
    remote = RemoteInstance(config, "1", Device("cpu"), 1)
    remote.wait_ready()
    yield remote
    remote.close()


def test_outputs_are_written_into_the_room_reserved_next_to_the_inputs(instance: RemoteInstance) -> None:
    region = Region.create("test-arena", 1 << 16)
    space = region.view(0, region.size)
    key = REGIONS.add(region.fd, space)
    try:
        rows = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
        parts = []
        for start, stop, offset in ((0, 2, 0), (2, 5, 1024)):
            request = Request((key, offset + align(rows[start:stop].nbytes), 256))
            request["INPUT__0"] = space[offset : offset + rows[start:stop].nbytes].view(np.float32).reshape(-1, 4)
            request["INPUT__0"][...] = rows[start:stop]
            parts.append(request)
        loose = {"INPUT__0": rows[:1].copy()}  # in no region: copied to the scratch region; outputs copied back
        outputs = instance.run_parts([*parts, loose])
        want = in_process("t_linear", {"x": rows})["OUTPUT__0"]
        np.testing.assert_array_equal(np.concatenate([o["OUTPUT__0"] for o in outputs[:2]]), want)
        np.testing.assert_array_equal(outputs[2]["OUTPUT__0"], want[:1])
        for part, out in zip(parts, outputs, strict=False):
            assert part.reply is not None
            placed = out["OUTPUT__0"].__array_interface__["data"][0]
            assert placed == space.__array_interface__["data"][0] + part.reply[1]  # in place, not a copy
        assert all(p.state == 0 for p in parts)  # no longer held
        dropped = Request()
        dropped["INPUT__0"] = rows[:1]
        assert dropped.drop()
        assert instance.run_parts([dropped, loose])[0] == {}
    finally:
        REGIONS.remove(key)


def test_a_batch_from_more_arenas_than_a_frame_carries_descriptors_for(instance: RemoteInstance) -> None:
    # 20 workers' arenas seen for the first time in one batch: 14 travel with it, the rest are copied.
    regions = [Region.create(f"test-worker-{i}", 4096) for i in range(20)]
    keys = [REGIONS.add(r.fd, r.view(0, r.size)) for r in regions]
    try:
        rows = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)
        parts = _requests_in(rows, regions, keys)
        outputs = instance.run_parts(parts)
        want = in_process("t_linear", {"x": rows})["OUTPUT__0"]
        np.testing.assert_array_equal(np.concatenate([o["OUTPUT__0"] for o in outputs]), want)
        np.testing.assert_array_equal(np.concatenate([o["OUTPUT__0"] for o in instance.run_parts(parts)]), want)
    finally:
        for key in keys:
            REGIONS.remove(key)


def test_a_batch_whose_frame_exceeds_max_frame_runs_in_halves_and_the_process_lives(
    instance: RemoteInstance,
) -> None:
    # About 1.3 MiB of descriptors (the instance reads frames into 1 MiB): refused before sending, split.
    pid = instance.pid
    rows = np.random.default_rng(3).standard_normal((9000, 4)).astype(np.float32)
    outputs = instance.run_parts([{"INPUT__0": rows[i : i + 1]} for i in range(len(rows))])
    want = in_process("t_linear", {"x": rows})["OUTPUT__0"]
    np.testing.assert_array_equal(np.concatenate([o["OUTPUT__0"] for o in outputs]), want)
    assert instance.pid == pid


def test_a_frame_over_max_frame_is_refused_before_it_is_sent() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs, pytest.raises(FrameTooLarge, match=f"exceeds the limit of {MAX_FRAME} bytes"):
        send(ours, {"pad": "x" * MAX_FRAME})


def test_a_single_request_too_large_to_describe_fails_with_an_error_naming_the_limit(instance: RemoteInstance) -> None:
    many = {f"INPUT__{i}": np.ones((1, 4), np.float32) for i in range(12000)}
    with pytest.raises(ServingError, match=f"exceeds {MAX_FRAME} bytes") as caught:
        instance.run(many)
    assert caught.value.status_code == 500 and instance.run({"INPUT__0": np.ones((1, 4), np.float32)})


def test_a_worker_leaving_after_its_request_was_described_fails_no_other_request(
    instance: RemoteInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    arenas = [Region.create(f"test-leaving-{i}", 4096) for i in range(2)]
    keys = [REGIONS.add(r.fd, r.view(0, r.size)) for r in arenas]
    for r in arenas:
        r.fd = -1
    parts = _requests_in(rows, arenas, keys)
    instance.run_parts(parts)  # both arenas are now known to the instance process
    leaving = keys[0]
    find = REGIONS.find

    def find_then_disconnect(array: np.ndarray) -> tuple[int, int] | None:
        found = find(array)
        if found is not None and found[0] == leaving and leaving in REGIONS.keys():  # noqa: SIM118 (Regions has no __contains__)
            REGIONS.remove(leaving)  # the event loop's WorkerConnection._closed, between find and forget
        return found

    monkeypatch.setattr(REGIONS, "find", find_then_disconnect)
    try:
        outputs = instance.run_parts(parts)  # the leaving worker's request is held: it stays in the batch
    finally:
        monkeypatch.undo()
        REGIONS.remove(keys[1])
    want = in_process("t_linear", {"x": rows})["OUTPUT__0"]
    assert outputs[0] == {}  # its room is gone: nothing to answer
    np.testing.assert_array_equal(outputs[1]["OUTPUT__0"], want[1:])  # the other worker's request
    # This batch used it; once the batch is done, the process is told to unmap it, with no batch needed.
    wait_for(lambda: leaving not in instance._sent, 10, "the process to forget the region")
    np.testing.assert_array_equal(instance.run_parts(parts[1:2])[0]["OUTPUT__0"], want[1:])
    assert leaving not in instance._sent


def test_a_frame_never_sent_changes_nothing_the_engine_records_of_the_process(
    instance: RemoteInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the eager forget (a worker leaving while the process is idle), the next run frame carries it.
    monkeypatch.setattr(REGIONS, "_listeners", [])
    _FORGETTER.submit(lambda: None).result()  # an earlier test's forget, still queued, would forget this one's region
    region = Region.create("test-gone", 4096)
    key = REGIONS.add(region.fd, region.view(0, region.size))
    region.fd = -1
    request = Request((key, 64, 256))
    request["INPUT__0"] = region.view(0, 16).view(np.float32).reshape(1, 4)
    instance.run_parts([request])
    assert key in instance._sent
    REGIONS.remove(key)  # its worker left: the next frame that goes out tells the process to forget it
    with pytest.raises(ServingError, match="exceeds"):
        instance.run({f"INPUT__{i}": np.ones((1, 4), np.float32) for i in range(12000)})
    assert key in instance._sent  # that frame was refused: the process still maps the region
    fresh = Region.create("test-fresh", 4096)
    fresh_key = REGIONS.add(fresh.fd, fresh.view(0, fresh.size))
    fresh.fd = -1
    try:
        dropped = Request((fresh_key, 64, 256))
        dropped["INPUT__0"] = fresh.view(0, 16).view(np.float32).reshape(1, 4)
        assert dropped.drop()
        assert instance.run_parts([dropped]) == [{}]  # nothing went out
        assert key in instance._sent and fresh_key not in instance._sent
        instance.run({"INPUT__0": np.ones((1, 4), np.float32)})
        assert key not in instance._sent
    finally:
        REGIONS.remove(fresh_key)


def test_an_idle_instance_process_unmaps_a_region_as_soon_as_its_worker_leaves(instance: RemoteInstance) -> None:
    region = Region.create("test-idle-leaver", 1 << 20)
    key = REGIONS.add(region.fd, region.view(0, region.size))
    region.fd = -1
    (request,) = _requests_in(np.ones((1, 4), np.float32), [region], [key])
    instance.run_parts([request])
    maps = Path(f"/proc/{instance.pid}/maps")
    assert "memfd:test-idle-leaver" in maps.read_text()
    REGIONS.remove(key)  # the worker left; no batch follows
    wait_for(lambda: "memfd:test-idle-leaver" not in maps.read_text(), 10, "the instance process to unmap it")
    assert key not in instance._sent


def test_an_output_declared_bytes_is_converted_in_the_instance_process_not_placed_as_numbers() -> None:
    class TwoOutputs:
        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            x = inputs["x"]
            return {"as_text": x * 2, "after": x + 1}  # as_text is declared BYTES, yet numbers come back

    region = Region.create("test-bytes-declared", 4096)
    space = region.view(0, region.size)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    space[:16].view(np.float32)[:] = x.reshape(-1)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        server = InstanceServer(ours, TwoOutputs(), True, frozenset({"as_text"}))
        server.regions[1] = space
        part = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "region": 1, "offset": 0, "nbytes": 16}]}
        answer, _ = server.run({"op": "run", "parts": [{**part, "reply": [1, 64, 1024]}]}, [])
    (done,) = answer["parts"]
    # Not placed: placed as 16 bytes of numbers, the engine's conversion to 32 bytes of BYTES would overwrite "after".
    assert not done["placed"]
    by_name = {t["name"]: t for t in done["outputs"]}
    assert by_name["as_text"]["datatype"] == "BYTES" and by_name["after"]["datatype"] == "FP32"
    assert server.out is not None
    out = server.out.view(0, server.out.size)
    t = by_name["after"]
    np.testing.assert_array_equal(read_tensor(out[t["offset"] : t["offset"] + t["nbytes"]], "FP32", (1, 4)), x + 1)
    t = by_name["as_text"]
    texts = read_tensor(out[t["offset"] : t["offset"] + t["nbytes"]], "BYTES", (1, 4))
    assert [bytes(v) for v in texts.reshape(-1)] == [np.float32(v * 2).tobytes() for v in x.reshape(-1)]


def test_a_killed_instance_process_fails_its_batch_with_503_and_comes_back(instance: RemoteInstance) -> None:
    victim = instance.pid
    assert comm(victim) == "runtime-inst"
    os.kill(victim, signal.SIGKILL)
    # This process is its parent: the killed process stays a zombie until the instance reaps it.
    wait_for(lambda: Path(f"/proc/{victim}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10, "the kill")
    x = {"INPUT__0": np.ones((1, 4), np.float32)}
    with pytest.raises(ServiceUnavailable, match=r"The model engine \(runtime-engine\) lost the process of model"):
        instance.run(x)
    np.testing.assert_array_equal(
        instance.run(x)["OUTPUT__0"], in_process("t_linear", {"x": x["INPUT__0"]})["OUTPUT__0"]
    )
    assert instance.pid != victim and comm(instance.pid) == "runtime-inst"


def test_a_failing_restart_is_retried_and_batches_meanwhile_fail_at_once(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = _linear(model_repo)
    spawn = RemoteInstance._spawn
    failures: list[int] = []

    def failing_spawn(self: RemoteInstance) -> None:
        if len(failures) < 3:
            failures.append(1)
            raise OSError(errno.EAGAIN, "fork failed")  # not a StartupError: once the end of restarting
        spawn(self)

    monkeypatch.setattr(RemoteInstance, "_spawn", failing_spawn)
    x = {"x": np.ones((1, 4), np.float32)}
    try:
        os.kill(remote.pid, signal.SIGKILL)
        with pytest.raises(InstanceLost):
            remote.run(x)
        wait_for(lambda: bool(failures), 10, "a failed restart")
        started = time.monotonic()
        with pytest.raises(InstanceLost, match="cannot be restarted yet"):
            remote.run(x)
        assert time.monotonic() - started < RESTART_WAIT_S / 4  # not the wait for a restart that may never come
        wait_for(lambda: len(failures) == 3 and remote._ready.is_set(), 30, "the restart after 3 failures")
        assert set(remote.run(x)) == {"y", "norm"}
    finally:
        remote.close()


def test_closing_stops_the_process(model_repo: Path) -> None:
    remote = _linear(model_repo)
    pid = remote.pid
    remote.close()
    assert not Path(f"/proc/{pid}").exists() or comm(pid) != "runtime-inst"


def test_a_process_stopped_by_close_is_not_reported_lost_nor_restarted(
    model_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = _linear(model_repo)
    remote.close()
    with caplog.at_level(logging.INFO, "runtime.engine"):
        remote._lost()  # what a batch in flight meets when close() stops its process
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not any(t.name == "restart-linear" for t in threading.enumerate())


def test_closing_while_a_restart_is_starting_its_process_leaves_no_process(
    model_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = _linear(model_repo)
    before = _children()
    spawn = RemoteInstance._spawn
    started = threading.Event()

    def slow_spawn(self: RemoteInstance) -> None:
        started.set()
        time.sleep(0.5)  # the restart thread is past its `while not self._closing` check
        spawn(self)

    monkeypatch.setattr(RemoteInstance, "_spawn", slow_spawn)
    os.kill(remote.pid, signal.SIGKILL)
    with pytest.raises(InstanceLost):
        remote.run({"x": np.ones((1, 4), np.float32)})
    assert started.wait(5)
    remote.close()  # the engine stops (or the model unloads) while the restart is under way
    assert not any(t.name == "restart-linear" for t in threading.enumerate())  # close() waited for it
    assert _children() <= before - {remote.pid}, "a runtime-inst process outlived close()"


def _linear(model_repo: Path) -> RemoteInstance:
    """A RemoteInstance of its own (a test that kills or closes it leaves the module's alone).

    The ONNX model: these tests are about the process's life, which is the same for every platform, and an
    onnxruntime process starts in a fifth of the CPU time of one that imports torch.
    """
    remote = RemoteInstance(load_model(model_repo / "triton" / "linear"), "1", Device("cpu"), 1)
    remote.wait_ready()
    return remote


def _requests_in(rows: np.ndarray, regions: list[Region], keys: list[int]) -> list[Request]:
    """One request per row, its input written at the start of its own worker's arena, room for outputs after."""
    parts = []
    for row, region, key in zip(rows, regions, keys, strict=True):
        request = Request((key, 64, 256))
        request["INPUT__0"] = region.view(0, 16).view(np.float32).reshape(1, 4)
        request["INPUT__0"][...] = row
        parts.append(request)
    return parts


def _children() -> set[int]:
    """This process's children that have not exited."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == os.getpid() and state != "Z":
                found.add(int(stat.parent.name))
    return found


@pytest.mark.parametrize(("mode", "shown"), [("on", ", 1 in instance processes (runtime-inst)"), ("auto", "")])
def test_runtime_check_says_which_instances_run_in_processes(tmp_path: Path, mode: str, shown: str) -> None:
    from tests.support import torch_models  # imports torch: only where it is used

    torch_models.write_repository(tmp_path / "triton")
    out = io.StringIO()
    assert check_repository(str(tmp_path), out, mode) == 0
    assert f"  instances: 1 (1 x CPU){shown}\n" in out.getvalue()
