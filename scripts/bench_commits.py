"""Append latency as snapshots accumulate: with the lake's maintenance settings vs without.

Two tables in one embedded lake get the same stream of small appends (100 rows each, one
partition), timed commit by commit:

* **with** the service's settings: the writer's commit path (watermark property and append
  in one memoised transaction, `iceberg_lake.ingest.writer`), the lake's table properties
  (manifest merging on, old metadata files deleted after commit, bounded metadata log) and
  snapshot expiry every 25 commits keeping the newest 10 snapshots
  (`TableMaintenance.expire_snapshots`, files deleted too), as the writers expire by retention
  and `lake maintain expire-snapshots` runs in production;
* **without**: plain pyiceberg defaults (fast append, no merging, no expiry, metadata kept).

The figure is the median latency of the 5 appends ending at commit 1 and at the last commit.
pyiceberg re-copies the whole table metadata several times per append, so without expiry the
latency grows with the snapshot count; the baseline run stops earlier (its appends get slow), and
its last checkpoint is named in the metric. Usage::

    python scripts/bench_commits.py [--quick] [--json] [--commits N] [--baseline-commits M]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.ops.maintenance import TableMaintenance

ROWS_PER_COMMIT = 100
EXPIRE_EVERY = 25
RETAIN_LAST = 10
WINDOW = 5
HOUR_NS = 3_600_000_000_000
BASE_NS = 1_765_000_000_000_000_000 - 1_765_000_000_000_000_000 % HOUR_NS

#: pyiceberg's defaults: what a table made without the lake's properties gets.
PLAIN_PROPERTIES = {
    "commit.manifest-merge.enabled": "false",
    "write.metadata.delete-after-commit.enabled": "false",
    "write.metadata.previous-versions-max": "100",
}


def _batch(table: Table, i: int) -> pa.Table:
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    start = BASE_NS + i * ROWS_PER_COMMIT * 1_000_000
    ts = [start + k * 1_000_000 for k in range(ROWS_PER_COMMIT)]
    columns: dict[str, Any] = {
        "ts_event_ns": ts,
        "ts_recv_ns": [t + 5 for t in ts],
        "source": ["bench"] * ROWS_PER_COMMIT,
        "symbol": ["SPY"] * ROWS_PER_COMMIT,
        "price": [500.0 + k / 100 for k in range(ROWS_PER_COMMIT)],
        "size": [k % 300 + 1 for k in range(ROWS_PER_COMMIT)],
        "exchange": [k % 12 for k in range(ROWS_PER_COMMIT)],
        "seq": [i * ROWS_PER_COMMIT + k for k in range(ROWS_PER_COMMIT)],
        "ts_event": [datetime.fromtimestamp(t // 1000 / 1e6, tz=UTC) for t in ts],
    }
    nulls = [None] * ROWS_PER_COMMIT  # optional columns added by migrations
    arrays = {f.name: pa.array(columns.get(f.name, nulls), type=f.type) for f in schema}
    return pa.Table.from_pydict(arrays, schema=schema)


def _service_append(table: Table, data: pa.Table, i: int) -> None:
    """Append the way `lake serve` does: watermark property + append in one memoised transaction."""
    try:
        from iceberg_lake.ingest.writer import _MemoTransaction as Tx
    except ImportError:  # pragma: no cover - the writer module ships with the package
        from pyiceberg.table import Transaction as Tx
    with Tx(table) as tx:
        tx.set_properties({"lake.watermark.MARKET.bench": str(i)})
        tx.append(data, snapshot_properties={"lake.operation": "ingest"})


def _plain_append(table: Table, data: pa.Table, i: int) -> None:
    table.append(data)


def _timed_appends(
    table: Table,
    commits: int,
    append: Callable[[Table, pa.Table, int], None],
    after: Callable[[int], None] | None = None,
) -> list[float]:
    """Latency (ms) of each of `commits` appends; `after(i)` runs untimed after append i."""
    out = []
    for i in range(commits):
        data = _batch(table, i)
        t0 = time.perf_counter()
        append(table, data, i)
        out.append((time.perf_counter() - t0) * 1000)
        if after is not None:
            after(i + 1)
    return out


def _at(latencies: list[float], commit: int) -> float:
    """Median of the `WINDOW` appends ending at `commit` (1-based; commit 1 = first WINDOW)."""
    end = max(commit, WINDOW)
    return round(statistics.median(latencies[end - WINDOW : end]), 1)


def run(quick: bool = False, commits: int | None = None, baseline_commits: int | None = None):
    """Measure append latency at commit 1 and at the last commit, with and without maintenance.

    Args:
        quick: 300 commits each (about a minute) instead of 5,000 with settings / 1,000 without.
        commits: appends to the table with the service's settings.
        baseline_commits: appends to the plain table.

    Returns:
        Benchmark rows (`benchmark, metric, value, unit, baseline, baseline_value`).
    """
    n_with = commits or (300 if quick else 5000)
    n_without = baseline_commits or (300 if quick else 1000)
    with tempfile.TemporaryDirectory(prefix="bench-commits-") as tmp:
        lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(Path(tmp) / "data")}))
        lake.init()
        managed = lake.load_table("bronze.stocks_trades")
        plain = lake.load_table("silver.stocks_trades")
        with plain.transaction() as tx:
            tx.set_properties(PLAIN_PROPERTIES)
        maint = TableMaintenance(lake, "bronze.stocks_trades", protected_snapshots=set())

        def expire(i: int) -> None:
            if i % EXPIRE_EVERY == 0:
                maint.expire_snapshots(timedelta(0), retain_last=RETAIN_LAST)
                managed.refresh()

        t0 = time.perf_counter()
        with_lat = _timed_appends(managed, n_with, _service_append, expire)
        with_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        without_lat = _timed_appends(plain, n_without, _plain_append)
        without_wall = time.perf_counter() - t0
        plain.refresh()
        managed.refresh()
        snaps_without = len(plain.metadata.snapshots)
        snaps_with = len(managed.metadata.snapshots)

    name = "append latency (100 rows)"
    base = "pyiceberg defaults, no expiry"
    first_with, first_without = _at(with_lat, 1), _at(without_lat, 1)
    last_with, last_without = _at(with_lat, n_with), _at(without_lat, n_without)
    return [
        _row(name, "commit 1", first_with, "ms", base, first_without),
        _row(
            name,
            f"commit {n_with} (baseline: commit {n_without})",
            last_with,
            "ms",
            base,
            last_without,
        ),
        _row(
            name,
            f"growth commit {n_with} / commit 1 (baseline: {n_without} / 1)",
            round(last_with / first_with, 2),
            "x",
            base,
            round(last_without / first_without, 2),
        ),
        _row(name, "snapshots kept at the end", snaps_with, "snapshots", base, snaps_without),
        _row(
            name,
            f"wall time for the run ({n_with} vs {n_without} commits)",
            round(with_wall, 1),
            "s",
            base,
            round(without_wall, 1),
        ),
    ]


def _row(benchmark: str, metric: str, value: Any, unit: str, baseline: str, base_value: Any):
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": base_value,
    }


def main() -> None:
    """Command-line entry: print a rich table (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 commits per table")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--commits", type=int, default=None, help="appends with settings")
    parser.add_argument("--baseline-commits", type=int, default=None, help="plain appends")
    args = parser.parse_args()
    rows = run(quick=args.quick, commits=args.commits, baseline_commits=args.baseline_commits)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable(title="Commit latency vs snapshot count")
    for col in ("benchmark", "metric", "value", "unit", "baseline", "baseline_value"):
        table.add_column(col)
    for r in rows:
        table.add_row(*["" if r[c] is None else str(r[c]) for c in r])
    Console().print(table)


if __name__ == "__main__":
    main()
