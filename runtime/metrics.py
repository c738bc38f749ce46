"""Prometheus metrics, shared across Gunicorn workers (prometheus-client's multiprocess mode).

Names follow Triton where the meaning is the same (``nv_inference_*``);
the rest are ``runtime_*``. ``runtime serve`` sets PROMETHEUS_MULTIPROC_DIR
before the workers start, so every worker writes its samples there and
``GET /metrics`` on any worker reports the sum.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import fcntl
import functools
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.mmap_dict import MmapedDict
from starlette.requests import Request
from starlette.responses import Response

from runtime.errors import Overloaded
from runtime.serving.batching import BatchStats

# The *_created samples double the output and mean nothing across worker restarts.
disable_created_metrics()  # type: ignore[no-untyped-call]

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


def _process_id() -> int:
    """This process's id, renewed in a forked child: multiprocess values ask for it at every write, and
    os.getpid() is a system call each time (15 a request on /v2)."""
    return _pid


os.register_at_fork(after_in_child=_forked)
if values.ValueClass is not values.MutexValue:  # multiprocess mode; before any metric holds a value
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)  # type: ignore[no-untyped-call]

MODEL = ("model", "version")
CLIENT_CLOSED = 499
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter("runtime_http_requests", "HTTP requests by route and status", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "runtime_http_request_duration_seconds", "HTTP request latency", ["method", "route"], buckets=LATENCY_BUCKETS
)
REQUEST_SUCCESS = Counter("nv_inference_request_success", "Successful inference requests", MODEL)
# reason as Triton labels it: REJECTED (queue full or timed out), CANCELED (client gone), BACKEND, OTHER.
REQUEST_FAILURE = Counter("nv_inference_request_failure", "Failed inference requests", [*MODEL, "reason"])
PENDING = Gauge(
    "nv_inference_pending_request_count",
    "Requests queued for a model, not yet executing",
    MODEL,
    multiprocess_mode="livesum",
)
IN_PROGRESS = Gauge(
    "runtime_requests_in_progress", "Requests admitted and not yet answered (all workers)", multiprocess_mode="livesum"
)
REJECTED = Counter("runtime_requests_rejected", "Requests refused before running, by reason", ["reason"])
CANCELLED = Counter("runtime_requests_cancelled", "Requests whose client left before the answer", ["route"])
LOOP_STALLS = Counter("runtime_event_loop_stalls", "Times a worker's event loop was blocked past the threshold")
RECYCLES = Counter("runtime_worker_recycles", "Workers that asked to be replaced, by reason", ["reason"])
INFERENCE_COUNT = Counter("nv_inference_count", "Inferences performed (a batch of N counts N)", MODEL)
EXEC_COUNT = Counter("nv_inference_exec_count", "Model executions (a batch counts once)", MODEL)
REQUEST_DURATION = Counter("nv_inference_request_duration_us", "Cumulative request duration (us)", MODEL)
QUEUE_DURATION = Counter("nv_inference_queue_duration_us", "Cumulative time requests waited in queue (us)", MODEL)
COMPUTE_DURATION = Counter("nv_inference_compute_infer_duration_us", "Cumulative model execution time (us)", MODEL)
BATCH_SIZE = Histogram("runtime_batch_size", "Size of each executed batch", MODEL, buckets=BATCH_BUCKETS)
BATCH_WORKERS = Histogram(
    "runtime_batch_worker_processes",
    "Distinct worker processes whose requests share each batch (the model engine)",
    MODEL,
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_TIME = Histogram(
    "runtime_queue_duration_seconds", "Time a request waited for its batch", MODEL, buckets=LATENCY_BUCKETS
)


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values; looked up once (labels() takes a lock every call)."""
    return metric.labels(*labels)


def record_batch(model: str, version: str, stats: BatchStats) -> None:
    if _deferred is not None:
        _deferred.append((model, version, stats))
    else:
        _write_batches(model, version, [stats])


def record_batch_workers(model: str, version: str, workers: int) -> None:
    if _deferred is not None:
        _deferred.append((model, version, workers))
    else:
        _child(BATCH_WORKERS, model, version).observe(workers)


