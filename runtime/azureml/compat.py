"""Module names that existing entry scripts import, provided while the runtime loads them.

* ``azureml_inference_server_http.api.aml_request`` / ``.aml_response`` (azmlinfsrv 1.x) and
  ``azureml.contrib.services.aml_request`` / ``.aml_response`` (older SDKs): the runtime's
  own ``rawhttp``, ``AMLRequest`` and ``AMLResponse``.
* ``tritonhttpclient`` and ``tritonclientutils`` (tritonclient's names before 2.x), as used
  by Azure ML's Triton samples: ``tritonclient.http`` and ``tritonclient.utils``, with one
  difference: a client made for ``localhost:8000`` (Azure ML's Triton address) reaches the
  Triton this runtime uses (``TRITON_URL``), so the samples run unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

from runtime.azureml.aml import AMLRequest, AMLResponse, rawhttp

AZURE_ML_DEFAULT_TRITON = ("localhost:8000", "127.0.0.1:8000")


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _azure_modules() -> dict[str, types.ModuleType]:
    table: dict[str, types.ModuleType] = {}
    for package in ("azureml_inference_server_http.api", "azureml.contrib.services"):
        parts = package.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            table.setdefault(name, _module(name, __path__=[]))
        table[f"{package}.aml_request"] = _module(
            f"{package}.aml_request", rawhttp=rawhttp, AMLRequest=AMLRequest, _rawHttpRequested=False
        )
        table[f"{package}.aml_response"] = _module(f"{package}.aml_response", AMLResponse=AMLResponse)
    return table


def _triton_modules() -> dict[str, types.ModuleType]:
    import tritonclient.http as http
    import tritonclient.utils as utils

    class InferenceServerClient(http.InferenceServerClient):  # type: ignore[misc]
        """tritonclient.http's client; Azure ML's default address means the runtime's Triton."""

        def __init__(self, url: str = "localhost:8000", *args: Any, **kwargs: Any) -> None:
            target = os.environ.get("TRITON_URL")
            if target and url in AZURE_ML_DEFAULT_TRITON:
                url = target
            super().__init__(url, *args, **kwargs)

    public = {k: v for k, v in vars(http).items() if not k.startswith("__")}
    client = _module("tritonhttpclient", **public)
    client.InferenceServerClient = InferenceServerClient  # type: ignore[attr-defined]
    client.__path__ = []
    return {"tritonhttpclient": client, "tritonclientutils": utils}


def compat_modules_table() -> dict[str, types.ModuleType]:
    table = _azure_modules()
    table.update(_triton_modules())
    for name, module in table.items():
        parent, _, child = name.rpartition(".")
        if parent in table:
            setattr(table[parent], child, module)
    return table


@contextlib.contextmanager
def compat_modules() -> Iterator[None]:
    """Provide the module names while a script (and the modules it imports) loads.

    The runtime's classes stand in for Azure's even when those packages are
    installed, so run() always gets requests and gives responses the runtime
    understands. Names that import on their own are given back after loading;
    the others stay, so that imports inside run() keep working.
    """
    table = compat_modules_table()
    saved = {name: sys.modules.get(name) for name in table}
    sys.modules.update(table)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module
