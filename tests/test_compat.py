"""runtime.azureml.compat: the Azure ML and tritonclient 1.x names, resolved by an import hook."""

from __future__ import annotations

import sys
from pathlib import Path

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
