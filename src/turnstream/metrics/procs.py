"""Metrics: `--workers N` runs N processes on one port (SO_REUSEPORT), and the kernel hands each
scrape of /metrics to any one of them. Each process's counters alone would be a random sample,
so every process writes its metrics to files in one directory (prometheus_client's multiprocess
mode) and whichever process answers a scrape sums them all (`MultiProcessCollector`).

Multiprocess mode is chosen when prometheus_client is imported, from PROMETHEUS_MULTIPROC_DIR, so
this module (which does not import it) prepares the directory and the variable first."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from turnstream.config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(settings: Settings) -> Settings:
    """Before prometheus_client is imported. The first process of a --workers group creates
    the directory, or empties the one given (files of an earlier run would be summed in); its
    workers (reuse_port set) inherit it through settings.metrics_dir and leave it alone."""
    if not settings.metrics:
        return settings
    directory = settings.metrics_dir
    if directory is None:
        if settings.workers <= 1:
            return settings  # one process: its own registry, nothing to share
        directory = Path(tempfile.mkdtemp(prefix="turnstream-metrics-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    elif not settings.reuse_port:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    os.environ[ENV] = str(directory)
    return dataclasses.replace(settings, metrics_dir=directory)


def worker_exited(settings: Settings, pid: int) -> None:
    """A worker ended: drop its live gauges (open streams, queue depth) from the sums."""
    if settings.metrics_dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(settings.metrics_dir))  # type: ignore[no-untyped-call]
