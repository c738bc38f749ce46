"""Triton's model configuration messages (``mc.ModelConfig``, ...) without gRPC.

tritonclient ships them as ``tritonclient.grpc.model_config_pb2``, and importing that runs
``tritonclient/grpc/__init__.py``, which imports grpc and the service stubs: about 70 ms of CPU and
20 MiB in every server process (benchmarks/engine-analysis.md), none of which the config parser needs.
The generated module needs protobuf only, so it is loaded from its file under its own name; a later
``import tritonclient.grpc`` finds it in ``sys.modules`` and uses this module (the descriptor pool
holds model_config.proto once).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

NAME = "tritonclient.grpc.model_config_pb2"


def load() -> ModuleType:
    """The module ``tritonclient.grpc.model_config_pb2``, loaded without its package's ``__init__``."""
    loaded = sys.modules.get(NAME)
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("tritonclient")  # finds the folder; imports nothing
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {NAME!r}", name=NAME)
    path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {NAME!r} at {path}", name=NAME)
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[NAME]
        raise
    return module


if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as mc
else:
    mc = load()

__all__ = ["NAME", "load", "mc"]
