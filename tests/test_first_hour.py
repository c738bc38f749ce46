"""A new user's mistakes, through the CLI: each gets a message naming the problem and an exit code.

Exit codes: 2 for a usage mistake (argparse and settings), 3 for a start-up error (what the server
would have served is wrong: the entry script, the model directory, the port, the repository).
Mistakes refused before serving run ``runtime.cli.main`` in this process (``run``; with the real model
engine where the engine refuses the models), and so do the command lines that serve an app without
the engine (``settings_of``, then the app in this process: ``served``, ``startup_failure``). The
installed script's exit code 3 is checked on a real process in tests/test_azureml_conformance.py; what needs a
started server (signals, a managed Triton) runs one here. The start-up summary and a clean exit are read
from the log of tests/test_scoring.py's flags server, which has the same settings, and Ctrl-C to the master of a
serving managed-Triton server stops tests/test_triton_backend.py's module server.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runtime.settings import Settings
from tests.conftest import StartRuntime, script
from tests.support import models
from tests.support.cli import Result, settings_of
from tests.support.cli import run_cli as run
from tests.support.inprocess import app_client, captured_logs, served, startup_failure
from tests.support.servers import free_port

ECHO = script("core/echo.py")


def densenet_like_repo(root: Path, dims: str) -> Path:
    """The linear test model with a config that declares ``dims`` for its input (the graph has [N, 4])."""
    models.make_linear(root / "triton" / "linear" / "1" / "model.onnx")
    (root / "triton" / "linear" / "config.pbtxt").write_text(
        f'max_batch_size: 8\ninput [{{ name: "x" data_type: TYPE_FP32 dims: {dims} }}]\n'
    )
    return root


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--log-level", "LOUD"], {}, 2, "argument --log-level: invalid log level 'LOUD': choose from DEBUG, INFO"),
        ([], {"AZUREML_LOG_LEVEL": "loud"}, 2, "AZUREML_LOG_LEVEL: invalid log level 'LOUD'"),
        (["--port", "abc"], {}, 2, "argument --port: invalid port 'abc': give a number from 0 to 65535"),
        (["--port", "70000"], {}, 2, "argument --port: invalid port 70000"),
        (["--modle-dir", "x"], {}, 2, "unrecognized arguments: --modle-dir x (did you mean --model-dir?)"),
        (["--wokers", "2"], {}, 2, "(did you mean --workers?)"),
        (
            ["--backend", "tirton"],
            {},
            2,
            "invalid choice: 'tirton' (choose from 'onnxruntime', 'triton') (did you mean",
        ),
    ],
)
def test_usage_mistakes_exit_2_with_the_reason(args: list[str], env: dict[str, str], code: int, message: str) -> None:
    result = run("serve", "--entry", ECHO, *args, env=env)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--triton", "managed"], "--triton managed: only the Triton backend reads it"),
        (["--triton-client", "engine", "--tritonserver", "/opt/t"], "--triton-client engine, --tritonserver /opt/t:"),
    ],
)
def test_triton_flags_on_the_embedded_backend_are_a_usage_mistake(args: list[str], named: str) -> None:
    """Without --backend triton they would be ignored, and the user would believe the server is on Triton."""
    result = run("serve", "--entry", ECHO, *args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "and the backend is onnxruntime; add --backend triton (or set RUNTIME_BACKEND=triton)" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--engine", "worker", "--triton-client", "engine"], {}, "--engine worker and --triton-client engine"),
        (["--triton-client", "engine"], {"RUNTIME_ENGINE": "worker"}, "RUNTIME_ENGINE=worker and --triton-client"),
        (["--engine", "worker"], {"RUNTIME_TRITON_CLIENT": "engine"}, "--engine worker and RUNTIME_TRITON_CLIENT="),
        (["--tritonserver", "/opt/t"], {}, "--tritonserver /opt/t and --triton remote"),
        (["--triton", "managed", "--triton-url", "t:8000"], {}, "--triton-url t:8000 and --triton managed"),
    ],
)
def test_triton_flags_that_contradict_each_other_are_a_usage_mistake(
    args: list[str], env: dict[str, str], named: str
) -> None:
    """One of the two would be ignored without a word: the engine started anyway, the tritonserver or URL unused."""
    result = run("serve", "--entry", ECHO, "--backend", "triton", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert f"runtime serve: {named}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_usage_mistake_is_not_buried_under_every_flag() -> None:
    result = run("serve", "--entry", ECHO, "--workers", "0")
    assert result.returncode == 2
    assert result.stderr == (
        "usage: runtime serve [options] (runtime serve --help lists them)\n"
        "runtime serve: error: argument --workers: must be a positive integer, got 0\n"
    )
    short = run("check")  # a usage of a few lines is still shown
    assert short.stderr.startswith("usage: runtime check [-h] --model-dir MODEL_DIR\n"), short.stderr


def test_misspelled_subcommand_gets_did_you_mean() -> None:
    result = run("serv")
    assert result.returncode == 2
    assert "invalid choice: 'serv'" in result.stderr and "(did you mean serve?)" in result.stderr


@pytest.mark.parametrize(("args", "choices"), [((), "{serve,triton,bench,check}"), (("triton",), "{install}")])
def test_a_missing_subcommand_names_the_choices(args: tuple[str, ...], choices: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.endswith(f"error: the following arguments are required: {choices}\n"), result.stderr


def test_serve_help_names_the_defaults_a_newcomer_asks_about() -> None:
    """How many workers, how long a request may take, which Triton: --help says, as docs/settings.md does."""
    result = run("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    defaults = Settings.from_env({})
    assert f"Gunicorn worker processes (env WORKER_COUNT; {defaults.workers})" in text
    assert f"scoring timeout (env SCORING_TIMEOUT_MS; {defaults.timeout_ms})" in text
    assert f"(env RUNTIME_TRITON_MODE; {defaults.triton_mode})" in text


def test_a_syntax_error_in_the_entry_script_is_found_before_anything_starts(tmp_path: Path) -> None:
    """Not after a managed Triton or the model engine has started and a worker failed to boot."""
    entry = tmp_path / "score.py"
    entry.write_text("def init():\n    pass\n\ndef run(data:\n    return data\n")
    result = run("serve", "--entry", str(entry), "--backend", "triton", "--triton", "managed", "--model-dir", ".")
    assert result.returncode == 3, result.stderr
    assert f'runtime serve: entry script {entry} does not compile:\n  File "{entry}", line 4' in result.stderr
    assert "SyntaxError: '(' was never closed" in result.stderr and "Traceback" not in result.stderr


def test_folder_as_entry_names_the_scripts_inside(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(data): return data\n")
    result = run("serve", "--entry", str(tmp_path))
    assert result.returncode == 3
    assert f"--entry {tmp_path} is a folder, not a script" in result.stderr
    assert "(it holds score.py)" in result.stderr and "does not exist" not in result.stderr


def test_a_misspelt_config_file_is_a_startup_error(tmp_path: Path) -> None:
    """--config-file naming no file was ignored without a word (as azmlinfsrv does): none of its settings applied."""
    (tmp_path / "config.json").write_text('{"SCORING_TIMEOUT_MS": 5000}')
    result = run("serve", "--entry", ECHO, "--config-file", str(tmp_path / "confg.json"))
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"runtime serve: --config-file {tmp_path / 'confg.json'} does not exist\n"


def test_misspelled_model_dir_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    result = run("serve", "--entry", ECHO, "--model-dir", str(tmp_path / "model"))
    assert result.returncode == 3
    assert f"model directory {tmp_path / 'model'} does not exist ({tmp_path} holds: models)" in result.stderr


def test_check_words_a_misspelled_or_file_model_dir_as_serve_does(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "score.py").write_text("def run(data): return data\n")
    missing = run("check", "--model-dir", str(tmp_path / "model"))
    assert missing.returncode == 1
    assert f"error: model directory {tmp_path / 'model'} does not exist ({tmp_path} holds: models)" in missing.stdout
    a_file = run("check", "--model-dir", str(tmp_path / "score.py"))
    assert a_file.returncode == 1
    assert f"error: model directory {tmp_path / 'score.py'} is a file, not a folder" in a_file.stdout


@pytest.mark.parametrize("inner", ["triton/linear", "triton/linear/1"])
def test_a_models_folder_given_as_the_model_dir_names_the_repository(tmp_path: Path, inner: str) -> None:
    """Triton users name the model's folder; the runtime serves a repository (the folder above)."""
    densenet_like_repo(tmp_path, "[4]")
    said = f"{tmp_path / inner} is inside the model repository {tmp_path / 'triton'}: give --model-dir {tmp_path}"
    served = run("serve", "--model-dir", str(tmp_path / inner))
    assert served.returncode == 3 and f"runtime serve: model directory {said}\n" == served.stderr
    checked = run("check", "--model-dir", str(tmp_path / inner))
    assert checked.returncode == 1 and checked.stdout == f"error: {said}\n"
    # With score.py it serves, as Azure ML would (score.py may read the folder itself); the log warns.
    assert settings_of("serve", "--entry", ECHO, "--model-dir", str(tmp_path / inner)).model_dir == str(
        tmp_path / inner
    )


