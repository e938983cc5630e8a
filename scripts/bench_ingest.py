"""Benchmark of the writers: JetStream → Iceberg end to end, ceilings measured in the same run.

Rows (each beside its baseline):

* `ingest-1-event-msgs` events/s: one `LakeService` (one process) drains a backlog of
  single-event messages into `bronze.stocks_trades` (published → committed and visible);
  baseline: nats-py's own fetch rate of the same messages (fetch + ack, no decoding/writing).
* `ingest-100-event-msgs` events/s: the same with 100 events per message; baseline: nats-py
  fetch rate of those messages × 100.
* `commit-latency` p50/p99 of the writer's commits in both runs; baseline: a plain
  `pyarrow.parquet.write_table` of the same number of rows to a local file.
* `append-latency` at commit 2,000 (median of the last 20) vs commit 10 (median of commits
  5..15): 100-row flushes through the writer's own commit path (watermark property in the same
  transaction, snapshot expiry with a 10 s retention window as the service runs it).

Usage: `python scripts/bench_ingest.py [--quick] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

TABLE = "bronze.stocks_trades"
SUBJECT = "market.stocks.trades"
BASE_NS = 1_765_900_000 * 1_000_000_000


def _event(i: int) -> dict[str, Any]:
    ts = BASE_NS + (i % 3_600) * 1_000_000_000 + i
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1000,
        "source": "bench",
        "symbol": ("SPY", "QQQ", "IWM", "AAPL")[i % 4],
        "price": 500.0 + (i % 100) / 100,
        "size": 1 + i % 300,
        "exchange": 4,
        "seq": i,
    }


def _bodies(events: int, per_message: int) -> list[bytes]:
    if per_message == 1:
        return [json.dumps(_event(i)).encode() for i in range(events)]
    return [
        json.dumps([_event(i) for i in range(j, min(j + per_message, events))]).encode()
        for j in range(0, events, per_message)
    ]


async def _publish(settings: Any, bodies: list[bytes]) -> None:
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="bench-publisher")
    js = nc.jetstream()
    await bus.ensure_streams(js, settings)
    for n, body in enumerate(bodies, start=1):
        await nc.publish(SUBJECT, body)
        if n % 5000 == 0:
            await nc.flush()
    await nc.flush()
    while (await js.stream_info("MARKET")).state.messages < len(bodies):
        await asyncio.sleep(0.05)
    await nc.close()


async def _fetch_ceiling(settings: Any, messages: int) -> float:
    """Messages/s of nats-py's PullSubscription.fetch + ack over the published backlog."""
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="bench-fetch")
    js = nc.jetstream()
    await bus.reset_consumer(js, TABLE, 1)
    psub = await js.pull_subscribe_bind(
        consumer=bus.consumer_name(TABLE),
        stream="MARKET",
        pending_msgs_limit=4_000_000,
        pending_bytes_limit=2 * 1024**3,
    )
    got = 0
    t0 = time.perf_counter()
    while got < messages:
        msgs = await psub.fetch(min(5000, messages - got), timeout=2)
        got += len(msgs)
        await msgs[-1].ack()
    elapsed = time.perf_counter() - t0
    await nc.close()
    return messages / elapsed


