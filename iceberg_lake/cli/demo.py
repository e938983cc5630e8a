"""`lake simulate` (synthetic market data to NATS) and `lake demo` (the pipeline, embedded)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table as RichTable
from rich.text import Text

from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, console, emit, settings
from iceberg_lake.cli.output import get_output
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
        "2024-05-13T13:30:00Z",
        "--start",
        help="Event time of the session start, or 'now' (the writers dead-letter events "
        "stamped more than a day ahead of their receipt).",
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
    if not (math.isfinite(speed) and speed >= 0):
        raise LakeError(f"--speed must be a finite number >= 0, got {speed}")
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

    out = get_output(output)
    options = DemoOptions(data_dir=data_dir, duration_s=duration, rate=rate, seed=seed)
    if not out.for_people:
        result = run_demo(options)
        result["next_commands"] = _available(result["next_commands"])
        out.record(result)
        return
    with _RichReporter(console) as reporter:
        result = run_demo(options, reporter)
    result["next_commands"] = _available(result["next_commands"])
    _print_summary(console, result)


class _RichReporter:
    """Renders the demo's steps: one line per step, a transient progress bar while it runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _RichReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_bar()

    def started(self, data_dir: Path) -> None:
        self.console.print(
            Panel.fit(
                "iceberg_lake demo: a simulated SPY/ES session through NATS JetStream into "
                f"Iceberg\ndata directory: {data_dir}",
                border_style="cyan",
            )
        )

    def step(self, name: str, seconds: float) -> None:
        self._close_bar()
        self.console.print(
            f"[green]✓[/green] {escape(name)} [dim]({seconds:.1f} s)[/dim]", markup=True
        )

    def skipped(self, name: str, why: str) -> None:
        self._close_bar()
        self.console.print(f"[yellow]-[/yellow] {escape(name)}: {escape(why)}", markup=True)

    def progress(self, task: str, done: int, total: int | None) -> None:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("  {task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
        if task not in self._tasks:
            self._tasks[task] = self._bar.add_task(task, total=total)
        self._bar.update(self._tasks[task], completed=done, total=total)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._tasks = {}


def _available(commands: list[str]) -> list[str]:
    """The suggested commands whose `lake` command this installation has."""
    import typer.main

    from iceberg_lake.cli.app import app

    group = typer.main.get_command(app)
    names = set(getattr(group, "commands", {}))
    return [c for c in commands if not c.startswith("lake ") or c.split()[1] in names]


def _print_summary(console: Console, result: dict[str, Any]) -> None:
    from iceberg_lake.demo import DEAD_LETTERS

    published = result["published"]
    dead_letters = next((t["rows"] for t in result["tables"] if t["table"] == DEAD_LETTERS), None)
    pipeline = RichTable(title="pipeline", show_header=False)
    pipeline.add_column("what")
    pipeline.add_column("count", justify="right")
    for label, value in (
        ("events simulated", published.get("events")),
        ("messages published", published.get("messages")),
        ("  re-published duplicates", published.get("duplicate_messages")),
        ("  malformed messages", published.get("bad_messages")),
        ("  events out of order", published.get("out_of_order")),
        ("rows committed by the writers", published.get("rows_committed_by_writers")),
        ("messages dead-lettered", dead_letters),
        ("duplicates removed by Silver", result["compaction"].get("duplicates_removed")),
        ("Silver partitions replaced", result["compaction"].get("partitions")),
    ):
        pipeline.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(pipeline)

    tables = RichTable(title="tables")
    for col in ("table", "rows", "expected", "snapshots", "data files"):
        tables.add_column(col, justify="left" if col == "table" else "right")
    for row in result["tables"]:
        ok = row["expected"] is None or row["expected"] == row["rows"]
        mark = "" if ok else " [red]≠[/red]"
        tables.add_row(
            row["table"],
            Text.from_markup(f"{row['rows']:,}{mark}"),
            "-" if row["expected"] is None else f"{row['expected']:,}",
            str(row["snapshots"]),
            str(row["data_files"]),
        )
    console.print(tables)

    for q in result["queries"]:
        rows = q["rows"]
        if len(rows) == 1 and len(rows[0]) == 1:
            console.print(
                f"{escape(q['title'])}: {escape(q['sql'])} → "
                f"[bold]{escape(_fmt(next(iter(rows[0].values()))))}[/bold]",
                markup=True,
            )
            continue
        table = RichTable(title=q["title"])
        cols = list(rows[0]) if rows else ["(no rows)"]
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[_fmt(r.get(c)) for c in cols])
        console.print(table)
    if result["replay"]:
        replay = result["replay"]
        table = RichTable(
            title=f"replay: {replay['events']:,} events merged by event time "
            f"({replay['sequence_hash'][:19]}…)"
        )
        for c in ("table", "ts_event_ns", "symbol", "price", "seq"):
            table.add_column(c)
        for e in replay["first_events"]:
            table.add_row(
                *[_fmt(e.get(c)) for c in ("table", "ts_event_ns", "symbol", "price", "seq")]
            )
        console.print(table)
    for line in result["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {escape(line)}", markup=True)
    console.print(
        f"\n[bold]done in {result['steps'].get('total', 0):.1f} s[/bold]; the lake is in "
        f"{escape(str(result['data_dir']))} (nats-server stopped). Explore it:",
        markup=True,
    )
    for cmd in result["next_commands"]:
        console.print(f"  [cyan]{escape(cmd)}[/cyan]", markup=True, highlight=False, soft_wrap=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)
