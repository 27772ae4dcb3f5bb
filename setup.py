"""Build: turnstream is pure Python, plus an optional compiled fast path. When mypyc and a C
compiler are present, core/fastgen.py (the generated per-record check and row code) and
core/fastrt.py (its helpers) are compiled with mypyc; when either is missing, or the build
fails, the install goes on without them and core/fastpath.py runs the same code as pure Python.
TURNSTREAM_COMPILE=0 skips the compilation. Everything else is in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from typing import Any

from setuptools import setup

_COMPILED = ["src/turnstream/core/fastgen.py", "src/turnstream/core/fastrt.py"]


def _say(text: str) -> None:
    print(f"turnstream build: {text}", file=sys.stderr)


def ext_modules() -> list[Any]:
    if os.environ.get("TURNSTREAM_COMPILE", "1") == "0":
        _say("TURNSTREAM_COMPILE=0: pure Python fast path")
        return []
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        _say(f"no C compiler ({compiler}): pure Python fast path")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("no mypyc: pure Python fast path")
        return []
    try:
        # The modules' imports (protobuf, the rest of turnstream) need not be installed here.
        modules = mypycify([*_COMPILED, "--ignore-missing-imports"], opt_level="3")
    except BaseException as e:  # mypyc reports type errors with SystemExit
        _say(f"mypyc failed ({e!r}): pure Python fast path")
        return []
    for module in modules:
        module.optional = True  # a failed C build leaves the pure-Python path, not no install
    return modules


setup(ext_modules=ext_modules())
