"""gctune: after start-up the server freezes what start-up made and collects the youngest
generation every YOUNG allocations instead of every 700."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from turnstream import gctune


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_start_up_and_collects_the_young_less_often(restored: None) -> None:
    start_up = [object() for _ in range(10)]  # a container allocated before tune
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    gctune.tune()
    assert gc.get_freeze_count() > len(start_up)
    assert gc.get_threshold() == (gctune.YOUNG, 10, 10)
    # Garbage in a cycle is still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
