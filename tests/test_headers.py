"""Request ids (runtime.http.middleware.request_ids.parse_ids): generated, echoed, legacy and client ids, limits."""

from __future__ import annotations

from starlette.datastructures import Headers

from runtime.http.middleware.request_ids import RequestIds, parse_ids


def ids(**headers: str) -> RequestIds:
    parsed = parse_ids(Headers(headers={k.replace("_", "-"): v for k, v in headers.items()}))
    assert isinstance(parsed, RequestIds), parsed
    return parsed


def test_generated_id_is_also_the_legacy_id() -> None:
    parsed = ids()
    assert len(parsed.request_id) == 36
    assert parsed.legacy_client_request_id == parsed.request_id and parsed.client_request_id == ""


def test_client_id_fills_the_legacy_id_and_legacy_fills_the_client_id() -> None:
    assert ids(x_request_id="r", x_ms_client_request_id="c").legacy_client_request_id == "c"
    legacy = ids(x_ms_request_id="l")
    assert (legacy.legacy_client_request_id, legacy.client_request_id) == ("l", "l")


def test_over_long_ids_are_the_431_message() -> None:
    assert parse_ids(Headers(headers={"x-request-id": "r" * 101})) == "x-request-id must not exceed 100 characters"
    assert (
        parse_ids(Headers(headers={"x-ms-client-request-id": "c" * 101}))
        == "x-ms-request-id and x-ms-client-request-id must not exceed 100 characters"
    )
