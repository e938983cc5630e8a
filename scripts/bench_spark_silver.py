"""Benchmark: Silver compaction on Spark (`lake compact --engine spark`) beside the DuckDB engine.

Writes N futures trades (the data of `bench_silver.py`: 4 symbols × 6 hours of one day, ~2%
redeliveries, 8 appends) into a fresh local lake, then compacts that day in the same run

* baseline: the DuckDB engine (`SilverCompactor.compact_date`), the default;
* the Spark engine (`SparkSilverCompactor.compact_date`) in a local session at user defaults
  (`spark_session(settings)`: `local[*]`, 1 GB driver), started before timing; its start-up
  is reported separately.

Silver is dropped and re-created before every run, so both engines compact every partition.
Best of 2 runs (1 with --quick); the machine is shared. Row counts must match.

    python scripts/bench_spark_silver.py [--quick] [--json] [--rows N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import print_rows  # noqa: E402
from bench_silver import _row, bronze_lake  # noqa: E402

DAY = "2025-12-16"


def run(quick: bool = False, rows: int | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; return rows of benchmark, metric, value, unit, baseline(_value)."""
    from iceberg_lake.engine.spark import spark_session, stop_spark
    from iceberg_lake.silver.compactor import SilverCompactor
    from iceberg_lake.silver.spark import SparkSilverCompactor

    n = rows or (200_000 if quick else 2_000_000)
    with tempfile.TemporaryDirectory(prefix="bench_spark_silver_") as tmp:
        settings, lake, bronze = bronze_lake(Path(tmp) / "data", n)

        def fresh_silver() -> None:
            lake.catalog.drop_table("silver.futures_trades")
            lake.create_table(lake.definition("silver.futures_trades"))

        t = time.perf_counter()
        spark = spark_session(settings)
        start_s = time.perf_counter() - t
        duck_s = spark_s = float("inf")
        try:
            for _ in range(1 if quick else 2):
                fresh_silver()
                t = time.perf_counter()
                with SilverCompactor(settings) as compactor:
                    by_duck = compactor.compact_date(DAY, "futures.trades")
                duck_s = min(duck_s, time.perf_counter() - t)

                fresh_silver()
                spark.sql("REFRESH TABLE lake.silver.futures_trades")
                t = time.perf_counter()
                by_spark = SparkSilverCompactor(spark, settings).compact_date(DAY, "futures.trades")
                spark_s = min(spark_s, time.perf_counter() - t)
        finally:
            stop_spark(spark)
        if by_spark["rows_written"] != by_duck["rows_written"]:
            raise SystemExit(f"row counts differ: {by_spark} vs {by_duck}")

    base = "duckdb engine (same run)"
    return [
        _row("silver spark", "rows_per_s", n / spark_s, "rows/s", base, n / duck_s),
        _row("silver spark", "seconds", spark_s, "s", base, duck_s),
        _row("silver spark", "jvm_start", start_s, "s", "", None),
        _row("silver spark", "rows_in", n, "rows", "", None),
        _row("silver spark", "rows_out", by_spark["rows_written"], "rows", "", None),
        _row("silver spark", "partitions", by_spark["partitions"], "count", "", None),
    ]


def main() -> None:
    """Command-line entry: print a rich table (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k rows instead of 2M")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument("--rows", type=int, default=None, help="number of Bronze rows")
    args = parser.parse_args()
    rows = run(quick=args.quick, rows=args.rows)
    print_rows(rows, title="Silver on Spark vs DuckDB", as_json=args.json)


if __name__ == "__main__":
    main()
