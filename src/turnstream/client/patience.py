"""SDK: when a StreamWriter stops trying, as pure state (no I/O, no clock of its own).

Two clocks, for two different troubles:
- **No stream** (`max_reconnect_time`): attempts fail before the server answers `opened` — the
  server or its database is away. Counted from the end of the last stream that was open.
- **No progress** (`max_stall_time`): streams open, yet the committed offset does not advance
  because the oldest un-acked batch fails on every attempt (a server bug on one record, a batch
  the database times out on...). Counted from the first such failure since the last progress,
  so reopening never resets it: each reopen succeeding was exactly how a writer stayed blocked
  in flush() forever. A stream with nothing un-acked is never stalled.

Some failures are fatal at once whatever the clocks say: the same bytes can only fail the same
way (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without RetryInfo), or another writer owns the stream
(ABORTED other than STREAM_CONFLICT). StreamWriter reports every attempt's end to `ended`; the
unit tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from turnstream.client.errors import RPCError, StreamError


def stream_retryable(error: RPCError) -> bool:
    """Reconnect after a retryable code, and after ABORTED STREAM_CONFLICT (the server lost its
    place in the stream: "reopen it and resume"); any other ABORTED is a fence: a newer writer
    owns the stream."""
    if error.code == grpc.StatusCode.ABORTED:
        return error.reason == "STREAM_CONFLICT"
    return error.retryable


@dataclass(frozen=True, slots=True)
class Ending:
    """How one connection attempt ended."""

    opened: bool  # the server answered `opened` on it
    error: RPCError | None = None  # None: the call ended without an error status
    drained: bool = False  # the server said `drain` (a planned shutdown): not a failure
    reason: str = ""  # what happened, when there is no error

    def describe(self) -> str:
        return str(self.error) if self.error is not None else self.reason


class Patience:
    """Decides after each attempt whether the writer reconnects or fails.

    >>> p = Patience(max_reconnect_time=None, max_stall_time=60.0)
    >>> p.ended(Ending(opened=True, error=internal), now=0.0, stuck=range(10, 20))   # None
    >>> p.ended(Ending(opened=True, error=internal), now=61.0, stuck=range(10, 20))  # StreamError
    """

    def __init__(self, max_reconnect_time: float | None, max_stall_time: float | None) -> None:
        self.max_reconnect_time = max_reconnect_time
        self.max_stall_time = max_stall_time
        self.down_since: float | None = None  # the last open stream ended (or the first try)
        self.stalled_since: float | None = None  # first failure since the last progress
        self.stalled_attempts = 0  # failures of opened streams since the last progress

    def progressed(self) -> None:
        """The committed offset advanced (an ack, or a reopen that found more committed)."""
        self.stalled_since = None
        self.stalled_attempts = 0

    def ended(self, ending: Ending, now: float, stuck: range | None) -> StreamError | None:
        """An attempt ended at `now`; `stuck` holds the offsets of the oldest un-acked batch
        (None when nothing is un-acked). The error to fail the writer with, or None to retry."""
        error = ending.error
        if error is not None and not stream_retryable(error):
            return StreamError.wrap(error, stuck_offsets=stuck)
        if ending.opened:
            self.down_since = now  # an outage, if one follows, starts here
            if not ending.drained:
                stalled = self._stalled(ending, now, stuck)
                if stalled is not None:
                    return stalled
            return None
        if self.down_since is None:
            self.down_since = now
        limit = self.max_reconnect_time
        if limit is not None and now - self.down_since > limit:
            message = f"gave up reconnecting after {limit:g} s: {ending.describe()}"
            raw = error.raw_status if error is not None else None
            return StreamError(grpc.StatusCode.UNAVAILABLE, message, raw, stuck_offsets=stuck)
        return None

    def _stalled(self, ending: Ending, now: float, stuck: range | None) -> StreamError | None:
        if stuck is None:  # nothing waits to be committed: a failure, but not a stall
            self.progressed()
            return None
        self.stalled_attempts += 1
        if self.stalled_since is None:
            self.stalled_since = now
        limit, elapsed = self.max_stall_time, now - self.stalled_since
        if limit is None or elapsed <= limit:
            return None
        error = ending.error
        message = (
            f"no progress for {elapsed:.1f} s (max_stall_time {limit:g} s): the batch at offsets "
            f"{stuck.start}..{stuck.stop - 1} failed on {self.stalled_attempts} attempts in a "
            f"row; the last: {ending.describe()}"
        )
        code = error.code if error is not None else grpc.StatusCode.UNAVAILABLE
        raw = error.raw_status if error is not None else None
        return StreamError(code, message, raw, stuck_offsets=stuck)
