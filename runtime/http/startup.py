"""A worker's start-up, as a person sees it: one summary block of what is served, and Ctrl-C that works.

* :func:`summary` says what the server serves: entry script, backend and where it runs, each model
  with versions, batching and instances, the routes, the URL. :func:`log_summary_once` logs it from the
  first worker that is ready (the others would repeat it).
* :func:`interruptible` makes SIGINT, SIGTERM and SIGQUIT end a worker at once while ``init`` runs:
  uvicorn only records signals until start-up completes, so a slow ``init()`` (or a wait for Triton)
  kept the worker alive until Gunicorn killed it after its graceful timeout ("Worker was sent SIGKILL!
  Perhaps out of memory?").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from runtime.errors import UnsupportedDatatype

if TYPE_CHECKING:
    from runtime.manager import PluginManager
    from runtime.serving.repository import ModelConfig
    from runtime.settings import Settings

logger = logging.getLogger("runtime.app")

STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside: a stop signal exits the process at once (Gunicorn workers only: main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        # No logging here: the signal may have interrupted a thread holding the logging lock.
        os.write(2, f"Worker {os.getpid()}: {signal.Signals(signum).name} during start-up, exiting\n".encode())
        os._exit(0)

    previous = {sig: signal.signal(sig, stop) for sig in STARTUP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _instances(config: ModelConfig) -> str:
    from runtime.serving.model_config import mc

    kinds: dict[str, int] = {}
    for group in config.proto.instance_group:
        kind = "GPU" if group.kind == mc.ModelInstanceGroup.KIND_GPU else "CPU"
        gpus = f" {list(group.gpus)}" if group.gpus else ""
        kinds[kind + gpus] = kinds.get(kind + gpus, 0) + max(group.count, 1)
    return ", ".join(f"{count} x {kind}" for kind, count in kinds.items()) or f"{config.instance_count} x CPU"


def _batching(config: ModelConfig) -> str:
    if config.max_batch_size <= 0:
        return "no batching (max_batch_size 0)"
    dynamic = config.dynamic_batching
    if dynamic is None:
        return f"max_batch_size {config.max_batch_size}, no dynamic batching"
    preferred = f", preferred {list(dynamic.preferred_batch_sizes)}" if dynamic.preferred_batch_sizes else ""
    return (
        f"max_batch_size {config.max_batch_size}, dynamic batching "
        f"(max_queue_delay {dynamic.max_queue_delay_us} us{preferred})"
    )


def _backend(settings: Settings) -> str:
    if settings.backend == "triton":
        how = "started by this runtime" if settings.triton_mode == "managed" else "remote"
        via = "; its client: the model engine (runtime-engine)" if settings.triton_client == "engine" else ""
        return f"triton: Triton Inference Server at {settings.triton_url} ({how}{via})"
    if settings.engine == "process" and settings.model_dir:
        # Where each instance runs (KIND_GPU: onnxruntime's CUDA provider) is in the engine's log and `runtime check`.
        return "onnxruntime, in the model engine process (runtime-engine), shared by all workers"
    return "onnxruntime, in each worker process (--engine worker)"


def _routes(routes: list[Any]) -> str:
    paths = [r for r in routes if isinstance(r, Route)]
    plain = [f"{'/'.join(sorted((r.methods or set()) - {'HEAD', 'OPTIONS'}))} {r.path}" for r in paths]
    own = [p for p in plain if " /v2" not in p]
    v2 = len(plain) - len(own)
    return ", ".join(own) + (f", and {v2} KServe v2 routes under /v2 (POST /v2/models/<model>/infer)" if v2 else "")


def summary(settings: Settings, pm: PluginManager, routes: list[Any], hook_style: bool = False) -> str:
    """``hook_style``: score.py has no run(), so its requests go to a model a backend serves."""
    url = f"http://{settings.host}:{settings.port}"
    backend = _backend(settings)
    lines = [
        f"Serving at {url}",
        f"  entry script: {settings.entry_path or '(none: models only, v2 API)'}",
        f"  model dir:    {settings.model_dir or '(none)'}",
        f"  backend:      {backend}",
        f"  workers:      {settings.workers}, {settings.concurrency} requests in flight each",
    ]
    names = sorted({entry["name"] for entry in pm.model_index()})
    for name in names:
        config = pm.model_config(name, None)
        if config is None:
            lines.append(f"  model {name}")
            continue
        instances = _instances(config)
        lines.append(
            f"  model {name}: versions {', '.join(config.versions)}; {_batching(config)}; instances {instances}"
        )
        if config.uncarried is not None:
            lines.append(f"    its requests are refused (501): {UnsupportedDatatype(name, *config.uncarried).message}")
    if not names and hook_style:
        # Every /score request would be a 404 "No backend serves a model": say so before the first one.
        lines.append(
            "  models:       none, and score.py has no run(): its requests go to a model the backend serves, "
            "and it serves none (give --model-dir with a model repository)"
        )
    elif not names:
        lines.append("  models:       none (score.py's init() loads what it needs)")
    lines.append(f"  routes:       {_routes(routes)}")
    return "\n".join(lines)


def log_summary_once(settings: Settings, pm: PluginManager, routes: list[Any], hook_style: bool = False) -> None:
    marker = settings.summary_marker
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    logger.info("%s", summary(settings, pm, routes, hook_style))
