"""TorchScript models (platform pytorch_libtorch): an instance's results equal the module in-process, and
start-up errors. Served through the model engine: tests/test_engine.py (its server loads them)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from runtime.errors import StartupError
from runtime.serving.platforms import Device, platform_for
from runtime.serving.repository import ModelConfig, load_repository
from tests.support.cli import run_cli
from tests.support.servers import ServerProcess, free_port, runtime_argv
from tests.test_onnxruntime_backend import metric

# The models of tests.support.torch_models.write_repository. That module imports torch (2 s of CPU), so test
# modules import it where they use it: pytest-xdist's processes each import every test module to collect.
MODULES = ("t_linear", "t_pair", "t_pair_unbatched", "t_named")


@pytest.fixture(scope="module")
def torch_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support import torch_models

    return torch_models.write_repository(tmp_path_factory.mktemp("torch") / "triton").parent


def sample(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "t_linear":
        return {"INPUT__0": rng.standard_normal((batch, 4)).astype(np.float32)}
    if name == "t_named":
        return {"x": rng.standard_normal((batch, 5)).astype(np.float32)}
    lead = (3,) if name == "t_pair_unbatched" else (batch,)
    return {
        "features": rng.standard_normal((*lead, 2)).astype(np.float32),
        "ids": rng.integers(-1000, 1000, (*lead, 2), dtype=np.int64),
    }


def in_process(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the module computes when called directly."""
    import torch

    from tests.support import torch_models

    with torch.no_grad():
        result = torch_models.build(name)(*(torch.from_numpy(v) for v in inputs.values()))
    if name == "t_linear":
        return {"OUTPUT__0": result.numpy()}
    if name == "t_named":
        return {k: v.numpy() for k, v in result.items()}
    return {"scaled": result[0].numpy(), "next_ids": result[1].numpy()}


def configs(repo: Path) -> dict[str, ModelConfig]:
    return {c.name: c for c in load_repository(repo)}


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("batch", [1, 3])
def test_instance_equals_module_in_process(torch_repo: Path, name: str, batch: int) -> None:
    config = configs(torch_repo)[name]
    assert config.proto.platform == "pytorch_libtorch" and config.proto.backend == "pytorch"
    instance = platform_for(config).load(config, "1", Device("cpu"), 1)
    inputs = sample(name, batch)
    got = instance.run(inputs)
    want = in_process(name, inputs)
    assert list(got) == [t.name for t in config.outputs]
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape
        np.testing.assert_array_equal(got[key], value)
    instance.close()


