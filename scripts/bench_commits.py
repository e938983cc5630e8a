"""Writer commit latency as snapshots accumulate, at the service's default retention.

One embedded lake, table `bronze.stocks_trades`, a stream of 100-row appends (one partition),
timed commit by commit:

* **lake**: what the writer thread of `lake serve` does per flush (`ConsumerWriter._commit_sync`
  and `_maybe_expire`): `engine.iceberg.watermarked_append` with the writer's watermark and
  position properties, its snapshot summary properties and the fencing `expected=` check
  (watermark property and fast append in one commit, with the commit-path fixes of
  `engine.iceberg`; no manifest fold inside the commit), then the in-line policy run
  (`ops.maintenance.expire_inline`: the shared `ExpiryPolicy`, hourly checkpoints, then the
  fold of the commits' small manifests as a snapshot of its own) every `min(60 s, retention /
  4)`, and the fold alone every `POLICY_EVERY_COMMITS` commits in between (`fold_inline`), with
  the DEFAULT settings (`LAKE_BRONZE_SNAPSHOT_RETENTION_SECONDS` = 6 h, `LAKE_SNAPSHOT_MAX_COUNT`
  = 10,000). The **writer step** (commit plus whatever policy run or fold follows it, the whole
  work of the writer thread for that flush) is timed as one; the commit alone, the policy runs
  and the folds are reported too, and the longest manifest list a commit rewrote. A run shorter
  than the 60 s interval would see no policy run at all, so `--policy-runs` more are forced at
  evenly spaced commits (the last one at the last commit, with every snapshot of the run).
* **writer fold (previous design), same run**: the same path with the fold inside the writer's
  commit every 128 commits (`engine.iceberg.WRITER_FOLD_COUNT`), policy run by time only and
  not folding: the fold commits' cost against the p50 (`--fold-commits`).
* **baseline, same run**: stock pyiceberg 0.12 (`engine.iceberg.install_commit_fixes(False)`):
  `Transaction` with the watermark property and `append` (manifest merge on, as the lake's table
  properties ask), no expiry. It is slower, so it runs fewer commits (`--baseline-commits`).

Reported: p50 of commits 1-20 ("at commit 10") and of the last 20 commits, p99 and max over the
run, the growth end / commit 10, the snapshots kept and the metadata file size at the end; for
the writer step p50/p99/max over the run.
Usage::

    python scripts/bench_commits.py [--commits 3600] [--baseline-commits 600] \
        [--fold-commits 1000] [--policy-runs 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table, Transaction

import iceberg_lake.engine.iceberg as engine
from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import install_commit_fixes, watermarked_append
from iceberg_lake.ops.maintenance import POLICY_EVERY_COMMITS, expire_inline, fold_inline

ROWS_PER_COMMIT = 100
WINDOW = 20
HOUR_NS = 3_600_000_000_000
BASE_NS = 1_765_000_000_000_000_000 - 1_765_000_000_000_000_000 % HOUR_NS
TABLE = "bronze.stocks_trades"
WM = f"{properties.WATERMARK_PREFIX}MARKET.bench"
POS = f"{properties.POSITION_PREFIX}MARKET.bench"


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


def _lake_append(table: Table, data: pa.Table, i: int) -> None:
    """The writer's commit (`ConsumerWriter._commit_sync`, one table, the flush's last commit):
    watermark and position, the snapshot summary, and the fencing compare-and-swap."""
    seq = (i + 1) * ROWS_PER_COMMIT
    summary = {
        properties.LAKE_OPERATION: "ingest",
        properties.STREAM: "MARKET",
        properties.CONSUMER: "bench",
        properties.FIRST_STREAM_SEQ: str(seq - ROWS_PER_COMMIT + 1),
        properties.LAST_STREAM_SEQ: str(seq),
        properties.EVENT_COUNT: str(data.num_rows),
    }
    seen = table.properties.get(WM)  # what the writer last saw (its `seen`)
    with watermarked_append(
        table,
        watermark={WM: str(seq), POS: str(seq)},
        snapshot_properties=summary,
        expected={WM: seen},
    ) as app:
        app.append(data)


def _stock_append(table: Table, data: pa.Table, i: int) -> None:
    with Transaction(table) as tx:
        tx.set_properties({WM: str(i)})
        tx.append(data)


def _timed(
    table: Table,
    commits: int,
    append: Callable[[Table, pa.Table, int], None],
    between: Callable[[int], None] | None = None,
    manifests: list[int] | None = None,
    steps: list[float] | None = None,
) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process, all threads) milliseconds of each commit.

    `between(i)` runs after commit `i` (the writer's `_maybe_expire`); with `steps`, the wall
    milliseconds of commit plus `between` (the writer step) are appended to it. With
    `manifests`, the current snapshot's manifest count after each commit is appended to it
    (read outside the timed step).
    """
    out, cpu = [], []
    for i in range(commits):
        data = _batch(table, i)
        t0, c0 = time.perf_counter(), time.process_time()
        append(table, data, i)
        t1 = time.perf_counter()
        out.append((t1 - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        if manifests is not None:
            snap = table.current_snapshot()
            manifests.append(len(snap.manifests(table.io)) if snap else 0)
        t2 = time.perf_counter()
        if between is not None:
            between(i)
        if steps is not None:
            steps.append(out[-1] + (time.perf_counter() - t2) * 1000)
    return out, cpu


def _policy_runner(
    lake: LakeCatalog,
    table: Table,
    interval: float,
    every: int | None,
    out: list[float],
    folds: list[float] | None = None,
    force_at: frozenset[int] = frozenset(),
) -> Callable[[int], None]:
    """The writers' `_maybe_expire`: the policy run every `interval` s (the first one after
    the first commit, as a writer that just started), and the fold alone every `every` commits
    in between; also a policy run after each commit index in `force_at`."""
    last, count = [float("-inf")], [0]

    def run(i: int) -> None:
        count[0] += 1
        due = time.monotonic() - last[0] >= interval or i in force_at
        if not due and (every is None or count[0] < every):
            return
        count[0] = 0
        t = time.perf_counter()
        if due:
            last[0] = time.monotonic()
            expire_inline(lake, table, TABLE)
            out.append((time.perf_counter() - t) * 1000)
        else:
            fold_inline(table)
            if folds is not None:
                folds.append((time.perf_counter() - t) * 1000)

    return run


def _writer_fold_run(tmp: str, commits: int, interval: float) -> dict[str, Any]:
    """The previous design: the fold of 128 manifests inside a writer commit."""
    saved = engine.WRITER_FOLD_COUNT, engine.FOLD_MIN_MANIFESTS
    engine.WRITER_FOLD_COUNT, engine.FOLD_MIN_MANIFESTS = 128, 10**9
    try:
        lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(Path(tmp) / "fold")}))
        lake.init()
        table = lake.load_table(TABLE)
        policy: list[float] = []
        counts: list[int] = []
        lat, _cpu = _timed(
            table, commits, _lake_append, _policy_runner(lake, table, interval, None, policy),
            counts,
        )  # fmt: skip
    finally:
        engine.WRITER_FOLD_COUNT, engine.FOLD_MIN_MANIFESTS = saved
    folds = [lat[i] for i in range(1, commits) if counts[i] < counts[i - 1]]
    return {"lat": lat, "folds": folds, "max_manifests": max(counts, default=0)}


