"""runtime/serving/model_config.py: Triton's config messages without tritonclient's gRPC package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.servers import REPO

# A server process's imports (the app, the CLI, a repository read), then what they pulled in.
PROBE = """
import sys
from pathlib import Path
from pathlib import Path
import runtime.cli, runtime.http.app, runtime.serving.engine.process
from runtime.serving.repository import load_repository
from tests.support import models
root = Path(sys.argv[1])
models.make_linear(root / "triton" / "linear" / "1" / "model.onnx")
(config,) = load_repository(root)
print(config.proto.name, config.proto.max_batch_size, "grpc" in sys.modules, "tritonclient.grpc" in sys.modules)
import tritonclient.grpc
print(tritonclient.grpc.model_config_pb2 is sys.modules["tritonclient.grpc.model_config_pb2"])
"""


def test_a_server_process_reads_configs_without_importing_grpc(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    read, shared = result.stdout.splitlines()
    assert read.split()[0] == "linear" and read.split()[2:] == ["False", "False"]
    # tritonclient.grpc imported afterwards (the Triton backend's clients) uses the same module: one
    # registration of model_config.proto in protobuf's descriptor pool.
    assert shared == "True"
