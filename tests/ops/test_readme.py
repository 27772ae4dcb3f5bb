"""README's "Operating turnstream" stays true to the code: its settings table lists every field
of Settings with its variable, flag and default, and its metrics table every metric exported."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from turnstream.config import FLAGS, Settings
from turnstream.metrics.registry import Metrics

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"### {title}\n")
    return README[start : README.index("\n### ", start + 1)]


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    rows = {}
    for line in section("Settings").splitlines():
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("TURNSTREAM_"):
            rows[cells[0]] = cells
    fields = dataclasses.fields(Settings)
    assert list(rows) == [f.name for f in fields]
    for f in fields:
        _, variable, flag, default, _ = rows[f.name]
        assert variable == f"TURNSTREAM_{f.name.upper()}"
        assert flag == FLAGS.get(f.name, "")
        expected = f.default
        shown = "none" if expected is None else str(expected)
        assert default == (shown.lower() if isinstance(expected, bool) else shown), f.name


def test_the_metrics_table_lists_every_metric() -> None:
    listed = set(re.findall(r"`((?:grpc|http|turnstream)_[a-z_]+)`", section("Metrics")))
    exported = {m.name for m in Metrics().registry.collect()}
    # prometheus_client names a counter's family without its _total suffix.
    exported_names = {name + "_total" if name + "_total" in listed else name for name in exported}
    assert exported_names <= listed
