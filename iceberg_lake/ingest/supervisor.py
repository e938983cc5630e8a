"""Several `lake serve` processes, one per group of tables, supervised by one parent.

`lake serve --workers N` splits the tables round-robin into N groups and runs one `lake serve
--tables <group>` process each (metrics on consecutive ports). One Python process commits about
one table group's worth of data: more processes use more cores.

The parent is a process supervisor:

- it reacts to any worker's exit at once (SIGCHLD wakes it), logs it at WARNING and restarts the
  worker after a backoff (0.5 s, 1 s, 2 s, ... at most 30 s). The restarted worker waits as a
  standby until the dead one's lease expires, then resumes from the table's watermark: every
  event is still stored once (fencing + watermark, docs/ingest.md).
- a worker that exits more than `max_restarts` times within `restart_window` seconds is given
  up on: the parent logs it at ERROR, stops the other workers (SIGTERM, each flushes and commits)
  and raises `LakeError` naming the worker and its exit code (the CLI's one line, exit 1).
- SIGTERM/SIGINT are forwarded to every worker; the parent returns when all have exited.
- the workers end with the parent: each is started with `--supervisor-pid` and asks the kernel
  for a SIGTERM when the parent dies (`iceberg_lake.process.end_with_parent`), so a `kill -9` of
  the parent leaves no writer holding leases behind.
- with `until_idle`, a worker that exits 0 is done and is not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import LakeError

log = logging.getLogger(__name__)

__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "DEFAULT_MAX_RESTARTS",
    "DEFAULT_RESTART_WINDOW_SECONDS",
    "describe_exit",
    "run_worker_processes",
    "split_round_robin",
]

#: Restarts of one worker allowed within `DEFAULT_RESTART_WINDOW_SECONDS` (systemd's default
#: StartLimitBurst is also 5).
DEFAULT_MAX_RESTARTS = 5
DEFAULT_RESTART_WINDOW_SECONDS = 60.0
#: The delay before a restart doubles with each restart still inside the window.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
#: Without SIGCHLD (not POSIX) the parent polls its workers this often.
_POLL_SECONDS = 0.5

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def split_round_robin(targets: list[str], workers: int) -> list[list[str]]:
    """`targets` dealt round-robin into at most `workers` non-empty groups."""
    return [targets[i::workers] for i in range(workers) if targets[i::workers]]


def describe_exit(code: int) -> str:
    """A process's exit as words: `exited with code 1`, `was killed by SIGKILL (code -9)`."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name} (code {code})"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


async def _check_nats(settings: Settings) -> None:
    """Connect to NATS and set up the streams and the lease bucket as every worker does
    (idempotent), so a wrong URL or JetStream domain is one line here (raises `LakeError`):
    review17c found a wrong `LAKE_NATS_DOMAIN` still restarting workers to the limit."""
    nc = await bus.connect(settings, name="lake-serve-supervisor")
    try:
        js = bus.jetstream(nc, settings)
        with bus.bus_errors("setting up the JetStream streams and the lease bucket"):
            await bus.ensure_streams(js, settings)
            await bus.lease_bucket(js, settings)
    finally:
        await nc.close()


def run_worker_processes(
    settings: Settings,
    targets: list[str],
    workers: int,
    *,
    metrics_port: int | None = None,
    until_idle: bool = False,
    idle_seconds: float = 1.0,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    restart_window: float = DEFAULT_RESTART_WINDOW_SECONDS,
    on_start: Callable[[int, list[str]], None] | None = None,
) -> int:
    """Run and supervise one `lake serve` process per table group; forward SIGTERM/SIGINT.

    The catalog is initialised once first, so the workers do not race to create tables. The
    workers read their settings from the environment, as the parent did, and log at the
    parent's level. Must be called from the main thread (it installs signal handlers).

    Args:
        settings: the parent's settings (used to initialise the catalog).
        targets: the tables to write (see `resolve_targets`).
        workers: how many processes.
        metrics_port: serve metrics on this port and the following ones (one per worker).
        until_idle: pass `--until-idle` to the workers (a worker that exits 0 is done).
        idle_seconds: the workers' `--idle-seconds`.
        max_restarts: restarts of one worker allowed within `restart_window` seconds; one more
            exit stops everything (0: never restart).
        restart_window: see `max_restarts`.
        on_start: called with (pid, tables) as each worker starts (restarts included).

    Returns:
        The worst exit code of the workers' last runs (0 when all succeeded).

    Raises:
        LakeError: a worker exited more than `max_restarts` times within `restart_window`
            seconds (the other workers have been stopped).
    """
    # Once, before the workers race to create tables; never the bucket (see IngestService.run).
    LakeCatalog(settings).init(create_bucket=False)
    # NATS too, as the catalog and the store just were: a mistyped URL is one line now, not
    # workers restarted until the limit, whose last line named the limit (prod17).
    asyncio.run(_check_nats(settings))
    prefix = [sys.executable, "-c", "from iceberg_lake.cli import main; main()"]
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    if level in _LOG_LEVELS:
        prefix += ["--log-level", level]
    prefix += ["serve", "--supervisor-pid", str(os.getpid())]
    slots = []
    for i, group in enumerate(split_round_robin(targets, workers)):
        argv = prefix + ["--tables", ",".join(group), "--idle-seconds", str(idle_seconds)]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port + i)]
        if until_idle:
            argv.append("--until-idle")
        slots.append(_Worker(i + 1, group, argv))
    supervisor = _Supervisor(slots, until_idle, max_restarts, restart_window, on_start)
    return supervisor.run()


