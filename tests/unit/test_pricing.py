"""pricing: the shipped table, name resolution, effective dates and user price files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from turnstream.core.pricing import Price, PriceTable

AT = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def rates(price: Price | None) -> tuple[float, float, float, float] | None:
    if price is None:
        return None
    return (price.input, price.output, price.cache_read, price.cache_creation)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-opus-4", (15, 75, 1.5, 18.75)),
        ("claude-opus-4-1", (15, 75, 1.5, 18.75)),
        ("claude-sonnet-4", (3, 15, 0.3, 3.75)),
        ("claude-sonnet-4-5", (3, 15, 0.3, 3.75)),
        ("claude-haiku-4-5", (1, 5, 0.1, 1.25)),
        ("claude-3-5-haiku", (0.8, 4, 0.08, 1.0)),
        ("gpt-4o", (2.5, 10, 1.25, 0)),
        ("gpt-4o-mini", (0.15, 0.6, 0.075, 0)),
        ("gpt-4.1", (2, 8, 0.5, 0)),
        ("gpt-4.1-mini", (0.4, 1.6, 0.1, 0)),
        ("o3", (2, 8, 0.5, 0)),
        ("gpt-5", (1.25, 10, 0.125, 0)),
        ("gemini-2.5-pro", (1.25, 10, 0.31, 0)),
        ("gemini-2.5-flash", (0.3, 2.5, 0.075, 0)),
    ],
)
def test_shipped_list_prices(
    table: PriceTable, model: str, expected: tuple[float, float, float, float]
) -> None:
    price = table.lookup(model, AT)
    assert price is not None and price.model == model
    assert rates(price) == pytest.approx(expected)


def test_the_table_is_versioned_and_every_price_carries_the_version(table: PriceTable) -> None:
    assert table.version == "2026-11-01"
    price = table.lookup("gpt-5", AT)
    assert price is not None and price.version == table.version


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4@20250514", "claude-sonnet-4"),
        ("anthropic/claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("openrouter/anthropic/claude-haiku-4-5", "claude-haiku-4-5"),
        ("Claude-Haiku-4-5", "claude-haiku-4-5"),
        ("  gpt-4o  ", "gpt-4o"),
        ("openai:gpt-4o-2024-08-06", "gpt-4o"),
        ("OpenAI/GPT-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-latest", "gpt-4o"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        # longest prefix: a sibling never falls back to a parent with another price
        ("gemini-2.5-pro-preview-06-05", "gemini-2.5-pro"),
        ("gemini-2.5-flash-lite-preview", "gemini-2.5-flash-lite"),
        ("gpt-4o-mini-search-preview", "gpt-4o-mini"),
        ("gpt-4.1-nano", "gpt-4.1-nano"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("o3-mini-high", "o3-mini"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        # exact snapshot before normalisation: the May 2024 gpt-4o kept its old price
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ],
)
def test_name_resolution(table: PriceTable, name: str, key: str) -> None:
    price = table.lookup(name, AT)
    assert price is not None and price.model == key


def test_a_dated_snapshot_can_differ_from_its_family(table: PriceTable) -> None:
    assert rates(table.lookup("gpt-4o-2024-05-13", AT)) == (5.0, 15.0, 5.0, 0.0)
    assert rates(table.lookup("gpt-4o-2024-11-20", AT)) == (2.5, 10.0, 1.25, 0.0)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "llama-3.1-70b",
        "claude-3-5-sonnet-20241022",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "chatgpt-4o-latest",
        "gpt-4-turbo",
        "my-gpt-4o",
    ],
)
def test_unknown_models_are_never_guessed(table: PriceTable, name: str) -> None:
    assert table.lookup(name, AT) is None


@pytest.mark.parametrize(
    ("at", "expected_input"),
    [
        (dt.datetime(2025, 4, 15, 23, 59, 59, tzinfo=dt.UTC), None),
        (dt.datetime(2025, 4, 16, tzinfo=dt.UTC), 10.0),
        (dt.datetime(2025, 6, 9, 23, 59, 59, tzinfo=dt.UTC), 10.0),
        (dt.datetime(2025, 6, 10, tzinfo=dt.UTC), 2.0),
        (dt.datetime(2025, 6, 10, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), 10.0),
        (dt.datetime(2025, 6, 10), 2.0),  # naive = UTC
    ],
)
def test_the_price_in_force_at_the_time_applies(
    table: PriceTable, at: dt.datetime, expected_input: float | None
) -> None:
    price = table.lookup("o3", at)
    assert (price.input if price else None) == expected_input


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def line(start: str, *r: float) -> dict[str, Any]:
    return dict(
        zip(
            ("effective_from", "input", "output", "cache_read", "cache_creation"),
            (start, *r),
            strict=True,
        )
    )


def test_a_user_file_adds_and_overrides_models(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "version": "acme-7",
            "models": {
                "acme-llm": [line("2026-01-01", 1, 2, 0.1, 0.2), line("2026-06-01", 0.5, 1, 0, 0)],
                "gpt-4o": [line("2020-01-01", 9, 9, 9, 9)],
            },
        },
    )
    table = PriceTable.load(path)
    assert table.version == "2026-11-01+acme-7"
    assert rates(table.lookup("acme-llm", dt.datetime(2026, 3, 1))) == (1, 2, 0.1, 0.2)
    assert rates(table.lookup("acme/acme-llm-latest", AT)) == (0.5, 1, 0, 0)
    assert table.lookup("acme-llm", dt.datetime(2025, 12, 31)) is None
    assert rates(table.lookup("gpt-4o", AT)) == (9, 9, 9, 9)
    # the user's gpt-4o replaces the built-in one entirely, and its prefix still serves snapshots
    assert rates(table.lookup("gpt-4o-2024-08-06", dt.datetime(2021, 1, 1))) == (9, 9, 9, 9)
    other = table.lookup("claude-sonnet-4-5", AT)
    assert other is not None and other.input == 3 and other.version == "2026-11-01+acme-7"
    assert "acme-llm" in table.models and "claude-opus-4" in table.models


def test_the_built_in_table_is_untouched_without_a_user_file(tmp_path: Path) -> None:
    PriceTable.load(
        write(tmp_path, {"version": "v", "models": {"gpt-4o": [line("2020-01-01", 9, 9, 9, 9)]}})
    )
    assert rates(PriceTable.load().lookup("gpt-4o", AT)) == (2.5, 10, 1.25, 0)


GOOD = line("2026-01-01", 1, 2, 0.1, 0.2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not a valid JSON price file"),
        ([], "top level: must be a JSON object"),
        ({"models": {}}, "version: must be a non-empty string"),
        ({"version": "x" * 33, "models": {}}, "version: must be at most 32 characters"),
        ({"version": "v", "models": [], "x": 1}, "top level: unknown keys ['x']"),
        ({"version": "v", "models": []}, "models: must be an object"),
        ({"version": "v", "unit": "USD per 1K tokens", "models": {}}, "unit: must be"),
        ({"version": "v", "models": {"m": []}}, "models['m']: must be a non-empty list"),
        ({"version": "v", "models": {"GPT-X": [GOOD]}}, "models['GPT-X']: model names"),
        (
            {"version": "v", "models": {"m": [GOOD, {**GOOD, "input": -1}]}},
            "models['m'][1].input: must be a finite number >= 0",
        ),
        (
            {"version": "v", "models": {"m": [{**GOOD, "output": True}]}},
            "models['m'][0].output: must be a finite number >= 0 (USD per 1M tokens), got True",
        ),
        (
            {"version": "v", "models": {"m": [{**GOOD, "cache_read": "0.1"}]}},
            "models['m'][0].cache_read",
        ),
        (
            {"version": "v", "models": {"m": [{**GOOD, "effective_from": "May 2025"}]}},
            "models['m'][0].effective_from: must be a date YYYY-MM-DD, got 'May 2025'",
        ),
        (
            {"version": "v", "models": {"m": [{k: v for k, v in GOOD.items() if k != "output"}]}},
            "models['m'][0]: missing output",
        ),
        (
            {"version": "v", "models": {"m": [{**GOOD, "cache_write": 1}]}},
            "models['m'][0]: unknown keys ['cache_write']",
        ),
        ({"version": "v", "models": {"m": [GOOD, GOOD]}}, "two prices have the same"),
    ],
)
def test_an_invalid_user_file_names_the_file_and_the_entry(
    tmp_path: Path, data: Any, message: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as info:
        PriceTable.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_a_missing_user_file_is_a_value_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=r"nope\.json: cannot read the price file"):
        PriceTable.load(missing)
