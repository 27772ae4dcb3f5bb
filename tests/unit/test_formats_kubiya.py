"""turnstream.formats.kubiya: Kubiya analytics JSON <-> turnstream.v1 messages."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from turnstream.formats import kubiya
from turnstream.formats.kubiya import ParseError
from turnstream.v1 import records_pb2

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kubiya_batch.json"


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return data


def turn_json(**fields: Any) -> dict[str, Any]:
    return {
        "execution_id": "exec-1",
        "turn_number": 1,
        "model": "claude-sonnet-4-5",
        "started_at": "2026-11-01T09:30:00Z",
        **fields,
    }


def test_example_round_trips_every_field() -> None:
    data = example()
    unknown: list[kubiya.Loc] = []
    request, errors = kubiya.batch_from_json(data, unknown=unknown)
    assert errors == []
    assert unknown == []
    assert (len(request.turns), len(request.tool_calls), len(request.tasks)) == (3, 2, 2)
    assert kubiya.batch_to_json(request) == data
    # Field by field through the per-record functions too, and the JSON text survives a dump.
    for name, parse, write in (
        ("turns", kubiya.turn_from_json, kubiya.turn_to_json),
        ("tool_calls", kubiya.tool_call_from_json, kubiya.tool_call_to_json),
        ("tasks", kubiya.task_from_json, kubiya.task_to_json),
    ):
        for record in data[name]:
            message, errors = parse(record)
            assert errors == []
            assert json.loads(json.dumps(write(message))) == record


def test_example_leaves_cost_and_aem_out_of_some_turns() -> None:
    request, _ = kubiya.batch_from_json(example())
    assert request.turns[0].HasField("total_cost")
    assert not request.turns[1].HasField("total_cost")
    assert not request.turns[2].HasField("aem_value")


def test_values_are_typed() -> None:
    turn, errors = kubiya.turn_from_json(
        turn_json(turn_number=12.0, input_cost=1, tools_called_names=["read_file"])
    )
    assert errors == []
    assert turn.turn_number == 12
    assert isinstance(turn.input_cost, float) and turn.input_cost == 1.0
    assert list(turn.tools_called_names) == ["read_file"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T09:30:00", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
        ("2026-11-01T09:30:00.250000", dt.datetime(2026, 11, 1, 9, 30, 0, 250000, tzinfo=dt.UTC)),
        ("2026-11-01 09:30:00", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
        ("2026-11-01T09:30:00Z", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
        ("2026-11-01T11:30:00+02:00", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
        ("2026-11-01T04:00:00-05:30", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
        ("2026-11-01T09:30:00+00:00", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
    ],
)
def test_times_naive_means_utc(text: str, expected: dt.datetime) -> None:
    turn, errors = kubiya.turn_from_json(turn_json(started_at=text))
    assert errors == []
    assert turn.started_at.ToDatetime(tzinfo=dt.UTC) == expected


def test_naive_isoformat_of_python_is_utc() -> None:
    naive = dt.datetime(2026, 11, 1, 9, 30, 5, 123456)
    turn, errors = kubiya.turn_from_json(turn_json(started_at=naive.isoformat()))
    assert errors == []
    assert turn.started_at.ToDatetime(tzinfo=dt.UTC) == naive.replace(tzinfo=dt.UTC)
    assert kubiya.turn_to_json(turn)["started_at"] == "2026-11-01T09:30:05.123456Z"


def test_times_keep_nanoseconds() -> None:
    turn, _ = kubiya.turn_from_json(turn_json(started_at="2026-11-01T09:30:00.123456789Z"))
    assert turn.started_at.nanos == 123456789


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("pending", records_pb2.TASK_STATUS_PENDING),
        ("in_progress", records_pb2.TASK_STATUS_RUNNING),
        ("running", records_pb2.TASK_STATUS_RUNNING),
        ("completed", records_pb2.TASK_STATUS_COMPLETED),
        ("failed", records_pb2.TASK_STATUS_FAILED),
        ("cancelled", records_pb2.TASK_STATUS_CANCELLED),
        ("Completed", records_pb2.TASK_STATUS_COMPLETED),
        ("TASK_STATUS_FAILED", records_pb2.TASK_STATUS_FAILED),
    ],
)
def test_task_status_words(status: str, expected: int) -> None:
    task, errors = kubiya.task_from_json({"task_description": "x", "status": status})
    assert errors == []
    assert task.status == expected


def test_running_is_written_as_kubiya_says_it() -> None:
    task = records_pb2.Task(task_description="x", status=records_pb2.TASK_STATUS_RUNNING)
    assert kubiya.task_to_json(task)["status"] == "in_progress"
    execution = records_pb2.Execution(
        execution_id="e",
        status=records_pb2.EXECUTION_STATUS_RUNNING,
        triggered_by=records_pb2.TRIGGER_TYPE_SCHEDULED,
    )
    out = kubiya.execution_to_json(execution)
    assert (out["status"], out["triggered_by"]) == ("running", "scheduled")


def test_execution_words() -> None:
    execution, errors = kubiya.execution_from_json(
        {"execution_id": "e", "status": "in_progress", "triggered_by": "endpoint"}
    )
    assert errors == []
    assert execution.status == records_pb2.EXECUTION_STATUS_RUNNING
    assert execution.triggered_by == records_pb2.TRIGGER_TYPE_ENDPOINT


def test_null_means_absent() -> None:
    turn, errors = kubiya.turn_from_json(
        turn_json(
            completed_at=None,
            duration_ms=None,
            input_cost=None,
            metrics=None,
            tools_called_names=None,
            model_provider=None,
        )
    )
    assert errors == []
    for name in ("completed_at", "duration_ms", "input_cost", "metrics"):
        assert not turn.HasField(name), name
    assert list(turn.tools_called_names) == []
    out = kubiya.turn_to_json(turn)
    assert "completed_at" not in out and "model_provider" not in out


def test_zero_and_empty_object_are_present() -> None:
    turn, _ = kubiya.turn_from_json(turn_json(input_cost=0, metrics={}))
    assert turn.HasField("input_cost") and turn.HasField("metrics")
    assert kubiya.turn_to_json(turn)["metrics"] == {}


def test_struct_numbers_come_back_as_sent() -> None:
    turn, _ = kubiya.turn_from_json(turn_json(metrics={"max_tokens": 8192, "t": 0.5, "l": [1]}))
    out = kubiya.turn_to_json(turn)["metrics"]
    assert out == {"max_tokens": 8192, "t": 0.5, "l": [1]}
    assert isinstance(out["max_tokens"], int)


@pytest.mark.parametrize(
    ("field", "value", "loc_tail", "type_"),
    [
        ("turn_number", "3", ("turn_number",), "int_type"),
        ("turn_number", True, ("turn_number",), "int_type"),
        ("turn_number", 2.5, ("turn_number",), "int_from_float"),
        ("turn_number", 2**31, ("turn_number",), "less_than_equal"),
        ("duration_ms", -(2**63) - 1, ("duration_ms",), "greater_than_equal"),
        ("input_cost", "0.1", ("input_cost",), "float_type"),
        ("input_cost", False, ("input_cost",), "float_type"),
        ("model", 4, ("model",), "string_type"),
        ("started_at", "yesterday", ("started_at",), "datetime_parsing"),
        ("started_at", "2026-13-01T00:00:00Z", ("started_at",), "datetime_parsing"),
        ("started_at", 1767261600, ("started_at",), "datetime_type"),
        ("metrics", [1], ("metrics",), "dict_type"),
        ("tools_called_names", "read_file", ("tools_called_names",), "list_type"),
        ("tools_called_names", ["a", 3], ("tools_called_names", 1), "string_type"),
    ],
)
def test_type_errors_have_fastapi_locs(
    field: str, value: Any, loc_tail: tuple[str | int, ...], type_: str
) -> None:
    data = example()
    data["turns"][2][field] = value
    request, errors = kubiya.batch_from_json(data)
    assert [(e.loc, e.type) for e in errors] == [(("turns", 2, *loc_tail), type_)]
    assert errors[0].msg.startswith("Input should be")
    # The record keeps every other field that parsed.
    assert request.turns[2].turn_id == data["turns"][2]["turn_id"]


def test_task_status_error_lists_the_words() -> None:
    data = example()
    data["tasks"][1]["status"] = "done"
    _, errors = kubiya.batch_from_json(data)
    assert errors == [
        ParseError(
            ("tasks", 1, "status"),
            "Input should be 'pending', 'in_progress', 'completed', 'failed' or 'cancelled'",
            "enum",
        )
    ]


def test_bool_is_strict() -> None:
    data = example()
    data["tool_calls"][0]["success"] = "true"
    _, errors = kubiya.batch_from_json(data)
    assert [(e.loc, e.type) for e in errors] == [(("tool_calls", 0, "success"), "bool_type")]


def test_non_object_record_keeps_indices() -> None:
    data = example()
    data["turns"][1] = "not a turn"
    request, errors = kubiya.batch_from_json(data)
    assert [(e.loc, e.type) for e in errors] == [(("turns", 1), "model_attributes_type")]
    assert len(request.turns) == 3  # an empty Turn stands in, so indices still match the JSON
    assert request.turns[2].turn_number == 3


def test_batch_shape_errors() -> None:
    _, errors = kubiya.batch_from_json([])
    assert [(e.loc, e.type) for e in errors] == [((), "model_attributes_type")]
    _, errors = kubiya.batch_from_json({"execution_id": 7, "turns": {}, "execution": "x"})
    assert [(e.loc, e.type) for e in errors] == [
        (("execution_id",), "string_type"),
        (("turns",), "list_type"),
        (("execution",), "model_attributes_type"),
    ]


def test_unknown_keys_are_ignored_and_collected() -> None:
    data = copy.deepcopy(example())
    data["source"] = "worker"
    data["turns"][0]["temperature"] = 0.2
    data["tasks"][1]["assignee"] = None
    unknown: list[kubiya.Loc] = []
    request, errors = kubiya.batch_from_json(data, unknown=unknown)
    assert errors == []
    assert unknown == [("turns", 0, "temperature"), ("tasks", 1, "assignee"), ("source",)]
    assert kubiya.batch_to_json(request) == example()


def test_execution_in_a_batch() -> None:
    request, errors = kubiya.batch_from_json(
        {"execution_id": "e", "execution": {"workflow_name": "fix-billing", "status": "failed"}}
    )
    assert errors == []
    assert request.execution.status == records_pb2.EXECUTION_STATUS_FAILED
    assert kubiya.batch_to_json(request)["execution"] == {
        "workflow_name": "fix-billing",
        "status": "failed",
    }


def test_format_loc() -> None:
    assert kubiya.format_loc(("turns", 2, "started_at")) == "turns[2].started_at"
    assert kubiya.format_loc(("tools_called_names", 1)) == "tools_called_names[1]"
    assert str(ParseError(("model",), "Input should be a valid string", "string_type")) == (
        "model: Input should be a valid string"
    )
