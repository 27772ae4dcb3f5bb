"""turnstream.formats.honeyhive: HoneyHive events <-> turnstream.v1 records, losslessly."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from turnstream.core import validate
from turnstream.formats import honeyhive
from turnstream.v1 import records_pb2

SESSION = "caf77ace-3417-4da4-944d-f4a0688f3c23"

# The seed page's model event (shared/seeds/002_*: POST /events/model/batch), every field set
# with realistic values. Times are Unix epoch milliseconds; duration is fractional, as
# HoneyHive's own examples send it.
FULL_MODEL_EVENT: dict[str, Any] = {
    "project": "Simple RAG Project",
    "project_id": "65e0fc2d6a2eb95f55a92cbc",
    "source": "production",
    "event_name": "Model Completion",
    "event_type": "model",
    "event_id": "7f22137a-6911-4ed3-bc36-110f1dde6b66",
    "session_id": SESSION,
    "parent_id": "b1d1a1c4-0f3e-4c55-9a7e-3e0a4c5d6e7f",
    "children_ids": ["7f22137a-6911-4ed3-bc36-110f1dde6b67"],
    "config": {
        "model": "gpt-4o",
        "provider": "openai",
        "temperature": 0.7,
        "max_tokens": 512,
        "template": [{"role": "system", "content": "Answer using only: {{context}}"}],
    },
    "inputs": {
        "context": "Hello world",
        "question": "What is in the context?",
        "chat_history": [{"role": "user", "content": "What is in the context?"}],
    },
    "outputs": {"role": "assistant", "content": "Hello world"},
    "error": "openai.RateLimitError: retried once after 429",
    "start_time": 1712025501605,
    "end_time": 1712025502429.8056,
    "duration": 824.8056,
    "metadata": {"cost": 0.00008, "prompt_tokens": 35, "completion_tokens": 23, "env": "prod"},
    "feedback": {"rating": 5, "ground_truth": "Hello world", "liked": True},
    "metrics": {"num_words": 2, "coherence": 0.92, "passed": True},
    "user_properties": {"user": "google-oauth2|111840237613341303366", "plan": "pro"},
    "model_name": "gpt-4o",
    "model_version": "2024-08-06",
    "model": "gpt-4o-2024-08-06",
    "messages": [
        {"role": "system", "content": "Answer using only: Hello world"},
        {"role": "user", "content": "What is in the context?"},
    ],
    "response": {"role": "assistant", "content": "Hello world", "finish_reason": "stop"},
    "provider": "openai",
    "usage": {
        "prompt_tokens": 1035,
        "completion_tokens": 23,
        "total_tokens": 1058,
        "prompt_tokens_details": {"cached_tokens": 1000},
    },
    "cost": 0.00008,
    "hyperparameters": {"temperature": 0.7, "top_p": 1, "max_tokens": 512},
    "template": [{"role": "system", "content": "Answer using only: {{context}}"}],
    "template_inputs": {"context": "Hello world"},
    "tools": [{"type": "function", "function": {"name": "search", "parameters": {}}}],
    "tool_choice": "auto",
    "response_format": {"type": "text"},
    "sdk_trace_flags": ["sampled"],  # a field HoneyHive's schema does not know: kept too
}


def record(event: dict[str, Any], default_type: str | None = None) -> Any:
    _, message, violations = honeyhive.to_record(event, "model_events[0]", default_type)
    assert violations == []
    return message


def test_full_seed_model_event_round_trips_every_field() -> None:
    event = copy.deepcopy(FULL_MODEL_EVENT)
    kind, turn, violations = honeyhive.to_record(event, "model_events[0]")
    assert (kind, violations) == ("turn", [])
    assert event == FULL_MODEL_EVENT  # the input is not touched
    assert honeyhive.record_to_event(turn) == FULL_MODEL_EVENT
    # ... also after the record went through the wire (what storage and dead letters keep).
    again = records_pb2.Turn.FromString(turn.SerializeToString())
    assert json.loads(json.dumps(honeyhive.record_to_event(again))) == FULL_MODEL_EVENT


def test_full_event_columns() -> None:
    turn = record(FULL_MODEL_EVENT)
    assert turn.execution_id == SESSION
    assert turn.turn_id == FULL_MODEL_EVENT["event_id"]
    assert turn.parent_id == FULL_MODEL_EVENT["parent_id"]
    assert turn.model == "gpt-4o-2024-08-06"  # the top-level model wins over config.model
    assert turn.model_provider == "openai"
    assert turn.started_at.ToDatetime(dt.UTC) == dt.datetime(
        2024, 4, 2, 2, 38, 21, 605000, tzinfo=dt.UTC
    )
    # The double 1712025502429.8056 is exactly ...429.805664... ms; storage keeps microseconds,
    # so the exact value is kept in metadata as well.
    assert (turn.completed_at.seconds, turn.completed_at.nanos) == (1712025502, 429805664)
    assert honeyhive._struct(turn.metadata)["end_time"] == FULL_MODEL_EVENT["end_time"]
    assert turn.duration_ms == 825  # whole ms in the column; 824.8056 kept in metadata
    assert turn.error_message == FULL_MODEL_EVENT["error"]
    assert turn.total_cost == pytest.approx(0.00008)
    # OpenAI counts cached tokens inside prompt_tokens; turnstream's input_tokens excludes them.
    assert (turn.input_tokens, turn.cache_read_tokens) == (35, 1000)
    assert (turn.output_tokens, turn.total_tokens) == (23, 1058)
    assert honeyhive._struct(turn.inputs)["messages"] == FULL_MODEL_EVENT["messages"]
    assert honeyhive._struct(turn.outputs)["response"] == FULL_MODEL_EVENT["response"]
    assert honeyhive._struct(turn.metadata)["config"] == FULL_MODEL_EVENT["config"]
    assert validate.validate_turn(turn, "t", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) == []


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (  # OpenAI
            {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
            {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
        ),
        (  # Anthropic: input_tokens already excludes the cache
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_input_tokens": 900,
                "cache_creation_input_tokens": 50,
            },
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_tokens": 900,
                "cache_creation_tokens": 50,
            },
        ),
        (  # integral floats count; strings, negatives and fractions do not
            {"prompt_tokens": 7.0, "completion_tokens": "3", "total_tokens": -1},
            {"input_tokens": 7},
        ),
    ],
)
def test_usage_spellings(usage: dict[str, Any], expected: dict[str, int]) -> None:
    turn = record({**minimal_model(), "usage": usage})
    fields = ("input_tokens", "output_tokens", "total_tokens", "cache_read_tokens")
    got = {f: getattr(turn, f) for f in (*fields, "cache_creation_tokens") if turn.HasField(f)}
    assert got == expected
    assert honeyhive.record_to_event(turn)["usage"] == usage  # the original stays whole


def test_tokens_from_metadata_when_usage_has_none() -> None:
    turn = record({**minimal_model(), "metadata": {"prompt_tokens": 35, "completion_tokens": 23}})
    assert (turn.input_tokens, turn.output_tokens) == (35, 23)
    turn = record(
        {**minimal_model(), "usage": {"prompt_tokens": 1}, "metadata": {"prompt_tokens": 35}}
    )
    assert turn.input_tokens == 1


def minimal_model(**fields: Any) -> dict[str, Any]:
    return {
        "event_type": "model",
        "event_id": "e-1",
        "session_id": SESSION,
        "start_time": 1712025501605,
        "model": "gpt-4o",
        **fields,
    }


def test_model_and_provider_from_config_then_model_name() -> None:
    base = {k: v for k, v in minimal_model().items() if k != "model"}
    turn = record({**base, "config": {"model": "claude-sonnet-4-5", "provider": "anthropic"}})
    assert (turn.model, turn.model_provider) == ("claude-sonnet-4-5", "anthropic")
    assert "model" not in honeyhive.record_to_event(turn)  # not invented at the top level
    assert record({**base, "model_name": "gpt-4o-mini"}).model == "gpt-4o-mini"


def test_defaults_parent_is_the_session_and_turn_number_is_stable() -> None:
    turn = record(minimal_model())
    assert turn.parent_id == SESSION
    assert turn.turn_number == honeyhive.turn_number("e-1") == record(minimal_model()).turn_number
    assert 1 <= turn.turn_number < 2**31
    assert honeyhive.turn_number("e-2") != turn.turn_number


def test_epoch_milliseconds_round_trip_exactly() -> None:
    for ms in (1712025501605, 1712025501605.5, 1712025501605.123, 946684800000.001):
        turn = record(minimal_model(start_time=ms))
        back = honeyhive.record_to_event(turn)["start_time"]
        assert back == ms and type(back) is type(ms)


def test_fill_ids_derives_stable_ids() -> None:
    bare = {"event_type": "model", "model": "gpt-4o", "start_time": 1712025501605}
    first, second = honeyhive.fill_ids(bare), honeyhive.fill_ids(dict(bare))
    assert first == second  # a retry gets the same ids: never stored twice
    assert first["event_id"] != first["session_id"]
    assert honeyhive.fill_ids(bare, session_id="s-1")["session_id"] == "s-1"
    assert honeyhive.fill_ids({**bare, "start_time": 1})["event_id"] != first["event_id"]
    session = honeyhive.fill_ids({"event_type": "session", "event_id": "s-9"})
    assert session["session_id"] == session["event_id"] == "s-9"


def test_tool_event() -> None:
    event = {
        "event_type": "tool",
        "event_id": "t-1",
        "session_id": SESSION,
        "parent_id": "e-1",
        "event_name": "search",
        "inputs": {"query": "weather in Paris"},
        "outputs": {"results": [{"title": "Paris", "temp_c": 21.5}]},
        "start_time": 1712025501700,
        "end_time": 1712025501900,
        "metadata": {"retries": 0},
        "metrics": {"hits": 1},
        "config": {"endpoint": "https://search.example"},
    }
    kind, call, violations = honeyhive.to_record(event, "events[1]")
    assert (kind, violations) == ("tool_call", [])
    assert (call.tool_name, call.tool_use_id, call.parent_id) == ("search", "t-1", "e-1")
    assert json.loads(call.tool_output) == event["outputs"]
    assert call.success
    assert honeyhive.record_to_event(call) == event
    text = {**event, "outputs": '{"looks": "like json"}'}
    assert honeyhive.record_to_event(record(text)) == text


def test_long_tool_output_is_kept_whole_in_metadata() -> None:
    event = {
        "event_type": "tool",
        "event_id": "t-2",
        "session_id": SESSION,
        "event_name": "read_file",
        "start_time": 1712025501700,
        "outputs": {"text": "x" * 20_000},
    }
    call = record(event)
    assert honeyhive._struct(call.metadata)["outputs"] == event["outputs"]
    call.tool_output = call.tool_output[:10_000] + "... [truncated]"  # what the core stores
    assert honeyhive.record_to_event(call) == {**event, "parent_id": SESSION}


def test_chain_and_session_events() -> None:
    chain = {
        "event_type": "chain",
        "event_id": "c-1",
        "session_id": SESSION,
        "event_name": "retrieve_and_answer",
        "inputs": {"question": "?"},
        "outputs": "done",
        "start_time": 1712025501600,
        "end_time": 1712025503000,
        "duration": 1400,
        "error": "boom",
    }
    kind, task, violations = honeyhive.to_record(chain, "events[0]")
    assert (kind, violations) == ("task", [])
    assert (task.task_description, task.task_type, task.result) == (
        "retrieve_and_answer",
        "chain",
        "done",
    )
    # parent_id defaults to the session, as HoneyHive's server fills it.
    assert honeyhive.record_to_event(task) == {**chain, "parent_id": SESSION}
    session = {
        "event_type": "session",
        "event_id": SESSION,
        "session_id": SESSION,
        "session_name": "Playground Session",
        "event_name": "Playground Session",
        "source": "playground",
        "project": "Simple RAG Project",
        "start_time": 1712025501605,
        "user_properties": {"user": "u-1"},
        "metadata": {"region": "eu"},
        "inputs": {"question": "?"},
        "children_ids": ["c-1"],
    }
    kind, execution, violations = honeyhive.to_record(session, "session")
    assert (kind, violations) == ("execution", [])
    assert (execution.workflow_name, execution.source) == ("Playground Session", "playground")
    assert execution.status == records_pb2.EXECUTION_STATUS_RUNNING
    assert honeyhive.record_to_event(execution) == session


def test_wrong_types_are_violations_with_honeyhive_paths_and_kept() -> None:
    event = {
        **minimal_model(),
        "start_time": "yesterday",
        "metadata": ["not", "an", "object"],
        "children_ids": [1],
        "duration": True,
        "_turnstream": {},
    }
    kind, turn, violations = honeyhive.to_record(event, "model_events[2]")
    assert kind == "turn"
    fields = sorted(v.field for v in violations)
    assert fields == [
        "model_events[2]._turnstream",
        "model_events[2].children_ids",
        "model_events[2].duration",
        "model_events[2].metadata",
        "model_events[2].start_time",
    ]
    # The bad values stay in the record, so its dead letter holds them.
    kept = honeyhive._struct(turn.metadata)
    assert kept["start_time"] == "yesterday" and kept["metadata"] == ["not", "an", "object"]


@pytest.mark.parametrize("event_type", [None, "span", 3])
def test_unknown_event_type_makes_no_record(event_type: Any) -> None:
    kind, message, violations = honeyhive.to_record({"event_type": event_type}, "events[0]")
    assert (kind, message) == (None, None)
    assert [v.field for v in violations] == ["events[0].event_type"]


def test_out_of_range_numbers_are_violations_not_crashes() -> None:
    event = minimal_model(start_time=10**30, duration=10**400, metrics={"big": 10**400})
    _, _, violations = honeyhive.to_record(event, "e")
    assert sorted(v.field for v in violations) == ["e.duration", "e.metrics.big", "e.start_time"]


def test_apply_update_merges_as_honeyhive_does() -> None:
    stored = honeyhive.record_to_event(record(FULL_MODEL_EVENT))
    update = {
        "event_id": FULL_MODEL_EVENT["event_id"],
        "metadata": {"env": "staging", "reviewed": True},
        "feedback": {"rating": 1},
        "metrics": {"latency_ok": True},
        "outputs": {"role": "assistant", "content": "Hi"},
        "config": {"temperature": 0.2},
        "user_properties": {"plan": "team"},
        "duration": 900,
        "end_time": 1712025502505,
        "children_ids": [],
    }
    merged = honeyhive.apply_update(stored, update)
    assert merged["metadata"] == {
        **FULL_MODEL_EVENT["metadata"],
        "env": "staging",
        "reviewed": True,
    }
    assert merged["feedback"]["rating"] == 1 and merged["feedback"]["liked"] is True
    assert merged["config"]["temperature"] == 0.2 and merged["config"]["model"] == "gpt-4o"
    assert merged["outputs"] == {"role": "assistant", "content": "Hi"}  # replaced, not merged
    assert (merged["duration"], merged["end_time"]) == (900, 1712025502505)
    assert merged["children_ids"] == FULL_MODEL_EVENT["children_ids"]  # [] is ignored
    assert honeyhive.apply_update(merged, update) == merged  # a retried PUT changes nothing


@pytest.mark.parametrize(
    ("field", "description", "expected"),
    [
        (
            "model_events[2].started_at",
            "started_at is required",
            ("model_events[2].start_time", "start_time is required"),
        ),
        (
            "event.completed_at",
            "completed_at (x) is before started_at (y)",
            ("event.end_time", "end_time (x) is before start_time (y)"),
        ),
        (
            "events[0].metadata.config.temperature",
            "must be a finite number",
            ("events[0].config.temperature", "must be a finite number"),
        ),
        (
            "events[1].tool_name",
            "tool_name is required",
            ("events[1].event_name", "event_name is required"),
        ),
        ("events[1].inputs.messages[3]", "too deep", ("events[1].messages[3]", "too deep")),
        ("other.field", "x", ("other.field", "x")),
    ],
)
def test_violations_in_honeyhive_terms(
    field: str, description: str, expected: tuple[str, str]
) -> None:
    path = field.split(".", 1)[0]
    assert honeyhive.in_honeyhive_terms(field, description, path) == expected
