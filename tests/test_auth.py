"""Optional authentication: API key or Bearer token on /score, /v2 and /metrics; health routes open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.http.middleware.auth import is_protected, matches
from runtime.settings import Settings
from tests.conftest import SCRIPTS
from tests.support.cli import settings_of
from tests.support.inprocess import InProcess, served
from tests.support.servers import free_port

KEYS = ("primary-key", "secondary-key")
# Not an inference-schema script: inference-schema registers run() by module name once per process,
# which would make every later in-process app of the test session look decorated.
ENTRY = str(SCRIPTS / "core" / "echo.py")


@pytest.fixture(scope="module")
def app(model_repo: Path) -> Iterator[InProcess]:
    with InProcess(Settings(entry_script=ENTRY, model_dir=str(model_repo), auth_keys=KEYS)) as served:
        yield served


SCORE = {"content": b'{"a": 1}', "headers": {"Content-Type": "application/json"}}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer primary-key"}, 200),
        ({"Authorization": "bearer secondary-key"}, 200),
        ({"x-api-key": "secondary-key"}, 200),
        ({"x-api-key": "primary-ke"}, 401),
        ({"Authorization": "Basic cHJpbWFyeS1rZXk="}, 401),
    ],
)
def test_score_needs_a_key(app: InProcess, headers: dict[str, str], status: int) -> None:
    response = app.request("POST", "/score", content=SCORE["content"], headers={**SCORE["headers"], **headers})
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert "key" in response.json()["message"]
        assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "open_status"),
    [
        ("GET", "/", 200),
        ("GET", "/v2/health/live", 200),
        ("GET", "/v2/health/ready", 200),
        ("GET", "/swagger.json", 200),
    ],
)
def test_health_routes_stay_open(app: InProcess, method: str, path: str, open_status: int) -> None:
    assert app.request(method, path).status_code == open_status


@pytest.mark.parametrize("path", ["/v2", "/v2/models/linear", "/v2/models/linear/config", "/metrics"])
def test_v2_and_metrics_need_a_key(app: InProcess, path: str) -> None:
    refused = app.request("GET", path)
    assert refused.status_code == 401
    if path.startswith("/v2"):
        assert set(refused.json()) == {"error"}
    assert app.request("GET", path, headers={"Authorization": "Bearer primary-key"}).status_code == 200


def test_v2_infer_with_a_key(app: InProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    assert app.request("POST", "/v2/models/linear/infer", json=body).status_code == 401
    ok = app.request("POST", "/v2/models/linear/infer", json=body, headers={"x-api-key": "primary-key"})
    assert ok.status_code == 200, ok.text


def test_swagger_declares_bearer_only_when_enforced(app: InProcess, model_repo: Path) -> None:
    secured_v2 = app.request("GET", "/swagger.json").json()
    assert "Bearer" in secured_v2["securityDefinitions"]
    assert secured_v2["paths"]["/score"]["post"]["security"] == [{"Bearer": []}]
    secured_v3 = app.request("GET", "/swagger.json?version=3").json()
    assert secured_v3["security"] == [{"Bearer": []}] and "Bearer" in secured_v3["components"]["securitySchemes"]
    with InProcess(Settings(entry_script=ENTRY)) as open_app:
        for version in ("2", "3"):
            text = open_app.request("GET", f"/swagger.json?version={version}").text
            assert "Bearer" not in text and "security" not in text, text


def test_helpers() -> None:
    assert is_protected("/score") and is_protected("/v2") and is_protected("/v2/models/m/infer")
    assert is_protected("/metrics")
    assert not is_protected("/") and not is_protected("/v2/health/ready") and not is_protected("/scoreboard")
    keys = tuple(k.encode() for k in KEYS)
    assert matches("primary-key", keys) and matches("secondary-key", keys)
    assert not matches("", keys) and not matches("primary-key ", keys) and not matches("é", keys)


def test_key_file_with_the_command_line(tmp_path: Path) -> None:
    """``runtime serve --auth-key-file``: the command's own parsing, the app it serves on a socket."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated monthly\nold-key\n\nnew-key\n")
    settings = settings_of("serve", "--entry", ENTRY, "--auth-key-file", str(keys), "--port", str(free_port()))
    body = SCORE["content"]
    json_type = {"Content-Type": "application/json"}
    with served(settings) as url:
        assert httpx.post(url + "/score", content=body, headers=json_type).status_code == 401
        for key in ("old-key", "new-key"):
            headers = {**json_type, "Authorization": f"Bearer {key}"}
            assert httpx.post(url + "/score", content=body, headers=headers).status_code == 200
        assert httpx.get(url + "/").status_code == 200


def test_a_key_file_without_keys_stops_the_server(tmp_path: Path) -> None:
    empty = tmp_path / "keys.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        Settings.from_env({"RUNTIME_AUTH_KEY_FILE": str(empty)})
    with pytest.raises(ValueError, match="cannot be read"):
        Settings.from_env({"RUNTIME_AUTH_KEY_FILE": str(tmp_path / "missing")})
    assert Settings.from_env({"RUNTIME_AUTH_KEY": " k "}).auth_keys == ("k",)


def test_cors_preflights_pass_without_a_key_only_with_cors_origins(model_repo: Path) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with InProcess(Settings(entry_script=ENTRY, auth_keys=KEYS, cors_origins=("https://app.example",))) as app:
        allowed = app.request("OPTIONS", "/score", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert (
            app.request("POST", "/score", content=b"{}", headers={"Origin": "https://app.example"}).status_code == 401
        )
    with InProcess(Settings(entry_script=ENTRY, auth_keys=KEYS)) as app:
        assert app.request("OPTIONS", "/score", headers=preflight).status_code == 401
