"""The Append rules that need no call (turnstream.doors.stream_rules): where a batch stands
against the stream's offset, and the batch size a client in any language must stay under,
computed exactly as docs/streaming.md tells it to."""

from __future__ import annotations

import pytest

from turnstream.config import Settings
from turnstream.doors import stream_rules as rules
from turnstream.v1 import ingest_pb2, records_pb2


@pytest.mark.parametrize(
    ("offset", "count", "expected", "outcome"),
    [
        (10, 5, 10, rules.APPENDED),
        (0, 3, 10, rules.ALREADY_STORED),
        (5, 5, 10, rules.ALREADY_STORED),  # ends exactly at the offset
        (11, 1, 10, rules.GAP),
        (8, 5, 10, None),  # straddles: 8, 9 stored, 10..12 not
    ],
)
def test_placement_of_a_batch(offset: int, count: int, expected: int, outcome: int | None) -> None:
    assert rules.placement(offset, count, expected) == outcome


def varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


def documented_size(offset: int, records: list[ingest_pb2.Record]) -> int:
    """The formula of docs/streaming.md, "Keeping a batch under max_batch_bytes"."""
    size = 0 if offset == 0 else 1 + varint_len(offset)
    for record in records:
        n = len(record.SerializeToString())
        size += 1 + varint_len(n) + n
    return size


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 2**40])
def test_the_documented_batch_size_is_what_the_server_measures(offset: int) -> None:
    records = [
        ingest_pb2.Record(
            turn=records_pb2.Turn(execution_id="e", turn_number=i, response_preview="x" * 70 * i)
        )
        for i in range(6)  # record sizes on both sides of one- and two-byte length varints
    ]
    size = documented_size(offset, records)
    batch = ingest_pb2.AppendBatch(offset=offset, records=records)
    assert rules.check_batch(batch, Settings(max_batch_bytes=size)) is None
    over = rules.check_batch(batch, Settings(max_batch_bytes=size - 1))
    assert over is not None and f"the batch is {size} bytes" in over.message
