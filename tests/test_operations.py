"""Operations: azmlinfsrv's settings file, the separate health port, JSON logs and tracing on a real server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from runtime.azureml.config import find_config_file, with_config_file
from runtime.settings import Settings
from tests.conftest import StartRuntime, script
from tests.support.servers import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_settings_file_fills_what_the_environment_leaves(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps({"SCORING_TIMEOUT_MS": 1234, "SERVICE_NAME": "svc", "AML_CORS_ORIGINS": "x", "NOPE": 1})
    )
    env = {"AZUREML_CONFIG_FILE": str(config), "SERVICE_NAME": "from-env"}
    with caplog.at_level(logging.WARNING):
        settings = Settings.from_env(env)
    assert settings.timeout_ms == 1234
    assert settings.service_name == "from-env"  # the environment wins
    assert settings.cors_origins == ()  # azmlinfsrv reads AML_CORS_ORIGINS from the environment only
    assert settings.config_file == str(config)
    assert "AML_CORS_ORIGINS, NOPE" in caplog.text


def test_settings_file_is_found_beside_the_entry_script(tmp_path: Path) -> None:
    entry = tmp_path / "score.py"
    entry.write_text("")
    (tmp_path / "config.json").write_text('{"AZUREML_LOG_LEVEL": "DEBUG"}')
    env = {"AZUREML_ENTRY_SCRIPT": str(entry), "AML_APP_ROOT": str(tmp_path / "elsewhere")}
    assert find_config_file(env) == str(tmp_path / "config.json")
    assert Settings.from_env(env).log_level == "DEBUG"
    (tmp_path / "config.json").write_text("")  # empty files are skipped, as in azmlinfsrv
    assert find_config_file(env) is None
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        with_config_file(env)


@pytest.mark.slow
def test_config_file_health_port_json_logs_and_console_spans(start_runtime: StartRuntime, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"AZUREML_ENTRY_SCRIPT": script("aml/prints.py"), "SCORING_TIMEOUT_MS": 5000}))
    health_port = free_port()
    server = start_runtime(
        "--config_file",
        str(config),
        "--health_port",
        str(health_port),
        "--log-format",
        "json",
        env={"SEPERATE_HEALTH_ENDPOINT": "true", "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ops-test"},
    )
    # As azmlinfsrv: the health port serves the same app.
    health = f"http://127.0.0.1:{health_port}"
    assert httpx.get(health + "/", timeout=10).text == "Healthy"
    response = httpx.post(
        server.url + "/score",
        content=b"payload",
        headers={"x-request-id": "rid-ops", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json() == {"printed": True, "data": "payload"}
    assert httpx.post(health + "/score", content=b"x", timeout=30).status_code == 200
    server.stop()
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"time"')]
    printed = [line for line in lines if line["message"] == "scoring payload"]
    assert len(printed) == 1, log
    assert printed[0]["request_id"] == "rid-ops"
    assert printed[0]["logger"] == "runtime.print" and printed[0]["level"] == "INFO"
    assert printed[0]["trace_id"] == TRACE_ID
    access = [line for line in lines if line["logger"] == "uvicorn.access" and line["request_id"] == "rid-ops"]
    assert len(access) == 1 and "POST /score" in access[0]["message"]
    # The console exporter writes each span as JSON: the request's spans continue the incoming trace.
    assert log.count(f'"trace_id": "0x{TRACE_ID}"') >= 4, log
    assert '"service.name": "ops-test"' in log
