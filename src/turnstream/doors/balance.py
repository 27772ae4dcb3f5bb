"""Door: Append streams spread evenly over the processes of `serve --workers N`.

The processes share one port with SO_REUSEPORT, and the kernel hashes each TCP connection (its
addresses and ports) to one process: the split of a handful of long-lived connections is luck
(8 streams on 2 processes split 6/2 or worse about a third of the time), and the batched rate
follows the busier process. A connection age limit only redraws the luck now and then.

So the processes count their open Append calls in one small shared file, one slot per process
(`Shares`; the first process creates it before it starts the others, and each process writes
only its own slot). When a stream opens on a process that would then hold two or more streams
more than the least loaded other process (`turn_away`), the open is turned away at once, before
any work: UNAVAILABLE, reason REBALANCE, RetryInfo 0 s. A new connection (a new source port, so
a new hash) lands it on a process drawn again; the rule holds each process within one stream of
the least loaded one.

Only clients that said they reconnect on a *new connection* are turned away: they send the
`turnstream-rebalance` metadata, whose value is how many times this open was already turned
away (the SDK's StreamWriter and bench/load.py do). A client without it (Go, Node, grpcurl, an
older SDK) is always taken, so it can never be sent round in a loop; after `MAX_TURNS` the
open is taken wherever it lands. Unary calls are never turned away: each is short, and turning
one away would waste its upload."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.rpc import status_pb2

from turnstream import errors

log = logging.getLogger(__name__)

HEADER = "turnstream-rebalance"
# An open is turned away at most this many times; then it is taken wherever it lands. With
# two processes an open needing a move stays put after 12 draws with probability 1/4096
# (a turn-away costs a TCP handshake and one round trip).
MAX_TURNS = 12
# The environment variable that gives a worker process its slot: "INDEX:PATH".
ENV = "TURNSTREAM_WORKER_SLOT"

_SLOT = struct.Struct("<ii")  # pid (0: not serving), open Append calls


def turn_away(mine: int, others: Sequence[int]) -> bool:
    """Whether a process that would hold `mine` streams with the new one (its own count + 1)
    turns the new one away, when the other serving processes hold `others`: yes when it would
    hold two or more beyond the least loaded of them (moving the stream there evens the load;
    at one beyond, a move would only swap which process holds the extra stream)."""
    return bool(others) and mine > min(others) + 1


def attempt_of(metadata: Sequence[tuple[str, str | bytes]] | None) -> int | None:
    """The `turnstream-rebalance` value of a call's metadata: times this open was turned away
    already; None when the client did not declare that it reconnects on a new connection."""
    for key, value in metadata or ():
        if key == HEADER:
            text = value.decode() if isinstance(value, bytes) else value
            try:
                return max(0, int(text))
            except ValueError:
                return None  # not ours to guess: treat it as a client without the header
    return None


class Shares:
    """The shared file of open-stream counts: `processes` slots of (pid, count). Readers may
    see a slot mid-write or a moment old; that only makes one open's decision a little off,
    and the next open sees the counts again."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        self.index = index
        with path.open("r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self.processes = len(self._map) // _SLOT.size
        if not 0 <= index < self.processes:
            raise ValueError(f"slot {index} is not in {path} ({self.processes} slots)")

    @staticmethod
    def create(processes: int) -> Path:
        """A zeroed file of `processes` slots, in shared memory when the system has it."""
        where = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, name = tempfile.mkstemp(prefix="turnstream-balance-", dir=where)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(_SLOT.size * processes))
        return Path(name)

    def write(self, pid: int, count: int) -> None:
        if not self._map.closed:  # a call ending after the shutdown closed the map
            _SLOT.pack_into(self._map, self.index * _SLOT.size, pid, count)

    def others(self) -> list[int]:
        """The counts of the other processes that are serving (pid set and alive)."""
        out = []
        for i in range(self.processes):
            if i == self.index:
                continue
            pid, count = _SLOT.unpack_from(self._map, i * _SLOT.size)
            if pid > 0 and _alive(pid):
                out.append(count)
        return out

    def close(self) -> None:
        with contextlib.suppress(ValueError, BufferError):
            self._map.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Balance:
    """One process's side: `admit` each Append open, `leave` when its call ends."""

    def __init__(self, shares: Shares) -> None:
        self.shares = shares
        self.open = 0
        self.turned_away = 0
        self._serving = False

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Balance | None:
        """The slot a worker was given by its first process (ENV), if any."""
        value = (os.environ if env is None else env).get(ENV, "")
        if not value:
            return None
        index, _, path = value.partition(":")
        return cls(Shares(Path(path), int(index)))

    def serving(self) -> None:
        """The process takes calls: the others may count on it."""
        self._serving = True
        self.shares.write(os.getpid(), self.open)

    def stopping(self) -> None:
        """A drain began: the others must not send streams here any more."""
        self._serving = False
        self.shares.write(0, self.open)

    def admit(self, attempt: int | None) -> status_pb2.Status | None:
        """None: the open is taken (counted until `leave`); else the status that turns it
        away. `attempt` is the client's header (None: it cannot be turned away)."""
        if (
            self._serving
            and attempt is not None
            and attempt < MAX_TURNS
            and turn_away(self.open + 1, self.shares.others())
        ):
            self.turned_away += 1
            return errors.rebalance(attempt, MAX_TURNS)
        self.open += 1
        self._publish()
        return None

    def leave(self) -> None:
        self.open -= 1
        self._publish()

    def _publish(self) -> None:
        self.shares.write(os.getpid() if self._serving else 0, self.open)

    def close(self) -> None:
        self.shares.write(0, 0)
        self.shares.close()
