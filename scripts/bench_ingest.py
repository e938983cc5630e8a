"""Benchmark of the writers: JetStream → Iceberg end to end, ceilings measured in the same run.

Rows (each beside its baseline):

* `ingest-1-event-msgs` events/s: one `LakeService` (one process) drains a backlog of
  single-event messages into `bronze.stocks_trades`; the clock stops when the consumer's ack
  floor reaches the last message (committed, visible, then acked); baseline: nats-py's own fetch
  rate of the same messages (fetch + ack, no decoding/writing).
* `ingest-1-event-steady` events/s and `latency-1-event-steady` p50/p99: single-event messages
  published at a steady 50,000 events/s by a separate publisher process while the service runs
  at the defaults; acked events/s (the consumer's ack floor) beside the published rate, and
  published → committed → acked latency per message (ack floor polled every 50 ms).
* `ingest-100-event-msgs` events/s: the same drain with 100 events per message; baseline:
  nats-py fetch rate of those messages × 100.
* `commit-latency` p50/p99 of the writer's commits in both runs; baseline: a plain
  `pyarrow.parquet.write_table` of the same number of rows to a local file.
* `append-latency` at commit 2,000 (median of the last 20) vs commit 10 (median of commits
  5..15): 100-row flushes through the writer's own commit path (watermark property in the same
  transaction, the in-line policy run as the service runs it, default retention: every
  snapshot of the run is kept).

Everything runs at the user defaults (flush at 50,000 events or 30 s, 6 h snapshot retention)
except where a row says otherwise (the published → committed rows at a 2 s interval). Baselines
that need deltalake (`pip install -e '.[bench]'`) read "n/a" without it.

* `serve-workers-2`: two tables over `lake serve --workers 2` vs `--workers 1`.
* `hot-table-shards-2`: ONE hot table drained by two shard consumers of a bench-only prototype
  (one process each, subject filter per shard, own lease/watermark) beside one process on the
  table's one subject (what `--workers 1` and `--workers 2` both run for a single table).

* `ingest-1-event-msgs-1pct-rejects`: the single-event drain with 1 message in 100 rejected
  (dead-lettered) beside the same backlog without, same run.

Usage: `python scripts/bench_ingest.py [--quick] [--json] [--scaling] [--rejects]` (`--scaling`,
`--rejects`: only those rows).
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


def _futures_event(i: int) -> dict[str, Any]:
    return {**_event(i), "symbol": ("ESZ6", "NQZ6")[i % 2], "exchange": "CME"}


def _bodies(events: int, per_message: int, futures: bool = False) -> list[bytes]:
    make = _futures_event if futures else _event
    if per_message == 1:
        return [json.dumps(make(i)).encode() for i in range(events)]
    return [
        json.dumps([make(i) for i in range(j, min(j + per_message, events))]).encode()
        for j in range(0, events, per_message)
    ]


async def _publish(
    settings: Any, bodies: list[bytes], subject: str = SUBJECT, shards: int = 0
) -> None:
    """Publish `bodies` on `subject` (`shards` > 0: message i on `<subject>.s<i % shards>`)."""
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="bench-publisher")
    js = nc.jetstream()
    await bus.ensure_streams(js, settings)
    subjects = [f"{subject}.s{k}" for k in range(shards)]
    for n, body in enumerate(bodies, start=1):
        await nc.publish(subjects[n % shards] if shards else subject, body)
        if n % 5000 == 0:
            await nc.flush()
    await nc.flush()
    while (await js.stream_info("MARKET", subjects_filter=subject)).state.messages < len(bodies):
        await asyncio.sleep(0.05)
    await nc.close()


async def _fetch_ceiling(settings: Any, messages: int) -> float:
    """Messages/s of nats-py's PullSubscription.fetch + ack over the published backlog."""
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="bench-fetch")
    js = bus.jetstream(nc, settings)
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


# ---- pull consumers: the lean public-API one vs the previous one (baseline, same run) ----------

_END_OF_ROUND = {"404", "408", "409"}


