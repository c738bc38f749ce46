"""``runtime``: the command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from runtime import __version__
from runtime.cliparse import Parser, check_log_level, log_level, non_negative, port, positive
from runtime.errors import STARTUP_EXIT_CODE, StartupError
from runtime.logs import configure
from runtime.settings import BACKENDS, ENGINE_MODES, TRITON_CLIENTS, TRITON_MODES, Settings

# Limits on hostile input (docs/reliability.md), all positive integers.
HOSTILE_INPUT_FLAGS = [
    ("--max-headers", "header fields per request (env RUNTIME_MAX_HEADERS; 100)"),
    ("--max-header-bytes", "one header field's size (env RUNTIME_MAX_HEADER_BYTES; 8190)"),
    ("--max-url-bytes", "request URL length (env RUNTIME_MAX_URL_BYTES; 4094)"),
    ("--header-timeout", "seconds to receive the headers (env RUNTIME_HEADER_TIMEOUT_S; 60)"),
    ("--body-timeout", "seconds the body may send nothing (env RUNTIME_BODY_TIMEOUT_S; 60)"),
    (
        "--max-inflate-ratio",
        "a gzip/deflate body decodes to at most this many times its size (env RUNTIME_MAX_INFLATE_RATIO; 16)",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="runtime", description="Scoring runtime for Azure ML entry scripts.")
    parser.add_argument("--version", action="version", version=f"runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve an entry script at POST /score")
    serve.add_argument("--entry", help="the entry script, score.py (env AZUREML_ENTRY_SCRIPT)")
    serve.add_argument("--model-dir", help="the model directory (env AZUREML_MODEL_DIR)")
    serve.add_argument("--host", help="address to bind (env RUNTIME_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=port, help="port to bind (env SERVER_PORT; default 5001)")
    serve.add_argument("--workers", type=positive, help="Gunicorn worker processes (env WORKER_COUNT; 1)")
    serve.add_argument(
        "--concurrency", type=positive, help="requests in flight per worker (env RUNTIME_CONCURRENCY; 32)"
    )
    serve.add_argument("--timeout-ms", type=positive, help="scoring timeout (env SCORING_TIMEOUT_MS; 3600000)")
    serve.add_argument(
        "--max-body-bytes", type=positive, help="largest request body (env RUNTIME_MAX_BODY_BYTES; 100 MiB)"
    )
    for flag, meaning in HOSTILE_INPUT_FLAGS:
        serve.add_argument(flag, type=positive, help=meaning)
    serve.add_argument(
        "--auth-key", help="require this API key or Bearer token on /score, /v2, /metrics (env RUNTIME_AUTH_KEY)"
    )
    serve.add_argument("--auth-key-file", help="a file of accepted keys, one a line (env RUNTIME_AUTH_KEY_FILE)")
    serve.add_argument(
        "--max-concurrent-requests",
        type=positive,
        help="requests one worker admits at once; more get 429 (env MAX_CONCURRENT_REQUESTS; 256)",
    )
    serve.add_argument(
        "--max-body-bytes-in-flight",
        type=positive,
        help="request-body bytes one worker holds at once; more get 429 "
        "(env RUNTIME_MAX_BODY_BYTES_IN_FLIGHT; 200 MiB)",
    )
    serve.add_argument(
        "--max-requests",
        type=non_negative,
        help="recycle a worker after N requests (env RUNTIME_MAX_REQUESTS; 0: off)",
    )
    serve.add_argument(
        "--max-requests-jitter",
        type=non_negative,
        help="add 0..N to --max-requests per worker (env RUNTIME_MAX_REQUESTS_JITTER; 0)",
    )
    serve.add_argument(
        "--max-worker-memory",
        type=non_negative,
        help="recycle a worker whose RSS exceeds N MiB (env RUNTIME_MAX_WORKER_MEMORY_MB; 0: off)",
    )
    serve.add_argument(
        "--keepalive-max-age",
        type=non_negative,
        help="close keep-alive connections older than N s (env RUNTIME_KEEPALIVE_MAX_AGE_S; 2; 0: never)",
    )
    serve.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="plugin module or .py path (repeatable; env RUNTIME_PLUGINS)",
    )
    serve.add_argument(
        "--log-level", type=log_level, help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env AZUREML_LOG_LEVEL; INFO)"
    )
    serve.add_argument("--backend", choices=BACKENDS, help="where infer runs (env RUNTIME_BACKEND; onnxruntime)")
    serve.add_argument("--triton-url", help="host:port of Triton's HTTP endpoint (env TRITON_URL; localhost:8000)")
    serve.add_argument(
        "--triton",
        choices=TRITON_MODES,
        help="remote: use the Triton at --triton-url; managed: start one for --model-dir "
        "(env RUNTIME_TRITON_MODE; remote)",
    )
    serve.add_argument(
        "--engine",
        choices=ENGINE_MODES,
        help="process: one model engine shared by all workers; worker: a copy of every model per worker "
        "(env RUNTIME_ENGINE; process)",
    )
    serve.add_argument(
        "--triton-client",
        choices=TRITON_CLIENTS,
        help="which process sends infer to Triton: each worker, or the model engine, which batches across "
        "workers first (env RUNTIME_TRITON_CLIENT; worker)",
    )
    serve.add_argument("--tritonserver", help="the tritonserver binary for --triton managed (env TRITONSERVER_PATH)")
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines (env RUNTIME_LOG_FORMAT; text)")
    serve.add_argument(
        "--config-file", "--config_file", help="azmlinfsrv's JSON settings file (env AZUREML_CONFIG_FILE)"
    )
    serve.add_argument(
        "--health-port",
        "--health_port",
        type=port,
        help="with SEPERATE_HEALTH_ENDPOINT=true, a second port serving the app (env HEALTH_PORT; 5000)",
    )
    serve.add_argument(
        "--appinsights-instrumentation-key",
        "--appinsights_instrumentation_key",
        help="enable Application Insights with this key (env AML_APP_INSIGHTS_KEY, AML_APP_INSIGHTS_ENABLED)",
    )

    triton = sub.add_parser("triton", help="the Triton server side")
    triton_sub = triton.add_subparsers(dest="triton_command", required=True)
    install = triton_sub.add_parser("install", help="install tritonserver (nvidia-pytriton) in a venv of its own")
    install.add_argument("--home", help="where (env RUNTIME_TRITON_HOME; ~/.cache/scoring-runtime/triton)")

    from runtime.tools.bench_cli import add_bench_parser

    add_bench_parser(sub)

    check = sub.add_parser("check", help="show how the models of a repository will be served")
    check.add_argument("--model-dir", required=True, help="the model directory (holding triton/ or models)")
    for commands in (sub, triton_sub):
        # What usage shows already; argparse would name the dest ("triton_command") when none is given.
        commands.metavar = "{" + ",".join(commands.choices) + "}"
    return parser


def env_settings(command: str) -> Settings:
    """The environment's settings for a command other than serve: a bad variable is named (exit 2, as serve's)."""
    try:
        return Settings.from_env()
    except ValueError as ex:
        print(f"runtime {command}: {ex}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check(args: argparse.Namespace) -> int:
    from runtime.preflight import check_model_dir_is_a_folder
    from runtime.serving.check import check_repository

    instance_processes = env_settings("check").instance_processes
    try:
        check_model_dir_is_a_folder(args.model_dir)  # the words `runtime serve` has for a misspelt path
    except StartupError as ex:
        print(f"error: {ex}")  # where check_repository reports the repository's errors
        return 1
    return check_repository(args.model_dir, sys.stdout, instance_processes)


# CLI flag -> environment variable: flags override the environment, and workers read the environment.
# CLI flag -> the environment variable it overrides (Settings.from_env reads both, with one set of checks).
FLAG_ENV = {
    "entry": "AZUREML_ENTRY_SCRIPT",
    "model_dir": "AZUREML_MODEL_DIR",
    "host": "RUNTIME_HOST",
    "port": "SERVER_PORT",
    "workers": "WORKER_COUNT",
    "concurrency": "RUNTIME_CONCURRENCY",
    "timeout_ms": "SCORING_TIMEOUT_MS",
    "max_body_bytes": "RUNTIME_MAX_BODY_BYTES",
    "max_headers": "RUNTIME_MAX_HEADERS",
    "max_header_bytes": "RUNTIME_MAX_HEADER_BYTES",
    "max_url_bytes": "RUNTIME_MAX_URL_BYTES",
    "header_timeout": "RUNTIME_HEADER_TIMEOUT_S",
    "body_timeout": "RUNTIME_BODY_TIMEOUT_S",
    "max_inflate_ratio": "RUNTIME_MAX_INFLATE_RATIO",
    "auth_key": "RUNTIME_AUTH_KEY",
    "auth_key_file": "RUNTIME_AUTH_KEY_FILE",
    "log_level": "AZUREML_LOG_LEVEL",
    "backend": "RUNTIME_BACKEND",
    "triton_url": "TRITON_URL",
    "triton": "RUNTIME_TRITON_MODE",
    "tritonserver": "TRITONSERVER_PATH",
    "triton_client": "RUNTIME_TRITON_CLIENT",
    "max_concurrent_requests": "MAX_CONCURRENT_REQUESTS",
    "max_body_bytes_in_flight": "RUNTIME_MAX_BODY_BYTES_IN_FLIGHT",
    "max_requests": "RUNTIME_MAX_REQUESTS",
    "max_requests_jitter": "RUNTIME_MAX_REQUESTS_JITTER",
    "max_worker_memory": "RUNTIME_MAX_WORKER_MEMORY_MB",
    "keepalive_max_age": "RUNTIME_KEEPALIVE_MAX_AGE_S",
    "log_format": "RUNTIME_LOG_FORMAT",
    "config_file": "AZUREML_CONFIG_FILE",
    "health_port": "HEALTH_PORT",
    "appinsights_instrumentation_key": "AML_APP_INSIGHTS_KEY",
    "engine": "RUNTIME_ENGINE",
}


def build_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The one Settings of ``runtime serve``: the environment, then the flags; paths made absolute.

    Built once, here, and handed to Gunicorn: the workers inherit it, and os.environ is not touched.
    """
    values = dict(os.environ if env is None else env)
    for flag, name in FLAG_ENV.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag in ("entry", "model_dir", "config_file", "auth_key_file"):
            value = os.path.abspath(value)
        values[name] = str(value)
    if getattr(args, "appinsights_instrumentation_key", None) is not None:
        values["AML_APP_INSIGHTS_ENABLED"] = "true"  # as azmlinfsrv: a key on the command line enables it
    if args.plugin:
        existing = [p for p in values.get("RUNTIME_PLUGINS", "").split(",") if p]
        given = [os.path.abspath(p) if p.endswith(".py") else p for p in args.plugin]
        values["RUNTIME_PLUGINS"] = ",".join(existing + given)
    settings = Settings.from_env(values)
    # Workers resolve the script and the models the same way, whatever their working directory.
    entry = settings.entry_path
    model_dir = os.path.abspath(settings.model_dir) if settings.model_dir else None
    return dataclasses.replace(settings, entry_script=entry, model_dir=model_dir)


