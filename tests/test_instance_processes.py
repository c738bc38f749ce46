"""Instance processes (RUNTIME_INSTANCE_PROCESSES=on): each model instance runs in a ``runtime-inst`` process
of the engine, fed from the workers' arenas. One server for the module (two workers, TorchScript and ONNX
models, Azure ML style: engine_run.py's run() calls runtime.infer(), and init() does before any request; traces
to the module's collector), stopped by the last test with SIGKILL of its master."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests import test_torchscript
from tests.conftest import script
from tests.support.engine import comm, dev_shm, instance_pids, load, one_engine, v2_inputs, wait_for, worker_pids
from tests.support.engine_cases import CASES, as_body, assert_score_equals_onnxruntime, onnx_reference
from tests.support.otlp import Collector, collector
from tests.support.processes import children
from tests.support.servers import ServerProcess, free_port, runtime_argv
from tests.test_torchscript import MODULES, in_process, sample

pytestmark = pytest.mark.slow

ONNX_MODELS = ("linear", "strings", "types")
MODELS = (*MODULES, *ONNX_MODELS)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TorchScript test models, and three ONNX ones (FP32, BYTES, every datatype) from the shared repository."""
    root = tmp_path_factory.mktemp("instances")
    from tests.support import torch_models  # imports torch: only where it is used

    torch_models.write_repository(root / "triton")
    for name in ONNX_MODELS:
        (root / "triton" / name).symlink_to(model_repo / "triton" / name)
    return root


@pytest.fixture(scope="module")
def shm_before() -> set[str]:
    return dev_shm()


@pytest.fixture(scope="module")
def spans() -> Iterator[Collector]:
    """Where the server's workers and engine send their OpenTelemetry spans."""
    with collector() as received:
        yield received


