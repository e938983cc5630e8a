"""`lake` commands: serve."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from iceberg_lake.cli.common import err_console, settings
from iceberg_lake.exceptions import LakeError


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
    ) -> None:
        """Run the Bronze/Gold writers: JetStream in, Iceberg commits out."""
        from iceberg_lake.ingest.service import LakeService, resolve_targets
        from iceberg_lake.ingest.supervisor import run_worker_processes

        if metrics_port is not None and not 1 <= metrics_port <= 65535 - (workers - 1):
            raise LakeError(f"--metrics-port must be a port number 1-65535, got {metrics_port}")
        s = settings()
        if workers > 1:
            raise typer.Exit(
                run_worker_processes(
                    s,
                    resolve_targets(tables),
                    workers,
                    metrics_port=metrics_port,
                    until_idle=until_idle,
                    idle_seconds=idle_seconds,
                    on_start=lambda pid, group: err_console.print(
                        f"worker {pid}: {', '.join(group)}", highlight=False
                    ),
                )
            )
        if not logging.getLogger().isEnabledFor(logging.INFO):
            # Startup and each flush are logged at INFO: the service's own loggers say them.
            for name in ("iceberg_lake.ingest.service", "iceberg_lake.ingest.writer"):
                logging.getLogger(name).setLevel(logging.INFO)
            if not logging.getLogger().handlers:
                logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        service = LakeService(s, tables or None)
        if metrics_port is not None:
            from iceberg_lake.ops.metrics import serve_metrics

            try:
                serve_metrics(metrics_port)
            except OSError as exc:
                raise LakeError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
            err_console.print(f"metrics on http://0.0.0.0:{metrics_port}/metrics", highlight=False)
        asyncio.run(service.run(stop_when_idle=until_idle, idle_seconds=idle_seconds))
