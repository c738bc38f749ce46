"""The embedded backend under load: correctness of batching, and batching itself.

The Azure ML style script runs its models in the model engine: ``runtime serve`` with the engine it
starts, and its app in this process (tests.support.cli.serving). The hook-style one is a real server
with the models in each of its two workers (``--engine worker``), whose metrics are summed across them
(the engine's own batching of two workers' requests: tests/test_engine.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import script
from tests.support.cli import serving
from tests.support.engine import engine_pids
from tests.support.models import linear_reference
from tests.support.servers import ServerPool, ServerProcess, free_port

pytestmark = pytest.mark.slow

CLIENTS = 32
# The hook-style server has two workers, each with the models: the metrics test sums them (it counts from
# before to after).
HOOK = ("--entry", script("backend/hook_linear.py"), "--workers", "2", "--engine", "worker")


@pytest.fixture
def aml_linear(model_repo: Path) -> Iterator[str]:
    """The Azure ML style script with its model engine; the app's base URL. For one test: the command sets
    its environment (the metrics folder) in this process, which a real server started meanwhile would get."""
    argv = ("serve", "--port", str(free_port()), "--entry", script("backend/aml_linear.py"))
    with serving(*argv, "--model-dir", str(model_repo)) as (url, settings):
        assert settings.engine_address is not None
        yield url


def hook_server(servers: ServerPool, model_repo: Path) -> ServerProcess:
    """The hook-style script on a real two-worker server."""
    return servers.get(*HOOK, "--model-dir", str(model_repo))


@pytest.fixture
def hook_linear(servers: ServerPool, model_repo: Path) -> str:
    return hook_server(servers, model_repo).url


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, 4)).astype(np.float32)


async def score_all(url: str, bodies: list[dict[str, object]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(url + "/score", json=b) for b in bodies))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == want:
            total += float(match.group(2))
    return total


@pytest.mark.parametrize("entry", ["hook_linear", "aml_linear"])
def test_concurrent_batched_results_equal_per_request_results(request: pytest.FixtureRequest, entry: str) -> None:
    url = request.getfixturevalue(entry)
    x = rows(CLIENTS * 4)
    for model in ("linear", "sleepy"):
        responses = asyncio.run(score_all(url, [{"x": r.tolist(), "model": model} for r in x]))
        assert [r.status_code for r in responses] == [200] * len(x), responses[0].text
        got = np.array([r.json()["y"] for r in responses], dtype=np.float32)
        if model == "linear":
            np.testing.assert_allclose(got, linear_reference(x)["y"], rtol=1e-5, atol=1e-5)
        else:
            # The same rows one at a time: batching must not change any row's answer.
            single = np.array(
                [httpx.post(url + "/score", json={"x": r.tolist(), "model": model}).json()["y"] for r in x[:8]]
            )
            np.testing.assert_allclose(got[:8], single, rtol=1e-4, atol=1e-5)
    metrics = httpx.get(url + "/metrics").text
    count = metric(metrics, "runtime_batch_size_count", model="sleepy", version="1")
    ones = metric(metrics, "runtime_batch_size_bucket", model="sleepy", version="1", le="1.0")
    assert count > 0 and ones < count, f"no batch larger than 1: {count=} {ones=}"
    assert metric(metrics, "nv_inference_count_total", model="sleepy", version="1") >= len(x) + 8


def test_unbatched_model_runs_batches_of_one(servers: ServerPool, model_repo: Path) -> None:
    server = hook_server(servers, model_repo)
    x = rows(CLIENTS)
    responses = asyncio.run(score_all(server.url, [{"x": r.tolist(), "model": "sleepy_unbatched"} for r in x]))
    assert {r.status_code for r in responses} == {200}, responses[0].text
    metrics = httpx.get(server.url + "/metrics").text
    count = metric(metrics, "runtime_batch_size_count", model="sleepy_unbatched", version="1")
    ones = metric(metrics, "runtime_batch_size_bucket", model="sleepy_unbatched", version="1", le="1.0")
    assert count == len(x) and ones == count


def test_bad_tensor_from_score_py_is_400(aml_linear: str) -> None:
    response = httpx.post(aml_linear + "/score", json={"x": [1, 2, 3]})
    assert response.status_code == 400
    assert response.json() == {
        "message": "input 'x' of model 'linear' has shape [1, 3], expected [-1, 4] (batch dimension first)"
    }
    assert httpx.post(aml_linear + "/score", json={"x": [1, 2, 3, 4]}).status_code == 200


def test_metrics_cover_routes_and_sum_across_workers(servers: ServerPool, model_repo: Path) -> None:
    server = hook_server(servers, model_repo)
    before = httpx.get(server.url + "/metrics").text
    responses = asyncio.run(score_all(server.url, [{"x": r.tolist()} for r in rows(64)]))
    assert {r.status_code for r in responses} == {200}
    bad = httpx.post(server.url + "/score", json={"nope": 1})
    assert bad.status_code == 400
    after = httpx.get(server.url + "/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("runtime_http_requests_total", method="POST", route="/score", status="200") == 64
    assert delta("runtime_http_requests_total", method="POST", route="/score", status="400") == 1
    assert delta("nv_inference_request_success_total", model="linear", version="1") == 64
    assert delta("runtime_http_request_duration_seconds_count", method="POST", route="/score") == 65
    assert delta("runtime_queue_duration_seconds_count", model="linear", version="1") == 64
    assert delta("nv_inference_exec_count_total", model="linear", version="1") <= 64


def test_engine_worker_mode_loads_models_in_every_worker(servers: ServerPool, model_repo: Path) -> None:
    server = hook_server(servers, model_repo)
    assert server.proc is not None
    assert engine_pids(server.proc.pid) == set()
    assert httpx.post(server.url + "/score", json={"x": [1, 2, 3, 4]}).status_code == 200