async def _drain(settings: Any, events: int) -> tuple[float, list[float], int]:
    """Run one LakeService over the backlog; (events/s, commit latencies, rows committed)."""
    from iceberg_lake.ingest.service import LakeService

    service = LakeService(settings, [TABLE])
    task = asyncio.create_task(service.run())
    while not service.writers or any(w.psub is None for w in service.writers):
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    while service.committed_events < events:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    await service.stop()
    await task
    return events / elapsed, list(service.writers[0].commit_latencies), service.committed_events


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _parquet_baseline(rows: int, workdir: Path) -> float:
    """Seconds for a plain pyarrow.parquet write of `rows` decoded events (ZSTD 3)."""
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.tables import registry

    d = registry().get(TABLE)
    codec = TableCodec(TABLE, d.iceberg_schema(), d.partition_key)
    table = codec.decode(_bodies(rows, 1), recv_ns=1).table.sort_by("ts_event_ns")
    times = []
    for i in range(5):
        t0 = time.perf_counter()
        pq.write_table(
            table, workdir / f"plain-{i}.parquet", compression="zstd", compression_level=3
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ingest_runs(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    flush_rows: list[int] = []
    for per_message, events in (
        (1, 10_000 if quick else 40_000),
        (100, 100_000 if quick else 400_000),
    ):
        run_dir = workdir / f"run-{per_message}"
        with run_nats_server(run_dir / "nats") as nats:
            settings = load_settings(
                {"LAKE_DATA_DIR": str(run_dir / "lake"), "LAKE_NATS_URL": nats.url}
            )
            from iceberg_lake.catalog import LakeCatalog

            LakeCatalog(settings).init()
            bodies = _bodies(events, per_message)
            asyncio.run(_publish(settings, bodies))
            ceiling = asyncio.run(_fetch_ceiling(settings, len(bodies))) * per_message
            rate, lat, committed = asyncio.run(_drain(settings, events))
            assert committed == events, (committed, events)
            latencies += lat
            flush_rows.append(events // max(1, len(lat)))
        rows.append(
            {
                "benchmark": f"ingest-{per_message}-event-msgs",
                "metric": f"events/s ({events:,} events, {per_message}/message)",
                "value": round(rate),
                "unit": "events/s",
                "baseline": "nats-py fetch+ack of the same messages",
                "baseline_value": round(ceiling),
            }
        )
    plain = _parquet_baseline(max(1, min(flush_rows)), workdir)
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        rows.append(
            {
                "benchmark": "commit-latency",
                "metric": f"{name} of {len(latencies)} commits (~{min(flush_rows):,} rows)",
                "value": round(_pct(latencies, q) * 1000, 1),
                "unit": "ms",
                "baseline": "pyarrow.parquet.write_table, same rows",
                "baseline_value": round(plain * 1000, 1),
            }
        )
    return rows


def _append_latency(workdir: Path, quick: bool) -> dict[str, Any]:
    """Latency of commit N vs commit 10 through the writer's commit path, expiry running."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.ingest.batch import MicroBatch
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.ingest.writer import ConsumerWriter
    from iceberg_lake.tables import registry

    commits = 300 if quick else 2000
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(workdir / "append"),
            "LAKE_BRONZE_SNAPSHOT_RETENTION_SECONDS": "10",
        }
    )
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    d = registry().get(TABLE)
    codec = TableCodec(TABLE, d.iceberg_schema(), d.partition_key)
    chunk = codec.decode(_bodies(100, 1), recv_ns=1).table
    times = []
    for n in range(1, commits + 1):
        batch = MicroBatch()
        batch.add_messages(100, (n - 1) * 100 + 1, n * 100, None)
        batch.add_rows(TABLE, chunk)
        t0 = time.perf_counter()
        writer._commit_sync(batch)
        times.append(time.perf_counter() - t0)
    early = statistics.median(times[4:15])
    late = statistics.median(times[-20:])
    snapshots = len(writer.tables[TABLE].metadata.snapshots)
    return {
        "benchmark": "append-latency",
        "metric": f"commit {commits} (100 rows; {snapshots} snapshots kept)",
        "value": round(late * 1000, 1),
        "unit": "ms",
        "baseline": "commit 10",
        "baseline_value": round(early * 1000, 1),
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the writer benchmarks.

    Args:
        quick: smaller volumes (seconds instead of minutes).

    Returns:
        Rows with keys benchmark, metric, value, unit, baseline, baseline_value.
    """
    import logging

    logging.getLogger("iceberg_lake").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        rows = _ingest_runs(workdir, quick)
        rows.append(_append_latency(workdir, quick))
    return rows


def main() -> None:
    """Print the rows as a rich table (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="iceberg_lake writers")
    for col in ("benchmark", "metric", "value", "unit", "baseline", "baseline_value"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            *(
                str(r[c])
                for c in ("benchmark", "metric", "value", "unit", "baseline", "baseline_value")
            )
        )
    Console().print(table)


if __name__ == "__main__":
    main()
