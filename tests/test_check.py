"""``runtime check``: what a user runs before serving."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.servers import runtime_argv


def run_check(model_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        runtime_argv("check", "--model-dir", str(model_dir)), capture_output=True, text=True, timeout=120
    )


def test_check_prints_models_and_completed_config(model_repo: Path) -> None:
    result = run_check(model_repo)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"repository {model_repo / 'triton'}: 6 model(s), all loadable" in out
    assert "model linear  versions 1  max_batch_size 4" in out
    assert "  input  x: FP32 [-1, 4]" in out
    assert "  output y: FP32 [-1, 3]" in out
    assert "  output probs: FP32 [-1, 5]  labels 5" in out
    assert 'platform: "onnxruntime_onnx"' in out and "dims: [4]" in out


def test_check_fails_on_a_bad_repository(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"garbage")
    result = run_check(tmp_path)
    assert result.returncode == 1
    assert "error:" in result.stdout and "not a readable ONNX model" in result.stdout


def test_check_piped_into_a_reader_that_stops_early_exits_quietly(model_repo: Path) -> None:
    """`runtime check --model-dir DIR | head -3`: head closes the pipe; no BrokenPipeError traceback."""
    process = subprocess.Popen(
        runtime_argv("check", "--model-dir", str(model_repo)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read()
    assert process.wait(120) == 141, stderr  # 128 + SIGPIPE, as `cat` under a closed pipe
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr


def test_a_bad_variable_is_named_without_a_traceback(tmp_path: Path) -> None:
    """runtime check (and runtime triton install) read the environment's settings: a bad value was a traceback."""
    from tests.support.cli import run_cli

    result = run_cli("check", "--model-dir", str(tmp_path), env={"RUNTIME_INSTANCE_PROCESSES": "maybe"})
    assert result.returncode == 2
    assert result.stderr == "runtime check: RUNTIME_INSTANCE_PROCESSES must be one of auto, on, off, got 'maybe'\n"
    result = run_cli("triton", "install", env={"WORKER_COUNT": "two"})
    assert result.returncode == 2
    assert result.stderr == "runtime triton: WORKER_COUNT must be an integer, got 'two'\n"
