"""Benchmark: time travel reads, deterministic replay (Arrow, Python, NATS), bars and as-of joins.

Builds a fresh local lake (in a child process, so the figures' peak RSS is the replay's own):
three Bronze tables over one day, tagged `bench` — `stocks_trades` (10 symbols, 40%),
`stocks_quotes` (10 symbols, 50%) and `futures_trades` (ES, NQ; 10%), one append per table and
hour, rows time-ordered within each symbol like a feed. 5.4M events by default; `--events N`,
`--hours H` (of the day) and `--quick` (540k over 24 h) scale it. Then, in the same run, each
figure beside DuckDB's own sorted read (`SELECT … ORDER BY ts_event_ns, symbol` to Arrow, table
by table) of the same rows, and the Arrow replay also beside DuckDB producing the merged sequence
itself (the three tables `UNION ALL BY NAME`, `ORDER BY ts_event_ns, table, symbol`):

* Arrow replay (`ReplayEngine.batches()`: pinned snapshots, hour windows, merge of the three
  tables, canonical encoding and the sequence hash) over the whole window, as the first replay
  of the process (which also loads the compiled kernels) and again, and the same with
  `verify=False` (no encoding, no hash); the same for the per-table layout
  (`table_batches()`: each table's own columns and a `replay_seq` merge key);
* Python replay over the whole window: `ReplayEngine.events()` (`ReplayEvent`s, payload bytes)
  and the documented `for event in engine` (one dict per event, decoded from the payload); and
  `events()` over 2 hours beside the iterator as it was before issue 16
  (`tests/replay_reference.py`, same hash);
* NATS replay (`publish()`, core publish to a local nats-server, `replay.` prefix) over 2 hours;
* 1-minute OHLCV bars by symbol (`bars()`) over the day, and trades as-of joined with the
  prevailing NBBO quote (`asof_join()`) over the day;
* symbol-hour read latency vs a full scan (reader and DuckDB), as before.

Peak RSS (`ru_maxrss` of this process, which never holds the generated data) is reported last.
Usage::

    python scripts/bench_replay.py [--quick] [--events N] [--hours H] [--json] [--skip-nats]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SYMBOLS = ("SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "META", "TSLA", "GOOG")
FUTURES = ("ES", "NQ")
DAY_NS = 1_765_843_200 * 10**9  # 2025-12-16 00:00 UTC
HOUR_NS = 3_600 * 10**9
TRADES, QUOTES, FUT = "bronze.stocks_trades", "bronze.stocks_quotes", "bronze.futures_trades"
TABLES = (TRADES, QUOTES, FUT)
SHARE = {TRADES: 0.4, QUOTES: 0.5, FUT: 0.1}
TAG = "bench"


def _columns(table: str, hour: int, n: int, rng: np.random.Generator) -> dict[str, Any]:
    symbols = FUTURES if table == FUT else SYMBOLS
    per = max(1, n // len(symbols))
    parts = []
    for s, symbol in enumerate(symbols):
        ts = np.sort(DAY_NS + hour * HOUR_NS + rng.integers(0, HOUR_NS, per))
        base = 100 + s * 50 + np.cumsum(rng.normal(0, 0.01, per))
        cols: dict[str, Any] = {
            "ts_event_ns": ts,
            "ts_recv_ns": ts + rng.integers(10_000, 2_000_000, per),
            "source": np.full(per, "bench"),
            "symbol": np.full(per, symbol),
            "seq": np.arange(per, dtype=np.int64) + (hour * len(symbols) + s) * per,
        }
        if table == QUOTES:
            cols["bid_px"] = np.round(base - 0.01, 2)
            cols["ask_px"] = np.round(base + 0.01 + rng.integers(0, 3, per) * 0.01, 2)
            cols["bid_sz"] = rng.integers(1, 900, per).astype(np.int32)
            cols["ask_sz"] = rng.integers(1, 900, per).astype(np.int32)
            cols["bid_exch"] = rng.integers(1, 20, per).astype(np.int32)
            cols["ask_exch"] = rng.integers(1, 20, per).astype(np.int32)
        else:
            cols["price"] = np.round(base + rng.normal(0, 0.02, per), 2)
            cols["size"] = rng.integers(1, 500, per).astype(np.int32)
            if table == FUT:
                cols["exchange"] = np.full(per, "CME")
                cols["aggressor"] = rng.integers(0, 3, per).astype(np.int8)
            else:
                cols["exchange"] = rng.integers(1, 20, per).astype(np.int32)
        parts.append(cols)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def build_lake(workdir: Path, events: int, hours: int) -> dict[str, Any]:
    """A local lake with the three tables over `hours` hours of the day, tagged `bench`."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.timetravel import snapshots

    settings = load_settings({"LAKE_DATA_DIR": str(workdir / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    rng = np.random.default_rng(11)
    total = 0
    for ident in TABLES:
        table = catalog.load_table(ident)
        schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
        per_hour = int(events * SHARE[ident] / hours)
        for hour in range(hours):
            cols = _columns(ident, hour, per_hour, rng)
            n = len(cols["ts_event_ns"])
            arrays = []
            for field in schema:
                if field.name == "ts_event":
                    us = pa.array(cols["ts_event_ns"] // 1_000, pa.int64())
                    arrays.append(us.cast(field.type))
                elif field.name in cols:
                    arrays.append(pa.array(cols[field.name]).cast(field.type))
                else:
                    arrays.append(pa.nulls(n, field.type))
            table.append(pa.Table.from_arrays(arrays, schema=schema))
            total += n
    snapshots.create_tag(settings, TAG, list(TABLES))
    return {"data_dir": str(workdir / "lake"), "events": total}


def _median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _row(
    benchmark: str, metric: str, value: float, unit: str, baseline: str, base: float | None
) -> dict:
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if base is None else round(base, 3),
    }


def _warm(data_dir: str) -> None:
    """Read every file of the lake once so no measurement pays for the first disk read."""
    for path in Path(data_dir).rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 22):
                    pass


def _cpu() -> float:
    """CPU seconds used by this process so far (all threads): the machine is shared, so the
    events per CPU-second show the work apart from the wait for a core."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def duckdb_sorted_read(
    settings: Any, tables: tuple[str, ...], start: int, end: int
) -> tuple[int, float]:
    """DuckDB's own sorted read of the same rows to Arrow: (rows, seconds), tables one by one."""
    from iceberg_lake.timetravel.query import Lake

    rows, seconds = 0, 0.0
    with Lake(settings) as lake:
        con = lake.duckdb(as_of=TAG, tables=list(tables))
        for ident in tables:
            sql = (
                f"SELECT * EXCLUDE (ts_event) FROM {ident} WHERE ts_event_ns >= {start} "
                f"AND ts_event_ns < {end} ORDER BY ts_event_ns, symbol"
            )
            began = time.perf_counter()
            rows += con.execute(sql).arrow().read_all().num_rows
            seconds += time.perf_counter() - began
        con.close()
    return rows, seconds


def duckdb_merged_read(
    settings: Any, tables: tuple[str, ...], start: int, end: int
) -> tuple[int, float]:
    """DuckDB producing the replay's merged sequence itself: the tables' rows in one union
    (`UNION ALL BY NAME`, a table position column) sorted by event time, table, symbol, to Arrow
    (a lighter tie-break than the replay's full key): (rows, seconds)."""
    from iceberg_lake.timetravel.query import Lake

    with Lake(settings) as lake:
        con = lake.duckdb(as_of=TAG, tables=list(tables))
        union = " UNION ALL BY NAME ".join(
            f"SELECT {k} AS table_pos, * EXCLUDE (ts_event) FROM {ident} "
            f"WHERE ts_event_ns >= {start} AND ts_event_ns < {end}"
            for k, ident in enumerate(tables)
        )
        sql = f"SELECT * FROM ({union}) ORDER BY ts_event_ns, table_pos, symbol"
        began = time.perf_counter()
        rows = con.execute(sql).arrow().read_all().num_rows
        seconds = time.perf_counter() - began
        con.close()
    return rows, seconds


def bench_replay(settings: Any, start: int, end: int, hours: int) -> list[dict]:
    """Arrow and Python replay events/s vs DuckDB's sorted read of the same rows."""
    from iceberg_lake.timetravel.replay import ReplayEngine

    # The replays run first so the peak RSS after them is theirs (the baseline materialises
    # whole tables); the data files are in the page cache already (`_warm`).
    # The first replay of a process also loads the compiled encoding kernels (~1 ms since they
    # are C; numba's were ~0.6 s) and plans the pinned files (~0.2 s; later replays of the same
    # pins reuse the plan); a backtest sweep pays that once, `lake replay` every run.
    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    first_rows = sum(b.num_rows for b in engine.batches())
    first_s, first_cpu = time.perf_counter() - began, _cpu() - cpu
    arrow_hash = engine.manifest()["sequence_hash"]

    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    arrow_rows = sum(b.num_rows for b in engine.batches())
    arrow_s, arrow_cpu = time.perf_counter() - began, _cpu() - cpu
    assert engine.manifest()["sequence_hash"] == arrow_hash

    # The same batches without the canonical encoding and hash (`batches(verify=False)`).
    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    fast_rows = sum(b.num_rows for b in engine.batches(verify=False))
    fast_s, fast_cpu = time.perf_counter() - began, _cpu() - cpu

    # The per-table layout (`table_batches()`: each table's own columns + `replay_seq`).
    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    tab_rows = sum(b.num_rows for _, b in engine.table_batches())
    tab_s, tab_cpu = time.perf_counter() - began, _cpu() - cpu
    assert engine.manifest()["sequence_hash"] == arrow_hash
    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    tab_fast_rows = sum(b.num_rows for _, b in engine.table_batches(verify=False))
    tab_fast_s, tab_fast_cpu = time.perf_counter() - began, _cpu() - cpu

    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    py_rows = 0
    last = 0
    for event in engine.events():
        py_rows += 1
        last = event.ts_event_ns  # touch the event like a consumer would
    py_s, py_cpu = time.perf_counter() - began, _cpu() - cpu
    assert engine.manifest()["sequence_hash"] == arrow_hash

    # The documented `for event in engine`: one dict per event (`table` + the decoded row).
    engine = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    dict_rows = 0
    last_dict = 0
    for row in engine:
        dict_rows += 1
        last_dict = row["ts_event_ns"]
    dict_s, dict_cpu = time.perf_counter() - began, _cpu() - cpu
    replay_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    cpu = _cpu()
    base_rows, base_s = duckdb_sorted_read(settings, TABLES, start, end)
    base_cpu = _cpu() - cpu
    base_rate = base_rows / base_s
    cpu = _cpu()
    merged_rows, merged_s = duckdb_merged_read(settings, TABLES, start, end)
    merged_cpu = _cpu() - cpu
    assert merged_rows == base_rows
    merged = f"DuckDB merged sorted read to Arrow ({merged_rows / merged_cpu:,.0f} rows/CPU-s)"
    assert last and last_dict and dict_rows == py_rows
    assert py_rows == arrow_rows == fast_rows == first_rows == tab_rows == tab_fast_rows
    assert engine.manifest()["sequence_hash"] == arrow_hash
    assert arrow_rows == base_rows, (arrow_rows, base_rows)
    what = f"{base_rows:,} events, {hours} h × 3 tables"
    duck = f"DuckDB sorted read to Arrow ({base_rows / base_cpu:,.0f} rows/CPU-s)"
    return [
        _row(
            "replay to Arrow batches, first in the process",
            f"events/s ({what}; hash {arrow_hash[7:19]}…; incl. loading the compiled kernels; "
            f"{first_rows / first_cpu:,.0f}/CPU-s)",
            first_rows / first_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "replay to Arrow batches",
            f"events/s ({what}; same hash; a second replay in the process: kernels loaded, "
            "plans kept; "
            f"{arrow_rows / arrow_cpu:,.0f}/CPU-s)",
            arrow_rows / arrow_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "replay to Arrow batches, verify=False",
            f"events/s ({what}; no encoding, no hash; {fast_rows / fast_cpu:,.0f}/CPU-s)",
            fast_rows / fast_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "replay to per-table Arrow batches (table_batches)",
            f"events/s ({what}; same hash; own columns + replay_seq; "
            f"{tab_rows / tab_cpu:,.0f}/CPU-s)",
            tab_rows / tab_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "replay to per-table Arrow batches, verify=False",
            f"events/s ({what}; no encoding, no hash; {tab_fast_rows / tab_fast_cpu:,.0f}/CPU-s)",
            tab_fast_rows / tab_fast_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "replay to Arrow batches, vs DuckDB producing the merged sequence",
            f"events/s ({what}; same hash; as above)",
            arrow_rows / arrow_s,
            "events/s",
            merged,
            merged_rows / merged_s,
        ),
        _row(
            "replay to Arrow batches, verify=False, vs DuckDB producing the merged sequence",
            f"events/s ({what}; no encoding, no hash; as above)",
            fast_rows / fast_s,
            "events/s",
            merged,
            merged_rows / merged_s,
        ),
        _row(
            "replay to Python events",
            f"events/s ({what}; same hash; {py_rows / py_cpu:,.0f}/CPU-s)",
            py_rows / py_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "replay to Python dicts (for event in engine)",
            f"events/s ({what}; same hash; {dict_rows / dict_cpu:,.0f}/CPU-s)",
            dict_rows / dict_s,
            "events/s",
            duck,
            base_rate,
        ),
        _row(
            "peak RSS after the replays",
            "MB (ru_maxrss before any baseline ran; imports + DuckDB alone ~240 MB)",
            replay_rss,
            "MB",
            "-",
            None,
        ),
    ]


def bench_old_iterator(settings: Any, start: int, end: int) -> list[dict]:
    """The Python event path vs the pre-issue-16 iterator (`tests/replay_reference.py`), same
    window and run, same hash."""
    from iceberg_lake.timetravel.replay import ReplayEngine

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import replay_reference

    old = replay_reference.ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    old_rows = sum(1 for _ in old.events())
    old_s, old_cpu = time.perf_counter() - began, _cpu() - cpu
    new = ReplayEngine(settings, list(TABLES), start, end, as_of=TAG)
    began, cpu = time.perf_counter(), _cpu()
    new_rows = sum(1 for _ in new.events())
    new_s, new_cpu = time.perf_counter() - began, _cpu() - cpu
    assert old_rows == new_rows
    assert old.manifest()["sequence_hash"] == new.manifest()["sequence_hash"]
    return [
        _row(
            "replay to Python events vs the old iterator",
            f"events/s ({new_rows:,} events, {(end - start) // HOUR_NS} h × 3 tables, same hash; "
            f"{new_rows / new_cpu:,.0f}/CPU-s vs {old_rows / old_cpu:,.0f}/CPU-s)",
            new_rows / new_s,
            "events/s",
            "pre-issue-16 iterator (tests/replay_reference.py)",
            old_rows / old_s,
        )
    ]


def bench_nats(settings: Any, start: int, end: int) -> list[dict]:
    """Replay to NATS (core publish, batched flushes) vs DuckDB's sorted read."""
    from iceberg_lake.testing import run_nats_server
    from iceberg_lake.timetravel.replay import ReplayEngine

    base_rows, base_s = duckdb_sorted_read(settings, TABLES, start, end)
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp)) as server:
        s = settings.with_overrides(nats_url=server.url)
        engine = ReplayEngine(s, list(TABLES), start, end, as_of=TAG)
        began = time.perf_counter()
        manifest = asyncio.run(engine.publish(prefix="replay"))
        nats_s = time.perf_counter() - began
    published = manifest["event_count"]
    assert published == base_rows
    return [
        _row(
            "replay to NATS",
            f"events/s ({published:,} core publishes, {(end - start) // HOUR_NS} h, `replay.`)",
            published / nats_s,
            "events/s",
            "DuckDB sorted read to Arrow",
            base_rows / base_s,
        )
    ]


