"""Entrypoint engine of `turnstream send FILE...`: Kubiya batch files -> formats.kubiya ->
IngestService.Write, one batch at a time, retrying while the server is unavailable."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from turnstream.formats.kubiya import Loc, batch_from_json, format_loc
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

MAX_ATTEMPTS = 5
FIRST_BACKOFF = 0.5  # seconds; doubles per attempt: 0.5, 1, 2, 4 (~7.5 s in all)
MAX_BACKOFF = 30.0  # cap for a server-sent RetryInfo too, so a bad hint cannot hang the CLI
MAX_LISTED = 20  # rejections and parse errors listed before "... and N more"

_LISTS = ("turns", "tool_calls", "tasks")
_KINDS = {
    records_pb2.RECORD_KIND_TURN: ("turn", "turns"),
    records_pb2.RECORD_KIND_TOOL_CALL: ("tool_call", "tool_calls"),
    records_pb2.RECORD_KIND_TASK: ("task", "tasks"),
    records_pb2.RECORD_KIND_EXECUTION: ("execution", "execution"),
}
# Codes that say nothing about the batch itself: every later batch would fail the same way.
_FATAL = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass(frozen=True, slots=True)
class RawBatch:
    """One batch object as read from a file; `label` says where it was ("batch 2", "line 7")."""

    label: str
    obj: Any


@dataclass(frozen=True, slots=True)
class Rejection:
    """One reason a record was not stored: a parse error here or a violation from the server.
    `index` is the record's position in its list in the file."""

    where: str
    kind: str
    index: int | None
    field: str
    description: str


