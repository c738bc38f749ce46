"""Server settings: every environment variable the runtime reads, overridden by CLI flags.

The CLI builds one :class:`Settings` (:func:`Settings.from_env`, then its flags)
and hands the object to Gunicorn, whose workers inherit it when they fork.
docs/settings.md has the table; nothing else in the runtime reads os.environ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
DEFAULT_TIMEOUT_MS = 3600 * 1000  # azmlinfsrv's default SCORING_TIMEOUT_MS
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
DEFAULT_CONCURRENCY = 32
# Requests one worker admits at once (queued ones included); beyond it, 429 with Retry-After.
DEFAULT_MAX_CONCURRENT_REQUESTS = 256
# Request-body bytes one worker holds at once: two bodies at the size limit, not hundreds (parsing costs
# about 2.5 times a body's size on top).
DEFAULT_MAX_BODY_BYTES_IN_FLIGHT = 2 * DEFAULT_MAX_BODY_BYTES
DEFAULT_KEEPALIVE_MAX_AGE_S = 2
DEFAULT_HEALTH_PORT = 5000  # azmlinfsrv's, used with SEPERATE_HEALTH_ENDPOINT=true
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.I)
# Gunicorn's own parser limits (limit_request_fields, limit_request_field_size, limit_request_line),
# which azmlinfsrv answers with; the read timeouts are nginx's defaults.
DEFAULT_MAX_HEADERS = 100
DEFAULT_MAX_HEADER_BYTES = 8190
DEFAULT_MAX_URL_BYTES = 4094
DEFAULT_HEADER_TIMEOUT_S = 60
DEFAULT_BODY_TIMEOUT_S = 60
# A gzip/deflate body may decode to this many times the bytes sent (at least 1 MiB): zeros compress 1000:1.
DEFAULT_MAX_INFLATE_RATIO = 16

N = TypeVar("N", int, float)

# runtime serve hands its Settings to the processes it starts beside Gunicorn's workers (the model engine, and
# its instance processes inherit them), whose command-line flags are not in the environment.
HANDED_DOWN_ENV = "RUNTIME_SETTINGS"


def _number(env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], kind: str, minimum: N) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _optional_int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    """A non-negative integer where 0 means off."""
    raw = env.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be 0 (off) or positive, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    return _number(env, name, default, int, "an integer", minimum)


# pydantic's integers (azmlinfsrv's settings): a whole number may be written with a zero fraction ("5000.0").
_ZERO_FRACTION = re.compile(r"([+-]?\d[\d_]*)\.0+")


def _pydantic_int(raw: str) -> int:
    whole = _ZERO_FRACTION.fullmatch(raw)
    return int(whole.group(1) if whole else raw)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value > 65535:
        raise ValueError(f"{name} must be a port from 1 to 65535, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number", 0.0)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw not in ("0", "false", "no", "off")


BACKENDS = ("onnxruntime", "triton")
TRITON_MODES = ("remote", "managed")
ENGINE_MODES = ("process", "worker")
TRITON_CLIENTS = ("worker", "engine")
INSTANCE_PROCESS_MODES = ("auto", "on", "off")


def _shell_words(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(env.get(name, "")))
    except ValueError as ex:
        raise ValueError(f"{name} is split as a shell splits a command line: {ex}") from None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _auth_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """RUNTIME_AUTH_KEY, and the lines of RUNTIME_AUTH_KEY_FILE (blank lines and # comments skipped)."""
    keys = [env["RUNTIME_AUTH_KEY"].strip()] if env.get("RUNTIME_AUTH_KEY", "").strip() else []
    path = env.get("RUNTIME_AUTH_KEY_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except OSError as ex:
            raise ValueError(f"RUNTIME_AUTH_KEY_FILE {path!r} cannot be read: {ex.strerror}") from None
        if not keys:
            raise ValueError(f"RUNTIME_AUTH_KEY_FILE {path!r} holds no key")
    return tuple(keys)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.replace(";", ",").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    entry_script: str | None = None
    app_root: str = field(default_factory=os.getcwd)
    source_dir: str | None = None  # AZUREML_SOURCE_DIRECTORY: a folder of AML_APP_ROOT that scripts import from
    model_dir: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    # Requests one worker has in flight at once (sync code runs in a pool of this many threads).
    concurrency: int = DEFAULT_CONCURRENCY
    # Threads for sync preprocess/postprocess hooks: CPU-bound Python gains nothing from more threads than
    # cores (the GIL), and loses to contention with the event loop.
    hook_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    service_name: str = "ML service"
    service_version: str = "1.0"
    service_path_prefix: str = ""
    plugins: tuple[str, ...] = ()
    backend: str = "onnxruntime"
    triton_url: str = "localhost:8000"
    triton_mode: str = "remote"
    tritonserver_path: str | None = None
    tritonserver_args: tuple[str, ...] = ()  # more flags for the managed tritonserver (tracing, logging, ...)
    # Which process sends infer to Triton: each worker, or the model engine (batching across workers first).
    triton_client: str = "worker"
    server_version_header: str = ""
    # Overload and faults (docs/reliability.md): admission, recycling, keep-alive fairness.
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS
    max_body_bytes_in_flight: int = DEFAULT_MAX_BODY_BYTES_IN_FLIGHT
    max_requests: int = 0  # recycle a worker after this many requests (0: never), plus up to the jitter
    max_requests_jitter: int = 0
    max_worker_memory_mb: int = 0  # recycle a worker whose RSS exceeds this (0: never)
    keepalive_max_age_s: int = DEFAULT_KEEPALIVE_MAX_AGE_S  # close keep-alive connections older (0: never)
    # Gunicorn: seconds a silent worker lives, seconds a stopping worker gets, the access log.
    worker_timeout: int = 300
    graceful_timeout: int = 30
    access_log: bool = True
    # onnxruntime: the CPU memory arena, and execution providers to prefer when available.
    ort_arena: bool = True
    ort_providers: tuple[str, ...] = ()
    # Triton: how long workers wait for the server and its models; where `runtime triton install` puts it.
    triton_wait_s: float = 120.0
    triton_home: str = field(default_factory=lambda: str(Path.home() / ".cache" / "scoring-runtime" / "triton"))
    # Log every hook call with the implementations it ran.
    trace_hooks: bool = False
    # Not from the environment: a file `runtime serve` names so that only the first ready worker logs the
    # start-up summary (empty: always log).
    summary_marker: str = ""
    # Operations (docs/azureml-contract.md, "Operations").
    log_format: str = "text"  # or "json"
    config_file: str | None = None
    separate_health_endpoint: bool = False
    health_port: int = DEFAULT_HEALTH_PORT
    otel_traces_exporter: tuple[str, ...] = ()
    otel_exporter_otlp_protocol: str = "http/protobuf"
    otel_sdk_disabled: bool = False
    app_insights_enabled: bool = False
    app_insights_key: str | None = None
    app_insights_log_response: bool = True
    model_data_collection: bool = False
    max_header_count: int = DEFAULT_MAX_HEADERS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_url_bytes: int = DEFAULT_MAX_URL_BYTES
    header_timeout_s: int = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: int = DEFAULT_BODY_TIMEOUT_S
    max_inflate_ratio: int = DEFAULT_MAX_INFLATE_RATIO
    # API keys or Bearer tokens accepted on /score, /v2 and /metrics; empty: no authentication.
    auth_keys: tuple[str, ...] = ()
    # TorchScript on a GPU: inputs and outputs staged in pinned host memory.
    torch_pinned: bool = False
    # process: one model engine for the whole server; worker: every worker loads its own models.
    engine: str = "process"
    engine_address: str | None = None  # set by runtime serve for its workers (RUNTIME_ENGINE_ADDRESS)
    engine_arena_mb: int = 64  # each worker's shared-memory arena
    # Which model instances the engine runs in a process of their own: auto (GPU instances), on, off.
    instance_processes: str = "auto"

    def child_environment(self) -> dict[str, str]:
        """This process's environment, with these settings handed down for the child's :meth:`from_env`
        (without the auth keys: only the workers answer requests)."""
        handed = json.dumps(dataclasses.asdict(dataclasses.replace(self, auth_keys=())))
        return {**os.environ, HANDED_DOWN_ENV: handed}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``env``; of this process without it: those handed down to it, else its environment."""
        from runtime import __version__
        from runtime.azureml.config import with_config_file

        if env is None and (handed := os.environ.get(HANDED_DOWN_ENV)):
            # JSON has lists where the fields hold tuples.
            values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(handed).items()}
            return cls(**values)
        env = with_config_file(os.environ if env is None else env)

        version_header = ""
        if env.get("SERVER_VERSION_LOG_RESPONSE_ENABLED", "true").lower() == "true":
            version_header = env.get("HTTP_X_MS_SERVER_VERSION", f"runtime/{__version__}")
        return cls(
            entry_script=env.get("AZUREML_ENTRY_SCRIPT") or None,
            app_root=env.get("AML_APP_ROOT") or os.getcwd(),
            source_dir=env.get("AZUREML_SOURCE_DIRECTORY") or None,
            model_dir=env.get("AZUREML_MODEL_DIR") or None,
            host=env.get("RUNTIME_HOST", "").strip() or DEFAULT_HOST,  # empty: not every interface
            port=_port(env, "SERVER_PORT", DEFAULT_PORT),
            workers=_int(env, "WORKER_COUNT", 1),
            concurrency=_int(env, "RUNTIME_CONCURRENCY", DEFAULT_CONCURRENCY),
            hook_threads=_int(env, "RUNTIME_HOOK_THREADS", os.cpu_count() or 1),
            timeout_ms=_number(env, "SCORING_TIMEOUT_MS", DEFAULT_TIMEOUT_MS, _pydantic_int, "an integer", 1),
            max_body_bytes=_int(env, "RUNTIME_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            cors_origins=_list(env.get("AML_CORS_ORIGINS", "")),
            log_level=env.get("AZUREML_LOG_LEVEL", "INFO").upper(),
            service_name=env.get("SERVICE_NAME", "ML service"),
            service_version=env.get("SERVICE_VERSION", "1.0"),
            service_path_prefix=env.get("SERVICE_PATH_PREFIX", ""),
            plugins=_list(env.get("RUNTIME_PLUGINS", "")),
            backend=_choice(env, "RUNTIME_BACKEND", BACKENDS),
            triton_url=env.get("TRITON_URL", "").strip() or "localhost:8000",
            triton_mode=_choice(env, "RUNTIME_TRITON_MODE", TRITON_MODES),
            tritonserver_path=env.get("TRITONSERVER_PATH") or None,
            tritonserver_args=_shell_words(env, "RUNTIME_TRITONSERVER_ARGS"),
            triton_client=_choice(env, "RUNTIME_TRITON_CLIENT", TRITON_CLIENTS),
            server_version_header=version_header,
            max_concurrent_requests=_int(env, "MAX_CONCURRENT_REQUESTS", DEFAULT_MAX_CONCURRENT_REQUESTS),
            max_body_bytes_in_flight=_int(env, "RUNTIME_MAX_BODY_BYTES_IN_FLIGHT", DEFAULT_MAX_BODY_BYTES_IN_FLIGHT),
            max_requests=_optional_int(env, "RUNTIME_MAX_REQUESTS"),
            max_requests_jitter=_optional_int(env, "RUNTIME_MAX_REQUESTS_JITTER"),
            max_worker_memory_mb=_optional_int(env, "RUNTIME_MAX_WORKER_MEMORY_MB"),
            keepalive_max_age_s=_optional_int(env, "RUNTIME_KEEPALIVE_MAX_AGE_S", DEFAULT_KEEPALIVE_MAX_AGE_S),
            worker_timeout=_int(env, "WORKER_TIMEOUT", 300, minimum=0),
            graceful_timeout=_int(env, "RUNTIME_GRACEFUL_TIMEOUT", 30, minimum=0),
            access_log=_flag(env, "RUNTIME_ACCESS_LOG", True),
            ort_arena=_flag(env, "RUNTIME_ORT_ARENA", True),
            ort_providers=_list(env.get("RUNTIME_ORT_PROVIDERS", "")),
            triton_wait_s=_float(env, "RUNTIME_TRITON_WAIT_S", 120.0),
            triton_home=env.get("RUNTIME_TRITON_HOME") or str(Path.home() / ".cache" / "scoring-runtime" / "triton"),
            trace_hooks=_flag(env, "RUNTIME_TRACE_HOOKS", False),
            log_format=_choice(env, "RUNTIME_LOG_FORMAT", ("text", "json")),
            config_file=env.get("AZUREML_CONFIG_FILE") or None,
            separate_health_endpoint=env.get("SEPERATE_HEALTH_ENDPOINT") == "true",
            health_port=_port(env, "HEALTH_PORT", DEFAULT_HEALTH_PORT),
            otel_traces_exporter=_list(env.get("OTEL_TRACES_EXPORTER", "").lower()),
            otel_exporter_otlp_protocol=(
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ),
            otel_sdk_disabled=env.get("OTEL_SDK_DISABLED", "").lower() == "true",
            # azmlinfsrv: on only for exactly "true" (or a key given by --appinsights_instrumentation_key).
            app_insights_enabled=env.get("AML_APP_INSIGHTS_ENABLED") == "true",
            app_insights_key=env.get("AML_APP_INSIGHTS_KEY") or None,
            app_insights_log_response=env.get("APP_INSIGHTS_LOG_RESPONSE_ENABLED", "true").lower() == "true",
            model_data_collection=env.get("AML_MODEL_DC_STORAGE_ENABLED", "").lower() == "true",
            max_header_count=_int(env, "RUNTIME_MAX_HEADERS", DEFAULT_MAX_HEADERS),
            max_header_bytes=_int(env, "RUNTIME_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES),
            max_url_bytes=_int(env, "RUNTIME_MAX_URL_BYTES", DEFAULT_MAX_URL_BYTES),
            header_timeout_s=_int(env, "RUNTIME_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=_int(env, "RUNTIME_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S),
            max_inflate_ratio=_int(env, "RUNTIME_MAX_INFLATE_RATIO", DEFAULT_MAX_INFLATE_RATIO),
            auth_keys=_auth_keys(env),
            torch_pinned=_flag(env, "RUNTIME_TORCH_PINNED", False),
            engine=_choice(env, "RUNTIME_ENGINE", ENGINE_MODES),
            engine_address=env.get("RUNTIME_ENGINE_ADDRESS") or None,
            engine_arena_mb=_int(env, "RUNTIME_ENGINE_ARENA_MB", 64),
            instance_processes=_choice(env, "RUNTIME_INSTANCE_PROCESSES", INSTANCE_PROCESS_MODES),
        )

    @property
    def app_insights_connection_string(self) -> str | None:
        """Where traces go when Application Insights is on: azmlinfsrv needs a UUID instrumentation key."""
        if self.app_insights_enabled and self.app_insights_key and _UUID.match(self.app_insights_key):
            return f"InstrumentationKey={self.app_insights_key}"
        return None

    @property
    def entry_path(self) -> str | None:
        """The entry script's absolute path (relative paths are resolved against AML_APP_ROOT)."""
        if not self.entry_script:
            return None
        return os.path.abspath(os.path.join(self.app_root, self.entry_script))

    @property
    def import_paths(self) -> tuple[str, ...]:
        """Where entry scripts import from besides their own folder, as in azmlinfsrv: AML_APP_ROOT, and the
        source directory in it."""
        root = os.path.abspath(self.app_root)
        return (root, os.path.join(root, self.source_dir)) if self.source_dir else (root,)
