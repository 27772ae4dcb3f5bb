"""Configuration: one frozen Settings, built once from flags and TURNSTREAM_* variables and
passed explicitly; nothing else reads the environment."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "TURNSTREAM_"
# Settings that name files.
FILE_FIELDS = ("prices_file", "tls_cert", "tls_key", "tls_client_ca")
PATH_FIELDS = frozenset({*FILE_FIELDS, "metrics_dir"})


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
    # gRPC server reflection (grpcurl, Postman list the services); off hides the schema.
    reflection: bool = True
    # Prometheus /metrics on the HTTP port, gRPC server and HTTP request metrics, ingest metrics.
    metrics: bool = True
    # TLS for both ports (PEM files): a certificate chain and its key. With a client CA, every
    # client must present a certificate it signed (mTLS), on gRPC and HTTP alike.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Where the processes of a --workers group write their metrics, summed on every scrape
    # (metrics/procs.py). `serve --workers N` creates a temporary one when unset.
    metrics_dir: Path | None = None
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

    def validate(self) -> list[str]:
        """Every problem of these settings at once (like core/validate.py: fix them all in one
        go), one sentence each naming the setting and its rule; empty when they are valid."""
        return _problems(self)

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
        if name in PATH_FIELDS:
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


# Proxies and load balancers close idle streams: Envoy after 5 minutes (its stream idle
# timeout), AWS ALB and nginx after 60 s by default. Heartbeats must come more often than that.
MAX_HEARTBEAT = 60.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
AUTH_MODES = ("auto", "required")  # docs/auth.md
# Settings that must be > 0 (seconds) and >= 1 (counts, bytes).
_POSITIVE_SECONDS = (
    "db_timeout",
    "http_timeout",
    "open_timeout",
    "heartbeat_interval",
    "auth_cache_ttl",
)
_AT_LEAST_ONE = (
    "max_batch_records",
    "max_batch_bytes",
    "max_inflight_batches",
    "max_flush_rows",
    "max_pending_rows",
    "max_message_bytes",
    "max_request_records",
    "max_inflight_bytes",
    "http_max_connections",
    "http_max_body_bytes",
    "workers",
)


# Settings `serve` also takes as flags (cli.py; tests/ops/test_config.py holds the two equal).
FLAGS = {
    "grpc_addr": "--grpc-addr",
    "http_addr": "--http-addr",
    "database_url": "--database-url",
    "prices_file": "--prices-file",
    "auto_migrate": "--no-migrate",
    "shutdown_grace": "--shutdown-grace",
    "db_timeout": "--db-timeout",
    "http_timeout": "--http-timeout",
    "http_max_connections": "--http-max-connections",
    "workers": "--workers",
    "log_level": "--log-level",
    "log_format": "--log-format",
    "reflection": "--no-reflection",
    "metrics": "--no-metrics",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_client_ca": "--tls-client-ca",
    "auth": "--auth",
    "auth_cache_ttl": "--auth-cache-ttl",
}


def setting_name(name: str) -> str:
    """How a user sets it: the variable, and the flag when there is one."""
    flag = FLAGS.get(name)
    where = f"{flag} / {ENV_PREFIX}{name.upper()}" if flag else f"{ENV_PREFIX}{name.upper()}"
    return f"{name} ({where})"


def _problems(s: Settings) -> list[str]:
    out: list[str] = []

    def bad(name: str, rule: str) -> None:
        out.append(f"{setting_name(name)}: {rule}")

    for name in ("grpc_addr", "http_addr"):
        try:
            _, port = split_addr(getattr(s, name))
        except ValueError as exc:
            bad(name, str(exc))
            continue
        if port > 65535:
            bad(name, f"port {port} is not a TCP port (0-65535)")
        elif port == 0 and s.workers > 1:
            bad(name, "--workers needs fixed ports: port 0 asks for a free one in each process")
    if not s.database_url.startswith(("sqlite://", "postgresql")):
        bad("database_url", "must be sqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB")
    for name in _POSITIVE_SECONDS:
        value = getattr(s, name)
        if not value > 0 or value == float("inf"):
            bad(name, f"must be a number of seconds > 0, got {value}")
    if s.shutdown_grace < 0 or s.shutdown_grace == float("inf"):
        bad("shutdown_grace", f"must be a number of seconds >= 0, got {s.shutdown_grace}")
    if s.heartbeat_interval > 0 and s.heartbeat_interval >= MAX_HEARTBEAT:
        bad(
            "heartbeat_interval",
            f"must be below {MAX_HEARTBEAT:g} s, the idle timeout of common proxies (AWS ALB, "
            f"nginx; Envoy's stream idle timeout is 300 s), got {s.heartbeat_interval:g}",
        )
    for name in _AT_LEAST_ONE:
        value = getattr(s, name)
        if value < 1:
            bad(name, f"must be at least 1, got {value}")
    if s.max_batch_bytes > s.max_message_bytes >= 1:
        bad(
            "max_batch_bytes",
            f"must not exceed max_message_bytes ({s.max_message_bytes}): a batch travels in "
            f"one message, got {s.max_batch_bytes}",
        )
    if s.log_level.upper() not in LOG_LEVELS or not isinstance(
        logging.getLevelName(s.log_level.upper()), int
    ):
        bad("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    if s.log_format not in LOG_FORMATS:
        bad("log_format", f"must be one of {', '.join(LOG_FORMATS)}, got {s.log_format!r}")
    if s.auth not in AUTH_MODES:
        bad("auth", f"must be one of {', '.join(AUTH_MODES)}, got {s.auth!r}")
    for name in FILE_FIELDS:
        path = getattr(s, name)
        if path is not None and not _readable(path):
            bad(name, f"must be a readable file, {str(path)!r} is not")
    if s.tls_key is not None and s.tls_cert is None:
        bad("tls_key", "is set without tls_cert: TLS needs both the certificate and its key")
    if s.tls_cert is not None and s.tls_key is None:
        bad("tls_cert", "is set without tls_key: TLS needs both the certificate and its key")
    if s.tls_client_ca is not None and s.tls_cert is None:
        bad("tls_client_ca", "needs tls_cert and tls_key: mTLS is TLS plus client certificates")
    return out


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


def masked(settings: Settings) -> dict[str, str]:
    """Every setting as `turnstream config` prints it, secrets masked (the database password)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "database_url":
            value = mask_url(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        out[f.name] = "" if value is None else str(value)
    return out


def mask_url(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:****@host/db"""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}"
