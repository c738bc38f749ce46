"""Reference servers live in venvs of their own (their pins clash with ours).

``ensure_venv`` creates one once, under ``$RUNTIME_VENVS`` (default ``.cache/venvs``
in the repository); ``.ci/run`` creates them before pytest starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.servers import REPO

AZMLINFSRV_REQUIREMENTS = ["azureml-inference-server-http==1.5.1", "inference-schema"]
# The benchmark's azmlinfsrv runs the examples' helpers, which import this checkout's runtime.
AZMLINFSRV_BENCH_REQUIREMENTS = [*AZMLINFSRV_REQUIREMENTS, "onnxruntime", "Pillow", "nltk", "-e", str(REPO)]


CHECKOUT_FILE = ".checkout"  # in a bench venv: the checkout it serves


def venv_root() -> Path:
    return Path(os.environ.get("RUNTIME_VENVS", REPO / ".cache" / "venvs"))


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """The venv's python, creating the venv and installing ``requirements`` if needed."""
    root = venv_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == "\n".join(requirements):
            return python
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
        marker.write_text("\n".join(requirements))
    return python


def azmlinfsrv_bench_python() -> Path:
    """The benchmark's azmlinfsrv venv: one per checkout, so clones sharing ``$RUNTIME_VENVS`` keep theirs."""
    checkout = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    prune_bench_venvs()
    python = ensure_venv(f"azmlinfsrv-bench-{checkout}", AZMLINFSRV_BENCH_REQUIREMENTS)
    (python.parent.parent / CHECKOUT_FILE).write_text(str(REPO))
    return python


def prune_bench_venvs() -> None:
    """Remove the bench venvs of checkouts that are gone (400 MB each; throwaway clones leave them behind)."""
    root = venv_root()
    for marker in root.glob(f"azmlinfsrv-bench-*/{CHECKOUT_FILE}"):
        if not Path(marker.read_text()).is_dir():
            shutil.rmtree(marker.parent, ignore_errors=True)
            marker.parent.with_suffix(".lock").unlink(missing_ok=True)


if __name__ == "__main__":
    print(ensure_venv("azmlinfsrv", AZMLINFSRV_REQUIREMENTS))
    print(azmlinfsrv_bench_python())
