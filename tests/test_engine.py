"""The model engine through real servers: one engine for all workers, its results, faults, traces and shutdown.

One two-worker server for the module (hook style, engine_hook.py), read by the tests that only read, a
worker SIGKILLed first, its engine SIGKILLed under load last, then SIGTERM. Azure ML style (run() calling
runtime.infer()) through the engine, its traces, and a SIGKILLed master are tests/test_instance_processes.py's,
on its server, where the instances run in processes of their own: the worker's side, the engine's queue and
batch spans and its death with the master are the same code either way; what differs (the instance's side)
is tested here with the instances in the engine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from tests import test_torchscript
from tests.conftest import script
from tests.support.cli import run_cli
from tests.support.engine import (
    comm,
    dev_shm,
    load,
    one_engine,
    shm_mappings,
    v2_inputs,
    wait_for,
    worker_pids,
)
from tests.support.engine_cases import (
    CASES,
    as_body,
    assert_equal_outputs,
    assert_score_equals_onnxruntime,
    full_inputs,
    onnx_reference,
)
from tests.support.servers import ServerProcess, free_port, runtime_argv, start_module_server
from tests.test_onnxruntime_backend import metric
from tests.test_torchscript import MODULES

pytestmark = pytest.mark.slow

HOOK = script("backend/engine_hook.py")


@pytest.fixture(scope="module")
def engine_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test models, the linear model again as ``auto_model`` with two KIND_AUTO instances, and the
    TorchScript test models (tests/test_torchscript.py)."""
    root = tmp_path_factory.mktemp("engine-repo") / "triton"
    root.mkdir()
    for model in (model_repo / "triton").iterdir():
        (root / model.name).symlink_to(model)
    (root / "auto_model" / "1").mkdir(parents=True)
    (root / "auto_model" / "1" / "model.onnx").symlink_to(model_repo / "triton" / "linear" / "1" / "model.onnx")
    (root / "auto_model" / "config.pbtxt").write_text("instance_group [{ count: 2 kind: KIND_AUTO }]\n")
    from tests.test_repository import scaled_repo

    scaled_repo(root)  # an optional input (with a default in the graph)
    from tests.support import torch_models  # imports torch: only where it is used

    torch_models.write_repository(root)  # TorchScript served through the engine
    return root.parent


@pytest.fixture(scope="module")
def shm_before() -> set[str]:
    """/dev/shm just before the server starts."""
    return dev_shm()


