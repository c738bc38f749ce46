"""The platforms a model config can name (Triton accepts ``platform`` or ``backend``).

Apart from :mod:`runtime.serving.platforms` so that the repository can read configs without importing the
platforms, which take the repository's ModelConfig.
"""

from __future__ import annotations

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
TORCH_PLATFORM = "pytorch_libtorch"
TORCH_BACKEND = "pytorch"


def platform_name(platform: str, backend: str) -> str | None:
    """The platform a config's ``platform``/``backend`` fields name (Triton accepts either); None if unknown."""
    if platform in (ONNX_PLATFORM, TORCH_PLATFORM):
        return platform
    if not platform:
        return {ONNX_BACKEND: ONNX_PLATFORM, TORCH_BACKEND: TORCH_PLATFORM, "": ONNX_PLATFORM}.get(backend)
    return None