def export_for_scripts(settings: Settings) -> None:
    """The Azure ML variables entry scripts read themselves (init() opens AZUREML_MODEL_DIR)."""
    if settings.model_dir:
        os.environ["AZUREML_MODEL_DIR"] = settings.model_dir
    if settings.entry_script:
        os.environ["AZUREML_ENTRY_SCRIPT"] = settings.entry_script


# Flags that only the Triton backend reads (--triton-url is not one: score.py's own tritonhttpclient uses it).
TRITON_ONLY_FLAGS = ("--triton", "--triton-client", "--tritonserver")


def _dest(flag: str) -> str:
    """argparse's attribute for ``flag`` (``--triton-client``: ``triton_client``)."""
    return flag[2:].replace("-", "_")


def triton_flags_without_triton(args: argparse.Namespace, backend: str) -> str | None:
    """``--triton managed`` on the embedded backend would be ignored: the server would not be on Triton."""
    given = [(flag, getattr(args, _dest(flag), None)) for flag in TRITON_ONLY_FLAGS]
    named = [f"{flag} {value}" for flag, value in given if value is not None]
    if not named or backend == "triton":
        return None
    return (
        f"{', '.join(named)}: only the Triton backend reads {'it' if len(named) == 1 else 'them'}, and the backend "
        f"is {backend}; add --backend triton (or set RUNTIME_BACKEND=triton)"
    )


