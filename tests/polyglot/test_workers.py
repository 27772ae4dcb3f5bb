"""Conformance of the Node and Go example workers (examples/node, examples/go): each runs as a
developer would run it, against a real turnstream server (a subprocess on free ports, SQLite),
which is SIGKILLed mid-stream and restarted on the same port. Then the database must hold exactly
what the worker sent, once: every turn, tool call, task and the execution, with their Struct
values intact and their times not in 1970, the stream at the offset of the last record sent, and
one dead letter per invalid record.

The server runs with small stream limits so that the workers' batches are cut by the limits the
server announces (records and bytes) and several batches are in flight at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import dbutil
from tests.server_process import ServerProcess

pytestmark = pytest.mark.polyglot

# What every example worker sends for `--turns TURNS` (see step() in both workers): a turn per
# step, a tool call every fifth step, and one invalid tool call (no tool_name) in step
# ceil(TURNS / 2), all over one Append stream; then CreateTurn of turn TURNS + 1.
TURNS = 120
TOOL_STEPS = [i for i in range(1, TURNS + 1) if i % 5 == 0]
INVALID_STEP = (TURNS + 1) // 2
STREAMED = TURNS + len(TOOL_STEPS) + 1
# Offset of the invalid record: every record of the earlier steps, then the step's turn and tool.
INVALID_OFFSET = (INVALID_STEP - 1) + len([i for i in TOOL_STEPS if i < INVALID_STEP]) + 2
# The server is killed on the first ack past this offset: inside a write of 36 records cut into
# about eight batches, two in flight, so batches are lost in flight (committed or not) and resent.
KILL_AT = 40
CHUNK = 30

SERVER_LIMITS = {
    "TURNSTREAM_MAX_BATCH_RECORDS": "8",
    # About five turns: the byte limit, not the record limit, cuts most batches.
    "TURNSTREAM_MAX_BATCH_BYTES": "1500",
    "TURNSTREAM_MAX_INFLIGHT_BATCHES": "2",
}


def expected_metrics(i: int) -> dict[str, Any]:
    return {
        "latency_ms": i * 1.5,
        "cache_hit": i % 2 == 0,
        "label": f"turn {i}",
        "tags": ["a", i],
        "nested": {"depth": 2, "none": None},
    }


class Worker:
    """A worker process whose stdout lines (one JSON event each) are read as they come."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr = log_path.open("w")
        self.log_path = log_path
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.log_path.with_suffix(".events").open("a") as events:
                events.write(line)  # kept in tmp_path, to read after a failure
            try:
                self._lines.put(json.loads(line))
            except json.JSONDecodeError:
                self._lines.put({"event": "unparsed", "line": line})
        self._lines.put(None)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no matching event in {timeout} s; saw {self.events[-5:]}")
            if event is None:
                pytest.fail(f"the worker ended first:\n{self.stderr()}\nevents: {self.events}")
            self.events.append(event)
            if predicate(event):
                return

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        while (event := self._lines.get_nowait()) is not None:
            self.events.append(event)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


