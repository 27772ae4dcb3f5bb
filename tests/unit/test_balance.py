"""The --workers share rule (doors/balance.py) as pure code, and the shared counts on a real
file: who is turned away, who never is, and that a turn-away is bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.rpc import code_pb2

from turnstream import errors
from turnstream.doors.balance import (
    HEADER,
    MAX_TURNS,
    Balance,
    Shares,
    attempt_of,
    turn_away,
)


@pytest.mark.parametrize(
    ("mine", "others", "away"),
    [
        (1, [0], False),  # one ahead: moving it would only swap which process has the extra
        (2, [0], True),
        (5, [3], True),
        (5, [4], False),
        (4, [4], False),
        (1, [], False),  # alone (the others not serving yet, or drained): nowhere to go
        (3, [5, 1], True),  # the least loaded other counts, not the average
        (3, [2, 2], False),
    ],
)
def test_an_open_is_turned_away_only_when_two_ahead_of_the_least_loaded(
    mine: int, others: list[int], away: bool
) -> None:
    assert turn_away(mine, others) is away


def test_the_header_is_the_attempt_and_anything_else_is_no_header() -> None:
    assert attempt_of([(HEADER, "0")]) == 0
    assert attempt_of([("authorization", "Bearer x"), (HEADER, b"3")]) == 3
    assert attempt_of([("other", "1")]) is None
    assert attempt_of(None) is None
    assert attempt_of([(HEADER, "yes")]) is None


def two(tmp_path: Path) -> tuple[Balance, Balance]:
    path = Shares.create(2)
    try:
        a, b = Balance(Shares(path, 0)), Balance(Shares(path, 1))
    finally:
        path.unlink()  # the maps stay valid
    a.serving()
    b.serving()
    return a, b


def test_a_lopsided_process_turns_away_declared_clients_only(tmp_path: Path) -> None:
    a, b = two(tmp_path)
    assert a.admit(None) is None and a.admit(None) is None  # 2 / 0 after these
    refused = a.admit(0)  # would be 3 / 0
    assert refused is not None
    assert refused.code == code_pb2.UNAVAILABLE
    assert errors.reason_of(refused) == "REBALANCE"
    assert errors.retry_after_of(refused) == 0.0
    assert errors.http_status_of(refused) == 503
    for _ in range(10):  # no header: taken however lopsided
        assert a.admit(None) is None
    assert (a.open, b.open, a.turned_away) == (12, 0, 1)
    assert b.admit(0) is None  # the other one takes it
    assert a.shares.others() == [1] and b.shares.others() == [12]


def test_a_turn_away_is_bounded_by_the_attempt(tmp_path: Path) -> None:
    a, _ = two(tmp_path)
    a.admit(None)
    a.admit(None)
    for attempt in range(MAX_TURNS):
        assert a.admit(attempt) is not None
    assert a.admit(MAX_TURNS) is None


def test_a_process_not_serving_is_not_counted_on(tmp_path: Path) -> None:
    a, b = two(tmp_path)
    for _ in range(3):
        a.admit(None)
    b.stopping()  # draining: it takes no more streams
    assert a.admit(0) is None
    b.serving()
    assert a.admit(0) is not None  # 5 / 0 with it
    for _ in range(4):  # streams ending make room again
        a.leave()
    assert a.admit(0) is None  # 1 / 0 with it


def test_a_dead_process_is_not_counted_on(tmp_path: Path) -> None:
    path = Shares.create(2)
    a, ghost = Shares(path, 0), Shares(path, 1)
    path.unlink()
    ghost.write(2**22 + 12345, 0)  # above any pid_max: no such process
    assert a.others() == []
    ghost.write(os.getpid(), 7)
    assert a.others() == [7]


def test_a_call_ending_after_the_shutdown_is_harmless(tmp_path: Path) -> None:
    a, b = two(tmp_path)
    a.admit(None)
    a.close()
    a.leave()
    assert b.shares.others() == []