def _given(args: argparse.Namespace, flag: str, value: str) -> str:
    """How the setting behind ``flag`` came to be ``value``: the flag, its environment variable, or the default."""
    dest = _dest(flag)
    if getattr(args, dest, None) is not None:
        return f"{flag} {value}"
    return f"{FLAG_ENV[dest]}={value}" if os.environ.get(FLAG_ENV[dest]) else f"{flag} {value} (the default)"


def contradicting_triton_flags(args: argparse.Namespace, settings: Settings) -> str | None:
    """Two Triton settings of which one would be ignored without a word (the Triton backend only)."""
    if settings.backend != "triton":
        return None
    if settings.triton_client == "engine" and settings.engine == "worker":
        return (
            f"{_given(args, '--engine', 'worker')} and {_given(args, '--triton-client', 'engine')} contradict each "
            "other: the Triton client in the model engine needs the engine; drop one of them"
        )
    mode = _given(args, "--triton", settings.triton_mode)
    if args.tritonserver is not None and settings.triton_mode == "remote":
        return (
            f"--tritonserver {args.tritonserver} and {mode}: a remote Triton is not started, so the binary would "
            "be ignored; add --triton managed, or drop --tritonserver"
        )
    if args.triton_url is not None and settings.triton_mode == "managed":
        return (
            f"--triton-url {args.triton_url} and {mode}: the managed Triton listens on a port of its own, so the "
            "URL would be ignored; drop --triton-url, or use --triton remote"
        )
    return None


