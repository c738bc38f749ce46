"""The model repository, read the way Triton reads it.

Layout: ``<model-dir>/triton/<model>/<version>/model.onnx`` (what Azure ML
registers for Triton), or ``<model-dir>/<model>/<version>/`` when there is no
``triton/`` folder. For ONNX models ``config.pbtxt`` is optional: it is parsed
as protobuf text into Triton's ``ModelConfig`` and completed from the ONNX graph
as ``tritonserver --strict-model-config=false`` does. TorchScript models
(``platform: "pytorch_libtorch"``, ``model.pt``) need a complete config, as in
Triton: their names are checked against forward()'s signature.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format

from runtime.errors import StartupError
from runtime.serving.batching import QueuePolicy, SchedulePolicy
from runtime.serving.datatypes import WIRE_TO_NUMPY, config_to_wire, wire_to_config
from runtime.serving.model_config import mc
from runtime.serving.platform_names import (
    ONNX_BACKEND,
    ONNX_PLATFORM,
    TORCH_BACKEND,
    TORCH_PLATFORM,
    platform_name,
)

DEFAULT_MAX_BATCH_SIZE = 4  # Triton's --backend-config=default-max-batch-size
DEFAULT_FILENAMES = {ONNX_PLATFORM: "model.onnx", TORCH_PLATFORM: "model.pt"}
BACKENDS = {ONNX_PLATFORM: ONNX_BACKEND, TORCH_PLATFORM: TORCH_BACKEND}
# The backends of Triton's other platforms (a config may name the platform alone).
TRITON_PLATFORM_BACKENDS = {
    "tensorrt_plan": "tensorrt",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
}
# Model files of Triton's other backends whose config.pbtxt Triton completes itself (--strict-model-config=false,
# its default): a model folder with one of these and no config is Triton's to serve.
TRITON_AUTOCOMPLETED_FILES = {
    "model.plan": "tensorrt",
    "model.savedmodel": "tensorflow",
    "model.graphdef": "tensorflow",
}
# Fields of ModelConfig that protobuf's JSON mapping writes as strings (64-bit ints); Triton writes numbers.
_INT64_KEYS = {
    "dims",
    "shape",
    "versions",
    "max_queue_delay_microseconds",
    "default_timeout_microseconds",
    "priority_levels",
    "default_priority_level",
}


class RepositoryError(StartupError):
    """The repository cannot be served; the message names the file (and line)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 name: FP32, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension when the model batches; -1 is any size
    reshape: tuple[int, ...] | None = None
    labels: tuple[str, ...] | None = None
    optional: bool = False  # an input a request may leave out (config.pbtxt's ``optional: true``)

    @property
    def model_dims(self) -> tuple[int, ...]:
        """The shape the model itself sees (after ``reshape``)."""
        return self.reshape if self.reshape is not None else self.dims


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    schedule: SchedulePolicy = field(default_factory=SchedulePolicy)


def _queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=int(policy.max_queue_size),
        default_timeout_us=int(policy.default_timeout_microseconds),
        timeout_action=mc.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action),
        allow_timeout_override=policy.allow_timeout_override,
    )


def dynamic_batching_of(db: mc.ModelDynamicBatching) -> DynamicBatching:
    """The batcher settings of a config's ``dynamic_batching``, queue policy and priority levels included."""
    schedule = SchedulePolicy(
        default=_queue_policy(db.default_queue_policy),
        priority_levels=int(db.priority_levels),
        default_priority_level=int(db.default_priority_level),
        levels={int(level): _queue_policy(p) for level, p in db.priority_queue_policy.items()},
    )
    return DynamicBatching(
        tuple(int(s) for s in db.preferred_batch_size),
        int(db.max_queue_delay_microseconds),
        db.preserve_ordering,
        schedule,
    )