@dataclass
class _Worker:
    number: int
    tables: list[str]
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    #: `time.monotonic()` of each restart still inside the window.
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    #: The exit code of the last run.
    code: int | None = None

    @property
    def name(self) -> str:
        return f"worker {self.number} ({', '.join(self.tables)})"


class _Supervisor:
    def __init__(
        self,
        workers: list[_Worker],
        until_idle: bool,
        max_restarts: int,
        restart_window: float,
        on_start: Callable[[int, list[str]], None] | None,
    ) -> None:
        self.workers = workers
        self.until_idle = until_idle
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.on_start = on_start
        self.signals: list[int] = []  # received, not yet forwarded (appended by the handler)
        self.forwarded: set[int] = set()  # exit codes of a worker ended by a forwarded signal
        self.stopping = False
        self.failure: str | None = None

    def run(self) -> int:
        # A signal handler only records the signal; the C-level handler also writes a byte to
        # the wake-up pipe, which ends the `select` below at once (SIGCHLD: a worker exited).
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        watched = [signal.SIGTERM, signal.SIGINT]
        sigchld = getattr(signal, "SIGCHLD", None)
        if sigchld is not None:
            watched.append(sigchld)
        old: dict[int, Any] = {}
        try:
            for sig in watched:
                old[sig] = signal.signal(sig, self._on_signal)
            for w in self.workers:
                self._start(w)
            while self._step(time.monotonic()):
                self._wait(wake_r, sigchld is not None)
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            self._stop_leftovers()
        if self.failure is not None:
            raise LakeError(self.failure)
        return max((abs(w.code or 0) for w in self.workers), default=0)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.signals.append(signum)

    def _wait(self, wake_r: int, have_sigchld: bool) -> None:
        """Until a signal arrives or the next restart is due."""
        due = [w.restart_at for w in self.workers if w.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        if not have_sigchld:
            timeout = _POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS)
        select.select([wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 4096):
                pass

    def _step(self, now: float) -> bool:
        """Forward signals, handle exits, start due restarts. False once there is nothing left."""
        while self.signals:
            signum = self.signals.pop(0)
            if not self.stopping:
                log.info("%s: stopping the workers", signal.Signals(signum).name)
            self.stopping = True
            self._send(signum)
        for w in self.workers:
            code = w.proc.poll() if w.proc is not None else None
            if code is not None:
                self._exited(w, code, now)
        if self.stopping:
            for w in self.workers:
                w.restart_at = None
            return any(w.proc is not None for w in self.workers)
        for w in self.workers:
            if w.restart_at is not None and w.restart_at <= now:
                self._start(w)
        return any(w.proc is not None or w.restart_at is not None for w in self.workers)

    def _start(self, w: _Worker) -> None:
        if w.restart_at is not None:
            w.restarts.append(time.monotonic())
            w.restart_at = None
        w.proc = subprocess.Popen(w.argv)
        log.info("%s: pid %d", w.name, w.proc.pid)
        if self.on_start is not None:
            self.on_start(w.proc.pid, w.tables)

    def _exited(self, w: _Worker, code: int, now: float) -> None:
        assert w.proc is not None
        pid, w.proc, w.code = w.proc.pid, None, code
        what = f"{w.name}, pid {pid}, {describe_exit(code)}"
        if self.stopping:
            if code in self.forwarded:
                # Still starting up, before its own handler: ended by the signal forwarded to
                # it, with nothing taken (no lease, nothing fetched) — a clean stop.
                w.code = 0
            log.log(logging.INFO if w.code == 0 else logging.WARNING, "%s", what)
            return
        if code == 0 and self.until_idle:
            log.info("%s: done", what)
            return
        while w.restarts and w.restarts[0] <= now - self.restart_window:
            w.restarts.popleft()
        if len(w.restarts) >= self.max_restarts:
            self.failure = (
                f"{what}; restarted {_times(len(w.restarts))} within {self.restart_window:g} s "
                f"(limit {self.max_restarts}): stopped lake serve"
            )
            log.error("%s, restart limit reached: stopping the other workers", what)
            self.stopping = True
            self._send(signal.SIGTERM)
            return
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** len(w.restarts))
        w.restart_at = now + delay
        log.warning("%s: restarting it in %g s", what, delay)

    def _send(self, signum: int) -> None:
        # Killed by it before its handler (-signum), or its CLI turned it into the shell's
        # 128 + signum (KeyboardInterrupt: 130): either way, stopped as asked.
        self.forwarded.update({-signum, 128 + signum})
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signum)

    def _stop_leftovers(self) -> None:
        """Only after an error in the supervisor itself: stop the workers it leaves behind."""
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for p in live:
            p.terminate()
        for p in live:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
