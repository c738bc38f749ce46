"""``runtime bench`` against a real server, and the benchmark command in its quick mode."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.settings import Settings
from tests.support import models
from tests.support.inprocess import served
from tests.support.plots import assert_matplotlib_png
from tests.support.servers import REPO, runtime_argv

pytestmark = pytest.mark.slow
SCORE_DENSENET = REPO / "examples" / "densenet_onnx" / "score_densenet.py"


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small DenseNet and the linear test model in one repository."""
    root = tmp_path_factory.mktemp("densenet")
    make = REPO / "examples" / "densenet_onnx" / "make_model.py"
    subprocess.run([sys.executable, str(make), "--out", str(root), "--small"], check=True, capture_output=True)
    models.make_linear(root / "triton" / "linear" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def url(bench_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The hook-style DenseNet (/score, JPEG or JSON) and both models on v2: the one server the module's
    runs measure. The runs only read, and each step's batch sizes come from /metrics before and after it.

    The app runs in this process behind uvicorn on a real socket: these tests exercise ``runtime bench`` (its
    own processes), which needs HTTP and /metrics, not Gunicorn or the model engine; test_benchmark_command_quick_mode
    measures ``runtime serve`` itself."""
    with served(Settings(entry_script=str(SCORE_DENSENET), model_dir=str(bench_models))) as url:
        # The first answers (each model's first run) are slow: given here, not inside a test's short steps.
        picture = jpeg_file(tmp_path_factory.mktemp("first") / "cat.jpg").read_bytes()
        httpx.post(url + "/score", content=picture, headers={"Content-Type": "image/jpeg"}, timeout=300)
        linear = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0, 3.0]}]}
        httpx.post(url + "/v2/models/linear/infer", json=linear, timeout=300)
        yield url


def jpeg_file(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


def test_bench_score_sweep_reports_json_plot_and_no_errors(url: str, tmp_path: Path) -> None:
    payload = tmp_path / "body.json"
    payload.write_text(json.dumps({"image": base64.b64encode(jpeg_file(tmp_path / "cat.jpg").read_bytes()).decode()}))
    out, png = tmp_path / "report.json", tmp_path / "plot.png"
    result = subprocess.run(
        runtime_argv(
            "bench",
            "--url",
            url + "/score",
            "--payload",
            str(payload),
            "--concurrency",
            "1,4",
            "--duration",
            "0.4",
            "--warmup",
            "0.2",
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
    assert report["target"]["url"] == url + "/score"
    assert report["machine"]["cpus"] >= 1
    assert report["client_cpu_us_per_request"] > 0
    assert [s["concurrency"] for s in report["steps"]] == [1, 4]
    for step in report["steps"]:
        assert step["errors"] == {}
        assert step["throughput"] > 0 and step["requests"] > 0
        assert 0 < step["latency_ms"]["p50"] <= step["latency_ms"]["p90"] <= step["latency_ms"]["p99"]
        assert step["client_cpu_percent"] > 0
    assert_matplotlib_png(png)


def test_bench_v2_model_and_counts_errors(url: str) -> None:
    result = subprocess.run(
        runtime_argv(
            "bench",
            "--url",
            url,
            "--v2-model",
            "linear",
            "--batch",
            "2",
            "--concurrency",
            "2",
            "--duration",
            "0.4",
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
            url + "/v2/models/linear/infer",
            "--payload",
            __file__,
            "--concurrency",
            "1",
            "--duration",
            "0.4",
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
    # ...with what the server said, and an exit status that says the run failed.
    assert bad.returncode == 1
    assert "400" in steps[0]["error_samples"] and '"error"' in steps[0]["error_samples"]["400"]
    assert "errors (status x count: a response body):\n400 x " in bad.stderr


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
    failed = [
        (r["workload"], r["system"], s["concurrency"], s["errors"]) for r in rows for s in r["steps"] if s.get("errors")
    ]
    assert not failed, (failed, [s.get("error_samples") for r in rows for s in r["steps"] if s.get("errors")])
    # Every step finished requests; the message names any that did not (workload, system, concurrency).
    idle = [(r["workload"], r["system"], s["concurrency"]) for r in rows for s in r["steps"] if s["throughput"] <= 0]
    assert not idle, idle
    assert_matplotlib_png(output.with_suffix(".png"))
    assert_matplotlib_png(output.with_name(output.stem + "-latency.png"))
    assert_matplotlib_png(output.with_name(output.stem + "-batches.png"))  # from the runtime's /metrics


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(runtime_argv("bench", *args), capture_output=True, text=True, timeout=timeout)


def test_bench_jpeg_payload_gets_200s_without_content_type(url: str, tmp_path: Path) -> None:
    """The content type comes from the extension: a .jpg goes as image/jpeg, which score.py accepts."""
    picture = jpeg_file(tmp_path / "cat.jpg")
    plot = tmp_path / "latency.png"
    score = url + "/score"
    args = ["--url", score, "--payload", str(picture), "--concurrency", "2,4", "--duration", "0.4", "--warmup", "0.1"]
    result = bench(*args, "--format", "json", "--processes", "2", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert [s["errors"] for s in steps] == [{}, {}]
    assert all(s["requests"] > 0 and s["client_processes"] == 2 for s in steps)
    assert steps[1]["client_cpu_percent"] > 0  # the client processes' CPU, summed
    # The expected duration is said up front, with the content type it chose.
    assert "2 step(s) of 0.1 s warm-up + 0.4 s, about 1 s; image/jpeg to " + score in result.stderr
    assert_matplotlib_png(plot)
    # The server's /metrics gave each step's batch sizes: drawn beside the latency plot.
    assert all(sum(s["batch_sizes"].values()) > 0 for s in steps)
    assert_matplotlib_png(tmp_path / "latency-batches.png")


def test_bench_closed_port_exits_non_zero_within_seconds() -> None:
    from tests.support.servers import free_port

    port = free_port()
    started = time.monotonic()
    result = bench("--url", f"http://127.0.0.1:{port}/score", "--payload", __file__, timeout=60)
    assert result.returncode == 2
    assert time.monotonic() - started < 10
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_connection_errors_back_off() -> None:
    """A server that goes away mid-run: clients pause between refused connections instead of spinning."""
    import asyncio

    from runtime.tools import bench as tool
    from tests.support.servers import free_port

    target = tool.Target(f"http://127.0.0.1:{free_port()}/score", lambda: b"{}", {"Content-Type": "application/json"})
    step = asyncio.run(tool.run_step(target, 4, 1.0, 0.0))
    failures = sum(step.errors.values())
    assert step.throughput == 0 and 0 < failures < 4 * 20  # back-off doubles up to 1 s: a few tries, not 12,000
    assert step.client_cpu_percent < 50
    assert "Connect call failed" in next(iter(step.error_samples.values())) or "refused" in str(step.error_samples)


def test_bench_help_states_every_default() -> None:
    result = subprocess.run(runtime_argv("bench", "--help"), capture_output=True, text=True, timeout=60)
    text = " ".join(result.stdout.split())
    for default in (
        "(default: 1,2,4,8,16,32,64,128,256)",
        "seconds measured per step (default: 5.0)",
        "(default: 1.0)",
        "from the payload's extension, .jpg image/jpeg, .json application/json",
        "(default: table)",
        "(default: stdout)",
        "The default sweep takes about 54 s",
        "client processes",
    ):
        assert default in text, default


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cat.jpg", "image/jpeg"),
        ("x.JPEG", "image/jpeg"),
        ("b.json", "application/json"),
        ("p.png", "image/png"),
        ("t.npy", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_content_type_from_extension(name: str, expected: str) -> None:
    from runtime.tools.bench_cli import content_type

    assert content_type(name) == expected


def test_batch_ranges_between_two_scrapes() -> None:
    from runtime.tools.bench import batch_ranges

    before = {1.0: 5.0, 2.0: 5.0, 4.0: 6.0, 8.0: 6.0, float("inf"): 6.0}
    after = {1.0: 7.0, 2.0: 8.0, 4.0: 12.0, 8.0: 13.0, float("inf"): 14.0}
    assert batch_ranges(before, after) == {"1": 2, "2": 1, "3-4": 3, "5-8": 1, ">8": 1}
    assert batch_ranges({}, {}) == {}