class _LegacyPuller:
    """The writers' previous puller (nats-py private members), kept here as a baseline only.

    Args:
        nc: connected client.
        stream: stream name.
        consumer: durable consumer name.
    """

    def __init__(self, nc: Any, stream: str, consumer: str) -> None:
        self.nc = nc
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.sub: Any = None

    async def start(self) -> None:
        """Subscribe to the delivery inbox."""
        self.sub = await self.nc.subscribe(
            self.inbox, pending_msgs_limit=4_000_000, pending_bytes_limit=2 * 1024**3
        )

    async def close(self) -> None:
        """Unsubscribe (queued, unacked deliveries are dropped; the server redelivers them)."""
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            finally:
                self.sub = None

    def _drain(self, out: list[Any], limit: int) -> bool:
        """Move queued deliveries to `out`; True if an end-of-round status was seen."""
        queue = self.sub._pending_queue
        ended = False
        while len(out) < limit and not queue.empty():
            msg = queue.get_nowait()
            self.sub._pending_size -= len(msg.data)
            headers = msg.headers
            if headers and "Status" in headers:
                if headers["Status"] in _END_OF_ROUND:
                    ended = True
                continue  # heartbeats and other status messages
            out.append(msg)
        return ended

    async def _request(self, batch: int, expires: float | None) -> None:
        req: dict[str, Any] = {"batch": batch}
        if expires is None:
            req["no_wait"] = True
        else:
            req["expires"] = int(expires * 1_000_000_000)
        await self.nc.publish(self.api, json.dumps(req).encode(), reply=self.inbox)

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        """Up to `batch` messages; waits at most about `timeout` seconds for the first one.

        Returns:
            The messages in delivery order (possibly none).
        """
        out: list[Any] = []
        self._drain(out, batch)
        if len(out) >= batch:
            return out
        queue = self.sub._pending_queue
        loop = asyncio.get_running_loop()
        # Round 1: whatever is available now (the server ends the round with a 404/408).
        await self._request(batch - len(out), None)
        deadline = loop.time() + max(timeout, 0.05)
        while len(out) < batch:
            if self._drain(out, batch) or len(out) >= batch:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return out
            try:
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                return out
            self._push_front(msg)
        if out:
            return out
        # Round 2: nothing was available; long-poll until the first message or the timeout.
        remaining = deadline - loop.time()
        if remaining <= 0.01:
            return out
        await self._request(batch, remaining)
        while not out:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
            self._push_front(msg)
            self._drain(out, batch)
        # Let the rest of a burst land, then take it.
        await asyncio.sleep(0)
        self._drain(out, batch)
        return out

    def _push_front(self, msg: Any) -> None:
        """Put a message taken with `queue.get()` back at the head of the queue."""
        queue = self.sub._pending_queue
        queue._queue.appendleft(msg)  # asyncio.Queue keeps a deque; keeps delivery order


def _legacy_seqs(reply: str) -> tuple[int, int]:
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[6])
    return int(t[7]), int(t[8])


async def _puller_drain(settings: Any, messages: int, legacy: bool) -> float:
    """Messages/s drained by a puller (fetch, stream/consumer seqs of each message, ack last)."""
    from iceberg_lake.engine import nats as bus
    from iceberg_lake.engine.nats_pull import BatchPuller

    nc = await bus.connect(settings, name="bench-puller")
    js = bus.jetstream(nc, settings)
    await bus.reset_consumer(js, TABLE, 1)
    consumer = bus.consumer_name(TABLE)
    puller: Any
    if legacy:
        puller = _LegacyPuller(nc, "MARKET", consumer)
    else:
        puller = BatchPuller(nc, bus.api_prefix(settings), "MARKET", consumer)
    await puller.start()
    got = 0
    t0 = time.perf_counter()
    while got < messages:
        if legacy:
            msgs = await puller.fetch(5000, 2.0)
            seqs = [_legacy_seqs(m.reply) for m in msgs]
        else:
            msgs = await puller.fetch(5000, 2.0, 8 * 1024 * 1024)
            seqs = bus.message_sequences(msgs)
        if msgs:
            assert seqs[-1][0] > 0
            got += len(msgs)
            await msgs[-1].ack()
    elapsed = time.perf_counter() - t0
    await puller.close()
    await nc.close()
    return messages / elapsed


async def _ack_floor(js: Any) -> int:
    """The stream sequence below which the table's consumer has acked everything."""
    from iceberg_lake.engine import nats as bus

    info = await js.consumer_info("MARKET", bus.consumer_name(TABLE))
    return int(info.ack_floor.stream_seq or 0)


async def _started_service(settings: Any, **run: Any) -> tuple[Any, asyncio.Task[None]]:
    """A LakeService on TABLE, running, once its writer has subscribed (`run`: its options)."""
    from iceberg_lake.ingest.service import LakeService

    service = LakeService(settings, [TABLE])
    task = asyncio.create_task(service.run(**run))
    while not service.writers or any(w.psub is None for w in service.writers):
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return service, task


