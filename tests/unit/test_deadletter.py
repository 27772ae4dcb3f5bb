"""deadletter: building a dead letter never fails, and every value fits its column."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math

from turnstream.core import deadletter
from turnstream.v1 import ingest_pb2, records_pb2

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def _strict(value: object) -> str:
    return json.dumps(value, allow_nan=False, default=str)


def test_a_record_json_cannot_spell_is_kept_as_its_exact_bytes() -> None:
    turn = records_pb2.Turn(execution_id="e\x00" + "x" * 400)
    turn.started_at.seconds = 10**12  # past year 9999: RFC 3339 has no spelling for it
    turn.metrics.fields["nan"].number_value = math.nan
    row = deadletter.for_record(
        tenant_id="t", door="grpc.Write", kind="turn", message=turn, violations=[], received_at=NOW
    )
    raw = base64.b64decode(row["payload"]["_raw_base64"])
    assert records_pb2.Turn.FromString(raw) == turn
    assert len(row["execution_id"]) == deadletter.MAX_KEY_CHARS
    assert "\x00" not in row["execution_id"]
    _strict(row)


def test_json_payloads_lose_nul_and_non_finite_numbers_but_keep_the_rest() -> None:
    call = records_pb2.ToolCall(execution_id="e", tool_name="bash\x00", tool_output="ok")
    row = deadletter.for_record(
        tenant_id="t", door="d", kind="tool_call", message=call, violations=[], received_at=NOW
    )
    assert row["payload"] == {"execution_id": "e", "tool_name": "bash\ufffd", "tool_output": "ok"}
    assert deadletter.clean_json([math.inf, -math.inf, math.nan, 1.5]) == [
        "Infinity",
        "-Infinity",
        "NaN",
        1.5,
    ]


def test_the_same_record_through_the_same_door_has_the_same_id() -> None:
    turn = records_pb2.Turn(execution_id="e", turn_number=1)
    ids = {
        deadletter.for_record(
            tenant_id="t", door=door, kind="turn", message=turn, violations=[], received_at=NOW
        )["rejected_id"]
        for door in ("a", "a", "b")
    }
    assert len(ids) == 2


def test_unparsed_bodies_keep_their_json_or_their_bytes() -> None:
    common = {
        "tenant_id": "t",
        "door": "d",
        "kind": "request",
        "violations": [],
        "received_at": NOW,
    }
    garbage = deadletter.unparsed(body=b"\xff\x00", **common)  # type: ignore[arg-type]
    assert base64.b64decode(garbage["payload"]["_raw_base64"]) == b"\xff\x00"
    parsed = deadletter.unparsed(body=b"{}", parsed={"a": math.nan}, **common)  # type: ignore[arg-type]
    assert parsed["payload"] == {"a": "NaN"}
    assert garbage["rejected_id"] != parsed["rejected_id"]
    _strict([garbage, parsed])


def test_requests_are_never_too_big_for_the_kind_and_door_columns() -> None:
    row = deadletter.unparsed(
        tenant_id="t",
        door="d" * 100,
        kind="k" * 100,
        body=ingest_pb2.WriteRequest().SerializeToString(),
        violations=[],
        received_at=NOW,
    )
    assert len(row["door"]) == 64 and len(row["kind"]) == 32
