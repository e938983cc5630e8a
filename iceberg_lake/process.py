"""Child processes that end with their parent.

A worker process (`lake serve --workers N`'s writers, `lake load --jobs N`'s loaders) must not
outlive the command that started it: after a `kill -9` of that command an orphaned writer would
keep its tables' leases and commit on, unsupervised, and an orphaned loader would load its file
to the end and then wait for work forever.

    end_with_parent(supervisor_pid, signal.SIGTERM)  # first thing in the child

On Linux the kernel delivers the signal (`PR_SET_PDEATHSIG`, so even a SIGKILL of the parent is
covered, with no thread); elsewhere a daemon thread watches `os.getppid()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

__all__ = ["end_with_parent"]

#: prctl(2) option: the signal this process gets when its parent thread ends.
_PR_SET_PDEATHSIG = 1
#: How often the fallback watchdog looks at its parent.
WATCHDOG_INTERVAL = 0.25


def end_with_parent(
    parent_pid: int, signum: int = signal.SIGTERM, *, watchdog: bool = False
) -> str:
    """Have this process receive `signum` as soon as its parent `parent_pid` ends.

    `signum` decides how it ends: SIGTERM runs the process's own graceful shutdown (when it has
    a handler), SIGKILL ends it at once. If the parent has already ended (it died before this
    was called), the signal is sent at once.

    The signal may come more than once: the kernel sends it each time the thread that is this
    process's parent ends, and a dying multi-threaded parent hands its children on to another
    of its threads first (measured: twice when the parent runs threads, under a millisecond
    apart when idle, later under load). A handler must stay in place until the process has
    finished its shutdown.

    Args:
        parent_pid: the PID of this process's parent, as the parent knows itself (passed down
            by it): comparing it with `os.getppid()` closes the window in which the parent
            died before this call and the process was re-parented.
        signum: the signal to receive.
        watchdog: use the portable watchdog thread even where `PR_SET_PDEATHSIG` exists.

    Returns:
        How it is done: `"pdeathsig"` (Linux: the kernel sends the signal) or `"watchdog"`
        (a daemon thread polls `os.getppid()` every `WATCHDOG_INTERVAL` seconds).
    """
    how = "watchdog"
    if not watchdog and _set_pdeathsig(signum):
        how = "pdeathsig"
    if os.getppid() != parent_pid:
        log.warning("parent process %d has already ended: signal %d", parent_pid, signum)
        os.kill(os.getpid(), signum)
        return how
    if how == "watchdog":
        threading.Thread(
            target=_watch, args=(parent_pid, signum), name="end-with-parent", daemon=True
        ).start()
    return how


def _set_pdeathsig(signum: int) -> bool:
    """`prctl(PR_SET_PDEATHSIG, signum)`; False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return False
    if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0) != 0:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    return True


def _watch(parent_pid: int, signum: int) -> None:
    # Once the parent has ended this process is re-parented (to init or a subreaper), so the
    # parent PID changes; polling it needs no handle on the parent and no cooperation from it.
    stop = threading.Event()  # never set: an interruptible sleep
    while os.getppid() == parent_pid:
        stop.wait(WATCHDOG_INTERVAL)
    os.kill(os.getpid(), signum)
