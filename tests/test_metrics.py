"""runtime.metrics: the batched writes give the same exposition as prometheus-client's own calls; the HTTP
request counts' route labels."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from runtime import metrics
from runtime.http.middleware.request_metrics import MetricsMiddleware
from runtime.serving.batching import BatchStats

AMOUNTS = [0.0, 0.0, 0.0004, 0.0005, 0.003, 0.003, 0.2, 99.0]


@pytest.mark.parametrize("amounts", [AMOUNTS, [0.0], [0.003], [], [100.0, 0.0]])
def test_observe_all_matches_observe_per_amount(amounts: list[float]) -> None:
    registry = CollectorRegistry()
    one = Histogram("one", "h", buckets=metrics.LATENCY_BUCKETS, registry=registry)
    many = Histogram("many", "h", buckets=metrics.LATENCY_BUCKETS, registry=registry)
    for amount in amounts:
        one.observe(amount)
    metrics.observe_all(many, amounts)
    text = generate_latest(registry).decode()
    ones = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("one")]
    manys = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith("many")]
    assert manys == ones
    assert len(ones) == len(metrics.LATENCY_BUCKETS) + 1 + 2  # buckets, +Inf, count, sum


def test_record_request_counts_a_batch_at_once() -> None:
    success = metrics._child(metrics.REQUEST_SUCCESS, "metrics-unit", "1")
    duration = metrics._child(metrics.REQUEST_DURATION, "metrics-unit", "1")
    failure = metrics._child(metrics.REQUEST_FAILURE, "metrics-unit", "1", "BACKEND")
    before = success._value.get(), duration._value.get(), failure._value.get()
    metrics.record_request("metrics-unit", "1", 0.002, True, count=5)
    metrics.record_request("metrics-unit", "1", 0.001, False, "BACKEND", count=3)
    after = success._value.get(), duration._value.get(), failure._value.get()
    assert after[0] - before[0] == 5
    assert after[1] - before[1] == pytest.approx(5 * 2000 + 3 * 1000)
    assert after[2] - before[2] == 3


def test_record_batch_writes_queue_times_once_per_bucket() -> None:
    stats = BatchStats(batch_size=4, requests=3, queue_seconds=[0.0, 0.0, 0.004], compute_seconds=0.001)
    queue = metrics._child(metrics.QUEUE_TIME, "metrics-unit", "2")
    waited = metrics._child(metrics.QUEUE_DURATION, "metrics-unit", "2")
    metrics.record_batch("metrics-unit", "2", stats)
    counts = [b.get() for b in queue._buckets]
    assert counts[0] == 2 and counts[metrics.LATENCY_BUCKETS.index(0.005)] == 1 and sum(counts) == 3
    assert queue._sum.get() == pytest.approx(0.004)
    assert waited._value.get() == pytest.approx(4000)


def _model_samples(model: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import REGISTRY

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("model") == model
    }


def test_deferred_model_metrics_are_written_alike_on_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    def record(model: str) -> None:
        metrics.record_batch(model, "1", BatchStats(3, 2, [0.0, 0.004], 0.002, [7, 8]))
        metrics.record_batch(model, "1", BatchStats(1, 1, [0.0], 0.001, [7]))
        metrics.record_batch_workers(model, "1", 2)
        metrics.record_batch_workers(model, "1", 1)
        metrics.record_request(model, "1", 0.003, True, count=2)
        metrics.record_request(model, "1", 0.001, False, "BACKEND")
        metrics.record_request(model, "1", 0.002, True)

    record("written-now")
    monkeypatch.setattr(metrics, "_deferred", None)
    metrics.defer_model_metrics()
    record("deferred")
    assert _model_samples("deferred") == {}  # held back: nothing written yet
    metrics.flush_model_metrics()
    now = {
        (name, tuple(kv for kv in labels if kv[0] != "model")): v
        for (name, labels), v in _model_samples("written-now").items()
    }
    later = {
        (name, tuple(kv for kv in labels if kv[0] != "model")): v
        for (name, labels), v in _model_samples("deferred").items()
    }
    assert later == pytest.approx(now)
    assert now[("nv_inference_exec_count_total", (("version", "1"),))] == 2


def test_http_metrics_label_unknown_methods_as_one() -> None:
    """A method is client input (any token): each new one was a new series of the request counter and latency
    histogram, for as long as the server ran (unbounded memory and /metrics output for a client's loop)."""
    from prometheus_client import REGISTRY

    from tests.conftest import script
    from tests.support.inprocess import app_client

    with app_client(entry_script=script("core/echo.py")) as http:
        for method in ("BREW", "WHEN1", "WHEN2"):
            assert http.request(method, "/score").status_code == 405
        assert http.get("/").status_code == 200
    methods = {
        sample.labels["method"]
        for family in REGISTRY.collect()
        if family.name == "runtime_http_requests"
        for sample in family.samples
    }
    assert {"GET", "OTHER"} <= methods
    assert not methods & {"BREW", "WHEN1", "WHEN2"}


# Three worker processes that served requests and exited (as recycled workers do), as prometheus-client leaves them.
THREE_WORKERS = """
from runtime import metrics
for pid in (900001, 900002, 900003):
    metrics._pid = pid
    metrics._child.cache_clear()
    metrics.record_http("POST", "/score", 200, 0.01 * (pid - 900000))
    metrics.record_request("m", "1", 0.002, True)
"""


def test_dead_workers_files_are_folded_into_one_per_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each recycled worker left its counter and histogram files for good, and every scrape read them all: with
    --max-requests, /metrics (on the event loop) took 0.3 s after 1,000 workers, and grew without bound."""
    import subprocess
    import sys
    import types

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    from runtime.http.server import _child_exit

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", THREE_WORKERS], env=env, check=True, timeout=60)

    def exposition() -> str:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        return "\n".join(sorted(generate_latest(registry).decode().splitlines()))  # families in file order

    for pid in (900001, 900002, 900003):
        mark_process_dead(pid, str(tmp_path))  # type: ignore[no-untyped-call]
    before = exposition()  # as prometheus-client's own child_exit leaves it: live gauges gone
    assert 'runtime_http_requests_total{method="POST",route="/score",status="200"} 3.0' in before
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid in (900001, 900002, 900003):
        _child_exit(None, types.SimpleNamespace(pid=pid))
    assert exposition() == before
    assert sorted(p.name for p in tmp_path.glob("*_90000?.db")) == []
    assert (tmp_path / "counter_archive.db").exists() and (tmp_path / "histogram_archive.db").exists()


def test_http_requests_count_a_method_not_allowed_under_its_route() -> None:
    """PUT /score is /score's 405, not an unmatched path: the fuzz run's per-route totals missed every one."""

    async def score(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/score", score, methods=["POST"])], middleware=[Middleware(MetricsMiddleware)])

    def count(route: str, status: str) -> float:
        value: float = metrics._child(metrics.HTTP_REQUESTS, "PUT", route, status)._value.get()
        return value

    before = count("/score", "405"), count("unmatched", "405")

    async def put() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return (await client.put("/score")).status_code

    assert asyncio.run(put()) == 405
    assert (count("/score", "405") - before[0], count("unmatched", "405") - before[1]) == (1, 0)
