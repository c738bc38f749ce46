"""Hypothesis fuzzing of /score and /v2: no answer of 500 or above, no internal detail, v2 errors as {"error"}.

In CI: FUZZ_EXAMPLES (default 1000) cases per in-process test, two tests, and a smaller pass against a
real Gunicorn server, which tests/test_hostile.py runs on its server (the same script and models).
schemathesis on the swagger of an inference-schema script runs on the runtime that
tests/test_azureml_conformance.py serves it with. The 20,000-case run (docs/reliability.md):

    FUZZ_EXAMPLES=10000 pytest tests/test_fuzz.py -k in_process -p no:cacheprovider
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given

from runtime.settings import Settings
from tests.conftest import SCRIPTS
from tests.support.fuzz import FUZZ, Req, check, score_requests, v2_requests
from tests.support.inprocess import InProcess

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
