"""Configuration: one frozen Settings, built once from flags and TURNSTREAM_* variables and
passed explicitly; nothing else reads the environment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "TURNSTREAM_"


@dataclass(frozen=True, slots=True)
class Settings:
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    database_url: str = "sqlite:///./turnstream.db"
    # A JSON price file that adds or overrides models of the built-in table.
    prices_file: Path | None = None
    # Apply migrations at start; `turnstream migrate` does it explicitly.
    auto_migrate: bool = True
    # Seconds a SIGTERM waits for in-flight work to commit and be answered.
    shutdown_grace: float = 10.0
    # Streams: heartbeat on idle streams (below Envoy's 5-minute stream idle timeout).
    heartbeat_interval: float = 30.0
    max_batch_records: int = 1_000
    max_batch_bytes: int = 4 * 1024 * 1024
    max_inflight_batches: int = 16
    # Writer: most rows in one transaction, and most rows queued before callers wait.
    max_flush_rows: int = 5_000
    max_pending_rows: int = 50_000
    # Database: the longest any database call (connect, statement, lock wait, a commit) may take
    # before callers are answered UNAVAILABLE and health turns NOT_SERVING. A hung database or a
    # network partition is "down", not a hang.
    db_timeout: float = 5.0
    # Requests: the largest gRPC message accepted, the most records in one Write, and the bytes
    # of requests being prepared at once (admission before the pipeline: bounded memory).
    max_message_bytes: int = 16 * 1024 * 1024
    max_request_records: int = 100_000
    max_inflight_bytes: int = 16 * 1024 * 1024
    # Streams: an Append call that sends no `open` within this many seconds is closed.
    open_timeout: float = 30.0
    # HTTP listener: most open connections, and seconds an idle keep-alive or a request that
    # never finishes its headers or body may hold a connection.
    http_max_connections: int = 1_000
    # The largest JSON body accepted (after gzip decompression); larger is 413.
    http_max_body_bytes: int = 10 * 1024 * 1024
    http_timeout: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    # Processes serving the same ports (SO_REUSEPORT): the pipeline is CPU-bound Python, so one
    # process uses one core. Replicas are safe by design: offsets and fencing live in the
    # database. Best with PostgreSQL; SQLite serialises writers on its file lock.
    workers: int = 1
    # Set for the processes of a --workers group: share the listening ports.
    reuse_port: bool = False
    # API keys (docs/auth.md): "auto" lets a server bound to loopback only, with no keys created,
    # take calls without a key (tenant "default"); "required" always demands a key.
    auth: str = "auto"
    # Seconds a key check (positive or negative) is cached per process: the bound on how long a
    # revoked key keeps working on a replica that has just checked it.
    auth_cache_ttl: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then TURNSTREAM_<FIELD> variables, then explicit overrides (flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The TURNSTREAM_* variables that rebuild these settings (for worker processes)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out[ENV_PREFIX + f.name.upper()] = text
        return out


def _parse(name: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if name.endswith("_file"):
            return Path(raw)
        return raw
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {type(default).__name__}"
        ) from None


def split_addr(addr: str) -> tuple[str, int]:
    """ "127.0.0.1:50051" -> ("127.0.0.1", 50051); "[::1]:50051" -> ("::1", 50051)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"address {addr!r} must be HOST:PORT, e.g. 127.0.0.1:50051")
    return host.strip("[]"), int(port)