@pytest.mark.parametrize("language", ["node", "go"])
def test_worker_resumes_after_a_server_kill_and_stores_everything_once(
    language: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    proto_dirs: str,
) -> None:
    command: list[str] = request.getfixturevalue(f"{language}_worker")
    for name, value in SERVER_LIMITS.items():
        monkeypatch.setenv(name, value)  # ServerProcess passes its environment on
    url = f"sqlite:///{tmp_path}/t.db"
    execution = f"{language}-conformance"
    started = dt.datetime.now(dt.UTC)

    with ServerProcess(url, log_path=tmp_path / "server.log") as server:
        worker = Worker(
            [
                *command,
                "--target",
                server.target,
                "--execution",
                execution,
                "--turns",
                str(TURNS),
                "--chunk",
                str(CHUNK),
                "--interval-ms",
                "5",
            ],
            tmp_path / f"{language}.log",
            env={**os.environ, "TURNSTREAM_PROTO_DIRS": proto_dirs},
        )
        try:
            worker.wait_for(lambda e: e["event"] == "ack" and e["committed_offset"] >= KILL_AT, 60)
            server.kill()  # SIGKILL mid-stream: no drain, acks in flight are lost
            time.sleep(0.3)
            server.start()
            code = worker.finish(timeout=120)
        finally:
            worker.stop()
        assert code == 0, f"{worker.stderr()}\n--- server log:\n{server.log_tail()}"

    # What the worker saw.
    done = worker.of("done")[-1]
    assert done["committed_offset"] == STREAMED
    assert done["reconnects"] >= 1, "the kill did not interrupt the stream"
    # Ack means committed: every reopen finds the stream at least where the last ack left it.
    acked, opens = 0, 0
    for e in worker.events:
        if e["event"] == "ack":
            acked = max(acked, e["committed_offset"])
        elif e["event"] == "opened":
            assert e["committed_offset"] >= acked, e
            opens += 1
    assert opens >= 2
    assert done["summary_turn"] == {
        "total_tokens": _int64(language, 15),
        "metrics": {"summary": True},
    }
    (invalid,) = worker.of("invalid_turn")
    assert invalid["code"] == "INVALID_ARGUMENT"
    assert invalid["reason"] == "INVALID_RECORD"
    assert {v["field"] for v in invalid["violations"]} == {"turn.model", "turn.started_at"}
    assert worker.of("write")[0]["counts"] == {"created": 2}

    # What the database holds: exactly what was sent, once.
    turns = sorted(
        dbutil.rows(url, "turns", execution_id=execution), key=lambda r: r["turn_number"]
    )
    assert [t["turn_number"] for t in turns] == list(range(1, TURNS + 2))
    for t in turns[:TURNS]:
        i = t["turn_number"]
        assert t["metrics"] == expected_metrics(i), f"turn {i}"
        assert (t["input_tokens"], t["output_tokens"], t["cache_read_tokens"]) == (
            1000 + i,
            100 + i,
            i,
        )
        assert t["total_tokens"] == 1100 + 2 * i  # derived by the server
        assert t["turn_id"] == f"{execution}-t{i}"
        # Not 1970: the worker's clock reached the server as a Timestamp.
        assert started - dt.timedelta(minutes=1) <= t["started_at"] <= dt.datetime.now(dt.UTC)
        assert t["duration_ms"] == 1500
    assert turns[TURNS]["metrics"] == {"summary": True}

    tool_calls = dbutil.rows(url, "tool_calls", execution_id=execution)
    assert sorted(c["tool_use_id"] for c in tool_calls) == sorted(
        f"{execution}-u{i}" for i in TOOL_STEPS
    )
    for c in tool_calls:
        i = int(c["tool_use_id"].rsplit("-u", 1)[1])
        assert c["tool_input"] == {
            "path": f"src/file_{i}.py",
            "lines": [1, 2, 3],
            "recursive": False,
        }
        assert (c["success"], c["tool_output"], c["turn_id"]) == (True, "ok", f"{execution}-t{i}")

    (task,) = dbutil.rows(url, "tasks", execution_id=execution)
    assert (task["status"], task["task_description"], task["result"]) == (
        "completed",
        "stream the turns",
        "ok",
    )
    (run,) = dbutil.rows(url, "executions", execution_id=execution)
    assert (run["status"], run["triggered_by"], run["workflow_name"]) == (
        "completed",
        "manual",
        "polyglot-example",
    )
    assert run["metadata"] == {
        "language": language,
        "attempt": 1,
        "tags": ["example", language],
        "parent": None,
    }

    (stream,) = dbutil.rows(url, "streams", stream_id=execution)
    assert stream["committed_offset"] == STREAMED
    # Dead letters are not merged by key: a resent invalid record at another offset would show
    # up twice here. One from the stream, at its offset, and one from CreateTurn.
    rejected = dbutil.rows(url, "rejected_records")
    streamed_rejects = [r for r in rejected if r["stream_id"] == execution]
    assert [(r["kind"], r["stream_offset"]) for r in streamed_rejects] == [
        ("tool_call", INVALID_OFFSET)
    ]
    assert len(rejected) == 2


def _int64(language: str, value: int) -> int | str:
    # proto-loader's `longs: String` reads int64 as a decimal string; Go has int64.
    return str(value) if language == "node" else value
