"""The shape issue 9 asks for, checked: no import circles, hooks called from one module, settings own the
environment, compatibility modules load lazily, no top-level ``plugins`` package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from tests.support.imports import circles, graph, modules
from tests.support.servers import REPO


def test_no_import_circles_not_even_type_only() -> None:
    edges = graph()
    # The package itself is the public facade (runtime.infer, runtime.__version__): Python runs it before any
    # submodule anyway, so modules reading __version__ from it make no circle of their own.
    del edges["runtime"]
    assert circles({name: deps - {"runtime"} for name, deps in edges.items()}) == []


def test_the_serving_and_azureml_wings_never_import_the_http_wing() -> None:
    """Anywhere in the module, inside functions too: the engine and the Azure ML contract run without Starlette."""
    offenders = {}
    for name, path in modules().items():
        if not name.startswith(("runtime.serving", "runtime.azureml")):
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        http = sorted(m for m in imported if m == "runtime.http" or m.startswith("runtime.http."))
        if http:
            offenders[name] = http
    assert offenders == {}


def test_hooks_are_called_from_the_manager_only() -> None:
    callers = sorted(
        name
        for name, path in modules().items()
        if re.search(r"\.hook\.\w+\(", path.read_text()) and name != "runtime.manager"
    )
    assert callers == []


def test_only_settings_reads_the_environment() -> None:
    readers = {name for name, path in modules().items() if re.search(r"os\.environ|os\.getenv", path.read_text())}
    # cli.py exports the Azure ML variables for score.py; server.py and metrics.py use prometheus-client's own;
    # tritonserver.py hands the environment to the tritonserver it starts; torchscript.py sets OMP_WAIT_POLICY
    # for the OpenMP runtime torch loads.
    assert readers == {
        "runtime.serving.platforms.torchscript",
        "runtime.settings",
        "runtime.cli",
        "runtime.http.server",
        "runtime.metrics",
        "runtime.serving.tritonserver",
    }


def test_entry_scripts_load_without_tritonclient_http_or_gevent() -> None:
    code = (
        "import sys\n"
        "from runtime.azureml.entry import load_entry_script\n"
        f"load_entry_script({str(REPO / 'tests/scripts/core/echo.py')!r})\n"
        "print(sorted(m for m in ('tritonclient.http', 'gevent', 'tritonhttpclient') if m in sys.modules))\n"
        "import tritonhttpclient, tritonclientutils\n"
        "print(tritonhttpclient.InferenceServerClient.__mro__[1].__module__, tritonclientutils.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.splitlines() == ["[]", "tritonclient.http._client tritonclient.utils"]


def test_no_top_level_plugins_package_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('plugins'))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.stdout.strip() == "None"
