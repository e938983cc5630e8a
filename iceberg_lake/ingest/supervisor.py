"""Several `lake serve` processes, one per group of tables, supervised by one parent.

`lake serve --workers N` splits the tables round-robin into N groups and runs one `lake serve
--tables <group>` process each (metrics on consecutive ports), forwarding SIGTERM/SIGINT to them.
One Python process commits about one table group's worth of data: more processes use more cores.
A worker that exits with an error stops the others (they flush, commit and ack), and the parent
exits with the worst code, so a supervisor above restarts the whole service.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
from collections.abc import Callable

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings

log = logging.getLogger(__name__)

__all__ = ["run_worker_processes", "split_round_robin"]


def split_round_robin(targets: list[str], workers: int) -> list[list[str]]:
    """`targets` dealt round-robin into at most `workers` non-empty groups."""
    return [targets[i::workers] for i in range(workers) if targets[i::workers]]


def run_worker_processes(
    settings: Settings,
    targets: list[str],
    workers: int,
    *,
    metrics_port: int | None = None,
    until_idle: bool = False,
    idle_seconds: float = 1.0,
    on_start: Callable[[int, list[str]], None] | None = None,
) -> int:
    """Run one `lake serve` process per table group until they exit; forward SIGTERM/SIGINT.

    When a worker exits non-zero, the others get a SIGTERM.

    The catalog is initialised once first, so the workers do not race to create tables. The
    workers read their settings from the environment, as the parent did.

    Args:
        settings: the parent's settings (used to initialise the catalog).
        targets: the tables to write (see `resolve_targets`).
        workers: how many processes.
        metrics_port: serve metrics on this port and the following ones (one per worker).
        until_idle: pass `--until-idle` to the workers.
        idle_seconds: the workers' `--idle-seconds`.
        on_start: called with (pid, tables) as each worker starts.

    Returns:
        The worst exit code of the workers (0 when all succeeded).
    """
    LakeCatalog(settings).init()  # once, before the workers race to create tables
    procs: list[subprocess.Popen[bytes]] = []
    for i, group in enumerate(split_round_robin(targets, workers)):
        argv = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "serve"]
        argv += ["--tables", ",".join(group), "--idle-seconds", str(idle_seconds)]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port + i)]
        if until_idle:
            argv.append("--until-idle")
        procs.append(subprocess.Popen(argv))
        log.info("worker %d: %s", procs[-1].pid, ", ".join(group))
        if on_start is not None:
            on_start(procs[-1].pid, group)

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    stopping = False
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed and not stopping:
            # A worker that failed leaves its tables unwritten: stop the others too (they
            # flush, commit and ack), so the whole service exits non-zero and gets restarted
            # instead of running on without those tables.
            stopping = True
            log.error(
                "worker %d exited with %d: stopping the other workers",
                failed[0].pid,
                failed[0].returncode,
            )
            forward(signal.SIGTERM, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            next(p for p in procs if p.poll() is None).wait(timeout=0.2)
    return max((abs(p.returncode or 0) for p in procs), default=0)
