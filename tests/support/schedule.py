"""The order test modules start in: the longest first, so that a run under pytest-xdist does not end on one.

xdist (``--dist loadfile``) hands each process whole modules in collection order (pyproject turns off its
reordering by test count, which started the two-test, 80-second tests/test_gpu_check.py last). The names
below are the modules that took longest in a full run on the 2-core machine the suite is measured on,
longest first; every other module follows in collection order.
"""

from __future__ import annotations

LONGEST_FIRST = (
    "test_docs.py",
    "test_bench.py",
    "test_instance_processes.py",
    "test_engine.py",
    "test_gpu_check.py",
    "test_triton_engine.py",
    "test_faults.py",
    "test_azureml_conformance.py",
    "test_fuzz.py",
    "test_triton_backend.py",
    "test_instance_units.py",
    "test_scoring.py",
    "test_hostile.py",
    "test_onnxruntime_backend.py",
    "test_pictures.py",
    "test_examples.py",
    "test_plots.py",
    "test_torchscript.py",
)
_RANK = {name: rank for rank, name in enumerate(LONGEST_FIRST)}


def rank(module_name: str) -> int:
    """Where a module (its file name) starts: its place in LONGEST_FIRST, else after all of them."""
    return _RANK.get(module_name, len(LONGEST_FIRST))
