"""runtime.azureml.compat: the Azure ML and tritonclient 1.x names, resolved by an import hook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runtime.azureml.aml import AMLRequest, AMLResponse
from runtime.azureml.compat import FINDER, compat_modules


def test_azure_names_are_the_runtimes_while_a_script_loads(tmp_path: Path) -> None:
    names = [
        "azureml.contrib.services.aml_request",
        "azureml.contrib.services.aml_response",
        "azureml_inference_server_http.api.aml_request",
    ]
    for name in names:
        sys.modules.pop(name, None)
    with compat_modules():
        from azureml.contrib.services.aml_request import AMLRequest as Request
        from azureml.contrib.services.aml_response import AMLResponse as Response
        from azureml_inference_server_http.api.aml_request import rawhttp

    assert Request is AMLRequest and Response is AMLResponse and callable(rawhttp)
    # Still resolvable later, from inside run().
    assert sys.modules["azureml.contrib.services.aml_response"].AMLResponse is AMLResponse
    assert FINDER in sys.meta_path


def test_tritonhttpclient_points_azure_mls_address_at_the_runtimes_triton() -> None:
    sys.modules.pop("tritonhttpclient", None)
    with compat_modules("triton.example:8000"):
        import tritonhttpclient

    client = tritonhttpclient.InferenceServerClient("localhost:8000")
    other = tritonhttpclient.InferenceServerClient("elsewhere:8000")
    try:
        assert "triton.example:8000" in repr(vars(client))
        assert "elsewhere:8000" in repr(vars(other))
    finally:
        client.close()
        other.close()


def test_the_stand_in_azureml_package_keeps_the_installed_azureml_packages_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # azureml-core's layout: a pkgutil namespace package. score.py files import both it and the Azure names.
    (tmp_path / "azureml" / "core").mkdir(parents=True)
    namespace = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
    (tmp_path / "azureml" / "__init__.py").write_text(namespace)
    (tmp_path / "azureml" / "core" / "__init__.py").write_text("")
    (tmp_path / "azureml" / "core" / "model.py").write_text("class Model:\n    path = 'models/m'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name == "azureml" or name.startswith("azureml.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        with compat_modules():
            from azureml.contrib.services.aml_response import AMLResponse as Response
            from azureml.core.model import Model

        assert Response is AMLResponse
        assert Model.path == "models/m"
    finally:
        sys.modules.pop("azureml.core.model", None)
        sys.modules.pop("azureml.core", None)
