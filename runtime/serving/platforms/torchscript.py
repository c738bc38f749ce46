"""The TorchScript platform (``pytorch_libtorch``): ``model.pt`` run with PyTorch, on the CPU or ``cuda:N``.

Tensors are bound as Triton's PyTorch backend binds them:

* inputs named ``<name>__<index>`` (``INPUT__0``) are forward()'s positional arguments by index;
  otherwise config input names must be forward()'s argument names;
* outputs named ``<name>__<index>`` (``OUTPUT__0``) are elements of the returned tuple by index;
  a model that returns ``Dict[str, Tensor]`` is read by key; otherwise outputs are taken in config order.

PyTorch is optional (``pip install 'scoring-runtime[torch]'``) and imported only when a repository needs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import StartupError
from runtime.serving.platform_names import TORCH_BACKEND, TORCH_PLATFORM
from runtime.serving.platforms import Device

if TYPE_CHECKING:
    from runtime.serving.repository import ModelConfig, TensorSpec

INSTALL = "pip install 'scoring-runtime[torch]'"
# The datatypes Triton's PyTorch backend takes (BYTES only as List[str] inputs, which this platform does not run).
SUPPORTED = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")
_INDEXED = re.compile(r"^.+__(\d+)$")
# Requests arrive in read-only buffers (shared memory, the HTTP body); the model only reads its inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class TorchOptions:
    """What Settings say about TorchScript instances (RUNTIME_TORCH_PINNED)."""

    pinned: bool = False


OPTIONS = TorchOptions()


def import_torch(model: str | None = None) -> ModuleType:
    """torch, or a start-up error naming the model (when given) and the install command.

    Intra-op threads wait passively (OMP_WAIT_POLICY, read when torch loads, unless set already): spinning
    threads burn the cores that other instances, workers and the HTTP loop need. With two threads on two busy
    cores, DenseNet-121 took 7.5 s per batch of 4 spinning and 1.7 s passive.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as ex:
        what = (
            f"model {model!r} is a TorchScript model (platform {TORCH_PLATFORM}) and needs"
            if model
            else f"TorchScript models (platform {TORCH_PLATFORM}) need"
        )
        raise StartupError(f"{what} PyTorch, which is not installed ({ex}): {INSTALL}") from None
    return torch


def load_module(torch: ModuleType, path: Path, device: str) -> Any:
    try:
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": TorchScript is what Triton serves
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as ex:  # torch raises RuntimeError (or ValueError) with a zip-reader message
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise StartupError(
            f"{path}: not a TorchScript file PyTorch can load ({first}); save the model with "
            "torch.jit.script(model).save('model.pt') or torch.jit.trace(model, example).save('model.pt')"
        ) from None
    module.eval()
    return module


def _index(name: str) -> int | None:
    match = _INDEXED.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Binding:
    """How config tensors map onto forward(): positional argument index per input, and how outputs are read."""

    inputs: dict[str, int]  # config input name -> position in forward()'s arguments
    outputs: dict[str, int | str]  # config output name -> tuple index, or dict key


def bind(config: ModelConfig, module: Any, path: Path) -> Binding:
    """Match the config's names against the TorchScript signature; a start-up error says what to fix."""
    where = config.path / "config.pbtxt"
    schema = module.forward.schema
    arguments = list(schema.arguments)[1:]  # without self
    names = [a.name for a in arguments]
    required = [a.name for a in arguments if not a.has_default_value()]
    wanted = [t.name for t in config.inputs]
    if all(_index(n) is not None for n in wanted):
        positions = {n: _index(n) or 0 for n in wanted}
        bad = [n for n, i in positions.items() if i >= len(names)]
        if bad:
            raise StartupError(
                f"{where}: input {bad[0]!r} names argument {positions[bad[0]]} of forward(), but "
                f"{path} takes {len(names)} ({', '.join(names)})"
            )
    else:
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise StartupError(
                f"{where}: input {unknown[0]!r} is not an argument of forward() in {path} (it takes "
                f"{', '.join(names) or 'none'}); name the inputs after those arguments, or INPUT__0, INPUT__1, ..."
            )
        positions = {n: names.index(n) for n in wanted}
    covered = set(positions.values())
    if len(covered) != len(wanted):
        raise StartupError(f"{where}: two inputs name the same argument of forward() in {path}")
    missing = [n for i, n in enumerate(names) if n in required and i not in covered]
    if missing or sorted(covered) != list(range(len(covered))):
        gap = missing[0] if missing else names[min(set(range(len(covered))) - covered)]
        raise StartupError(f"{where}: forward() in {path} needs argument {gap!r}, which no config input provides")
    return Binding(positions, _bind_outputs(config, schema.returns[0].type, path, where))


def _bind_outputs(config: ModelConfig, returns: Any, path: Path, where: Path) -> dict[str, int | str]:
    kind = returns.kind()
    count = 1 if kind == "TensorType" else len(returns.elements()) if kind == "TupleType" else None
    wanted = [t.name for t in config.outputs]
    if all(_index(n) is not None for n in wanted):
        outputs: dict[str, int | str] = {n: _index(n) or 0 for n in wanted}
        bad = [n for n, i in outputs.items() if count is not None and isinstance(i, int) and i >= count]
        if bad:
            raise StartupError(
                f"{where}: output {bad[0]!r} asks for result {outputs[bad[0]]}, but {path} returns {count}"
            )
        return outputs
    if kind == "DictType":
        return {n: n for n in wanted}
    if count is not None and count != len(wanted):
        raise StartupError(
            f"{where}: {path} returns {count} tensor(s) but the config lists {len(wanted)} output(s) "
            f"({', '.join(wanted)}); list one output per returned tensor, in order, or name them OUTPUT__0, ..."
        )
    return {n: i for i, n in enumerate(wanted)}


