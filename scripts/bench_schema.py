"""Benchmark: what schema evolution costs — commits, migrations, and reads across versions.

Measured in one run on fresh local lakes (SQLite catalog, file warehouse):

* `evolve_table` commit (add one optional column + `lake.schema-version` bump) on a table with
  N snapshots, median of K changes; baseline: a bare `set_properties` metadata commit on the same
  table (the cheapest commit pyiceberg can make).
* `lake migrate up` of the shipped migrations on a lake with old-shape tables (real commits) and
  on a fresh lake (recorded no-ops); baseline: loading the tables the steps touch.
* DuckDB full scan of a table whose data files span two schema versions (half written before an
  added column, half after); baseline: the same rows written under one schema.

Usage::

    python scripts/bench_schema.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _bench_common import print_rows

TRADES = "bronze.stocks_trades"
T0 = 1_765_893_600 * 10**9  # 2025-12-16 14:00 UTC


def _row(bench: str, metric: str, value: float, unit: str, baseline: str, base: float) -> dict:
    return {
        "benchmark": bench,
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": round(base, 3),
    }


def _lake(root: Path, tables: Any = None) -> Any:
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings

    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(root)}), tables=tables)
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    return lake


def _trades(table: Any, rows: int, seed: int) -> pa.Table:
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, 3600 * 10**9, rows))
    data = {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1000,
        "source": np.full(rows, "bench"),
        "symbol": np.full(rows, "SPY"),
        "price": np.round(500 + rng.normal(0, 1, rows), 2),
        "size": rng.integers(1, 500, rows).astype(np.int32),
        "exchange": rng.integers(1, 20, rows).astype(np.int32),
        "seq": np.arange(rows, dtype=np.int64),
        "ts_event": pa.array(ts // 1000, pa.timestamp("us", tz="UTC")),
    }
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    cols = {f.name: data.get(f.name, pa.nulls(rows, f.type)) for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def _median_ms(fn: Callable[[int], None], times: int) -> float:
    samples = []
    for i in range(times):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench_evolve_commit(root: Path, snapshots: int, changes: int) -> dict:
    """Median ms of an add-column evolve commit vs a bare property commit."""
    from iceberg_lake.schema.evolve import AddColumn, evolve_table
    from iceberg_lake.tables import registry

    lake = _lake(root)
    lake.create_table(registry().get(TRADES))
    table = lake.load_table(TRADES)
    batch = _trades(table, 100, seed=1)
    for _ in range(snapshots):
        table.append(batch)

    def prop_commit(i: int) -> None:
        with table.transaction() as tx:
            tx.set_properties({"bench.n": str(i)})

    def evolve(i: int) -> None:
        evolve_table(table, TRADES, [AddColumn(f"extra_{i}", "string")])

    base = _median_ms(prop_commit, changes)
    value = _median_ms(evolve, changes)
    return _row(
        "evolve_commit",
        f"add column on a table with {snapshots} snapshots (median of {changes})",
        value,
        "ms",
        "set_properties commit",
        base,
    )


def bench_migrate_up(root: Path) -> list[dict]:
    """`migrate up` with real changes (old lake) and as recorded no-ops (fresh lake)."""
    from iceberg_lake.schema.migrations import MigrationRunner
    from iceberg_lake.tables import TableRegistry, registry

    touched = ["bronze.stocks_trades", "silver.stocks_trades", "bronze.futures_trades",
               "silver.futures_trades"]  # fmt: skip
    old = TableRegistry(
        [
            dataclasses.replace(
                registry().get(t),
                columns=tuple(c for c in registry().get(t).columns if c.name != "conditions"),
                schema_version=1,
            )
            for t in touched
        ]
    )
    out = []
    for label, tables in (("old-shape lake (commits)", old), ("fresh lake (no-ops)", None)):
        lake = _lake(root / label.split()[0], tables)
        for d in lake.registry:
            if d.identifier in touched:
                lake.create_table(d)
        start = time.perf_counter()
        for t in touched:
            lake.load_table(t)
        base = (time.perf_counter() - start) * 1000
        from iceberg_lake.catalog import LakeCatalog

        runner = MigrationRunner(LakeCatalog(lake.settings))
        try:
            start = time.perf_counter()
            results = runner.up()
            value = (time.perf_counter() - start) * 1000
        finally:
            runner.close()
        out.append(
            _row(
                "migrate_up",
                f"{len(results)} shipped step(s), {label}",
                value,
                "ms",
                f"load the {len(touched)} tables",
                base,
            )
        )
    return out


def bench_read_across_versions(root: Path, rows: int) -> dict:
    """DuckDB full scan: files of two schema versions vs one."""
    from iceberg_lake.engine import duck
    from iceberg_lake.schema.evolve import AddColumn, evolve_table
    from iceberg_lake.tables import registry

    lake = _lake(root)
    definition = registry().get(TRADES)
    one = dataclasses.replace(definition, identifier="bronze.one_version")
    lake.create_table(definition)
    lake.create_table(one)
    half = rows // 2
    evolved = lake.load_table(TRADES)
    evolved.append(_trades(evolved, half, seed=2))
    evolve_table(evolved, TRADES, [AddColumn("venue", "string")])
    evolved = lake.load_table(TRADES)
    evolved.append(_trades(evolved, rows - half, seed=3))
    single = lake.load_table(one.identifier)
    single.append(_trades(single, half, seed=2))
    single.append(_trades(single, rows - half, seed=3))
    con = duck.connect()
    try:

        def scan(table: Any) -> float:
            sql = (
                "SELECT count(*), sum(size), count(conditions) FROM iceberg_scan("
                f"'{table.metadata_location}')"
            )
            con.execute(sql).fetchall()  # warm-up
            return _median_ms(lambda _i: con.execute(sql).fetchall(), 5)

        base = scan(lake.load_table(one.identifier))
        value = scan(lake.load_table(TRADES))
    finally:
        con.close()
    return _row(
        "read_across_versions",
        f"DuckDB scan of {rows} rows in files of 2 schema versions",
        value,
        "ms",
        "same rows, one schema version",
        base,
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark; return rows of benchmark, metric, value, unit, baseline(_value)."""
    snapshots, changes, rows = (20, 5, 200_000) if quick else (200, 10, 2_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-schema-") as tmp:
        root = Path(tmp)
        out = [bench_evolve_commit(root / "evolve", snapshots, changes)]
        out.extend(bench_migrate_up(root / "migrate"))
        out.append(bench_read_across_versions(root / "read", rows))
    return out


def main() -> None:
    """Command-line entry: print a rich table (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer snapshots and rows")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    print_rows(rows, title="Schema evolution benchmark", as_json=args.json)


if __name__ == "__main__":
    main()
