"""Reference servers live in venvs of their own (their pins clash with ours).

``ensure_venv`` creates one once, under ``$RUNTIME_VENVS`` (default ``.cache/venvs``
in the repository); ``.ci/run`` creates them before pytest starts.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from tests.support.servers import REPO

AZMLINFSRV_REQUIREMENTS = ["azureml-inference-server-http==1.5.1", "inference-schema"]


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


if __name__ == "__main__":
    print(ensure_venv("azmlinfsrv", AZMLINFSRV_REQUIREMENTS))
