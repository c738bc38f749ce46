"""What the Triton paths make of a model repository: models only Triton serves (the python backend, TensorRT)
pass the pre-flight checks and are staged for a managed Triton as they are; ONNX models are checked as strictly
as for the embedded backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import StartupError
from runtime.preflight import check_model_dir
from runtime.serving.repository import RepositoryError, triton_model_names
from runtime.serving.tritonserver import stage_repository
from tests.support import models

ECHO_CONFIG = """backend: "python"
max_batch_size: 4
input [{ name: "x" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]
"""
ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
            for r in requests
        ]
"""


def python_model(root: Path, name: str = "echo", config: str = ECHO_CONFIG) -> Path:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    (root / name / "1" / "model.py").write_text(ECHO_MODEL)
    return root


def mixed_repository(root: Path) -> Path:
    """An ONNX model and a python-backend model that echoes x as y."""
    models.make_linear(root / "linear" / "1" / "model.onnx")
    return python_model(root)


def test_models_only_triton_serves_pass_the_checks_for_the_triton_backend(tmp_path: Path) -> None:
    repo = mixed_repository(tmp_path)
    check_model_dir(str(repo), False, "triton")  # was: "platform 'python' is not served ...; use --backend triton"
    assert triton_model_names(repo) == ["echo", "linear"]
    with pytest.raises(RepositoryError, match="platform 'python' is not served by the embedded backend"):
        check_model_dir(str(repo), False, "onnxruntime")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ECHO_CONFIG + "bogus: 1\n", "echo/config.pbtxt:5: invalid config.pbtxt"),
        ('name: "other"\n' + ECHO_CONFIG, "name 'other' does not match the folder name 'echo'"),
    ],
)
def test_a_broken_config_of_a_model_only_triton_serves_is_still_refused(
    tmp_path: Path, config: str, message: str
) -> None:
    python_model(tmp_path, config=config)
    with pytest.raises(RepositoryError, match=message):
        check_model_dir(str(tmp_path), False, "triton")


def test_onnx_models_are_checked_as_strictly_for_triton(tmp_path: Path) -> None:
    mixed_repository(tmp_path)
    (tmp_path / "linear" / "config.pbtxt").write_text('input [{ name: "nope" data_type: TYPE_FP32 dims: [4] }]')
    with pytest.raises(RepositoryError, match="input 'nope' is not in the ONNX model"):
        check_model_dir(str(tmp_path), False, "triton")


def test_a_triton_without_onnxruntime_gets_onnx_models_converted_and_the_others_as_they_are(tmp_path: Path) -> None:
    stage = stage_repository(str(mixed_repository(tmp_path / "repo")), tmp_path / "stage", {"python"})
    assert sorted(p.name for p in stage.iterdir()) == ["echo", "linear"]
    assert 'backend: "python"' in (stage / "linear" / "config.pbtxt").read_text()  # the generated model.py
    assert (stage / "linear" / "1" / "model.onnx").is_file()
    assert (stage / "echo" / "config.pbtxt").read_text() == ECHO_CONFIG
    assert (stage / "echo" / "1" / "model.py").read_text() == ECHO_MODEL


def test_a_model_whose_backend_the_managed_triton_lacks_is_a_startup_error_naming_both(tmp_path: Path) -> None:
    python_model(tmp_path / "repo", "plan", 'platform: "tensorrt_plan"\nmax_batch_size: 0\n')
    with pytest.raises(StartupError) as info:
        stage_repository(str(tmp_path / "repo"), tmp_path / "stage", {"python"})
    assert str(info.value) == (
        "model 'plan' needs Triton's tensorrt backend, which the managed tritonserver lacks (it has: python); "
        "give --tritonserver a Triton that has it, or run one and give its address with --triton-url"
    )


def test_tensorrt_and_tensorflow_models_without_a_config_are_tritons_to_complete(tmp_path: Path) -> None:
    """Triton completes the config of a TensorRT plan or a TensorFlow SavedModel itself: such a folder was refused
    as an ONNX model with no model.onnx ("no version folder holds model.onnx")."""
    repo = mixed_repository(tmp_path / "repo")
    (repo / "detector" / "1").mkdir(parents=True)
    (repo / "detector" / "1" / "model.plan").write_bytes(b"engine")
    (repo / "saved" / "2" / "model.savedmodel" / "variables").mkdir(parents=True)
    check_model_dir(str(repo), False, "triton")
    assert triton_model_names(repo) == ["detector", "echo", "linear", "saved"]
    stage = stage_repository(str(repo), tmp_path / "stage", {"python", "tensorrt", "tensorflow"})
    assert (stage / "detector").resolve() == (repo / "detector").resolve()  # linked as it is, for Triton
    assert (stage / "saved" / "2" / "model.savedmodel").is_dir()
    with pytest.raises(StartupError, match="model 'detector' needs Triton's tensorrt backend"):
        stage_repository(str(repo), tmp_path / "stage2", {"python"})
    # The embedded backend says what the file is and where it is served.
    only_plan = tmp_path / "plan_only"
    (only_plan / "detector" / "1").mkdir(parents=True)
    (only_plan / "detector" / "1" / "model.plan").write_bytes(b"engine")
    with pytest.raises(RepositoryError) as info:
        check_model_dir(str(only_plan), True, "onnxruntime")
    assert str(info.value) == (
        f"{only_plan / 'detector'}: 1/model.plan is a model for Triton's tensorrt backend, which the embedded "
        "backend does not serve (it serves onnxruntime_onnx and pytorch_libtorch); use --backend triton"
    )
