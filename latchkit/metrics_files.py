"""Prometheus multiprocess mode: the directory where worker processes keep their metrics.

The access service runs several processes on one port but serves metrics from
one of them; without multiprocess mode a scrape sees that process's counts
only. In multiprocess mode every process writes its samples to files in
PROMETHEUS_MULTIPROC_DIR and the metrics endpoint adds them up.

prometheus_client picks the mode when it is first imported, and a process
opens its files as soon as it creates a metric (most are created at import), so
`prepare` must run before anything imports prometheus_client. This module
therefore imports nothing that does.
"""

from __future__ import annotations

import os
from pathlib import Path

from latchkit.settings import state_dir

ENV = "PROMETHEUS_MULTIPROC_DIR"
OWNER_ENV = "LATCHKEY_METRICS_DIR_OWNER"
"""The pid of the process that prepared the directory; its children share it."""


def prepare(service: str) -> Path:
    """Turn on multiprocess mode for this process and the children it starts.

    The first process of a service instance (no parent prepared a directory
    for it) empties the directory, so counts of an earlier run, or files of
    processes long gone, are not added to this run's; the children it starts
    inherit the setting and keep the files. The directory is
    PROMETHEUS_MULTIPROC_DIR if the operator set it, else one per instance in
    memory (/dev/shm where it exists), never on the data volume: the files are
    memory-mapped, and a process whose mapped file cannot grow on a full disk is
    killed (seen by `make chaos` filling the access data directory), while the
    metrics are worth nothing after a restart anyway.
    """
    inherited = os.environ.get(OWNER_ENV) == str(os.getppid()) and os.environ.get(ENV)
    if inherited:
        return Path(inherited)
    directory = Path(os.environ.get(ENV) or default_directory(service))
    directory.mkdir(parents=True, exist_ok=True)
    # Only the metric files: an operator's directory may hold other things.
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[ENV] = str(directory)
    os.environ[OWNER_ENV] = str(os.getpid())
    return directory


def default_directory(service: str, state: Path | None = None) -> Path:
    """Memory-backed and distinct per state directory (`state`, default this process's: one per instance)."""
    import hashlib
    import tempfile

    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) \
        else Path(tempfile.gettempdir())
    instance = hashlib.sha256(str((state or state_dir()).resolve()).encode()).hexdigest()[:12]
    return base / f"latchkey-{service}-metrics-{instance}"


def enabled() -> bool:
    return bool(os.environ.get(ENV))
