"""The Triton backend against a real tritonserver: remote, managed, faults, batching, the seed's scripts, tracing,
the reference examples.

One Triton for the module: the managed one of a two-worker ``runtime serve --triton managed``, serving the test
models, the examples' and a python-backend model, and tracing with OpenTelemetry to the module's collector
(RUNTIME_TRITONSERVER_ARGS). The tests read through the server's real Gunicorn workers, and point apps in this
process at its Triton in remote mode; the last of them stops its master with SIGINT. A second managed server,
with the model engine as Triton's client, serves a python-backend model beside an ONNX one and is stopped with
SIGTERM. A Triton killed under load, and a managed master SIGKILLed, are in tests/test_triton_engine.py, on that
module's managed server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import tracing
from runtime.settings import Settings
from tests.conftest import script
from tests.support import examples
from tests.support.cli import settings_of
from tests.support.inprocess import AppPool, app_client, captured_logs, served, startup_failure
from tests.support.models import linear_reference
from tests.support.otlp import Collector, ExportedSpan, collector
from tests.support.processes import descendants, wait_gone
from tests.support.servers import ServerPool, ServerProcess, free_port
from tests.support.triton import its_triton, rows, score_many
from tests.support.triton import managed_flags as triton_flags

pytestmark = [pytest.mark.slow, pytest.mark.external]

AML_LINEAR = script("backend/aml_linear.py")


@pytest.fixture(scope="module")
def triton_spans() -> Iterator[Collector]:
    """Where the module's tritonserver sends its OpenTelemetry spans."""
    with collector() as received:
        yield received


@pytest.fixture(scope="module")
def triton_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test models, the reference examples' models (tests/support/examples.py) and a model only Triton serves
    (its python backend: ``echo``, tests/test_triton_repository.py) in one repository."""
    from tests.test_triton_repository import python_model

    root = examples.make_repository(tmp_path_factory.mktemp("remote-triton"))
    for model in (model_repo / "triton").iterdir():
        (root / "triton" / model.name).symlink_to(model)
    python_model(root / "triton")
    return root


def managed_flags(model_dir: Path, binary: Path, *extra: str) -> tuple[str, ...]:
    return triton_flags(AML_LINEAR, model_dir, binary, *extra)


@pytest.fixture(scope="module")
def managed_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    with ServerPool(tmp_path_factory.mktemp("managed")) as pool:
        yield pool


def via_triton_args(repo: Path, binary: Path, spans: Collector) -> tuple[tuple[str, ...], dict[str, str]]:
    """Two workers and a managed Triton that traces every request to ``spans``: read by the tests, then stopped
    with SIGTERM."""
    trace = ["mode=opentelemetry", "rate=1", "level=TIMESTAMPS"]
    trace += [f"opentelemetry,url=127.0.0.1:{spans.port}/v1/traces", "opentelemetry,bsp_schedule_delay=50"]
    args = " ".join(f"--trace-config {setting}" for setting in trace)
    return managed_flags(repo, binary, "--workers", "2"), {"RUNTIME_TRITONSERVER_ARGS": args}


@pytest.fixture
def via_triton(
    managed_servers: ServerPool, triton_repo: Path, tritonserver_binary: Path, triton_spans: Collector
) -> ServerProcess:
    flags, env = via_triton_args(triton_repo, tritonserver_binary, triton_spans)
    return managed_servers.get(*flags, env=env)


@pytest.fixture
def triton_url(via_triton: ServerProcess) -> str:
    """host:port of the module's Triton, for apps in this process in remote mode."""
    return its_triton(via_triton)


