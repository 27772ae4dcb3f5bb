"""Core: validate -> enrich -> rows for every record of a request; the one path every door
calls (no I/O). Invalid records become rejections and dead-letter rows, never exceptions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from google.protobuf.message import Message
from google.rpc.error_details_pb2 import BadRequest

from turnstream.core import deadletter, enrich, fastpath, rows, validate
from turnstream.core.batch import BatchOutcome, StreamAdvance, WriteBatch
from turnstream.core.pricing import PriceTable
from turnstream.v1 import ingest_pb2, records_pb2

FieldViolation: TypeAlias = BadRequest.FieldViolation


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    enum: int
    validate: Callable[[Any, str, dt.datetime], list[FieldViolation]]
    row: Callable[[str, Any, rows.Structs], rows.Row]
    # The generated check of core/fastpath.py: the record's Structs as JSON when it breaks no
    # rule, None when the generic walk must say what it breaks (None: always the walk).
    check: fastpath.Check | None


KINDS: dict[str, _Kind] = {
    "turn": _Kind(
        "turn",
        records_pb2.RECORD_KIND_TURN,
        validate.validate_turn,
        rows.turn_row,
        fastpath.make_check(records_pb2.Turn.DESCRIPTOR),
    ),
    "tool_call": _Kind(
        "tool_call",
        records_pb2.RECORD_KIND_TOOL_CALL,
        validate.validate_tool_call,
        rows.tool_call_row,
        fastpath.make_check(records_pb2.ToolCall.DESCRIPTOR),
    ),
    "task": _Kind(
        "task",
        records_pb2.RECORD_KIND_TASK,
        validate.validate_task,
        rows.task_row,
        fastpath.make_check(records_pb2.Task.DESCRIPTOR),
    ),
    "execution": _Kind(
        "execution",
        records_pb2.RECORD_KIND_EXECUTION,
        validate.validate_execution,
        rows.execution_row,
        fastpath.make_check(records_pb2.Execution.DESCRIPTOR),
    ),
}


@dataclass(slots=True)
class Item:
    """One record of a request, where it stood, and what it became."""

    kind: str
    message: Any
    path: str
    index: int
    offset: int | None = None
    # Violations a door found while parsing its wire format (a JSON value of the wrong type):
    # they join the record's own, and the record goes the dead-letter way like any invalid one.
    found: list[Any] | None = None


@dataclass(slots=True)
class Prepared:
    """A request after the core: the writer's batch, the answers for invalid records, and the
    enriched valid records (Create* answers them back)."""

    batch: WriteBatch
    rejections: list[ingest_pb2.RecordRejection] = field(default_factory=list)
    accepted: list[Item] = field(default_factory=list)
    unpriced: int = 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Pipeline:
    def __init__(self, prices: PriceTable, clock: Callable[[], dt.datetime] = _now) -> None:
        self.prices = prices
        self.clock = clock
        # Process totals, for metrics: turns left unpriced (unknown model) and records rejected.
        self.unpriced_total = 0
        self.rejected_total = 0

    def prepare(
        self,
        tenant_id: str,
        door: str,
        items: Iterable[Item],
        *,
        stream: StreamAdvance | None = None,
    ) -> Prepared:
        now = self.clock()
        latest = (validate._as_utc(now) + validate.CLOCK_SKEW).timestamp()
        prepared = Prepared(WriteBatch(tenant_id, stream=stream, door=door))
        spans: dict[str, list[dt.datetime | None]] = {}
        for item in items:
            kind = KINDS[item.kind]
            structs = None if kind.check is None else kind.check(item.message, latest)
            if structs is None or item.found:
                violations = kind.validate(item.message, item.path, now)
                if item.found:
                    violations = [*item.found, *violations]
                if violations:
                    self._reject(prepared, tenant_id, door, item, violations, now)
                    continue
            if item.kind == "turn":
                unpriced = not enrich.enrich_turn(item.message, self.prices)
                # Only turns derive floats (costs, AEM) that valid inputs could overflow.
                if not validate.derived_finite(item.message):
                    violations = validate.check_derived(item.message, item.path)
                    if violations:
                        self._reject(prepared, tenant_id, door, item, violations, now)
                        continue
                prepared.unpriced += unpriced
            elif item.kind == "tool_call":
                enrich.enrich_tool_call(item.message)
            elif item.kind == "task":
                enrich.enrich_task(item.message)
            else:
                enrich.enrich_execution(item.message)
            row = kind.row(tenant_id, item.message, structs)
            prepared.batch.rows[item.kind].append(row)
            prepared.batch.sources[item.kind].append(item)
            prepared.accepted.append(item)
            if item.kind != "execution":
                rows.widen_span(spans, row)
        self.unpriced_total += prepared.unpriced
        self.rejected_total += len(prepared.rejections)
        prepared.batch.derived_executions = rows.span_rows(tenant_id, spans)
        return prepared

    def _reject(
        self,
        prepared: Prepared,
        tenant_id: str,
        door: str,
        item: Item,
        violations: Sequence[FieldViolation],
        now: dt.datetime,
    ) -> None:
        kind = KINDS[item.kind]
        prepared.rejections.append(
            ingest_pb2.RecordRejection(kind=kind.enum, index=item.index, violations=violations)  # type: ignore[arg-type]
        )
        stream = prepared.batch.stream
        prepared.batch.rejected.append(
            deadletter.for_record(
                tenant_id=tenant_id,
                door=door,
                kind=item.kind,
                message=item.message,
                violations=violations,
                received_at=now,
                stream_id=stream.stream_id if stream else None,
                stream_offset=item.offset,
            )
        )

    def prepare_write(
        self, request: ingest_pb2.WriteRequest, tenant_id: str, door: str
    ) -> Prepared:
        """A unary batch: the request's execution_id fills records that left theirs empty."""
        return self.prepare(tenant_id, door, write_items(request))

    def prepare_append(
        self,
        records: Sequence[ingest_pb2.Record],
        tenant_id: str,
        door: str,
        stream: StreamAdvance,
    ) -> tuple[Prepared, list[ingest_pb2.RecordRejection]]:
        """A stream batch: index = position in the batch, offset = stream.from_offset + index.
        Empty records (no kind set) are answered here, as they have no kind to validate.
        With stream.first_index = n, `records` is a part of a message starting at its index n."""
        items, empty = [], []
        base = stream.first_index
        for n, record in enumerate(records):
            i = base + n
            which = record.WhichOneof("kind")
            if which is None:
                empty.append(
                    ingest_pb2.RecordRejection(
                        index=i,
                        violations=[
                            FieldViolation(
                                field=f"records[{i}]",
                                description="record is empty: set one of turn, tool_call, "
                                "task, execution",
                                reason="REQUIRED",
                            )
                        ],
                    )
                )
                continue
            items.append(
                Item(
                    which,
                    getattr(record, which),
                    f"records[{i}].{which}",
                    i,
                    stream.from_offset + n,
                )
            )
        return self.prepare(tenant_id, door, items, stream=stream), empty


