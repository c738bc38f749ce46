"""The engine's supervisor (the master's side): a restarted engine's metrics are its own, not its predecessor's too."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from runtime.serving.engine.supervisor import EngineSupervisor

# A stand-in engine: 5 requests pending (as an engine killed under load leaves its queue), then it listens.
FAKE_ENGINE = """
import socket, sys, time
from prometheus_client import Gauge
Gauge("nv_inference_pending_request_count", "pending", multiprocess_mode="livesum").set(5)
listener = socket.socket(socket.AF_UNIX)
listener.bind("\\0" + sys.argv[1][1:])
listener.listen()
time.sleep(600)
"""


class FakeEngine(EngineSupervisor):
    def command(self) -> list[str]:
        return [sys.executable, "-c", FAKE_ENGINE, self.address]


def pending(metrics_dir: Path) -> float | None:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return registry.get_sample_value("nv_inference_pending_request_count")


def test_a_killed_engines_gauges_leave_metrics_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its livesum files stayed: /metrics summed the dead engine's queue with its replacement's, for good."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    engine = FakeEngine("", wait_s=30)
    engine.start()
    try:
        assert engine.proc is not None
        first = engine.proc.pid
        assert pending(tmp_path) == 5
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (engine.restarts and engine.proc.pid != first and engine._listening()):
            assert time.monotonic() < deadline, "the engine was not restarted"
            time.sleep(0.05)
        assert pending(tmp_path) == 5
    finally:
        engine.stop()


# A stand-in engine that reports the Settings it reads as the engine and its instance processes read theirs.
REPORTING_ENGINE = """
import json, socket, sys, time
from runtime.settings import Settings
s = Settings.from_env()
with open(sys.argv[2], "w") as report:
    json.dump([s.timeout_ms, s.app_insights_connection_string, s.service_name, list(s.auth_keys)], report)
listener = socket.socket(socket.AF_UNIX)
listener.bind("\\0" + sys.argv[1][1:])
listener.listen()
time.sleep(600)
"""


def test_the_engine_reads_the_settings_of_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It read the environment only: --timeout-ms (its Triton requests' bound), --config-file and the Application
    Insights key of the command line never reached it. Auth keys are the workers' alone."""
    from runtime import cli

    key = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    config = tmp_path / "settings.json"
    config.write_text('{"SERVICE_NAME": "from-the-file"}')
    report = tmp_path / "report.json"
    argv = ["serve", "--timeout-ms", "5000", "--appinsights-instrumentation-key", key, "--config-file", str(config)]
    settings = cli.build_settings(cli.build_parser().parse_args([*argv, "--auth-key", "secret"]), {})
    reported: list[object] = []
    monkeypatch.setattr(
        EngineSupervisor, "command", lambda self: [sys.executable, "-c", REPORTING_ENGINE, self.address, str(report)]
    )
    monkeypatch.setattr("runtime.http.server.serve", lambda settings: reported.extend(json.loads(report.read_text())))
    monkeypatch.chdir(tmp_path)
    assert cli.serve_with_engine(settings, "127.0.0.1:9") == 0
    assert reported == [5000, f"InstrumentationKey={key}", "from-the-file", []]


def test_a_metrics_folder_of_the_users_forgets_the_gauges_of_a_killed_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set by the user outlives a server: the queue of one that was killed (no child_exit
    for its processes) stayed in nv_inference_pending_request_count of every server after it."""
    import subprocess

    from runtime.http.server import metrics_dir

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    code = FAKE_ENGINE.replace("listener = ", "raise SystemExit\nlistener = ")
    subprocess.run([sys.executable, "-c", code, "@unused"], check=True, timeout=60)
    assert pending(tmp_path) == 5
    with metrics_dir():
        assert pending(tmp_path) is None
