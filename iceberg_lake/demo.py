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
from typing import TYPE_CHECKING, Any, Protocol

from iceberg_lake.exceptions import CompactionError, LakeError
from iceberg_lake.runtime import ServerStartError, start_nats_server
from iceberg_lake.simulate import SUBJECT_TABLES, SimulationConfig, SimulationStats

if TYPE_CHECKING:
    from iceberg_lake.config import Settings

__all__ = [
    "DEMO_TAG",
    "EXAMPLE_QUERIES",
    "DemoOptions",
    "DemoReporter",
    "default_data_dir",
    "run_demo",
]

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


class DemoReporter(Protocol):
    """Receives the demo's progress; the CLI renders it (the library prints nothing)."""

    def started(self, data_dir: Path) -> None:
        """The demo starts, into `data_dir`."""

    def step(self, name: str, seconds: float) -> None:
        """Step `name` finished after `seconds`."""

    def skipped(self, name: str, why: str) -> None:
        """Step `name` was skipped."""

    def progress(self, task: str, done: int, total: int | None) -> None:
        """Task `task` of the running step reached `done` of `total`."""


class _Steps:
    """Runs named steps, timing each and telling the reporter."""

    def __init__(self, reporter: DemoReporter | None, result: _Result) -> None:
        self.reporter = reporter
        self.result = result

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        seconds = time.monotonic() - began
        self.result.steps[name] = round(seconds, 2)
        if self.reporter is not None:
            self.reporter.step(name, seconds)

    def skip(self, name: str, why: str) -> None:
        self.result.skipped.append(f"{name}: {why}")
        if self.reporter is not None:
            self.reporter.skipped(name, why)

    def progress(self, task: str, done: int, total: int | None) -> None:
        if self.reporter is not None:
            self.reporter.progress(task, done, total)


def run_demo(options: DemoOptions, reporter: DemoReporter | None = None) -> dict[str, Any]:
    """Run the demo end to end.

    Args:
        options: session size, data directory.
        reporter: told about each step and its progress (None: silent).

    Returns:
        A JSON-friendly summary: published counts, per-table rows, compaction, tags, query
        results, replay, step timings and the commands to explore further.

    Raises:
        LakeError: the data directory is not new, or a step failed.
    """
    began = time.monotonic()
    options.simulation()  # bad options fail before the data directory is made (newuser5)
    data_dir = _prepare_data_dir(options.data_dir or default_data_dir())
    result = _Result(data_dir=str(data_dir))
    steps = _Steps(reporter, result)
    if reporter is not None:
        reporter.started(data_dir)
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
    with steps.step("published to JetStream"):
        report = asyncio.run(
            publish_messages(
                messages,
                settings,
                progress=lambda done, total: steps.progress("publishing", done, len(messages)),
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
        asyncio.run(run(lambda n: steps.progress("ingesting", min(n, expected), expected)))
    result.published["rows_committed_by_writers"] = service.committed_events


def _compact(steps: _Steps, settings: Settings, result: _Result) -> None:
    from iceberg_lake.silver.compactor import SilverCompactor

    with steps.step("compacted Silver (dedup + sort)"):
        with SilverCompactor(settings, progress=steps.progress) as compactor:
            results = compactor.compact_incremental()
        failed = [f"{r.table}: {r.error}" for r in results if r.status == "error"]
        if failed:  # the other tables were compacted; the demo still must not pass
            raise CompactionError("; ".join(failed))
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


def _next_commands(data_dir: Path) -> list[str]:
    """Commands to explore the demo lake (the CLI shows those its installation has)."""
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
        (
            "serve",
            # A new lake: the demo's positions count in its own NATS store, now deleted, so
            # any other stream is refused as a recreated one (newuser10).
            "LAKE_DATA_DIR=./lake-live lake serve   # a new lake; LAKE_NATS_URL: a nats-server "
            "with JetStream (nats-server -js -sd DIR); feed it: lake simulate --rate 500",
        ),
    ]
    return [cmd for _, cmd in candidates]
