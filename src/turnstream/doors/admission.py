"""Door: admission before the pipeline. Requests wait their turn, oldest first, until the bytes
of requests being prepared and stored fit a fixed budget, so a burst of large requests cannot
grow memory without bound (rows built from a request take several times its wire size). One
`Admission` per process, shared by every door.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class Admission:
    """A FIFO budget of bytes. A request larger than the whole budget is admitted alone."""

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"the admission budget must be at least 1 byte, got {budget}")
        self.budget = budget
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room (for metrics and tests)."""
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def admit(self, size: int) -> AsyncIterator[None]:
        size = max(1, min(size, self.budget))
        if self._waiters or self.in_use + size > self.budget:
            future = asyncio.get_running_loop().create_future()
            entry = (size, future)
            self._waiters.append(entry)
            try:
                await future
            except BaseException:
                # Cancelled while waiting: leave the queue, or give back room granted meanwhile.
                if future.done() and not future.cancelled():
                    self._release(size)
                else:
                    self._waiters.remove(entry)
                    self._wake()
                raise
        else:
            self.in_use += size
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self.in_use -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if self.in_use and self.in_use + size > self.budget:
                return
            self._waiters.popleft()
            if not future.done():
                self.in_use += size
                future.set_result(None)
