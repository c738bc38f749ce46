"""The reference examples end to end, on the embedded backend (apps in this process; a real server where a
worker's memory and /metrics are read). On a real Triton: tests/test_triton_backend.py."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import hostile
from tests.support.engine import worker_pids
from tests.support.examples import (
    BIDAF,
    CONTEXT,
    DENSENET,
    QUERY,
    check_batched,
    check_bidaf,
    check_densenet,
    jpeg,
    load,
    make_repository,
    serve,
)
from tests.support.inprocess import AppPool
from tests.support.rss import PeakRss
from tests.support.servers import REPO, ServerProcess, start_module_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def examples_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("examples"))


@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_end_to_end(apps: AppPool, examples_repo: Path, script: str) -> None:
    check_densenet(serve(apps, DENSENET / script, examples_repo), examples_repo, script)


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"this is not an image", "image/jpeg", "not an image Pillow can read"),
        (jpeg()[:400], "image/jpeg", "truncated or corrupt"),
        (b"", "image/png", "the request body is empty"),
        (b'{"picture": "x"}', "application/json", 'missing field "image"'),
        (b'{"image": "%%%"}', "application/json", "not valid base64"),
    ],
)
@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_bad_images_get_400(
    apps: AppPool, examples_repo: Path, script: str, body: bytes, content_type: str, message: str
) -> None:
    server = serve(apps, DENSENET / script, examples_repo)
    response = server.post("/score", content=body, headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert server.post("/score", content=jpeg(), headers={"Content-Type": "image/jpeg"}).status_code == 200


@pytest.fixture(scope="module")
def densenet_server(examples_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server with the hook-style DenseNet on the embedded backend: a worker process whose RSS is
    measured, and /metrics of its own. Shared by the image bombs and the batching test, which only read."""
    server = start_module_server(
        tmp_path_factory, "--entry", str(DENSENET / "score_densenet.py"), "--model-dir", str(examples_repo)
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("name", "image", "status"),
    [
        ("85-byte 1 x 4000 PNG", lambda: hostile.png(1, 4000), 200),
        ("14000 x 14000 PNG", lambda: hostile.png(14000, 14000), 413),
        ("5000 x 3000 PNG, over the 12 MP cap", lambda: hostile.png(5000, 3000), 413),
        ("4000 x 3000 JPEG, at the cap", lambda: jpeg(4000, 3000), 200),
    ],
)
def test_densenet_image_bombs(
    densenet_server: ServerProcess, name: str, image: Callable[[], bytes], status: int
) -> None:
    """Image dimensions are checked from the header before decoding; no image costs the worker 100 MiB."""
    server = densenet_server
    body = image()
    assert server.proc is not None
    (worker,) = worker_pids(server.proc.pid)  # the model engine is a child too
    with PeakRss(worker) as peak:
        response = httpx.post(server.url + "/score", content=body, headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == status, response.text
    if status == 413:
        assert "pixels" in response.json()["message"]
    print(f"RSS growth {peak.growth_mib:.1f} MiB")  # the figure in docs/reliability.md (pytest -s)
    assert peak.growth_mib < 100, f"{name}: the worker grew by {peak.growth_mib:.0f} MiB"


def test_densenet_concurrent_requests_are_batched(densenet_server: ServerProcess) -> None:
    """Batches show in the real server's /metrics, which is its own (apps in this process share one registry;
    on Triton: tests/test_triton_backend.py). Other tests' requests to the shared server add batches of one
    at most, so a batch larger than one is this test's."""
    with httpx.Client(base_url=densenet_server.url) as client:
        check_batched(client)


def test_densenet_model_zoo_configuration_with_fixed_batch(apps: AppPool, tmp_path: Path) -> None:
    """The zoo file has batch fixed at 1: make_model keeps a model in place and writes max_batch_size 0."""
    make = load(DENSENET / "make_model.py")
    make.main(["--out", str(tmp_path), "--small", "--fixed-batch"])
    make.main(["--out", str(tmp_path)])  # a model is in place: only the config is (re)written
    assert "max_batch_size: 0" in (tmp_path / "triton/densenet_onnx/config.pbtxt").read_text()
    server = serve(apps, DENSENET / "score_densenet.py", tmp_path)
    response = server.post("/score", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200 and len(response.json()) == 5


@pytest.fixture(scope="module")
def torchscript_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small DenseNet as TorchScript: the same weights as the small ONNX file in examples_repo."""
    root = tmp_path_factory.mktemp("densenet_torchscript")
    load(DENSENET / "make_model.py").main(["--out", str(root), "--small", "--format", "torchscript"])
    return root


@pytest.mark.parametrize("script", ["score_densenet.py", "score_densenet_aml.py"])
def test_densenet_from_torchscript_equals_in_process_and_onnx(
    apps: AppPool, examples_repo: Path, torchscript_repo: Path, script: str
) -> None:
    server = serve(apps, DENSENET / script, torchscript_repo)
    image = jpeg(seed=5)
    response = server.post("/score", content=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    top = response.json()

    import onnxruntime as ort
    import torch

    imagenet = load(DENSENET / "imagenet.py")
    x = imagenet.preprocess(imagenet.load_image(image))
    module = torch.jit.load(str(torchscript_repo / "triton/densenet_onnx/1/model.pt"))
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    want = imagenet.top5(logits, (DENSENET / "densenet_labels.txt").read_text().splitlines())
    assert [e["label"] for e in top] == [e["label"] for e in want]
    np.testing.assert_allclose([e["score"] for e in top], [e["score"] for e in want], rtol=1e-5)
    # make_model builds both formats from one set of weights: they compute the same function.
    session = ort.InferenceSession(str(examples_repo / "triton/densenet_onnx/1/model.onnx"))
    np.testing.assert_allclose(session.run(None, {"data_0": x})[0], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("script", ["score_bidaf.py", "score_bidaf_aml.py"])
def test_bidaf_end_to_end(apps: AppPool, examples_repo: Path, script: str) -> None:
    check_bidaf(serve(apps, BIDAF / script, examples_repo), examples_repo)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"context": "", "query": QUERY}, 'field "context" has no tokens'),
        ({"context": CONTEXT}, 'missing field "query"'),
        ({"context": CONTEXT, "query": "   "}, 'field "query" has no tokens'),
        ({"context": 3, "query": QUERY}, 'field "context" must be a string'),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
@pytest.mark.parametrize("script", ["score_bidaf.py", "score_bidaf_aml.py"])
def test_bidaf_bad_input_gets_400(apps: AppPool, examples_repo: Path, script: str, body: object, message: str) -> None:
    server = serve(apps, BIDAF / script, examples_repo)
    response = server.post("/score", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_make_model_writes_beside_itself(tmp_path: Path) -> None:
    """``make_model.py`` writes into models/ next to the script, wherever it is run from."""
    copy = tmp_path / "densenet_onnx"
    shutil.copytree(DENSENET, copy, ignore=shutil.ignore_patterns("models", "__pycache__"))
    load(copy / "make_model.py").main(["--small"])
    assert (copy / "models/triton/densenet_onnx/1/model.onnx").is_file()
    assert (copy / "models/triton/densenet_onnx/densenet_labels.txt").is_file()


class _NoModel(http.server.BaseHTTPRequestHandler):
    """What `runtime serve --entry score_densenet.py` answers without --model-dir."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"message": "No backend serves a model named 'densenet_onnx'."}).encode()
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("example", ["densenet_onnx", "bidaf_onnx"])
def test_client_says_to_add_the_model_dir_when_score_py_has_no_model(example: str) -> None:
    """The clients' hint for a 404 was "started with --model-dir only", wrong when score.py lacks its model."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = REPO / "examples" / example / "client.py"
        result = subprocess.run([sys.executable, str(client), "--url", url], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"; score.py was served without its model: add --model-dir examples/{example}/models to runtime serve"
    ), result.stderr
    assert "--model-dir only" not in result.stderr


def test_ctrl_c_stops_the_serving_example_without_a_warning(densenet_server: ServerProcess) -> None:
    """A terminal's Ctrl-C signals the whole process group: the master, its workers and the model engine. The
    worker drains, then ends by that SIGINT, which Gunicorn logged as a warning ("Worker (pid:N) was sent
    SIGINT!") on every Ctrl-C. Last in the module: it stops the module's server."""
    assert httpx.get(densenet_server.url + "/").status_code == 200
    assert densenet_server.proc is not None
    os.killpg(densenet_server.proc.pid, signal.SIGINT)
    assert densenet_server.wait_exit(30) == 130
    log = densenet_server.log()
    assert "runtime serve: interrupted" in log and "was sent SIGINT" in log
    assert not [line for line in log.splitlines() if " W " in line or " E " in line], log[-3000:]
