"""What the safe `remove-orphans` costs: the run over every table vs the old single pass.

Builds an embedded lake (defaults: `write.metadata.previous-versions-max` 20, fast appends) with
`--commits` appends to `bronze.stocks_trades` and `--orphans` old orphan files, then times, best
of 3, dry runs over every table (what `lake maintain remove-orphans` does):

- `safe`: `ops.maintenance.remove_orphans` (listing, references from every retained metadata
  file of every table, a second refresh and re-check);
- `baseline`: the pre-fix algorithm in the same run (references from each table's current
  metadata only, computed before the listing, one pass).

Both must find the same orphans. Usage: `python scripts/bench_orphans.py [--commits N] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow


def _rows(table: Any, start: int, n: int) -> pa.Table:
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    base = 1_765_000_000_000_000_000
    rows = []
    for k in range(start, start + n):
        ts = base + k * 1_000_000
        rows.append(
            {
                "ts_event_ns": ts,
                "ts_recv_ns": ts + 5,
                "source": "bench",
                "symbol": "SPY",
                "price": 100.0,
                "size": 1,
                "exchange": 1,
                "seq": k,
                "ts_event": datetime.fromtimestamp(ts // 1000 / 1e6, tz=UTC),
            }
        )
    return pa.Table.from_pylist(rows, schema=schema)


def _baseline(catalog: Any, older_than: timedelta) -> int:
    """The pre-fix remove-orphans (dry run): current metadata only, references before listing."""
    from iceberg_lake.engine.iceberg import list_files, listing_io
    from iceberg_lake.ops.maintenance import _norm, _Reachability

    found = 0
    for ident in catalog.existing_tables():
        table = catalog.load_table(ident)
        md = table.metadata
        reach = _Reachability(table)
        referenced = reach.files_of(md.snapshots, live_only=False)
        referenced |= {_norm(e.metadata_file) for e in md.metadata_log}
        referenced.add(_norm(table.metadata_location))
        cutoff = datetime.now(UTC) - older_than
        for path, mtime, _ in list_files(listing_io(table), table.location()):
            if _norm(path) not in referenced and mtime is not None and mtime <= cutoff:
                found += 1
    return found


def _best(fn: Any, runs: int = 3) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--orphans", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.ops.maintenance import remove_orphans

    with tempfile.TemporaryDirectory() as tmp:
        catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(Path(tmp) / "data")}))
        catalog.init()
        table = catalog.load_table("bronze.stocks_trades")
        for i in range(args.commits):
            table.append(_rows(table, i * 100, 100))
        data_dir = Path(urlparse(table.location()).path) / "data"
        old = time.time() - 2 * 86_400
        for i in range(args.orphans):
            path = data_dir / f"00000-{i}-crashed.parquet"
            path.write_bytes(b"orphan")
            os.utime(path, (old, old))
        day = timedelta(days=1)
        tables = catalog.existing_tables()
        safe_s, safe = _best(lambda: remove_orphans(catalog, tables, day, dry_run=True))
        base_s, base = _best(lambda: _baseline(catalog, day))
        found = sum(len(r.orphans) for r in safe)
        if found != base or found != args.orphans:
            print(f"mismatch: safe {found}, baseline {base}, planted {args.orphans}")
            return 1
        result = {
            "tables": len(tables),
            "commits": args.commits,
            "orphans": found,
            "safe_s": round(safe_s, 3),
            "baseline_s": round(base_s, 3),
            "ratio": round(safe_s / base_s, 2),
        }
    if args.json:
        print(json.dumps(result))
    else:
        print("| tables | commits | orphans | safe remove-orphans | baseline (pre-fix) | ratio |")
        print("|---|---|---|---|---|---|")
        print(
            f"| {result['tables']} | {result['commits']} | {result['orphans']} | "
            f"{result['safe_s']} s | {result['baseline_s']} s | {result['ratio']}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
