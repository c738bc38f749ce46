"""The engine's supervisor (the master's side): a restarted engine's metrics are its own, not its predecessor's too."""

from __future__ import annotations

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