def health_port_clash(args: argparse.Namespace, settings: Settings) -> str | None:
    """SEPERATE_HEALTH_ENDPOINT=true with the health port the port itself: Gunicorn would fail to bind it twice."""
    if not settings.separate_health_endpoint or settings.health_port != settings.port or settings.port == 0:
        return None
    health, port = _given(args, "--health-port", str(settings.health_port)), _given(args, "--port", str(settings.port))
    return f"{health} is the port of {port}: choose another"


class Terminated(KeyboardInterrupt):
    """SIGTERM before Gunicorn takes it over: unwound as Ctrl-C is, so that what was started is stopped."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` until Gunicorn's master installs its own handler: a managed Triton or
    the model engine may be starting, and the default action left their work (a staged repository in /tmp)
    behind, with no word said. The main thread only (signal handlers); the previous handler is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> int:
    with sigterm_unwinds():
        return serve_command(args)


def serve_command(args: argparse.Namespace) -> int:
    from runtime.serving.engine.supervisor import ADDRESS_ENV

    # Only an engine this command starts is the workers' engine (not one inherited from a parent server).
    os.environ.pop(ADDRESS_ENV, None)
    try:
        settings = build_settings(args)
    except ValueError as ex:
        print(f"runtime serve: {ex}", file=sys.stderr)
        return 2
    problem = check_log_level(settings.log_level, "AZUREML_LOG_LEVEL")
    if problem:
        print(f"runtime serve: {problem}", file=sys.stderr)
        return 2
    problem = (
        triton_flags_without_triton(args, settings.backend)
        or contradicting_triton_flags(args, settings)
        or health_port_clash(args, settings)
    )
    if problem:
        print(f"runtime serve: {problem}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    if args.config_file is not None and not os.path.isfile(args.config_file):
        # azmlinfsrv ignores it without a word: none of its settings (an entry script it names) would apply.
        print(f"runtime serve: --config-file {os.path.abspath(args.config_file)} does not exist", file=sys.stderr)
        return STARTUP_EXIT_CODE
    entry = settings.entry_path
    if entry is None and not settings.model_dir and settings.backend != "triton":
        print("runtime serve: give --entry score.py and/or --model-dir DIR", file=sys.stderr)
        return 2
    from runtime.preflight import check_entry, check_model_dir, check_port_free

    try:
        if entry is not None:
            check_entry(entry)
        if settings.model_dir:
            check_model_dir(settings.model_dir, entry is not None, settings.backend)
        check_port_free(settings.host, settings.port)
        if settings.separate_health_endpoint:
            check_port_free(settings.host, settings.health_port, "--health-port")
    except StartupError as ex:
        print(f"runtime serve: {ex}", file=sys.stderr)
        return STARTUP_EXIT_CODE
    export_for_scripts(settings)
    from runtime.http.server import serve

    if settings.backend == "triton" and settings.triton_mode == "managed":
        return serve_with_managed_triton(settings)
    if settings.backend == "triton" and settings.triton_client == "engine":
        return serve_with_engine(settings, settings.triton_url)
    if settings.backend == "onnxruntime" and settings.engine == "process" and settings.model_dir:
        return serve_with_engine(settings)
    serve(settings)
    return 0


def serve_with_engine(settings: Settings, triton_url: str = "") -> int:
    """Start the model engine, then the workers; stop the engine after the workers have drained.

    With ``triton_url`` the engine is that Triton's client (``--triton-client engine``)."""
    from runtime.errors import StartupError
    from runtime.http.server import metrics_dir, serve
    from runtime.serving.engine.supervisor import ADDRESS_ENV, EngineSupervisor
    from runtime.serving.repository import looks_like_repository

    if not triton_url and not (settings.model_dir and looks_like_repository(settings.model_dir)):
        serve(settings)
        return 0
    with metrics_dir():
        engine = EngineSupervisor(
            settings.model_dir or "",
            settings.log_level,
            settings.log_format,
            triton_url=triton_url,
            triton_wait_s=settings.triton_wait_s,
            settings=settings,
        )
        try:
            engine.start()
            os.environ[ADDRESS_ENV] = engine.address  # for Settings built from the environment
            settings = dataclasses.replace(settings, engine_address=engine.address)
        except StartupError as ex:
            print(f"runtime serve: {ex}", file=sys.stderr)
            return STARTUP_EXIT_CODE
        try:
            serve(settings)
        finally:
            engine.stop()
    return 0


