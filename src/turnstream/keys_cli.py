"""Entrypoint: `turnstream keys create|list|revoke` — API keys in the database the server reads
(docs/auth.md). A key is printed once, at creation; only its hash is stored."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import TextIO

from turnstream.core.auth import SCOPES, KeyRecord

HELP = """\
A key is `ts_<key_id>_<secret>`: callers send it as `Authorization: Bearer <key>` (HTTP header
or gRPC metadata; Kubiya clients may send `UserKey <key>`). Each key belongs to one tenant: every
record it writes and every query it runs is that tenant's. Scopes: ingest (write records,
streams), read (analytics, dashboard), admin (both). Revoking takes effect within the server's
--auth-cache-ttl (5 s) on every replica. While no key exists, a server listening on loopback
only takes calls without a key as tenant `default`; once one exists, every call needs a key.
"""


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    db_flag: Callable[[argparse.ArgumentParser], None],
) -> None:
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Manage API keys in the database (applies migrations first).",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="create a key and print it (once)",
        description="Create a key for TENANT (the tenant is created on first use) and print it. "
        "The key is shown only now: store it in your secret manager.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("--tenant", required=True, help="the tenant the key writes and reads as")
    create.add_argument(
        "--scopes",
        default="ingest,read",
        metavar="LIST",
        help=f"comma-separated, of {', '.join(SCOPES)} [ingest,read]",
    )
    create.add_argument("--name", default="", help="a note: who or what uses the key")
    create.add_argument(
        "--expires",
        metavar="TIME",
        help="RFC 3339 time or YYYY-MM-DD (UTC) after which the key stops working [never]",
    )
    create.add_argument("--quiet", action="store_true", help="print only the key (for scripts)")
    listing = actions.add_parser(
        "list", help="list keys (never their secrets)", description="List keys, oldest first."
    )
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke a key by its id (the part after ts_). Every replica refuses it "
        "within its key cache TTL (5 s by default); open Append streams using it are ended.",
    )
    revoke.add_argument("key_id", metavar="KEY_ID")
    for parser in (create, listing, revoke):
        db_flag(parser)


def _time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--expires {text!r} is not an RFC 3339 time or a YYYY-MM-DD date"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    if value <= dt.datetime.now(dt.UTC):
        raise ValueError(f"--expires {text!r} is in the past: the key would never work")
    return value


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _row(r: KeyRecord) -> dict[str, object]:
    return {
        "key_id": r.key_id,
        "tenant": r.tenant_id,
        "scopes": ",".join(sorted(r.scopes)),
        "name": r.name,
        "created": _when(r.created_at),
        "expires": _when(r.expires_at),
        "revoked": _when(r.revoked_at),
    }


def run(args: argparse.Namespace, database_url: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from turnstream.store.engine import create_engine, migrate
    from turnstream.store.keys import KeyStore

    engine = create_engine(database_url)
    try:
        migrate(engine)
        keys = KeyStore(engine)
        if args.keys_command == "create":
            expires = _time(args.expires) if args.expires else None
            made, record = keys.create(args.tenant, args.scopes, args.name, expires)
            if args.quiet:
                print(made.key, file=out)
                return 0
            scopes = ", ".join(sorted(record.scopes))
            print(
                f"Created API key {made.key_id} for tenant {record.tenant_id!r} "
                f"(scopes: {scopes}; expires: {_when(expires)}).\n"
                "This is the only time the key is shown (only its hash is stored):\n\n"
                f"    {made.key}\n\n"
                "Send it as:\n"
                "    HTTP      Authorization: Bearer <key>   (Kubiya clients: UserKey <key>)\n"
                "    gRPC      metadata  authorization: Bearer <key>\n"
                '    Python    StreamWriter(target, api_key="<key>")\n'
                f"Revoke it with: turnstream keys revoke {made.key_id}",
                file=out,
            )
            return 0
        if args.keys_command == "list":
            rows = [_row(r) for r in keys.list(args.tenant)]
            if args.json:
                for row in rows:
                    print(json.dumps(row), file=out)
                return 0
            if not rows:
                print("no keys" + (f" for tenant {args.tenant!r}" if args.tenant else ""), file=out)
                return 0
            heads = list(rows[0])
            widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in heads}
            print("  ".join(h.upper().ljust(widths[h]) for h in heads).rstrip(), file=out)
            for row in rows:
                print("  ".join(str(row[h]).ljust(widths[h]) for h in heads).rstrip(), file=out)
            return 0
        revoked = keys.revoke(args.key_id)
        if revoked is None:
            print(f"turnstream: error: no key has id {args.key_id!r}", file=sys.stderr)
            return 1
        print(
            f"revoked key {revoked.key_id} of tenant {revoked.tenant_id!r} at "
            f"{_when(revoked.revoked_at)}; servers refuse it within their key cache TTL",
            file=out,
        )
        return 0
    finally:
        engine.dispose()
