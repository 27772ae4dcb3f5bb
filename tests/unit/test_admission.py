"""Admission: a FIFO byte budget; requests wait, oldest first, until they fit."""

from __future__ import annotations

import asyncio

import pytest

from turnstream.doors.admission import Admission


async def _hold(admission: Admission, size: int, log: list[str], name: str, go: asyncio.Event):
    async with admission.admit(size):
        log.append(f"in {name}")
        await go.wait()
    log.append(f"out {name}")


async def test_requests_wait_in_order_until_their_bytes_fit() -> None:
    admission, log = Admission(100), []
    gates = {n: asyncio.Event() for n in "abc"}
    tasks = [
        asyncio.create_task(_hold(admission, s, log, n, gates[n]))
        for n, s in (("a", 60), ("b", 60), ("c", 10))
    ]
    await asyncio.sleep(0.01)
    # b does not fit beside a; c would fit, but must not overtake b (FIFO).
    assert log == ["in a"] and admission.waiting == 2 and admission.in_use == 60
    gates["a"].set()
    await asyncio.sleep(0.01)
    assert log == ["in a", "out a", "in b", "in c"] and admission.in_use == 70
    gates["b"].set(), gates["c"].set()
    await asyncio.gather(*tasks)
    assert admission.in_use == 0


async def test_a_request_larger_than_the_budget_is_admitted_alone() -> None:
    admission = Admission(10)
    async with admission.admit(1_000):
        assert admission.in_use == 10
    assert admission.in_use == 0


async def test_a_cancelled_waiter_gives_its_place_up() -> None:
    admission, log, gate = Admission(10), [], asyncio.Event()
    first = asyncio.create_task(_hold(admission, 10, log, "a", gate))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(_hold(admission, 5, log, "b", gate))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.waiting == 0
    gate.set()
    await first
    assert admission.in_use == 0 and log == ["in a", "out a"]


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        Admission(0)
