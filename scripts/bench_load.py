"""Benchmark: `lake load` from Parquet beside a plain pyarrow read + pyiceberg append, same run.

Writes a Parquet file of N stock trades (8 symbols over 6.5 hours, columns named like the table,
so the identity mapping applies) and measures, each in its own fresh lake and its own process
(wall time of the process, the time of the work without interpreter start-up and imports, the
CPU seconds of the whole process (steadier than wall time on a shared machine), peak RSS):

* baseline: `pyarrow.parquet.read_table` + the derived columns + ONE `Table.append` (pyiceberg
  splits partitions itself), no validation, no dead letters, no ledger;
* `lake load FILE --table bronze.stocks_trades` at the user defaults (commit every 500,000 rows,
  writers' validation, exactly-once ledger, progress off).

With `--dbn-mbp10 N` it also loads a DBN MBP-10 file of N records (`.dbn.zst`, databento-dbn's
encoder, 2 instruments) beside its own same-run baseline: a plain streaming decode of the same
file to Arrow (zstd stream, NumPy view of the records, prices scaled) and a pyarrow Parquet write
of it with the table's codec (zstd level 3), one file, no validation, sort, partitioning or ledger.
With `--csv N` it loads a Polygon trades CSV.gz of N rows (no baseline).
With `--sweep` it loads the Parquet file at several `--commit-rows` values (how the default was
chosen). With `--kill`, each DBN and CSV.gz file is also loaded into a fresh lake by a `lake load`
that is killed with SIGKILL once half of its rows are committed, then loaded again by a second
`lake load`: the table must then hold every row of the file once (not a timing: a check at the
file sizes the issue names, beside the test suite's smaller files). Each load runs once (the
machine is shared: see the load average printed).

Every load's table is then read back (a pyiceberg scan of `seq`, outside the load code): rows
stored and DISTINCT `seq` (each file row has its own) must both equal the file's rows, so a
figure is only printed for a load that stored each row once. The Parquet file is also split in
two halves loaded by one `lake load a b` with `--jobs 1` and with `--jobs 2` (each in a fresh
lake): the wall time of the command and the CPU seconds of all its processes show whether two
files use both cores (`--no-jobs` skips it).

Usage::

    python scripts/bench_load.py [--rows 1000000] [--dbn-mbp10 N] [--csv N] [--sweep] [--no-jobs]
        [--kill] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "META", "GOOGL", "TSLA", "SPY")
T0 = 1_765_895_400 * 10**9  # 2025-12-16 14:30 UTC
SPAN_NS = int(6.5 * 3600 * 10**9)

BASELINE = r"""
import sys, time, json
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
t0 = time.perf_counter()
lake = LakeCatalog(load_settings())
table = lake.load_table("bronze.stocks_trades")
from pyiceberg.io.pyarrow import schema_to_pyarrow
schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
data = pq.read_table(sys.argv[1])
n = data.num_rows
data = data.append_column("source", pa.array(["bench"] * n, pa.string()))
data = data.append_column("ts_recv_ns", data.column("ts_event_ns"))
data = data.append_column(
    "ts_event", pc.divide(data.column("ts_event_ns"), 1000).cast(pa.timestamp("us", tz="UTC"))
)
data = data.select([f.name for f in schema if f.name in data.column_names])
cols = [data.column(f.name) if f.name in data.column_names else pa.nulls(n, f.type) for f in schema]
data = pa.Table.from_arrays(cols, schema=pa.schema([f.with_nullable(True) for f in schema]))
table.append(data.cast(schema))
print(json.dumps({"results": [{"rows_stored": n, "seconds": time.perf_counter() - t0}]}))
"""


DBN_BASELINE = r"""
import sys, time, json
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, databento_dbn as d
from iceberg_lake.engine.dbn import hidden_fields, price_fields, record_dtype
t0 = time.perf_counter()
path, out = sys.argv[1], sys.argv[2]
dtype = record_dtype(d.MBP10Msg)
prices, hidden = price_fields(d.MBP10Msg), hidden_fields(d.MBP10Msg)
raw = pa.OSFile(path)
stream = pa.CompressedInputStream(raw, "zstd") if path.endswith(".zst") else raw
head = stream.read(8)
stream.read(int.from_bytes(head[4:8], "little"))
n, writer = 0, None
while block := stream.read(131_072 * dtype.itemsize):
    rec = np.frombuffer(block, dtype=dtype)
    cols = {}
    for name in dtype.names:
        if name in hidden:
            continue
        v = rec[name]
        if name in prices:
            cols[name] = pa.array(v / d.FIXED_PRICE_SCALE, mask=v == d.UNDEF_PRICE)
        elif v.dtype.kind == "S":
            cols[name] = pa.array(v.astype("U1"), pa.string())
        else:
            cols[name] = pa.array(v)
    table = pa.table(cols)
    writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd", compression_level=3)
    writer.write_table(table)
    n += len(rec)