@pytest.fixture(scope="module")
def server(
    engine_repo: Path, shm_before: set[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Two workers, hook style; a 1 MiB arena (so that big tensors take the overflow path)."""
    env = {"RUNTIME_ENGINE_ARENA_MB": "1"}
    process = start_module_server(tmp_path_factory, "--model-dir", str(engine_repo), "--entry", HOOK,
                                  "--workers", "2", env=env)  # fmt: skip
    # Ready means one worker answers; on a loaded machine the other connects to the engine later.
    assert process.proc is not None
    master = process.proc.pid
    wait_for(lambda: both_workers_connected(master), 60, "both workers' arenas mapped")
    yield process
    process.stop()


def both_workers_connected(master: int) -> bool:
    """Two workers, and the engine maps the arena of each."""
    workers = worker_pids(master)
    arenas = " ".join(shm_mappings(one_engine(master)))
    return len(workers) == 2 and all(f"memfd:runtime-arena-{w}" in arenas for w in workers)


def test_killed_worker_leaves_no_shared_memory_and_others_keep_serving(server: ServerProcess) -> None:
    # Any order: a batcher kept its last batch (views on the worker's arena) until its model's next batch,
    # so a dead worker's arena stayed mapped; test_batching checks that no batch outlives its answer.
    master, engine, _ = running(server)

    def arenas() -> str:
        return " ".join(shm_mappings(engine))

    wait_for(lambda: both_workers_connected(master), 30, "both arenas mapped")
    workers = worker_pids(master)
    victim = min(workers)
    assert f"memfd:runtime-arena-{victim}" in arenas()
    body = as_body("sleepy", {"x": np.ones((1, 4), np.float32)}, {"x": "float32"})
    results = asyncio.run(load(server.url + "/score", lambda _: body, 6, 16, lambda: os.kill(victim, signal.SIGKILL)))
    served = [r for r in results if isinstance(r, httpx.Response)]
    assert {r.status_code for r in served} == {200}
    wait_for(lambda: f"memfd:runtime-arena-{victim}" not in " ".join(shm_mappings(engine)), 10, "arena released")
    assert one_engine(master) == engine
    last = httpx.post(server.url + "/score", json=body, timeout=10)
    assert last.status_code == 200 and last.json()["pid"] != victim

    # The tests that follow read from both workers: the replacement connected.
    wait_for(lambda: both_workers_connected(master), 30, "the replacement worker's arena mapped")


@pytest.mark.parametrize("model", sorted(CASES))
def test_results_equal_in_process_onnxruntime(server: ServerProcess, model_repo: Path, model: str) -> None:
    assert_score_equals_onnxruntime(server.url, model_repo, model)


@pytest.mark.parametrize("model", sorted(CASES))
def test_v2_results_equal_in_process_onnxruntime(server: ServerProcess, model_repo: Path, model: str) -> None:
    inputs = full_inputs(model_repo, model, CASES[model][0])
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    result = client.infer(model, v2_inputs(inputs))
    want = onnx_reference(model_repo, model, inputs)
    got = {n: result.as_numpy(n) for n in want}
    assert_equal_outputs({n: [x.decode() if isinstance(x, bytes) else x for x in v.ravel()] for n, v in got.items()},
                         {n: v.ravel() for n, v in want.items()})  # fmt: skip


def test_requests_with_and_without_an_optional_input_batch_apart_through_the_engine(server: ServerProcess) -> None:
    """The workers' data plane knows the input is optional from the engine's description of the model, and the
    engine never joins requests with it and without it: each gets its own scale."""
    x = np.arange(16 * 4, dtype=np.float32).reshape(16, 4)

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            bodies = []
            for i in range(16):
                inputs = [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x[i].tolist()}]
                if i % 2:
                    inputs.append({"name": "scale", "shape": [1, 1], "datatype": "FP32", "data": [float(i)]})
                bodies.append({"inputs": inputs})
            return await asyncio.gather(*(client.post(server.url + "/v2/models/scaled/infer", json=b) for b in bodies))

    responses = asyncio.run(send())
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
    for i, response in enumerate(responses):
        scale = float(i) if i % 2 else 2.0  # the graph's default
        assert response.json()["outputs"][0]["data"] == (x[i] * scale).tolist()


def test_tensors_larger_than_the_arena_round_trip(server: ServerProcess) -> None:
    text = "x" * (3 << 20)  # 3 MiB in and out, through a 1 MiB arena
    body = as_body("strings", {"text": np.array([[text], ["hello"]], dtype=object)}, {"text": "object"})
    response = httpx.post(server.url + "/score", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == {"id": [[0], [1]], "echo": [[text], ["hello"]]}


def test_one_engine_named_runtime_engine_holds_the_models(server: ServerProcess) -> None:
    assert server.proc is not None
    engine = one_engine(server.proc.pid)
    assert comm(engine) == "runtime-engine"
    ps = subprocess.run(["ps", "-o", "comm=", "-p", str(engine)], capture_output=True, text=True, check=True)
    assert ps.stdout.strip() == "runtime-engine"
    maps = Path(f"/proc/{engine}/maps").read_text()
    assert "libonnxruntime" in maps
    for worker in worker_pids(server.proc.pid):
        assert "libonnxruntime" not in Path(f"/proc/{worker}/maps").read_text()
        # The engine maps every worker's arena.
        assert f"memfd:runtime-arena-{worker}" in " ".join(shm_mappings(engine))


def test_batches_hold_requests_from_both_workers(server: ServerProcess) -> None:
    before = httpx.get(server.url + "/metrics").text
    x = np.ones((1, 4), np.float32)

    async def burst() -> list[httpx.Response]:
        # A connection per request: which worker accepts a kept-alive connection is the kernel's choice, and
        # one worker may take all 32 of them.
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            body = as_body("sleepy", {"x": x}, {"x": "float32"})
            close = {"Connection": "close"}
            return await asyncio.gather(
                *(client.post(server.url + "/score", json=body, headers=close) for _ in range(192))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(responses)
    pids = {r.json()["pid"] for r in responses}
    assert len(pids) == 2, f"requests were served by workers {pids}"
    after = httpx.get(server.url + "/metrics").text
    labels = {"model": "sleepy", "version": "1"}

    def delta(name: str, **extra: str) -> float:
        return metric(after, name, **labels, **extra) - metric(before, name, **labels, **extra)

    batches = delta("runtime_batch_worker_processes_count")
    single_worker = delta("runtime_batch_worker_processes_bucket", le="1.0")
    assert batches > 0
    assert single_worker < batches, "no batch held requests from both workers"
    assert delta("runtime_batch_size_sum") == len(responses)
    assert delta("runtime_batch_size_count") < len(responses)  # requests were joined


def running(server: ServerProcess) -> tuple[int, int, set[int]]:
    """The module server's (master pid, engine pid, worker pids) as they are now."""
    assert server.proc is not None
    master = server.proc.pid
    return master, one_engine(master), worker_pids(master)


def test_kind_auto_serves_on_the_cpu(engine_repo: Path, server: ServerProcess) -> None:
    check = subprocess.run(runtime_argv("check", "--model-dir", str(engine_repo)), capture_output=True, text=True)
    assert check.returncode == 0 and "instances: 2 (2 x CPU)" in check.stdout
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    response = httpx.post(server.url + "/v2/models/auto_model/infer", json=body)
    assert response.status_code == 200
    assert "instances: 2 x CPU" in server.log()


@pytest.mark.parametrize("name", list(MODULES))
def test_torchscript_served_equals_module_in_process(server: ServerProcess, name: str) -> None:
    test_torchscript.served_equals_module_in_process(server, name)


def test_torchscript_concurrent_requests_batch_and_each_row_is_right(server: ServerProcess) -> None:
    test_torchscript.concurrent_requests_batch_and_each_row_is_right(server)


# The server stops last: the tests above only read from it (the first killed a worker of its own).


def test_engine_killed_under_load_gives_503_then_recovers(server: ServerProcess) -> None:
    master, engine, workers = running(server)
    body = as_body("linear", {"x": np.ones((1, 4), np.float32)}, {"x": "float32"})
    readiness: list[int] = []

    def kill_and_watch_readiness() -> None:
        os.kill(engine, signal.SIGKILL)
        for _ in range(100):  # a worker is not ready while its engine is away
            readiness.append(httpx.get(server.url + "/v2/health/ready", timeout=10).status_code)
            if readiness[-1] == 503:
                return

    results = asyncio.run(load(server.url + "/score", lambda _: body, 6, 8, kill_and_watch_readiness))
    assert 503 in readiness
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
    assert set(statuses) <= {200, 503}, sorted(set(map(str, statuses)))
    unavailable = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 503]
    assert unavailable, "no request saw the engine gone"
    assert "runtime-engine" in unavailable[0].json()["message"]
    replacement = one_engine(master)
    assert replacement != engine
    wait_for(lambda: httpx.post(server.url + "/score", json=body, timeout=10).status_code == 200, 30, "recovery")
    # Both workers, not only the one that answered: the next test's first requests go to either.
    wait_for(lambda: server.log().rsplit("restarting it", 1)[-1].count(" connected (arena ") >= 2, 30, "reconnects")
    assert worker_pids(master) == workers, "workers were restarted"
    assert "restarting it" in server.log()


def test_sigterm_leaves_no_engine_and_no_shared_memory(server: ServerProcess, shm_before: set[str]) -> None:
    """Stops the module's server. (SIGKILL of a master: tests/test_instance_processes.py.)"""
    assert server.proc is not None
    master = server.proc.pid
    engine = one_engine(master)
    wait_for(lambda: len(worker_pids(master)) == 2, 30, "two workers")
    workers = worker_pids(master)
    body = as_body("sleepy", {"x": np.ones((1, 4), np.float32)}, {"x": "float32"})
    results = asyncio.run(load(server.url + "/score", lambda _: body, 3, 8, lambda: os.kill(master, signal.SIGTERM)))
    # Draining: what was in flight is answered; later requests find the port closed.
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered and {r.status_code for r in answered} == {200}
    assert server.wait_exit(60) == 0  # a clean exit
    wait_for(lambda: not Path(f"/proc/{engine}").exists() or comm(engine) != "runtime-engine", 30, "engine exit")
    for pid in workers:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, f"worker {pid} exit")  # type: ignore[misc]
    # Other programs on the machine may create short-lived entries meanwhile (multiprocessing's sem.mp-*):
    # what the server leaked would stay.
    wait_for(lambda: dev_shm() <= shm_before, 15, f"/dev/shm back to what it was (new: {dev_shm() - shm_before})")


def test_kind_gpu_without_gpu_is_a_startup_error(
    tmp_path: Path, model_repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "gpu"
    (repo / "gpu_model" / "1").mkdir(parents=True)
    (repo / "gpu_model" / "1" / "model.onnx").symlink_to(model_repo / "triton" / "linear" / "1" / "model.onnx")
    (repo / "gpu_model" / "config.pbtxt").write_text("instance_group [{ count: 1 kind: KIND_GPU }]\n")
    # The command in this process; the engine it starts is a process of its own, and refuses the model.
    done = run_cli("serve", "--port", str(free_port()), "--model-dir", str(repo), engine=True)
    stderr = done.stderr + capfd.readouterr().err
    assert done.returncode == 3
    assert "model 'gpu_model'" in stderr and "KIND_GPU" in stderr
    assert "CUDAExecutionProvider" in stderr  # what is missing
    check = subprocess.run(runtime_argv("check", "--model-dir", str(repo)), capture_output=True, text=True)
    assert check.returncode == 1 and "no GPU is usable" in check.stdout
