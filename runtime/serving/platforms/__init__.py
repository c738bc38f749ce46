"""Model execution platforms: what loads a model file onto a device and runs batches on it.

The engine (and the in-worker backend) code against :class:`Platform` and :class:`Instance` only;
:func:`platform_for` picks the platform from the model's config: ``onnxruntime_onnx`` (:mod:`.onnx`) or
``pytorch_libtorch`` (:mod:`.torchscript`). Heavy libraries (onnxruntime, torch) are imported only when
a platform that needs them is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from runtime.serving.platform_names import (  # noqa: F401 (re-exported)
    ONNX_BACKEND,
    ONNX_PLATFORM,
    TORCH_BACKEND,
    TORCH_PLATFORM,
    platform_name,
)

if TYPE_CHECKING:
    from runtime.serving.repository import ModelConfig
    from runtime.settings import Settings


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "gpu"]
    index: int = 0

    def __str__(self) -> str:
        return "CPU" if self.kind == "cpu" else f"GPU {self.index}"


class Instance(Protocol):
    """One loaded copy of a model version on one device."""

    device: Device

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch (batch first); blocking, called from a worker thread."""
        ...

    def close(self) -> None: ...


class Platform(Protocol):
    name: str

    def gpu_count(self) -> int:
        """GPUs this platform can use here; 0 when it cannot use any."""
        ...

    def missing_gpu_reason(self) -> str:
        """Why :meth:`gpu_count` is 0, for a start-up error a user can act on."""
        ...

    def load(self, config: ModelConfig, version: str, device: Device, threads: int) -> Instance: ...


def configure(settings: Settings) -> None:
    """Hand the platforms what Settings say about them; the process that loads models calls it first."""
    from runtime.serving.platforms import onnx, torchscript

    onnx.configure(arena=settings.ort_arena, providers=settings.ort_providers)
    torchscript.OPTIONS.pinned = settings.torch_pinned


def platform_for(config: ModelConfig) -> Platform:
    """The platform that runs ``config``, from its completed ``platform`` (or ``backend``)."""
    if platform_name(config.proto.platform, config.proto.backend) == TORCH_PLATFORM:
        from runtime.serving.platforms.torchscript import TorchScriptPlatform

        return TorchScriptPlatform()
    from runtime.serving.platforms.onnx import OnnxPlatform

    return OnnxPlatform()


def load_instance(config: ModelConfig, version: str, device: Device, threads: int) -> Instance:
    """``platform_for(config).load(...)``; the library's own errors become a start-up error naming the file."""
    from runtime.errors import StartupError

    platform = platform_for(config)
    try:
        return platform.load(config, version, device, threads)
    except StartupError:
        raise
    except Exception as ex:  # onnxruntime's and torch's own error types; the message says what is wrong
        raise StartupError(f"{config.model_file(version)}: {platform.name} cannot load it: {ex}") from None