@dataclass(slots=True)
class SendSummary:
    """What a send did. `files` counts files read; unreadable ones (and batches the server
    failed) are in `failed_files`. `rejected` counts records, local and server-side."""

    files: int = 0
    batches: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    failed_files: list[tuple[str, str]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class BatchFileError(ValueError):
    """A file that cannot be read as batches; the message is the reason shown to the user."""


def load_batches(path: Path) -> list[RawBatch]:
    """The batches of a file: one JSON object, a JSON array of objects, or JSON Lines. Raises
    BatchFileError (unreadable, empty, not JSON, or a top-level value that is not a batch)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BatchFileError(f"cannot read: {exc.strerror or exc}") from None
    if not text.strip():
        raise BatchFileError("file is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return _json_lines(text, exc)
    if isinstance(doc, dict):
        return [RawBatch("batch 1", doc)]
    if isinstance(doc, list):
        return [RawBatch(f"batch {i}", obj) for i, obj in enumerate(doc, 1)]
    raise BatchFileError(
        f"top-level JSON {type(doc).__name__} is not a batch; expected an object, an array of "
        "objects, or JSON Lines"
    )


def _json_lines(text: str, whole: json.JSONDecodeError) -> list[RawBatch]:
    # split("\n"), not splitlines(): U+2028 and friends may appear raw inside JSON strings.
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    # JSON Lines only when the first line is a JSON value by itself; otherwise the file is one
    # broken document and the error of the whole document is the one that helps.
    try:
        json.loads(lines[0][1])
    except json.JSONDecodeError:
        lines = []
    if len(lines) < 2:
        raise BatchFileError(
            f"invalid JSON: {whole.msg} (line {whole.lineno}, column {whole.colno})"
        ) from None
    out = []
    for n, line in lines:
        try:
            out.append(RawBatch(f"line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise BatchFileError(
                f"invalid JSON Lines: line {n}: {exc.msg} (column {exc.colno})"
            ) from None
    return out


@dataclass(slots=True)
class _Planned:
    """A batch ready to send: only its cleanly parsed records, and where each came from."""

    where: str  # "<path> <label>", for rejection lines
    path: str
    label: str
    request: ingest_pb2.WriteRequest
    size: int  # records in the file's batch, sent or not (the progress bar counts them all)
    origin: dict[str, list[int]]  # list name -> index in the file of each record sent


def _plan(path: str, raw: RawBatch, summary: SendSummary, unknown: list[Loc]) -> _Planned:
    where = f"{path} {raw.label}"
    request, errors = batch_from_json(raw.obj, unknown=unknown)
    bad: dict[str, set[int]] = {name: set() for name in (*_LISTS, "execution", "batch")}
    for error in errors:
        loc = error.loc
        if len(loc) >= 2 and loc[0] in _LISTS and isinstance(loc[1], int):
            name, index = str(loc[0]), loc[1]
            kind = name.removesuffix("s")
        elif loc[:1] == ("execution",):
            name, index, kind = "execution", 0, "execution"
        else:  # the batch itself, or a list that is not a list: no record to blame
            name, index, kind = "batch", 0, "batch"
        bad[name].add(index)
        summary.rejections.append(
            Rejection(where, kind, index if kind != "batch" else None, format_loc(loc), error.msg)
        )
    summary.rejected += sum(len(indices) for indices in bad.values())

    clean = ingest_pb2.WriteRequest(execution_id=request.execution_id)
    if request.HasField("execution") and not bad["execution"]:
        clean.execution.CopyFrom(request.execution)
    origin: dict[str, list[int]] = {}
    for name in _LISTS:
        kept = [i for i in range(len(getattr(request, name))) if i not in bad[name]]
        target, source = getattr(clean, name), getattr(request, name)
        for i in kept:  # CopyFrom, not extend: extend re-parses every record
            target.add().CopyFrom(source[i])
        origin[name] = kept
    size = sum(len(getattr(request, name)) for name in _LISTS) + request.HasField("execution")
    return _Planned(where, path, raw.label, clean, size, origin)


async def send_files(
    paths: Sequence[Path],
    target: str,
    *,
    console: Console | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 30.0,  # noqa: ASYNC109 - the deadline of each Write, not of the whole send
) -> SendSummary:
    """Send every batch of `paths` to the IngestService at `target`, in file order, and print
    parse errors, a progress bar and a summary on `console`. `timeout` is the deadline of each
    Write. Batches go one at a time: a record sent twice (at start, then at completion) merges
    in order, so order matters."""
    console = console or Console()
    summary = SendSummary()
    # Files are read before the channel opens: there is nothing else for the loop to do yet,
    # and the progress bar needs the total.
    plans = _read_all(paths, summary, console)
    total = sum(p.size for p in plans)
    progress = Progress(
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        console=console,
        # A bar redrawn into a CI log is noise; the summary says it all there.
        disable=not console.is_terminal,
    )
    stopped: str | None = None
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with progress:
            task = progress.add_task("send", total=total)
            for plan in plans:
                if stopped is not None:
                    summary.failed_files.append((plan.path, f"{plan.label}: not sent: {stopped}"))
                elif _records(plan.request):
                    try:
                        response = await _write(stub, plan.request, metadata, timeout)
                    except grpc.aio.AioRpcError as exc:
                        reason = f"{exc.code().name}: {exc.details()}"
                        summary.failed_files.append((plan.path, f"{plan.label}: {reason}"))
                        if exc.code() in _FATAL:
                            stopped = reason
                    else:
                        _count(summary, plan, response)
                progress.advance(task, plan.size)
    _print_summary(console, summary)
    return summary


def _read_all(paths: Sequence[Path], summary: SendSummary, console: Console) -> list[_Planned]:
    plans: list[_Planned] = []
    for path in paths:
        try:
            raws = load_batches(path)
        except BatchFileError as exc:
            summary.failed_files.append((str(path), str(exc)))
            continue
        summary.files += 1
        summary.batches += len(raws)
        unknown: list[Loc] = []
        listed = len(summary.rejections)
        plans.extend(_plan(str(path), raw, summary, unknown) for raw in raws)
        new = summary.rejections[listed:]
        for r in new[:MAX_LISTED]:
            console.print(
                f"{r.where}: {r.field or '(batch)'}: {r.description}", markup=False, highlight=False
            )
        if len(new) > MAX_LISTED:
            more = len(new) - MAX_LISTED
            console.print(f"{path}: ... and {more} more parse errors", markup=False)
        # One warning per field name, not per record: a typo repeats in every record.
        names = sorted({re.sub(r"\[\d+\]", "[*]", format_loc(loc)) for loc in unknown})
        for name in names:
            console.print(
                f"{path}: warning: unknown field {name} ignored", markup=False, highlight=False
            )
    return plans


def _records(request: ingest_pb2.WriteRequest) -> int:
    return (
        len(request.turns)
        + len(request.tool_calls)
        + len(request.tasks)
        + int(request.HasField("execution"))
    )


async def _write(
    stub: ingest_pb2_grpc.IngestServiceStub,
    request: ingest_pb2.WriteRequest,
    metadata: Sequence[tuple[str, str]],
    deadline: float,
) -> ingest_pb2.WriteResponse:
    """Write with retries on UNAVAILABLE. Retrying is safe: a write merges by record key, so a
    request that did commit before the connection broke changes nothing the second time."""
    backoff = FIRST_BACKOFF
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            response: ingest_pb2.WriteResponse = await stub.Write(
                request, metadata=tuple(metadata) or None, timeout=deadline
            )
            return response
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == MAX_ATTEMPTS:
                raise
            hint = _retry_delay(exc)
            # Jitter keeps many senders restarted together from retrying in lockstep.
            delay = hint if hint is not None else backoff * random.uniform(0.8, 1.2)
            await asyncio.sleep(min(delay, MAX_BACKOFF))
            backoff *= 2
    raise AssertionError("unreachable")


def _retry_delay(exc: grpc.aio.AioRpcError) -> float | None:
    """The server's google.rpc.RetryInfo delay, when its status details carry one."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details inconsistent with the status: ignore the hint, keep backoff
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, float(info.retry_delay.ToTimedelta().total_seconds()))
    return None


