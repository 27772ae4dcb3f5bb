"""Core: dead letters, the rows of `rejected_records` (no I/O). Building one can never fail:
whatever a caller sent, it ends as rows or as a dead letter, and every column takes anything
the wire can carry (text bounded and free of NUL, JSON free of NaN and Infinity).

Three sources, one shape: records the core rejected (violations), requests or bodies a door could
not parse (`unparsed`), and rows the database refused after validation (`storage_failure`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

# Columns of rejected_records that are keys or group-by columns (varchar(256) in the schema).
MAX_KEY_CHARS = 256


def key_text(value: str | None) -> str | None:
    """A string fit for a bounded key column: NUL replaced, cut to MAX_KEY_CHARS."""
    if not value:
        return None
    return clean_text(value)[:MAX_KEY_CHARS]


def clean_text(text: str) -> str:
    # PostgreSQL text and jsonb refuse NUL; keep the record rather than fail the transaction.
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def clean_json(value: Any) -> Any:
    """A JSON value every database accepts: no NUL in strings, no NaN or Infinity (jsonb and
    strict JSON refuse them; they are kept as the strings "NaN", "Infinity", "-Infinity")."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def payload(message: Message) -> dict[str, Any]:
    """The raw record as JSON, field names as in the proto. A record JSON cannot spell (a
    Timestamp beyond year 9999, NaN inside a Struct, nesting deeper than the JSON printer
    allows) is kept as its exact bytes instead, so it can still be read back and replayed."""
    try:
        return clean_json(  # type: ignore[no-any-return]
            json_format.MessageToDict(message, preserving_proto_field_name=True)
        )
    except Exception as exc:  # any failure of the printer: fall back, never fail the request
        return raw_payload(message.SerializeToString(), f"not representable as JSON: {exc}")


def raw_payload(data: bytes, why: str) -> dict[str, Any]:
    """A payload kept as bytes: base64 of exactly what was received."""
    return {"_raw_base64": base64.b64encode(data).decode("ascii"), "_why": clean_text(why)[:500]}


def digest(*parts: str | bytes) -> str:
    """A short stable id of its parts (bytes as hex), the same as dead letters always had."""
    text = "\x1f".join(p.hex() if isinstance(p, bytes) else p for p in parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def violation_dicts(violations: Iterable[Any]) -> list[dict[str, str]]:
    return [
        {
            "field": clean_text(v.field),
            "description": clean_text(v.description),
            "reason": clean_text(v.reason),
        }
        for v in violations
    ]


def row(
    *,
    tenant_id: str,
    door: str,
    kind: str,
    rejected_id: str,
    payload: Mapping[str, Any],
    violations: list[dict[str, str]],
    received_at: dt.datetime,
    execution_id: str | None = None,
    stream_id: str | None = None,
    stream_offset: int | None = None,
) -> dict[str, Any]:
    """One rejected_records row; every value already fit for its column."""
    return {
        "tenant_id": tenant_id,
        "rejected_id": rejected_id,
        "door": clean_text(door)[:64],
        "kind": clean_text(kind)[:32],
        "execution_id": key_text(execution_id),
        "stream_id": key_text(stream_id),
        "stream_offset": stream_offset,
        "payload": dict(payload),
        "violations": violations,
        "received_at": received_at,
    }


def for_record(
    *,
    tenant_id: str,
    door: str,
    kind: str,
    message: Message,
    violations: Iterable[Any],
    received_at: dt.datetime,
    stream_id: str | None = None,
    stream_offset: int | None = None,
) -> dict[str, Any]:
    """The dead letter of a record the core rejected. Same door, kind and bytes -> same id, so
    an exact retry of an invalid record is kept once."""
    data = message.SerializeToString(deterministic=True)
    return row(
        tenant_id=tenant_id,
        door=door,
        kind=kind,
        rejected_id=digest(door, kind, data),
        payload=payload(message),
        violations=violation_dicts(violations),
        received_at=received_at,
        execution_id=getattr(message, "execution_id", None),
        stream_id=stream_id,
        stream_offset=stream_offset,
    )


def unparsed(
    *,
    tenant_id: str,
    door: str,
    kind: str,
    body: bytes,
    violations: Iterable[Any],
    received_at: dt.datetime,
    parsed: Mapping[str, Any] | None = None,
    execution_id: str | None = None,
    stream_id: str | None = None,
) -> dict[str, Any]:
    """The dead letter of a request a door could not turn into records (unparseable bytes or
    JSON, wrong types): kept whole, as JSON when it parsed as JSON, else as raw bytes."""
    kept = clean_json(dict(parsed)) if parsed is not None else raw_payload(body, "unparseable")
    return row(
        tenant_id=tenant_id,
        door=door,
        kind=kind,
        rejected_id=digest(door, kind, body),
        payload=kept,
        violations=violation_dicts(violations),
        received_at=received_at,
        execution_id=execution_id,
        stream_id=stream_id,
    )


STORAGE_REJECTED = "STORAGE_REJECTED"


def storage_failure(
    batch: Any, kind: str, position: int, description: str, received_at: dt.datetime
) -> dict[str, Any]:
    """The dead letter of a valid row the database refused (`batch` a core.batch.WriteBatch,
    `position` the row's index in batch.rows[kind]); its violation names the record's path."""
    item = batch.sources[kind][position]
    message: Message = item.message
    stream = batch.stream
    return row(
        tenant_id=batch.tenant_id,
        door=batch.door,
        kind=kind,
        rejected_id=digest(batch.door, kind, message.SerializeToString(deterministic=True), "db"),
        payload=payload(message),
        violations=[
            {"field": clean_text(item.path), "description": description, "reason": STORAGE_REJECTED}
        ],
        received_at=received_at,
        execution_id=getattr(message, "execution_id", None),
        stream_id=stream.stream_id if stream is not None else None,
        stream_offset=item.offset,
    )
