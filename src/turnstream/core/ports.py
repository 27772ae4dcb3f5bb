"""Core: the domain errors every layer shares and the ports the store implements (no I/O). The
store raises the errors, the core's service layer turns them into answers, doors never see a
driver's exception."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from turnstream.core.batch import Submission, WriteBatch
    from turnstream.v1 import analytics_pb2 as pb


class StoreUnavailable(Exception):
    """The database cannot take writes now; nothing of the batch was stored. Retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StreamConflict(Exception):
    """The stream's offset or epoch moved (a newer connection opened it, or another replica
    stored these offsets); nothing of the batch was stored."""

    def __init__(self, stream_id: str, epoch: int, committed_offset: int) -> None:
        super().__init__(f"stream {stream_id!r} is at offset {committed_offset}, epoch {epoch}")
        self.stream_id = stream_id
        self.epoch = epoch
        self.committed_offset = committed_offset


class Failure(Exception):
    """A call fails with this google.rpc.Status (built by turnstream.errors): the gRPC door
    aborts with it, the HTTP doors answer it from the same error table."""

    def __init__(self, status: Any) -> None:
        super().__init__(status.message)
        self.status = status


class StreamPosition(Protocol):
    """Where a stream stands after an open: its fencing epoch and committed offset."""

    epoch: int
    committed_offset: int


class StreamStore(Protocol):
    """What the streaming door needs of the store: open (fence) a stream, submit a batch."""

    async def open_stream(self, tenant_id: str, stream_id: str) -> StreamPosition: ...

    async def submit(self, batch: Any) -> Any: ...

    def enqueue(self, batch: WriteBatch) -> Submission: ...

    def join(self, submission: Submission, batch: WriteBatch) -> bool: ...


# Where a ListExecutions page ends: the last execution's (started_at, execution_id).
Keyset = tuple[dt.datetime, str]


class AnalyticsStore(Protocol):
    """What the read side needs of storage (store/analytics_reads.AnalyticsReads); filters are
    plain words and times. Reads use their own connections, never the writer's."""

    async def dashboard(self, tenant_id: str, **query: Any) -> pb.GetDashboardResponse: ...

    async def execution(
        self, tenant_id: str, execution_id: str
    ) -> pb.GetExecutionResponse | None: ...

    async def executions(
        self, tenant_id: str, page_size: int, after: Keyset | None, **filters: Any
    ) -> tuple[pb.ListExecutionsResponse, Keyset | None]: ...
