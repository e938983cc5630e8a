"""Benchmark: time travel reads and deterministic replay.

Writes N stock trades (10 symbols × 24 hours of one day; 5.04M rows by default, 504k with
--quick) into a fresh local lake, one append per hour, and tags the snapshot. Then, in the same
run, each figure beside its baseline:

* symbol-hour read latency (one symbol, one hour = 1 of 240 partitions) through `BronzeReader`
  (pyiceberg planning + Arrow) and through `Lake.query` (DuckDB `iceberg_scan`, AS OF the tag),
  each vs a full-table scan by the same engine;
* replay throughput to a Python iterator (events/s, the whole ReplayEngine: pinned snapshot,
  hour-by-hour DuckDB reads, k-way merge, canonical encoding, sequence hash) vs DuckDB reading
  and sorting the same rows to Arrow (no per-event work);
* replay throughput to NATS (core publish to a local nats-server, `replay.` prefix) vs the
  iterator.

Latencies are the median of several runs (the machine is shared). Usage::

    python scripts/bench_replay.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SYMBOLS = ("SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "META", "TSLA", "GOOG")
HOURS = 24
DAY_NS = 1_765_843_200 * 10**9  # 2025-12-16 00:00 UTC
HOUR_NS = 3_600 * 10**9
TABLE = "bronze.stocks_trades"
TAG = "bench"


def _hour_batch(schema: pa.Schema, hour: int, per_partition: int, rng: np.random.Generator):
    """One hour of trades for every symbol, sorted by event time within each symbol."""
    parts = []
    for s, symbol in enumerate(SYMBOLS):
        ts = np.sort(DAY_NS + hour * HOUR_NS + rng.integers(0, HOUR_NS, per_partition))
        seq0 = (hour * len(SYMBOLS) + s) * per_partition
        parts.append(
            {
                "ts_event_ns": ts,
                "ts_recv_ns": ts + rng.integers(10_000, 2_000_000, per_partition),
                "source": np.full(per_partition, "bench"),
                "symbol": np.full(per_partition, symbol),
                "price": np.round(100 + s * 50 + rng.normal(0, 1, per_partition), 2),
                "size": rng.integers(1, 500, per_partition).astype(np.int32),
                "exchange": rng.integers(1, 20, per_partition).astype(np.int32),
                "seq": np.arange(seq0, seq0 + per_partition, dtype=np.int64),
            }
        )
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays = []
    for field in schema:
        if field.name == "ts_event":
            arrays.append(pa.array(cols["ts_event_ns"] // 1_000, pa.int64()).cast(field.type))
        elif field.name in cols:
            arrays.append(pa.array(cols[field.name], field.type))
        else:
            arrays.append(pa.nulls(len(cols["ts_event_ns"]), field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def build_lake(workdir: Path, rows: int) -> tuple[Any, int]:
    """A local lake whose `bronze.stocks_trades` holds about `rows` rows, tagged `bench`."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.timetravel import snapshots

    settings = load_settings({"LAKE_DATA_DIR": str(workdir / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    table = catalog.load_table(TABLE)
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    per_partition = max(1, rows // (HOURS * len(SYMBOLS)))
    rng = np.random.default_rng(11)
    for hour in range(HOURS):
        table.append(_hour_batch(schema, hour, per_partition, rng))
    snapshots.create_tag(settings, TAG, [TABLE])
    return settings, per_partition * HOURS * len(SYMBOLS)


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


def bench_reads(settings: Any, total: int, repeat: int) -> list[dict]:
    """Symbol-hour read latency vs a full scan, through the reader and through DuckDB."""
    from iceberg_lake.timetravel.query import Lake
    from iceberg_lake.timetravel.readers import BronzeReader

    reader = BronzeReader(settings, tag=TAG)
    start = DAY_NS + 14 * HOUR_NS
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
            f"latency ({one.num_rows:,} of {total:,} rows, {scan.files_scanned} of "
            f"{scan.files_total} files)",
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


def bench_replay(settings: Any, hours: int) -> list[dict]:
    """Replay events/s to an iterator and to NATS, vs DuckDB's plain sorted read."""
    from iceberg_lake.timetravel.query import Lake
    from iceberg_lake.timetravel.replay import ReplayEngine

    start = DAY_NS + 14 * HOUR_NS
    end = start + hours * HOUR_NS
    engine = ReplayEngine(settings, [TABLE], start, end, as_of=TAG)
    began = time.perf_counter()
    count = sum(1 for _ in engine.events())
    iterator_s = time.perf_counter() - began
    manifest = engine.manifest()
    assert count == manifest["event_count"] > 0

    with Lake(settings) as lake:
        con = lake.duckdb(as_of=TAG, tables=[TABLE])
        sql = (
            f"SELECT * EXCLUDE (ts_event) FROM bronze.stocks_trades WHERE ts_event_ns >= {start} "
            f"AND ts_event_ns < {end} ORDER BY ts_event_ns, symbol"
        )
        began = time.perf_counter()
        plain = con.execute(sql).arrow().read_all().num_rows
        plain_s = time.perf_counter() - began
        con.close()
    assert plain == count

    nats_s, published = _replay_to_nats(settings, start, end)
    assert published == count
    iterator_rate = count / iterator_s
    return [
        _row(
            "replay to iterator",
            f"events/s ({count:,} events, {hours} h × {len(SYMBOLS)} symbols)",
            iterator_rate,
            "events/s",
            "DuckDB sorted read to Arrow",
            plain / plain_s,
        ),
        _row(
            "replay to NATS",
            f"events/s ({published:,} core publishes, prefix replay.)",
            published / nats_s,
            "events/s",
            "replay to iterator",
            iterator_rate,
        ),
    ]


def _replay_to_nats(settings: Any, start: int, end: int) -> tuple[float, int]:
    from iceberg_lake.testing import run_nats_server
    from iceberg_lake.timetravel.replay import ReplayEngine

    with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp)) as server:
        s = settings.with_overrides(nats_url=server.url)
        engine = ReplayEngine(s, [TABLE], start, end, as_of=TAG)
        began = time.perf_counter()
        manifest = asyncio.run(engine.publish(prefix="replay"))
        return time.perf_counter() - began, manifest["event_count"]


def run(quick: bool = False) -> list[dict]:
    """Build the lake, run every measurement, return rows for `scripts/bench.py`."""
    rows_wanted = 504_000 if quick else 5_040_000
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        settings, total = build_lake(Path(tmp), rows_wanted)
        build_s = time.perf_counter() - began
        rows = bench_reads(settings, total, repeat=3 if quick else 7)
        rows += bench_replay(settings, hours=1 if quick else 2)
    rows.append(
        _row(
            "bench set-up",
            f"write {total:,} rows (24 appends)",
            total / build_s,
            "rows/s",
            "-",
            None,
        )
    )
    return rows


def main() -> None:
    """Print the rows as a rich table, or JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="504k rows instead of 5.04M")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="time travel and replay")
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
