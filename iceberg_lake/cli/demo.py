"""`lake simulate` (synthetic market data to NATS) and `lake demo` (the pipeline, embedded)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, console, emit, settings
from iceberg_lake.exceptions import LakeError

DATA_DIR_OPTION = typer.Option(
    None, "--data-dir", help="Where to keep the demo lake (default ./lake-demo-<timestamp>)."
)


def register(app: typer.Typer) -> None:
    """Add `simulate` and `demo` to the `lake` app."""
    app.command("simulate")(simulate)
    app.command("demo")(demo)


def _parse_start(value: str) -> datetime:
    if value == "now":
        return datetime.now(UTC).replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise LakeError(
            f"--start must be an ISO time like 2024-05-13T13:30:00Z or 'now', got {value!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def simulate(
    rate: float = typer.Option(200.0, "--rate", help="Market events per second of session."),
    duration: float = typer.Option(60.0, "--duration", help="Session length in seconds."),
    seed: int = typer.Option(42, "--seed", help="Random seed: same seed, same messages."),
    duplicates: float = typer.Option(
        0.0, "--duplicates", help="Probability a message is re-published under a new msg id."
    ),
    bad: float = typer.Option(
        0.0, "--bad", help="Probability a malformed message follows a message."
    ),
    out_of_order: float = typer.Option(
        0.0, "--out-of-order", help="Probability an event is published late."
    ),
    batch: int = typer.Option(1, "--batch", help="Events per message (>1: a JSON array)."),
    start: str = typer.Option(
        "2024-05-13T13:30:00Z", "--start", help="Event time of the session start, or 'now'."
    ),
    speed: float = typer.Option(
        1.0, "--speed", help="Session seconds per wall second; 0 publishes as fast as possible."
    ),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Publish a deterministic synthetic SPY/ES session to NATS JetStream ($LAKE_NATS_URL).

    SPY trades and NBBO quotes, an SPY 0DTE option chain (trades, greeks snapshots), ES trades
    and MBP-10 ladders, and levels.signals payloads; with optional duplicates, out-of-order
    events and malformed messages. Republishing the same session is deduplicated by the stream.
    """
    from iceberg_lake.simulate import SimulationConfig
    from iceberg_lake.simulate import simulate as run_simulation

    config = SimulationConfig(
        seed=seed,
        start=_parse_start(start),
        duration_s=duration,
        rate=rate,
        duplicates=duplicates,
        bad=bad,
        out_of_order=out_of_order,
        batch=batch,
    )
    if speed < 0:
        raise LakeError("--speed must be >= 0")
    lake_settings = settings()
    if output == OutputFormat.text:
        from rich.progress import Progress

        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing", total=None)
            stats, report = run_simulation(
                lake_settings,
                config,
                speed=speed or None,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    else:
        stats, report = run_simulation(lake_settings, config, speed=speed or None)
    summary = stats.as_dict()
    row = {
        "events": summary["events"],
        "messages_stored": report.messages,
        "dropped_as_repeats": report.server_duplicates,
        "duplicate_messages": summary["duplicate_messages"],
        "bad_messages": summary["bad_messages"],
        "out_of_order": summary["out_of_order"],
        "seconds": round(report.seconds, 2),
        "nats_url": lake_settings.nats_url,
    }
    if output == OutputFormat.json:
        emit([{**row, **summary}], output)
        return
    emit([row], output, title="lake simulate")
    emit(
        [{"table": t, "rows": n} for t, n in sorted(stats.rows.items())],
        output,
        title="distinct rows by table",
    )


def demo(
    data_dir: Path | None = DATA_DIR_OPTION,
    duration: float = typer.Option(180.0, "--duration", help="Simulated session seconds."),
    rate: float = typer.Option(200.0, "--rate", help="Market events per session second."),
    seed: int = typer.Option(42, "--seed", help="Random seed."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Run the whole pipeline on embedded defaults: NATS, ingest, Silver, tags, queries, replay.

    Starts its own nats-server on a free port, keeps the data directory, stops the server.
    """
    from iceberg_lake.demo import DemoOptions, run_demo

    result = run_demo(
        DemoOptions(data_dir=data_dir, duration_s=duration, rate=rate, seed=seed),
        console=console if output == OutputFormat.text else None,
    )
    if output == OutputFormat.json:
        emit([result], output)