def test_an_azure_ml_version_folder_is_not_taken_for_a_triton_one(tmp_path: Path) -> None:
    models.make_linear(tmp_path / "mymodel" / "3" / "model.onnx")  # AZUREML_MODEL_DIR=.../azureml-models/mymodel/3
    checked = run("check", "--model-dir", str(tmp_path / "mymodel" / "3"))
    assert checked.returncode == 0 and "an Azure ML model folder, not a model repository" in checked.stdout


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("backend/hook_linear.py", "  models:       none, and score.py has no run(): its requests go to a model the"),
        ("core/echo.py", "  models:       none (score.py's init() loads what it needs)"),
    ],
)
def test_summary_warns_a_hook_style_script_served_without_models(entry: str, said: str) -> None:
    """Hook style (no run()) without --model-dir: every /score would be a 404; the summary says why first."""
    with captured_logs() as lines, app_client(entry_script=script(entry)):
        pass
    assert said in "\n".join(lines)


def test_model_dir_with_nothing_to_serve(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"pickle")
    result = run("serve", "--model-dir", str(tmp_path))
    assert result.returncode == 3
    assert f"model directory {tmp_path} holds nothing to serve" in result.stderr
    assert "no --entry score.py" in result.stderr


def test_dims_contradicting_the_graph_fail_serve_and_check(tmp_path: Path) -> None:
    repo = densenet_like_repo(tmp_path, "[5]")
    config = repo / "triton" / "linear" / "config.pbtxt"
    model = repo / "triton" / "linear" / "1" / "model.onnx"
    started = time.monotonic()
    result = run("serve", "--model-dir", str(repo), "--port", str(free_port()))
    assert result.returncode == 3
    assert time.monotonic() - started < 30  # refused before any worker starts, not after a timeout
    expected = f"{config}: input 'x' has dims [5], but {model} has [4] without the batch dimension"
    assert expected in result.stderr
    checked = run("check", "--model-dir", str(repo))
    assert checked.returncode == 1
    assert expected in checked.stdout


