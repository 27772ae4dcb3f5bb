"""turnstream.send: reading batch files (object, array, JSON Lines) and reporting without a server.
Sending to a real server is covered by the integration tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from turnstream.send import BatchFileError, load_batches, send_files

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kubiya_batch.json"
# Nothing listens here; the tests below never reach the network.
NOWHERE = "127.0.0.1:9"


def batch(execution_id: str) -> dict[str, object]:
    return {"execution_id": execution_id, "turns": [], "tool_calls": [], "tasks": []}


def test_one_object(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(batch("e1"), indent=2))
    raws = load_batches(path)
    assert [(r.label, r.obj["execution_id"]) for r in raws] == [("batch 1", "e1")]


def test_example_file_is_one_batch() -> None:
    raws = load_batches(EXAMPLE)
    assert len(raws) == 1 and raws[0].obj["execution_id"] == "exec-demo-0001"


def test_array_of_batches(tmp_path: Path) -> None:
    path = tmp_path / "many.json"
    path.write_text(json.dumps([batch("e1"), batch("e2")], indent=2))
    assert [(r.label, r.obj["execution_id"]) for r in load_batches(path)] == [
        ("batch 1", "e1"),
        ("batch 2", "e2"),
    ]


def test_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    # Blank lines are skipped, CRLF is fine, and U+2028 inside a string is not a line break.
    path.write_bytes(
        (
            json.dumps(batch("e1")) + "\r\n\n" + json.dumps(batch("e\u2028 2"), ensure_ascii=False)
        ).encode()
    )
    assert [(r.label, r.obj["execution_id"]) for r in load_batches(path)] == [
        ("line 1", "e1"),
        ("line 3", "e\u2028 2"),
    ]


def test_single_line_json_lines_is_an_object(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(batch("e1")) + "\n")
    assert [r.label for r in load_batches(path)] == ["batch 1"]


def test_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(batch("e1")).encode())
    assert len(load_batches(path)) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"execution_id": "e1",\n  "turns": [\n}', "invalid JSON: "),
        ("[1, 2", "invalid JSON: "),
        ("{} x", "invalid JSON: Extra data (line 1, column 4)"),
        ('{"execution_id": "e1"}\n{"execution_id": \n', "invalid JSON Lines: line 2: "),
        ("   \n", "file is empty"),
        ("42", "top-level JSON int is not a batch"),
        ('"batch"', "top-level JSON str is not a batch"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BatchFileError) as info:
        load_batches(path)
    assert str(info.value).startswith(reason)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(BatchFileError, match="cannot read"):
        load_batches(tmp_path / "missing.json")
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(BatchFileError, match="not UTF-8"):
        load_batches(path)


def test_non_object_items_are_batches_rejected_later(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([batch("e1"), 3]))
    assert [r.obj for r in load_batches(path)][1] == 3


async def test_bad_files_and_bad_records_are_reported_without_sending(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    bad = tmp_path / "bad.json"
    turn = {"execution_id": "e1", "turn_number": "one", "model": "m", "started_at": 17, "t": 1}
    bad.write_text(json.dumps({"execution_id": "e1", "turns": [turn], "bogus": 1}))
    out = io.StringIO()
    console = Console(file=out, width=200)

    summary = await send_files([broken, bad], NOWHERE, console=console)

    assert (summary.files, summary.batches, summary.rejected) == (1, 1, 1)
    assert (summary.created, summary.updated, summary.unchanged) == (0, 0, 0)
    assert summary.failed_files == [
        (
            str(broken),
            "invalid JSON: Expecting property name enclosed in double quotes (line 1, column 2)",
        )
    ]
    assert [(r.kind, r.index, r.field) for r in summary.rejections] == [
        ("turn", 0, "turns[0].turn_number"),
        ("turn", 0, "turns[0].started_at"),
    ]
    text = out.getvalue()
    assert f"{bad} batch 1: turns[0].turn_number: Input should be a valid integer" in text
    assert f"{bad}: warning: unknown field bogus ignored" in text
    assert f"{bad}: warning: unknown field turns[*].t ignored" in text
    assert "rejected (" in text and "failed: " in text