def join(parts: Sequence[Prepared], stream: StreamAdvance) -> Prepared:
    """A stream batch prepared in consecutive parts (each with its own StreamAdvance.first_index),
    as one Prepared advancing the stream by `stream`: one writer batch, its rows and their
    sources in order, so a refused row's position still finds its record."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0].batch
    joined = Prepared(WriteBatch(first.tenant_id, stream=stream, door=first.door))
    for part in parts:
        joined.batch.extend(part.batch)
        joined.rejections += part.rejections
        joined.accepted += part.accepted
        joined.unpriced += part.unpriced
    return joined


def answer_failures(prepared: Prepared, outcome: BatchOutcome) -> None:
    """Rows the database refused after validation (the writer dead-lettered them) become
    rejections of their records, like any invalid record, and leave `accepted`."""
    if not outcome.failed:
        return
    batch = prepared.batch
    failed_items = set()
    for failure in outcome.failed:
        item = batch.sources[failure.kind][failure.position]
        failed_items.add(id(item))
        prepared.rejections.append(
            ingest_pb2.RecordRejection(
                kind=KINDS[item.kind].enum,  # type: ignore[arg-type]
                index=item.index,
                violations=[
                    FieldViolation(
                        field=item.path,
                        description=failure.description,
                        reason=deadletter.STORAGE_REJECTED,
                    )
                ],
            )
        )
    prepared.accepted = [i for i in prepared.accepted if id(i) not in failed_items]
    prepared.rejections.sort(key=lambda r: (r.kind, r.index))


def write_items(request: ingest_pb2.WriteRequest) -> list[Item]:
    return list(iter_write_items(request))


def count_write_items(request: ingest_pb2.WriteRequest) -> int:
    return (
        request.HasField("execution")
        + len(request.turns)
        + len(request.tool_calls)
        + len(request.tasks)
    )


def iter_write_items(request: ingest_pb2.WriteRequest) -> Iterator[Item]:
    """The records of a Write in order (execution, turns, tool calls, tasks), made as they are
    consumed: a large Write is walked a chunk at a time. The request's execution_id fills
    records that left theirs empty."""
    default = request.execution_id
    if request.HasField("execution"):
        if default and not request.execution.execution_id:
            request.execution.execution_id = default
        yield Item("execution", request.execution, "execution", 0)
    lists: tuple[tuple[str, str, Sequence[Message]], ...] = (
        ("turn", "turns", request.turns),
        ("tool_call", "tool_calls", request.tool_calls),
        ("task", "tasks", request.tasks),
    )
    for kind, name, messages in lists:
        for i, msg in enumerate(messages):
            if default and not msg.execution_id:  # type: ignore[attr-defined]
                msg.execution_id = default  # type: ignore[attr-defined]
            yield Item(kind, msg, f"{name}[{i}]", i)