def record_request(model: str, version: str, seconds: float, ok: bool, reason: str = "BACKEND", count: int = 1) -> None:
    """``count`` requests that each took ``seconds`` and ended alike (a batch that ran at once): one write each."""
    if _deferred is not None:
        _deferred.append((model, version, (ok, reason, count, seconds * 1e6 * count)))
    else:
        _write_requests(model, version, ok, reason, count, seconds * 1e6 * count)


def _write_batches(model: str, version: str, batches: list[BatchStats]) -> None:
    _child(EXEC_COUNT, model, version).inc(len(batches))
    _child(INFERENCE_COUNT, model, version).inc(sum(b.batch_size for b in batches))
    observe_all(_child(BATCH_SIZE, model, version), [b.batch_size for b in batches])
    _add(_child(COMPUTE_DURATION, model, version), sum(b.compute_seconds for b in batches) * 1e6)
    waited = [w for b in batches for w in b.queue_seconds]
    observe_all(_child(QUEUE_TIME, model, version), waited)
    _add(_child(QUEUE_DURATION, model, version), sum(waited) * 1e6)


def _write_requests(model: str, version: str, ok: bool, reason: str, count: int, micros: float) -> None:
    if ok:
        _child(REQUEST_SUCCESS, model, version).inc(count)
    else:
        _child(REQUEST_FAILURE, model, version, reason).inc(count)
    _child(REQUEST_DURATION, model, version).inc(micros)


# The model metrics that record_batch, record_batch_workers and record_request hold back while deferred:
# (model, version, a BatchStats | a worker count | (ok, reason, count, microseconds)). A deque: model
# threads append while the loop flushes.
_deferred: collections.deque[tuple[str, str, Any]] | None = None


def defer_model_metrics() -> None:
    """Hold the model metrics in memory until :func:`flush_model_metrics` (the engine process).

    The engine writes them for every worker, about ten locked mmap writes per batch (a quarter of its
    Python path per request at c=1); a flush writes each value once for everything held. The engine flushes
    every few tenths of a second and whenever a worker is about to answer a scrape of /metrics
    (:meth:`EngineClient.flush_metrics`), so a scrape shows every request answered before it.
    """
    global _deferred
    _deferred = collections.deque()


def flush_model_metrics() -> None:
    """Write what :func:`defer_model_metrics` holds, each value once per model version."""
    if not _deferred:
        return
    batches: dict[tuple[str, str], list[BatchStats]] = {}
    workers: dict[tuple[str, str], list[int]] = {}
    requests: dict[tuple[str, str, bool, str], list[float]] = {}
    while _deferred:
        model, version, what = _deferred.popleft()
        if isinstance(what, BatchStats):
            batches.setdefault((model, version), []).append(what)
        elif isinstance(what, int):
            workers.setdefault((model, version), []).append(what)
        else:
            ok, reason, count, micros = what
            total = requests.setdefault((model, version, ok, reason), [0, 0.0])
            total[0] += count
            total[1] += micros
    for (model, version), held in batches.items():
        _write_batches(model, version, held)
    for (model, version), counts in workers.items():
        observe_all(_child(BATCH_WORKERS, model, version), counts)
    for (model, version, ok, reason), (count, micros) in requests.items():
        _write_requests(model, version, ok, reason, int(count), micros)


# In multiprocess mode every value written is a locked write to a memory-mapped file (2 to 3 µs in the
# engine, where a batch's metrics used to take 7 writes plus 5 per request): the helpers below write each
# value once per batch, and not at all when it would not change.


def _add(value: Any, amount: float) -> None:
    if amount:
        value.inc(amount)


def observe_all(histogram: Any, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts``, with one write per bucket hit and one to the sum.

    Relies on prometheus-client's Histogram layout (``_upper_bounds``, ``_buckets`` holding per-bucket,
    not cumulative, counts, ``_sum``), which ``observe`` itself uses; tests/test_metrics.py checks
    the exposition against ``observe``'s.
    """
    bounds = histogram._upper_bounds  # the last is +Inf: every amount has a bucket
    if len(amounts) == 1:
        histogram._buckets[bisect.bisect_left(bounds, amounts[0])].inc(1)
    else:
        for bucket, count in collections.Counter(bisect.bisect_left(bounds, a) for a in amounts).items():
            histogram._buckets[bucket].inc(count)
    _add(histogram._sum, sum(amounts))


def failure_reason(error: BaseException | None) -> str:
    """Triton's failure reason for what ended a request."""
    if isinstance(error, Overloaded):
        return "REJECTED"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELED"
    return "BACKEND" if error is not None else "OTHER"


