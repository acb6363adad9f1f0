"""Process trees that never leave orphans: children die with their parent.

`latchkey run` starts the three services and the access main process starts
its workers. A child left running after its parent was killed would keep
serving on the shared port with nobody to stop it, so each child asks the
kernel for SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG), set between
fork and exec, and long-lived children also watch their parent's pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when `parent` dies; exit at once if it is already gone.

    Call it in the child (a `preexec_fn`, or at start-up); the check after prctl
    closes the race of a parent that died before the request was made.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        os._exit(70)
    if os.getppid() != parent:
        os._exit(0)


def preexec_die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child dies with the calling process."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all(procs: Iterable[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every child still running, give each `grace_s` to end, then SIGKILL what is left.

    All are signalled first, so they shut down together rather than one after another.
    """
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_pid(pid: int, timeout: float, poll: float = 0.05) -> None:
    """SIGTERM `pid`, wait up to `timeout` for it to end (reaping it if it is our child), then SIGKILL."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(poll)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
