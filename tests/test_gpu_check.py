"""benchmarks/gpu_check.py end to end on the CPU, at small sizes (the GPU run uses the same code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import REPO

pytestmark = pytest.mark.slow

# A measured window of 0.6 s (one that counts no answer, as on a machine loaded by the rest of the suite, is measured
# again, longer: test_a_window_that_counts_no_answer_is_measured_again_twice_as_long).
SMALL = [
    "--device", "cpu", "--small", "--batches", "1,2", "--workers", "1", "--concurrency", "4",
    "--duration", "0.6", "--warmup", "0.1", "--limit-seconds", "0.1", "--target-batch", "2",
]  # fmt: skip


def gpu_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *SMALL, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def test_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    # Instance processes off for the rows (and the served target, which the first row's server serves), and on
    # beside them in the same run (the next GPU session compares auto, which is on there, with off).
    result = gpu_check("--out", str(out), "--instance-processes", "off,on")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["small"] is True
    assert set(data["device_limit"]) == {"1", "2"} and all(v > 0 for v in data["device_limit"].values())
    assert data["device_limit_pinned"] == {}  # pinned buffers are a GPU measurement
    assert set(data["device_limit_optimized"]) == {"2"} and data["device_limit_optimized"]["2"] > 0
    assert data["preprocessing_limit"] > 0
    assert data["limit_images_per_s"] == min(data["device_limit"]["2"], data["preprocessing_limit"])
    served = data["served"]["1"]
    assert served["images_per_s"] > 0 and served["errors"] == {} and served["client_processes"] == 1
    assert 1 <= served["mean_batch"] <= 2  # max_batch_size is the largest --batches
    assert data["target"]["batch"] == 2 and data["target"]["served"]["errors"] == {}
    assert data["target"]["ratio"] == data["target"]["served"]["images_per_s"] / data["target"]["in_process"]
    assert "| runtime serve, hook score.py, 1 worker(s), JPEG, c=4 |" in result.stdout
    assert data["instance_processes"] == "off" and served["cpu_us"]["instances"] == 0  # the engine ran the model
    on = data["served_instance_processes"]["on"]["1"]
    assert on["images_per_s"] > 0 and on["errors"] == {} and on["cpu_us"]["instances"] > 0  # the model ran there
    assert 1 <= on["mean_batch"] <= 2
    assert "| runtime serve, instance processes on, hook score.py, 1 worker(s), JPEG, c=4 |" in result.stdout
    assert "| device limit, batch 2 | " in result.stdout and " (optimized: " in result.stdout
    assert "in-process at batch 2:" in result.stdout


def test_stops_at_once_when_the_server_dies(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where its work folder goes
    result = gpu_check("--serve-args=--no-such-flag", "--batches", "1", "--limit-seconds", "0.2", env=env)
    assert result.returncode == 1
    assert "error: runtime serve exited with 2; its log ends:" in result.stderr
    assert "--no-such-flag" in result.stderr
    assert list(tmp_path.iterdir()) == []  # the work folder is removed on an error too


def test_a_window_that_counts_no_answer_is_measured_again_twice_as_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded machine one answer took 0.9 s, longer than the test's 0.6 s window: the row read 0 images/s."""
    import argparse

    from benchmarks import gpu_check as check

    windows: list[float] = []

    def run_clients(*args: object) -> list[dict[str, object]]:
        d = args[-1]
        assert isinstance(d, float)
        windows.append(d)
        answered = 0 if len(windows) < 3 else 5  # the warm-up, then a window with no answer, then one with five
        step = {"throughput": answered / d, "requests": answered, "errors": {}, "client_cpu_percent": 1.0}
        return [{**step, "latency_ms": {"p50": 900.0, "mean": 900.0}}]

    class Server:
        def counters(self, model: str | None) -> dict[str, float]:
            return dict.fromkeys(("batch_count", "batch_sum", "http_s", "http_count", "request_us"), 1.0) | {
                "queue_us": 0.0,
                "compute_us": 0.0,
            }

        def cpu_seconds(self) -> dict[str, float]:
            return {"engine": 0.0, "instances": 0.0, "workers": 0.0, "master": 0.0}

    monkeypatch.setattr(check, "run_clients", run_clients)
    monkeypatch.setattr(check, "process_pool", lambda size: None)
    monkeypatch.setattr(check, "profile", lambda server, args, duration: None)
    args = argparse.Namespace(clients=1, warmup=0.1, duration=0.6)
    row = check.load(Server(), "/score", b"", {}, args, concurrency=1)  # a stand-in for check.Server
    assert windows == [0.1, 0.6, 1.2]
    assert row["duration_s"] == 1.2 and row["images_per_s"] == 5 / 1.2