def test_same_answers_as_the_embedded_backend(via_triton: ServerProcess, model_repo: Path) -> None:
    x = rows(24)
    bodies = [{"x": r.tolist()} for r in x]
    got_triton = [r.json()["y"] for r in asyncio.run(score_many(via_triton.url, bodies))]
    # The embedded backend in this process: the same script and models, answers computed by onnxruntime.
    with served(Settings(entry_script=AML_LINEAR, model_dir=str(model_repo))) as embedded:
        got_embedded = [r.json()["y"] for r in asyncio.run(score_many(embedded, bodies))]
    np.testing.assert_allclose(got_triton, got_embedded, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_triton, linear_reference(x)["y"], rtol=1e-5, atol=1e-5)

    # The runtime's v2 endpoints serve Triton's models too: one API whichever backend is active.
    client = triton.InferenceServerClient(via_triton.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready("strings")
    text = triton.InferInput("text", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"world"], [b"x"]], dtype=object))
    assert client.infer("strings", [text]).as_numpy("id").ravel().tolist() == [2, 0]
    logits = triton.InferInput("x", [1, 5], "FP32")
    logits.set_data_from_numpy(np.array([[1, 5, 2, 3, 0]], dtype=np.float32))
    result = client.infer("classifier", [logits], outputs=[triton.InferRequestedOutput("probs", class_count=2)])
    top = [v.decode() for v in result.as_numpy("probs").ravel()]
    assert [t.split(":", 1)[1] for t in top] == ["1:b", "3:d"]
    client.close()


def test_remote_mode_without_entry_or_model_dir(triton_url: str) -> None:
    """`runtime serve --backend triton --triton-url URL`: Triton's models (from its repository index) over v2.

    The command's own parser and checks accept it; the app it would serve runs in this process."""
    settings = settings_of("serve", "--backend", "triton", "--triton-url", triton_url, "--port", str(free_port()))
    with served(settings) as url:
        index = httpx.post(url + "/v2/repository/index").json()
        assert {e["name"] for e in index} >= {"linear", "strings", "classifier", "sleepy"}
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("linear", [tensor]).as_numpy("y"), linear_reference(x)["y"], rtol=1e-5)
        assert client.get_model_metadata("linear")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        client.close()


def test_bad_input_is_400_with_a_message(via_triton: ServerProcess) -> None:
    server = via_triton
    response = httpx.post(server.url + "/score", json={"x": [1, 2]})
    assert response.status_code == 400
    assert "input 'x' of model 'linear' has shape [1, 2], expected [-1, 4]" in response.json()["message"]
    v2 = httpx.post(
        server.url + "/v2/models/linear/infer",
        json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
    )
    assert v2.status_code == 400 and "expecting TYPE_FP32" in v2.json()["error"]


def test_seed_style_script_with_tritonhttpclient(triton_url: str) -> None:
    settings = {"entry_script": script("triton/seed_score.py"), "backend": "triton", "triton_url": triton_url}
    with captured_logs() as log, app_client(**settings) as server:
        response = server.post("/score", content=json.dumps([1, 5, 2, 3, 0]))
    # The script's own client lives in this process now: closed, so that Triton's shutdown does not wait on it.
    sys.modules["seed_utils"]._client.close()
    assert response.status_code == 200, log
    assert [t.split(":", 1)[1] for t in response.json()["top"]] == ["1:b", "3:d"]


