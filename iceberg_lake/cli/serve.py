"""`lake` commands: serve."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer

from iceberg_lake.cli.common import err_console, open_catalog, settings
from iceberg_lake.exceptions import LakeError
from iceberg_lake.ingest.supervisor import DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_WINDOW_SECONDS
from iceberg_lake.process import end_with_parent


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `lake` app."""

    @app.command("serve")
    def serve(
        tables: Annotated[
            list[str] | None,
            typer.Option(
                "--tables",
                help="Tables to write (repeat or comma-separate; 'inferred' = schema inference "
                "for unmapped subjects). Default: all.",
            ),
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics on P.")
        ] = None,
        until_idle: Annotated[
            bool,
            typer.Option(
                "--until-idle",
                help="Exit once every consumer is drained and everything is committed.",
            ),
        ] = False,
        idle_seconds: Annotated[
            float,
            typer.Option("--idle-seconds", help="With --until-idle: how long it must stay idle."),
        ] = 1.0,
        workers: Annotated[
            int,
            typer.Option(
                "--workers",
                min=1,
                help="Processes: the tables are split round-robin into this many groups, one "
                "`lake serve` process each (metrics on P, P+1, ...).",
            ),
        ] = 1,
        max_restarts: Annotated[
            int,
            typer.Option(
                "--max-restarts",
                min=0,
                help="With --workers: a worker that exits is restarted (after 0.5 s, 1 s, 2 s, "
                "... at most 30 s); one exit more than this within --restart-window stops "
                "every worker and exits 1.",
            ),
        ] = DEFAULT_MAX_RESTARTS,
        restart_window: Annotated[
            float,
            typer.Option(
                "--restart-window", min=0.0, help="With --workers: see --max-restarts (seconds)."
            ),
        ] = DEFAULT_RESTART_WINDOW_SECONDS,
        supervisor_pid: Annotated[
            int | None,
            typer.Option(
                "--supervisor-pid",
                hidden=True,
                help="Set by `--workers` for its workers: exit (gracefully) when it dies.",
            ),
        ] = None,
    ) -> None:
        """Run the Bronze/Gold writers: JetStream in, Iceberg commits out."""
        if supervisor_pid is not None:
            # First: a worker whose parent is already gone must not start writing.
            end_with_parent(supervisor_pid, signal.SIGTERM)
        from iceberg_lake.ingest.service import LakeService, resolve_targets
        from iceberg_lake.ingest.supervisor import run_worker_processes

        if metrics_port is not None and not 1 <= metrics_port <= 65535 - (workers - 1):
            raise LakeError(f"--metrics-port must be a port number 1-65535, got {metrics_port}")
        s = settings()
        _warn_pending_migrations(supervisor_pid is not None)
        if not logging.getLogger().isEnabledFor(logging.INFO):
            # Startup, each flush and each worker start are logged at INFO by these loggers.
            for name in (
                "iceberg_lake.ingest.service",
                "iceberg_lake.ingest.writer",
                "iceberg_lake.ingest.supervisor",
            ):
                logging.getLogger(name).setLevel(logging.INFO)
            if not logging.getLogger().handlers:
                logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if workers > 1:
            raise typer.Exit(
                run_worker_processes(
                    s,
                    resolve_targets(tables),
                    workers,
                    metrics_port=metrics_port,
                    until_idle=until_idle,
                    idle_seconds=idle_seconds,
                    max_restarts=max_restarts,
                    restart_window=restart_window,
                    on_start=lambda pid, group: err_console.print(
                        f"worker {pid}: {', '.join(group)}", highlight=False, soft_wrap=True
                    ),
                )
            )
        service = LakeService(s, tables or None)
        if metrics_port is not None:
            from iceberg_lake.ops.metrics import serve_metrics

            try:
                serve_metrics(metrics_port)
            except OSError as exc:
                raise LakeError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
            err_console.print(f"metrics on http://0.0.0.0:{metrics_port}/metrics", highlight=False)

        # Stopped, a SIGTERM that arrives (repeated by an operator, or by the kernel's
        # parent-death signal) has nothing left to stop and must not change how the process
        # ends: the service leaves it ignored.
        asyncio.run(
            service.run(
                stop_when_idle=until_idle, idle_seconds=idle_seconds, ignore_sigterm_after=True
            )
        )


def _warn_pending_migrations(is_worker: bool) -> None:
    """Print one warning line when shipped migrations are pending (`lake migrate up`).

    The writers still start: a lake that is only behind on no-op steps works, and a writer that
    needs a missing column says so on its own (dead letters: see `ingest.dead_letters`). A lake
    that does not exist yet (serve creates it) or a catalog that cannot be read is not reported
    here; the service reports those itself.
    """
    if is_worker:
        return  # the `--workers` parent warned once already
    from iceberg_lake.schema.migrations import pending_warning

    try:
        warning = pending_warning(open_catalog(read_only=True))
    except LakeError:
        return
    if warning:
        err_console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
