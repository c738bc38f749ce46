"""Triton's own batch statistics as the runtime's metrics, so that /metrics shows batching in both modes.

In Triton mode the batches are formed inside Triton. Its statistics API (``GET /v2/models/stats``)
counts executions per batch size; this module turns that into the same ``runtime_batch_size``
histogram the embedded backend records, plus Triton's execution, inference and queue counters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.metrics import BATCH_BUCKETS

LABELS = ["model", "version"]


def _ns(stats: Mapping[str, Any], name: str) -> float:
    return float(stats.get(name, {}).get("ns", 0))


class _StatsCollector(Collector):
    def __init__(self, stats: Mapping[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        batches = HistogramMetricFamily(
            "runtime_batch_size", "Size of each executed batch (Triton mode: Triton's statistics)", labels=LABELS
        )
        executions = CounterMetricFamily(
            "runtime_triton_executions", "Model executions in Triton (a batch counts once)", labels=LABELS
        )
        inferences = CounterMetricFamily(
            "runtime_triton_inferences", "Inferences in Triton (a batch of N counts N)", labels=LABELS
        )
        queue = CounterMetricFamily(
            "runtime_triton_queue_duration_us", "Cumulative time requests waited in Triton's queue (us)", labels=LABELS
        )
        compute = CounterMetricFamily(
            "runtime_triton_compute_infer_duration_us", "Cumulative model execution time in Triton (us)", labels=LABELS
        )
        for model in self.stats.get("model_stats", []):
            labels = [str(model.get("name", "")), str(model.get("version", ""))]
            counts = {
                int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                for b in model.get("batch_stats", [])
            }
            buckets = [(str(float(b)), float(sum(c for size, c in counts.items() if size <= b))) for b in BATCH_BUCKETS]
            buckets.append(("+Inf", float(sum(counts.values()))))
            batches.add_metric(labels, buckets, float(sum(size * c for size, c in counts.items())))
            executions.add_metric(labels, float(model.get("execution_count", 0)))
            inferences.add_metric(labels, float(model.get("inference_count", 0)))
            inference_stats = model.get("inference_stats", {})
            queue.add_metric(labels, _ns(inference_stats, "queue") / 1000)
            compute.add_metric(labels, _ns(inference_stats, "compute_infer") / 1000)
        yield from (batches, executions, inferences, queue, compute)


def prometheus_text(stats: Mapping[str, Any]) -> bytes:
    """Triton's ``/v2/models/stats`` answer as Prometheus text."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)