def test_dynamic_batching_in_triton_across_two_workers(via_triton: ServerProcess) -> None:
    server, stats = via_triton, f"http://{its_triton(via_triton)}/v2/models/sleepy/stats"
    before = httpx.get(stats).json()["model_stats"][0]
    responses = asyncio.run(score_many(server.url, [{"x": r.tolist(), "model": "sleepy"} for r in rows(96)]))
    assert {r.status_code for r in responses} == {200}
    after = httpx.get(stats).json()["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 96
    assert executions < inferences, "Triton ran every request alone: no dynamic batching"
    sizes = [b["batch_size"] for b in after["batch_stats"]]
    assert max(sizes) > 1


TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def test_triton_continues_the_trace(triton_url: str, triton_spans: Collector) -> None:
    """Triton, tracing with OpenTelemetry, makes its request span a child of the runtime's ``triton infer``."""
    exported = InMemorySpanExporter()
    settings = {
        "entry_script": script("backend/hook_linear.py"),
        "backend": "triton",
        "triton_url": triton_url,
        "otel_traces_exporter": ("console",),
    }
    try:
        with app_client(**settings) as http:
            tracing.add_processor(SimpleSpanProcessor(exported))
            traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
            response = http.post("/score", json={"x": [1, 2, 3, 4]}, headers={"traceparent": traceparent})
            assert response.status_code == 200, response.text
    finally:
        tracing.shutdown()
    ours = [s for s in exported.get_finished_spans() if s.name == "triton infer"][-1]
    assert ours.context is not None and f"{ours.context.trace_id:032x}" == TRACE_ID

    def theirs() -> list[ExportedSpan]:
        return [s for s in triton_spans.spans if s.trace_id == TRACE_ID]

    # The module's Triton goes on running: its exporter sends each batch 50 ms after the span ends.
    deadline = time.monotonic() + 10
    while not theirs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert theirs(), triton_spans.spans
    assert f"{ours.context.span_id:016x}" in {s.parent_span_id for s in theirs()}


# The reference examples on Triton (on the embedded backend: tests/test_examples.py), through apps in this
# process. Their idle connections are closed before the module's Triton stops (by the Ctrl-C test at the end).


@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_end_to_end(triton_url: str, apps: AppPool, triton_repo: Path, script: str) -> None:
    server = examples.serve(apps, examples.DENSENET / script, triton_repo, triton_url)
    examples.check_densenet(server, triton_repo, script)


def test_densenet_concurrent_requests_are_batched(triton_url: str, apps: AppPool, triton_repo: Path) -> None:
    """Batches show in the app's /metrics, from Triton's statistics (added to this process's registry, where
    other tests' requests add batches of one at most: they send one request at a time)."""
    examples.check_batched(examples.serve(apps, examples.DENSENET / "score_densenet.py", triton_repo, triton_url))


@pytest.mark.parametrize("script", ["score_bidaf.py", "score_bidaf_aml.py"])
def test_bidaf_end_to_end(triton_url: str, apps: AppPool, triton_repo: Path, script: str) -> None:
    examples.check_bidaf(examples.serve(apps, examples.BIDAF / script, triton_repo, triton_url), triton_repo)


def test_startup_waits_for_triton_within_a_bound() -> None:
    settings = {"entry_script": AML_LINEAR, "backend": "triton", "triton_url": "127.0.0.1:9", "triton_wait_s": 2.0}
    log = startup_failure(**settings)
    assert "Triton Inference Server at 127.0.0.1:9: the server is not ready: connection refused" in log
    assert " s of 2 s; RUNTIME_TRITON_WAIT_S sets how long)" in log


def test_triton_queue_rejections_are_load_shedding_not_outages() -> None:
    from runtime_plugins.triton_backend import triton_error
    from tritonclient.utils import InferenceServerException

    from runtime.errors import Overloaded, ServiceUnavailable

    full = triton_error(InferenceServerException("Exceeds maximum queue size", status="503"), "t:8000")
    timed_out = triton_error(InferenceServerException("Request timeout expired", status="503"), "t:8000")
    down = triton_error(InferenceServerException("connection refused", status="503"), "t:8000")
    assert isinstance(full, Overloaded) and isinstance(timed_out, Overloaded)
    assert "rejected the request: Exceeds maximum queue size" in full.message
    assert isinstance(down, ServiceUnavailable) and not isinstance(down, Overloaded)


@pytest.fixture(scope="module")
def mixed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_triton_repository import mixed_repository

    return mixed_repository(tmp_path_factory.mktemp("mixed") / "repo")


def engine_client_flags(mixed_repo: Path, binary: Path) -> tuple[str, ...]:
    """A managed Triton with the model engine as its client, on an ONNX model and a python-backend one: read by
    the python-backend test, then stopped with SIGTERM by the managed-mode test."""
    return managed_flags(mixed_repo, binary, "--triton-client", "engine")


@pytest.fixture
def via_engine_client(managed_servers: ServerPool, mixed_repo: Path, tritonserver_binary: Path) -> ServerProcess:
    return managed_servers.get(*engine_client_flags(mixed_repo, tritonserver_binary))


@pytest.mark.parametrize("client", ["worker", "engine"])
def test_managed_triton_serves_a_python_backend_model_beside_onnx(request: pytest.FixtureRequest, client: str) -> None:
    """A repository holding a model only Triton serves (its python backend): refused at start-up before, as a
    platform the embedded backend does not serve ("use --backend triton", which it was). Each Triton client on a
    module server: the workers on the module's, the model engine on the one the managed-mode test stops."""
    server: ServerProcess = request.getfixturevalue("via_triton" if client == "worker" else "via_engine_client")
    x = [1.5, -2.0, 3.0, 4.0]
    body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": x}]}
    response = httpx.post(f"{server.url}/v2/models/echo/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == x
    assert httpx.post(server.url + "/score", json={"x": [1, 2, 3, 4]}).status_code == 200  # the ONNX model too


def test_managed_mode_starts_serves_and_stops_cleanly(
    managed_servers: ServerPool, mixed_repo: Path, tritonserver_binary: Path
) -> None:
    server = managed_servers.take(*engine_client_flags(mixed_repo, tritonserver_binary))  # stopped here
    response = httpx.post(server.url + "/score", json={"x": [1, 2, 3, 4]})
    assert response.status_code == 200
    np.testing.assert_allclose(
        response.json()["y"], linear_reference(np.array([[1, 2, 3, 4]], np.float32))["y"][0], rtol=1e-5
    )
    assert "[tritonserver]" in server.log()
    assert server.proc is not None
    family = descendants(server.proc.pid)
    assert len(family) >= 3  # a worker, tritonserver and its python-backend stubs
    regions = sorted(Path("/dev/shm").glob(f"runtime-triton-{server.proc.pid}-*"))
    assert regions  # the python backend's shared memory, named for this server
    assert server.stop() == 0
    assert not wait_gone(family, 30)
    assert not [r for r in regions if r.exists()]


def test_ctrl_c_to_a_serving_managed_triton_master_stops_without_a_restart(
    managed_servers: ServerPool, triton_repo: Path, tritonserver_binary: Path, triton_spans: Collector, apps: AppPool
) -> None:
    """`kill -INT` to the master of a server that serves: the worker unwinding through the master's code left
    Triton alone only once the owner check was there (it stopped it, the supervisor restarted it, and the
    worker hung until Gunicorn's SIGKILL after 30 s). The module's server, after every test that reads from it."""
    flags, env = via_triton_args(triton_repo, tritonserver_binary, triton_spans)
    server = managed_servers.take(*flags, env=env)  # stopped here
    apps.close()  # the apps above, pointed at its Triton: their idle connections go first
    assert server.proc is not None
    family = descendants(server.proc.pid)
    regions = sorted(Path("/dev/shm").glob(f"runtime-triton-{server.proc.pid}-*"))
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.wait_exit(60) == 130
    log = server.log()
    assert time.monotonic() - started < 15, log[-2000:]
    assert "restarting it" not in log and "SIGKILL" not in log and "Traceback" not in log
    assert not wait_gone(family, 30)
    assert regions and not [r for r in regions if r.exists()]


def test_waiting_for_a_model_triton_failed_to_load_says_why(tritonserver_binary: Path, tmp_path: Path) -> None:
    """A remote Triton that runs on without a model it could not load: the wait said "it answers, but is not
    ready yet" for RUNTIME_TRITON_WAIT_S (120 s by default), then the same; Triton's index has the reason."""
    from runtime.errors import StartupError
    from runtime.serving.tritoncall import TritonServer
    from runtime.serving.tritonserver import ManagedTriton
    from tests.test_triton_repository import mixed_repository

    repo = mixed_repository(tmp_path / "repo")
    (repo / "echo" / "1" / "model.py").write_text("raise RuntimeError('no weights in /models/echo')\n")
    triton = ManagedTriton(str(repo), tritonserver_binary, supervise=False, extra_args=["--exit-on-error=false"])
    triton._spawn()  # not start(): that waits for a ready server, and this one never is

    def loaded() -> bool:
        try:
            index = httpx.post(f"http://{triton.url}/v2/repository/index", timeout=2).json()
        except httpx.HTTPError:
            return False
        return {entry.get("state") for entry in index} == {"READY", "UNAVAILABLE"}

    async def wait(names: list[str] | None) -> str:
        server = TritonServer(triton.url, 1, 5)
        try:
            with pytest.raises(StartupError) as info:
                await server.wait_for_models(names, 0.5)
            return str(info.value)
        finally:
            await server.close()

    try:
        triton._wait_for(loaded, 60, 0.2)
        for names in (None, ["echo"]):
            message = asyncio.run(wait(names))
            assert "model 'echo' version 1 is UNAVAILABLE: " in message, message
            assert "RuntimeError: no weights in /models/echo" in message
            assert "linear" not in message  # it is ready
    finally:
        triton.stop()
