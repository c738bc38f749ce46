"""What ``runtime serve`` checks before it starts anything (Triton, Gunicorn, workers).

Each mistake is caught in well under a second with a message that names the path or the port,
instead of surfacing later as a worker that fails, a retry loop, or a server that is "ready" but
answers every request with a 404.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import traceback
from pathlib import Path

from runtime.errors import StartupError
from runtime.serving.repository import (
    inside_a_repository,
    load_repository,
    looks_like_repository,
    repository_root,
    triton_model_names,
)

logger = logging.getLogger("runtime.preflight")


class PreflightError(StartupError):
    """A start-up mistake found before anything was started (``runtime serve`` exits 3)."""


def check_entry(path: str) -> None:
    if os.path.isdir(path):
        scripts = sorted(p.name for p in Path(path).glob("*.py"))[:5]
        found = f" (it holds {', '.join(scripts)})" if scripts else " (it holds no .py file)"
        raise PreflightError(f"--entry {path} is a folder, not a script: give the score.py file inside it{found}")
    if not os.path.isfile(path):
        raise PreflightError(f"entry script {path} does not exist")
    if path.endswith(".py"):
        try:
            # A typo found now, not after Triton or the model engine started and a worker failed to boot.
            compile(Path(path).read_bytes(), path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as ex:
            where = "".join(traceback.format_exception_only(ex)).rstrip()
            raise PreflightError(f"entry script {path} does not compile:\n{where}") from None


def check_model_dir_is_a_folder(model_dir: str) -> None:
    """A missing model directory names the folders beside it (a misspelling is the likely cause)."""
    if not os.path.exists(model_dir):
        parent = Path(model_dir).parent
        near = sorted(p.name for p in parent.iterdir() if p.is_dir())[:8] if parent.is_dir() else []
        hint = f" ({parent} holds: {', '.join(near)})" if near else ""
        raise PreflightError(f"model directory {model_dir} does not exist{hint}")
    if not os.path.isdir(model_dir):
        raise PreflightError(f"model directory {model_dir} is a file, not a folder")


def check_model_dir(model_dir: str, has_entry: bool, backend: str) -> None:
    """A model directory must exist; a repository in it must load; without an entry script it must hold
    something to serve. Raises PreflightError, or the repository's RepositoryError (both StartupErrors)."""
    check_model_dir_is_a_folder(model_dir)
    if looks_like_repository(model_dir):
        # As strict as Triton, before any worker starts: names, datatypes, dims against each model file. For
        # Triton, models of its other backends (python, TensorRT) too: their configs parsed, the rest its own.
        if backend == "triton":
            triton_model_names(model_dir)
        else:
            load_repository(model_dir)
        # The graphs read for the check are garbage now; give their heap back before Gunicorn forks, or
        # every worker's RSS would carry it.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        return
    misplaced = inside_a_repository(model_dir)
    if misplaced and not has_entry:
        raise PreflightError(f"model directory {misplaced}")
    if misplaced:  # score.py may read that folder itself, as in Azure ML; but its models will not be served
        logger.warning("model directory %s; the backend serves no models from this one", misplaced)
    if has_entry or backend == "triton":
        return
    raise PreflightError(
        f"model directory {model_dir} holds nothing to serve: no model repository "
        f"(expected {repository_root(model_dir)}/<model>/1/model.onnx) and no --entry score.py to use it"
    )


def check_port_free(host: str, port: int, what: str = "--port") -> None:
    """Fail fast when something already listens on ``host:port`` (Gunicorn would retry for 5 s, then fail)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as ex:
        raise PreflightError(f"cannot bind {host}:{port}: unknown host {host!r} ({ex.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As Gunicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as ex:
            if ex.errno == errno.EADDRINUSE:
                raise PreflightError(
                    f"address already in use: {host}:{port} — another process listens there; "
                    f"stop it or choose another {what}"
                ) from None
            if ex.errno == errno.EACCES:
                raise PreflightError(f"permission denied binding {host}:{port}: choose a port above 1023") from None
            raise PreflightError(f"cannot bind {host}:{port}: {ex.strerror}") from None