def test_check_and_serve_agree_on_an_azure_ml_model_folder(tmp_path: Path) -> None:
    """A folder holding a pickle is score.py's business: check says so (exit 0) and serve serves it."""
    (tmp_path / "model.pkl").write_bytes(b"pickle")
    checked = run("check", "--model-dir", str(tmp_path))
    assert checked.returncode == 0, checked.stdout
    assert "an Azure ML model folder, not a model repository (it holds model.pkl)" in checked.stdout
    # serve: the command's own checks accept it; the app it would serve answers, on a socket in this process.
    settings = settings_of("serve", "--entry", ECHO, "--model-dir", str(tmp_path), "--port", str(free_port()))
    with served(settings) as url:
        assert httpx.post(url + "/score", json={"a": 1}).status_code == 200


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_fails_fast(busy_port: int) -> None:
    started = time.monotonic()
    result = run("serve", "--entry", ECHO, "--port", str(busy_port))
    assert result.returncode == 3
    assert time.monotonic() - started < 5  # Gunicorn alone retries for 5 s, then says "Can't connect"
    assert f"address already in use: 127.0.0.1:{busy_port}" in result.stderr
    assert "choose another --port" in result.stderr


def test_the_health_port_is_checked_as_the_port_is(busy_port: int) -> None:
    """SEPERATE_HEALTH_ENDPOINT=true: a busy HEALTH_PORT, or the port itself, left Gunicorn retrying for 5 s, then
    "Can't connect" (its 5-second retry is what the port's own check avoids)."""
    health = {"SEPERATE_HEALTH_ENDPOINT": "true", "HEALTH_PORT": str(busy_port)}
    result = run("serve", "--entry", ECHO, "--port", str(free_port()), env=health)
    assert result.returncode == 3, result.stderr
    assert f"address already in use: 127.0.0.1:{busy_port}" in result.stderr
    assert "choose another --health-port" in result.stderr
    port = str(free_port())
    result = run("serve", "--entry", ECHO, "--port", port, "--health-port", port, env=health)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"runtime serve: --health-port {port} is the port of --port {port}: choose another\n"


