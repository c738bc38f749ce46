"""Hypothesis fuzzing of /score and /v2: no answer of 500 or above, no internal detail, v2 errors as {"error"}.

In CI: FUZZ_EXAMPLES (default 1000) cases per in-process test, two tests, and a smaller pass against a
real Gunicorn server. schemathesis on the swagger of an inference-schema script runs on the runtime
that tests/test_azureml_conformance.py serves it with. The 20,000-case run (docs/reliability.md):

    FUZZ_EXAMPLES=10000 pytest tests/test_fuzz.py -k in_process -p no:cacheprovider
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.settings import Settings
from tests.conftest import SCRIPTS
from tests.support.fuzz import EXAMPLES, Req, check, score_requests, v2_requests
from tests.support.inprocess import InProcess
from tests.support.servers import ServerProcess, start_module_server

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TENSORS = SCRIPTS / "hostile" / "tensors.py"


@pytest.fixture(scope="module")
def app(model_repo: Path) -> Iterator[InProcess]:
    settings = Settings(entry_script=str(TENSORS), model_dir=str(model_repo), max_body_bytes=1 << 20)
    with InProcess(settings) as served:
        yield served


@FUZZ
@given(req=score_requests())
def test_score_in_process(app: InProcess, req: Req) -> None:
    check(req, app.request(req.method, req.path, headers=req.headers, content=req.body))


@FUZZ
@given(req=v2_requests())
def test_v2_in_process(app: InProcess, req: Req) -> None:
    check(req, app.request(req.method, req.path, headers=req.headers, content=req.body))


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real Gunicorn server: the same script and models behind httptools and the limited protocol."""
    args = ["--entry", str(TENSORS), "--model-dir", str(model_repo), "--max-body-bytes", str(1 << 20)]
    process = start_module_server(tmp_path_factory, *args)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as session:
        yield session


REAL = settings(FUZZ, max_examples=max(50, EXAMPLES // 10))


@pytest.mark.slow
@REAL
@given(req=st.one_of(score_requests(), v2_requests()))
def test_real_server(client: httpx.Client, req: Req) -> None:
    check(req, req.send(client))


@pytest.mark.slow
def test_real_server_logged_no_internal_error(server: ServerProcess, client: httpx.Client) -> None:
    """After the fuzzing above: no worker died, and nothing the runtime did was logged as unhandled."""
    assert client.get("/").status_code == 200
    log = server.log()
    assert "Unhandled error" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert "Worker exiting" not in log and "WORKER TIMEOUT" not in log, log[-3000:]