def _count(summary: SendSummary, plan: _Planned, response: ingest_pb2.WriteResponse) -> None:
    total = response.counts.total
    summary.created += total.created
    summary.updated += total.updated
    summary.unchanged += total.unchanged
    summary.rejected += total.rejected
    for rejection in response.rejections:
        kind, name = _KINDS.get(rejection.kind, ("record", ""))
        sent = rejection.index
        kept = plan.origin.get(name, [])
        # The server numbers records in the request we sent; map back to the file's numbering.
        index = kept[sent] if 0 <= sent < len(kept) else sent
        for v in rejection.violations or [error_details_pb2.BadRequest.FieldViolation()]:
            path = v.field
            prefix = f"{name}[{sent}]"
            if name in _LISTS and path.startswith(prefix):
                path = f"{name}[{index}]{path[len(prefix) :]}"
            summary.rejections.append(Rejection(plan.where, kind, index, path, v.description))


def _print_summary(console: Console, summary: SendSummary) -> None:
    counts = Table(title="turnstream send", show_header=False)
    counts.add_column("", style="bold")
    counts.add_column("", justify="right")
    for label, value in (
        ("files", summary.files),
        ("batches", summary.batches),
        ("created", summary.created),
        ("updated", summary.updated),
        ("unchanged", summary.unchanged),
        ("rejected", summary.rejected),
        ("failed", len(summary.failed_files)),
    ):
        counts.add_row(label, str(value))
    console.print(counts)
    if summary.rejections:
        # One line per violation, never a table: field paths must stay whole (and greppable) in
        # a CI log, where a table is squeezed to 80 columns and cut.
        console.print(f"rejected ({len(summary.rejections)}):", style="bold")
        for r in summary.rejections[:MAX_LISTED]:
            console.print(
                f"  {r.where}: {r.kind}: {r.field}: {r.description}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if len(summary.rejections) > MAX_LISTED:
            console.print(f"  ... and {len(summary.rejections) - MAX_LISTED} more")
    for path, reason in summary.failed_files:
        console.print(f"failed: {path}: {reason}", markup=False, highlight=False, style="red")
