"""Where plugins come from: the built-in ones (:data:`DEFAULT_PLUGINS`), entry points and ``--plugin``.

The order they are registered in is :meth:`runtime.manager.PluginManager.register_all`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from runtime.errors import StartupError
from runtime.settings import BACKENDS as BACKENDS  # the one list, re-exported for the manager

ENTRY_POINT_GROUP = "scoring_runtime"

# The built-in plugins, one module each in the plugins/ folder, installed as ``runtime_plugins`` so that a
# user's own ``plugins`` package is never shadowed: name -> "module:factory". Imported by name, like
# datasette's DEFAULT_PLUGINS, so that only the selected backend's libraries are loaded.
AZUREML_DEFAULTS = "azureml-defaults"
DEFAULT_PLUGINS: dict[str, str] = {
    AZUREML_DEFAULTS: "runtime_plugins.azureml:AzureMLDefaults",
    "onnxruntime": "runtime_plugins.onnxruntime_backend:OnnxRuntimeBackend",
    "triton": "runtime_plugins.triton_backend:TritonBackend",
}


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec


def identity(spec: str) -> str:
    """What ``spec`` names, the same however it is spelt: a module name, or a file's absolute path."""
    return os.path.abspath(spec) if _is_path(spec) else spec


def import_plugin(spec: str) -> ModuleType:
    """Import a plugin given as a module name (``pkg.mod``) or a path to a ``.py`` file."""
    if _is_path(spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise StartupError(f"Plugin file {path} does not exist.")
        name = "runtime_plugin_" + os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise StartupError(f"Plugin file {path} cannot be imported.")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as ex:  # sys.exit() in a plugin is its start-up failure, not an exit code
            raise StartupError(f"Plugin {path} failed to import: {type(ex).__name__}: {ex}") from ex
        return module
    try:
        return importlib.import_module(spec)
    except (Exception, SystemExit) as ex:
        raise StartupError(f"Plugin module {spec!r} failed to import: {type(ex).__name__}: {ex}") from ex


def builtin(name: str, *args: Any) -> object:
    """A new instance of the built-in plugin ``name``."""
    module_name, _, factory = DEFAULT_PLUGINS[name].partition(":")
    plugin: object = getattr(importlib.import_module(module_name), factory)(*args)
    return plugin
