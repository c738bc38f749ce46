"""Request ids (runtime.http.middleware.request_ids.parse_ids): generated, echoed, legacy and client ids, limits."""

from __future__ import annotations

import os
import random
import uuid

from starlette.datastructures import Headers

from runtime.http.middleware.request_ids import RequestIds, id_headers, new_request_id, parse_ids


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


def test_generated_ids_are_distinct_version_4_uuids() -> None:
    generated = [new_request_id() for _ in range(2000)]
    assert len(set(generated)) == len(generated)
    for text in generated:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case hex, 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ids_do_not_follow_a_seeded_random_module_nor_repeat_across_forked_workers() -> None:
    """score.py may call random.seed() in init(): every worker would then draw the same ids from the module."""
    random.seed(42)
    first = random.random()
    random.seed(42)
    new_request_id()
    assert random.random() == first  # an id takes nothing from the script's random stream
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked after the same seeding
        random.seed(42)
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    random.seed(42)
    here = new_request_id()
    os.waitpid(pid, 0)
    there = os.read(read, 64).decode()
    os.close(read)
    assert uuid.UUID(there).version == 4 and there != here


def test_id_headers_reads_the_first_of_each_name_as_headers_does() -> None:
    raw = [(b"x-request-id", b"first"), (b"traceid", b"t"), (b"x-request-id", b"second"), (b"other", b"o")]
    found = id_headers({"headers": raw})
    assert found == {"x-request-id": "first", "traceid": "t"}
    assert found["x-request-id"] == Headers(raw=raw)["x-request-id"]
