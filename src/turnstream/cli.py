"""Entrypoint: the `turnstream` command (serve, config, migrate, keys, send, demo)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from turnstream import __version__, keys_cli, logctx
from turnstream.config import ENV_PREFIX, Settings, masked

DESCRIPTION = """\
turnstream receives LLM-agent telemetry (turns, tool calls, tasks) over gRPC, validates and
enriches every record (cost, AEM), and stores it in SQL. An ack means the record is committed;
retries are never stored twice; invalid records are answered field by field and kept.
"""

EPILOG = """\
environment: every flag of `serve` can be set as TURNSTREAM_<NAME> (e.g. TURNSTREAM_DATABASE_URL,
TURNSTREAM_GRPC_ADDR, TURNSTREAM_HTTP_ADDR); a flag wins over the variable.
"""


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (RFC 3339, UTC, milliseconds), level, logger,
    message, and the request / stream / tenant ids bound where the line was logged."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        out = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **logctx.current(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


class InvalidSettings(Exception):
    pass


def _valid(settings: Settings) -> Settings:
    """The settings, or InvalidSettings listing every problem (one line each)."""
    problems = settings.validate()
    if problems:
        lines = "".join(f"\n  - {p}" for p in problems)
        raise InvalidSettings(f"{len(problems)} invalid setting(s), nothing was started:{lines}")
    return settings


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Alembic announces every plugin it loads at INFO; only the migrations it runs matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstream",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"turnstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the server (gRPC + HTTP) until SIGTERM",
        description="Run the gRPC ingest server and the HTTP listener (/healthz). Applies "
        "migrations at start. SIGTERM drains: in-flight work is committed and answered.",
        epilog=EPILOG,
    )
    _serve_flags(serve)
    config = sub.add_parser(
        "config",
        help="print the effective settings (flags + TURNSTREAM_* variables), secrets masked",
        description="Print the settings `serve` would run with, from the same flags and "
        "TURNSTREAM_* variables, as TURNSTREAM_NAME=value lines (the database password masked). "
        "Exits 2, naming every invalid setting and its rule, when `serve` would refuse them.",
        epilog=EPILOG,
    )
    _serve_flags(config)

    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply every pending migration to the database (idempotent).",
        epilog=EPILOG,
    )
    _db_flag(migrate)

    send = sub.add_parser(
        "send",
        help="send JSON files in Kubiya's batch format to a server",
        description="Send files of Kubiya analytics batches ({execution_id, turns, tool_calls, "
        "tasks}: one object, an array, or JSON Lines) through IngestService.Write, with a "
        "progress bar and a summary of what was stored and rejected. Exits 1 when anything "
        "was rejected or failed.",
    )
    send.add_argument("files", nargs="+", type=Path, metavar="FILE")
    send.add_argument(
        "--target",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="server address [127.0.0.1:50051]",
    )
    send.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per-request deadline [30]"
    )
    send.add_argument(
        "--api-key",
        metavar="KEY",
        help="API key with the ingest scope (docs/auth.md) [$TURNSTREAM_API_KEY]",
    )
    keys_cli.add_parser(sub, _db_flag)
    demo = sub.add_parser(
        "demo",
        help="fill the database with realistic generated executions",
        description="Generate executions (workflows, models, tools, failures, triggers, cache "
        "hits; the last --days days) and store them through the normal ingest path, so the "
        "dashboard at / has something to show.",
    )
    _db_flag(demo)
    demo.add_argument("--executions", type=int, default=2000, help="how many [2000]")
    demo.add_argument("--days", type=int, default=21, help="history to spread them over [21]")
    demo.add_argument("--seed", type=int, default=7, help="random seed [7]")
    return parser


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--grpc-addr", metavar="HOST:PORT", help="gRPC listen address [127.0.0.1:50051]"
    )
    serve.add_argument(
        "--http-addr", metavar="HOST:PORT", help="HTTP listen address [127.0.0.1:8080]"
    )
    _db_flag(serve)
    serve.add_argument(
        "--prices-file",
        type=Path,
        metavar="FILE",
        help="JSON price table adding or overriding models",
    )
    serve.add_argument(
        "--shutdown-grace", type=float, metavar="SECONDS", help="drain deadline on SIGTERM [10]"
    )
    serve.add_argument(
        "--db-timeout",
        type=float,
        metavar="SECONDS",
        help="longest a database call may take (connect, statement, lock wait, commit) before "
        "callers get UNAVAILABLE and health turns NOT_SERVING [5]",
    )
    serve.add_argument(
        "--http-timeout",
        type=float,
        metavar="SECONDS",
        help="an HTTP connection that does not send a complete request (headers and body) "
        "within this long after opening or after its last response is closed [30]",
    )
    serve.add_argument(
        "--http-max-connections",
        type=int,
        metavar="N",
        help="open HTTP connections beyond this are answered 503 and closed [1000]",
    )
    serve.add_argument(
        "--no-migrate",
        dest="auto_migrate",
        action="store_const",
        const=False,
        help="do not apply migrations at start",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the ports, one core each (use with PostgreSQL) [1]",
    )
    serve.add_argument(
        "--auth",
        choices=["auto", "required"],
        help="auto: with no API key created, a loopback-only server takes calls without a key "
        "as tenant 'default'; required: every call needs a key [auto]",
    )
    serve.add_argument(
        "--auth-cache-ttl",
        type=float,
        metavar="SECONDS",
        help="how long a key check is cached: a revoked key stops working within this [5]",
    )
    serve.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR [INFO]")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format [text]")
    serve.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_const",
        const=False,
        help="turn off gRPC server reflection",
    )
    serve.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_const",
        const=False,
        help="turn off Prometheus metrics (/metrics and the gRPC/HTTP/ingest counters)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="TLS private key (PEM)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="CA (PEM) that signs client certificates: every client must present one (mTLS)",
    )


def _db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="sqlite:///path.db or postgresql+psycopg://user:pass@host/db [sqlite:///./turnstream.db]",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        if args.command == "config":
            settings = _valid(Settings.from_env(**options))
            for name, value in masked(settings).items():
                print(f"{ENV_PREFIX}{name.upper()}={value}")
            return 0
        if args.command == "serve":
            settings = _valid(Settings.from_env(**options))
            _setup_logging(settings.log_level, settings.log_format)
            # Before prometheus_client is imported (by the server): --workers share metrics.
            from turnstream.metrics import procs

            settings = procs.prepare(settings)
            from turnstream.server import serve

            asyncio.run(serve(settings))
            return 0
        if args.command == "migrate":
            settings = Settings.from_env(**options)
            _setup_logging(settings.log_level, settings.log_format)
            from turnstream.store.engine import create_engine, migrate

            engine = create_engine(settings.database_url)
            migrate(engine)
            print(f"database {engine.url.render_as_string(hide_password=True)} is up to date")
            return 0
        if args.command == "keys":
            settings = Settings.from_env(database_url=args.database_url)
            _setup_logging("WARNING", "text")
            return keys_cli.run(args, settings.database_url)
        if args.command == "demo":
            settings = Settings.from_env(database_url=args.database_url)
            _setup_logging("WARNING", "text")
            from turnstream.demo import run_demo

            run_demo(settings.database_url, args.executions, args.days, args.seed)
            return 0
        if args.command == "send":
            _setup_logging("WARNING", "text")
            from turnstream.send import send_files

            # A key on the command line shows in `ps`; the variable does not.
            key = args.api_key or os.environ.get("TURNSTREAM_API_KEY")
            metadata = [("authorization", f"Bearer {key}")] if key else []
            summary = asyncio.run(
                send_files(args.files, args.target, timeout=args.timeout, metadata=metadata)
            )
            return 1 if (summary.rejected or summary.failed_files) else 0
    except InvalidSettings as exc:
        print(f"turnstream: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"turnstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