writer.close()
print(json.dumps({"results": [{"rows_stored": n, "seconds": time.perf_counter() - t0}]}))
"""


def _trades(rows: int, seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, SPAN_NS, rows))
    return pa.table(
        {
            "ts_event_ns": pa.array(ts, pa.int64()),
            "symbol": pa.array(np.array(SYMBOLS)[rng.integers(0, len(SYMBOLS), rows)]),
            "price": pa.array(np.round(100 + rng.random(rows) * 400, 2)),
            "size": pa.array(rng.integers(1, 1000, rows).astype(np.int32)),
            "exchange": pa.array(rng.integers(1, 20, rows).astype(np.int16)),
            "seq": pa.array(np.arange(rows, dtype=np.int64)),
        }
    )


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env["LAKE_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _init(data_dir: Path) -> None:
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings

    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    for d in lake.registry.in_namespace("bronze"):
        lake.create_table(d)


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd`; wall seconds, peak RSS (MB) of that process, stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    # ru_maxrss of the children so far: each run is the only child alive, and runs only grow
    # the maximum, so measure each run in a fresh helper (see _measure).
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {err.decode()[-2000:]}")
    return {"seconds": seconds, "stdout": out.decode()}


def _measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` under a helper whose only child it is: the helper's RUSAGE_CHILDREN peak RSS is
    exactly the command's; `inner_s` is the time the command reports for the work itself."""
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "out, err = p.communicate()\n"
        "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "rss, cpu = ru.ru_maxrss / 1024, ru.ru_utime + ru.ru_stime\n"
        "print(json.dumps({'seconds': time.perf_counter() - t0, 'rss_mb': rss, 'cpu_s': cpu,"
        " 'status': p.returncode, 'err': err.decode()[-1500:], 'out': out.decode()}))\n"
    )
    res = _run([sys.executable, "-c", helper, *cmd], env)
    info = json.loads(res["stdout"])
    if info["status"] != 0:
        raise SystemExit(f"{cmd[:5]} failed: {info['err']}")
    results = json.loads(info["out"])["results"]
    info["inner_s"] = max(r["seconds"] for r in results)
    info["stored"] = sum(r["rows_stored"] for r in results)
    return info


def _distinct(data_dir: Path, table: str) -> dict[str, int]:
    """Rows and distinct `seq` values in `table` (read back with a pyiceberg scan)."""
    import pyarrow.compute as pc

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings

    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    seq = lake.load_table(table).scan(selected_fields=("seq",)).to_arrow().column("seq")
    return {"rows": len(seq), "distinct_seq": pc.count_distinct(seq).as_py()}


def _check_once(counts: dict[str, int], rows: int, what: str) -> None:
    """Stop the benchmark if a load did not store each row of its file exactly once."""
    if counts != {"rows": rows, "distinct_seq": rows}:
        raise SystemExit(f"{what}: expected {rows:,} rows stored once each, found {counts}")


def _lake_load(args: list[str], data_dir: Path) -> dict[str, Any]:
    _init(data_dir)
    cmd = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "load", *args]
    return _measure([*cmd, "-o", "json"], _env(data_dir))


