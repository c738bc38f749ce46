"""``--triton-client engine``: the model engine is Triton's client, against a real tritonserver.

One two-worker ``runtime serve --triton managed --triton-client engine`` for the module. Direct mode
(each worker calls Triton, the default) is an app in this process pointed at that server's Triton, so
both modes answer from the same Triton. The last test kills that Triton and waits for its restart.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from runtime.settings import Settings
from tests.conftest import StartRuntime, script
from tests.support.cli import run_cli
from tests.support.inprocess import served
from tests.support.processes import comm, descendants
from tests.support.servers import ServerPool, ServerProcess, free_port
from tests.support.triton import its_triton, managed_flags, rows, score_many, triton_model_stats

pytestmark = [pytest.mark.slow, pytest.mark.external]

HOOK = script("backend/engine_hook.py")  # hook style: any model, the worker's pid in the answer
TYPED = {"i8": np.int8, "u8": np.uint8, "i16": np.int16, "i32": np.int32, "i64": np.int64, "f16": np.float16,
         "f32": np.float32, "f64": np.float64, "b": np.bool_}  # fmt: skip


@pytest.fixture(scope="module")
def via_engine(
    tmp_path_factory: pytest.TempPathFactory, model_repo: Path, tritonserver_binary: Path
) -> Iterator[ServerProcess]:
    with ServerPool(tmp_path_factory.mktemp("triton-engine")) as pool:
        engine = ("--workers", "2", "--triton-client", "engine")
        yield pool.get(*managed_flags(HOOK, model_repo, tritonserver_binary, *engine))


def direct(server: ServerProcess) -> Settings:
    """Direct mode (as shipped) on the same Triton as ``server``."""
    return Settings(entry_script=HOOK, backend="triton", triton_url=its_triton(server))


def body(model: str, x: np.ndarray) -> dict[str, object]:
    return {"model": model, "inputs": {"x": x.tolist()}, "dtypes": {"x": "float32"}}


def v2_answers(url: str) -> dict[str, np.ndarray]:
    """BYTES in and out, every numeric datatype, and classification, through tritonclient."""
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        text = triton.InferInput("text", [3, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"world"], [b"x"], [b"hello"]], dtype=object))
        strings = client.infer("strings", [text])
        typed = []
        for key, dtype in TYPED.items():
            tensor = triton.InferInput(f"in_{key}", [2, 2], triton.np_to_triton_dtype(np.dtype(dtype)))
            tensor.set_data_from_numpy(np.array([[1, 0], [3, 4]], dtype=dtype))
            typed.append(tensor)
        wanted = [triton.InferRequestedOutput(f"out_{k}") for k in ("i8", "f16", "b")]
        types = client.infer("types", typed, outputs=wanted)
        logits = triton.InferInput("x", [1, 5], "FP32")
        logits.set_data_from_numpy(np.array([[1, 5, 2, 3, 0]], dtype=np.float32))
        classified = client.infer("classifier", [logits], outputs=[triton.InferRequestedOutput("probs", class_count=2)])
        plain = client.infer("classifier", [logits])
        return {
            "id": strings.as_numpy("id"),
            "echo": strings.as_numpy("echo"),
            "out_i8": types.as_numpy("out_i8"),
            "out_f16": types.as_numpy("out_f16"),
            "out_b": types.as_numpy("out_b"),
            "classes": classified.as_numpy("probs"),
            "probs": plain.as_numpy("probs"),
        }
    finally:
        client.close()


def test_the_engine_is_tritons_client_and_answers_as_direct_mode(via_engine: ServerProcess) -> None:
    assert via_engine.proc is not None
    names = {comm(pid) for pid in descendants(via_engine.proc.pid)}
    assert {"runtime-engine", "tritonserver"} <= names, names
    assert "its client: the model engine (runtime-engine)" in via_engine.log()
    bodies = [body("linear", r[None]) for r in rows(24)]
    through_engine = [r.json()["outputs"] for r in asyncio.run(score_many(via_engine.url, bodies))]
    engine_v2 = v2_answers(via_engine.url)
    with served(direct(via_engine)) as url:
        straight = [r.json()["outputs"] for r in asyncio.run(score_many(url, bodies))]
        direct_v2 = v2_answers(url)
    for engine_outputs, direct_outputs in zip(through_engine, straight, strict=True):
        assert engine_outputs.keys() == direct_outputs.keys() == {"y", "norm"}
        for name, value in engine_outputs.items():
            np.testing.assert_allclose(value, direct_outputs[name], rtol=1e-6, atol=1e-6)
    assert engine_v2.keys() == direct_v2.keys()
    for name, value in engine_v2.items():
        assert value.dtype == direct_v2[name].dtype and value.shape == direct_v2[name].shape, name
        np.testing.assert_array_equal(value, direct_v2[name], err_msg=name)
    assert engine_v2["id"].ravel().tolist() == [2, 0, 1]
    assert [v.decode().split(":", 1)[1] for v in engine_v2["classes"].ravel()] == ["1:b", "3:d"]


def worker_batches(metrics_text: str, model: str) -> tuple[float, float]:
    """(batches, batches holding requests of more than one worker) from runtime_batch_worker_processes."""

    def value(series: str) -> float:
        match = re.search(rf'^{series}\{{(?=[^}}]*model="{model}")[^}}]*\}} (\S+)$', metrics_text, re.M)
        return float(match.group(1)) if match else 0.0

    total = value("runtime_batch_worker_processes_count")
    alone = value(r'runtime_batch_worker_processes_bucket(?=\{[^}]*le="1.0")')
    return total, total - alone


def test_both_workers_requests_join_one_triton_request(via_engine: ServerProcess) -> None:
    url = its_triton(via_engine)
    before = triton_model_stats(url, "sleepy")
    metrics_before = worker_batches(httpx.get(via_engine.url + "/metrics").text, "sleepy")

    async def burst() -> list[httpx.Response]:
        # A connection per request: which worker accepts a kept-alive connection is the kernel's choice, and
        # one worker may take all 32 of them.
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            close = {"Connection": "close"}
            return await asyncio.gather(
                *(
                    client.post(via_engine.url + "/score", json=body("sleepy", r[None]), headers=close)
                    for r in rows(192)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 192
    pids = {r.json()["pid"] for r in responses}
    assert len(pids) == 2, f"requests were served by workers {pids}"
    after = triton_model_stats(url, "sleepy")
    received = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert after["inference_count"] - before["inference_count"] == 192
    assert received < 192, "Triton got a request per client request: the engine batched nothing"
    metrics_after = worker_batches(httpx.get(via_engine.url + "/metrics").text, "sleepy")
    batches, shared = (a - b for a, b in zip(metrics_after, metrics_before, strict=True))
    assert batches == received  # one Triton request per engine batch
    assert shared >= 1, "no batch held requests of both workers"


def test_a_remote_triton_through_the_engine(via_engine: ServerProcess, start_runtime: StartRuntime) -> None:
    """``--triton-url`` (remote mode) with ``--triton-client engine``, on the module server's Triton."""
    remote = start_runtime("--entry", HOOK, "--backend", "triton", "--triton-url", its_triton(via_engine),
                           "--triton-client", "engine")  # fmt: skip
    assert remote.proc is not None
    assert "runtime-engine" in {comm(p) for p in descendants(remote.proc.pid)}
    x = rows(3)
    response = httpx.post(remote.url + "/score", json=body("linear", x), timeout=30)
    assert response.status_code == 200, response.text
    with served(direct(via_engine)) as url:
        expected = httpx.post(url + "/score", json=body("linear", x), timeout=30).json()["outputs"]
    np.testing.assert_allclose(response.json()["outputs"]["y"], expected["y"], rtol=1e-6)
    index = httpx.post(remote.url + "/v2/repository/index").json()  # Triton's own index: no --model-dir
    assert {e["name"] for e in index} >= {"linear", "strings", "sleepy"}