def pending_gauge(model: str, version: str) -> Any:
    """The ``nv_inference_pending_request_count`` child for a model version (``.set(depth)``)."""
    return _child(PENDING, model, version)


# Metrics that live elsewhere and are read at scrape time (Triton's batch statistics): each returns
# Prometheus text, or b"" when its source cannot be reached right now. Each belongs to the event loop
# of the app that registered it (two apps in one process each scrape their own).
# A source added ``before`` runs before the collection, for what it makes other processes write (the engine's
# deferred model metrics).
ScrapeSource = Callable[[], Awaitable[bytes]]
SCRAPE_SOURCES: list[tuple[asyncio.AbstractEventLoop, ScrapeSource, bool]] = []


def add_scrape_source(source: ScrapeSource, before: bool = False) -> None:
    SCRAPE_SOURCES.append((asyncio.get_running_loop(), source, before))


def remove_scrape_source(source: ScrapeSource) -> None:
    SCRAPE_SOURCES[:] = [entry for entry in SCRAPE_SOURCES if entry[1] != source]


async def metrics_endpoint(request: Request) -> Response:
    loop = asyncio.get_running_loop()
    sources = [(source, before) for owner, source, before in SCRAPE_SOURCES if owner is loop]
    for source, before in sources:
        if before:
            await source()
    if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        with _files_locked(folder, exclusive=False):
            body = generate_latest(registry)
    else:
        body = generate_latest()
    for source, before in sources:
        if not before:
            body += await source()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def record_http(method: str, route: str, status: int, seconds: float) -> None:
    """One HTTP request by route template (bounded label values) and status."""
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_LATENCY, method, route).observe(seconds)


@contextlib.contextmanager
def _files_locked(folder: str, exclusive: bool) -> Iterator[None]:
    """Scrapes (shared) against :func:`archive_dead_process` (exclusive): prometheus-client's collector fails on a
    counter file removed between its listing and its read, and a scrape must not count a worker twice or not at
    all while its values move to the archive."""
    fd = os.open(os.path.join(folder, "archive.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def archive_dead_process(pid: int) -> None:
    """Forget a dead process's live gauges, and fold its counters and histograms into one archive file per kind.

    Every scrape reads every file: a recycled worker's files stayed for the server's life (``--max-requests``: a
    scrape read thousands of files, on the event loop). Counters and histogram buckets are sums, so their values
    move into ``counter_archive.db`` and ``histogram_archive.db`` and the exposition stays the same.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
    with _files_locked(folder, exclusive=True):
        for kind in ("counter", "histogram"):
            dead = os.path.join(folder, f"{kind}_{pid}.db")
            try:
                values = list(MmapedDict.read_all_values_from_file(dead))  # type: ignore[no-untyped-call]
            except FileNotFoundError:
                continue
            archive = MmapedDict(os.path.join(folder, f"{kind}_archive.db"))  # type: ignore[no-untyped-call]
            try:
                for key, value, timestamp, _ in values:
                    archived, _ = archive.read_value(key)  # type: ignore[no-untyped-call]
                    archive.write_value(key, archived + value, timestamp)  # type: ignore[no-untyped-call]
            finally:
                archive.close()  # type: ignore[no-untyped-call]
            os.unlink(dead)


# prometheus-client's files of gauges that sum or list live processes: ``gauge_livesum_<pid>.db``...
LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def forget_dead_processes() -> None:
    """Drop the live-process gauges of processes that are gone: an engine that died (and the instance processes
    that died with it) would otherwise add its last queue depth to /metrics for as long as the server runs.
    Gunicorn's workers are Gunicorn's (``child_exit``)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for pid in {int(m.group(1)) for m in map(LIVE_GAUGE_FILE.fullmatch, names) if m is not None}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's
