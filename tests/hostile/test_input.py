"""Hostile input through a real server (issue 6): bytes that do not parse, Structs nested past the
parser's limit, and records that parse but cannot be stored as they are. Each case has the
outcome the issue demands: malformed bytes are the caller's error (INVALID_ARGUMENT naming the
problem, kept as a dead letter with the raw bytes), a bad record is rejected at its field path
and dead-lettered while its siblings are stored, and no answer shows a Python class."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.dbutil import rows
from tests.property.checks import strings
from tests.serving import ingest_stub, running_server
from turnstream.core import validate
from turnstream.server import Server
from turnstream.v1 import ingest_pb2, records_pb2

SERVICE = "/turnstream.v1.IngestService/"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
T0 = NOW - dt.timedelta(hours=1)
YEAR_1 = -62_135_596_800  # 0001-01-01T00:00:00Z
YEAR_10000 = 253_402_300_800  # 10000-01-01T00:00:00Z
# What a caller must never read: a Python class, a traceback, an exception's class name.
PYTHON_INTERNALS = re.compile(r"<class|Traceback|\b[A-Z][A-Za-z]*(Error|Exception)\b")


def assert_plain(text: str) -> None:
    found = PYTHON_INTERNALS.search(text)
    assert found is None, f"a Python class shown to the caller: {found.group()!r} in {text!r}"


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details: {error.code()} {error.details()}"
    assert_plain(status.message)
    return status


def detail(status: status_pb2.Status, cls: Any) -> Any:
    found = [d for d in status.details if d.Is(cls.DESCRIPTOR)]
    assert len(found) == 1, f"{cls.DESCRIPTOR.name} details: {len(found)}"
    out = cls()
    found[0].Unpack(out)
    return out


def violations_of(status: status_pb2.Status) -> list[Any]:
    bad = detail(status, error_details_pb2.BadRequest)
    for v in bad.field_violations:
        assert_plain(v.description)
    return list(bad.field_violations)


# -- wire encoding by hand: the Python encoder refuses some of what an attacker can send ---------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct holding `depth` Structs in all: {"d": {"d": ... {}}}."""
    struct = b""
    for _ in range(depth - 1):
        value = field_bytes(5, struct)  # Value.struct_value = 5
        entry = field_bytes(1, b"d") + field_bytes(2, value)  # map entry: key = 1, value = 2
        struct = field_bytes(1, entry)  # Struct.fields = 1
    return struct


def turn_with_metrics(turn: records_pb2.Turn, metrics: bytes) -> bytes:
    return turn.SerializeToString() + field_bytes(24, metrics)  # Turn.metrics = 24


def deepest_parseable() -> int:
    """The most nested Structs the server's parser takes in a Write's turn metrics."""
    for depth in range(2, 200):
        data = field_bytes(3, turn_with_metrics(turn(1), nested_struct(depth)))
        try:
            ingest_pb2.WriteRequest.FromString(data)
        except Exception:
            return depth - 1
    raise AssertionError("no depth limit")


# -- records -----------------------------------------------------------------------------------


def turn(n: int, execution_id: str = "exec-ok", **fields: Any) -> records_pb2.Turn:
    t = records_pb2.Turn(execution_id=execution_id, turn_number=n, model="claude-sonnet-4-5")
    t.started_at.FromDatetime(T0 + dt.timedelta(seconds=n))
    t.input_tokens, t.output_tokens = 100, 20
    for name, value in fields.items():
        setattr(t, name, value)
    return t


