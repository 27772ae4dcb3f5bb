"""The server's garbage-collection settings (turnstream.gctune): what start-up built is frozen,
the young generation is larger, and cycles made afterwards are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from turnstream import gctune


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.me = self


def test_settle_freezes_start_up_and_still_collects_later_cycles(restored: None) -> None:
    gctune.settle()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == gctune.YOUNG
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None