def served_equals_module_in_process(server: ServerProcess, name: str) -> None:
    """What ``server`` answers for model ``name`` over v2 (tritonclient) equals the module in this process."""
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    inputs = sample(name, 2, seed=1)
    requested = []
    for key, value in inputs.items():
        tensor = triton.InferInput(key, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(value, binary_data=True)
        requested.append(tensor)
    result = client.infer(name, requested)
    for key, value in in_process(name, inputs).items():
        np.testing.assert_array_equal(result.as_numpy(key), value)
    meta = client.get_model_metadata(name)
    assert meta["platform"] == "pytorch_libtorch"
    client.close()


def concurrent_requests_batch_and_each_row_is_right(server: ServerProcess) -> None:
    """48 concurrent t_linear requests to ``server``: every row right, and a batch larger than one in /metrics."""
    rows = np.random.default_rng(3).standard_normal((48, 4)).astype(np.float32)

    def body(row: np.ndarray) -> dict[str, object]:
        return {"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32", "data": row.tolist()}]}

    async def send_all() -> list[httpx.Response]:
        url = f"{server.url}/v2/models/t_linear/infer"
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=48)) as client:
            return await asyncio.gather(*(client.post(url, json=body(r)) for r in rows))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(rows), responses[0].text
    got = np.array([r.json()["outputs"][0]["data"] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got, in_process("t_linear", {"x": rows})["OUTPUT__0"], rtol=1e-6, atol=1e-6)
    text = httpx.get(server.url + "/metrics").text
    count = metric(text, "runtime_batch_size_count", model="t_linear", version="1")
    ones = metric(text, "runtime_batch_size_bucket", model="t_linear", version="1", le="1.0")
    assert count > 0 and ones < count, f"no batch larger than 1: {count=} {ones=}"


# tests/test_instance_processes.py runs this on a server of its own by this name.
test_concurrent_requests_batch_and_each_row_is_right = concurrent_requests_batch_and_each_row_is_right
concurrent_requests_batch_and_each_row_is_right.__test__ = False  # type: ignore[attr-defined]  # a check, not a test here


def test_runtime_check_shows_torchscript_models(torch_repo: Path) -> None:
    result = subprocess.run(
        runtime_argv("check", "--model-dir", str(torch_repo)), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 model(s), all loadable" in result.stdout
    assert "model t_pair  versions 1  max_batch_size 4" in result.stdout
    assert "  input  ids: INT64 [-1, 2]" in result.stdout
    assert "  output OUTPUT__0: FP32 [-1, 3]" in result.stdout
    assert 'platform: "pytorch_libtorch"' in result.stdout and 'backend: "pytorch"' in result.stdout


def linear_model(tmp_path: Path, config: str, content: bytes | None = None) -> Path:
    folder = tmp_path / "m"
    if content is None:
        from tests.support import torch_models

        torch_models.save(torch_models.Linear(), folder / "1" / "model.pt")
    else:
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.pt").write_bytes(content)
    if config:
        (folder / "config.pbtxt").write_text(config)
    return tmp_path


LINEAR = (
    'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
    'input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }]\n'
    'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }]\n'
)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LINEAR.replace('"INPUT__0"', '"data"'), "input 'data' is not an argument of forward()"),
        (LINEAR.replace('"INPUT__0"', '"INPUT__1"'), "input 'INPUT__1' names argument 1 of forward()"),
        (LINEAR.replace('"OUTPUT__0"', '"OUTPUT__2"'), "output 'OUTPUT__2' asks for result 2"),
        (
            LINEAR.replace(
                'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }]',
                'output [{ name: "a" data_type: TYPE_FP32 dims: [3] }, { name: "b" data_type: TYPE_FP32 dims: [3] }]',
            ),
            "returns 1 tensor(s) but the config lists 2 output(s) (a, b)",
        ),
        (LINEAR.replace("TYPE_FP32 dims: [4]", "TYPE_STRING dims: [4]"), "'INPUT__0' has datatype BYTES"),
        (LINEAR.replace(" dims: [4]", ""), "'INPUT__0' needs data_type and dims"),
        ('platform: "pytorch_libtorch"\nmax_batch_size: 8\n', "needs every input listed with name, data_type and dims"),
        ("", "a TorchScript model needs a config.pbtxt"),
        (
            LINEAR.replace("dims: [4] }", "dims: [4] optional: true }"),
            "input 'INPUT__0' is optional, which a TorchScript model cannot be",
        ),
    ],
)
def test_config_mismatch_is_a_startup_error_saying_what_to_fix(tmp_path: Path, config: str, message: str) -> None:
    with pytest.raises(StartupError) as info:
        load_repository(linear_model(tmp_path, config))
    assert message in str(info.value)
    assert str(tmp_path / "m") in str(info.value)


@pytest.mark.parametrize("kind", ["garbage", "state_dict"])
def test_a_file_that_is_not_torchscript_is_a_startup_error(tmp_path: Path, kind: str) -> None:
    if kind == "garbage":
        content = b"not a model"
    else:  # torch.save of weights: a zip, but no TorchScript code in it
        import torch

        from tests.support import torch_models

        path = tmp_path / "weights.pt"
        torch.save(torch_models.Linear().state_dict(), path)
        content = path.read_bytes()
    with pytest.raises(StartupError) as info:
        load_repository(linear_model(tmp_path, LINEAR, content))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm' / '1' / 'model.pt'}: not a TorchScript file PyTorch can load")
    assert "torch.jit.script(model).save('model.pt')" in message


def test_output_datatype_unlike_the_config_fails_the_request_with_the_fix(tmp_path: Path) -> None:
    config = configs(linear_model(tmp_path, LINEAR.replace("TYPE_FP32 dims: [3]", "TYPE_FP64 dims: [3]")))["m"]
    instance = platform_for(config).load(config, "1", Device("cpu"), 1)
    with pytest.raises(TypeError, match=r"output 'OUTPUT__0' of model 'm' is torch.float32, but config.pbtxt declares"):
        instance.run({"INPUT__0": np.ones((1, 4), np.float32)})