@dataclass
class ModelConfig:
    name: str
    path: Path  # the model's folder
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    versions: list[str]  # loaded versions, ascending
    dynamic_batching: DynamicBatching | None
    instance_count: int
    model_filename: str
    proto: mc.ModelConfig = field(repr=False)

    @property
    def latest_version(self) -> str:
        return self.versions[-1]

    @functools.cached_property
    def uncarried(self) -> tuple[str, str] | None:
        """("input 'x'", "BF16") for the first tensor whose datatype numpy lacks; None when all are carried."""
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            for spec in specs:
                if spec.datatype not in WIRE_TO_NUMPY:
                    return f"{kind} '{spec.name}'", spec.datatype
        return None

    def model_file(self, version: str) -> Path:
        return self.path / version / self.model_filename

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def config_json(self) -> dict[str, object]:
        """The completed config as Triton's ``GET /v2/models/{m}/config`` returns it."""
        data = json_format.MessageToDict(
            self.proto, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        result = _int64_to_numbers(data)
        assert isinstance(result, dict)
        return result

    def config_text(self) -> str:
        return self.config_text_of(self.proto)

    @staticmethod
    def config_text_of(proto: mc.ModelConfig) -> str:
        """config.pbtxt text, with repeated numbers on one line as Triton's examples write them."""
        return str(text_format.MessageToString(proto, use_short_repeated_primitives=True))


def _int64_to_numbers(value: object, key: str = "") -> object:
    if isinstance(value, dict):
        return {k: _int64_to_numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_int64_to_numbers(v, key) for v in value]
    if key in _INT64_KEYS and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def repository_root(model_dir: str | os.PathLike[str]) -> Path:
    root = Path(model_dir)
    return root / "triton" if (root / "triton").is_dir() else root


def _version_name(name: str) -> bool:
    """A version folder's name: ASCII digits ('²' and '٣' are digits to str.isdigit, and not to int())."""
    return name.isascii() and name.isdigit()


def inside_a_repository(model_dir: str | os.PathLike[str]) -> str | None:
    """What to say when ``model_dir`` is one model's folder (it holds config.pbtxt), or a version folder of one:
    Triton users name the model rather than the repository. None otherwise: an Azure ML model folder (its
    version folder holding model.onnx, say) is read by score.py."""
    path = Path(model_dir)
    model = path.parent if _version_name(path.name) else path
    if not (model / "config.pbtxt").is_file():
        return None
    given = model.parent.parent if model.parent.name == "triton" else model.parent  # Azure ML's <dir>/triton
    return f"{model_dir} is inside the model repository {repository_root(given)}: give --model-dir {given}"


def looks_like_repository(model_dir: str | os.PathLike[str]) -> bool:
    """Whether ``model_dir`` holds a model repository (an Azure ML model folder may hold anything else)."""
    root = Path(model_dir)
    if (root / "triton").is_dir():
        return True
    if not root.is_dir():
        return False
    for model in root.iterdir():
        if not model.is_dir():
            continue
        if (model / "config.pbtxt").is_file() or _autocompleted_file(model) is not None:
            return True
        if any(
            v.is_dir() and _version_name(v.name) and (any(v.glob("*.onnx")) or any(v.glob("*.pt")))
            for v in model.iterdir()
        ):
            return True
    return False


def _autocompleted_file(model_path: Path) -> Path | None:
    """A version folder's model file of a Triton backend that completes its config (TensorRT, TensorFlow)."""
    for version in sorted(model_path.iterdir()):
        if version.is_dir() and _version_name(version.name):
            for name in TRITON_AUTOCOMPLETED_FILES:
                if (version / name).exists():  # a SavedModel is a folder
                    return version / name
    return None


def read_text(path: Path) -> str:
    """A repository's text file (config.pbtxt, labels): UTF-8, as Triton reads it, or a RepositoryError saying so."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as ex:
        raise RepositoryError(
            f"{path}: not UTF-8 text (byte 0x{ex.object[ex.start]:02x} at offset {ex.start}): save it as UTF-8"
        ) from None


def _parse_config(path: Path) -> tuple[mc.ModelConfig, bool]:
    """The parsed config and whether it sets max_batch_size explicitly (proto3 cannot tell 0 from unset)."""
    text = read_text(path)
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as ex:
        line = ex.GetLine()
        where = f"{path}:{line}" if line else str(path)
        message = str(ex).split(" : ", 1)[-1]
        raise RepositoryError(f"{where}: invalid config.pbtxt: {message}") from None
    explicit = re.search(r"(^|\s)max_batch_size\s*:", re.sub(r"#.*", "", text)) is not None
    return config, explicit


@dataclass(frozen=True)
class GraphTensor:
    """A tensor as the model file declares it (any format): the full shape, batch dimension included."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: dynamic (a symbolic or missing dimension)


def _dims(values: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def check_against_graph(
    config_file: Path,
    model_file: Path,
    kind: str,
    specs: list[TensorSpec],
    graph: list[GraphTensor],
    max_batch_size: int,
    defaulted: list[GraphTensor] | None = None,
) -> None:
    """What Triton checks when it loads a model: every declared tensor exists in the model file with the same
    datatype and dims (``-1`` in the file accepts any size; the batch dimension, when the model batches, must
    be dynamic). Model-agnostic: ``graph`` comes from any format's reader; ``defaulted``: inputs with a default
    there, which the config may declare or leave out. Raises a RepositoryError naming the files, the tensor,
    and both values."""
    by_name = {t.name: t for t in graph + (defaulted or [])}
    where = f"{config_file if config_file.is_file() else config_file.parent}"
    for spec in specs:
        tensor = by_name.get(spec.name)
        if tensor is None:
            raise RepositoryError(
                f"{where}: {kind} {spec.name!r} is not in {model_file} (it has {', '.join(by_name) or 'none'})"
            )
        if spec.datatype != tensor.datatype:
            raise RepositoryError(
                f"{where}: {kind} {spec.name!r} has data_type {wire_to_config(spec.datatype)}, "
                f"but {model_file} has {wire_to_config(tensor.datatype)}"
            )
        shape = tensor.shape
        if max_batch_size > 0:
            if not shape or shape[0] != -1:
                raise RepositoryError(
                    f"{where}: {kind} {spec.name!r}: max_batch_size {max_batch_size} needs a dynamic first "
                    f"(batch) dimension, but {model_file} has shape {_dims(shape)}; set max_batch_size: 0"
                )
            shape = shape[1:]
        declared = spec.model_dims
        matches = len(declared) == len(shape) and all(g == -1 or g == d for d, g in zip(declared, shape, strict=True))
        if not matches:
            what = "reshape" if spec.reshape is not None else "dims"
            batch = " without the batch dimension" if max_batch_size > 0 else ""
            raise RepositoryError(
                f"{where}: {kind} {spec.name!r} has {what} {_dims(declared)}, but {model_file} has "
                f"{_dims(shape)}{batch} (-1 there accepts any size)"
            )
    if kind == "input":
        missing = [t.name for t in graph if t.name not in {s.name for s in specs}]
        if missing:
            raise RepositoryError(f"{where}: {model_file} has input(s) {', '.join(missing)} that the config lacks")


def _onnx_io(path: Path) -> tuple[list[GraphTensor], list[GraphTensor], list[GraphTensor]]:
    """The graph's inputs, its outputs, and its inputs that have a default (an initializer of the same name,
    which a request may override: onnxruntime's overridable initializers)."""
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as ex:
        raise RepositoryError(f"{path}: not a readable ONNX model: {ex}") from None
    initializers = {i.name for i in model.graph.initializer}

    def describe(value: onnx.ValueInfoProto, role: str) -> GraphTensor:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":  # sklearn-onnx's ZipMap: a sequence of maps
            what = (kind or "untyped value").removesuffix("_type")
            raise RepositoryError(
                f"{path}: {role} {value.name!r} is a {what}, not a tensor: the runtime serves models whose inputs "
                "and outputs are tensors (an sklearn-onnx classifier: convert it with options={'zipmap': False})"
            )
        tensor = value.type.tensor_type
        if tensor.elem_type == onnx.TensorProto.STRING:
            datatype = "BYTES"
        else:
            from runtime.serving.datatypes import WIRE_TO_NUMPY, numpy_to_wire

            try:
                datatype = numpy_to_wire(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
            except (KeyError, TypeError, ValueError):  # bfloat16, float8 (numpy has neither), undefined
                known = tensor.elem_type in onnx.TensorProto.DataType.values()
                name = onnx.TensorProto.DataType.Name(tensor.elem_type) if known else f"number {tensor.elem_type}"
                raise RepositoryError(
                    f"{path}: {role} {value.name!r} is of type {name}, which the runtime does not serve (it serves "
                    f"{', '.join(WIRE_TO_NUMPY)})"
                ) from None
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return GraphTensor(value.name, datatype, shape)

    inputs = [describe(v, "input") for v in model.graph.input if v.name not in initializers]
    outputs = [describe(v, "output") for v in model.graph.output]
    defaulted = [describe(v, "input") for v in model.graph.input if v.name in initializers]
    return inputs, outputs, defaulted


def _select_versions(config: mc.ModelConfig, available: list[int], model_path: Path) -> list[int]:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        wanted = sorted(int(v) for v in policy.specific.versions)
        missing = [v for v in wanted if v not in available]
        if missing:
            raise RepositoryError(
                f"{model_path / 'config.pbtxt'}: version_policy asks for versions {missing}, "
                f"which are not in {model_path}"
            )
        return wanted
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return available[-count:]


def _complete_tensors(
    declared: list[mc.ModelInput] | list[mc.ModelOutput],
    onnx_tensors: list[GraphTensor],
    batched: bool,
    kind: str,
    model_path: Path,
    declarable: list[GraphTensor] | None = None,
) -> list[TensorSpec]:
    """The config's tensors completed from the graph's; ``declarable``: more the config may name (inputs that
    have defaults), which completing leaves out."""
    by_name = {t.name: t for t in onnx_tensors + (declarable or [])}
    config_file = model_path / "config.pbtxt"
    if not declared:
        return [TensorSpec(t.name, t.datatype, t.shape[1:] if batched else t.shape) for t in onnx_tensors]
    specs = []
    for tensor in declared:
        onnx_tensor = by_name.get(tensor.name)
        if onnx_tensor is None:
            known = ", ".join(by_name)
            raise RepositoryError(f"{config_file}: {kind} {tensor.name!r} is not in the ONNX model (it has {known})")
        datatype = config_to_wire(mc.DataType.Name(tensor.data_type))
        if tensor.data_type == mc.TYPE_INVALID:
            datatype = onnx_tensor.datatype
        dims = tuple(int(d) for d in tensor.dims) or (onnx_tensor.shape[1:] if batched else onnx_tensor.shape)
        specs.append(_declared_spec(tensor, datatype, dims, model_path))
    return specs


def _declared_spec(
    tensor: mc.ModelInput | mc.ModelOutput, datatype: str, dims: tuple[int, ...], model_path: Path
) -> TensorSpec:
    """A tensor with its config's ``reshape`` and ``label_filename`` read."""
    reshape = tuple(int(d) for d in tensor.reshape.shape) if tensor.HasField("reshape") else None
    labels = None
    if isinstance(tensor, mc.ModelOutput) and tensor.label_filename:
        label_path = model_path / tensor.label_filename
        if not label_path.is_file():
            raise RepositoryError(f"{model_path / 'config.pbtxt'}: label_filename {label_path} does not exist")
        labels = tuple(read_text(label_path).splitlines())
    optional = isinstance(tensor, mc.ModelInput) and tensor.optional
    return TensorSpec(tensor.name, datatype, dims, reshape, labels, optional)


def load_model(model_path: Path) -> ModelConfig:
    config_file = model_path / "config.pbtxt"
    if config_file.is_file():
        config, explicit_batch = _parse_config(config_file)
    else:
        config, explicit_batch = mc.ModelConfig(), False
    name = model_path.name
    if config.name and config.name != name:
        raise RepositoryError(f"{config_file}: name {config.name!r} does not match the folder name {name!r}")
    platform = platform_name(config.platform, config.backend)
    if platform is None or (config.platform and config.backend and BACKENDS.get(config.platform) != config.backend):
        raise RepositoryError(
            f"{config_file}: platform {config.platform or config.backend!r} is not served by the embedded "
            f"backend (it serves {ONNX_PLATFORM} and {TORCH_PLATFORM}); use --backend triton"
        )
    if not config_file.is_file() and any(model_path.glob("[0-9]*/model.pt")):
        platform = TORCH_PLATFORM  # so that the error says a TorchScript model needs a config
    if not config_file.is_file() and (other := _autocompleted_file(model_path)) is not None:
        backend = TRITON_AUTOCOMPLETED_FILES[other.name]
        raise RepositoryError(
            f"{model_path}: {other.relative_to(model_path)} is a model for Triton's {backend} backend, which the "
            f"embedded backend does not serve (it serves {ONNX_PLATFORM} and {TORCH_PLATFORM}); use --backend triton"
        )
    filename = config.default_model_filename or DEFAULT_FILENAMES[platform]
    available = sorted(int(p.name) for p in model_path.iterdir() if p.is_dir() and _version_name(p.name))
    available = [v for v in available if (model_path / str(v) / filename).is_file()]
    if not available:
        raise RepositoryError(f"{model_path}: no version folder holds {filename} (expected {model_path}/1/{filename})")
    versions = _select_versions(config, available, model_path)

    if platform == TORCH_PLATFORM:
        max_batch_size, inputs, outputs = _torch_tensors(config, model_path)
    else:
        max_batch_size, inputs, outputs = _onnx_tensors(config, explicit_batch, model_path, filename, versions)
    batched = max_batch_size > 0

    dynamic = None
    scheduler = config.WhichOneof("scheduling_choice")
    if scheduler == "dynamic_batching":
        db = config.dynamic_batching
        if db.priority_levels and not 1 <= db.default_priority_level <= db.priority_levels:
            raise RepositoryError(
                f"{config_file}: default_priority_level must be in 1..priority_levels ({db.priority_levels}), "
                f"got {db.default_priority_level}"
            )
        dynamic = dynamic_batching_of(db)
        if batched and any(s > max_batch_size for s in dynamic.preferred_batch_sizes):
            raise RepositoryError(f"{config_file}: preferred_batch_size must not exceed max_batch_size")
    elif scheduler is None and max_batch_size > 1 and platform == ONNX_PLATFORM:
        # Triton's auto-complete (ONNX only) turns the dynamic batcher on for batching models without a scheduler.
        dynamic = DynamicBatching()
        config.dynamic_batching.SetInParent()
    elif scheduler is not None:
        raise RepositoryError(f"{config_file}: {scheduler} is not supported by the embedded backend")
    instance_count = sum(max(g.count, 1) for g in config.instance_group) or 1

    _fill_proto(config, name, platform, max_batch_size, inputs, outputs, instance_count)
    result = ModelConfig(
        name=name,
        path=model_path,
        max_batch_size=max_batch_size,
        inputs=inputs,
        outputs=outputs,
        versions=[str(v) for v in versions],
        dynamic_batching=dynamic if batched else None,
        instance_count=instance_count,
        model_filename=filename,
        proto=config,
    )
    from runtime.serving.warmup import check_warmup  # (it reads ModelConfig from here)

    check_warmup(result)
    if platform == TORCH_PLATFORM:
        from runtime.serving.platforms.torchscript import check_model

        for version in result.versions:
            check_model(result, version)
    return result


def _onnx_tensors(
    config: mc.ModelConfig, explicit_batch: bool, model_path: Path, filename: str, versions: list[int]
) -> tuple[int, list[TensorSpec], list[TensorSpec]]:
    """max_batch_size, inputs and outputs: the config completed from the latest ONNX graph, checked against
    every version's graph."""
    config_file = model_path / "config.pbtxt"
    onnx_inputs, onnx_outputs, defaulted = _onnx_io(model_path / str(versions[-1]) / filename)
    batchable = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in onnx_inputs + onnx_outputs)
    max_batch_size = config.max_batch_size if explicit_batch else (DEFAULT_MAX_BATCH_SIZE if batchable else 0)
    if max_batch_size < 0:
        raise RepositoryError(f"{config_file}: max_batch_size must be >= 0, got {max_batch_size}")
    if max_batch_size > 0 and not batchable and not config.input:
        fixed = [t.name for t in onnx_inputs + onnx_outputs if not t.shape or t.shape[0] != -1]
        raise RepositoryError(
            f"{config_file}: max_batch_size {max_batch_size} needs a dynamic first dimension, "
            f"but {', '.join(fixed)} have a fixed one; set max_batch_size: 0"
        )
    batched = max_batch_size > 0
    # A config may also declare inputs that have defaults in the graph (an auto-completed one leaves them out).
    inputs = _complete_tensors(list(config.input), onnx_inputs, batched, "input", model_path, defaulted)
    outputs = _complete_tensors(list(config.output), onnx_outputs, batched, "output", model_path)
    for version in versions:
        model_file = model_path / str(version) / filename
        graph_in, graph_out, graph_defaulted = (
            (onnx_inputs, onnx_outputs, defaulted) if version == versions[-1] else _onnx_io(model_file)
        )
        check_against_graph(config_file, model_file, "input", inputs, graph_in, max_batch_size, graph_defaulted)
        check_against_graph(config_file, model_file, "output", outputs, graph_out, max_batch_size)
        with_default = {t.name for t in graph_defaulted}
        for spec in inputs:
            if spec.optional and spec.name not in with_default:
                # onnxruntime would fail every request that leaves it out ("Missing Input").
                raise RepositoryError(
                    f"{config_file}: input {spec.name!r} is optional, but {model_file} has no default for it (an "
                    "initializer of that name): a request without it cannot run; remove optional: true"
                )
    return max_batch_size, inputs, outputs


def _torch_tensors(config: mc.ModelConfig, model_path: Path) -> tuple[int, list[TensorSpec], list[TensorSpec]]:
    """max_batch_size, inputs and outputs as config.pbtxt declares them: TorchScript records no types or shapes."""
    config_file = model_path / "config.pbtxt"
    if not config_file.is_file():
        raise RepositoryError(
            f"{model_path}: a TorchScript model needs a config.pbtxt (Triton cannot complete one from model.pt): "
            f'write {config_file} with platform: "pytorch_libtorch", max_batch_size, and every input and output '
            "with name, data_type and dims"
        )
    if config.max_batch_size < 0:
        raise RepositoryError(f"{config_file}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if not config.input or not config.output:
        missing = "input" if not config.input else "output"
        raise RepositoryError(
            f"{config_file}: a TorchScript model needs every {missing} listed with name, data_type and dims "
            "(TorchScript files do not record them)"
        )
    declared = [*config.input, *config.output]
    if optional := [t.name for t in config.input if t.optional]:
        raise RepositoryError(
            f"{config_file}: input {optional[0]!r} is optional, which a TorchScript model cannot be (its forward() "
            "takes every input, in order); remove optional: true"
        )
    for tensor in declared:
        if tensor.data_type == mc.TYPE_INVALID or not tensor.dims:
            raise RepositoryError(f"{config_file}: {tensor.name!r} needs data_type and dims (model.pt has neither)")
    specs = [
        _declared_spec(t, config_to_wire(mc.DataType.Name(t.data_type)), tuple(int(d) for d in t.dims), model_path)
        for t in declared
    ]
    return int(config.max_batch_size), specs[: len(config.input)], specs[len(config.input) :]


def _fill_proto(
    config: mc.ModelConfig,
    name: str,
    platform: str,
    max_batch_size: int,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    instance_count: int,
) -> None:
    config.name = name
    config.platform = platform
    config.backend = BACKENDS[platform]
    config.max_batch_size = max_batch_size
    if not config.input:
        for spec in inputs:
            config.input.add(name=spec.name, data_type=mc.DataType.Value(wire_to_config(spec.datatype)), dims=spec.dims)
    if not config.output:
        for spec in outputs:
            config.output.add(
                name=spec.name, data_type=mc.DataType.Value(wire_to_config(spec.datatype)), dims=spec.dims
            )
    for tensor in list(config.input) + list(config.output):
        if tensor.data_type == mc.TYPE_INVALID:
            spec = next(s for s in inputs + outputs if s.name == tensor.name)
            tensor.data_type = mc.DataType.Value(wire_to_config(spec.datatype))
        if not tensor.dims:
            spec = next(s for s in inputs + outputs if s.name == tensor.name)
            tensor.dims.extend(spec.dims)
    if not config.instance_group:
        # As Triton: without instance groups, a GPU when the platform can use one here, else the CPU.
        config.instance_group.add(count=instance_count, kind=mc.ModelInstanceGroup.KIND_AUTO)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1


def model_config_from_proto(proto: mc.ModelConfig, versions: list[str], path: Path | None = None) -> ModelConfig:
    """A ModelConfig from a complete Triton config (as a Triton server returns it)."""

    def spec(tensor: mc.ModelInput | mc.ModelOutput) -> TensorSpec:
        reshape = tuple(int(d) for d in tensor.reshape.shape) if tensor.HasField("reshape") else None
        labels = None
        if path is not None and isinstance(tensor, mc.ModelOutput) and tensor.label_filename:
            label_path = path / tensor.label_filename
            if label_path.is_file():
                labels = tuple(read_text(label_path).splitlines())
        return TensorSpec(
            tensor.name,
            config_to_wire(mc.DataType.Name(tensor.data_type)),
            tuple(int(d) for d in tensor.dims),
            reshape,
            labels,
            isinstance(tensor, mc.ModelInput) and tensor.optional,
        )

    dynamic = None
    if proto.WhichOneof("scheduling_choice") == "dynamic_batching":
        dynamic = dynamic_batching_of(proto.dynamic_batching)
    return ModelConfig(
        name=proto.name,
        path=path or Path(proto.name),
        max_batch_size=int(proto.max_batch_size),
        inputs=[spec(t) for t in proto.input],
        outputs=[spec(t) for t in proto.output],
        versions=versions,
        dynamic_batching=dynamic,
        instance_count=sum(max(g.count, 1) for g in proto.instance_group) or 1,
        model_filename=proto.default_model_filename
        or DEFAULT_FILENAMES.get(platform_name(proto.platform, proto.backend) or ONNX_PLATFORM, "model.onnx"),
        proto=proto,
    )


def model_paths(model_dir: str | os.PathLike[str]) -> list[Path]:
    """The repository's model folders, by name; a RepositoryError when there are none."""
    root = repository_root(model_dir)
    if not root.is_dir():
        raise RepositoryError(f"Model repository {root} does not exist or is not a folder")
    paths = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not paths:
        raise RepositoryError(f"Model repository {root} holds no models (expected {root}/<model>/1/model.onnx)")
    return paths


def load_repository(model_dir: str | os.PathLike[str]) -> list[ModelConfig]:
    return [load_model(p) for p in model_paths(model_dir)]


def triton_backend_of(model_path: Path) -> str | None:
    """The Triton backend a model folder needs when the embedded backend does not serve it (python, tensorrt,
    ...); None for ONNX and TorchScript models. Its config.pbtxt is parsed (a RepositoryError names the line)."""
    config_file = model_path / "config.pbtxt"
    if not config_file.is_file():
        # Triton completes the config of an ONNX model (TorchScript ones need one: load_model says so), and of
        # TensorRT and TensorFlow models.
        other = _autocompleted_file(model_path)
        return None if other is None else TRITON_AUTOCOMPLETED_FILES[other.name]
    config, _ = _parse_config(config_file)
    if platform_name(config.platform, config.backend) is not None:
        return None
    if config.name and config.name != model_path.name:
        raise RepositoryError(f"{config_file}: name {config.name!r} does not match the folder name {model_path.name!r}")
    return str(config.backend or TRITON_PLATFORM_BACKENDS.get(config.platform, config.platform))


def triton_model_names(model_dir: str | os.PathLike[str]) -> list[str]:
    """The models a Triton server serves from the repository, checked before it starts: ONNX and TorchScript
    models as strictly as :func:`load_repository` checks them; the others' (python, TensorRT) config.pbtxt
    parsed, the rest is Triton's to check."""
    names = []
    for path in model_paths(model_dir):
        if triton_backend_of(path) is None:
            load_model(path)
        names.append(path.name)
    return names
