"""IngestService.Write and Create* against a real server and a real database (both dialects)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.dbutil import rows, snapshot
from tests.serving import ingest_stub, running_server
from turnstream.v1 import ingest_pb2, ingest_pb2_grpc, records_pb2

T0 = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)


def ts(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def turn(n: int, execution_id: str = "exec-1", **fields: object) -> records_pb2.Turn:
    t = records_pb2.Turn(execution_id=execution_id, turn_number=n, model="claude-sonnet-4-5")
    t.started_at.FromDatetime(ts(n * 10))
    for k, v in fields.items():
        if isinstance(v, dt.datetime):
            getattr(t, k).FromDatetime(v)
        else:
            setattr(t, k, v)
    return t


def full_batch() -> ingest_pb2.WriteRequest:
    """The Kubiya batch of the seed page, with realistic values in every field."""
    req = ingest_pb2.WriteRequest(execution_id="exec-seed")
    t = req.turns.add(
        execution_id="exec-seed",
        turn_number=1,
        turn_id="turn-seed-1",
        model="claude-sonnet-4-5",
        model_provider="anthropic",
        duration_ms=4200,
        input_tokens=1200,
        output_tokens=350,
        cache_read_tokens=8000,
        cache_creation_tokens=1500,
        total_tokens=1550,
        input_cost=0.0036,
        output_cost=0.00525,
        cache_read_cost=0.0024,
        cache_creation_cost=0.005625,
        total_cost=0.016875,
        finish_reason="tool_use",
        response_preview="I'll read the failing test first.",
        tools_called_count=2,
        tools_called_names=["read_file", "run_tests"],
        error_message="",
        runtime_minutes=0.07,
        model_weight=1.0,
        tool_calls_weight=1.0,
        aem_value=0.07,
        aem_cost=0.0105,
    )
    t.started_at.FromDatetime(ts(0))
    t.completed_at.FromDatetime(ts(4.2))
    t.metrics.update({"latency_first_token_ms": 610, "retries": 0})
    c = req.tool_calls.add(
        execution_id="exec-seed",
        turn_id="turn-seed-1",
        tool_name="read_file",
        tool_use_id="toolu_01ABC",
        duration_ms=35,
        tool_output="def test_add():\n    assert add(1, 2) == 3\n",
        tool_output_size=42,
        success=True,
        error_message="",
        error_type="",
    )
    c.started_at.FromDatetime(ts(4.3))
    c.completed_at.FromDatetime(ts(4.335))
    c.tool_input.update({"path": "tests/test_math.py"})
    c.metadata.update({"sandbox": "py311"})
    k = req.tasks.add(
        execution_id="exec-seed",
        task_number=1,
        task_id="task-seed-1",
        task_description="Fix the failing test in tests/test_math.py",
        task_type="bugfix",
        status=records_pb2.TASK_STATUS_COMPLETED,
        duration_ms=9000,
        result="Test passes",
    )
    k.started_at.FromDatetime(ts(0))
    k.completed_at.FromDatetime(ts(9))
    k.metadata.update({"priority": "high"})
    return req


async def test_seed_batch_is_stored_intact_and_a_resend_changes_nothing(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        req = full_batch()
        resp = await stub.Write(req)
        assert resp.counts.total.created == 3
        assert resp.counts.turns.created == 1
        assert resp.counts.tool_calls.created == 1
        assert resp.counts.tasks.created == 1
        assert resp.execution_id == "exec-seed"
        assert not resp.rejections

        (row,) = rows(database_url, "turns", execution_id="exec-seed")
        sent = req.turns[0]
        for field in [
            "turn_id",
            "model",
            "model_provider",
            "duration_ms",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
            "total_tokens",
            "input_cost",
            "output_cost",
            "cache_read_cost",
            "cache_creation_cost",
            "total_cost",
            "finish_reason",
            "response_preview",
            "tools_called_count",
            "runtime_minutes",
            "model_weight",
            "tool_calls_weight",
            "aem_value",
            "aem_cost",
        ]:
            assert row[field] == getattr(sent, field), field
        assert row["tools_called_names"] == ["read_file", "run_tests"]
        assert row["metrics"] == {"latency_first_token_ms": 610, "retries": 0}
        assert row["started_at"] == ts(0) and row["completed_at"] == ts(4.2)
        assert row["price_version"] is None  # costs were sent: kept, not re-priced

        (call,) = rows(database_url, "tool_calls", execution_id="exec-seed")
        assert call["tool_input"] == {"path": "tests/test_math.py"}
        assert call["tool_output"] == sent_output(req) and call["success"] is True
        (task,) = rows(database_url, "tasks", execution_id="exec-seed")
        assert task["status"] == "completed" and task["metadata"] == {"priority": "high"}

        before = snapshot(database_url)
        again = await stub.Write(full_batch())
        assert again.counts.total.unchanged == 3
        assert again.counts.total.created == again.counts.total.updated == 0
        assert snapshot(database_url) == before


def sent_output(req: ingest_pb2.WriteRequest) -> str:
    return req.tool_calls[0].tool_output


async def test_partial_success_stores_valid_and_keeps_invalid_as_dead_letters(
    database_url: str,
) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        req = ingest_pb2.WriteRequest(execution_id="exec-mix")
        req.turns.extend([turn(1, "exec-mix"), turn(2, "exec-mix"), turn(3, "exec-mix")])
        bad_time = turn(4, "exec-mix")
        bad_time.ClearField("started_at")
        bad_tokens = turn(5, "exec-mix", input_tokens=-3)
        bad_tokens.model = ""
        req.turns.insert(1, bad_time)
        req.turns.append(bad_tokens)
        resp = await stub.Write(req)

        assert resp.counts.turns.created == 3
        assert resp.counts.turns.rejected == 2
        assert [r.index for r in resp.rejections] == [1, 4]
        assert [v.field for v in resp.rejections[0].violations] == ["turns[1].started_at"]
        assert {v.field for v in resp.rejections[1].violations} == {
            "turns[4].model",
            "turns[4].input_tokens",
        }
        stored = rows(database_url, "turns", execution_id="exec-mix")
        assert sorted(r["turn_number"] for r in stored) == [1, 2, 3]
        dead = rows(database_url, "rejected_records")
        assert len(dead) == 2
        assert {d["payload"].get("turn_number") for d in dead} == {4, 5}
        assert all(d["door"] == "grpc.Write" and d["kind"] == "turn" for d in dead)
        assert {v["field"] for d in dead for v in d["violations"]} >= {"turns[1].started_at"}

        # A retry of the same request stores nothing twice, dead letters included.
        before = snapshot(database_url)
        await stub.Write(req)
        assert snapshot(database_url) == before


async def test_turn_sent_at_start_and_at_completion_is_one_complete_row(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        start = turn(1, turn_id="turn-a", input_tokens=900)
        first = await stub.Write(ingest_pb2.WriteRequest(turns=[start]))
        assert first.counts.turns.created == 1
        done = turn(
            1,
            turn_id="turn-a",
            completed_at=ts(12),
            input_tokens=900,
            output_tokens=120,
            finish_reason="end_turn",
        )
        second = await stub.Write(ingest_pb2.WriteRequest(turns=[done]))
        assert second.counts.turns.updated == 1

        (row,) = rows(database_url, "turns", execution_id="exec-1")
        assert row["model"] == "claude-sonnet-4-5"  # kept from the start
        assert row["output_tokens"] == 120 and row["finish_reason"] == "end_turn"
        assert row["completed_at"] == ts(12) and row["duration_ms"] == 2000
        assert row["total_tokens"] == 1020
        assert row["revision"] == 2


async def test_task_status_only_moves_forward(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:

        def task(status: int) -> records_pb2.Task:
            return records_pb2.Task(
                execution_id="exec-1", task_id="t1", task_description="build", status=status
            )

        await stub.Write(ingest_pb2.WriteRequest(tasks=[task(records_pb2.TASK_STATUS_RUNNING)]))
        await stub.Write(ingest_pb2.WriteRequest(tasks=[task(records_pb2.TASK_STATUS_COMPLETED)]))
        late = await stub.Write(
            ingest_pb2.WriteRequest(tasks=[task(records_pb2.TASK_STATUS_RUNNING)])
        )
        assert late.counts.tasks.unchanged == 1
        (row,) = rows(database_url, "tasks")
        assert row["status"] == "completed"


async def test_execution_never_sent_is_derived_from_its_records(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        await stub.Write(
            ingest_pb2.WriteRequest(
                turns=[turn(2, "exec-d", completed_at=ts(25)), turn(1, "exec-d")]
            )
        )
        call = records_pb2.ToolCall(execution_id="exec-d", tool_name="grep")
        call.started_at.FromDatetime(ts(40))
        call.completed_at.FromDatetime(ts(41))
        await stub.Write(ingest_pb2.WriteRequest(tool_calls=[call]))
        (execution,) = rows(database_url, "executions", execution_id="exec-d")
        assert execution["started_at"] == ts(10)
        assert execution["completed_at"] == ts(41)

        # Sent explicitly, its fields are stored; derived times never move it the wrong way.
        explicit = records_pb2.Execution(
            execution_id="exec-d",
            workflow_name="fix-tests",
            status=records_pb2.EXECUTION_STATUS_COMPLETED,
            triggered_by=records_pb2.TRIGGER_TYPE_SCHEDULED,
        )
        await stub.Write(ingest_pb2.WriteRequest(execution=explicit))
        (execution,) = rows(database_url, "executions", execution_id="exec-d")
        assert execution["workflow_name"] == "fix-tests"
        assert execution["status"] == "completed" and execution["triggered_by"] == "scheduled"
        assert execution["started_at"] == ts(10)


async def test_unknown_models_stay_unpriced_and_are_counted(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        known = turn(1, input_tokens=1000, output_tokens=10)
        unknown = turn(2, input_tokens=1000, output_tokens=10)
        unknown.model = "acme-llm-9000"
        resp = await stub.Write(ingest_pb2.WriteRequest(turns=[known, unknown]))
        assert resp.counts.turns.created == 2
        assert resp.counts.unpriced_turns == 1
        by_number = {r["turn_number"]: r for r in rows(database_url, "turns")}
        assert by_number[1]["total_cost"] == pytest.approx(1000 * 3e-6 + 10 * 15e-6)
        assert by_number[2]["total_cost"] is None and by_number[2]["price_version"] is None
        assert by_number[2]["total_tokens"] == 1010  # the tokens are still counted


async def test_create_turn_answers_derived_fields(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        t = turn(1, completed_at=ts(40), input_tokens=1_000_000, output_tokens=100_000)
        resp = await stub.CreateTurn(ingest_pb2.CreateTurnRequest(turn=t))
        got = resp.turn
        assert got.total_tokens == 1_100_000
        assert got.duration_ms == 30_000
        assert got.input_cost == pytest.approx(3.0)  # sonnet: $3 / 1M input tokens
        assert got.output_cost == pytest.approx(1.5)  # $15 / 1M output tokens
        assert got.total_cost == pytest.approx(4.5)
        assert got.price_version
        assert got.runtime_minutes == pytest.approx(0.5)
        assert got.aem_value == pytest.approx(0.5)
        assert got.aem_cost == pytest.approx(0.075)
        (row,) = rows(database_url, "turns")
        assert row["total_cost"] == pytest.approx(4.5)


async def test_create_invalid_turn_is_invalid_argument_with_field_violations(
    database_url: str,
) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        bad = records_pb2.Turn(execution_id="exec-1", model="m", output_tokens=-1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateTurn(ingest_pb2.CreateTurnRequest(turn=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(info.value)
        assert status is not None
        details = {d.TypeName(): d for d in status.details}
        bad_request = error_details_pb2.BadRequest()
        details["google.rpc.BadRequest"].Unpack(bad_request)
        fields = {v.field for v in bad_request.field_violations}
        assert fields == {"turn.turn_number", "turn.started_at", "turn.output_tokens"}
        error_info = error_details_pb2.ErrorInfo()
        details["google.rpc.ErrorInfo"].Unpack(error_info)
        assert error_info.reason == "INVALID_RECORD" and error_info.domain == "turnstream.dev"
        (dead,) = rows(database_url, "rejected_records")
        assert dead["door"] == "grpc.CreateTurn"


async def test_create_tool_call_and_task(database_url: str) -> None:
    async with running_server(database_url) as server, ingest_stub(server) as stub:
        call = records_pb2.ToolCall(execution_id="e", tool_name="bash", tool_output="x" * 10_050)
        call.started_at.FromDatetime(ts(0))
        resp = await stub.CreateToolCall(ingest_pb2.CreateToolCallRequest(tool_call=call))
        assert resp.tool_call.tool_output_size == 10_050
        assert resp.tool_call.tool_output.endswith("... [truncated]")
        task = records_pb2.Task(execution_id="e", task_description="plan")
        await stub.CreateTask(ingest_pb2.CreateTaskRequest(task=task))
        assert len(rows(database_url, "tool_calls")) == 1
        assert len(rows(database_url, "tasks")) == 1


async def test_thousand_concurrent_create_turn_calls_from_fifty_clients_land_once(
    database_url: str,
) -> None:
    async with running_server(database_url) as server:
        target = f"127.0.0.1:{server.grpc_port}"

        async def client(c: int) -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                for i in range(20):
                    n = c * 20 + i
                    t = turn(n, f"exec-{c % 7}", turn_id=f"turn-{n}", input_tokens=n)
                    await stub.CreateTurn(ingest_pb2.CreateTurnRequest(turn=t))

        await asyncio.gather(*(client(c) for c in range(50)))
        stored = rows(database_url, "turns")
        assert len(stored) == 1000
        assert sorted(r["turn_id"] for r in stored) == sorted(f"turn-{n}" for n in range(1000))
        assert all(r["revision"] == 1 for r in stored)
        assert server.writer is not None and server.writer.stats.flushes < 1000  # grouped
