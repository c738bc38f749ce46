"""Reading model repositories: config.pbtxt parsing, auto-completion from the ONNX graph, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runtime.serving.repository import RepositoryError, load_repository, looks_like_repository, repository_root
from tests.support import models


def linear_repo(root: Path, config: str | None = None, name: str = "linear", batch: int | str = "N") -> Path:
    models.make_linear(root / name / "1" / "model.onnx", batch=batch)
    if config is not None:
        (root / name / "config.pbtxt").write_text(config)
    return root


def test_autocomplete_without_config(tmp_path: Path) -> None:
    (config,) = load_repository(linear_repo(tmp_path))
    assert config.max_batch_size == 4  # Triton's default for a dynamic first dimension
    assert [(t.name, t.datatype, t.dims) for t in config.inputs] == [("x", "FP32", (4,))]
    assert [(t.name, t.dims) for t in config.outputs] == [("y", (3,)), ("norm", (1,))]
    assert config.dynamic_batching is not None  # turned on by auto-complete, as in Triton
    assert config.config_json()["input"][0]["dims"] == [4]  # numbers, not protobuf's int64 strings


def test_fixed_batch_dimension_means_no_batching(tmp_path: Path) -> None:
    (config,) = load_repository(linear_repo(tmp_path, batch=1))
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (1, 4)
    assert config.dynamic_batching is None


def test_triton_folder_is_preferred(tmp_path: Path) -> None:
    linear_repo(tmp_path / "triton", name="inside")
    linear_repo(tmp_path, name="outside")
    assert repository_root(tmp_path) == tmp_path / "triton"
    assert [c.name for c in load_repository(tmp_path)] == ["inside"]


def test_config_settings_are_honoured(tmp_path: Path) -> None:
    linear_repo(
        tmp_path,
        """
        name: "linear"
        max_batch_size: 16
        input [{ name: "x" data_type: TYPE_FP32 dims: [2, 2] reshape: { shape: [4] } }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
        instance_group [{ count: 2 kind: KIND_CPU }]
        dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 500 preserve_ordering: true }
        version_policy: { all: {} }
        """,
    )
    models.make_linear(tmp_path / "linear" / "2" / "model.onnx")
    (config,) = load_repository(tmp_path)
    assert config.max_batch_size == 16
    assert config.inputs[0].dims == (2, 2) and config.inputs[0].reshape == (4,)
    assert [t.name for t in config.outputs] == ["y"]
    assert config.instance_count == 2
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_sizes == (4, 8)
    assert config.dynamic_batching.max_queue_delay_us == 500
    assert config.dynamic_batching.preserve_ordering
    assert config.versions == ["1", "2"]


def test_explicit_zero_max_batch_size_disables_batching(tmp_path: Path) -> None:
    (config,) = load_repository(linear_repo(tmp_path, "max_batch_size: 0\n"))
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (-1, 4)


def test_version_policy_latest_and_specific(tmp_path: Path) -> None:
    linear_repo(tmp_path)
    for version in ("2", "10"):
        models.make_linear(tmp_path / "linear" / version / "model.onnx")
    assert load_repository(tmp_path)[0].versions == ["10"]
    (tmp_path / "linear" / "config.pbtxt").write_text("version_policy: { latest: { num_versions: 2 } }")
    assert load_repository(tmp_path)[0].versions == ["2", "10"]
    (tmp_path / "linear" / "config.pbtxt").write_text("version_policy: { specific: { versions: [1] } }")
    assert load_repository(tmp_path)[0].versions == ["1"]


def test_label_file(tmp_path: Path) -> None:
    linear_repo(tmp_path, 'output [{ name: "y" data_type: TYPE_FP32 dims: [3] label_filename: "labels.txt" }]')
    (tmp_path / "linear" / "labels.txt").write_text("cat\ndog\nbird\n")
    assert load_repository(tmp_path)[0].output("y").labels == ("cat", "dog", "bird")  # type: ignore[union-attr]


def warmup(name: str, data_type: str, dims: str, batch: int = 1, data: str = "zero_data: true") -> str:
    """The linear model's config with one warm-up sample of one input."""
    value = f"data_type: {data_type} dims: {dims} {data}"
    sample = f'name: "w" batch_size: {batch} inputs {{ key: "{name}" value {{ {value} }} }}'
    return f"max_batch_size: 4\nmodel_warmup [{{ {sample} }}]"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "max_batch_size: 4\nbogus_field: 1\n",
            'config.pbtxt:2: invalid config.pbtxt: Message type "inference.ModelConfig" has no field named '
            '"bogus_field"',
        ),
        ('input [{ name: "nope" data_type: TYPE_FP32 dims: [4] }]', "input 'nope' is not in the ONNX model (it has x)"),
        (
            'input [{ name: "x" data_type: TYPE_INT32 dims: [4] }]',
            "input 'x' has data_type TYPE_INT32, but ",
        ),
        # Dims are checked as strictly as Triton does: the config's against the graph's, batch dimension apart.
        (
            'max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [5] }]',
            "input 'x' has dims [5], but ",
        ),
        (
            'max_batch_size: 4\noutput [{ name: "y" data_type: TYPE_FP32 dims: [3, 1] }]',
            "output 'y' has dims [3, 1], but ",
        ),
        (
            'max_batch_size: 0\ninput [{ name: "x" data_type: TYPE_FP32 dims: [4] }]',
            "input 'x' has dims [4], but ",
        ),
        (
            'max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [2, 2] reshape: { shape: [5] } }]',
            "input 'x' has reshape [5], but ",
        ),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served by the embedded backend"),
        ('name: "other"', "does not match the folder name 'linear'"),
        (
            'output [{ name: "y" data_type: TYPE_FP32 dims: [3] label_filename: "missing.txt" }]',
            "missing.txt does not exist",
        ),
        ("version_policy: { specific: { versions: [3] } }", "asks for versions [3]"),
        ("max_batch_size: 4\ndynamic_batching { preferred_batch_size: [8] }", "preferred_batch_size must not exceed"),
        # model_warmup fails the load, as Triton's warm-up requests would (it ran them and crashed with a traceback).
        (warmup("nope", "TYPE_FP32", "[4]"), "model_warmup 'w' input 'nope' is not an input of the model (it has x)"),
        (warmup("x", "TYPE_FP32", "[7]"), "model_warmup 'w' input 'x' has dims [7], but the input has dims [4]"),
        (warmup("x", "TYPE_FP32", "[-1]"), "model_warmup 'w' input 'x' has dims [-1]: give every size (no -1)"),
        (
            warmup("x", "TYPE_INT64", "[4]"),
            "model_warmup 'w' input 'x' has data_type TYPE_INT64, but the input is TYPE_FP32",
        ),
        (warmup("x", "TYPE_FP32", "[4]", batch=64), "model_warmup 'w' has batch_size 64, more than max_batch_size 4"),
        (warmup("x", "TYPE_FP32", "[4]", data='input_data_file: "nope"'), "model_warmup 'w' input 'x': cannot read "),
        (
            'max_batch_size: 4\nmodel_warmup [{ name: "w" batch_size: 1 }]',
            "model_warmup 'w' gives no value for input 'x'",
        ),
    ],
)
def test_invalid_repository_names_file_and_cause(tmp_path: Path, config: str, message: str) -> None:
    linear_repo(tmp_path, config)
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path)
    assert message in str(info.value)
    assert str(tmp_path / "linear") in str(info.value)


