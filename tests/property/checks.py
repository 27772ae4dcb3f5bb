"""What "every record becomes rows or a dead letter" means, as assertions over a Prepared request;
shared by the pure pipeline properties and the storage properties."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from turnstream.core.pipeline import KINDS, Prepared
from turnstream.store import schema
from turnstream.v1 import ingest_pb2

ENUM_TO_KIND = {k.enum: name for name, k in KINDS.items()}
LIST_OF = {"turn": "turns", "tool_call": "tool_calls", "task": "tasks"}
# rejected_records columns and their widths (store/schema.py): what a dead letter must fit.
DEAD_LETTER_WIDTHS = {
    "rejected_id": 64,
    "door": 64,
    "kind": 32,
    "execution_id": 256,
    "stream_id": 256,
}


# Columns with a length limit, per record table: a longer value fails the whole transaction on
# PostgreSQL (SQLite would store it silently).
WIDTHS = {
    kind: {c.name: c.type.length for c in table.columns if getattr(c.type, "length", None)}
    for kind, table in schema.RECORD_TABLES.items()
}


@dataclass(frozen=True)
class Record:
    kind: str
    index: int
    path: str
    message: Message


def records_of(request: ingest_pb2.WriteRequest) -> dict[tuple[str, int], Record]:
    """Every record of a Write, by (kind, index), with the path its violations must start with."""
    out: dict[tuple[str, int], Record] = {}
    if request.HasField("execution"):
        out["execution", 0] = Record("execution", 0, "execution", request.execution)
    for kind, name in LIST_OF.items():
        for i, message in enumerate(getattr(request, name)):
            out[kind, i] = Record(kind, i, f"{name}[{i}]", message)
    return out


def _datetimes(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"a row holds a {type(value).__name__}, which no column type takes")


def strict_json(row: dict[str, Any]) -> str:
    """The row as strict JSON (datetimes as ISO text): raises on NaN, Infinity, odd objects."""
    return json.dumps(row, default=_datetimes, allow_nan=False)


def strings(value: Any) -> Iterator[str]:
    """Every string in a row: values, nested JSON values and JSON object keys."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from strings(v)


def floats(value: Any) -> Iterator[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from floats(v)


def check_total(request: ingest_pb2.WriteRequest, prepared: Prepared) -> None:
    """Every record is accepted (a row) or rejected (a RecordRejection with violations naming
    its path, plus one dead letter): never both, never neither; every row any table will get is
    strict JSON with no NUL, and the dead letters fit their columns."""
    records = records_of(request)
    accepted = [(item.kind, item.index) for item in prepared.accepted]
    rejected = [(ENUM_TO_KIND[r.kind], r.index) for r in prepared.rejections]
    assert len(set(accepted)) == len(accepted), f"a record accepted twice: {accepted}"
    assert len(set(rejected)) == len(rejected), f"a record rejected twice: {rejected}"
    both = set(accepted) & set(rejected)
    assert not both, f"accepted and rejected: {both}"
    lost = set(records) - set(accepted) - set(rejected)
    assert not lost, f"neither accepted nor rejected: {lost}"
    assert set(accepted) | set(rejected) == set(records)

    batch = prepared.batch
    for kind in KINDS:
        assert len(batch.rows[kind]) == len(batch.sources[kind])
        assert [(i.kind, i.index) for i in batch.sources[kind]] == [
            a for a in accepted if a[0] == kind
        ]
    assert len(batch.rejected) == len(prepared.rejections), "one dead letter per rejection"

    for rejection in prepared.rejections:
        record = records[ENUM_TO_KIND[rejection.kind], rejection.index]
        assert rejection.violations, f"{record.path}: rejected without a violation"
        for v in rejection.violations:
            assert v.field.startswith(record.path + "."), (record.path, v.field)
            assert v.reason, v
            assert v.description, v

    for kind in KINDS:
        for row in batch.rows[kind]:
            check_row(kind, row)
    for row in batch.derived_executions:
        strict_json(row)

    for letter, rejection in zip(batch.rejected, prepared.rejections, strict=True):
        record = records[ENUM_TO_KIND[rejection.kind], rejection.index]
        strict_json(letter)
        assert not [s for s in strings(letter) if "\x00" in s], "NUL in a dead letter"
        for column, width in DEAD_LETTER_WIDTHS.items():
            value = letter[column]
            assert value is None or len(value) <= width, (column, len(value))
        assert letter["kind"] == record.kind
        assert isinstance(letter["payload"], dict) and letter["payload"]
        assert [v["field"] for v in letter["violations"]] == [
            v.field.replace("\x00", "\ufffd") for v in rejection.violations
        ]
        check_payload_readable(letter["payload"], record.message)
    check_travels(prepared)


def check_travels(prepared: Prepared) -> None:
    """Whatever the core accepts could have come over the wire and can go back over it: each
    accepted record parses inside a Write and inside an Append batch (the deeper wrapping), so
    validation's limits sit within the parser's and a replay of what was stored cannot fail."""
    for item in prepared.accepted:
        record = ingest_pb2.Record()
        getattr(record, item.kind).CopyFrom(item.message)
        append = ingest_pb2.AppendRequest()
        append.batch.records.add().CopyFrom(record)
        ingest_pb2.AppendRequest.FromString(append.SerializeToString())
        write = ingest_pb2.WriteRequest()
        target = (
            write.execution
            if item.kind == "execution"
            else getattr(write, LIST_OF[item.kind]).add()
        )
        target.CopyFrom(item.message)
        ingest_pb2.WriteRequest.FromString(write.SerializeToString())


def check_row(kind: str, row: dict[str, Any]) -> None:
    """An accepted row: finite numbers, strict JSON, no NUL, every value within its column."""
    bad = [x for x in floats(row) if not math.isfinite(x)]
    assert not bad, f"an accepted {kind} row holds {bad}"
    strict_json(row)
    assert not [s for s in strings(row) if "\x00" in s], f"NUL in an accepted {kind} row"
    for column, value in row.items():
        width = WIDTHS[kind].get(column)
        if width is not None and value is not None:
            assert len(value) <= width, f"{kind}.{column}: {len(value)} > {width}"
    eid = row["execution_id"]
    assert eid and len(eid) <= 256 and "\x00" not in eid, eid


def check_payload_readable(payload: dict[str, Any], message: Message) -> None:
    """A dead letter keeps the record: its exact bytes, or JSON the proto parser reads back.
    (Read back only what could have come over the wire: a Struct nested past the parsers'
    depth limits, built in memory, is readable in no form.)"""
    if "_raw_base64" in payload:
        assert base64.b64decode(payload["_raw_base64"]) == message.SerializeToString()
        assert payload["_why"]
        return
    try:
        type(message).FromString(message.SerializeToString())
    except DecodeError:
        return
    json_format.ParseDict(payload, type(message)())