def check_model(config: ModelConfig, version: str) -> None:
    """Start-up checks the repository runs: datatypes, the file loads as TorchScript, names match forward()."""
    where = config.path / "config.pbtxt"
    for spec in config.inputs + config.outputs:
        if spec.datatype not in SUPPORTED:
            raise StartupError(
                f"{where}: {spec.name!r} has datatype {spec.datatype}, which the PyTorch platform does not "
                f"serve (it takes {', '.join(SUPPORTED)})"
            )
    torch = import_torch(config.name)
    path = config.model_file(version)
    bind(config, load_module(torch, path, "cpu"), path)


def _threads(torch: ModuleType, threads: int) -> None:
    # Process-wide in PyTorch: the engine gives every instance the same share of the cores.
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work; later loads keep it
        torch.set_num_interop_threads(1)


class TorchScriptInstance:
    def __init__(self, config: ModelConfig, version: str, device: Device, threads: int) -> None:
        torch = import_torch(config.name)
        self._torch = torch
        self.device = device
        self._device = torch.device(torch_device(device))
        path = config.model_file(version)
        self._module = load_module(torch, path, torch_device(device))
        self._binding = bind(config, self._module, path)
        self._config = config
        self._arity = len(self._binding.inputs)
        self._dtypes = {s.name: _torch_dtype(torch, s) for s in config.outputs}
        # Triton's parameter: the profiling executor's first calls for every new input shape are slow
        # (seconds for DenseNet-121), and dynamic batching brings a new shape with every batch size.
        self._optimize = not _flag(config, "DISABLE_OPTIMIZED_EXECUTION")
        self._stream = torch.cuda.Stream(device=self._device) if device.kind == "gpu" else None
        # Pinned staging for host-to-device copies, opt-in until a GPU run shows it pays (docs/benchmarks.md).
        self._pinned = device.kind == "gpu" and OPTIONS.pinned
        self._staging: dict[str, Any] = {}
        _threads(torch, threads)

    def _to_device(self, name: str, value: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(value))
        if self.device.kind == "cpu":
            return tensor
        if not self._pinned:
            return tensor.to(self._device)
        staging = self._staging.get(name)
        if staging is None or staging.numel() < tensor.numel() or staging.dtype != tensor.dtype:
            staging = self._staging[name] = self._torch.empty(tensor.numel(), dtype=tensor.dtype).pin_memory()
        view = staging[: tensor.numel()].view(tensor.shape)
        view.copy_(tensor)
        return view.to(self._device, non_blocking=True)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args: list[Any] = [None] * self._arity
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), torch.jit.optimized_execution(self._optimize), stream:
            for name, position in self._binding.inputs.items():
                args[position] = self._to_device(name, inputs[name])
            result = self._module(*args)
            outputs = {}
            for name, key in self._binding.outputs.items():
                tensor = _pick(result, key)
                if not isinstance(tensor, torch.Tensor):
                    raise TypeError(
                        f"result {key!r} of model {self._config.name!r} is {type(tensor).__name__}, not a tensor"
                    )
                if tensor.dtype != self._dtypes[name]:
                    raise TypeError(
                        f"output {name!r} of model {self._config.name!r} is {tensor.dtype}, but config.pbtxt "
                        f"declares {self._dtypes[name]}: fix data_type in {self._config.path / 'config.pbtxt'}"
                    )
                # .cpu() is the one device-to-host copy (and the synchronisation); on the CPU it is free.
                outputs[name] = tensor.detach().cpu().numpy()
        return outputs

    def close(self) -> None:
        self._module = None
        self._staging.clear()


def _flag(config: ModelConfig, key: str) -> bool:
    """A boolean ``parameters`` entry of config.pbtxt, as Triton's PyTorch backend reads it."""
    parameter = config.proto.parameters.get(key)
    return parameter is not None and parameter.string_value.strip().lower() in ("true", "1", "yes", "on")


def torch_device(device: Device) -> str:
    return "cpu" if device.kind == "cpu" else f"cuda:{device.index}"


def _pick(result: Any, key: int | str) -> Any:
    if isinstance(key, str):
        return result[key]
    if isinstance(result, (tuple, list)):
        return result[key]
    if key != 0:
        raise TypeError(f"the model returned one tensor, not a tuple with element {key}")
    return result


def _torch_dtype(torch: ModuleType, spec: TensorSpec) -> Any:
    return {
        "BOOL": torch.bool,
        "UINT8": torch.uint8,
        "INT8": torch.int8,
        "INT16": torch.int16,
        "INT32": torch.int32,
        "INT64": torch.int64,
        "FP16": torch.float16,
        "FP32": torch.float32,
        "FP64": torch.float64,
    }[spec.datatype]


class TorchScriptPlatform:
    name = TORCH_BACKEND

    def gpu_count(self) -> int:
        torch = import_torch()
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0

    def missing_gpu_reason(self) -> str:
        torch = import_torch()
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a CPU build: install a CUDA build of torch"
        return "no CUDA device is visible (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them)"

    def load(self, config: ModelConfig, version: str, device: Device, threads: int) -> TorchScriptInstance:
        if device.kind == "gpu" and device.index >= self.gpu_count():
            raise StartupError(f"model {config.name!r} cannot run on {device}: {self.missing_gpu_reason()}")
        return TorchScriptInstance(config, version, device, threads)