async def _drain(
    settings: Any, events: int, stored: int | None = None
) -> tuple[float, list[float], int]:
    """Run one LakeService over the backlog; (events/s, commit latencies, rows committed).

    The clock runs from the writer's subscription until the consumer's ack floor reaches the
    stream's last message: published → committed → acked. `stored`: the rows to wait for
    (default `events`; fewer when some are dead-lettered).
    """
    stored = events if stored is None else stored
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="bench-acks")
    js = bus.jetstream(nc, settings)
    last_seq = int((await js.stream_info("MARKET")).state.last_seq)
    # As `--until-idle`: a batch is flushed at the default size, and the last one when the
    # backlog is drained rather than by the 30 s timer (the writer's first fetch takes one
    # message to learn the events per message, so batches do not end on the backlog's end).
    service, task = await _started_service(settings, stop_when_idle=True, idle_seconds=600)
    t0 = time.perf_counter()
    # A writer that stalls must end the benchmark with a message, not hang it.
    deadline = t0 + max(120.0, events / 5_000)

    def check() -> None:
        if task.done():
            task.result()
        if time.perf_counter() > deadline:
            raise SystemExit(
                f"bench_ingest: the drain of {events:,} events did not finish in "
                f"{deadline - t0:.0f} s ({service.committed_events:,} committed)"
            )

    while service.committed_events < stored:
        check()
        await asyncio.sleep(0.005)
    while await _ack_floor(js) < last_seq:
        check()
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    await nc.close()
    await service.stop()
    await task
    return events / elapsed, list(service.writers[0].commit_latencies), service.committed_events


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
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
    # Backlogs are whole multiples of the default batch (50,000 events): a backlog's last partial
    # batch waits for the flush interval (30 s by default; live queries see it meanwhile), which
    # is latency, measured by `_steady_latency`, not drain throughput.
    for per_message, events in (
        (1, 10_000 if quick else 200_000),
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
            legacy = asyncio.run(_puller_drain(settings, len(bodies), legacy=True))
            lean = asyncio.run(_puller_drain(settings, len(bodies), legacy=False))
            legacy2 = asyncio.run(_puller_drain(settings, len(bodies), legacy=True))
            lean2 = asyncio.run(_puller_drain(settings, len(bodies), legacy=False))
            rate, lat, committed = asyncio.run(_drain(settings, events))
            assert committed == events, (committed, events)
            latencies += lat
            flush_rows.append(events // max(1, len(lat)))
        rows.append(
            {
                "benchmark": f"pull-drain-{per_message}-event-msgs",
                "metric": f"messages/s ({len(bodies):,} messages, best of 2, public-API puller)",
                "value": round(max(lean, lean2)),
                "unit": "msgs/s",
                "baseline": "previous puller (private nats-py members), same backlog",
                "baseline_value": round(max(legacy, legacy2)),
            }
        )
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


def _reject_drain(workdir: Path, quick: bool) -> dict[str, Any]:
    """`ingest-1-event-msgs-1pct-rejects`: the single-event backlog with every 100th message
    rejected (price -1: dead-lettered with its reason) beside the same backlog without, same
    run. A batch with rejects makes the writer read the catalog pointers before its commit (it
    follows a schema change before it dead-letters, live19), which this row prices."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    events = 20_000 if quick else 200_000
    rates: dict[int, float] = {}
    for every in (0, 100):
        run_dir = workdir / f"rejects-{every}"
        with run_nats_server(run_dir / "nats") as nats:
            settings = load_settings(
                {"LAKE_DATA_DIR": str(run_dir / "lake"), "LAKE_NATS_URL": nats.url}
            )
            LakeCatalog(settings).init()
            bodies = _bodies(events, 1)
            bad = 0
            if every:
                for i in range(0, events, every):
                    bodies[i] = json.dumps({**_event(i), "price": -1}).encode()
                    bad += 1
            asyncio.run(_publish(settings, bodies))
            rate, _lat, committed = asyncio.run(_drain(settings, events, events - bad))
            assert committed == events - bad, (committed, events - bad)
            rates[every] = rate
    return {
        "benchmark": "ingest-1-event-msgs-1pct-rejects",
        "metric": f"events/s ({events:,} events, 1 message in 100 dead-lettered)",
        "value": round(rates[100]),
        "unit": "events/s",
        "baseline": "the same backlog without rejects, same run",
        "baseline_value": round(rates[0]),
    }


def _append_latency(workdir: Path, quick: bool) -> dict[str, Any]:
    """Latency of commit N vs commit 10 through the writer's commit path (with its in-line
    policy run), at the default retention."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.ingest.batch import MicroBatch
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.ingest.writer import ConsumerWriter
    from iceberg_lake.tables import registry

    commits = 300 if quick else 2000
    settings = load_settings({"LAKE_DATA_DIR": str(workdir / "append")})  # default retention
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


# ---- 10k-row commits: the writers' data path vs pyiceberg's append vs deltalake ----------------


#: A baseline that could not be measured (deltalake, a bench-only dependency, is missing).
NOT_AVAILABLE = "n/a"


def _ms(seconds: list[float]) -> float | str:
    """Median in ms, or "n/a" when nothing was measured."""
    return round(statistics.median(seconds) * 1000, 1) if seconds else NOT_AVAILABLE


def _has_deltalake() -> bool:
    """deltalake is a bench-only dependency (`pip install -e .[bench]`)."""
    import importlib.util

    return importlib.util.find_spec("deltalake") is not None


def _delta_append(path: Path, rows: Any, cpu: list[float] | None = None) -> float:
    """Seconds for one `deltalake.write_deltalake` append of `rows`.

    Partitioned like the Iceberg table (symbol, hour of the event), so both write as many
    files. `cpu` (optional) receives the process CPU seconds the append took.
    """
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    t0 = time.perf_counter()
    c0 = time.process_time()
    hour = pc.divide(rows.column("ts_event_ns"), 3_600_000_000_000)
    write_deltalake(
        str(path), rows.append_column("hour", hour), mode="append", partition_by=["symbol", "hour"]
    )
    if cpu is not None:
        cpu.append(time.process_time() - c0)
    return time.perf_counter() - t0


def _decoded(events: int) -> Any:
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.tables import registry

    d = registry().get(TABLE)
    codec = TableCodec(TABLE, d.iceberg_schema(), d.partition_key)
    return codec.decode(_bodies(events, 1), recv_ns=1).table


def _commit_alone(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    """10k-row commits through the writer's commit path: own data path vs pyiceberg's append."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.engine import iceberg as engine
    from iceberg_lake.ingest.batch import MicroBatch
    from iceberg_lake.ingest.writer import ConsumerWriter

    rows_per_commit = 10_000
    commits = 8 if quick else 20
    settings = load_settings({"LAKE_DATA_DIR": str(workdir / "commit-alone")})
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    chunk = _decoded(rows_per_commit)
    fast_path = engine.fast_path_applies
    results: dict[str, list[float]] = {"own": [], "pyiceberg": []}
    cpu: dict[str, list[float]] = {"own": [], "pyiceberg": [], "delta": []}
    try:
        for n in range(commits * 2):
            mode = ("own", "pyiceberg")[n % 2]  # interleaved: same machine load for both
            engine.fast_path_applies = fast_path if mode == "own" else (lambda t, r: False)  # type: ignore[assignment]
            batch = MicroBatch()
            base = writer.position
            batch.add_messages(rows_per_commit, base + 1, base + rows_per_commit, None)
            batch.add_rows(TABLE, chunk)
            t0 = time.perf_counter()
            c0 = time.process_time()
            writer._commit_sync(batch)
            results[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
    finally:
        engine.fast_path_applies = fast_path  # type: ignore[assignment]
    delta: list[float] = []
    cpu["delta"] = []
    if _has_deltalake():
        delta = [
            _delta_append(workdir / "delta-alone", chunk, cpu["delta"]) for _ in range(commits)
        ]
    own = statistics.median(results["own"][2:])
    own_cpu = statistics.median(cpu["own"][2:])
    return [
        {
            "benchmark": "commit-10k-alone",
            "metric": f"p50 of {commits - 2} writer commits, 10,000 rows, own data path",
            "value": round(own * 1000, 1),
            "unit": "ms",
            "baseline": "same commit via pyiceberg Transaction.append",
            "baseline_value": round(statistics.median(results["pyiceberg"][2:]) * 1000, 1),
        },
        {
            "benchmark": "commit-10k-alone-vs-delta",
            "metric": "p50, 10,000 rows, own data path",
            "value": round(own * 1000, 1),
            "unit": "ms",
            "baseline": "deltalake write_deltalake append, same rows and partitions",
            "baseline_value": _ms(delta[1:]),
        },
        {
            "benchmark": "commit-10k-cpu",
            "metric": "process CPU ms per 10,000-row commit, own data path",
            "value": round(own_cpu * 1000, 1),
            "unit": "ms CPU",
            "baseline": "pyiceberg append / deltalake (CPU ms)",
            "baseline_value": f"{statistics.median(cpu['pyiceberg'][2:]) * 1000:.1f} / "
            f"{_ms(cpu['delta'][1:])}",
        },
    ]


def _commit_under_load(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    """10k-row writer commits while ingest runs (50k events/s published, flush at 10,000
    events), beside deltalake appends of 10,000 rows in a thread of the same process."""
    import threading

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    chunk = _decoded(10_000)
    run_dir = workdir / "commit-load"
    delta: list[float] = []
    stop = threading.Event()

    def delta_loop() -> None:
        while _has_deltalake() and not stop.wait(0.3):
            delta.append(_delta_append(run_dir / "delta", chunk))

    with run_nats_server(run_dir / "nats") as nats:
        settings = load_settings(
            {
                "LAKE_DATA_DIR": str(run_dir / "lake"),
                "LAKE_NATS_URL": nats.url,
                "LAKE_BRONZE_BATCH_SIZE": "10000",
            }
        )
        LakeCatalog(settings).init()
        thread = threading.Thread(target=delta_loop, daemon=True)
        thread.start()
        try:
            _, lat = asyncio.run(_steady(settings, 50_000, 8 if quick else 20, 100))
        finally:
            stop.set()
            thread.join()
    return [
        {
            "benchmark": "commit-10k-under-ingest",
            "metric": f"p50 of {len(lat)} writer commits (flush at 10,000 events; "
            f"50k events/s ingest; p99 {_pct(lat, 0.99) * 1000:.0f} ms)",
            "value": round(_pct(lat, 0.5) * 1000, 1),
            "unit": "ms",
            "baseline": f"deltalake append of 10,000 rows, same load (p50 of {len(delta)})",
            "baseline_value": round(_pct(delta, 0.5) * 1000, 1) if delta else NOT_AVAILABLE,
        }
    ]


# ---- end-to-end latency at a steady rate (flush at N events or T seconds) ----------------------


async def _steady(
    settings: Any, rate: int, seconds: float, per_message: int
) -> tuple[list[float], list[float]]:
    """Publish `rate` events/s for `seconds` while a service runs.

    Returns:
        (per-message latencies, the writer's commit latencies), seconds.

    Latency of a message: the timestamp of the first ingest snapshot whose last stream sequence
    covers it, minus its publish time (the stream is fresh, so message i has sequence i). Only
    messages published before the last flush interval + 1 s count: the end of the run is not
    steady (the last partial batch waits for the timer).
    """
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.engine import nats as bus

    service, task = await _started_service(settings)
    nc = await bus.connect(settings, name="bench-steady")
    sent: list[float] = []
    tick = 0.02
    per_tick = max(1, round(rate * tick / per_message))
    start = time.time()
    i = 0
    while time.time() - start < seconds:
        for _ in range(per_tick):
            body = json.dumps([_event(i + k) for k in range(per_message)]).encode()
            await nc.publish(SUBJECT, body)
            sent.append(time.time())
            i += per_message
        await nc.flush()
        await asyncio.sleep(max(0.0, start + len(sent) / per_tick * tick - time.time()))
    await nc.close()
    deadline = time.time() + 60
    while service.committed_events < i and time.time() < deadline:
        await asyncio.sleep(0.05)
    await service.stop()
    await task
    commit_latencies = list(service.writers[0].commit_latencies)
    table = LakeCatalog(settings).load_table(TABLE)
    commits = sorted(
        (int(s.summary["lake.last-stream-seq"]), s.timestamp_ms / 1000)
        for s in table.snapshots()
        if s.summary and s.summary["lake.last-stream-seq"]
    )
    out = []
    c = 0
    steady_until = start + seconds - settings.bronze_batch_seconds - 1
    for seq, published in enumerate(sent, start=1):
        if published > steady_until:
            break
        while c < len(commits) and commits[c][0] < seq:
            c += 1
        if c < len(commits):
            out.append(commits[c][1] - published)
    return out, commit_latencies


def _steady_latency(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    rows = []
    # Published -> committed latency is bounded by the flush interval. The default interval
    # (30 s) is long because live queries read the uncommitted tail (docs/live.md); this part
    # measures the bound at the 2 s interval a deployment whose plain readers need seconds sets.
    for rate in (2_000, 50_000):
        run_dir = workdir / f"steady-{rate}"
        with run_nats_server(run_dir / "nats") as nats:
            settings = load_settings(
                {
                    "LAKE_DATA_DIR": str(run_dir / "lake"),
                    "LAKE_NATS_URL": nats.url,
                    "LAKE_BRONZE_BATCH_SECONDS": "2",
                }
            )
            LakeCatalog(settings).init()
            lat, _ = asyncio.run(_steady(settings, rate, 8 if quick else 20, 100))
        rows.append(
            {
                "benchmark": f"latency-steady-{rate // 1000}k",
                "metric": f"p99 published->committed, {rate:,} events/s in 100-event messages "
                f"(p50 {_pct(lat, 0.5):.2f} s; flush at {settings.bronze_batch_size:,} events "
                f"or {settings.bronze_batch_seconds:g} s)",
                "value": round(_pct(lat, 0.99), 2),
                "unit": "s",
                "baseline": "flush interval + 1 s (target bound)",
                "baseline_value": settings.bronze_batch_seconds + 1,
            }
        )
    return rows


# ---- single-event messages at a steady rate: published → committed → acked ---------------------

#: A publisher process (the writer's process must not pay for publishing): single-event messages
#: at BENCH_RATE/s for BENCH_SECONDS, in 20 ms ticks; prints "ready", waits for a line on stdin,
#: then prints JSON: the time each tick started and the count of messages published by its end.
_STEADY_PUBLISHER = r"""
import asyncio, json, os, sys, time
import nats
async def main():
    rate, seconds = int(os.environ["BENCH_RATE"]), float(os.environ["BENCH_SECONDS"])
    base, subject = int(os.environ["BENCH_BASE_NS"]), os.environ["BENCH_SUBJECT"]
    nc = await nats.connect(os.environ["BENCH_URL"])
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    syms = (b"SPY", b"QQQ", b"IWM", b"AAPL")
    ticks, i = [], 0
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    while time.time() - start < seconds:
        t = time.time()
        for _ in range(per_tick):
            ts = base + (i % 3600) * 1000000000 + i
            await nc.publish(subject, (
                b'{"ts_event_ns":%d,"ts_recv_ns":%d,"source":"bench","symbol":"%s",'
                b'"price":%.2f,"size":%d,"exchange":4,"seq":%d}'
                % (ts, ts + 1000, syms[i % 4], 500.0 + (i % 100) / 100, 1 + i % 300, i)
            ))
            i += 1
        await nc.flush()
        ticks.append((t, i))
        await asyncio.sleep(max(0.0, start + len(ticks) * tick - time.time()))
    await nc.close()
    print(json.dumps({"ticks": ticks}), flush=True)
asyncio.run(main())
"""


async def _steady_acked(
    settings: Any, rate: int, seconds: float
) -> tuple[list[float], float, float, int]:
    """Single-event messages from `_STEADY_PUBLISHER` while a service runs (the defaults).

    Returns:
        Per-message published → acked latencies (s) of the messages published before the last
        batch's fill time + 1 s (the end of the run is not steady: the last partial batch is
        flushed by the stop, not by size); the acked and the published events/s over the
        steady part (after a 2 s warm-up; the ack floor is read every 50 ms and moves once per
        batch, so the acked rate is exact to one batch); and the events published.
    """
    import os
    import subprocess

    import numpy as np

    from iceberg_lake.engine import nats as bus

    service, task = await _started_service(settings)
    nc = await bus.connect(settings, name="bench-acks")
    js = bus.jetstream(nc, settings)
    env = {
        "BENCH_URL": settings.nats_url,
        "BENCH_RATE": str(rate),
        "BENCH_SECONDS": str(seconds),
        "BENCH_BASE_NS": str(BASE_NS),
        "BENCH_SUBJECT": SUBJECT,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _STEADY_PUBLISHER],
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"ready"
    acks: list[tuple[float, int]] = []
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    done = asyncio.ensure_future(asyncio.to_thread(proc.communicate))
    while not done.done():
        acks.append((time.time(), await _ack_floor(js)))
        await asyncio.sleep(0.05)
    out, _ = done.result()
    assert proc.returncode == 0, proc.returncode
    ticks = json.loads(out.decode().strip().splitlines()[-1])["ticks"]
    total = int(ticks[-1][1])
    # Once the writer holds every message, the stop flushes the last partial batch (instead
    # of the 30 s timer); its messages are not counted (see above).
    deadline = time.time() + 600
    while service.writers[0].max_sseq < total and time.time() < deadline:
        await asyncio.sleep(0.05)
        acks.append((time.time(), await _ack_floor(js)))
    stopping = asyncio.ensure_future(service.stop())
    while acks[-1][1] < total and time.time() < deadline:
        await asyncio.sleep(0.05)
        acks.append((time.time(), await _ack_floor(js)))
    await stopping
    await task
    await nc.close()
    tick_t = np.array([t for t, _ in ticks])
    tick_end = np.array([n for _, n in ticks], dtype=np.int64)  # messages 1..n published by then
    ack_t = np.array([t for t, _ in acks])
    ack_seq = np.maximum.accumulate(np.array([n for _, n in acks], dtype=np.int64))
    end = float(tick_t[-1])
    fill = settings.bronze_batch_size / rate
    seqs = np.arange(1, total + 1)
    published = tick_t[np.searchsorted(tick_end, seqs, "left")]  # each message's tick start
    acked_at = np.searchsorted(ack_seq, seqs, "left")
    ok = (published <= end - fill - 1) & (acked_at < len(ack_t))
    lat = (ack_t[np.minimum(acked_at, len(ack_t) - 1)] - published)[ok]

    def at(times: Any, values: Any, t: float) -> int:
        return int(values[max(0, int(np.searchsorted(times, t, "right")) - 1)])

    t_from = float(tick_t[0]) + 2.0
    span = max(1e-9, end - t_from)
    acked_rate = (at(ack_t, ack_seq, end) - at(ack_t, ack_seq, t_from)) / span
    published_rate = (at(tick_t, tick_end, end) - at(tick_t, tick_end, t_from)) / span
    return [float(x) for x in lat], acked_rate, published_rate, total


def _steady_single(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    """Single-event messages at a steady 50,000 events/s (issue 14's goal), the defaults."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    rate, seconds = 50_000, (6.0 if quick else 20.0)
    run_dir = workdir / "steady-single"
    with run_nats_server(run_dir / "nats") as nats:
        settings = load_settings(
            {"LAKE_DATA_DIR": str(run_dir / "lake"), "LAKE_NATS_URL": nats.url}
        )
        LakeCatalog(settings).init()
        lat, acked, published, total = asyncio.run(_steady_acked(settings, rate, seconds))
    flush = f"flush at {settings.bronze_batch_size:,} events or {settings.bronze_batch_seconds:g} s"
    return [
        {
            "benchmark": "ingest-1-event-steady",
            "metric": f"events/s acked, single-event messages published at {rate:,}/s for "
            f"{seconds:g} s ({total:,} events; {flush}; after a 2 s warm-up)",
            "value": round(acked),
            "unit": "events/s",
            "baseline": "events/s published (separate publisher process), same window",
            "baseline_value": round(published),
        },
        {
            "benchmark": "latency-1-event-steady",
            "metric": f"p99 published->committed->acked of {len(lat):,} single-event messages "
            f"(p50 {_pct(lat, 0.5):.2f} s; {flush})",
            "value": round(_pct(lat, 0.99), 2),
            "unit": "s",
            "baseline": "batch fill time at the published rate + 1 s",
            "baseline_value": round(settings.bronze_batch_size / max(1.0, published) + 1, 2),
        },
    ]


# ---- scaling with worker processes (`lake serve --workers N`) ----------------------------------


def _serve_run(workdir: Path, workers: int, events: int) -> tuple[float, float]:
    """`lake serve --workers N --until-idle` over two tables' backlogs of `events` in all.

    Returns the process's wall seconds (start-up, drain, idle detection, shutdown) and the
    seconds from the process start to the last commit (its snapshot timestamp): the time to
    have everything committed from a cold start, without the idle wait and the shutdown.
    Nothing measured separately is subtracted (that gave negative times on a loaded machine).
    """
    import os
    import subprocess

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    run_dir = workdir / f"workers-{workers}-{events}"
    with run_nats_server(run_dir / "nats") as nats:
        env = {"LAKE_DATA_DIR": str(run_dir / "lake"), "LAKE_NATS_URL": nats.url}
        settings = load_settings(env)
        lake = LakeCatalog(settings)
        lake.init()
        half = events // 2
        asyncio.run(_publish(settings, _bodies(half, 100)))
        futures = _bodies(half, 100, futures=True)
        asyncio.run(_publish(settings, futures, "market.futures.trades"))
        argv = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "serve"]
        argv += ["--workers", str(workers), "--until-idle", "--idle-seconds", "0.5"]
        argv += ["--tables", "stocks_trades,futures_trades"]
        started_ms = time.time() * 1000
        t0 = time.perf_counter()
        subprocess.run(
            argv, env={**os.environ, **env}, check=True, timeout=600, capture_output=True
        )
        elapsed = time.perf_counter() - t0
        commits: list[tuple[int, int]] = []  # (timestamp ms, rows added)
        for tid in (TABLE, "bronze.futures_trades"):
            for snap in lake.load_table(tid).snapshots():
                added = int((snap.summary or {}).get("added-records") or 0)
                if added:
                    commits.append((snap.timestamp_ms, added))
    assert sum(rows for _, rows in commits) == 2 * half, (commits, events)
    return elapsed, (max(ts for ts, _ in commits) - started_ms) / 1000


def _workers_scaling(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    events = 200_000 if quick else 800_000
    wall_one, done_one = _serve_run(workdir, 1, events)
    wall_two, done_two = _serve_run(workdir, 2, events)
    return [
        {
            "benchmark": "serve-workers-2",
            "metric": f"events/s, 2 tables, 100/message ({events:,} events), --workers 2, "
            "process start to last commit (start-up included)",
            "value": round(events / done_two),
            "unit": "events/s",
            "baseline": "--workers 1, same backlog, same measure",
            "baseline_value": round(events / done_one),
        },
        {
            "benchmark": "serve-workers-2 (whole process)",
            "metric": f"events/s incl. start-up and shutdown ({events:,} events), --workers 2",
            "value": round(events / wall_two),
            "unit": "events/s",
            "baseline": "--workers 1, same backlog, whole process",
            "baseline_value": round(events / wall_one),
        },
    ]


# ---- one hot table past one core: --workers N vs a sharding prototype ---------------------------

#: One process writing `bronze.stocks_trades` (what `lake serve --tables stocks_trades` runs) over
#: a backlog published beforehand: it prints `ready` once its tables are loaded, waits for the
#: file BENCH_GO (so several processes start draining together, start-up not measured), then
#: prints `{"t1"}` (wall clock) once BENCH_EVENTS rows are committed. With BENCH_SHARD set it
#: is a bench-only prototype of sharding one table across processes: the consumer becomes
#: `<durable>_<shard>` on the filter subject `<subject>.<shard>`, so each shard has its own
#: lease, watermark and position keys (`lake.watermark.MARKET.<durable>_<shard>`) and the
#: shards' commits meet only in the catalog swap of the one table (pyiceberg rebases a losing
#: commit). Not a feature: today's subjects (`market.stocks.trades`) do not carry the symbol
#: (docs/ingest.md, "Scaling past one core").
_HOT_WORKER = r"""
import asyncio, json, os, time
import iceberg_lake.engine.nats as bus
import iceberg_lake.ingest.writer as writer
shard, base = os.environ.get("BENCH_SHARD"), bus.consumer_target
def target(tid):
    stream, durable, subject = base(tid)
    return stream, f"{durable}_{shard}", f"{subject}.{shard}"
if shard:
    bus.consumer_target = writer.consumer_target = target
resubscribe = writer.ConsumerWriter._resubscribe
async def gated(self):
    print("ready", flush=True)
    while not os.path.exists(os.environ["BENCH_GO"]):
        await asyncio.sleep(0.002)
    await resubscribe(self)
    writer.ConsumerWriter._resubscribe = resubscribe
writer.ConsumerWriter._resubscribe = gated
from iceberg_lake.config import load_settings
from iceberg_lake.ingest.service import LakeService
async def main():
    expected = int(os.environ["BENCH_EVENTS"])
    service = LakeService(load_settings(), [os.environ["BENCH_TABLE"]])
    # As `--until-idle`: the last partial batch is flushed when drained, not after 30 s.
    task = asyncio.create_task(service.run(stop_when_idle=True, idle_seconds=600))
    while service.committed_events < expected:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    t1 = time.time()
    await service.stop()
    await task
    print(json.dumps({"t1": t1}), flush=True)
asyncio.run(main())
"""


def _hot_drain(workdir: Path, shards: int, events: int, tables: int = 1) -> tuple[float, int]:
    """Events/s draining a backlog of 100-event messages, and the hot table's commits.

    `shards` = 0: one process on the table's subject (today). `shards` = N: N processes of the
    prototype above, message n on `market.stocks.trades.s<n % N>`. `tables` = 2 (control, no
    shards): one process per table, half the events to `bronze.futures_trades` — what 2 shards
    could reach if their commits did not meet on one table. The backlog is published first;
    the rate is events / (go → last process committed its share).
    """
    import os
    import subprocess

    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings
    from iceberg_lake.testing import run_nats_server

    run_dir = workdir / f"hot-{shards}-{tables}-{events}"
    with run_nats_server(run_dir / "nats") as nats:
        env = {"LAKE_DATA_DIR": str(run_dir / "lake"), "LAKE_NATS_URL": nats.url}
        settings = load_settings(env)
        lake = LakeCatalog(settings)
        lake.init()
        if tables == 2:
            bodies = _bodies(events // 2, 100)
            futures = _bodies(events // 2, 100, futures=True)
            asyncio.run(_publish(settings, bodies))
            asyncio.run(_publish(settings, futures, "market.futures.trades"))
            parts = [bodies, futures]
            names = [TABLE, "bronze.futures_trades"]
        else:
            bodies = _bodies(events, 100)
            asyncio.run(_publish(settings, bodies, shards=shards))
            # Message n went to shard n % shards (`_publish` counts from 1).
            parts = [bodies[(k - 1) % shards :: shards] for k in range(shards)] or [bodies]
            names = [TABLE] * len(parts)
        go = run_dir / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _HOT_WORKER],
                env={
                    **os.environ,
                    **env,
                    "BENCH_GO": str(go),
                    "BENCH_TABLE": names[k],
                    "BENCH_EVENTS": str(sum(b.count(b"{") for b in part)),
                    **({"BENCH_SHARD": f"s{k}"} if shards else {}),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            for k, part in enumerate(parts)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        t0 = time.time()
        go.touch()
        spans = []
        for p in procs:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, p.returncode
            spans.append(json.loads(out.decode().strip().splitlines()[-1]))
        elapsed = max(s["t1"] for s in spans) - t0
        rows = 0
        for tid in dict.fromkeys(names):
            snap = lake.load_table(tid).current_snapshot()
            rows += int(snap.summary["total-records"] or 0) if snap and snap.summary else 0
        commits = len(lake.load_table(TABLE).metadata.snapshots)
    # Every event stored once across the shards (each shard's watermark is its own).
    assert rows == events, (shards, rows, events)
    return events / elapsed, commits


def _hot_scaling(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    """One hot table: 2 shard processes (prototype) beside one process, same run.

    `lake serve --workers 2 --tables stocks_trades` is not measured: the split is per table
    (`split_round_robin` makes one group of one table), so it runs exactly the one process.
    """
    events = 200_000 if quick else 800_000
    one = _hot_drain(workdir, 0, events)[0]
    two, snapshots = _hot_drain(workdir, 2, events)
    control = _hot_drain(workdir, 0, events, tables=2)[0]
    return [
        {
            "benchmark": "hot-table-shards-2",
            "metric": (
                f"events/s, 1 table, 100/message ({events:,} events), 2 shard consumers "
                f"(prototype), one process each ({snapshots} commits)"
            ),
            "value": round(two),
            "unit": "events/s",
            "baseline": "one process on the one subject (= --workers 1 or 2), same backlog",
            "baseline_value": round(one),
        },
        {
            "benchmark": "two-tables-two-processes",
            "metric": (
                f"events/s, 2 tables, 100/message ({events:,} events), one process each "
                "(control: 2 shards without a shared table)"
            ),
            "value": round(control),
            "unit": "events/s",
            "baseline": "one process, one table, same number of events",
            "baseline_value": round(one),
        },
    ]


def run_scaling(quick: bool = False) -> list[dict[str, Any]]:
    """Only the scaling rows: 2 tables over `--workers`, one hot table over workers/shards."""
    import logging

    logging.getLogger("iceberg_lake").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        return _workers_scaling(workdir, quick) + _hot_scaling(workdir, quick)


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
        rows.append(_reject_drain(workdir, quick))
        rows += _steady_single(workdir, quick)
        rows += _commit_alone(workdir, quick)
        rows += _commit_under_load(workdir, quick)
        rows += _steady_latency(workdir, quick)
        rows += _workers_scaling(workdir, quick)
        rows += _hot_scaling(workdir, quick)
        rows.append(_append_latency(workdir, quick))
    return rows


def main() -> None:
    """Print the rows as a rich table (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument(
        "--scaling", action="store_true", help="only the scaling rows (workers, shards)"
    )
    parser.add_argument(
        "--rejects", action="store_true", help="only the row with 1%% rejected messages"
    )
    args = parser.parse_args()
    if args.rejects:
        import logging

        logging.getLogger("iceberg_lake").setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            rows = [_reject_drain(Path(tmp), args.quick)]
    else:
        rows = run_scaling(quick=args.quick) if args.scaling else run(quick=args.quick)
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
