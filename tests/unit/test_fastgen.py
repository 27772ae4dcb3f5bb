"""The compiled fast path's wiring: core/fastgen.py is today's generated code, core/fastrt.py's
constants are validate.py's, and fastpath.py picks the compiled module only when it may
(tests/property/test_fastpath.py holds the code itself to the generic walk)."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from turnstream.core import fastgen, fastpath, fastrt, validate


def test_the_committed_module_is_what_the_generator_writes() -> None:
    committed = Path(fastpath.__file__).with_name("fastgen.py").read_text()
    assert committed == fastpath.emit(), "core/fastgen.py is stale: run `make gen`"


def test_the_runtime_helpers_share_validate_limits() -> None:
    assert fastrt.MAX_STRUCT_DEPTH == validate.MAX_STRUCT_DEPTH
    assert fastrt.EARLIEST == validate._EARLIEST_SECONDS
    assert fastrt.control.__self__.pattern == validate._CONTROL.pattern  # type: ignore[attr-defined]


def test_the_path_is_said_and_follows_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fastpath.PATH.startswith("compiled" if fastpath.COMPILED else "pure Python")
    monkeypatch.setenv(fastpath.PURE_ENV, "1")
    module, path = fastpath._compiled()
    assert module is None and fastpath.PURE_ENV in path


def test_a_stale_compiled_module_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fastpath.PURE_ENV, raising=False)
    monkeypatch.setattr(fastgen, "DIGEST", "not today's")
    module, path = fastpath._compiled()
    assert module is None and path.startswith("pure Python")


def test_ci_builds_the_compiled_path() -> None:
    """Where CI runs (a C compiler present), `make venv` must have compiled the fast path, or
    the compiled code would go untested. (No compiler: pure Python, and nothing to check.)"""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if not os.environ.get("CI") or shutil.which(compiler) is None:
        return
    if os.environ.get(fastpath.PURE_ENV):
        return
    assert fastpath.COMPILED, fastpath.PATH
