"""What the runtime makes of Triton's output: its log lines' levels, its statistics as metrics, and the shared
memory a managed tritonserver leaves behind."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

import pytest

from runtime import scratch
from runtime.errors import StartupError
from runtime.serving import tritonserver
from runtime.serving.tritonserver import triton_log_level
from runtime.serving.tritonstats import prometheus_text


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ('E1126 15:11:31.297789 10279 server.cc:241] "CudaDriverHelper has not been initialized."', logging.DEBUG),
        ("Error: Failed to initialize NVML", logging.DEBUG),
        (
            'W1126 15:11:33.649885 10279 metrics.cc:798] "DCGM unable to start: DCGM initialization error"',
            logging.DEBUG,
        ),
        ("I1126 15:11:33.648205 10279 model_lifecycle.cc:839] \"successfully loaded 'linear'\"", logging.INFO),
        ('W1126 15:11:33.000000 10279 model.cc:1] "something unexpected"', logging.WARNING),
        ("E1126 15:11:33.000000 10279 model.cc:1] \"failed to load 'm'\"", logging.ERROR),
        ("| linear | 1       | READY  |", logging.DEBUG),
    ],
)
def test_triton_log_levels(line: str, level: int) -> None:
    assert triton_log_level(line, logging.INFO) == level


def test_continuation_lines_keep_the_level_of_their_message() -> None:
    assert triton_log_level("  at frame 3", logging.ERROR) == logging.ERROR
    assert triton_log_level("Signal (15) received.", logging.DEBUG) == logging.INFO


def test_statistics_become_the_batch_size_histogram() -> None:
    stats = {
        "model_stats": [
            {
                "name": "densenet_onnx",
                "version": "1",
                "inference_count": 24,
                "execution_count": 4,
                "inference_stats": {"queue": {"count": 24, "ns": 5_000_000}, "compute_infer": {"count": 4, "ns": 8000}},
                "batch_stats": [
                    {"batch_size": 1, "compute_infer": {"count": 1, "ns": 10}},
                    {"batch_size": 7, "compute_infer": {"count": 1, "ns": 10}},
                    {"batch_size": 8, "compute_infer": {"count": 2, "ns": 10}},
                ],
            }
        ]
    }
    text = prometheus_text(stats).decode()
    labels = 'model="densenet_onnx",version="1"'
    assert f'runtime_batch_size_bucket{{le="1.0",{labels}}} 1.0' in text
    assert f'runtime_batch_size_bucket{{le="4.0",{labels}}} 1.0' in text
    assert f'runtime_batch_size_bucket{{le="8.0",{labels}}} 4.0' in text
    assert f'runtime_batch_size_bucket{{le="+Inf",{labels}}} 4.0' in text
    assert f"runtime_batch_size_count{{{labels}}} 4.0" in text
    assert f"runtime_batch_size_sum{{{labels}}} 24.0" in text
    assert f"runtime_triton_executions_total{{{labels}}} 4.0" in text
    assert f"runtime_triton_inferences_total{{{labels}}} 24.0" in text
    assert f"runtime_triton_queue_duration_us_total{{{labels}}} 5000.0" in text


def test_no_models_no_samples() -> None:
    assert "runtime_batch_size_bucket" not in prometheus_text({"model_stats": []}).decode()


def test_a_managed_tritons_shared_memory_is_removed_after_it_and_when_its_runtime_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed tritonserver cannot unlink its python backend's regions: the runtime does, by their prefix."""
    monkeypatch.setattr(tritonserver, "SHM_DIR", str(tmp_path))
    dead = 2**22 + 1  # above any pid this machine hands out (pid_max is at most 2**22)
    mine = tmp_path / f"runtime-triton-{os.getpid()}-8000-a"
    other = tmp_path / f"runtime-triton-{os.getpid()}-9000-b"  # a second managed server of this runtime
    stale = tmp_path / f"runtime-triton-{dead}-8000-c"
    foreign = tmp_path / "triton_python_backend_shm_region_d"  # a Triton the runtime did not start
    # A runtime of today locks a folder named for its regions: the lock decides, whatever the pid says (in another
    # PID namespace a live owner's pid may be free here).
    live_elsewhere = tmp_path / f"runtime-triton-{dead}-a1b2"
    live_elsewhere.mkdir()
    (live_elsewhere / scratch.MARKER).write_bytes(b"")
    lock = os.open(live_elsewhere, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    kept = tmp_path / f"{live_elsewhere.name}-region"
    unlocked = tmp_path / f"runtime-triton-{os.getpid()}-x1y2"  # its owner was SIGKILLed; the pid is taken since
    unlocked.mkdir()
    (unlocked / scratch.MARKER).write_bytes(b"")
    freed = tmp_path / f"{unlocked.name}-region"
    for path in (mine, other, stale, foreign, kept, freed):
        path.write_bytes(b"")
    tritonserver.remove_stale_regions()
    assert not stale.exists() and mine.exists() and other.exists() and foreign.exists()
    assert kept.exists() and live_elsewhere.is_dir() and not freed.exists() and not unlocked.exists()
    os.close(lock)
    server = tritonserver.ManagedTriton.__new__(tritonserver.ManagedTriton)
    server.shm_prefix = f"runtime-triton-{os.getpid()}-8000-"
    server._after_exit()
    assert not mine.exists() and other.exists() and foreign.exists()


def test_work_folders_of_runtimes_gone_are_removed_and_a_start_that_fails_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its copy of the backends and the staged repository (1.5 MB and more): a SIGKILLed runtime left them in /tmp
    for good (a test run's crash test alone left one a run)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = 2**22 + 1
    stale = tmp_path / f"runtime-triton-{dead}-abc"
    alive = tmp_path / f"runtime-triton-{os.getpid()}-def"
    other = tmp_path / "runtime-triton-x1y2z3"  # not named for a runtime: not the runtime's to remove
    for path in (stale, alive, other):
        (path / "backends").mkdir(parents=True)
    (tmp_path / "repo" / "linear").mkdir(parents=True)
    (tmp_path / "repo" / "linear" / "config.pbtxt").write_text("bogus: 1")  # a repository that cannot be staged
    with pytest.raises(StartupError):
        tritonserver.ManagedTriton(str(tmp_path / "repo"), Path("/nowhere/tritonserver"))
    assert not stale.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.glob("runtime-triton-*")) == sorted(p.name for p in (alive, other))


def test_a_managed_tritons_work_folder_is_named_for_its_runtime(tmp_path: Path) -> None:
    from tests.support import models

    models.make_linear(tmp_path / "linear" / "1" / "model.onnx")
    server = tritonserver.ManagedTriton(str(tmp_path), Path("/nowhere/tritonserver"))
    try:
        assert server.work.name.startswith(f"runtime-triton-{os.getpid()}-")
    finally:
        server.stop()
    assert not server.work.exists()


def test_managed_triton_without_a_writable_dev_shm_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a traceback (FileNotFoundError from mkdtemp): a container started without /dev/shm."""
    monkeypatch.setattr(tritonserver, "SHM_DIR", str(tmp_path / "missing"))
    with pytest.raises(StartupError) as info:
        tritonserver.ManagedTriton(str(tmp_path), tmp_path / "tritonserver")
    assert f"managed Triton needs a writable {tmp_path / 'missing'}" in str(info.value)
    assert "docker run --shm-size=1g" in str(info.value)
    assert list(tmp_path.iterdir()) == []
