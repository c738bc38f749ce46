"""runtime.dataplane through apps in this process: one path for runtime.infer(), hook-style /score and /v2."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import text_format

import runtime
from runtime import api
from runtime.dataplane import CLASSIFICATION, OUTPUTS, DataPlane
from runtime.errors import BadRequest, NoBackend, UnknownModel, UnsupportedDatatype
from runtime.manager import PluginManager
from runtime.serving.model_config import mc
from runtime.serving.repository import model_config_from_proto
from tests.conftest import script
from tests.support.inprocess import app_client


@pytest.fixture(scope="module")
def models(model_repo: Path) -> Iterator[httpx.Client]:
    with app_client(model_dir=str(model_repo)) as client:
        yield client


def test_runtime_infer_gets_classification_and_chosen_outputs_on_onnxruntime(models: httpx.Client) -> None:
    logits = np.array([[1, 5, 2, 3, 0]], dtype=np.float32)
    outputs = runtime.infer("classifier", {"x": logits}, parameters={CLASSIFICATION: {"probs": 2}})
    assert [v.decode().split(":", 1)[1] for v in outputs["probs"].ravel()] == ["1:b", "3:d"]
    only_norm = runtime.infer("linear", {"x": np.ones((1, 4))}, parameters={OUTPUTS: ["norm"]})
    assert list(only_norm) == ["norm"] and only_norm["norm"].shape == (1, 1)


def test_one_set_of_messages_for_every_caller(models: httpx.Client) -> None:
    with pytest.raises(BadRequest) as raised:
        runtime.infer("linear", {"x": np.ones((1, 4))}, parameters={OUTPUTS: ["nope"]})
    assert raised.value.message == "unexpected inference output 'nope' for model 'linear'"
    v2 = models.post(
        "/v2/models/linear/infer",
        json={
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "nope"}],
        },
    )
    assert v2.status_code == 400 and v2.json() == {"error": raised.value.message}
    with pytest.raises(BadRequest) as raised:
        runtime.infer("linear", {"x": np.array([["a"] * 4])})
    assert raised.value.message == "unexpected datatype TYPE_BYTES for inference input 'x', expecting TYPE_FP32"
    with pytest.raises(NoBackend):
        runtime.infer("nope", {"x": np.ones((1, 4))})
    with pytest.raises(UnknownModel) as missing:
        runtime.infer("linear", {"x": np.ones((1, 4))}, version="7")
    assert missing.value.message == "Request for unknown model: 'linear' version 7 is not found"


def test_infer_async_on_another_event_loop_runs_on_the_apps(models: httpx.Client) -> None:
    # A sync run() that fans out with asyncio.run(asyncio.gather(runtime.infer_async(...), ...)).
    inputs = [{"x": np.full((1, 4), i, np.float32)} for i in range(3)]

    async def fan_out() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(runtime.infer_async("linear", x) for x in inputs))

    outputs = asyncio.run(asyncio.wait_for(fan_out(), 30))
    assert [o["y"].tolist() for o in outputs] == [runtime.infer("linear", x)["y"].tolist() for x in inputs]


def test_infer_that_times_out_cancels_its_call() -> None:
    started, cancelled = threading.Event(), threading.Event()

    class SlowPlane:
        async def infer(self, *args: object) -> dict[str, np.ndarray]:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return {}

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def bind() -> api.Binding:
        return api.bind(asyncio.get_running_loop(), SlowPlane())  # type: ignore[arg-type]

    binding = asyncio.run_coroutine_threadsafe(bind(), loop).result()
    try:
        call = functools.partial(runtime.infer, "m", {"x": np.ones(1)}, timeout=0.2)
        with pytest.raises(concurrent.futures.TimeoutError):
            contextvars.copy_context().run(lambda: (api.use(binding), call())[1])
        assert started.is_set() and cancelled.wait(10)  # the backend's work stops with the caller's wait
    finally:
        api.unbind(binding)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_v2_classification_on_onnxruntime(models: httpx.Client) -> None:
    body = {
        "inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 5, 2, 3, 0]}],
        "outputs": [{"name": "probs", "parameters": {"classification": 2}}],
    }
    response = models.post("/v2/models/classifier/infer", json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["datatype"] == "BYTES" and [v.split(":", 1)[1] for v in output["data"]] == ["1:b", "3:d"]


def test_two_apps_in_one_process_each_reach_their_own_models(model_repo: Path, tmp_path: Path) -> None:
    double = tmp_path / "score_double.py"
    double.write_text(
        textwrap.dedent("""
        import json
        import numpy as np
        import runtime

        def init():
            pass

        def run(data):
            return {"y": runtime.infer("double", {"x": np.asarray(json.loads(data)["x"])})["y"].tolist()}
    """)
    )
    with (
        app_client(entry_script=script("backend/aml_linear.py"), model_dir=str(model_repo)) as linear,
        app_client(entry_script=str(double), plugins=(script("core/double_plugin.py"),)) as doubled,
    ):
        for _ in range(2):
            assert doubled.post("/score", json={"x": [1.5]}).json() == {"y": [3.0]}
            response = linear.post("/score", json={"x": [1, 2, 3, 4]})
            assert response.status_code == 200, response.text
            assert len(response.json()["y"]) == 3


def test_a_model_with_a_datatype_numpy_lacks_is_a_501_naming_the_tensor() -> None:
    """Triton serves BF16; numpy has no such type, so the runtime refuses those requests by name, not with a 500."""
    text = """name: "bf" max_batch_size: 0
        input [{name: "x" data_type: TYPE_FP32 dims: [2]}] output [{name: "y" data_type: TYPE_BF16 dims: [2]}]"""
    config = model_config_from_proto(text_format.Parse(text, mc.ModelConfig()), ["1"], Path("/nowhere/bf"))
    plane = DataPlane(PluginManager())  # its backends are never reached
    with pytest.raises(UnsupportedDatatype) as raised:
        asyncio.run(plane.run(config, None, {"x": np.zeros(2, np.float32)}))
    assert raised.value.status_code == 501
    assert raised.value.message.startswith("model 'bf' output 'y' has datatype BF16, which this runtime cannot carry")