def test_fixed_batch_with_max_batch_size_is_an_error(tmp_path: Path) -> None:
    linear_repo(tmp_path, "max_batch_size: 8", batch=1)
    with pytest.raises(RepositoryError, match="needs a dynamic first dimension"):
        load_repository(tmp_path)


def test_broken_onnx_file(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        load_repository(tmp_path)


def test_empty_or_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        load_repository(tmp_path / "nowhere")
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError, match=r"no version folder holds model\.onnx"):
        load_repository(tmp_path)


def test_looks_like_repository(tmp_path: Path) -> None:
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "model.pkl").write_bytes(b"")
    assert not looks_like_repository(tmp_path)
    linear_repo(tmp_path / "repo")
    assert looks_like_repository(tmp_path / "repo")
    shutil.copytree(tmp_path / "repo", tmp_path / "azure" / "triton")
    assert looks_like_repository(tmp_path / "azure")


@pytest.mark.parametrize(
    ("config", "declared", "graph"),
    [
        ('max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [5] }]', "[5]", "has [4] without the batch"),
        ('max_batch_size: 0\ninput [{ name: "x" data_type: TYPE_FP32 dims: [4] }]', "[4]", "has [-1, 4] (-1"),
        ('max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [-1] }]', "[-1]", "has [4] without"),
    ],
)
def test_dims_mismatch_names_config_model_tensor_and_both_values(
    tmp_path: Path, config: str, declared: str, graph: str
) -> None:
    linear_repo(tmp_path, config)
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'linear' / 'config.pbtxt'}: input 'x' has dims {declared}, but ")
    assert f"{tmp_path / 'linear' / '1' / 'model.onnx'} {graph}" in message


