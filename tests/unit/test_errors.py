"""errors: one table maps every failure to its gRPC code and its HTTP status and body."""

from __future__ import annotations

import json
import logging

import pytest
from google.rpc import code_pb2

from turnstream import errors


@pytest.mark.parametrize(
    ("status", "grpc_code", "http", "retry_after"),
    [
        (errors.invalid_record("turn", []), code_pb2.INVALID_ARGUMENT, 400, None),
        (errors.invalid_request("f", "bad", "OPEN_REQUIRED"), code_pb2.INVALID_ARGUMENT, 400, None),
        (errors.malformed("turnstream.v1.WriteRequest", "x"), code_pb2.INVALID_ARGUMENT, 400, None),
        (errors.too_large("records", 10, 11, "records"), code_pb2.RESOURCE_EXHAUSTED, 413, None),
        (errors.unavailable("down", 1.2), code_pb2.UNAVAILABLE, 503, "2"),
        (errors.internal("abc"), code_pb2.INTERNAL, 500, "5"),
    ],
)
def test_each_failure_has_its_grpc_code_http_status_and_retry_after(
    status: object, grpc_code: int, http: int, retry_after: str | None
) -> None:
    assert status.code == grpc_code  # type: ignore[attr-defined]
    got_http, body, headers = errors.http_error(status)  # type: ignore[arg-type]
    assert got_http == http
    assert headers.get("Retry-After") == retry_after
    error = json.loads(json.dumps(body))["error"]
    assert error["code"] == http
    assert error["status"] == code_pb2.Code.Name(grpc_code)
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert error["details"][0]["domain"] == errors.DOMAIN


def test_every_table_entry_is_a_consistent_pair() -> None:
    for reason, failure in errors.FAILURES.items():
        st = errors.status(failure.grpc_code, "m", reason)
        assert errors.http_status_of(st) == failure.http_status, reason


def test_an_unknown_reason_maps_by_its_grpc_code() -> None:
    st = errors.status(code_pb2.NOT_FOUND, "no such execution", "SOMETHING_NEW")
    assert errors.http_status_of(st) == 404


def test_unexpected_errors_log_the_incident_id_they_answer_with(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test")
    try:
        raise ValueError("secret internals")
    except ValueError:
        st = errors.unexpected(log, "storing a batch")
    incident = errors.reason_of(st) and st.message.split("incident ")[1].split(")")[0]
    assert incident in caplog.text and "secret internals" in caplog.text
    assert "ValueError" not in st.message and "secret" not in st.message
