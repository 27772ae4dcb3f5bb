"""`turnstream demo`: realistic generated executions (workflows, models, tools, failures with
messages, triggers, cache hits, weeks of history) written through the normal ingest path — the
core's IngestCalls and the writer — so a new user sees a living dashboard. `generate` is also
what the analytics tests and the benchmark load."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass

from turnstream.v1 import ingest_pb2, records_pb2

WORKFLOWS = (
    "triage-bug",
    "write-tests",
    "review-pr",
    "browse-docs",
    "deploy-service",
    "summarize-tickets",
)
# (model, provider, Kubiya weight, $ per 1M input, $ per 1M output)
MODELS = (
    ("claude-sonnet-4-5", "anthropic", 1.0, 3.0, 15.0),
    ("claude-opus-4-1", "anthropic", 2.0, 15.0, 75.0),
    ("claude-haiku-4-5", "anthropic", 0.5, 1.0, 5.0),
    ("gpt-4o", "openai", 1.3, 2.5, 10.0),
    ("gpt-4o-mini", "openai", 0.7, 0.15, 0.6),
)
TOOLS = (
    "read_file",
    "run_tests",
    "search_code",
    "browser_click",
    "browser_type",
    "browser_scroll",
    "take_screenshot",
    "http_request",
)
ERRORS = (
    "Tool run_tests timed out after 300s",
    "Rate limit exceeded (429) for model",
    "Connection reset by peer while calling the API",
    "Invalid JSON in tool input",
    "context length exceeded: 210000 tokens",
    "permission denied: repository is private",
    "ValueError: unexpected None in plan",
    "Tool browser_click failed: element not visible",
)
ENDPOINTS = ("/hooks/github", "/hooks/slack", "/api/run")
TRIGGERS = (
    records_pb2.TRIGGER_TYPE_MANUAL,
    records_pb2.TRIGGER_TYPE_ENDPOINT,
    records_pb2.TRIGGER_TYPE_SCHEDULED,
)
_MS = dt.timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Spec:
    """What to generate: `executions` runs started in [start, end), from `seed`."""

    executions: int
    start: dt.datetime
    end: dt.datetime
    seed: int = 7
    invalid_every: int = 50  # one invalid turn per this many executions (0: none)
    max_turns: int = 6  # turns per execution: 1 to this many
    call_chance: float = 1.0  # below 1: a turn calls 1-2 tools with this chance, else 0-3


def _ts(field: object, value: dt.datetime) -> None:
    field.FromDatetime(value)  # type: ignore[attr-defined]


def generate(spec: Spec) -> Iterator[ingest_pb2.WriteRequest]:
    """One WriteRequest per execution. Every derived value (total tokens, costs, AEM,
    durations) is sent, so a reader can recompute every figure from the requests alone."""
    rng = random.Random(spec.seed)
    span_ms = max(1, int((spec.end - spec.start) / _MS))
    for n in range(spec.executions):
        yield _execution(rng, spec, n, spec.start + rng.randrange(span_ms) * _MS)


def _execution(
    rng: random.Random, spec: Spec, n: int, start: dt.datetime
) -> ingest_pb2.WriteRequest:
    eid = f"exec-{spec.seed}-{n:07d}"
    req = ingest_pb2.WriteRequest(execution_id=eid)
    roll = rng.random()
    status = (
        "completed"
        if roll < 0.78
        else "failed"
        if roll < 0.9
        else "running"
        if roll < 0.95
        else "cancelled"
        if roll < 0.98
        else "pending"
    )
    explicit = rng.random() < 0.85 or status in ("cancelled", "pending")
    finished = status in ("completed", "failed", "cancelled")
    error = rng.choice(ERRORS) if status == "failed" else ""
    model, provider, weight, price_in, price_out = rng.choice(MODELS)
    t = start
    turns = 0 if status == "pending" else rng.randint(1, spec.max_turns)
    for k in range(1, turns + 1):
        ms = rng.randint(400, 20_000)
        if spec.call_chance < 1:
            calls = rng.randint(1, 2) if rng.random() < spec.call_chance else 0
        else:
            calls = rng.randint(0, 3)
        tin, tout = rng.randint(200, 8000), rng.randint(50, 2000)
        cache_read = rng.choice((0, 0, rng.randint(1000, 30_000)))
        cache_new = rng.choice((0, 0, 0, rng.randint(100, 4000)))
        cost_in, cost_out = tin * price_in / 1e6, tout * price_out / 1e6
        cost_cache = cache_read * price_in * 0.1 / 1e6 + cache_new * price_in * 1.25 / 1e6
        minutes = ms / 60_000
        tool_weight = max(1.0, calls / 50)
        turn = req.turns.add(
            execution_id=eid,
            turn_number=k,
            turn_id=f"{eid}-t{k}",
            model=model,
            model_provider=provider,
            duration_ms=ms,
            input_tokens=tin,
            output_tokens=tout,
            cache_read_tokens=cache_read,
            cache_creation_tokens=cache_new,
            total_tokens=tin + tout,
            input_cost=cost_in,
            output_cost=cost_out,
            total_cost=cost_in + cost_out + cost_cache,
            finish_reason="tool_use" if calls else "end_turn",
            tools_called_count=calls,
            runtime_minutes=minutes,
            model_weight=weight,
            tool_calls_weight=tool_weight,
            aem_value=minutes * weight * tool_weight,
            aem_cost=minutes * weight * tool_weight * 0.15,
        )
        _ts(turn.started_at, t)
        if finished:
            _ts(turn.completed_at, t + ms * _MS)
        for c in range(calls):
            tool = rng.choice(TOOLS)
            turn.tools_called_names.append(tool)
            call_ms = rng.randint(5, 4000)
            ok = rng.random() > 0.08
            call = req.tool_calls.add(
                execution_id=eid,
                turn_id=turn.turn_id,
                tool_name=tool,
                tool_use_id=f"{eid}-t{k}-c{c}",
                duration_ms=call_ms,
                success=ok,
                error_message="" if ok else "exit status 1",
            )
            _ts(call.started_at, t + (ms + c) * _MS)
            if finished:
                _ts(call.completed_at, t + (ms + c + call_ms) * _MS)
        t += (ms + 4000) * _MS
    end = t + rng.randint(1, 900) * _MS
    if explicit:
        ex = req.execution
        ex.execution_id = eid
        ex.workflow_name = rng.choice(WORKFLOWS)
        ex.triggered_by = rng.choice(TRIGGERS)
        if ex.triggered_by == records_pb2.TRIGGER_TYPE_ENDPOINT:
            ex.source = rng.choice(ENDPOINTS)
        else:
            ex.source = "worker-1"
        ex.status = records_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{status.upper()}")
        _ts(ex.started_at, start)
        if finished:
            _ts(ex.completed_at, end)
            ex.duration_ms = int((end - start) / _MS)
        ex.error_message = error
    elif status == "failed":
        # Only records were sent: a failed task is what marks the run failed.
        task = req.tasks.add(
            execution_id=eid, task_number=1, task_description="run the plan", error_message=error
        )
        task.status = records_pb2.TASK_STATUS_FAILED
        _ts(task.started_at, start)
        _ts(task.completed_at, end)
    if spec.invalid_every and n % spec.invalid_every == spec.invalid_every - 1:
        req.turns.add(execution_id=eid, turn_number=99)  # no model, no start: dead-lettered
    return req


async def fill(database_url: str, spec: Spec, progress: object | None = None) -> int:
    """Write the generated executions through IngestCalls and the writer (the path every door
    takes); answers how many records were stored. `progress(n)` is called per execution."""
    from turnstream.core.pipeline import Pipeline
    from turnstream.core.pricing import PriceTable
    from turnstream.core.service import IngestCalls
    from turnstream.store.engine import create_engine, migrate
    from turnstream.store.writer import Writer

    engine = create_engine(database_url)
    await asyncio.to_thread(migrate, engine)
    writer = Writer(engine)
    await writer.start()
    calls = IngestCalls(Pipeline(PriceTable.load(None)), writer)
    stored = 0
    try:
        pending: list[asyncio.Task[ingest_pb2.WriteResponse]] = []
        for req in generate(spec):
            pending.append(asyncio.create_task(calls.write(req, "default", "demo")))
            if len(pending) >= 256:  # many in flight: the writer commits them together
                stored += await _settle(pending, progress)
                pending = []
        stored += await _settle(pending, progress)
    finally:
        await writer.close(30)
        engine.dispose()
    return stored


async def _settle(
    pending: list[asyncio.Task[ingest_pb2.WriteResponse]], progress: object | None
) -> int:
    stored = 0
    for answer in await asyncio.gather(*pending):
        c = answer.counts.total
        stored += c.created + c.updated + c.unchanged
    if callable(progress):
        progress(len(pending))
    return stored


def run_demo(database_url: str, executions: int, days: int, seed: int) -> None:
    """The `turnstream demo` command: fill with a progress bar, then say what to open."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    if executions < 1 or days < 1:
        raise ValueError("--executions and --days must be at least 1")
    end = dt.datetime.now(dt.UTC)
    spec = Spec(executions, end - dt.timedelta(days=days), end, seed)
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress("executions", *columns) as progress:
        task = progress.add_task("demo", total=executions)
        stored = asyncio.run(fill(database_url, spec, lambda n: progress.advance(task, n)))
    Console().print(
        f"stored {stored:,} records of {executions:,} executions; "
        "run [bold]turnstream serve[/] and open http://127.0.0.1:8080/"
    )
