"""Module names that existing entry scripts import, resolved by an import hook when a script asks for them.

* ``azureml_inference_server_http.api.aml_request`` / ``.aml_response`` (azmlinfsrv 1.x) and
  ``azureml.contrib.services.aml_request`` / ``.aml_response`` (older SDKs): the runtime's
  own ``rawhttp``, ``AMLRequest`` and ``AMLResponse``.
* ``tritonhttpclient`` and ``tritonclientutils`` (tritonclient's names before 2.x), as used
  by Azure ML's Triton samples: ``tritonclient.http`` and ``tritonclient.utils``, with one
  difference: a client made for ``localhost:8000`` (Azure ML's Triton address) reaches the
  Triton this runtime uses (``--triton-url``), so the samples run unchanged.

Nothing is built until a script imports one of these names: tritonclient (and gevent, which
``tritonclient.http`` imports) load only for scripts that use them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from runtime.azureml.aml import AMLRequest, AMLResponse, rawhttp

AZURE_ML_DEFAULT_TRITON = ("localhost:8000", "127.0.0.1:8000")
AZURE_PACKAGES = ("azureml_inference_server_http.api", "azureml.contrib.services")


def _package_names() -> set[str]:
    names: set[str] = set()
    for package in AZURE_PACKAGES:
        parts = package.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _aml_request(name: str, finder: CompatFinder) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(rawhttp=rawhttp, AMLRequest=AMLRequest, _rawHttpRequested=False)
    return module


def _aml_response(name: str, finder: CompatFinder) -> types.ModuleType:
    module = types.ModuleType(name)
    module.AMLResponse = AMLResponse  # type: ignore[attr-defined]
    return module


def _tritonhttpclient(name: str, finder: CompatFinder) -> types.ModuleType:
    import tritonclient.http as http

    class InferenceServerClient(http.InferenceServerClient):  # type: ignore[misc]
        """tritonclient.http's client; Azure ML's default address means the runtime's Triton."""

        def __init__(self, url: str = "localhost:8000", *args: Any, **kwargs: Any) -> None:
            if finder.triton_url and url in AZURE_ML_DEFAULT_TRITON:
                url = finder.triton_url
            super().__init__(url, *args, **kwargs)

    module = types.ModuleType(name)
    module.__dict__.update({k: v for k, v in vars(http).items() if not k.startswith("__")})
    module.InferenceServerClient = InferenceServerClient  # type: ignore[attr-defined]
    return module


def _tritonclientutils(name: str, finder: CompatFinder) -> types.ModuleType:
    return importlib.import_module("tritonclient.utils")


Builder = Callable[[str, "CompatFinder"], types.ModuleType]
BUILDERS: dict[str, Builder] = {
    **{f"{package}.aml_request": _aml_request for package in AZURE_PACKAGES},
    **{f"{package}.aml_response": _aml_response for package in AZURE_PACKAGES},
    "tritonhttpclient": _tritonhttpclient,
    "tritonclientutils": _tritonclientutils,
}
PACKAGES = _package_names()


class CompatFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Provides the names above, first on ``sys.meta_path`` (the runtime's classes stand in for Azure's
    even when those packages are installed, so run() always gets requests the runtime understands)."""

    def __init__(self) -> None:
        self.triton_url = ""
        self.excluded: set[str] = set()  # names imported before a script asked: they stay the real ones
        self.loading = False  # while a script loads, every name is ours

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in BUILDERS and fullname not in PACKAGES:
            return None
        if fullname in self.excluded and not self.loading:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, is_package=fullname in PACKAGES)
        if spec is not None and spec.submodule_search_locations is not None:
            # The stand-in package (``azureml``) searches where the installed one lives, so that the rest of it
            # (``azureml.core.model``, which score.py files import next to ``aml_request``) stays importable.
            spec.submodule_search_locations.extend(self._installed_locations(fullname, path))
        return spec

    def _installed_locations(self, fullname: str, path: Sequence[str] | None) -> list[str]:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path)
            if spec is not None and spec.submodule_search_locations:
                return list(spec.submodule_search_locations)
        return []

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        builder = BUILDERS.get(spec.name)
        return None if builder is None else builder(spec.name, self)

    def exec_module(self, module: types.ModuleType) -> None:
        """Everything is in place once built."""


FINDER = CompatFinder()


@contextlib.contextmanager
def compat_modules(triton_url: str = "") -> Iterator[None]:
    """Resolve the names while a script (and the modules it imports) loads, and later, inside run().

    Names already imported on their own before loading are the script's as they were; the finder
    stays installed so that imports inside run() keep working.
    """
    FINDER.triton_url = triton_url
    names = BUILDERS.keys() | PACKAGES
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules and not _ours(sys.modules[name])}
    if FINDER not in sys.meta_path:
        sys.meta_path.insert(0, FINDER)
    FINDER.loading = True
    try:
        yield
    finally:
        FINDER.loading = False
        sys.modules.update(saved)
        FINDER.excluded.update(saved)


def _ours(module: types.ModuleType) -> bool:
    spec = getattr(module, "__spec__", None)
    return spec is not None and spec.loader is FINDER
