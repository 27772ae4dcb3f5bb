"""Metrics: every metric turnstream exports, in one `Metrics` object per server (its own
registry, so two servers in one test process never share counts).

Names and labels of the gRPC server metrics are those of go-grpc-prometheus and
py-grpc-prometheus, so existing dashboards and alerts work unchanged. Ingest metrics are
labelled by record kind and door (both bounded sets); the tenant appears on one counter only
(`turnstream_tenant_records_total{tenant,outcome}`): tenants come from keys an admin creates,
never from a payload, so that is bounded too, but tenants x kinds x doors would not be."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from turnstream.core.batch import KINDS, BatchOutcome, WriteBatch

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from sub-millisecond unary calls to streams that live for hours.
GRPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
FLUSH_ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        # In multiprocess mode values live in files and the registry only names them; a scrape
        # reads every process's files (procs.py).
        r = self.registry = CollectorRegistry(auto_describe=True)
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            grpc_labels,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of RPCs handled by the server.",
            grpc_labels,
            buckets=GRPC_BUCKETS,
            registry=r,
        )
        self.grpc_received = Counter(
            "grpc_server_msg_received_total",
            "RPC stream messages received on the server.",
            grpc_labels,
            registry=r,
        )
        self.grpc_sent = Counter(
            "grpc_server_msg_sent_total",
            "RPC stream messages sent by the server.",
            grpc_labels,
            registry=r,
        )
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route template (not the raw path) and status.",
            ("method", "route", "status"),
            registry=r,
        )
        self.http_seconds = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency (seconds), by route template.",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.records = Counter(
            "turnstream_records_total",
            "Records committed or dead-lettered, by kind, door and outcome (accepted: created "
            "or changed; unchanged: an exact retry; rejected: invalid or refused, kept as a "
            "dead letter).",
            ("kind", "door", "outcome"),
            registry=r,
        )
        self.tenant_records = Counter(
            "turnstream_tenant_records_total",
            "Records committed or dead-lettered, by tenant and outcome.",
            ("tenant", "outcome"),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "turnstream_commit_seconds",
            "Seconds one group commit took (the transaction of a flush, from start to commit).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.flush_rows = Histogram(
            "turnstream_flush_rows",
            "Rows in one group commit.",
            buckets=FLUSH_ROW_BUCKETS,
            registry=r,
        )
        self.flush_failures = Counter(
            "turnstream_flush_failures_total",
            "Group commits that failed (database unavailable, or a bug); none of it was acked.",
            registry=r,
        )
        self.pending_rows = Gauge(
            "turnstream_writer_pending_rows",
            "Rows queued for the writer and not yet committed.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            "turnstream_open_streams",
            "Append streams with a live call.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.process_open_streams = Gauge(
            "turnstream_process_open_streams",
            "Append streams with a live call in this process: with --workers, one sample per "
            "process (label pid), which shows how evenly the streams are spread.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.rebalanced = Counter(
            "turnstream_streams_rebalanced_total",
            "Append opens turned away (REBALANCE) by a --workers process holding more streams "
            "than another, to be reopened on a new connection.",
            registry=r,
        )
        self.unpriced = Counter(
            "turnstream_unpriced_turns_total",
            "Turns whose model has no price (cost left empty, never guessed).",
            registry=r,
        )
        self.database_up = Gauge(
            "turnstream_database_up",
            "1 while the writer's database answers, 0 while it is down.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.database_up.set(1)
        self._children: dict[tuple[str, ...], Any] = {}
        self._samplers: list[Callable[[], None]] = []

    # -- the writer's observer ----------------------------------------------------------------

    def on_flush(
        self,
        batches: Sequence[WriteBatch],
        results: Sequence[BatchOutcome | BaseException],
        seconds: float,
    ) -> None:
        """After each group commit: counts summed per label set first, so a flush of 500
        one-record batches costs a few counter updates, not a few per record."""
        counts: dict[tuple[str, ...], int] = {}
        tenants: dict[tuple[str, ...], int] = {}
        rows = 0
        for batch, result in zip(batches, results, strict=True):
            if isinstance(result, BaseException):
                continue
            door = batch.door or "unknown"
            for kind in KINDS:
                c = result.counts[kind]
                accepted = c.created + c.updated
                if accepted:
                    _add(counts, (kind, door, "accepted"), accepted)
                    _add(tenants, (batch.tenant_id, "accepted"), accepted)
                if c.unchanged:
                    _add(counts, (kind, door, "unchanged"), c.unchanged)
                    _add(tenants, (batch.tenant_id, "unchanged"), c.unchanged)
                rows += accepted + c.unchanged
            for dead in batch.rejected:
                # A request that did not parse has no record kind: "unparsed" (bounded).
                dead_kind = str(dead.get("kind"))
                dead_kind = dead_kind if dead_kind in KINDS else "unparsed"
                _add(counts, (dead_kind, door, "rejected"), 1)
            for failed in result.failed:
                _add(counts, (failed.kind, door, "rejected"), 1)
            rejected = len(batch.rejected) + len(result.failed)
            if rejected:
                _add(tenants, (batch.tenant_id, "rejected"), rejected)
            rows += len(batch.rejected)
        if not counts and not tenants and any(isinstance(r, BaseException) for r in results):
            self.flush_failures.inc()
            return
        for key, n in counts.items():
            self._child(self.records, key).inc(n)
        for key, n in tenants.items():
            self._child(self.tenant_records, key).inc(n)
        self.commit_seconds.observe(seconds)
        self.flush_rows.observe(rows)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        # .labels() formats and locks on every call; the children are cached per label set.
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- gauges and process totals, read when a scrape comes (or every second) ----------------

    def sampler(self, sample: Callable[[], None]) -> None:
        self._samplers.append(sample)

    def sample(self) -> None:
        for sample in self._samplers:
            sample()

    def render(self) -> bytes:
        """The text exposition of this process, or of every process in multiprocess mode."""
        self.sample()
        if self.multiprocess_dir is None:
            return bytes(generate_latest(self.registry))
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(merged))


def _add(into: dict[Any, int], key: Any, n: int) -> None:
    into[key] = into.get(key, 0) + n