def test_a_killed_engine_is_a_503_naming_it_then_it_is_back_as_tritons_client(via_engine: ServerProcess) -> None:
    assert via_engine.proc is not None
    family = descendants(via_engine.proc.pid)
    engine = next(p for p in family if comm(p) == "runtime-engine")
    workers = {p for p in family if comm(p) == "runtime"}
    assert len(workers) == 2, {p: comm(p) for p in family}
    one = body("linear", np.ones((1, 4), np.float32))
    os.kill(engine, signal.SIGKILL)
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.post(via_engine.url + "/score", json=one, timeout=30)
        statuses.append(response.status_code)
        if response.status_code == 200 and 503 in statuses:
            break
        if response.status_code != 200:
            assert response.status_code == 503, response.text
            assert "The model engine (runtime-engine) is unavailable" in response.json()["message"]
        time.sleep(0.05)
    assert statuses[-1] == 200 and 503 in statuses, statuses
    after = descendants(via_engine.proc.pid)
    assert {p for p in after if comm(p) == "runtime"} == workers  # the workers were not restarted
    assert engine not in after and any(comm(p) == "runtime-engine" for p in after)


def test_triton_down_is_the_same_503_as_direct_mode_then_recovers(via_engine: ServerProcess) -> None:
    """Kills the managed tritonserver (the runtime restarts it): the read-only tests above ran first."""
    assert via_engine.proc is not None
    url = its_triton(via_engine)
    tritonserver = next(p for p in descendants(via_engine.proc.pid) if comm(p) == "tritonserver")
    one = body("linear", np.ones((1, 4), np.float32))
    with served(direct(via_engine)) as direct_url:
        os.kill(tritonserver, signal.SIGKILL)
        deadline = time.monotonic() + 20
        answers: dict[str, httpx.Response] = {}
        while time.monotonic() < deadline and set(answers) != {"engine", "direct"}:
            for mode, base in (("engine", via_engine.url), ("direct", direct_url)):
                response = httpx.post(base + "/score", json=one, timeout=30)
                if response.status_code != 200:
                    answers.setdefault(mode, response)
        assert set(answers) == {"engine", "direct"}, "Triton was never seen down"
        for response in answers.values():
            assert response.status_code == 503
            assert response.json()["message"].startswith(f"Triton Inference Server at {url} is unavailable: ")
        assert "Traceback" not in answers["engine"].text
    # The runtime restarts its Triton; the engine's requests succeed again with no restart of anything else.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if httpx.post(via_engine.url + "/score", json=one, timeout=30).status_code == 200:
            break
        time.sleep(0.5)
    assert httpx.post(via_engine.url + "/score", json=one, timeout=30).status_code == 200


def test_engine_start_up_waits_for_a_remote_triton_within_a_bound(capfd: pytest.CaptureFixture[str]) -> None:
    # The command in this process, with its real model engine (a process of its own, which gives up on Triton).
    result = run_cli(
        "serve", "--port", str(free_port()), "--entry", HOOK, "--backend", "triton", "--triton-url", "127.0.0.1:9",
        "--triton-client", "engine", env={"RUNTIME_TRITON_WAIT_S": "2"}, engine=True,
    )  # fmt: skip
    assert result.returncode == 3
    log = result.stdout + result.stderr + capfd.readouterr().err
    assert "Triton Inference Server at 127.0.0.1:9: the server is not ready: connection refused" in log
    assert "the model engine exited with code 3 while starting" in log