def test_port_in_use_is_found_before_managed_triton_starts(
    busy_port: int, model_repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Starting the managed Triton would fail the test (run_cli); a tritonserver's log would reach fd 1/2 (capfd).
    argv = ["serve", "--model-dir", str(model_repo), "--backend", "triton", "--triton", "managed"]
    run_result = run(*argv, "--port", str(busy_port))
    output = capfd.readouterr()
    result = Result(run_result.returncode, run_result.stdout + output.out, run_result.stderr + output.err)
    assert result.returncode == 3
    assert f"address already in use: 127.0.0.1:{busy_port}" in result.stderr
    assert "tritonserver" not in result.stderr + result.stdout


def test_triton_url_refused_says_so_and_suggests_managed() -> None:
    # The command as typed; its workers' start-up in this process (a StartupError: a real server exits 3,
    # tests/test_azureml_conformance.py). The log is the same.
    closed = free_port()
    argv = ["serve", "--backend", "triton", "--triton-url", f"127.0.0.1:{closed}", "--port", str(free_port())]
    settings = settings_of(*argv, env={"RUNTIME_TRITON_WAIT_S": "2"})
    log = startup_failure(**dataclasses.asdict(settings))
    assert f"Triton Inference Server at 127.0.0.1:{closed}: the server is not ready: connection refused" in log
    assert "; trying again for " in log  # said at once, with how long it will keep trying
    assert " s of 2 s; RUNTIME_TRITON_WAIT_S sets how long)" in log
    assert "use --triton managed" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_ctrl_c_during_a_slow_start_stops_within_2_s(start_runtime: StartRuntime) -> None:
    server = start_runtime("--entry", script("core/slow_init.py"), "--workers", "2", wait=False)
    assert server.proc is not None
    deadline = time.monotonic() + 60
    while "Waiting for application startup" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    started = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    server.wait_exit(30)
    took = time.monotonic() - started
    assert took < 2, f"took {took:.1f} s:\n{server.log()}"
    log = server.log()
    assert "SIGINT during start-up, exiting" in log
    assert "SIGKILL" not in log and "Traceback" not in log
    # The workers got the Ctrl-C too: Gunicorn's "Worker (pid:N) was sent SIGINT!" is no warning then.
    assert not [line for line in log.splitlines() if " W " in line], log


@pytest.mark.slow
@pytest.mark.external
def test_ctrl_c_while_managed_triton_loads(
    start_runtime: StartRuntime, model_repo: Path, tritonserver_binary: Path
) -> None:
    from tests.support.processes import alive, descendants

    server = start_runtime(
        "--model-dir",
        str(model_repo),
        "--backend",
        "triton",
        "--triton",
        "managed",
        "--tritonserver",
        str(tritonserver_binary),
        wait=False,
    )
    assert server.proc is not None
    deadline = time.monotonic() + 60
    while "[tritonserver]" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = descendants(server.proc.pid)
    started = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGINT)
    assert server.wait_exit(30) == 130
    assert time.monotonic() - started < 2
    log = server.log()
    assert "runtime serve: interrupted" in log and "Traceback" not in log
    deadline = time.monotonic() + 10
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(children), "tritonserver outlived the runtime"


@pytest.mark.slow
@pytest.mark.external
def test_sigterm_while_managed_triton_loads_stops_it_and_removes_its_files(
    start_runtime: StartRuntime, model_repo: Path, tritonserver_binary: Path
) -> None:
    """SIGTERM (a supervisor, `docker stop`) before Gunicorn runs: the default action killed the command where it
    stood, said nothing and left the staged repository in /tmp."""
    server = start_runtime(
        "--model-dir", str(model_repo), "--backend", "triton", "--triton", "managed",
        "--tritonserver", str(tritonserver_binary), wait=False,
    )  # fmt: skip
    assert server.proc is not None
    deadline = time.monotonic() + 60
    while "[tritonserver]" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    staged = re.search(r"--model-repository=(\S+)", server.log())
    assert staged, server.log()
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit(30) == 143
    log = server.log()
    assert "runtime serve: terminated (SIGTERM)" in log and "Traceback" not in log
    assert not Path(staged.group(1)).exists(), f"{staged.group(1)} left behind"


