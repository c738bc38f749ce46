"""Loading score.py: the Azure ML contract checks, and score.py's hooks as a plugin.

A script is either Azure ML style (``init()`` and ``run()``) or hook style
(``preprocess``/``postprocess`` and friends, no ``run()``), or both. Every
problem found here is a :class:`StartupError` that names the script, the
function and the cause.
"""

from __future__ import annotations

import difflib
import enum
import importlib.util
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from runtime import hookspecs
from runtime.azureml import aml
from runtime.azureml.compat import compat_modules
from runtime.errors import StartupError

logger = logging.getLogger("runtime.entry")

ENTRY_MODULE_NAME = "entry_module"  # the name azmlinfsrv gives the script's module


class InputMode(enum.Enum):
    STRING = "string"  # undecorated run(data): the body as str
    RAW = "raw"  # @rawhttp: an AMLRequest
    SCHEMA = "schema"  # inference-schema decorators: keyword arguments from the JSON body


@dataclass
class EntryScript:
    path: str
    module: ModuleType
    run: Callable[..., Any] | None = None
    input_mode: InputMode = InputMode.STRING
    data_param: str = "data"
    schema_params: list[inspect.Parameter] = field(default_factory=list)
    wants_headers: bool = False
    # The hooks score.py defines as plain functions (the plugin manager takes them as they are).
    hook_names: frozenset[str] = frozenset()

    @property
    def run_is_async(self) -> bool:
        return self.run is not None and inspect.iscoroutinefunction(self.run)

    def call_run(self, payload: dict[str, Any], headers: dict[str, str]) -> Any:
        assert self.run is not None
        if self.wants_headers:
            return self.run(**payload, request_headers=headers)
        return self.run(**payload)


def _import_script(path: str, triton_url: str, import_paths: Sequence[str]) -> ModuleType:
    if not os.path.isfile(path):
        raise StartupError(f"Entry script {path} does not exist.")
    directory = os.path.dirname(path)
    # Scripts import their sibling modules; and, as under azmlinfsrv (which appends them), modules of the app
    # root and of the source directory (AML_APP_ROOT, AZUREML_SOURCE_DIRECTORY).
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.path.extend(p for p in dict.fromkeys(import_paths) if p not in sys.path)
    spec = importlib.util.spec_from_file_location(ENTRY_MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise StartupError(f"Entry script {path} cannot be imported (is it a .py file?).")
    module = importlib.util.module_from_spec(spec)
    aml.reset_raw_http()
    try:
        with compat_modules(triton_url):
            spec.loader.exec_module(module)
    except BaseException as ex:
        logger.error("Importing %s failed:\n%s", path, traceback.format_exc())
        raise StartupError(f"Entry script {path} failed to import: {type(ex).__name__}: {ex}") from ex
    return module


def _schema_decorated(func: Callable[..., Any]) -> bool:
    try:
        from inference_schema.schema_util import is_schema_decorated
    except ImportError:
        return False
    return bool(is_schema_decorated(func))


def _analyze_run(script: EntryScript, path: str) -> None:
    run = script.run
    assert run is not None
    where = f"Entry script {path}: run()"
    params = list(inspect.signature(run).parameters.values())
    allowed = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind not in allowed for p in params):
        raise StartupError(f"{where} cannot accept positional-only arguments, *args, or **kwargs.")
    script.wants_headers = any(p.name == "request_headers" for p in params)
    params = [p for p in params if p.name != "request_headers"]
    if not params:
        if script.wants_headers:
            raise StartupError(f'{where} needs to accept an argument other than "request_headers".')
        raise StartupError(f"{where} needs to accept an argument for input data.")
    script.data_param = params[0].name
    raw = aml.raw_http_requested()
    schema = _schema_decorated(run)
    if raw and schema:
        raise StartupError(f"{where} cannot be decorated with both @rawhttp and @input_schema.")
    if raw:
        script.input_mode = InputMode.RAW
    elif schema:
        script.input_mode = InputMode.SCHEMA
        script.schema_params = params
    else:
        script.input_mode = InputMode.STRING


def _similar_hook(name: str, hooks: Sequence[str]) -> str | None:
    if name in hooks or name.startswith("_") or name == "run":
        return None
    close = difflib.get_close_matches(name, hooks, n=1, cutoff=0.85)
    return close[0] if close else None


def _check_hooks(module: ModuleType, path: str) -> frozenset[str]:
    """The hooks score.py defines; a marked function with no such hook, or a near miss, fails start-up."""
    hooks = hookspecs.names()
    marker = f"{hookspecs.PROJECT_NAME}_impl"
    found = set()
    for name, value in vars(module).items():
        if not inspect.isfunction(value) or value.__module__ != module.__name__:
            continue
        if name in hooks:
            found.add(name)
        elif hasattr(value, marker):
            # pluggy reports it as an unknown hook; say which file it is in.
            raise StartupError(
                f"Entry script {path}: {name}() is marked as a hook, but there is no hook "
                f"named {name!r}. Known hooks: {', '.join(hooks)}."
            )
        elif (near := _similar_hook(name, hooks)) is not None:
            raise StartupError(
                f"Entry script {path}: {name}() looks like a misspelled hook; did you mean {near}()? "
                f"Known hooks: {', '.join(hooks)}. Rename it (or start its name with '_') if it is a helper."
            )
    return frozenset(found)


def load_entry_script(path: str, triton_url: str = "", import_paths: Sequence[str] = ()) -> EntryScript:
    """Import score.py and check it; ``triton_url`` is where its ``tritonhttpclient`` at localhost:8000 goes;
    ``import_paths``: folders it may import from besides its own (:attr:`Settings.import_paths`)."""
    path = os.path.abspath(path)
    module = _import_script(path, triton_url, import_paths)
    run = getattr(module, "run", None)
    # Some Azure SDKs generate a driver module that forwards to the real script (azmlinfsrv does the same).
    driver = getattr(module, "driver_module", None)
    if isinstance(driver, ModuleType) and callable(getattr(driver, "run", None)):
        run = driver.run
    script = EntryScript(path=path, module=module, hook_names=_check_hooks(module, path))
    if run is not None:
        if not callable(run):
            raise StartupError(f"Entry script {path}: run is not a function.")
        if not callable(getattr(module, "init", None)):
            raise StartupError(f"Entry script {path} does not have a init() function defined.")
        script.run = run
        _analyze_run(script, path)
    elif not script.hook_names & {"preprocess", "postprocess"}:
        raise StartupError(
            f"Entry script {path} does not have a run() function defined "
            "(nor preprocess()/postprocess() hooks for hook style)."
        )
    return script
