"""`lake` commands: serve."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from iceberg_lake.cli.common import err_console, settings


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `lake` app."""

    @app.command("serve")
    def serve(
        tables: Annotated[
            list[str] | None,
            typer.Option(
                "--tables",
                "-t",
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
    ) -> None:
        """Run the Bronze/Gold writers: JetStream in, Iceberg commits out."""
        from iceberg_lake.service import LakeService

        s = settings()
        if not logging.getLogger().isEnabledFor(logging.INFO):
            # Startup and each flush are logged at INFO: the service's own loggers say them.
            for name in ("iceberg_lake.service", "iceberg_lake.ingest.writer"):
                logging.getLogger(name).setLevel(logging.INFO)
            if not logging.getLogger().handlers:
                logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        service = LakeService(s, tables or None)
        if metrics_port is not None:
            from iceberg_lake.metrics import serve_metrics

            serve_metrics(metrics_port)
            err_console.print(f"metrics on http://0.0.0.0:{metrics_port}/metrics", highlight=False)
        asyncio.run(service.run(stop_when_idle=until_idle, idle_seconds=idle_seconds))
