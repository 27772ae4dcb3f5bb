"""Storage: whether the database answers, as the writer sees it, and the probe that finds out
when it answers again. Down when a call hung (callers are then answered at once, without
touching the database, while it lasts), when it was unreachable, or for good when the SQLite
file went away. Listeners (the server's gRPC health and /readyz) hear every change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from turnstream.store.faults import StoreGone, StoreUnavailable

log = logging.getLogger(__name__)

# While the database is down, how often the writer checks whether it answers again.
PROBE_INTERVAL = 1.0

HealthListener = Callable[[bool, str], None]


class StoreHealth:
    """`probe()` must raise StoreUnavailable while the database does not answer."""

    def __init__(self, probe: Callable[[], Awaitable[None]], retry_after: float) -> None:
        self.healthy = True
        self.reason = ""  # why not healthy, one sentence
        self.hung = False  # down because calls hung (not refused): answer without trying
        self.gone: StoreGone | None = None  # the SQLite file went away: down until a restart
        self.retry_after = retry_after
        self._probe = probe
        self._listeners: list[HealthListener] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def listen(self, listener: HealthListener) -> None:
        self._listeners.append(listener)

    def refuse_now(self) -> None:
        """Raise what a caller should hear at once when trying the database cannot help."""
        if self.gone is not None:
            raise StoreGone(str(self.gone), self.retry_after)
        if self.hung:
            raise StoreUnavailable(
                "the database is not answering; nothing of this request was stored; retry "
                f"(health turns SERVING when it answers again; probed every {PROBE_INTERVAL:g} s)",
                self.retry_after,
            )

    def failed(self, exc: StoreUnavailable) -> None:
        """A call was answered StoreUnavailable."""
        if self._closed:
            return
        if isinstance(exc, StoreGone):
            if self.gone is None:
                log.error("%s", exc)
            self.gone = exc
            self._down(str(exc))
        elif self.healthy:
            self._down("the database is unavailable")

    def hung_up(self, timeout: float) -> None:
        """A call made no progress for `timeout` seconds and was given up on."""
        if self._closed:
            return
        self.hung = True
        self._down(f"the database is not answering (no reply within {timeout:g} s)")

    def answered(self) -> None:
        """A call went through: the database answers."""
        if self.healthy or self.gone is not None:
            return
        log.info("the database answers again")
        self.healthy = True
        self.reason = ""
        self.hung = False
        self._notify()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _down(self, reason: str) -> None:
        changed = self.healthy or reason != self.reason
        self.healthy = False
        self.reason = reason
        if changed:
            self._notify()
        probing = self._task is not None and not self._task.done()
        if self.gone is None and not probing:
            self._task = asyncio.create_task(self._probe_loop(), name="turnstream-store-probe")

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self.healthy, self.reason)
            except Exception:
                log.exception("a health listener failed")

    async def _probe_loop(self) -> None:
        """While down: every PROBE_INTERVAL seconds, does the database answer? Up when it does
        (a call that succeeds meanwhile brings it up too)."""
        while not self.healthy and self.gone is None and not self._closed:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.healthy or self._closed:
                return
            try:
                await self._probe()
            except StoreUnavailable as exc:
                if isinstance(exc, StoreGone):
                    self.failed(exc)
                continue
            except Exception:
                log.exception("the database health probe failed")
                continue
            self.answered()
