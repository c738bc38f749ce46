"""@rawhttp scripts in-process: form and multipart bodies, AMLResponse headers, the 500 for unhandled errors."""

from __future__ import annotations

import pytest

from runtime.azureml.form import MAX_PARTS, parse_form
from runtime.errors import BadRequest, PayloadTooLarge
from runtime.settings import Settings
from tests.conftest import script
from tests.support.inprocess import client

pytestmark = pytest.mark.anyio

FILES = {"image": ("cat.jpg", b"\xff\xd8JPEG" * 1000, "image/jpeg")}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_headers_set_on_an_aml_response_after_it_is_built_are_sent() -> None:
    async with client(Settings(entry_script=script("aml/cors.py"))) as http:
        sample = await http.post("/score", content=b"hello")
        more = await http.post("/score?more=1", content=b"hello")
    assert (sample.status_code, sample.content) == (200, b"hello")
    assert sample.headers["access-control-allow-origin"] == "http://www.example.com"
    assert sample.headers["content-type"] == "text/html; charset=utf-8"
    assert (more.status_code, more.content) == (200, b"hello")
    assert more.headers.get_list("content-type") == ["application/octet-stream"]
    assert more.headers.get_list("x-tag") == ["from-init", "added"]
    assert "x-gone" not in more.headers


@pytest.mark.parametrize("order", ["files_first", "data_first"])
async def test_multipart_fields_files_and_body_in_any_order(order: str) -> None:
    async with client(Settings(entry_script=script("aml/forms.py"))) as http:
        response = await http.post(f"/score?order={order}", data={"a": "1", "b": ["x", "y"]}, files=FILES)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["form"] == {"a": ["1"], "b": ["x", "y"]}
    assert got["files"] == {
        "image": {
            "filename": "cat.jpg",
            "content_type": "image/jpeg",
            "data": (b"\xff\xd8JPEG" * 1000).decode("utf-8", "replace"),
        }
    }
    # get_data() is the whole multipart body, whichever came first.
    assert got["data_length"] == int(response.request.headers["content-length"])
    assert got["values"] == ["a", "b", "order"]


async def test_urlencoded_form() -> None:
    async with client(Settings(entry_script=script("aml/forms.py"))) as http:
        response = await http.post("/score", data={"name": "Zoë", "n": "2"})
    assert response.status_code == 200
    assert response.json()["form"] == {"name": ["Zoë"], "n": ["2"]}
    assert response.json()["files"] == {}


async def test_save_get_type_and_data() -> None:
    async with client(Settings(entry_script=script("aml/upload.py"))) as http:
        response = await http.post("/score", data={"label": "cat", "threshold": "0.8"}, files=FILES)
        missing = await http.post("/score", data={"label": "cat"})
    assert response.status_code == 200
    assert response.json() == {
        "saved": 6000,
        "filename": "cat.jpg",
        "mimetype": "image/jpeg",
        "bool": True,
        "label": "cat",
        "threshold": 0.8,
        "data": 0,  # Flask: .data is empty for a form body
    }
    # Werkzeug raises a 400 KeyError for a missing field; the runtime answers 400 naming it.
    assert missing.status_code == 400
    assert missing.json() == {"message": "The request has no file field 'image'."}


async def test_undecorated_run_still_gets_the_body() -> None:
    async with client(Settings(entry_script=script("aml/prints.py"))) as http:
        response = await http.post("/score", data={"a": "1"})
    assert response.status_code == 200
    assert response.json()["data"] == "a=1"  # azmlinfsrv gives "" (documented difference)


async def test_malformed_multipart_is_a_400() -> None:
    # The parser refuses a boundary over 256 bytes when it is made: that escaped as the script's 500.
    long_boundary = {"content-type": "multipart/form-data; boundary=" + "b" * 300}
    async with client(Settings(entry_script=script("aml/forms.py"))) as http:
        no_boundary = await http.post("/score", content=b"x", headers={"content-type": "multipart/form-data"})
        too_long = await http.post("/score", content=b"x", headers=long_boundary)
    assert no_boundary.status_code == 400
    assert no_boundary.json() == {"message": "The multipart/form-data body has no boundary in its Content-Type header."}
    assert too_long.status_code == 400
    assert too_long.json()["message"].startswith("The multipart/form-data body cannot be parsed: Boundary length 300")


def test_parser_limits_and_edge_cases() -> None:
    body = b'--B\r\nContent-Disposition: form-data; name="f"; filename=""\r\n\r\nabc\r\n--B--\r\n'
    form, files = parse_form("multipart/form-data; boundary=B", body)
    assert not form and files["f"].read() == b"abc" and not files["f"]  # empty filename: falsy, as Werkzeug
    with pytest.raises(PayloadTooLarge):
        parse_form("application/x-www-form-urlencoded", "&".join(["a=1"] * (MAX_PARTS + 1)).encode())
    many = b"".join(b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n' for _ in range(MAX_PARTS + 1))
    with pytest.raises(PayloadTooLarge):
        parse_form("multipart/form-data; boundary=B", many + b"--B--\r\n")
    with pytest.raises(BadRequest):
        parse_form("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data\r\n\r\n1\r\n--B--\r\n")
    form, files = parse_form("application/json", b"{}")
    assert (len(form), len(files)) == (0, 0)


async def test_unhandled_errors_carry_the_request_id() -> None:
    async with client(Settings(entry_script=script("core/broken_response.py"), cors_origins=("*",))) as http:
        response = await http.post("/score", content=b"x", headers={"x-request-id": "rid-500", "Origin": "https://a"})
    assert response.status_code == 500
    assert response.json() == {"message": "An unexpected internal error occurred. Check the logs for more info."}
    assert response.headers["x-request-id"] == "rid-500"
    assert response.headers["x-ms-run-function-failed"] == "False"
    assert response.headers["access-control-allow-origin"] == "https://a"