@pytest.fixture(scope="module")
def server(
    repo: Path, shm_before: set[str], spans: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    port = free_port()
    entry = script("backend/engine_run.py")
    argv = runtime_argv("serve", "--port", str(port), "--model-dir", str(repo), "--entry", entry, "--workers", "2")
    log = tmp_path_factory.mktemp("instances-server") / "runtime.log"
    # A 1 MiB arena: the 2,000-row request below does not fit and takes the engine's overflow region. Traces go to
    # ``spans``, each batch 50 ms after its span ends.
    env = {
        "RUNTIME_INSTANCE_PROCESSES": "on",
        "RUNTIME_ENGINE_ARENA_MB": "1",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{spans.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    proc = ServerProcess(argv, port, log, env=env).start()
    yield proc
    proc.stop()


def master(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def infer(server: ServerProcess, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    result = client.infer(model, v2_inputs(inputs))
    outputs = {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    client.close()
    return outputs


def test_every_instance_is_a_runtime_inst_process_of_the_engine(server: ServerProcess) -> None:
    engine = one_engine(master(server))
    assert comm(engine) == "runtime-engine"
    instances = instance_pids(master(server))
    assert len(instances) == len(MODELS)  # one instance each (KIND_AUTO, count 1)
    assert set(children(engine)) == instances
    assert len(worker_pids(master(server))) == 2


@pytest.mark.parametrize("name", list(MODULES))
def test_torchscript_results_equal_the_module_in_process(server: ServerProcess, name: str) -> None:
    inputs = sample(name, 3, seed=5)
    got = infer(server, name, inputs)
    want = in_process(name, inputs)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)


def test_bytes_and_onnx_results_equal_onnxruntime_in_process(server: ServerProcess, repo: Path) -> None:
    text = np.array([["hello"], ["wörld"], ["x" * 5000]], dtype=object)  # longer than the reserved room
    got = infer(server, "strings", {"text": np.array([[s.encode()] for s in text.ravel()], dtype=object)})
    want = onnx_reference(repo, "strings", {"text": text})
    assert set(got) == set(want)
    for name, value in want.items():
        if value.dtype.kind in "OU":  # BYTES
            assert [x.decode() for x in got[name].ravel()] == [str(x) for x in value.ravel()], name
        else:
            np.testing.assert_array_equal(got[name], value)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(infer(server, "linear", {"x": x})["y"], onnx_reference(repo, "linear", {"x": x})["y"])


@pytest.mark.parametrize("model", sorted(CASES))
def test_run_results_equal_in_process_onnxruntime(server: ServerProcess, repo: Path, model: str) -> None:
    """Azure ML style: run() calling runtime.infer() (hook style: tests/test_engine.py)."""
    assert_score_equals_onnxruntime(server.url, repo, model)


def test_a_request_larger_than_the_arena_round_trips(server: ServerProcess) -> None:
    # 1.2 MB in: the worker puts it in a region of its own (not the arena the instance process maps), the
    # engine copies it to the instance's scratch region, and the outputs, with no room reserved, come back
    # through the instance's output region.
    inputs = sample("t_named", 2, seed=6)
    inputs["x"] = np.random.default_rng(6).standard_normal((2, 150_000)).astype(np.float32)
    got = infer(server, "t_named", inputs)
    for key, value in in_process("t_named", inputs).items():
        np.testing.assert_array_equal(got[key], value)


def test_concurrent_requests_batch_and_each_row_is_right(server: ServerProcess) -> None:
    # The TorchScript suite's check (48 rows at once, each answered right, batches larger than 1), here with
    # each batch's outputs written by the instance process into the rooms the workers reserved.
    test_torchscript.test_concurrent_requests_batch_and_each_row_is_right(server)


def test_engine_spans_continue_the_request_trace(server: ServerProcess, spans: Collector) -> None:
    for n in range(3):
        traceparent = f"00-{TRACE_ID[:-1]}{n}-b7ad6b716920333{n}-01"
        body = as_body("linear", {"x": np.array([[1, 2, 3, 4]], np.float32)}, {"x": "float32"})
        response = httpx.post(server.url + "/score", json=body, headers={"traceparent": traceparent}, timeout=30)
        assert response.status_code == 200, response.text
    traces = {f"{TRACE_ID[:-1]}{n}" for n in range(3)}

    def problems() -> list[object]:
        """The span names missing a trace, then the engine's spans without their worker's infer span as parent:
        of every request this server answered, of any model (the tests above read from it too)."""
        missing = [
            n
            for n in ("POST /score", "infer linear", "queue", "batch")
            if not {s.trace_id for s in spans.named(n)} >= traces
        ]
        infers = {s.span_id: s.trace_id for s in spans.spans if s.name.startswith("infer ")}
        # Made in the engine process, under the worker's infer span of the same request.
        unparented = [
            s for s in spans.named("queue") + spans.named("batch") if infers.get(s.parent_span_id) != s.trace_id
        ]
        return [*missing, *unparented]

    deadline = time.monotonic() + 10  # worker and engine each send a batch of spans 50 ms after a span ends
    while problems() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not problems(), (problems(), spans.spans, server.log()[-2000:])


def test_a_killed_instance_process_gives_503s_then_is_restarted(server: ServerProcess) -> None:
    engine = one_engine(master(server))
    workers = worker_pids(master(server))
    before = instance_pids(master(server))
    victim = next(p for p in before if "t_linear" in Path(f"/proc/{p}/cmdline").read_text())
    x = [0.5, 1.0, -1.0, 2.0]
    body = {"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32", "data": x}]}
    results = asyncio.run(
        load(server.url + "/v2/models/t_linear/infer", lambda _: body, 6, 8, lambda: os.kill(victim, signal.SIGKILL))
    )
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
    assert set(statuses) <= {200, 503}, sorted(set(map(str, statuses)))
    unavailable = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 503]
    assert unavailable, "no request saw the instance process gone"
    assert "runtime-engine" in unavailable[0].json()["error"] and "t_linear" in unavailable[0].json()["error"]
    wait_for(lambda: len(instance_pids(master(server))) == len(MODELS), 60, "a new instance process")
    assert victim not in instance_pids(master(server))
    response = httpx.post(server.url + "/v2/models/t_linear/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    want = in_process("t_linear", {"x": np.array([x], np.float32)})["OUTPUT__0"]
    np.testing.assert_array_equal(np.array(response.json()["outputs"][0]["data"], np.float32), want.ravel())
    assert one_engine(master(server)) == engine and worker_pids(master(server)) == workers
    assert "Instance process" in server.log() and "restarting it" in server.log()


def test_a_killed_engine_takes_its_instance_processes_and_comes_back_with_new_ones(server: ServerProcess) -> None:
    engine = one_engine(master(server))
    instances = instance_pids(master(server))
    os.kill(engine, signal.SIGKILL)
    for pid in instances:  # PR_SET_PDEATHSIG: they die with the engine, whatever kills it
        wait_for(lambda pid=pid: comm(pid) != "runtime-inst", 30, f"instance process {pid} exit")  # type: ignore[misc]
    x = sample("t_pair", 2, seed=8)
    got: dict[str, np.ndarray] = {}

    def answered() -> bool:  # 503s until the new engine has loaded and this request's worker has reconnected
        try:
            got.update(infer(server, "t_pair", x))
        except InferenceServerException:
            return False
        return True

    wait_for(answered, 120, "recovery")
    for key, value in in_process("t_pair", x).items():
        np.testing.assert_array_equal(got[key], value)
    assert one_engine(master(server)) != engine
    renewed = instance_pids(master(server))
    assert len(renewed) == len(MODELS) and not renewed & instances


# The module's server, stopped last: the tests above only read from it (or restart an instance).


def test_sigkill_leaves_no_engine_worker_instance_process_or_shared_memory(
    server: ServerProcess, shm_before: set[str]
) -> None:
    engine = one_engine(master(server))
    instances = instance_pids(master(server))
    assert instances
    wait_for(lambda: len(worker_pids(master(server))) == 2, 30, "two workers")
    workers = worker_pids(master(server))
    body = as_body("linear", {"x": np.ones((1, 4), np.float32)}, {"x": "float32"})
    # The hardest stop, with requests in flight: the master cannot tell anyone.
    asyncio.run(load(server.url + "/score", lambda _: body, 3, 8, lambda: os.kill(master(server), signal.SIGKILL)))
    server.wait_exit(60)
    wait_for(lambda: comm(engine) != "runtime-engine", 30, "engine exit")
    for pid in instances:
        wait_for(lambda pid=pid: comm(pid) != "runtime-inst", 30, f"instance process {pid} exit")  # type: ignore[misc]
    for pid in workers:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, f"worker {pid} exit")  # type: ignore[misc]
    wait_for(lambda: dev_shm() <= shm_before, 15, f"/dev/shm back to what it was (new: {dev_shm() - shm_before})")
