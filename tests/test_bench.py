"""``runtime bench`` against a real server, and the benchmark command in its quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import StartRuntime, script
from tests.support.servers import REPO, runtime_argv

pytestmark = pytest.mark.slow


def test_bench_score_sweep_reports_json_plot_and_no_errors(start_runtime: StartRuntime, tmp_path: Path) -> None:
    server = start_runtime("--entry", script("core/echo.py"))
    payload = tmp_path / "body.json"
    payload.write_text('{"a": 1}')
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    result = subprocess.run(
        runtime_argv(
            "bench",
            "--url",
            server.url + "/score",
            "--payload",
            str(payload),
            "--concurrency",
            "1,4",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--format",
            "json",
            "--output",
            str(out),
            "--plot",
            str(png),
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["target"]["url"] == server.url + "/score"
    assert report["machine"]["cpus"] >= 1
    assert report["client_cpu_us_per_request"] > 0
    assert [s["concurrency"] for s in report["steps"]] == [1, 4]
    for step in report["steps"]:
        assert step["errors"] == {}
        assert step["throughput"] > 0 and step["requests"] > 0
        assert 0 < step["latency_ms"]["p50"] <= step["latency_ms"]["p90"] <= step["latency_ms"]["p99"]
        assert step["client_cpu_percent"] > 0
    assert Image.open(png).size == (960, 600)


def test_bench_v2_model_and_counts_errors(start_runtime: StartRuntime, model_repo: Path) -> None:
    server = start_runtime("--model-dir", str(model_repo))
    result = subprocess.run(
        runtime_argv(
            "bench",
            "--url",
            server.url,
            "--v2-model",
            "linear",
            "--batch",
            "2",
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--format",
            "csv",
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.startswith("concurrency,req_per_s,p50_ms")
    assert row.split(",")[0] == "2" and float(row.split(",")[1]) > 0 and row.split(",")[5] == "0"
    # Requests the server rejects are counted by status, not hidden.
    bad = subprocess.run(
        runtime_argv(
            "bench",
            "--url",
            server.url + "/v2/models/linear/infer",
            "--payload",
            __file__,
            "--concurrency",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--format",
            "json",
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    steps = json.loads(bad.stdout)["steps"]
    assert steps[0]["throughput"] == 0 and steps[0]["errors"].get("400", 0) > 0


@pytest.mark.external
def test_benchmark_command_quick_mode(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--quiet", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    for heading in ("## tiny", "## densenet_v2", "## densenet_jpeg", "## bidaf", "## Memory"):
        assert heading in text
    for system in (
        "| azmlinfsrv |",
        "| triton-direct |",
        "| runtime v2 |",
        "| runtime hook |",
        "| runtime run() |",
        "| runtime+triton hook |",
    ):
        assert system in text
    rows = json.loads(output.with_suffix(".json").read_text())["rows"]
    assert all(sum(s.get("errors", {}).values()) == 0 for r in rows for s in r["steps"])
    assert all(s["throughput"] > 0 for r in rows for s in r["steps"])
    assert output.with_suffix(".png").is_file()
