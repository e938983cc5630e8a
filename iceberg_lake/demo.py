"""`lake demo`: the whole pipeline on embedded defaults, in under a minute, with nothing configured.

Steps: start a nats-server from the installed wheel on a free port → create the lake in a fresh
data directory (SQLite catalog, local warehouse) → publish a simulated SPY/ES session with
duplicates and malformed messages → run the writers until everything is stored → compact
Silver → tag the snapshot → run example queries (one of them time travel) → replay a slice →
print a summary and the commands to explore further. The server is stopped (and its store
deleted) at the end; the data directory stays.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from iceberg_lake.exceptions import LakeError
from iceberg_lake.simulate import SUBJECT_TABLES, SimulationConfig, SimulationStats

if TYPE_CHECKING:
    from iceberg_lake.config import Settings

__all__ = ["DEMO_TAG", "EXAMPLE_QUERIES", "DemoOptions", "default_data_dir", "run_demo"]

#: Tag the demo puts on every table after compaction.
DEMO_TAG = "demo"
DEAD_LETTERS = "bronze.dead_letters"

#: Tables and event-time seconds (from the session start) the demo replays.
REPLAY_TABLES = [
    "silver.stocks_quotes",
    "silver.stocks_trades",
    "silver.futures_mbp10",
    "silver.futures_trades",
]
REPLAY_SECONDS = 10

#: (title, SQL) of the example queries the demo runs.
EXAMPLE_QUERIES: list[tuple[str, str]] = [
    (
        "SPY 1-minute bars (silver.stocks_trades)",
        """
        SELECT strftime(time_bucket(INTERVAL 1 MINUTE, ts_event), '%H:%M') AS minute,
               arg_min(price, ts_event_ns) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, ts_event_ns) AS close, sum(size) AS volume, count(*) AS trades
        FROM silver.stocks_trades WHERE symbol = 'SPY'
        GROUP BY 1 ORDER BY 1 LIMIT 5
        """,
    ),
    (
        "ES book: spread and top-5 depth (silver.futures_mbp10)",
        """
        SELECT symbol, count(*) AS updates,
               round(avg(ask_px_1 - bid_px_1), 4) AS avg_spread,
               round(avg(bid_sz_1 + bid_sz_2 + bid_sz_3 + bid_sz_4 + bid_sz_5), 1) AS bid_depth5,
               round(avg(ask_sz_1 + ask_sz_2 + ask_sz_3 + ask_sz_4 + ask_sz_5), 1) AS ask_depth5,
               sum(CASE WHEN bid_px_1 >= ask_px_1 THEN 1 ELSE 0 END) AS crossed
        FROM silver.futures_mbp10 GROUP BY symbol
        """,
    ),
    (
        "Most traded SPY options (silver.options_trades)",
        """
        SELECT option_symbol, count(*) AS trades, sum(size) AS contracts,
               round(sum(price * size) / sum(size), 2) AS vwap
        FROM silver.options_trades GROUP BY option_symbol ORDER BY contracts DESC LIMIT 5
        """,
    ),
    (
        "Latest level signals (gold.levels_signals)",
        """
        SELECT level_id, level_price, direction, signal, confidence,
               break_score_smooth AS score, tape_imbalance
        FROM gold.levels_signals
        QUALIFY row_number() OVER (PARTITION BY level_id ORDER BY ts_event_ns DESC) = 1
        ORDER BY level_price
        """,
    ),
]


@dataclass(frozen=True)
class DemoOptions:
    """What the demo does.

    Attributes:
        data_dir: Where the lake goes (default `default_data_dir()`); must be new or empty.
        duration_s: Simulated session length.
        rate: Market events per session second.
        seed: Random seed of the session.
        duplicates: Probability a market message is re-published under a new id.
        bad: Probability a malformed message is published after a message.
        out_of_order: Probability an event is published late.
        batch: Events per message.
    """

    data_dir: Path | None = None
    duration_s: float = 180.0
    rate: float = 200.0
    seed: int = 42
    duplicates: float = 0.02
    bad: float = 0.002
    out_of_order: float = 0.01
    batch: int = 10

    def simulation(self) -> SimulationConfig:
        """The simulated session these options describe."""
        return SimulationConfig(
            seed=self.seed,
            duration_s=self.duration_s,
            rate=self.rate,
            duplicates=self.duplicates,
            bad=self.bad,
            out_of_order=self.out_of_order,
            batch=self.batch,
        )


@dataclass
class _Result:
    data_dir: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    tables: list[dict[str, Any]] = field(default_factory=list)
    compaction: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    queries: list[dict[str, Any]] = field(default_factory=list)
    replay: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_data_dir() -> Path:
    """`./lake-demo-<UTC timestamp>`."""
    return Path(f"lake-demo-{datetime.now(UTC):%Y%m%d-%H%M%S}")


def _prepare_data_dir(data_dir: Path) -> Path:
    data_dir = data_dir.expanduser().absolute()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise LakeError(f"{data_dir} already exists and is not empty: pick a new --data-dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def _demo_settings(data_dir: Path, nats_url: str) -> Settings:
    """Embedded settings, independent of the caller's `LAKE_*` variables and `./lake.toml`.

    The data directory gets a `lake.toml` naming itself, so `LAKE_CONFIG=<dir>/lake.toml`
    points any later command at the demo lake.
    """
    from iceberg_lake.config import load_settings

    config_file = data_dir / "lake.toml"
    config_file.write_text(f"# written by `lake demo`\ndata_dir = {str(data_dir)!r}\n")
    env = {"LAKE_NATS_URL": nats_url, "LAKE_BRONZE_BATCH_SIZE": "5000"}
    return load_settings(env, config_file=config_file)


class _Steps:
    """Runs named steps, timing each and printing one line per step."""

    def __init__(self, console: Console | None, result: _Result) -> None:
        self.console = console
        self.result = result

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        seconds = time.monotonic() - began
        self.result.steps[name] = round(seconds, 2)
        if self.console is not None:
            self.console.print(f"[green]✓[/green] {name} [dim]({seconds:.1f} s)[/dim]")

    def skip(self, name: str, why: str) -> None:
        self.result.skipped.append(f"{name}: {why}")
        if self.console is not None:
            self.console.print(f"[yellow]-[/yellow] {name}: {why}")

    def progress(self) -> Progress:
        return Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.console is None,
        )


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """Run the demo end to end.

    Args:
        options: session size, data directory.
        console: where to print progress and the summary (None: silent).

    Returns:
        A JSON-friendly summary: published counts, per-table rows, compaction, tags, query
        results, replay, step timings and the commands to explore further.

    Raises:
        LakeError: the data directory is not new, or a step failed.
    """
    from iceberg_lake.testing import ServerStartError, start_nats_server

    began = time.monotonic()
    data_dir = _prepare_data_dir(options.data_dir or default_data_dir())
    result = _Result(data_dir=str(data_dir))
    steps = _Steps(console, result)
    if console is not None:
        console.print(
            Panel.fit(
                f"iceberg_lake demo: a simulated SPY/ES session through NATS JetStream into "
                f"Iceberg\ndata directory: {data_dir}",
                border_style="cyan",
            )
        )
    nats_dir = Path(tempfile.mkdtemp(prefix="lake-demo-nats-"))
    server = None
    # Writers of several tables share the dead-letter table: pyiceberg logs each commit retry
    # as a warning, which is noise here (the retries are expected and succeed).
    pyiceberg_log = logging.getLogger("pyiceberg")
    old_level = pyiceberg_log.level
    pyiceberg_log.setLevel(logging.ERROR)
    try:
        with steps.step("started nats-server"):
            try:
                server = start_nats_server(nats_dir)
            except ServerStartError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no output"
                raise LakeError(f"lake demo could not start nats-server: {first}") from None
        settings = _demo_settings(data_dir, server.url)
        _init(steps, settings)
        stats = _publish(steps, settings, options, result)
        _ingest(steps, settings, stats, result)
        _compact(steps, settings, result)
        _tag(steps, settings, result)
        _count(steps, settings, stats, result)
        _queries(steps, settings, result)
        _replay(steps, settings, result)
    finally:
        pyiceberg_log.setLevel(old_level)
        if server is not None:
            server.stop()
        shutil.rmtree(nats_dir, ignore_errors=True)
    result.steps["total"] = round(time.monotonic() - began, 2)
    result.next_commands = _next_commands(data_dir)
    if console is not None:
        _print_summary(console, result)
    return result.as_dict()


# ---- steps ---------------------------------------------------------------------------------------


def _init(steps: _Steps, settings: Settings) -> None:
    from iceberg_lake.catalog import LakeCatalog

    with steps.step("created the lake (SQLite catalog, local warehouse)"):
        LakeCatalog(settings).init()


def _publish(
    steps: _Steps, settings: Settings, options: DemoOptions, result: _Result
) -> SimulationStats:
    from iceberg_lake.simulate import build_messages, publish_messages

    config = options.simulation()
    with steps.step("simulated the session"):
        messages, stats = build_messages(config)
    with steps.step("published to JetStream"), steps.progress() as bar:
        task = bar.add_task("publishing", total=len(messages))
        report = asyncio.run(
            publish_messages(
                messages,
                settings,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        )
    summary = stats.as_dict()
    result.published = {
        "session_seconds": options.duration_s,
        "events": summary["events"],
        "messages": report.messages,
        "duplicate_messages": summary["duplicate_messages"],
        "bad_messages": summary["bad_messages"],
        "out_of_order": summary["out_of_order"],
        "messages_per_second": round(report.messages_per_second),
    }
    return stats


def _ingest(steps: _Steps, settings: Settings, stats: SimulationStats, result: _Result) -> None:
    from iceberg_lake.ingest.service import LakeService

    expected = sum(stats.bronze_rows(t) for t in SUBJECT_TABLES.values())
    service = LakeService(settings)

    async def run(update: Callable[[int], None]) -> None:
        task = asyncio.create_task(service.run(stop_when_idle=True, idle_seconds=0.5))
        while not task.done():
            update(service.committed_events if service.writers else 0)
            await asyncio.wait({task}, timeout=0.2)
        await task

    with steps.step("writers stored everything (Bronze, Gold, dead letters)"):
        with steps.progress() as bar:
            t = bar.add_task("ingesting", total=expected)
            asyncio.run(run(lambda n: bar.update(t, completed=min(n, expected))))
    result.published["rows_committed_by_writers"] = service.committed_events


def _compact(steps: _Steps, settings: Settings, result: _Result) -> None:
    from iceberg_lake.silver.compactor import SilverCompactor

    with steps.step("compacted Silver (dedup + sort)"), steps.progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], completed=done, total=total)

        with SilverCompactor(settings, progress=progress) as compactor:
            results = compactor.compact_incremental()
    result.compaction = {
        "rows_read": sum(r.get("rows_read") or 0 for r in results),
        "rows_written": sum(r.get("rows_written") or 0 for r in results),
        "duplicates_removed": sum(r.get("duplicates_removed") or 0 for r in results),
        "partitions": sum(r.get("partitions") or 0 for r in results),
        "tables": {
            r["table"]: {k: r.get(k) for k in ("status", "rows_written", "duplicates_removed")}
            for r in results
            if r.get("table")
        },
    }


def _tag(steps: _Steps, settings: Settings, result: _Result) -> None:
    from iceberg_lake.timetravel.snapshots import create_tag

    with steps.step(f"tagged every table '{DEMO_TAG}'"):
        tagged = create_tag(settings, DEMO_TAG)
    result.tags = {DEMO_TAG: dict(sorted(tagged.items()))}


def _count(steps: _Steps, settings: Settings, stats: SimulationStats, result: _Result) -> None:
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.timetravel.query import Lake

    with steps.step("counted the tables (DuckDB)"):
        catalog = LakeCatalog(settings)
        existing = catalog.existing_tables()
        parts = [f"SELECT '{t}' AS t, count(*) AS n FROM {t}" for t in existing]
        with Lake(catalog) as lake:
            counts = {r["t"]: r["n"] for r in lake.query(" UNION ALL ".join(parts)).to_pylist()}
        rows = []
        for ident in existing:
            table = catalog.load_table(ident)
            bronze = ident.replace("silver.", "bronze.")
            if ident == DEAD_LETTERS:
                expected: int | None = stats.total_bad
            elif ident.startswith("silver."):
                expected = stats.rows[bronze]
            else:
                expected = stats.bronze_rows(ident) if ident in stats.rows else None
            rows.append(
                {
                    "table": ident,
                    "rows": counts.get(ident, 0),
                    "expected": expected,
                    "snapshots": len(table.metadata.snapshots),
                    "data_files": len(table.inspect.files()) if table.current_snapshot() else 0,
                }
            )
    result.tables = rows


def _queries(steps: _Steps, settings: Settings, result: _Result) -> None:
    from iceberg_lake.timetravel.query import Lake

    with steps.step("ran the example queries"), Lake(settings) as lake:
        for title, sql in EXAMPLE_QUERIES:
            rows = lake.query(sql).to_pylist()
            result.queries.append({"title": title, "sql": " ".join(sql.split()), "rows": rows})
        sql = "SELECT count(*) AS n FROM silver.stocks_trades"
        rows = lake.query(sql, as_of=DEMO_TAG).to_pylist()
        result.queries.append(
            {"title": f"time travel: AS OF tag '{DEMO_TAG}'", "sql": sql, "rows": rows}
        )


def _replay(steps: _Steps, settings: Settings, result: _Result) -> None:
    from iceberg_lake.timetravel.replay import ReplayEngine

    tables = REPLAY_TABLES
    start = SimulationConfig().start_ns
    with steps.step(f"replayed the first {REPLAY_SECONDS} s from the '{DEMO_TAG}' snapshots"):
        engine = ReplayEngine(
            settings, tables, start, start + REPLAY_SECONDS * 1_000_000_000, as_of=DEMO_TAG
        )
        first: list[dict[str, Any]] = []
        for event in engine.events():
            if len(first) < 6:
                row = event.row
                first.append(
                    {
                        "table": event.table,
                        "ts_event_ns": row["ts_event_ns"],
                        "symbol": row.get("symbol"),
                        "price": row.get("price", row.get("bid_px", row.get("bid_px_1"))),
                        "seq": row.get("seq"),
                    }
                )
        manifest = engine.manifest()
    result.replay = {
        "tables": tables,
        "events": manifest["event_count"],
        "events_per_table": manifest["events_per_table"],
        "snapshots": manifest["snapshots"],
        "sequence_hash": manifest["sequence_hash"],
        "first_events": first,
    }


# ---- output --------------------------------------------------------------------------------------


def _available_commands() -> set[str]:
    """Top-level `lake` commands and groups registered right now."""
    try:
        import typer

        from iceberg_lake.cli.app import app

        group = typer.main.get_command(app)
        return set(getattr(group, "commands", {}))
    except Exception:  # the CLI is optional for the library
        return set()


def _next_commands(data_dir: Path) -> list[str]:
    """Commands to explore the demo lake (only those this installation has)."""
    candidates = [
        ("", f"export LAKE_CONFIG={data_dir / 'lake.toml'}"),
        ("tables", "lake tables"),
        ("snapshot", "lake snapshot list silver.stocks_trades"),
        (
            "query",
            'lake query "SELECT symbol, count(*) AS trades, round(avg(price), 2) AS avg_price '
            'FROM silver.futures_trades GROUP BY symbol"',
        ),
        ("query", f'lake query --as-of {DEMO_TAG} "SELECT count(*) FROM bronze.stocks_quotes"'),
        (
            "replay",
            f"lake replay --tables silver.stocks_trades,silver.futures_trades --as-of {DEMO_TAG} "
            "--start 2024-05-13T13:30:00Z --end 2024-05-13T13:30:01Z",
        ),
        ("compact", "lake compact --incremental   # nothing left to do: no commit"),
        ("serve", "lake serve   # with LAKE_NATS_URL set; feed it: lake simulate --rate 500"),
    ]
    available = _available_commands()
    return [cmd for name, cmd in candidates if not name or name in available]


def _print_summary(console: Console, result: _Result) -> None:
    published = result.published
    dead_letters = next((t["rows"] for t in result.tables if t["table"] == DEAD_LETTERS), None)
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
        ("duplicates removed by Silver", result.compaction.get("duplicates_removed")),
        ("Silver partitions replaced", result.compaction.get("partitions")),
    ):
        pipeline.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(pipeline)

    tables = RichTable(title="tables")
    for col in ("table", "rows", "expected", "snapshots", "data files"):
        tables.add_column(col, justify="left" if col == "table" else "right")
    for row in result.tables:
        ok = row["expected"] is None or row["expected"] == row["rows"]
        mark = "" if ok else " [red]≠[/red]"
        tables.add_row(
            row["table"],
            f"{row['rows']:,}{mark}",
            "-" if row["expected"] is None else f"{row['expected']:,}",
            str(row["snapshots"]),
            str(row["data_files"]),
        )
    console.print(tables)

    for q in result.queries:
        rows = q["rows"]
        if len(rows) == 1 and len(rows[0]) == 1:
            console.print(
                f"{q['title']}: {q['sql']} → [bold]{_fmt(next(iter(rows[0].values())))}[/bold]"
            )
            continue
        table = RichTable(title=q["title"])
        cols = list(rows[0]) if rows else ["(no rows)"]
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[_fmt(r.get(c)) for c in cols])
        console.print(table)
    if result.replay:
        replay = result.replay
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
    for line in result.skipped:
        console.print(f"[yellow]skipped[/yellow] {line}")
    console.print(
        f"\n[bold]done in {result.steps.get('total', 0):.1f} s[/bold]; the lake is in "
        f"{result.data_dir} (nats-server stopped). Explore it:"
    )
    for cmd in result.next_commands:
        console.print(f"  [cyan]{cmd}[/cyan]", highlight=False, soft_wrap=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)
