"""Benchmark pictures with matplotlib (the ``[bench]`` extra): latency against throughput, throughput
per system against the in-process limit, and batch-size distributions.

Figures are built with the object API and the Agg canvas (no pyplot state, no display needed), and
saved as PNG; matplotlib records itself in the PNG's ``Software`` text chunk.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol


class Point(NamedTuple):
    throughput: float  # req/s
    p50_ms: float
    p99_ms: float
    concurrency: int


class StepLike(Protocol):
    concurrency: int
    throughput: float
    latency_ms: dict[str, float]


def points(steps: Sequence[StepLike | Mapping[str, Any]]) -> list[Point]:
    """Points from bench Steps or their JSON form (benchmarks.json)."""
    result = []
    for step in steps:
        if isinstance(step, Mapping):
            throughput, latency, concurrency = step["throughput"], step["latency_ms"], step["concurrency"]
        else:
            throughput, latency, concurrency = step.throughput, step.latency_ms, step.concurrency
        result.append(Point(float(throughput), latency["p50"], latency["p99"], int(concurrency)))
    return result


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


def latency_throughput_png(
    series: Mapping[str, Sequence[Point] | Sequence[StepLike]], path: Path, title: str, subtitle: str = ""
) -> None:
    """One line per system: p50 (solid) and p99 (dashed) latency against throughput, points labelled with
    their concurrency; log latency axis (p99 at high concurrency is 100x p50 at low)."""
    from matplotlib.ticker import FuncFormatter

    figure = _figure(10, 5.6)
    axes = figure.add_subplot()
    for index, (name, values) in enumerate(series.items()):
        data = [v if isinstance(v, Point) else points([v])[0] for v in values]
        color = f"C{index % 10}"
        xs = [p.throughput for p in data]
        axes.plot(xs, [p.p50_ms for p in data], "-o", color=color, label=f"{name} p50", markersize=4)
        axes.plot(xs, [p.p99_ms for p in data], "--", color=color, label=f"{name} p99", alpha=0.7)
        for p in data:
            axes.annotate(
                f"c={p.concurrency}",
                (p.throughput, p.p50_ms),
                fontsize=7,
                color=color,
                textcoords="offset points",
                xytext=(3, -10),
            )
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    axes.set_xlim(left=0)
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("latency (ms, log scale)")
    axes.grid(True, which="major", alpha=0.5)
    axes.grid(True, which="minor", alpha=0.15)
    axes.set_title(_title(title, subtitle), fontsize=11)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _save(figure, path)


def throughput_bars_png(
    results: Mapping[str, Mapping[str, float]],
    limits: Mapping[str, float],
    path: Path,
    title: str,
    subtitle: str = "",
) -> None:
    """``results``: workload -> system -> best req/s; one panel per workload (scales differ by 10^5), a bar
    per system and a dashed line at the workload's in-process limit (noted instead when far off scale)."""
    workloads = list(results)
    figure = _figure(4.0 * len(workloads) + 1, 5.2)
    panels = figure.subplots(1, len(workloads), squeeze=False)[0]
    for axes, workload in zip(panels, workloads, strict=True):
        systems = list(results[workload])
        values = [results[workload][s] for s in systems]
        bars = axes.bar(range(len(systems)), values, color=[f"C{_color(s)}" for s in systems])
        axes.bar_label(bars, labels=[_short(v) for v in values], fontsize=7, padding=2)
        axes.set_xticks(range(len(systems)), systems, rotation=40, ha="right", fontsize=8)
        top = max(values, default=1.0)
        limit = limits.get(workload)
        heading = workload
        if limit is not None and limit <= 3 * top:
            axes.axhline(limit, color="black", linestyle="--", linewidth=1)
            heading += f"\nin-process limit {_short(limit)}/s (dashed line)"
            top = max(top, limit)
        elif limit is not None:
            heading += f"\nin-process limit {_short(limit)}/s (off scale)"
        axes.set_ylim(0, top * 1.12)
        axes.set_title(heading, fontsize=10)
        axes.set_ylabel("requests/s (best over the sweep)")
        axes.grid(True, axis="y", alpha=0.4)
        axes.set_axisbelow(True)
    figure.suptitle(_title(title, subtitle), fontsize=11)
    _save(figure, path)


BATCH_RANGES = ("1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", "129-256", "257-512")


def batch_sizes_png(distributions: Mapping[str, Mapping[str, int]], path: Path, title: str, subtitle: str = "") -> None:
    """``distributions``: name (e.g. "c=32") -> batch-size range ("1", "2", "3-4", ...) -> executions;
    grouped bars of each name's share, every range up to the largest seen on the axis."""
    seen = {b for d in distributions.values() for b in d}
    top = max((BATCH_RANGES.index(b) for b in seen if b in BATCH_RANGES), default=0)
    labels = [*BATCH_RANGES[: top + 1], *sorted(seen - set(BATCH_RANGES), key=_bucket_key)]
    figure = _figure(9, 4.8)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(distributions))
    for index, (name, counts) in enumerate(distributions.items()):
        total = sum(counts.values()) or 1
        shares = [100 * counts.get(label, 0) / total for label in labels]
        offsets = [i + (index - (len(distributions) - 1) / 2) * width for i in range(len(labels))]
        axes.bar(offsets, shares, width, label=f"{name} ({sum(counts.values())} executions)", color=f"C{index % 10}")
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel("batch size (executions whose batch falls in this range)")
    axes.set_ylabel("share of model executions (%)")
    axes.grid(True, axis="y", alpha=0.4)
    axes.set_axisbelow(True)
    axes.set_title(_title(title, subtitle), fontsize=11)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="concurrency")
    _save(figure, path)


def _title(title: str, subtitle: str) -> str:
    """Long titles (a URL and a file) wrapped rather than cut off at the figure's edge."""
    return "\n".join(textwrap.wrap(title, 90) + textwrap.wrap(subtitle, 110))


def _bucket_key(label: str) -> float:
    head = label.split("-")[-1]
    return float("inf") if head.startswith(">") else float(head)


def _short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


_SYSTEM_COLORS: dict[str, int] = {}


def _color(system: str) -> int:
    """The same color for the same system in every panel."""
    base = system.split(" (")[0]
    return _SYSTEM_COLORS.setdefault(base, len(_SYSTEM_COLORS) % 10)
