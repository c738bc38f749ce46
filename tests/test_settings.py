"""Settings.from_env: every variable, its default, bad values; and the table in docs/settings.md."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

from runtime.cli import build_parser, build_settings
from runtime.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_defaults_match_an_empty_environment() -> None:
    from_env = Settings.from_env({})
    default = Settings()
    for field in dataclasses.fields(Settings):
        if field.name in ("app_root", "server_version_header"):
            continue
        assert getattr(from_env, field.name) == getattr(default, field.name), field.name
    assert from_env.server_version_header.startswith("runtime/")


def test_every_variable_is_read() -> None:
    env = {
        "AZUREML_ENTRY_SCRIPT": "score.py",
        "AML_APP_ROOT": "/app",
        "AZUREML_SOURCE_DIRECTORY": "src",
        "AZUREML_MODEL_DIR": "/models",
        "RUNTIME_HOST": "0.0.0.0",
        "SERVER_PORT": "8080",
        "WORKER_COUNT": "3",
        "RUNTIME_CONCURRENCY": "4",
        "RUNTIME_HOOK_THREADS": "3",
        "SCORING_TIMEOUT_MS": "5000",
        "RUNTIME_MAX_BODY_BYTES": "1000",
        "AML_CORS_ORIGINS": "https://a.example; https://b.example",
        "AZUREML_LOG_LEVEL": "debug",
        "RUNTIME_PLUGINS": "a,b.py",
        "RUNTIME_BACKEND": "triton",
        "TRITON_URL": "triton:8000",
        "RUNTIME_TRITON_MODE": "managed",
        "TRITONSERVER_PATH": "/bin/tritonserver",
        "RUNTIME_TRITONSERVER_ARGS": "--log-verbose=1 --trace-config 'opentelemetry,resource=a b'",
        "RUNTIME_TRITON_HOME": "/triton",
        "RUNTIME_TRITON_WAIT_S": "2.5",
        "HTTP_X_MS_SERVER_VERSION": "custom/1",
        "WORKER_TIMEOUT": "0",
        "RUNTIME_GRACEFUL_TIMEOUT": "5",
        "RUNTIME_ACCESS_LOG": "false",
        "RUNTIME_ORT_ARENA": "0",
        "RUNTIME_ORT_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
        "RUNTIME_TRACE_HOOKS": "1",
    }
    s = Settings.from_env(env)
    assert (s.entry_script, s.app_root, s.model_dir, s.host, s.port) == ("score.py", "/app", "/models", "0.0.0.0", 8080)
    assert s.source_dir == "src" and s.import_paths == ("/app", "/app/src")
    assert (s.workers, s.concurrency, s.hook_threads, s.timeout_ms, s.max_body_bytes) == (3, 4, 3, 5000, 1000)
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert s.log_level == "DEBUG" and s.plugins == ("a", "b.py")
    assert (s.backend, s.triton_url, s.triton_mode, s.tritonserver_path) == (
        "triton",
        "triton:8000",
        "managed",
        "/bin/tritonserver",
    )
    assert s.tritonserver_args == ("--log-verbose=1", "--trace-config", "opentelemetry,resource=a b")
    assert (s.triton_home, s.triton_wait_s, s.server_version_header) == ("/triton", 2.5, "custom/1")
    assert (s.worker_timeout, s.graceful_timeout, s.access_log) == (0, 5, False)
    assert (s.ort_arena, s.ort_providers, s.trace_hooks) == (
        False,
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
        True,
    )
    assert s.entry_path == "/app/score.py"
    assert Settings.from_env({"SERVER_VERSION_LOG_RESPONSE_ENABLED": "false"}).server_version_header == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_COUNT": "two"}, "WORKER_COUNT must be an integer, got 'two'"),
        ({"SCORING_TIMEOUT_MS": "0"}, "SCORING_TIMEOUT_MS must be at least 1, got 0"),
        ({"WORKER_TIMEOUT": "-1"}, "WORKER_TIMEOUT must be at least 0, got -1"),
        ({"RUNTIME_TRITON_WAIT_S": "soon"}, "RUNTIME_TRITON_WAIT_S must be a number, got 'soon'"),
        ({"RUNTIME_TRITON_WAIT_S": "-2"}, "RUNTIME_TRITON_WAIT_S must be at least 0.0, got -2.0"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message


def test_every_variable_is_in_the_docs_table() -> None:
    names = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', inspect.getsource(Settings.from_env)))
    table = DOC.read_text()
    assert len(names) >= 25
    assert sorted(n for n in names if f"| `{n}` |" not in table) == []


def test_cli_flags_win_and_paths_become_absolute(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--entry", "score.py", "--model-dir", "models", "--timeout-ms", "7", "--plugin", "p.py"]
    )
    s = build_settings(args, {"SCORING_TIMEOUT_MS": "1", "RUNTIME_PLUGINS": "first", "AML_APP_ROOT": str(tmp_path)})
    assert s.timeout_ms == 7
    # A relative --entry is relative to the working directory, as before (the variable: to AML_APP_ROOT).
    assert s.entry_script == os.path.abspath("score.py") and s.entry_path == s.entry_script
    assert s.model_dir is not None and Path(s.model_dir).is_absolute()
    assert s.plugins[0] == "first" and Path(s.plugins[1]).is_absolute()


def test_tritonserver_args_that_no_shell_could_split_name_the_setting() -> None:
    with pytest.raises(ValueError, match=r"RUNTIME_TRITONSERVER_ARGS is split as a shell .*: No closing quotation"):
        Settings.from_env({"RUNTIME_TRITONSERVER_ARGS": '--log-verbose "1'})


def test_triton_client_is_the_worker_unless_the_engine_is_asked_for() -> None:
    from tests.support.cli import settings_of

    assert Settings.from_env({}).triton_client == "worker"
    assert Settings.from_env({"RUNTIME_TRITON_CLIENT": "Engine"}).triton_client == "engine"
    assert settings_of("serve", "--backend", "triton", "--triton-client", "worker").triton_client == "worker"
    with pytest.raises(ValueError, match="RUNTIME_TRITON_CLIENT must be one of worker, engine"):
        Settings.from_env({"RUNTIME_TRITON_CLIENT": "both"})


def test_scoring_timeout_is_read_as_azmlinfsrv_reads_it(tmp_path: Path) -> None:
    """azmlinfsrv (pydantic) takes a whole number written with a zero fraction, in the variable or as a JSON number
    in its settings file; the runtime refused to start."""
    assert Settings.from_env({"SCORING_TIMEOUT_MS": " 60000.0 "}).timeout_ms == 60000
    config = tmp_path / "config.json"
    config.write_text('{"SCORING_TIMEOUT_MS": 5000.0}')
    assert Settings.from_env({"AZUREML_CONFIG_FILE": str(config)}).timeout_ms == 5000
    for refused in ("5000.5", "5e3", "5000."):
        with pytest.raises(ValueError, match=f"SCORING_TIMEOUT_MS must be an integer, got '{refused}'"):
            Settings.from_env({"SCORING_TIMEOUT_MS": refused})


def test_backend_and_triton_mode_are_choices_and_empty_variables_are_defaults() -> None:
    """RUNTIME_BACKEND=tritn and RUNTIME_TRITON_MODE=Managed were taken as given: the server started on neither
    what was asked nor a word said; RUNTIME_HOST= (empty) bound every interface, not 127.0.0.1."""
    with pytest.raises(ValueError, match=r"^RUNTIME_BACKEND must be one of onnxruntime, triton, got 'tritn'$"):
        Settings.from_env({"RUNTIME_BACKEND": "tritn"})
    with pytest.raises(ValueError, match=r"^RUNTIME_TRITON_MODE must be one of remote, managed, got 'local'$"):
        Settings.from_env({"RUNTIME_TRITON_MODE": "local"})
    s = Settings.from_env({"RUNTIME_BACKEND": "Triton", "RUNTIME_TRITON_MODE": "Managed"})
    assert (s.backend, s.triton_mode) == ("triton", "managed")
    s = Settings.from_env({"RUNTIME_HOST": "", "TRITON_URL": " ", "RUNTIME_BACKEND": ""})
    assert (s.host, s.triton_url, s.backend) == ("127.0.0.1", "localhost:8000", "onnxruntime")


@pytest.mark.parametrize(("name", "field"), [("SERVER_PORT", "port"), ("HEALTH_PORT", "health_port")])
def test_a_port_beyond_65535_names_the_variable(name: str, field: str) -> None:
    """SERVER_PORT=70000 passed every check, and Gunicorn's bind() stopped the server with a traceback."""
    with pytest.raises(ValueError, match=f"^{name} must be a port from 1 to 65535, got 70000$"):
        Settings.from_env({name: "70000"})
    assert getattr(Settings.from_env({name: "65535"}), field) == 65535
