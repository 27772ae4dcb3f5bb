"""Fixtures of the polyglot conformance tests: the Node and Go example workers, built from a copy
of examples/ as a developer would build them (npm ci; protoc + go build in GOPATH mode).

Missing tools fail the tests with instructions (scripts/ensure-polyglot.sh installs them); they
are never skipped silently. TURNSTREAM_TEST_POLYGLOT=0 deselects the tests, visibly, the way
TURNSTREAM_TEST_DB=sqlite deselects the PostgreSQL ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POLYGLOT_ENV = "TURNSTREAM_TEST_POLYGLOT"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"polyglot: runs the Node or Go example worker (deselected by {POLYGLOT_ENV}=0)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(POLYGLOT_ENV, "1") != "0":
        return
    drop = [item for item in items if item.get_closest_marker("polyglot") is not None]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item.get_closest_marker("polyglot") is None]


def missing_tools(*packages: str) -> None:
    """Fail (never skip) when Debian packages the tests need are not installed."""
    result = subprocess.run(
        [REPO / "scripts" / "ensure-polyglot.sh", "--print-missing"],
        capture_output=True,
        text=True,
        check=True,
    )
    missing = [p for p in result.stdout.split() if p in packages]
    if missing:
        pytest.fail(
            f"the polyglot tests need {', '.join(missing)}, which are not installed. Run "
            f"scripts/ensure-polyglot.sh as root (Debian/Ubuntu), or deselect these tests with "
            f"{POLYGLOT_ENV}=0.",
            pytrace=False,
        )


def run(cmd: list[str | Path], cwd: Path, what: str, **env: str) -> None:
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{what} failed ({result.returncode}): {' '.join(map(str, cmd))}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def node_worker(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command running examples/node/worker.js, from a copy with its own `npm ci`: the
    example must work outside the repository, with only its package-lock.json."""
    missing_tools("nodejs", "npm")
    app = tmp_path_factory.mktemp("node") / "worker"
    shutil.copytree(REPO / "examples" / "node", app, ignore=shutil.ignore_patterns("node_modules"))
    run(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"],
        app,
        "npm ci",
        npm_config_update_notifier="false",
    )
    return ["node", str(app / "worker.js")]


@pytest.fixture(scope="session")
def go_worker(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Go example, built offline by scripts/build-go-example.sh (stubs generated now)."""
    missing_tools(
        "golang-go",
        "protoc-gen-go",
        "protoc-gen-go-grpc",
        "golang-google-grpc-dev",
        "golang-google-protobuf-dev",
        "golang-google-genproto-dev",
        "golang-github-golang-protobuf-1-5-dev",
    )
    out = tmp_path_factory.mktemp("go")
    run(
        [REPO / "scripts" / "build-go-example.sh", out],
        REPO,
        "building examples/go",
        PYTHON=sys.executable,
    )
    return [str(out / "worker")]


@pytest.fixture
def proto_dirs() -> str:
    """TURNSTREAM_PROTO_DIRS for the Node worker running from a copy outside the repository."""
    return os.pathsep.join([str(REPO / "protos"), str(REPO / "third_party" / "googleapis")])