async def raw_call(server: Server, method: str, data: bytes) -> grpc.aio.AioRpcError:
    """Send bytes as they are; the call must fail."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(data, timeout=10)
        return info.value


# -- bytes that do not parse -------------------------------------------------------------------

REQUESTS: dict[str, tuple[str, bytes]] = {
    # method -> (the message it takes, a valid encoding to cut short)
    "Write": (
        "turnstream.v1.WriteRequest",
        ingest_pb2.WriteRequest(turns=[turn(1)]).SerializeToString(),
    ),
    "CreateTurn": (
        "turnstream.v1.CreateTurnRequest",
        ingest_pb2.CreateTurnRequest(turn=turn(1)).SerializeToString(),
    ),
    "GetStream": (
        "turnstream.v1.GetStreamRequest",
        ingest_pb2.GetStreamRequest(stream_id="stream-1").SerializeToString(),
    ),
}


def malformed_payloads(method: str, valid: bytes) -> dict[str, bytes]:
    bad_utf8 = field_bytes(1, b"\xff\xfe")  # field 1 is a string: execution_id, stream_id
    if method == "CreateTurn":
        bad_utf8 = field_bytes(1, bad_utf8)  # CreateTurnRequest.turn.execution_id
    return {
        "garbage": b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5",
        "truncated": valid[: len(valid) - 3],
        "length-past-the-end": b"\x0a\x7fabc",  # field 1 says 127 bytes follow; 3 do
        "wire-type-6": b"\x0e",  # field 1, wire type 6: there is no such wire type
        "end-group-without-start": b"\x0c",  # field 1, wire type 4
        "bad-utf8-in-a-string": bad_utf8,
    }


@pytest.mark.parametrize("method", sorted(REQUESTS))
async def test_bytes_that_do_not_parse_are_invalid_argument_and_kept_raw(
    database_url: str, method: str
) -> None:
    message, valid = REQUESTS[method]
    payloads = malformed_payloads(method, valid)
    async with running_server(database_url) as server:
        for name, data in payloads.items():
            error = await raw_call(server, method, data)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
            assert f"not a valid {message}" in error.details(), (name, error.details())
            assert_plain(error.details())
            status = status_of(error)
            assert status.code == code_pb2.INVALID_ARGUMENT
            assert detail(status, error_details_pb2.ErrorInfo).reason == "MALFORMED_REQUEST"
            (violation,) = violations_of(status)
            assert violation.description, name
    letters = rows(database_url, "rejected_records")
    kept = {base64.b64decode(r["payload"]["_raw_base64"]) for r in letters}
    assert kept == set(payloads.values())
    for letter in letters:
        assert letter["door"] == f"grpc.{method}"
        assert letter["violations"][0]["reason"] == "MALFORMED_REQUEST"
        assert_plain(json.dumps(letter["violations"]))


async def test_a_known_field_with_the_wrong_wire_type_is_invalid_argument(
    database_url: str,
) -> None:
    # WriteRequest.turns (field 3) is a message; here it arrives as a varint.
    data = turn(1).SerializeToString()
    wrong = varint(3 << 3 | 0) + varint(7) + field_bytes(3, data)
    async with running_server(database_url) as server:
        error = await raw_call(server, "Write", wrong)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert_plain(error.details())
    assert rows(database_url, "turns") == []
    (letter,) = rows(database_url, "rejected_records")
    assert base64.b64decode(letter["payload"]["_raw_base64"]) == wrong


# -- Structs nested deep -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["Write", "CreateTurn"])
async def test_a_struct_nested_past_the_parser_limit_is_invalid_argument(
    database_url: str, method: str
) -> None:
    deep = turn_with_metrics(turn(2), nested_struct(deepest_parseable() + 1))
    if method == "Write":
        data = field_bytes(3, turn(1).SerializeToString()) + field_bytes(3, deep)
    else:
        data = field_bytes(1, deep)
    async with running_server(database_url) as server:
        error = await raw_call(server, method, data)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "depth" in error.details().lower(), error.details()
        assert_plain(error.details())
        violations_of(status_of(error))
    (letter,) = rows(database_url, "rejected_records")
    assert base64.b64decode(letter["payload"]["_raw_base64"]) == data
    assert rows(database_url, "turns") == []


@pytest.mark.parametrize("past_the_limit", [False, True], ids=["at-the-limit", "one-past"])
async def test_a_struct_that_parses_is_stored_up_to_the_depth_limit_and_rejected_past_it(
    database_url: str, past_the_limit: bool
) -> None:
    """Structs the parser takes: up to validate.MAX_STRUCT_DEPTH (docs/limits.md) the record is
    stored with every level intact; one level deeper it is rejected with TOO_DEEP inside
    turns[1].metrics. Either way the answer is OK and the siblings are stored."""
    depth = validate.MAX_STRUCT_DEPTH + past_the_limit
    assert depth <= deepest_parseable()
    data = b"".join(
        field_bytes(3, t)
        for t in (
            turn(1).SerializeToString(),
            turn_with_metrics(turn(2), nested_struct(depth)),
            turn(3).SerializeToString(),
        )
    )
    async with (
        running_server(database_url) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        write = channel.unary_unary(
            SERVICE + "Write",
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.WriteResponse.FromString,
        )
        response = await write(data, timeout=10)
    stored = {r["turn_number"]: r for r in rows(database_url, "turns")}
    if past_the_limit:
        (rejection,) = response.rejections
        assert rejection.index == 1
        assert_named(list(rejection.violations), "turns[1]", ("metrics",))
        assert {v.reason for v in rejection.violations} == {"TOO_DEEP"}
        assert set(stored) == {1, 3}
        (letter,) = rows(database_url, "rejected_records")
        assert letter["violations"][0]["field"].startswith("turns[1].metrics")
    else:
        assert not response.rejections
        assert set(stored) == {1, 2, 3}
        level, levels = stored[2]["metrics"], 1
        while level:
            level, levels = level["d"], levels + 1
        assert levels == depth


# -- records that parse but cannot be stored as they are ---------------------------------------


@dataclass(frozen=True)
class Bad:
    """A turn that parses but must be rejected, and the field paths its violation may name
    (relative to the record: "started_at" -> "turns[1].started_at" / "turn.started_at")."""

    make: Callable[[], records_pb2.Turn]
    fields: tuple[str, ...]


def _with(change: Callable[[records_pb2.Turn], None], **fields: Any) -> Callable[[], Any]:
    def make() -> records_pb2.Turn:
        t = turn(2, "exec-bad", **fields)
        change(t)
        return t

    return make


def _metrics(value: float) -> Callable[[records_pb2.Turn], None]:
    return lambda t: t.metrics.update({"latency_ms": 12, "score": value})


def _nothing(_t: records_pb2.Turn) -> None:
    pass


def _seconds(name: str, seconds: int) -> Callable[[records_pb2.Turn], None]:
    return lambda t: setattr(getattr(t, name), "seconds", seconds)


def _nanos(name: str, nanos: int) -> Callable[[records_pb2.Turn], None]:
    return lambda t: setattr(getattr(t, name), "nanos", nanos)


def _completed(t: records_pb2.Turn) -> None:
    t.completed_at.FromDatetime(T0 + dt.timedelta(minutes=5))


BAD = [
    pytest.param(
        Bad(_with(_seconds("started_at", YEAR_10000 + 86_400)), ("started_at",)),
        id="started-at-in-year-10000",
    ),
    pytest.param(
        Bad(
            _with(lambda t: (_completed(t), _seconds("completed_at", YEAR_10000)(t))),
            ("completed_at",),
        ),
        id="completed-at-in-year-10000",
    ),
    pytest.param(
        Bad(_with(_seconds("started_at", YEAR_1 - 1)), ("started_at",)),
        id="started-at-before-year-1",
    ),
    pytest.param(
        Bad(_with(_nanos("started_at", -1)), ("started_at",)),
        id="nanos-negative",
    ),
    pytest.param(
        Bad(_with(lambda t: (_completed(t), _nanos("completed_at", 10**9)(t))), ("completed_at",)),
        id="nanos-one-billion",
    ),
    pytest.param(Bad(_with(_metrics(math.nan)), ("metrics",)), id="metrics-nan"),
    pytest.param(Bad(_with(_metrics(math.inf)), ("metrics",)), id="metrics-infinity"),
    pytest.param(
        Bad(_with(_metrics(-math.inf)), ("metrics",)),
        id="metrics-minus-infinity",
    ),
    pytest.param(
        Bad(_with(lambda t: setattr(t, "execution_id", "x" * 300)), ("execution_id",)),
        id="execution-id-300-chars",
    ),
    pytest.param(
        Bad(_with(lambda t: setattr(t, "execution_id", "exec\x00bad")), ("execution_id",)),
        id="execution-id-with-nul",
    ),
    pytest.param(
        Bad(
            _with(_nothing, input_cost=1e308, output_cost=1e308),
            ("input_cost", "output_cost", "total_cost"),
        ),
        id="costs-sum-beyond-float-range",
    ),
    pytest.param(
        Bad(
            _with(_nothing, runtime_minutes=1e308, model_weight=2.0),
            ("runtime_minutes", "model_weight", "aem_value"),
        ),
        id="aem-beyond-float-range",
    ),
    pytest.param(
        # Priced by the worker: a turn the server prices gets the table's price_version instead.
        Bad(
            _with(_nothing, price_version="v" * 65, input_cost=0.1, output_cost=0.2),
            ("price_version",),
        ),
        id="price-version-longer-than-its-column",
    ),
]


def assert_named(violations: list[Any], prefix: str, fields: tuple[str, ...]) -> None:
    """Every violation is inside the record's path, and one names a field of `fields` or a path
    inside it ("turns[1].metrics.score")."""
    paths = [v.field for v in violations]
    assert violations and all(p.startswith(prefix + ".") for p in paths), paths
    named = [f"{prefix}.{f}" for f in fields]
    assert any(p == n or p.startswith((n + ".", n + "[")) for p in paths for n in named), paths
    for v in violations:
        assert v.reason and v.description, v
        assert_plain(v.description)


def assert_dead_letter(
    letter: dict[str, Any], door: str, prefix: str, sent: records_pb2.Turn
) -> None:
    """Kept with its violations and its payload: the exact bytes, or JSON that reads back."""
    assert letter["door"] == door
    assert letter["kind"] == "turn"
    assert all(v["field"].startswith(prefix + ".") for v in letter["violations"])
    eid = letter["execution_id"]
    assert eid is None or (len(eid) <= 256 and "\x00" not in eid), eid
    payload = letter["payload"]
    if "_raw_base64" in payload:
        assert records_pb2.Turn.FromString(base64.b64decode(payload["_raw_base64"])) == sent
    else:
        kept = json_format.ParseDict(payload, records_pb2.Turn())
        assert (kept.turn_number, kept.model) == (sent.turn_number, sent.model)


@pytest.mark.parametrize("bad", BAD)
async def test_a_bad_record_is_rejected_at_its_path_and_its_siblings_stored(
    database_url: str, bad: Bad
) -> None:
    request = ingest_pb2.WriteRequest(turns=[turn(1), bad.make(), turn(3)])
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        # Write: partial success.
        response = await stub.Write(request, timeout=10)
        assert response.counts.turns.created == 2
        assert response.counts.turns.rejected == 1
        (rejection,) = response.rejections
        assert (rejection.kind, rejection.index) == (records_pb2.RECORD_KIND_TURN, 1)
        assert_named(list(rejection.violations), "turns[1]", bad.fields)
        assert sorted(r["turn_number"] for r in rows(database_url, "turns")) == [1, 3]
        (letter,) = rows(database_url, "rejected_records")
        assert_dead_letter(letter, "grpc.Write", "turns[1]", bad.make())

        # CreateTurn: INVALID_ARGUMENT with BadRequest, the dead letter stored first.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateTurn(ingest_pb2.CreateTurnRequest(turn=bad.make()), timeout=10)
        error = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert_plain(error.details())
        status = status_of(error)
        assert detail(status, error_details_pb2.ErrorInfo).reason == "INVALID_RECORD"
        assert_named(violations_of(status), "turn", bad.fields)
    letters = [r for r in rows(database_url, "rejected_records") if r["door"] == "grpc.CreateTurn"]
    (letter,) = letters
    assert_dead_letter(letter, "grpc.CreateTurn", "turn", bad.make())
    assert sorted(r["turn_number"] for r in rows(database_url, "turns")) == [1, 3]


async def test_one_write_mixing_every_bad_record_with_valid_turns(database_url: str) -> None:
    bads = [p.values[0] for p in BAD]
    request = ingest_pb2.WriteRequest()
    expected_bad = {}
    for i, bad in enumerate(bads):
        request.turns.append(turn(100 + i))
        request.turns.append(bad.make())
        expected_bad[2 * i + 1] = bad
    request.turns.append(turn(999))
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        response = await stub.Write(request, timeout=10)
    assert response.counts.turns.created == len(bads) + 1
    assert {r.index for r in response.rejections} == set(expected_bad)
    for rejection in response.rejections:
        prefix = f"turns[{rejection.index}]"
        assert_named(list(rejection.violations), prefix, expected_bad[rejection.index].fields)
    stored = sorted(r["turn_number"] for r in rows(database_url, "turns"))
    assert stored == [*range(100, 100 + len(bads)), 999]
    assert len(rows(database_url, "rejected_records")) == len(bads)


# -- turnstream send ---------------------------------------------------------------------------


async def send(server: Server, path: Path) -> tuple[int, str]:
    """`turnstream send` as a user runs it, in a subprocess (the server runs in this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turnstream.cli",
        "send",
        "--target",
        f"127.0.0.1:{server.grpc_port}",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def kubiya_turn(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "turn_number": n,
        "model": "claude-sonnet-4-5",
        "started_at": (T0 + dt.timedelta(seconds=n)).isoformat(),
        "input_tokens": 100,
        "output_tokens": 20,
        **fields,
    }


SEND_CASES = [
    pytest.param(
        {"metrics": {"latency_ms": 12, "score": math.nan}},
        "turns[1].metrics",
        id="nan-in-metrics",
    ),
    pytest.param({"input_cost": math.nan}, "turns[1].input_cost", id="nan-cost"),
    pytest.param(
        {"metrics": {"x": math.inf}},
        "turns[1].metrics",
        id="infinity-in-metrics",
    ),
    pytest.param(
        {"metrics": json.loads('{"d": ' * 40 + "1" + "}" * 40)},
        "turns[1].metrics",
        id="metrics-nested-40-deep",
    ),
]


@pytest.mark.parametrize(("hostile", "path"), SEND_CASES)
async def test_send_of_a_file_with_a_hostile_value_stores_the_rest(
    database_url: str, tmp_path: Path, hostile: dict[str, Any], path: str
) -> None:
    """Python's json writes NaN for a float NaN: a file a worker really produces. One such
    record is rejected (here or by the server); the batch is not failed, the rest is stored."""
    batch = {
        "execution_id": "exec-json",
        "turns": [kubiya_turn(1), kubiya_turn(2, **hostile), kubiya_turn(3)],
    }
    file = tmp_path / "batch.json"
    file.write_text(json.dumps(batch))  # allow_nan: writes NaN / Infinity, as workers do
    async with running_server(database_url) as server:
        code, out = await send(server, file)
    assert code == 1, out  # some records were rejected
    assert path in out, out
    assert_plain(out)
    assert "INTERNAL" not in out and "UNKNOWN" not in out, out
    assert sorted(r["turn_number"] for r in rows(database_url, "turns")) == [1, 3]


async def test_bad_records_of_every_kind_are_rejected_beside_valid_ones(database_url: str) -> None:
    """The same outcome for tool calls, tasks and the execution: an undefined enum number, a
    Timestamp out of range, a key with a NUL, a Struct Value with no kind (a client that built
    it wrong: storing null would lose its value silently) beside valid records."""
    request = ingest_pb2.WriteRequest(execution_id="exec-kinds")
    request.execution.status = 99  # no ExecutionStatus 99
    good_call = request.tool_calls.add(tool_name="read_file", tool_use_id="toolu_1")
    good_call.started_at.FromDatetime(T0)
    good_call.tool_input.update({"path": "a.py", "flags": None})
    bad_call = request.tool_calls.add(tool_name="bash", tool_use_id="toolu_\x00")
    bad_call.started_at.seconds = YEAR_10000
    bad_call.tool_input.fields["unset"].Clear()  # the map entry exists, its Value has no kind
    good_task = request.tasks.add(task_description="Fix the test", task_id="task-1")
    good_task.status = records_pb2.TASK_STATUS_RUNNING
    request.tasks.add(task_description="Plan", task_id="task-2", status=42)  # type: ignore[arg-type]
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        response = await stub.Write(request, timeout=10)
    paths = {(r.kind, r.index): sorted(v.field for v in r.violations) for r in response.rejections}
    assert paths == {
        (records_pb2.RECORD_KIND_EXECUTION, 0): ["execution.status"],
        (records_pb2.RECORD_KIND_TOOL_CALL, 1): [
            "tool_calls[1].started_at",
            "tool_calls[1].tool_input.unset",
            "tool_calls[1].tool_use_id",
        ],
        (records_pb2.RECORD_KIND_TASK, 1): ["tasks[1].status"],
    }
    (call,) = rows(database_url, "tool_calls")
    assert (call["tool_use_id"], call["tool_input"]) == ("toolu_1", {"path": "a.py", "flags": None})
    (task,) = rows(database_url, "tasks")
    assert (task["task_id"], task["status"]) == ("task-1", "running")
    # The execution itself was rejected; its row is derived from the records that were stored.
    (execution,) = rows(database_url, "executions")
    assert execution["status"] is None
    letters = rows(database_url, "rejected_records")
    assert sorted(r["kind"] for r in letters) == ["execution", "task", "tool_call"]
    for letter in letters:
        assert not [t for t in strings(letter) if "\x00" in t], letter
