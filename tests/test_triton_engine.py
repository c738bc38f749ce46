"""``--triton-client engine``: the model engine is Triton's client, against a real tritonserver.

One two-worker ``runtime serve --triton managed --triton-client engine`` for the module. Direct mode
(each worker calls Triton, the default) and remote mode are apps in this process pointed at that server's
Triton, so every mode answers from the same Triton. After the tests that read, one kills that Triton
under load and waits for its restart, and the last SIGKILLs the master: nothing it started may outlive it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from runtime.settings import Settings
from tests.conftest import script
from tests.support.cli import run_cli, serving, settings_of
from tests.support.inprocess import served
from tests.support.processes import children, comm, descendants, wait_gone
from tests.support.servers import ServerPool, ServerProcess, free_port
from tests.support.triton import its_triton, managed_flags, rows, score_many, triton_model_stats

pytestmark = [pytest.mark.slow, pytest.mark.external]

HOOK = script("backend/engine_hook.py")  # hook style: any model, the worker's pid in the answer
AML_LINEAR = script("backend/aml_linear.py")  # Azure ML style, the linear model
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


def test_a_remote_triton_through_the_engine(via_engine: ServerProcess) -> None:
    """``--triton-url`` (remote mode) with ``--triton-client engine``, on the module server's Triton: the command
    and the model engine it starts, with its app in this process (Gunicorn's workers: the module server)."""
    argv = ["serve", "--port", str(free_port()), "--entry", HOOK, "--backend", "triton",
            "--triton-url", its_triton(via_engine), "--triton-client", "engine"]  # fmt: skip
    x = rows(3)
    with serving(*argv) as (url, settings), served(direct(via_engine)) as direct_url:
        assert settings.engine_address is not None
        assert "runtime-engine" in {comm(p) for p in children(os.getpid())}  # this command's own engine
        response = httpx.post(url + "/score", json=body("linear", x), timeout=30)
        assert response.status_code == 200, response.text
        expected = httpx.post(direct_url + "/score", json=body("linear", x), timeout=30).json()["outputs"]
        np.testing.assert_allclose(response.json()["outputs"]["y"], expected["y"], rtol=1e-6)
        index = httpx.post(url + "/v2/repository/index").json()  # Triton's own index: no --model-dir
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


class Load:
    """Four clients posting ``body`` to ``url`` in threads until stopped: every status, and the message of
    each answer that is not a 200."""

    def __init__(self, url: str, body: dict[str, object]) -> None:
        self.url, self.body = url, body
        self.statuses: list[int] = []
        self.messages: set[str] = set()
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._post, daemon=True) for _ in range(4)]

    def _post(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                response = client.post(self.url + "/score", json=self.body)
                self.statuses.append(response.status_code)
                if response.status_code != 200:
                    self.messages.add(response.json()["message"])

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(60)


def test_triton_down_is_the_same_503_in_every_mode_then_recovers(via_engine: ServerProcess) -> None:
    """Kills the managed tritonserver under load (the runtime restarts it): the read-only tests above ran first.

    Its clients: the engine (``--triton-client engine``), direct mode, and ``runtime serve --triton-url`` in
    remote mode on the Azure ML style script, the last two apps in this process."""
    assert via_engine.proc is not None
    url = its_triton(via_engine)
    tritonserver = next(p for p in descendants(via_engine.proc.pid) if comm(p) == "tritonserver")
    one = body("linear", np.ones((1, 4), np.float32))
    remote_argv = ["serve", "--entry", AML_LINEAR, "--backend", "triton", "--triton-url", url]
    remote_settings = settings_of(*remote_argv, "--port", str(free_port()))
    with served(direct(via_engine)) as direct_url, served(remote_settings) as remote_url:
        with Load(remote_url, {"x": [1, 2, 3, 4]}) as remote:
            time.sleep(1)  # the remote mode's load runs against a live Triton first
            os.kill(tritonserver, signal.SIGKILL)
            killed = time.monotonic()
            answers = first_failures({"engine": via_engine.url, "direct": direct_url}, one, killed + 20)
            assert set(answers) == {"engine", "direct"}, "Triton was never seen down"
            for response in answers.values():
                assert response.status_code == 503
                assert response.json()["message"].startswith(f"Triton Inference Server at {url} is unavailable: ")
            assert "Traceback" not in answers["engine"].text
            time.sleep(max(0.0, killed + 1.5 - time.monotonic()))
            assert httpx.get(remote_url + "/v2/health/ready").status_code == 503
            live = httpx.get(remote_url + "/")
            assert live.status_code == 200 and live.text == "Healthy"
            # The runtime restarts its Triton; the engine's requests succeed again with no restart of anything else.
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if httpx.post(via_engine.url + "/score", json=one, timeout=30).status_code == 200:
                    break
                time.sleep(0.5)
            assert httpx.post(via_engine.url + "/score", json=one, timeout=30).status_code == 200
            time.sleep(2)  # the remote mode's load goes on against the restarted server
        assert 500 not in remote.statuses
        assert 503 in remote.statuses and remote.statuses[-1] == 200
        assert set(remote.statuses) <= {200, 503}
        assert all(f"Triton Inference Server at {url}" in m for m in remote.messages), remote.messages
        assert not any("Traceback" in m for m in remote.messages)
        assert httpx.get(remote_url + "/v2/health/ready").status_code == 200


def first_failures(bases: dict[str, str], one: dict[str, object], deadline: float) -> dict[str, httpx.Response]:
    """The first answer other than a 200 from each of ``bases`` (by name), posting ``one`` until ``deadline``."""
    answers: dict[str, httpx.Response] = {}
    while time.monotonic() < deadline and set(answers) != set(bases):
        for mode, base in bases.items():
            response = httpx.post(base + "/score", json=one, timeout=30)
            if response.status_code != 200:
                answers.setdefault(mode, response)
    return answers


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


# The last test: the module server's master SIGKILLed.


def test_managed_mode_leaves_no_orphans_when_the_master_crashes(via_engine: ServerProcess) -> None:
    assert via_engine.proc is not None
    family = descendants(via_engine.proc.pid)  # workers, the model engine, tritonserver and its stubs
    assert {"runtime-engine", "tritonserver"} <= {comm(p) for p in family}
    via_engine.proc.send_signal(signal.SIGKILL)
    via_engine.proc.wait(10)
    orphans = wait_gone(family, 45)
    assert not orphans, f"orphans left: {orphans}"
