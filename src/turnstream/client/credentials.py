"""SDK: the API key as call metadata (`authorization: Bearer <key>`, docs/auth.md)."""

from __future__ import annotations

from collections.abc import Sequence


def with_api_key(
    metadata: Sequence[tuple[str, str]], api_key: str | None
) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the key's `authorization` entry (a key given here replaces one in
    `metadata`). The key is sent on every call; over a network use TLS credentials."""
    if not api_key:
        return tuple(metadata)
    kept = tuple((k, v) for k, v in metadata if k.lower() != "authorization")
    return (*kept, ("authorization", f"Bearer {api_key.strip()}"))