def _killed_then_rerun(path: Path, table: str, rows: int, data_dir: Path) -> dict[str, Any]:
    """`lake load path` (a commit every 100,000 rows) killed with SIGKILL once half of the
    file's rows are committed, then `lake load path` again: rows committed at the kill, rows the
    re-run stored, and the table's rows and distinct `seq` after it."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings

    _init(data_dir)
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    cmd = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "load", str(path)]
    proc = subprocess.Popen(
        [*cmd, "--commit-rows", "100000"],
        env=_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def committed() -> int:
        snapshot = lake.load_table(table).current_snapshot()
        summary = snapshot.summary if snapshot is not None else None
        return int(summary.get("total-records") or 0) if summary is not None else 0

    deadline = time.monotonic() + 600
    while proc.poll() is None and committed() < rows // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        raise SystemExit(f"lake load {path.name} ended before half of it was committed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = committed()
    again = _measure_again([str(path)], data_dir)
    counts = _distinct(data_dir, table)
    _check_once(counts, rows, f"lake load {path.name} killed half-way, then again")
    return {"rows_at_kill": at_kill, "stored_by_rerun": again["stored"], **counts}


def measure(
    rows: int,
    dbn_mbp10: int = 0,
    csv: int = 0,
    sweep: bool = False,
    jobs: bool = True,
    kill: bool = False,
) -> dict[str, Any]:
    """Run the measurements; a JSON-friendly report."""
    opts = argparse.Namespace(rows=rows, dbn_mbp10=dbn_mbp10, csv=csv, sweep=sweep, jobs=jobs)
    report: dict[str, Any] = {"rows": opts.rows, "load_average": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        root = Path(tmp)
        path = root / "trades.parquet"
        pq.write_table(_trades(opts.rows), path, row_group_size=128_000, compression="zstd")
        report["file_mb"] = round(path.stat().st_size / 1e6, 1)

        _init(root / "base")
        base = _measure([sys.executable, "-c", BASELINE, str(path)], _env(root / "base"))
        load = _lake_load([str(path), "--table", "bronze.stocks_trades"], root / "load")
        for name, r in (("baseline", base), ("lake_load", load)):
            report[name] = {
                "process_s": round(r["seconds"], 2),
                "work_s": round(r["inner_s"], 2),
                "rows_per_s": round(opts.rows / r["inner_s"]),
                "cpu_s": round(r["cpu_s"], 2),
                "peak_rss_mb": round(r["rss_mb"]),
            }
        report["lake_load_vs_baseline"] = round(base["inner_s"] / load["inner_s"], 2)
        counts = _distinct(root / "load", "bronze.stocks_trades")
        _check_once(counts, opts.rows, "lake load parquet")
        report["lake_load"].update(counts)

        if opts.jobs:
            # Two halves of the same rows (seq stays unique across them), one command.
            data = pq.read_table(path)
            half = opts.rows // 2
            parts = [root / "half_a.parquet", root / "half_b.parquet"]
            for part, rows_of in zip(parts, (data.slice(0, half), data.slice(half)), strict=True):
                pq.write_table(rows_of, part, row_group_size=128_000, compression="zstd")
            del data
            report["jobs"] = {}
            for n in (1, 2):
                args = [*map(str, parts), "--table", "bronze.stocks_trades", "--jobs", str(n)]
                r = _lake_load(args, root / f"jobs{n}")
                counts = _distinct(root / f"jobs{n}", "bronze.stocks_trades")
                _check_once(counts, opts.rows, f"lake load --jobs {n}")
                report["jobs"][n] = {
                    "process_s": round(r["seconds"], 2),
                    "rows_per_s": round(opts.rows / r["seconds"]),
                    "cpu_s": round(r["cpu_s"], 2),
                    "peak_rss_mb": round(r["rss_mb"]),
                    **counts,
                }
            one, two = report["jobs"][1], report["jobs"][2]
            report["jobs_2_vs_1"] = round(one["process_s"] / two["process_s"], 2)

        if opts.sweep:
            report["commit_rows_sweep"] = {}
            for n in (100_000, 250_000, 500_000, 1_000_000):
                r = _lake_load(
                    [str(path), "--table", "bronze.stocks_trades", "--commit-rows", str(n)],
                    root / f"sweep{n}",
                )
                report["commit_rows_sweep"][n] = {
                    "rows_per_s": round(opts.rows / r["inner_s"]),
                    "peak_rss_mb": round(r["rss_mb"]),
                }

        sys.path.insert(0, str(REPO))
        if opts.dbn_mbp10:
            from tests.load_data import write_dbn

            dbn_path = write_dbn(
                root / "mbp10.dbn.zst", "mbp-10", opts.dbn_mbp10, {1: "ESH6", 2: "ESM6"}
            )
            base = _measure(
                [sys.executable, "-c", DBN_BASELINE, str(dbn_path), str(root / "dbn.parquet")],
                _env(root / "dbn_base"),
            )
            r = _lake_load([str(dbn_path)], root / "dbn")
            again = _measure_again([str(dbn_path)], root / "dbn")
            dbn_counts = _distinct(root / "dbn", "bronze.futures_mbp10")
            _check_once(dbn_counts, opts.dbn_mbp10, "lake load dbn mbp-10")
            report["dbn_mbp10"] = {
                "rows": opts.dbn_mbp10,
                "file_mb": round(dbn_path.stat().st_size / 1e6, 1),
                "stored": r["stored"],
                "stored_again": again["stored"],
                **dbn_counts,
                "seconds": round(r["inner_s"], 2),
                "rows_per_s": round(opts.dbn_mbp10 / r["inner_s"]),
                "cpu_s": round(r["cpu_s"], 2),
                "peak_rss_mb": round(r["rss_mb"]),
                "baseline_seconds": round(base["inner_s"], 2),
                "baseline_rows_per_s": round(opts.dbn_mbp10 / base["inner_s"]),
                "baseline_cpu_s": round(base["cpu_s"], 2),
                "baseline_peak_rss_mb": round(base["rss_mb"]),
                "vs_baseline": round(base["inner_s"] / r["inner_s"], 2),
            }
            if kill:
                report["dbn_mbp10"]["killed_then_rerun"] = _killed_then_rerun(
                    dbn_path, "bronze.futures_mbp10", opts.dbn_mbp10, root / "dbn_kill"
                )
        if opts.csv:
            from tests.load_data import polygon_trades, write_csv_gz

            csv_path = write_csv_gz(root / "trades.csv.gz", polygon_trades(opts.csv))
            r = _lake_load([str(csv_path)], root / "csv")
            again = _measure_again([str(csv_path)], root / "csv")
            csv_counts = _distinct(root / "csv", "bronze.stocks_trades")
            _check_once(csv_counts, opts.csv, "lake load polygon csv.gz")
            report["polygon_csv_gz"] = {
                "rows": opts.csv,
                "stored": r["stored"],
                "stored_again": again["stored"],
                **csv_counts,
                "seconds": round(r["inner_s"], 2),
                "rows_per_s": round(opts.csv / r["inner_s"]),
                "peak_rss_mb": round(r["rss_mb"]),
            }
            if kill:
                report["polygon_csv_gz"]["killed_then_rerun"] = _killed_then_rerun(
                    csv_path, "bronze.stocks_trades", opts.csv, root / "csv_kill"
                )

    return report


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Rows for `scripts/bench.py`: lake load rows/s and peak RSS beside the plain append."""
    rows = 200_000 if quick else 1_000_000
    r = measure(rows, jobs=False)
    base, load = r["baseline"], r["lake_load"]
    name = f"lake load parquet {rows:,} rows"
    baseline = "pyarrow read + one pyiceberg append"
    return [
        {
            "benchmark": name,
            "metric": "throughput",
            "value": load["rows_per_s"],
            "unit": "rows/s",
            "baseline": baseline,
            "baseline_value": base["rows_per_s"],
        },
        {
            "benchmark": name,
            "metric": "peak RSS",
            "value": load["peak_rss_mb"],
            "unit": "MB",
            "baseline": baseline,
            "baseline_value": base["peak_rss_mb"],
        },
    ]


