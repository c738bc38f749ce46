"""The benchmark pictures: drawn by matplotlib, not empty, for every kind of plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runtime.tools.plot import Point, batch_sizes_png, latency_throughput_png, points, throughput_bars_png
from tests.support.plots import assert_matplotlib_png
from tests.support.servers import REPO


def test_latency_against_throughput(tmp_path: Path) -> None:
    series = {
        "runtime": [Point(10, 5, 9, 1), Point(40, 20, 45, 8), Point(45, 90, 210, 32)],
        "azmlinfsrv": [Point(8, 7, 12, 1), Point(9, 60, 130, 8)],
    }
    latency_throughput_png(series, tmp_path / "latency.png", "tiny: latency", "2 CPUs")
    assert_matplotlib_png(tmp_path / "latency.png")


def test_throughput_bars_with_limits(tmp_path: Path) -> None:
    results = {"densenet": {"runtime (1w)": 20.8, "azmlinfsrv (1w)": 7.0}, "tiny": {"runtime (1w)": 1700.0}}
    throughput_bars_png(results, {"densenet": 24.0, "tiny": 3.9e6}, tmp_path / "bars.png", "Throughput")
    assert_matplotlib_png(tmp_path / "bars.png")


def test_batch_size_distribution(tmp_path: Path) -> None:
    batches = {"c=8": {"1": 10, "2": 4, "3-4": 20}, "c=32": {"3-4": 2, "5-8": 30, "9-16": 12}}
    batch_sizes_png(batches, tmp_path / "batches.png", "densenet: batch sizes")
    assert_matplotlib_png(tmp_path / "batches.png")


def test_points_from_steps_and_their_json() -> None:
    step = {"concurrency": 8, "throughput": 12.5, "latency_ms": {"p50": 3.0, "p99": 9.0}}
    assert points([step]) == [Point(12.5, 3.0, 9.0, 8)]


def test_benchmark_pictures_from_the_saved_results(tmp_path: Path) -> None:
    """`--report-only` redraws the pictures from benchmarks.json, without running anything."""
    output = tmp_path / "benchmarks.md"
    output.with_suffix(".json").write_text((REPO / "docs" / "benchmarks.json").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--report-only", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert_matplotlib_png(tmp_path / "benchmarks.png")
    assert_matplotlib_png(tmp_path / "benchmarks-latency.png")
    text = output.read_text()
    assert "](benchmarks.png)" in text and "](benchmarks-latency.png)" in text
    assert json.loads(output.with_suffix(".json").read_text())["rows"]
