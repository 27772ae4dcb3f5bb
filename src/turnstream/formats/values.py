"""Formats: JSON values as every foreign format writes them back (no I/O)."""

from __future__ import annotations

from typing import Any


def integral(value: Any) -> Any:
    """Struct stores every number as a double; write 8192.0 back as 8192, as it was most likely
    sent (JSON does not tell them apart, people reading it do)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value