def _measure_again(args: list[str], data_dir: Path) -> dict[str, Any]:
    """Load the same file into the same lake again (exactly once: stores nothing)."""
    cmd = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "load", *args]
    return _measure([*cmd, "-o", "json"], _env(data_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dbn-mbp10", type=int, default=0, help="also load an MBP-10 DBN file")
    parser.add_argument("--csv", type=int, default=0, help="also load a Polygon CSV.gz")
    parser.add_argument("--sweep", action="store_true", help="also try several --commit-rows")
    parser.add_argument(
        "--no-jobs", action="store_true", help="skip the two-file --jobs 1 / --jobs 2 run"
    )
    parser.add_argument(
        "--kill",
        action="store_true",
        help="also kill a load of the DBN / CSV.gz file half-way and load it again",
    )
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    report = measure(
        opts.rows, opts.dbn_mbp10, opts.csv, opts.sweep, jobs=not opts.no_jobs, kill=opts.kill
    )
    if opts.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"rows {opts.rows:,} ({report['file_mb']} MB Parquet), "
        f"load average {report['load_average']:.1f}"
    )
    for name in ("baseline", "lake_load"):
        r = report[name]
        print(
            f"  {name:<10} {r['work_s']:>7.2f} s ({r['process_s']:.2f} s with start-up)  "
            f"{r['rows_per_s']:>10,} rows/s  CPU {r['cpu_s']:.1f} s  "
            f"peak RSS {r['peak_rss_mb']:>5} MB"
        )
    print(f"  lake load / baseline throughput: {report['lake_load_vs_baseline']:.2f}")
    load = report["lake_load"]
    print(f"  stored {load['rows']:,} rows, {load['distinct_seq']:,} distinct (each row once)")
    for n, r in report.get("jobs", {}).items():
        print(
            f"  two files, --jobs {n}: {r['process_s']:>6.2f} s with start-up  "
            f"{r['rows_per_s']:>10,} rows/s  CPU {r['cpu_s']:.1f} s (all processes)  "
            f"peak RSS {r['peak_rss_mb']} MB (one process), "
            f"{r['distinct_seq']:,} distinct of {r['rows']:,}"
        )
    if "jobs_2_vs_1" in report:
        print(f"  --jobs 2 / --jobs 1 wall-time speed-up: {report['jobs_2_vs_1']:.2f}")
    if "dbn_mbp10" in report:
        r = report["dbn_mbp10"]
        print(
            f"  dbn_mbp10 {r['rows']:,} records ({r['file_mb']} MB .dbn.zst)\n"
            f"    baseline   {r['baseline_seconds']:>7.2f} s  "
            f"{r['baseline_rows_per_s']:>10,} rows/s  "
            f"CPU {r['baseline_cpu_s']:.1f} s  peak RSS {r['baseline_peak_rss_mb']:>5} MB "
            "(decode to Arrow + pyarrow Parquet write)\n"
            f"    lake_load  {r['seconds']:>7.2f} s  {r['rows_per_s']:>10,} rows/s  "
            f"CPU {r['cpu_s']:.1f} s  peak RSS {r['peak_rss_mb']:>5} MB, "
            f"stored {r['stored']:,}, loaded again: {r['stored_again']:,} stored\n"
            f"    lake load / baseline throughput: {r['vs_baseline']:.2f}"
        )
    if "polygon_csv_gz" in report:
        r = report["polygon_csv_gz"]
        print(
            f"  polygon_csv_gz {r['rows']:,} rows {r['seconds']:.2f} s  "
            f"{r['rows_per_s']:,} rows/s  peak RSS {r['peak_rss_mb']} MB, "
            f"stored {r['stored']:,}, loaded again: {r['stored_again']:,} stored"
        )
    for name in ("dbn_mbp10", "polygon_csv_gz"):
        k = report.get(name, {}).get("killed_then_rerun")
        if k:
            print(
                f"  {name} killed with {k['rows_at_kill']:,} rows committed, loaded again: "
                f"{k['stored_by_rerun']:,} stored; the table holds {k['rows']:,} rows, "
                f"{k['distinct_seq']:,} distinct (each row once)"
            )
    for n, r in report.get("commit_rows_sweep", {}).items():
        print(
            f"  --commit-rows {n:>9,}: {r['rows_per_s']:>10,} rows/s, "
            f"peak RSS {r['peak_rss_mb']} MB"
        )


if __name__ == "__main__":
    main()