def bench_backtest(settings: Any, start: int, end: int) -> list[dict]:
    """Bars and the as-of join over the window vs DuckDB's sorted read of the rows they read."""
    from iceberg_lake.timetravel.asof import asof_join
    from iceberg_lake.timetravel.bars import bars
    from iceberg_lake.timetravel.query import Lake

    rows = []
    with Lake(settings) as lake:
        base_rows, base_s = duckdb_sorted_read(settings, (TRADES,), start, end)
        began = time.perf_counter()
        out = bars(lake, TRADES, "1m", start_ns=start, end_ns=end, by="symbol", as_of=TAG)
        bars_s = time.perf_counter() - began
        rows.append(
            _row(
                "1-minute bars by symbol",
                f"input rows/s ({base_rows:,} trades → {out.num_rows:,} bars)",
                base_rows / bars_s,
                "rows/s",
                "DuckDB sorted read to Arrow",
                base_rows / base_s,
            )
        )
        q_rows, q_s = duckdb_sorted_read(settings, (TRADES, QUOTES), start, end)
        began = time.perf_counter()
        joined = asof_join(lake, TRADES, QUOTES, start_ns=start, end_ns=end, as_of=TAG)
        asof_s = time.perf_counter() - began
        assert joined.num_rows == base_rows
        rows.append(
            _row(
                "trades as-of NBBO quote",
                f"trades/s ({joined.num_rows:,} trades joined over {q_rows - base_rows:,} quotes)",
                base_rows / asof_s,
                "rows/s",
                "DuckDB sorted read of both, rows/s",
                q_rows / q_s,
            )
        )
    return rows