def serve_with_managed_triton(settings: Settings) -> int:
    """Start tritonserver for the repository, point the workers at it, stop it when serving ends."""
    from runtime.http.server import serve
    from runtime.serving.tritonserver import ManagedTriton, find_tritonserver

    if not settings.model_dir:
        print("runtime serve: --triton managed needs --model-dir", file=sys.stderr)
        return 2
    try:
        binary = find_tritonserver(settings.tritonserver_path, Path(settings.triton_home))
        triton = ManagedTriton(settings.model_dir, binary, extra_args=settings.tritonserver_args)
    except StartupError as ex:
        print(f"runtime serve: {ex}", file=sys.stderr)
        return STARTUP_EXIT_CODE
    try:
        triton.start()
    except StartupError as ex:
        triton.stop()
        print(f"runtime serve: {ex}", file=sys.stderr)
        return STARTUP_EXIT_CODE
    except KeyboardInterrupt:
        triton.stop(grace_s=1)  # Ctrl-C while it loads: nothing to drain
        raise
    settings = dataclasses.replace(settings, triton_url=triton.url)
    try:
        if settings.triton_client == "engine":
            code = serve_with_engine(settings, triton.url)
            if code:
                return code
        else:
            serve(settings)
    except KeyboardInterrupt:
        # Ctrl-C before Gunicorn's master took SIGINT over: nothing was served, so Triton has nothing to
        # drain, and its graceful stop (up to 30 s with python-backend stubs on a busy machine) is not owed.
        triton.stop(grace_s=1)
        raise
    finally:
        triton.stop()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from runtime.tools.bench_cli import run_bench

    return run_bench(args)


def cmd_triton(args: argparse.Namespace) -> int:
    from runtime.serving.tritonserver import install

    binary = install(Path(args.home or env_settings("triton").triton_home))
    print(binary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"serve": cmd_serve, "check": cmd_check, "triton": cmd_triton, "bench": cmd_bench}
    try:
        code = commands[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt as ex:
        # Ctrl-C is how people stop a server or a benchmark: no traceback (128 + the signal, as shells report it).
        if isinstance(ex, Terminated):
            print(f"runtime {args.command}: terminated (SIGTERM)", file=sys.stderr)
            return 143
        print(f"runtime {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `runtime check ... | head`: the reader has what it wanted. Quiet, as `cat` is (128 + SIGPIPE);
        # stdout goes to /dev/null so that the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
