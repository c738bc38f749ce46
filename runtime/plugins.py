"""The plugin manager: built-in plugins, third-party plugins and score.py, in precedence order.

:func:`register_all` holds the whole registration order (later registrations run first within the
same tryfirst/trylast class, as in pluggy):

1. the selected backend (one of :data:`DEFAULT_PLUGINS`),
2. plugins from the ``scoring_runtime`` entry-point group,
3. ``--plugin MODULE_OR_PATH`` (``RUNTIME_PLUGINS``),
4. the built-in Azure ML defaults (``trylast``),
5. score.py itself, so user code wins.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from runtime import hookspecs
from runtime.errors import StartupError

if TYPE_CHECKING:
    from runtime.azureml.entry import EntryScript
    from runtime.settings import Settings

logger = logging.getLogger("runtime.plugins")

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
BACKENDS = ("onnxruntime", "triton")


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def import_plugin(spec: str) -> ModuleType:
    """Import a plugin given as a module name (``pkg.mod``) or a path to a ``.py`` file."""
    if spec.endswith(".py") or os.sep in spec:
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
        except Exception as ex:
            raise StartupError(f"Plugin {path} failed to import: {type(ex).__name__}: {ex}") from ex
        return module
    try:
        return importlib.import_module(spec)
    except Exception as ex:
        raise StartupError(f"Plugin module {spec!r} failed to import: {type(ex).__name__}: {ex}") from ex


def builtin(name: str, *args: Any) -> object:
    """A new instance of the built-in plugin ``name``."""
    module_name, _, factory = DEFAULT_PLUGINS[name].partition(":")
    plugin: object = getattr(importlib.import_module(module_name), factory)(*args)
    return plugin


def register_all(pm: pluggy.PluginManager, settings: Settings, entry: EntryScript | None) -> None:
    """Every registration, in order (see the module docstring), then the check for misspelled hooks."""
    load_plugins(pm, settings.plugins, backend=settings.backend)
    # Registered after the plugins: pluggy calls trylast implementations registered later, later still.
    register(pm, builtin(AZUREML_DEFAULTS, entry), AZUREML_DEFAULTS)
    if entry is not None:
        register(pm, entry.hooks, f"entry:{entry.path}")
    check(pm)


def register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as ex:
        raise StartupError(f"Plugin {name}: {ex}") from ex


def load_plugins(pm: pluggy.PluginManager, extra: tuple[str, ...] = (), backend: str | None = None) -> None:
    """Register the selected backend, entry-point plugins and ``extra``."""
    if backend:
        if backend not in BACKENDS:
            raise StartupError(f"Unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}.")
        register(pm, builtin(backend), backend)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except pluggy.PluginValidationError as ex:
        raise StartupError(f"Plugin from entry point group {ENTRY_POINT_GROUP!r}: {ex}") from ex
    except Exception as ex:
        raise StartupError(f"A plugin in entry point group {ENTRY_POINT_GROUP!r} failed to load: {ex}") from ex
    for spec in extra:
        register(pm, import_plugin(spec), spec)


def check(pm: pluggy.PluginManager) -> None:
    """Fail on hook implementations that match no spec (a misspelled hook name)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as ex:
        raise StartupError(f"{ex} Known hooks: {', '.join(known_hooks())}.") from ex


def known_hooks() -> list[str]:
    return sorted(
        name
        for name in dir(hookspecs)
        if callable(getattr(hookspecs, name)) and hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT_NAME}_spec")
    )