def test_summary_names_gpu_instances_and_where_they_run(tmp_path: Path) -> None:
    """A config asking for GPU instances says so, and the backend line says that one engine runs them
    (KIND_GPU runs on onnxruntime's CUDA provider, or the server does not start: tests/test_engine.py)."""
    from types import SimpleNamespace

    from runtime.http.startup import _instances, summary
    from runtime.serving.repository import load_repository

    models.make_linear(tmp_path / "linear" / "1" / "model.onnx")
    (tmp_path / "linear" / "config.pbtxt").write_text(
        "max_batch_size: 4\ninstance_group [{ count: 2 kind: KIND_GPU gpus: [0] }, { count: 1 kind: KIND_CPU }]\n"
    )
    (config,) = load_repository(tmp_path)
    assert _instances(config) == "2 x GPU [0], 1 x CPU"
    pm = SimpleNamespace(
        model_index=lambda: [{"name": "linear", "version": "1"}], model_config=lambda model, version: config
    )
    text = summary(Settings(model_dir=str(tmp_path)), pm, [])  # type: ignore[arg-type]
    assert "instances 2 x GPU [0], 1 x CPU\n" in text + "\n"
    assert "backend:      onnxruntime, in the model engine process (runtime-engine)" in text


def test_model_onnxruntime_cannot_load_is_a_startup_error_without_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    path = tmp_path / "broken" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(helper.make_model(graph), str(path))
    # The command in this process, with its real model engine (a process of its own, which refuses the model).
    result = run("serve", "--model-dir", str(tmp_path), "--port", str(free_port()), engine=True)
    assert result.returncode == 3
    log = result.stderr + capfd.readouterr().err
    assert f"{path}: onnxruntime cannot load it" in log and "NoSuchOperator" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(("handler", "raised"), [("handle_int", KeyboardInterrupt), ("handle_term", SystemExit)])
def test_ctrl_c_that_stops_gunicorns_master_reaches_the_cli_as_a_keyboard_interrupt(
    monkeypatch: pytest.MonkeyPatch, handler: str, raised: type[BaseException]
) -> None:
    """Gunicorn's master exits 0 on SIGINT: the CLI must still see a Ctrl-C, to stop a managed Triton at once
    (not with its 30 s grace) and exit 130. SIGTERM stays a clean exit."""
    from runtime.http import server

    def run(arbiter: server._Arbiter) -> None:  # Arbiter.run with the signal already arrived
        arbiter.pid = os.getpid()
        try:
            getattr(arbiter, handler)()
        except StopIteration:
            arbiter.halt()

    monkeypatch.setattr(server._Arbiter, "run", run)
    with pytest.raises(raised) as caught:
        server.ServerApplication(Settings.from_env({})).run()
    if raised is SystemExit:
        assert caught.value.code == 0


def test_ctrl_c_just_after_managed_triton_is_ready_stops_it_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGINT that lands between Triton's readiness and Gunicorn's signal handlers (a race a real-process test
    that signals a server as soon as it answers hits on a loaded machine) stops Triton without its 30 s grace."""
    from runtime import cli
    from runtime.http import server
    from runtime.serving import tritonserver

    stops: list[float] = []

    class Triton:
        url = "127.0.0.1:1"

        def __init__(self, model_dir: str, binary: Path, extra_args: tuple[str, ...] = ()) -> None:
            pass

        def start(self) -> None:
            pass

        def stop(self, grace_s: float = 30) -> None:
            stops.append(grace_s)

    def interrupted(settings: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tritonserver, "ManagedTriton", Triton)
    monkeypatch.setattr(tritonserver, "find_tritonserver", lambda path, home: tmp_path / "tritonserver")
    monkeypatch.setattr(server, "serve", interrupted)

    settings = dataclasses.replace(Settings.from_env(), model_dir=str(tmp_path), backend="triton")
    with pytest.raises(KeyboardInterrupt):
        cli.serve_with_managed_triton(settings)
    assert stops and stops[0] == 1
