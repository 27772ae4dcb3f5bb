"""Core, used by enrich: the versioned price table that turns tokens into USD (read once at start).

The table ships as `prices.json` next to this module; a deployment adds or overrides models with
its own file in the same format (`turnstream serve --prices-file`). Prices are USD per 1M tokens,
each with the first day it applies, so re-pricing an old turn uses the price of its day.
Model names resolve exactly, then normalised, then by the longest table key that prefixes them;
nothing beyond that is guessed: an unknown model has no price, and its cost stays empty.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

BUILTIN_FILE = "prices.json"
UNIT = "USD per 1M tokens"
RATE_FIELDS = ("input", "output", "cache_read", "cache_creation")
# The merged version ("<built-in>+<user>") is stored per turn in a 64-character column.
MAX_VERSION_LENGTH = 32
MAX_MODEL_LENGTH = 256
_TOP_KEYS = frozenset({"version", "models", "unit", "notes"})
_ENTRY_KEYS = frozenset({"effective_from", *RATE_FIELDS, "note"})
# Resolved names are cached; the bound keeps a client inventing model names from growing it.
_CACHE_LIMIT = 4096

# "anthropic/claude-…", "openrouter/anthropic/claude-…", "models/gemini-…" (Google's SDK).
_PATH_PREFIX = re.compile(r"^.*/")
# "openai:gpt-4o"; the dot is excluded so Bedrock ids ("anthropic.claude-…-v1:0") stay intact.
_COLON_PREFIX = re.compile(r"^[a-z][a-z0-9_-]*:(?=.)")
# "-20250514" (Anthropic), "@20250514" (Vertex), "-2024-08-06" (OpenAI), "-latest".
_VERSION_SUFFIX = re.compile(r"[-@](?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


@dataclass(frozen=True, slots=True)
class Price:
    """Rates in USD per 1M tokens for one model, from table `version`."""

    model: str
    version: str
    input: float
    output: float
    cache_read: float
    cache_creation: float


class Rates(NamedTuple):
    """One dated line of the table."""

    effective_from: dt.date
    input: float
    output: float
    cache_read: float
    cache_creation: float


class PriceTable:
    """Prices by model and date; immutable after construction, shared by every request."""

    def __init__(self, version: str, models: Mapping[str, Sequence[Rates]]) -> None:
        self.version = version
        self._starts: dict[str, list[dt.datetime]] = {}
        self._prices: dict[str, list[Price]] = {}
        for model, lines in models.items():
            ordered = sorted(lines, key=lambda r: r.effective_from)
            self._starts[model] = [
                dt.datetime.combine(r.effective_from, dt.time(), dt.UTC) for r in ordered
            ]
            self._prices[model] = [
                Price(model, version, r.input, r.output, r.cache_read, r.cache_creation)
                for r in ordered
            ]
        # Longest first, so the first key that prefixes a name is the longest such key.
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._resolved: dict[str, str | None] = {}

    @classmethod
    def load(cls, extra: Path | None = None) -> PriceTable:
        """The built-in table, then `extra` (same format) whose models add to or replace the
        built-in ones. Raises ValueError naming the file and the entry when `extra` is invalid."""
        text = resources.files("turnstream.core").joinpath(BUILTIN_FILE).read_text("utf-8")
        version, models = parse(json.loads(text), f"built-in {BUILTIN_FILE}")
        if extra is not None:
            extra_version, extra_models = parse(_read_json(Path(extra)), str(extra))
            # A user model replaces the built-in one entirely: mixing dated lines of two
            # sources would make the price in force depend on both files.
            models = {**models, **extra_models}
            version = f"{version}+{extra_version}"
        return cls(version, models)

    @property
    def models(self) -> list[str]:
        """Table keys, sorted."""
        return sorted(self._prices)

    def lookup(self, model: str, at: dt.datetime) -> Price | None:
        """The price of `model` in force at `at` (naive = UTC), or None when the model is
        unknown or `at` is before its first price."""
        key = self._resolve(model)
        if key is None:
            return None
        moment = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at
        i = bisect.bisect_right(self._starts[key], moment) - 1
        return self._prices[key][i] if i >= 0 else None

    def _resolve(self, model: str) -> str | None:
        if model in self._prices:
            return model
        if model in self._resolved:
            return self._resolved[model]
        key = self._match(model)
        if len(self._resolved) < _CACHE_LIMIT:
            self._resolved[model] = key
        return key

    def _match(self, model: str) -> str | None:
        name = normalise(model)
        if name in self._prices:
            return name
        bare = _VERSION_SUFFIX.sub("", name)
        if bare in self._prices:
            return bare
        return next((key for key in self._by_length if name.startswith(key)), None)


def normalise(model: str) -> str:
    """Lower-case, surrounding space and provider prefix removed (version suffix kept)."""
    name = _PATH_PREFIX.sub("", model.strip().lower())
    return _COLON_PREFIX.sub("", name)


def parse(data: Any, source: str) -> tuple[str, dict[str, list[Rates]]]:
    """Check a decoded price file; every error names `source` and the bad entry."""
    fail = _Failure(source)
    if not isinstance(data, dict):
        raise fail("top level", "must be a JSON object with 'version' and 'models'")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail("top level", f"unknown keys {unknown} (allowed: {sorted(_TOP_KEYS)})")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise fail("version", 'must be a non-empty string, e.g. "2026-11-01"')
    if len(version) > MAX_VERSION_LENGTH or version != version.strip():
        raise fail("version", f"must be at most {MAX_VERSION_LENGTH} characters, unpadded")
    if data.get("unit", UNIT) != UNIT:
        raise fail("unit", f"must be {UNIT!r}, got {data['unit']!r}")
    models = data.get("models")
    if not isinstance(models, dict):
        raise fail("models", "must be an object mapping model names to lists of prices")
    table: dict[str, list[Rates]] = {}
    for model, lines in models.items():
        where = f"models[{model!r}]"
        if not model or len(model) > MAX_MODEL_LENGTH or model != model.strip().lower():
            raise fail(where, "model names must be non-empty, lower-case, without spaces")
        if not isinstance(lines, list) or not lines:
            raise fail(where, "must be a non-empty list of prices")
        table[model] = [_parse_rates(line, f"{where}[{i}]", fail) for i, line in enumerate(lines)]
        starts = [r.effective_from for r in table[model]]
        if len(set(starts)) != len(starts):
            raise fail(where, "two prices have the same effective_from")
    return version, table


class _Failure:
    """Builds the ValueError of one price file: "<file>: <entry>: <problem>"."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, where: str, problem: str) -> ValueError:
        return ValueError(f"{self.source}: {where}: {problem}")


def _parse_rates(line: Any, where: str, fail: _Failure) -> Rates:
    if not isinstance(line, dict):
        raise fail(where, "must be an object with effective_from, " + ", ".join(RATE_FIELDS))
    missing = [k for k in ("effective_from", *RATE_FIELDS) if k not in line]
    if missing:
        raise fail(where, f"missing {', '.join(missing)}")
    unknown = sorted(set(line) - _ENTRY_KEYS)
    if unknown:
        raise fail(where, f"unknown keys {unknown} (allowed: {sorted(_ENTRY_KEYS)})")
    start = line["effective_from"]
    try:
        effective_from = dt.date.fromisoformat(start)
    except (TypeError, ValueError):
        raise fail(f"{where}.effective_from", f"must be a date YYYY-MM-DD, got {start!r}") from None
    rates: list[float] = []
    for key in RATE_FIELDS:
        value = line[key]
        # bool is an int in Python; `true` in a price file is a mistake, not $1.
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise fail(f"{where}.{key}", f"must be a finite number >= 0 ({UNIT}), got {value!r}")
        rates.append(float(value))
    return Rates(effective_from, *rates)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the price file: {e.strerror or e}") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not a valid JSON price file: {e}") from e
