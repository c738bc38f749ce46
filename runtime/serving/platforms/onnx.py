"""onnxruntime: CPU sessions, and CUDA execution provider sessions when onnxruntime-gpu is installed."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.serving.platforms import Device
from runtime.serving.tensors import to_str_array

if TYPE_CHECKING:
    from runtime.serving.repository import ModelConfig

CUDA = "CUDAExecutionProvider"


@dataclass
class OrtOptions:
    """What Settings say about onnxruntime sessions (RUNTIME_ORT_ARENA, RUNTIME_ORT_PROVIDERS)."""

    arena: bool = True
    providers: tuple[str, ...] = ()


OPTIONS = OrtOptions()


def configure(arena: bool, providers: tuple[str, ...]) -> None:
    """Set from Settings by the process that loads models, before the first load."""
    OPTIONS.arena = arena
    OPTIONS.providers = providers


def session_options(threads: int, cpu: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The CPU arena keeps the largest footprint of every batch size the batcher forms; without it memory
    # follows the current batch, at some cost in speed (RUNTIME_ORT_ARENA=0; onnxruntime's default is on).
    options.enable_cpu_mem_arena = OPTIONS.arena
    if cpu:
        # A memory pattern is one block per input shape, planned for that shape: the batcher forms every batch
        # size, and in the arena those blocks fragment it (DenseNet-121 with batches of 1 to 16 grew to 480 MiB
        # with them, 250 MiB without). Tensors allocated one by one reuse each other's room, at no measured cost.
        options.enable_mem_pattern = False
    # Spinning threads burn the cores other instances, workers and the HTTP loop need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_providers(configured: tuple[str, ...] | None = None) -> list[str]:
    import onnxruntime as ort

    wanted = [p for p in (OPTIONS.providers if configured is None else configured) if p != CUDA]
    available = ort.get_available_providers()
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


@functools.lru_cache(maxsize=1)
def _cuda_devices() -> tuple[int, str]:
    """(GPU count, why 0) from the CUDA driver; asks nothing of onnxruntime."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 cannot be loaded)"
    if cuda.cuInit(0) != 0:
        return 0, "the CUDA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the CUDA driver reports no GPU"
    return count.value, ""


class OnnxInstance:
    def __init__(self, config: ModelConfig, version: str, device: Device, threads: int) -> None:
        import onnxruntime as ort

        self.device = device
        if device.kind == "gpu":
            providers: list[Any] = [(CUDA, {"device_id": device.index}), "CPUExecutionProvider"]
        else:
            providers = cpu_providers()
        self.session = ort.InferenceSession(
            str(config.model_file(version)),
            sess_options=session_options(threads, device.kind != "gpu"),
            providers=providers,
        )
        self._strings = {t.name for t in config.inputs if t.datatype == "BYTES"}
        self._outputs = [t.name for t in config.outputs]
        # On the CPU provider alone, the compiled session's run: InferenceSession.run first checks for WebGPU
        # graph capture, missing inputs (the data plane has checked them) and OrtValue feeds (we pass numpy),
        # about 5 µs a run on the tiny model; its provider fallback needs another provider to fall back to.
        compiled = getattr(self.session, "_sess", None)
        cpu_only = compiled is not None and self.session.get_providers() == ["CPUExecutionProvider"]
        self._compiled = compiled if cpu_only else None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # onnxruntime takes string tensors as numpy arrays of str.
        feeds = {n: to_str_array(v) if n in self._strings else v for n, v in inputs.items()}
        if self._compiled is not None:
            results = self._compiled.run(self._outputs, feeds, None)
        else:
            results = self.session.run(self._outputs, feeds)
        return dict(zip(self._outputs, results, strict=True))

    def close(self) -> None:
        self._compiled = None  # it holds the session too
        del self.session


class OnnxPlatform:
    name = "onnxruntime"
    concurrent_runs = True  # InferenceSession.run is thread-safe: shards of a batch may share one session

    def gpu_count(self) -> int:
        if CUDA not in _available():
            return 0
        return _cuda_devices()[0]

    def missing_gpu_reason(self) -> str:
        if CUDA not in _available():
            return f"onnxruntime has no {CUDA} (install onnxruntime-gpu instead of onnxruntime)"
        return _cuda_devices()[1]

    def load(self, config: ModelConfig, version: str, device: Device, threads: int) -> OnnxInstance:
        return OnnxInstance(config, version, device, threads)


def _available() -> list[str]:
    import onnxruntime as ort

    providers: list[str] = ort.get_available_providers()
    return providers
