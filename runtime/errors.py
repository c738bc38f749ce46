"""Errors that carry their HTTP status.

Every error the runtime raises on purpose is a :class:`ServingError`. The HTTP
layer turns it into a JSON body ``{"message": ...}`` (Azure ML routes) or
``{"error": ...}`` (KServe v2 routes) with ``status_code``; nothing else about
the exception reaches the client.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: an error with an HTTP status and a message a user can act on."""

    status_code: int = 500

    def __init__(self, message: str, status_code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        # For the log only (a library's own message, with its paths): never sent to the client.
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code

    def log_line(self, request_id: str | None) -> str:
        """How a failed request is logged: its id, the client's message and the detail."""
        detail = f" ({self.detail})" if self.detail else ""
        return f"request {request_id}: {self.status_code} {self.message}{detail}"


class BadRequest(ServingError):
    """The request is malformed: bad JSON, a wrong tensor shape, a missing field."""

    status_code = 400


class NotFound(ServingError):
    status_code = 404


class UnknownModel(NotFound):
    """A model (or version) no backend serves, in Triton's words (the KServe v2 routes)."""

    def __init__(self, model: str, version: str | None = None) -> None:
        where = f"'{model}'" if version is None else f"'{model}' version {version}"
        super().__init__(f"Request for unknown model: {where} is not found")


class NoBackend(NotFound):
    """No backend's ``infer`` took the model (``runtime.infer()`` and hook-style /score)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"No backend serves a model named {model!r}.")


class MethodNotAllowed(ServingError):
    status_code = 405


class PayloadTooLarge(ServingError):
    status_code = 413


class UnsupportedMediaType(ServingError):
    status_code = 415


class ScoringFailed(ServingError):
    """The entry script raised; the traceback goes to the log only."""

    status_code = 500


class ScoringTimeout(ServingError):
    status_code = 500

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"Scoring timeout after {timeout_ms} ms")
        self.timeout_ms = timeout_ms


class ServiceUnavailable(ServingError):
    """A backend (for example a Triton server) cannot be reached right now."""

    status_code = 503


class BadGateway(ServingError):
    """A server the runtime calls (Triton) answered with a response the runtime cannot read."""

    status_code = 502


class UnsupportedDatatype(ServingError):
    """A model whose tensor has a datatype the runtime cannot carry: numpy has no such type (BF16)."""

    status_code = 501

    def __init__(self, model: str, tensor: str, datatype: str) -> None:
        super().__init__(
            f"model '{model}' {tensor} has datatype {datatype}, which this runtime cannot carry (numpy has no "
            f"{datatype} type); change the model's config.pbtxt to a type numpy has (FP32, FP16) or call Triton "
            "directly"
        )


class Overloaded(ServingError):
    """Load shed on purpose: a full queue, a queue timeout, the concurrency or body-bytes limit.

    KServe v2 routes answer 503 (as Triton does); /score answers ``score_status`` 429 (as Azure ML
    endpoints do). Both carry ``Retry-After``.
    """

    status_code = 503
    score_status = 429
    retry_after_s = 1


class RunFailed(Exception):
    """run() or a hook raised something that is not a ServingError; carries the original.

    The /score route answers it as azmlinfsrv does (a 500 naming the script; bad JSON: a 400).
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class StartupError(Exception):
    """The server cannot start: a bad entry script, plugin or model repository.

    ``runtime serve`` exits with :data:`STARTUP_EXIT_CODE` after logging it.
    """


# The exit code azmlinfsrv (and Gunicorn, for a worker that fails to boot) uses.
STARTUP_EXIT_CODE = 3
