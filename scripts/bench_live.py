"""Benchmark: what the live tail costs a query, and what longer commit intervals save.

Two measurements in one run, against a real nats-server and a local lake (SQLite catalog):

1. Live query latency vs tail size. Stock trades (10 symbols, ~200 bytes each) are published
   and NOT committed, so a live query (`Lake.query(..., live=True)`) reads them all from the
   stream: cold (a new `Lake`: ordered consumer + decode of the whole tail) and warm (the same
   `Lake` after 100 more events: only the new ones are read). Baseline in the same run: the same
   SQL on the same rows committed to the table (`Lake.query`, no tail).
2. Files per commit at the writer defaults. `lake serve`'s writer runs in-process for a few
   seconds at a steady publish rate with a long interval and a large batch, and the data files
   per commit are counted (one per touched symbol-hour partition). Files per hour at interval
   I is then `files per commit × 3600 / I` (a micro-batch touches the same partitions whatever
   its length, until the hour turns).
4. Commit intervals measured (`--intervals 5,30,60`): `lake serve` (a subprocess, the real
   writer) commits every I seconds while events are published at 1,000/s (10 symbols, event
   time = publish time). Counted: commits, seconds between them, data files per commit, hence
   files per hour. Every 3 s a *cold* live query (a new `Lake`: what a dashboard or a script
   started now pays) asks for the newest event: its latency, and its staleness (wall clock at
   the result − newest event in it). Baseline in the same run: a plain query's staleness
   (newest committed event) at the same moments; and the 5 s interval (the old default).
3. What a live replay's removal check costs (`lake replay --live`, no --follow): a tail of N
   trades interleaved with N quotes on the same stream, so every message the follower receives
   skips a sequence (the worst case for `nats_tail.check_followers`). Baseline in the same run:
   the same replay with the check switched off.

Usage::

    python scripts/bench_live.py [--quick] [--json]
    nice python scripts/bench_live.py --intervals 5,30,60 --json   # part 4 only (~5 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

SYMBOLS = ("SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "META", "TSLA", "GOOG")
TABLE = "bronze.stocks_trades"
SUBJECT = "market.stocks.trades"
SQL = f"SELECT symbol, count(*), max(ts_event_ns) FROM {TABLE} GROUP BY 1"


def _event(i: int, now_ns: int) -> bytes:
    return json.dumps(
        {
            "ts_event_ns": now_ns + i * 1000,
            "ts_recv_ns": now_ns + i * 1000 + 500,
            "source": "bench",
            "symbol": SYMBOLS[i % len(SYMBOLS)],
            "price": 100.0 + i % 50,
            "size": 1 + i % 300,
            "exchange": 4,
            "seq": i,
        }
    ).encode()


async def _publish(settings: Any, start: int, count: int, rate: float = 0.0) -> None:
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="bench-live")
    js = nc.jetstream()
    await bus.ensure_streams(js, settings)
    first = (await js.stream_info("MARKET")).state.last_seq
    now = time.time_ns()
    t0 = time.monotonic()
    for i in range(start, start + count):
        await nc.publish(SUBJECT, _event(i, now))
        if i % 1000 == 999:
            await nc.flush()
            if rate:
                ahead = (i - start + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    await nc.flush()
    # Core publishes are asynchronous: wait until the stream holds them.
    deadline = time.monotonic() + 60
    while (await js.stream_info("MARKET")).state.last_seq < first + count:
        if time.monotonic() > deadline:
            raise RuntimeError("published messages did not all reach the stream")
        await asyncio.sleep(0.02)
    await nc.close()


def _timed(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _own_catalog(settings: Any, **overrides: Any) -> Any:
    """Settings of a fresh lake in the same catalog database: a catalog name of its own and a
    warehouse of its own (the lake refuses two catalogs' tables in one location)."""
    name = f"c{uuid.uuid4().hex[:8]}"
    warehouse = (settings.data_dir / name / "warehouse").as_uri()
    return settings.with_overrides(catalog_name=name, warehouse=warehouse, **overrides)


def bench_tail(settings: Any, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Live query latency per tail size, beside the same rows read committed."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.timetravel.query import Lake

    rows: list[dict[str, Any]] = []
    published = 0
    for size in sizes:
        # A fresh catalog per size: its table has no watermark, so the tail is the whole
        # subject; stream sequences keep counting, so purge is not needed.
        s = _own_catalog(settings)
        LakeCatalog(s).init()
        asyncio.run(_publish(s, published, size - published if size > published else 0))
        published = max(published, size)
        cold = []
        for _ in range(repeat):
            lake = Lake(s)
            t0 = time.perf_counter()
            lake.query(SQL, live=True)
            cold.append(time.perf_counter() - t0)
            assert lake.last_live[TABLE].tail_rows == published
            lake.close()
        lake = Lake(s)
        lake.query(SQL, live=True)

        warm_times: list[float] = []
        for _ in range(repeat):
            asyncio.run(_publish(s, published, 100))
            published += 100
            t0 = time.perf_counter()
            lake.query(SQL, live=True)
            warm_times.append(time.perf_counter() - t0)
        lake.close()
        rows.append(
            {
                "figure": "live query",
                "tail_events": size,
                "cold_s": round(statistics.median(cold), 4),
                "warm_s": round(statistics.median(warm_times), 4),
            }
        )
    # Baseline: the same number of rows committed, plain query (no tail).
    import pyarrow as pa

    from iceberg_lake.catalog import LakeCatalog as _LC

    s = _own_catalog(settings)
    cat = _LC(s)
    cat.init()
    table = cat.load_table(TABLE)
    n = max(sizes)
    now = time.time_ns()
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    data = {
        "ts_event_ns": [now + i * 1000 for i in range(n)],
        "ts_recv_ns": [now + i * 1000 + 500 for i in range(n)],
        "source": ["bench"] * n,
        "symbol": [SYMBOLS[i % len(SYMBOLS)] for i in range(n)],
        "price": [100.0 + i % 50 for i in range(n)],
        "size": [1 + i % 300 for i in range(n)],
        "exchange": [4] * n,
        "seq": list(range(n)),
    }
    if "ts_event" in schema.names:
        data["ts_event"] = pa.array([v // 1000 for v in data["ts_event_ns"]]).cast(
            pa.timestamp("us", tz="UTC")
        )
    arrays = [
        pa.array(data[f.name]).cast(f.type) if f.name in data else pa.nulls(n, f.type)
        for f in schema
    ]
    table.append(pa.Table.from_arrays(arrays, schema=schema))
    lake = Lake(s)
    base = _timed(lambda: lake.query(SQL), repeat)
    live_empty = _timed(lambda: lake.query(SQL, live=True), repeat)
    lake.close()
    rows.append(
        {
            "figure": "baseline: committed rows, no tail",
            "tail_events": 0,
            "rows": n,
            "plain_query_s": round(base, 4),
            "live_query_empty_tail_s": round(live_empty, 4),
        }
    )
    return rows


def bench_files(settings: Any, seconds: float, rate: float) -> dict[str, Any]:
    """Data files per commit of the real writer at a steady rate."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.ingest.service import LakeService

    s = _own_catalog(
        settings,
        bronze_batch_seconds=2.0,
        bronze_batch_size=1_000_000,
        max_buffered_events=1_000_000,
    )
    LakeCatalog(s).init()

    async def run() -> None:
        service = LakeService(s, [TABLE])
        task = asyncio.create_task(service.run())
        await asyncio.sleep(1.0)
        await _publish(s, 10**7, int(seconds * rate), rate)
        await service.stop()
        await task

    asyncio.run(run())
    table = LakeCatalog(s).load_table(TABLE)
    commits = [
        sn
        for sn in table.metadata.snapshots
        if (sn.summary or {}).get("lake.operation") == "ingest"
    ]
    added = [int((sn.summary or {}).get("added-data-files", 0)) for sn in commits]
    per_commit = statistics.mean(added) if added else 0.0
    return {
        "figure": "writer files per commit",
        "rate_events_s": rate,
        "commits": len(commits),
        "files_per_commit": round(per_commit, 2),
        "files_per_hour": {
            f"{i}s": round(per_commit * 3600 / i) for i in (5, 15, 30, 60, 120, 300)
        },
    }


def bench_replay_gaps(settings: Any, n: int, repeat: int) -> list[dict[str, Any]]:
    """A bounded live replay of `n` trades interleaved with `n` quotes, with and without the
    removal check (median of `repeat`, alternating)."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.engine import nats as bus
    from iceberg_lake.timetravel import live
    from iceberg_lake.timetravel.replay import ReplayEngine

    LakeCatalog(settings).init()
    now = time.time_ns()

    async def publish() -> None:
        nc = await bus.connect(settings, name="bench-live")
        js = nc.jetstream()
        await bus.ensure_streams(js, settings)
        quote = json.dumps({"symbol": "SPY", "bid": 1.0, "ask": 1.1}).encode()
        for start in range(0, n, 500):
            sends = []
            for i in range(start, min(n, start + 500)):
                sends.append(js.publish(SUBJECT, _event(i, now)))
                sends.append(js.publish("market.stocks.quotes", quote))
            await asyncio.gather(*sends)
        await nc.close()

    asyncio.run(publish())
    check = live.LiveTail._check_gaps
    times: dict[str, list[float]] = {"check": [], "no_check": []}
    gaps: Any = None
    try:
        for _ in range(repeat):
            for mode in ("check", "no_check"):
                live.LiveTail._check_gaps = check if mode == "check" else lambda *a, **k: None
                t0 = time.perf_counter()
                engine = ReplayEngine(
                    settings, [TABLE], now - 10**9, now + 10**12, pin=False, live=True
                )
                count = sum(1 for _ in engine.all_events())
                times[mode].append(time.perf_counter() - t0)
                if count != n:
                    raise RuntimeError(f"replayed {count} events of {n}")
                if mode == "check":
                    gaps = engine.manifest()["live"]["tables"][TABLE]["gaps"]
    finally:
        live.LiveTail._check_gaps = check
    return [
        {
            "part": "replay_gaps",
            "trades": n,
            "quotes": n,
            "mode": mode,
            "seconds": round(statistics.median(t), 3),
            "events_per_s": round(n / statistics.median(t)),
            "gaps": gaps if mode == "check" else None,
        }
        for mode, t in times.items()
    ]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def bench_interval(settings: Any, interval: float, seconds: float, rate: float) -> dict[str, Any]:
    """Files per hour and cold live-query freshness with `lake serve` committing every
    `interval` seconds while `rate` events/s are published for `seconds`."""
    import os
    import subprocess
    import sys
    import threading

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.engine import nats as bus
    from iceberg_lake.timetravel.query import Lake

    s = _own_catalog(settings)
    LakeCatalog(s).init()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(
        LAKE_DATA_DIR=str(s.data_dir),
        LAKE_NATS_URL=s.nats_url,
        LAKE_CATALOG_NAME=s.catalog_name,
        LAKE_BRONZE_BATCH_SECONDS=str(interval),
        # The time bound, not the size bound, ends each batch (60 s at 1,000/s is 60,000).
        LAKE_BRONZE_BATCH_SIZE="150000",
        LAKE_MAX_BUFFERED_EVENTS="300000",
    )
    lake_bin = str(Path(sys.executable).parent / "lake")
    serve_log = Path(s.data_dir) / "serve.log"
    serve = subprocess.Popen(
        [lake_bin, "serve", "--tables", TABLE],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=serve_log.open("wb"),
        start_new_session=True,
    )
    stop = threading.Event()

    def publish() -> None:
        async def go() -> None:
            nc = await bus.connect(s, name="bench-interval")
            await bus.ensure_streams(nc.jetstream(), s)
            t0, i = time.monotonic(), 0
            while not stop.is_set():
                for _ in range(100):
                    body = json.loads(_event(i, 0))
                    body["ts_event_ns"] = body["ts_recv_ns"] = time.time_ns()
                    await nc.publish(SUBJECT, json.dumps(body).encode())
                    i += 1
                await nc.flush()
                ahead = i / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await nc.close()

        asyncio.run(go())

    sql = f"SELECT count(*) AS n, max(ts_event_ns) AS m FROM {TABLE}"
    cold, live_stale, plain_stale, tails = [], [], [], []
    try:
        time.sleep(3.0)  # the writer starts (consumer created) before the first event
        publisher = threading.Thread(target=publish)
        started = time.time()
        publisher.start()
        plain = Lake(s)
        while time.time() - started < seconds:
            time.sleep(3.0)
            lake = Lake(s)
            t0 = time.perf_counter()
            got = lake.query(sql, live=True).to_pylist()[0]
            cold.append(time.perf_counter() - t0)
            live_stale.append(time.time() - got["m"] / 1e9)
            tails.append(lake.last_live[TABLE].tail_rows)
            lake.close()
            newest = plain.query(sql).to_pylist()[0]["m"]
            plain_stale.append(time.time() - (newest / 1e9 if newest else started))
        plain.close()
        stop.set()
        publisher.join()
        ended = time.time()
        table = LakeCatalog(s).load_table(TABLE)
    finally:
        stop.set()
        serve.terminate()
        serve.wait(timeout=60)
    commits = [
        sn
        for sn in table.metadata.snapshots
        if (sn.summary or {}).get("lake.operation") == "ingest"
        and started * 1000 <= sn.timestamp_ms <= ended * 1000
    ]
    if serve.returncode not in (0, -signal.SIGTERM) or not commits:
        # A writer that died or never committed would read as "0 files per hour".
        tail = serve_log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(
            f"bench_live: lake serve (interval {interval:g} s) exited {serve.returncode} after "
            f"{len(commits)} commits; its log ends: {' | '.join(tail) or '(empty)'}"
        )
    files = [int((sn.summary or {}).get("added-data-files", 0)) for sn in commits]
    stamps = [sn.timestamp_ms / 1000 for sn in commits]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    spacing = statistics.mean(gaps) if gaps else float(interval)
    per_commit = statistics.mean(files) if files else 0.0
    return {
        "figure": "commit interval",
        "interval_s": interval,
        "rate_events_s": rate,
        "run_s": round(ended - started, 1),
        "commits": len(commits),
        "seconds_between_commits": round(spacing, 1),
        "files_per_commit": round(per_commit, 2),
        "files_per_hour": round(per_commit * 3600 / spacing),
        "probes": len(cold),
        "cold_live_query_s": {"p50": _pct(cold, 0.5), "max": _pct(cold, 1.0)},
        "cold_live_staleness_s": {"p50": _pct(live_stale, 0.5), "max": _pct(live_stale, 1.0)},
        "tail_events": {"p50": int(_pct(tails, 0.5)), "max": max(tails)},
        "baseline_plain_query_staleness_s": {
            "p50": _pct(plain_stale, 0.5),
            "max": _pct(plain_stale, 1.0),
        },
    }


def run_intervals(intervals: list[float], rate: float = 1000.0) -> list[dict[str, Any]]:
    """Part 4: one nats-server and lake per interval; each runs 2 intervals + 10 s (≥ 30 s)."""
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    rows = []
    for interval in intervals:
        with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp) / "nats") as nats:
            settings = load_settings(
                {"LAKE_DATA_DIR": str(Path(tmp) / "lake"), "LAKE_NATS_URL": nats.url}
            )
            rows.append(bench_interval(settings, interval, max(30.0, 2 * interval + 10), rate))
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """All figures as rows."""
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    sizes = [1_000, 10_000, 30_000] if quick else [1_000, 10_000, 60_000, 120_000]
    rows: list[dict[str, Any]] = []
    for part in ("tail", "files", "replay"):  # one nats-server each: each owns the subject
        with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp) / "nats") as nats:
            settings = load_settings(
                {"LAKE_DATA_DIR": str(Path(tmp) / "lake"), "LAKE_NATS_URL": nats.url}
            )
            if part == "tail":
                rows += bench_tail(settings, sizes, repeat=3)
            elif part == "replay":
                rows += bench_replay_gaps(settings, 20_000 if quick else 50_000, repeat=3)
            else:
                rows.append(bench_files(settings, seconds=6 if quick else 12, rate=1000.0))
    return rows


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller tails, shorter run")
    parser.add_argument("--json", action="store_true", help="JSON rows instead of text")
    parser.add_argument(
        "--intervals",
        help="only part 4: commit intervals to measure, seconds, comma-separated (e.g. 5,30,60)",
    )
    args = parser.parse_args()
    if args.intervals:
        rows = run_intervals([float(v) for v in args.intervals.split(",")])
    else:
        rows = run(args.quick)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