def test_missing_torch_is_a_startup_error_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = linear_model(tmp_path, LINEAR)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(StartupError) as info:
        load_repository(repo)
    assert "model 'm' is a TorchScript model (platform pytorch_libtorch) and needs PyTorch" in str(info.value)
    assert str(info.value).endswith(": pip install 'scoring-runtime[torch]'")


def test_serve_without_torch_exits_at_startup_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused before serving: the command in this process, where ``import torch`` raises ImportError.
    repo = linear_model(tmp_path / "models", LINEAR)
    monkeypatch.setitem(sys.modules, "torch", None)
    result = run_cli("serve", "--port", str(free_port()), "--model-dir", str(repo))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "pip install 'scoring-runtime[torch]'" in result.stdout + result.stderr


def test_a_gpu_instance_without_a_usable_gpu_is_a_startup_error_saying_why(tmp_path: Path) -> None:
    import torch

    config = configs(linear_model(tmp_path, LINEAR))["m"]
    platform = platform_for(config)
    assert platform.gpu_count() == 0  # the CPU build CI installs
    with pytest.raises(StartupError) as info:
        platform.load(config, "1", Device("gpu", 0), 1)
    assert str(info.value) == (
        f"model 'm' cannot run on GPU 0: torch {torch.__version__} is a CPU build: install a CUDA build of torch"
    )


@pytest.mark.parametrize(("parameter", "optimized"), [("", True), ("true", False), ("false", True)])
def test_disable_optimized_execution_is_read_as_triton_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parameter: str, optimized: bool
) -> None:
    import torch

    extra = f'parameters: {{ key: "DISABLE_OPTIMIZED_EXECUTION" value: {{ string_value: "{parameter}" }} }}\n'
    config = configs(linear_model(tmp_path, LINEAR + (extra if parameter else "")))["m"]
    instance = platform_for(config).load(config, "1", Device("cpu"), 1)
    seen: list[bool] = []
    real = torch.jit.optimized_execution

    def spy(should_optimize: bool) -> object:
        seen.append(should_optimize)
        return real(should_optimize)

    monkeypatch.setattr(torch.jit, "optimized_execution", spy)
    instance.run({"INPUT__0": np.ones((1, 4), np.float32)})
    assert seen == [optimized]


@pytest.mark.parametrize("processes", ["off", "on"])
def test_a_batch_answered_with_too_few_rows_fails_every_request_instead_of_emptying_some(
    tmp_path: Path, processes: str
) -> None:
    # A batching model must answer a row per input row: split() handed the requests after the first empty outputs.
    import torch

    from runtime.serving.runner import InferenceFailed, load_runners
    from tests.support import torch_models

    class FirstRow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:1] * 2

    config = LINEAR.replace("dims: [3]", "dims: [4]") + "dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
    torch_models.add(tmp_path, "m", FirstRow(), config)

    async def scenario() -> list[BaseException | dict[str, np.ndarray]]:
        (runner,) = load_runners(str(tmp_path), processes=processes)
        runner.start()
        try:
            futures = [runner.submit({"INPUT__0": np.full((1, 4), i, np.float32)}) for i in range(3)]
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await runner.stop()

    results = asyncio.run(scenario())
    assert all(isinstance(r, InferenceFailed) and r.status_code == 500 for r in results), results
    detail = results[0].detail  # type: ignore[union-attr]
    assert "model 'm' returned 1 row(s) of output 'OUTPUT__0' for a batch of 3 rows" in detail


def test_a_model_that_fails_its_warm_up_is_a_startup_error_naming_the_sample_and_the_failure(tmp_path: Path) -> None:
    """As Triton fails the load: the library's exception escaped load_runners, and the engine died of a traceback."""
    import torch

    from runtime.serving.runner import load_runners
    from tests.support import torch_models

    class Refuses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x == 0).all()):
                raise ValueError("all-zero input: no weights were loaded")
            return x

    zeros = '{ key: "INPUT__0" value { data_type: TYPE_FP32 dims: [4] zero_data: true } }'
    warmup = f'model_warmup [{{ name: "zeros" batch_size: 2 inputs {zeros} }}]\n'
    torch_models.add(tmp_path, "m", Refuses(), LINEAR.replace("dims: [3]", "dims: [4]") + warmup)
    with pytest.raises(StartupError) as info:
        load_runners(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm' / 'config.pbtxt'}: model 'm' failed its model_warmup 'zeros': "), (
        message
    )
    assert "all-zero input: no weights were loaded" in message