def bench_reads(settings: Any, repeat: int) -> list[dict]:
    """Symbol-hour read latency vs a full scan, through the reader and through DuckDB."""
    from iceberg_lake.timetravel.query import Lake
    from iceberg_lake.timetravel.readers import BronzeReader

    reader = BronzeReader(settings, tag=TAG)
    start = DAY_NS
    one = reader.read_arrow("stocks_trades", "SPY", "2025-12-16", start, start + HOUR_NS)
    scan = reader.last_scan
    assert scan is not None and scan.files_scanned == 1, scan
    symbol_hour = _median_seconds(
        lambda: reader.read_arrow("stocks_trades", "SPY", "2025-12-16", start, start + HOUR_NS),
        repeat,
    )
    full = _median_seconds(lambda: reader.read_arrow("stocks_trades", None), max(1, repeat // 3))
    rows = [
        _row(
            "reader symbol-hour read",
            f"latency ({one.num_rows:,} rows, {scan.files_scanned} of {scan.files_total} files)",
            symbol_hour * 1000,
            "ms",
            "reader full-table read",
            full * 1000,
        )
    ]
    with Lake(settings) as lake:
        sql_hour = (
            "SELECT * FROM bronze.stocks_trades WHERE symbol = 'SPY' "
            f"AND ts_event >= make_timestamp({start // 1000})::TIMESTAMPTZ "
            f"AND ts_event < make_timestamp({(start + HOUR_NS) // 1000})::TIMESTAMPTZ"
        )
        got = lake.query(sql_hour, as_of=TAG)
        assert got.num_rows == one.num_rows, (got.num_rows, one.num_rows)
        duck_hour = _median_seconds(lambda: lake.query(sql_hour, as_of=TAG), repeat)
        duck_full = _median_seconds(
            lambda: lake.query("SELECT * FROM bronze.stocks_trades", as_of=TAG),
            max(1, repeat // 3),
        )
    rows.append(
        _row(
            "DuckDB symbol-hour query AS OF tag",
            f"latency ({got.num_rows:,} rows)",
            duck_hour * 1000,
            "ms",
            "DuckDB full-table scan AS OF tag",
            duck_full * 1000,
        )
    )
    return rows


def run(
    quick: bool = False,
    events: int | None = None,
    hours: int = 24,
    nats: bool = True,
    only: set[str] | None = None,
) -> list[dict]:
    """Build the lake (child process), run every measurement, return rows for `bench.py`."""
    from iceberg_lake.config import load_settings

    events = events or (540_000 if quick else 5_400_000)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--build",
                tmp,
                "--events",
                str(events),
                "--hours",
                str(hours),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        built = json.loads(out.stdout.strip().splitlines()[-1])
        build_s = time.perf_counter() - began
        settings = load_settings({"LAKE_DATA_DIR": built["data_dir"]})
        _warm(built["data_dir"])
        start, end = DAY_NS, DAY_NS + hours * HOUR_NS
        want = only or {"replay", "old", "nats", "backtest", "reads"}
        rows: list[dict] = []
        if "replay" in want:
            rows += bench_replay(settings, start, end, hours)
        if "old" in want:
            rows += bench_old_iterator(settings, start, start + min(hours, 2) * HOUR_NS)
        if "nats" in want and nats:
            rows += bench_nats(settings, start, start + min(hours, 2) * HOUR_NS)
        if "backtest" in want:
            rows += bench_backtest(settings, start, end)
        if "reads" in want:
            rows += bench_reads(settings, repeat=3 if quick else 5)
    rows.append(
        _row(
            "bench set-up",
            f"write {built['events']:,} rows (3 tables × {hours} appends, child process)",
            built["events"] / build_s,
            "rows/s",
            "-",
            None,
        )
    )
    rows.append(
        _row(
            "peak RSS of the whole benchmark process",
            "MB (incl. baselines that materialise whole tables; data generated in a child)",
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "MB",
            "-",
            None,
        )
    )
    return rows


def main() -> None:
    """Print the rows as a rich table, or JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="540k events instead of 5.4M")
    parser.add_argument("--events", type=int, default=None, help="events in the lake")
    parser.add_argument("--hours", type=int, default=24, help="hours of the day (max 24)")
    parser.add_argument("--skip-nats", action="store_true", help="no NATS replay")
    parser.add_argument("--only", default="", help="replay,old,nats,backtest,reads")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        events = args.events or 5_400_000
        print(json.dumps(build_lake(Path(args.build), events, args.hours)))
        return
    only = {s for s in args.only.split(",") if s} or None
    rows = run(args.quick, args.events, min(24, args.hours), not args.skip_nats, only)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="time travel, replay and backtests")
    for col in ("benchmark", "metric", "value", "unit", "baseline", "baseline_value"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            *[
                f"{r[c]:,}" if isinstance(r[c], float) else str(r[c] if r[c] is not None else "-")
                for c in r
            ]
        )
    Console().print(table)


if __name__ == "__main__":
    main()
