"""Scoring runtime: serve Azure ML entry scripts with batching, on onnxruntime or Triton."""

from runtime.api import infer, infer_async
from runtime.azureml.aml import AMLRequest, AMLResponse, rawhttp
from runtime.errors import BadRequest, ServingError
from runtime.hookspecs import hookimpl
from runtime.manager import inline
from runtime.pipeline import InferRequest

__version__ = "0.1.0"

__all__ = [
    "AMLRequest",
    "AMLResponse",
    "BadRequest",
    "InferRequest",
    "ServingError",
    "__version__",
    "hookimpl",
    "infer",
    "infer_async",
    "inline",
    "rawhttp",
]