def _stats(lat: list[float]) -> dict[str, float]:
    ordered = sorted(lat)
    return {
        "p50_commit_10": round(statistics.median(lat[:WINDOW]), 1),
        "p50_end": round(statistics.median(lat[-WINDOW:]), 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max": round(ordered[-1], 1),
    }


def _metadata_bytes(table: Table) -> int:
    path = table.metadata_location.removeprefix("file://")
    return Path(path).stat().st_size


def run(
    commits: int = 3600, baseline_commits: int = 600, fold_commits: int = 1000, policy_runs: int = 4
) -> list[dict[str, Any]]:
    """Time `commits` lake commits (with `policy_runs` forced policy runs besides the timed
    ones), `fold_commits` commits of the previous design (fold inside the writer's commit) and
    `baseline_commits` stock-pyiceberg commits.

    Returns:
        Benchmark rows (`benchmark, metric, value, unit, baseline, baseline_value`).
    """
    with tempfile.TemporaryDirectory(prefix="bench-commits-") as tmp:
        settings = load_settings({"LAKE_DATA_DIR": str(Path(tmp) / "base")})
        retention = settings.bronze_snapshot_retention_seconds
        # Baseline first: stock pyiceberg, no fix (restored right after).
        install_commit_fixes(False)
        try:
            base_lake = LakeCatalog(settings)
            base_lake.init()
            base_table = base_lake.load_table(TABLE)
            t0 = time.perf_counter()
            base_lat, base_cpu = _timed(base_table, baseline_commits, _stock_append)
            base_wall = time.perf_counter() - t0
        finally:
            install_commit_fixes(True)
        base_table = base_lake.load_table(TABLE)

        lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(Path(tmp) / "lake")}))
        lake.init()
        table = lake.load_table(TABLE)
        interval = max(1.0, min(60.0, retention / 4))  # as ConsumerWriter._maybe_expire
        expiry_ms: list[float] = []
        fold_ms: list[float] = []
        counts: list[int] = []
        steps: list[float] = []
        forced = frozenset(commits * k // policy_runs - 1 for k in range(1, policy_runs + 1))
        policy = _policy_runner(
            lake, table, interval, POLICY_EVERY_COMMITS, expiry_ms, fold_ms, forced
        )
        t0 = time.perf_counter()
        lake_lat, lake_cpu = _timed(table, commits, _lake_append, policy, counts, steps)
        wall = time.perf_counter() - t0
        fold = _writer_fold_run(tmp, fold_commits, interval) if fold_commits else None
        t0 = time.perf_counter()
        table = lake.load_table(TABLE)  # what every reader pays: parse the metadata file
        load_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        base_table = base_lake.load_table(TABLE)
        base_load_ms = (time.perf_counter() - t0) * 1000
        rows_ok = table.scan().to_arrow().num_rows == commits * ROWS_PER_COMMIT
        kept, base_kept = len(table.metadata.snapshots), len(base_table.metadata.snapshots)
        meta, base_meta = _metadata_bytes(table), _metadata_bytes(base_table)
        manifests = len(table.current_snapshot().manifests(table.io))
        base_manifests = len(base_table.current_snapshot().manifests(base_table.io))

    s, b = _stats(lake_lat), _stats(base_lat)
    st = _stats(steps)
    sc, bc = _stats(lake_cpu), _stats(base_cpu)
    name = "writer commit (100 rows)"
    base = f"stock pyiceberg 0.12, same run, {baseline_commits} commits"
    sname = "writer step: commit + in-line policy run / fold (the writer thread's work)"
    bstep = f"{base} (commit only: no policy run)"
    rows = [
        _row(sname, "p50 over the run", round(statistics.median(steps), 1), "ms", bstep,
             round(statistics.median(base_lat), 1)),
        _row(sname, "p99 over the run", st["p99"], "ms", bstep, b["p99"]),
        _row(sname, "max over the run", st["max"], "ms", bstep, b["max"]),
        _row(sname, "p50 of the last 20", st["p50_end"], "ms", bstep, b["p50_end"]),
        _row(name, "p50 at commit 10 (commits 1-20)", s["p50_commit_10"], "ms", base,
             b["p50_commit_10"]),
        _row(name, f"p50 at the end (last 20 of {commits}; baseline of {baseline_commits})",
             s["p50_end"], "ms", base, b["p50_end"]),
        _row(name, "growth: p50 end / p50 commit 10",
             round(s["p50_end"] / s["p50_commit_10"], 2), "x", base,
             round(b["p50_end"] / b["p50_commit_10"], 2)),
        _row(name, "p99 over the run", s["p99"], "ms", base, b["p99"]),
        _row(name, "p99 / p50 at the end", round(s["p99"] / s["p50_end"], 2), "x", base,
             round(b["p99"] / b["p50_end"], 2)),
        _row(name, "max over the run", s["max"], "ms", base, b["max"]),
        _row(name, "CPU p50 at commit 10", sc["p50_commit_10"], "ms", base, bc["p50_commit_10"]),
        _row(name, "CPU p50 at the end", sc["p50_end"], "ms", base, bc["p50_end"]),
        _row(name, "CPU p99 over the run", sc["p99"], "ms", base, bc["p99"]),
        _row(name, "snapshots kept at the end", kept, "snapshots", base, base_kept),
        _row(name, "metadata file at the end", round(meta / 1e6, 2), "MB", base,
             round(base_meta / 1e6, 2)),
        _row(name, "load_table (metadata parse) at the end", round(load_ms, 1), "ms", base,
             round(base_load_ms, 1)),
        _row(name, "manifests in the current snapshot", manifests, "manifests", base,
             base_manifests),
        _row(name, "manifests in the list, max (before a policy run folds them)",
             max(counts, default=0), "manifests", base, None),
        _row(name, f"policy run (every {interval:.0f} s: refs, expiry, fold; {len(forced)} "
             "forced), runs / p50 / max",
             f"{len(expiry_ms)} / {round(statistics.median(expiry_ms), 1) if expiry_ms else 0}"
             f" / {round(max(expiry_ms, default=0), 1)}", "ms", base, None),
        _row(name, "policy run at the last commit (every snapshot of the run)",
             round(expiry_ms[-1], 1) if expiry_ms else 0, "ms", base, None),
        _row(name, f"fold between policy runs (every {POLICY_EVERY_COMMITS} commits), p50",
             round(statistics.median(fold_ms), 1) if fold_ms else 0, "ms", base, None),
        _row(name, "fold between policy runs, max", round(max(fold_ms, default=0), 1), "ms",
             base, None),
        _row(name, "wall time", round(wall, 1), "s", base, round(base_wall, 1)),
        _row(name, "all rows readable", rows_ok, "", base, None),
    ]  # fmt: skip
    if fold is not None:
        f = _stats(fold["lat"])
        p50 = statistics.median(fold["lat"])
        fname = f"previous design: fold inside the writer commit ({fold_commits} commits)"
        folds = fold["folds"]
        rows += [
            _row(fname, "p50 over the run", round(p50, 1), "ms", base, None),
            _row(fname, "p99 over the run", f["p99"], "ms", base, None),
            _row(fname, "max over the run", f["max"], "ms", base, None),
            _row(fname, "fold commits", len(folds), "commits", base, None),
            _row(fname, "fold commit, p50", round(statistics.median(folds), 1) if folds else 0,
                 "ms", base, None),
            _row(fname, "fold commit, max / p50 commit", round(max(folds, default=0) / p50, 1),
                 "x", base, None),
            _row(fname, "manifests in the list, max", fold["max_manifests"], "manifests", base,
                 None),
        ]  # fmt: skip
    return rows


def _row(
    benchmark: str, metric: str, value: Any, unit: str, baseline: str, base_value: Any
) -> dict[str, Any]:
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commits", type=int, default=3600, help="lake commits (default 3600)")
    parser.add_argument(
        "--baseline-commits", type=int, default=600, help="stock pyiceberg commits (default 600)"
    )
    parser.add_argument(
        "--fold-commits",
        type=int,
        default=1000,
        help="previous-design commits, fold inside the writer commit (default 1000; 0: skip)",
    )
    parser.add_argument(
        "--policy-runs",
        type=int,
        default=4,
        help="policy runs forced at evenly spaced commits, the last at the last (default 4)",
    )
    parser.add_argument("--quick", action="store_true", help="300 / 100 / 300 commits")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    if args.quick:
        args.commits, args.baseline_commits, args.fold_commits = 300, 100, 300
    rows = run(args.commits, args.baseline_commits, args.fold_commits, max(1, args.policy_runs))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    out = RichTable(title="Writer commit latency vs snapshots kept")
    for col in ("benchmark", "metric", "value", "unit", "baseline_value"):
        out.add_column(col)
    for r in rows:
        out.add_row(
            *[
                "" if r[c] is None else str(r[c])
                for c in ("benchmark", "metric", "value", "unit", "baseline_value")
            ]
        )
    Console().print(out)
    print(f"baseline: {rows[-1]['baseline']}")


if __name__ == "__main__":
    main()
