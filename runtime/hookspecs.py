"""The hook specifications: every extension point of the runtime, in one module.

A hook is implemented by a plugin: a module or object whose functions carry
:data:`hookimpl` (score.py may also use plain functions with these names).

Order for one ``POST /score`` (see :mod:`runtime.pipeline`)::

    preprocess(request)            -> payload       first result wins
    run(payload)                   -> outputs       score.py's Azure ML run(), when it has one
      or infer(model, inputs, ...) -> outputs       otherwise: the backend, batched across requests
    postprocess(request, outputs)  -> response      first result wins

``init`` runs once per worker before serving, ``shutdown`` once when the
worker stops. Built-in behaviour is registered ``trylast``, so score.py and
third-party plugins win.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from runtime.azureml.request import ScoringRequest
    from runtime.context import InitContext
    from runtime.serving.repository import ModelConfig

PROJECT_NAME = "scoring_runtime"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@functools.cache
def names() -> tuple[str, ...]:
    """Every hook's name, sorted."""
    return tuple(sorted(name for name, value in globals().items() if hasattr(value, f"{PROJECT_NAME}_spec")))


# -- Lifecycle: once per worker --------------------------------------------------------------------


@hookspec
def init(context: InitContext) -> None:
    """Called once per worker process, before the worker serves requests.

    ``context`` holds the settings, the model directory and the plugin manager.
    Backends load their models here (``tryfirst``), so that score.py's ``init``
    can already call :func:`runtime.infer`. Every implementation is called;
    an exception stops the server with exit code 3. May be ``async``.
    """


@hookspec
def shutdown() -> None:
    """Called once when the worker stops, after the last request has been answered.

    Every implementation is called; errors are logged and do not stop the others.
    """


# -- Request: one /score request, in this order (see runtime.pipeline) -----------------------------


@hookspec(firstresult=True)
def preprocess(request: ScoringRequest) -> Any:
    """Turn one ``/score`` request into the payload for the next step.

    For score.py with ``run()``, the built-in implementation builds run()'s
    argument exactly as azmlinfsrv does (the body as str, an AMLRequest for
    ``@rawhttp``, keyword arguments for inference-schema). In hook style,
    return the model inputs: a mapping of input name to numpy array (one
    request, with its batch dimension when the model batches), or a
    :class:`runtime.InferRequest` naming the model. Stops at the first
    non-None result. May be ``async``. Raise :class:`runtime.errors.BadRequest`
    for input the client got wrong.
    """


@hookspec(firstresult=True)
def infer(
    model: str, version: str | None, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]
) -> Awaitable[dict[str, np.ndarray]] | None:
    """Run ``model`` (``version``; None: the latest) on ``inputs``; implemented by backend plugins.

    Called by the data plane (:mod:`runtime.dataplane`) for /score in hook style,
    :func:`runtime.infer` and the KServe v2 infer endpoint. Inputs are batch first
    when the model batches, and already checked against :func:`model_config`
    (datatypes that cast safely, shapes): convert them once into the backend's
    own form. ``parameters`` may hold ``runtime.outputs`` (the output names
    wanted; return at least those) and ``runtime.classification`` ({output: class
    count}; classify those outputs yourself, or leave it to the data plane). Return
    ``None`` when this plugin does not serve ``model``; otherwise an awaitable
    that resolves to the outputs by name. Raise
    :class:`runtime.errors.BadRequest` for inputs that do not fit the model.
    Backends that batch join concurrent calls into one execution. Stops at the
    first non-None result. Called on the event loop: do not block here. An
    ``async def`` implementation may also resolve to ``None`` for a model it does
    not serve: the implementations are then awaited one after the other.
    """


@hookspec(firstresult=True)
def postprocess(request: ScoringRequest, outputs: Any) -> Any:
    """Turn the outputs of ``run()`` or ``infer`` into the response.

    Return any JSON-serialisable value, an :class:`runtime.AMLResponse` or a
    Starlette ``Response`` (a ``StreamingResponse`` too), or a generator
    (sync or async) whose chunks are streamed. The built-in implementation returns ``outputs``
    as they are (numpy arrays become lists). Stops at the first non-None
    result. May be ``async``.
    """


# -- Models: what the backends serve (the KServe v2 routes and the data plane) ---------------------


@hookspec
def model_index() -> list[dict[str, str]]:
    """The models this backend serves: ``[{"name", "version", "state"}]``, as Triton's repository index.

    Every implementation is called; the lists are joined. Called synchronously: an ``async def``
    implementation is a start-up error.
    """


@hookspec(firstresult=True)
def model_config(model: str, version: str | None) -> ModelConfig | None:
    """The completed config of ``model``, or ``None`` if this plugin does not serve it.

    The v2 metadata and config endpoints, and input checking, are built on it.
    Stops at the first non-None result. Called synchronously: an ``async def``
    implementation is a start-up error.
    """


@hookspec(firstresult=True)
def model_ready(model: str, version: str | None) -> bool | Awaitable[bool] | None:
    """Whether ``model`` can take requests now; ``None`` if this plugin does not serve it."""


@hookspec
def server_ready() -> bool | Awaitable[bool]:
    """Whether this plugin's backend can take requests (``/v2/health/ready`` is the AND of all)."""