def test_every_version_is_checked(tmp_path: Path) -> None:
    """Version 1 is an older graph with another input width: loading it would fail on the first request."""
    linear_repo(
        tmp_path, 'max_batch_size: 4\nversion_policy: { all: {} }\ninput [{ name: "x" data_type: TYPE_FP32 dims: [4] }]'
    )
    models.make_linear(tmp_path / "linear" / "2" / "model.onnx")
    assert load_repository(tmp_path)[0].versions == ["1", "2"]
    import onnx

    old = onnx.load(str(tmp_path / "linear" / "1" / "model.onnx"))
    old.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    onnx.save(old, str(tmp_path / "linear" / "1" / "model.onnx"))
    with pytest.raises(RepositoryError, match=r"linear/1/model\.onnx has \[5\] without the batch dimension"):
        load_repository(tmp_path)


@pytest.mark.parametrize("file", ["config.pbtxt", "labels.txt"])
def test_a_file_that_is_not_utf8_is_a_repository_error_naming_it(tmp_path: Path, file: str) -> None:
    config = 'output [{ name: "y" data_type: TYPE_FP32 dims: [3] label_filename: "labels.txt" }]\n'
    linear_repo(tmp_path, config)
    (tmp_path / "linear" / "labels.txt").write_text("a\nb\nc\n")
    (tmp_path / "linear" / file).write_bytes(
        b"# caf\xe9 (Latin-1)\n" + (config.encode() if file == "config.pbtxt" else b"")
    )
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'linear' / file}: not UTF-8 text (byte 0xe9 at offset 5): save it as UTF-8"
    )


def test_a_folder_named_with_a_non_ascii_digit_is_not_a_version(tmp_path: Path) -> None:
    """'²'.isdigit() is True, int('²') a ValueError: the repository failed to load with a traceback."""
    linear_repo(tmp_path)
    (tmp_path / "linear" / "²").mkdir()
    (tmp_path / "linear" / "٣").mkdir()  # int() reads it as 3, a folder that is not there
    (config,) = load_repository(tmp_path)
    assert config.versions == ["1"]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("bfloat16", "input 'x' is of type BFLOAT16, which the runtime does not serve (it serves BOOL, UINT8,"),
        ("sequence", "output 'y' is a sequence, not a tensor: the runtime serves models whose inputs and outputs"),
    ],
)
def test_an_onnx_model_with_a_tensor_the_runtime_cannot_carry_is_a_repository_error(
    tmp_path: Path, kind: str, message: str
) -> None:
    """A bfloat16 input (numpy has no such type) or a sequence output (sklearn-onnx's ZipMap, sequences of maps):
    start-up and runtime check crashed with a ValueError or a KeyError 0."""
    import onnx
    from onnx import TensorProto, helper

    if kind == "bfloat16":
        x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 2])
        y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 2])
        node = helper.make_node("Identity", ["x"], ["y"])
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
        y = helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)
        node = helper.make_node("SequenceConstruct", ["x"], ["y"])
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    graph = helper.make_graph([node], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


SCALED_CONFIG = """max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }, { name: "scale" data_type: TYPE_FP32 dims: [1] optional: true }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
"""


def scaled_repo(root: Path, config: str = SCALED_CONFIG) -> Path:
    models.make_scaled(root / "scaled" / "1" / "model.onnx")
    (root / "scaled" / "config.pbtxt").write_text(config)
    return root


def test_an_optional_input_with_a_default_in_the_graph(tmp_path: Path) -> None:
    from runtime.serving.engine.client import config_from_engine

    (config,) = load_repository(scaled_repo(tmp_path))
    assert [(t.name, t.optional) for t in config.inputs] == [("x", False), ("scale", True)]
    # As the engine describes the model to its workers (their data plane checks requests with it).
    described = {"name": "scaled", "versions": ["1"], "path": str(config.path), "config": config.config_text()}
    assert [(t.name, t.optional) for t in config_from_engine(described).inputs] == [("x", False), ("scale", True)]
    # Completed without a config, the model takes x alone: the default stays the graph's.
    (tmp_path / "scaled" / "config.pbtxt").unlink()
    (completed,) = load_repository(tmp_path)
    assert [t.name for t in completed.inputs] == ["x"]


def test_an_optional_input_without_a_default_is_refused(tmp_path: Path) -> None:
    linear_repo(tmp_path, 'input [{ name: "x" data_type: TYPE_FP32 dims: [4] optional: true }]')
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'linear' / 'config.pbtxt'}: input 'x' is optional, but "
        f"{tmp_path / 'linear' / '1' / 'model.onnx'} has no default for it (an initializer of that name): "
        "a request without it cannot run; remove optional: true"
    )
