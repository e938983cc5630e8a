"""Helpers for the writer tests: valid events per table, publishing, counting through DuckDB."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
from support.wait import wait_until

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.ingest.service import LakeService

SUBJECTS = {
    "bronze.stocks_trades": "market.stocks.trades",
    "bronze.stocks_quotes": "market.stocks.quotes",
    "bronze.options_trades": "market.options.trades",
    "bronze.options_greeks_snapshots": "market.options.greeks",
    "bronze.futures_trades": "market.futures.trades",
    "bronze.futures_mbp10": "market.futures.mbp10",
}
BASE_NS = 1_765_900_000 * 1_000_000_000  # 2025-12-16
#: The `lake` executable of the running interpreter's environment.
LAKE = str(Path(sys.executable).parent / "lake")


def make_event(table: str, i: int, base_ns: int = BASE_NS, symbol: str | None = None) -> dict:
    """A valid flat event for `table`; `seq` = i, event times spread over 3 hours."""
    ts = base_ns + (i * 7919 % 10_800) * 1_000_000_000 + i
    common: dict[str, Any] = {"ts_event_ns": ts, "ts_recv_ns": ts + 1000, "source": "test"}
    if table == "bronze.stocks_trades":
        return {
            **common,
            "symbol": symbol or ("SPY", "QQQ")[i % 2],
            "price": 500.0 + i % 7,
            "size": 1 + i % 100,
            "exchange": 4,
            "seq": i,
        }
    if table == "bronze.stocks_quotes":
        return {
            **common,
            "symbol": symbol or "SPY",
            "bid_px": 500.0,
            "ask_px": 500.01,
            "bid_sz": 3,
            "ask_sz": 4,
            "bid_exch": 1,
            "ask_exch": 2,
            "seq": i,
        }
    if table == "bronze.options_trades":
        return {
            **common,
            "underlying": symbol or "SPY",
            "option_symbol": "SPY251219C00500000",
            "exp_date": "2025-12-19",
            "strike": 500.0,
            "right": "C",
            "price": 1.25,
            "size": 2,
            "opt_bid": 1.2,
            "opt_ask": 1.3,
            "aggressor": 1,
            "seq": i,
        }
    if table == "bronze.options_greeks_snapshots":
        common.pop("ts_recv_ns")
        return {
            **common,
            "underlying": symbol or "SPY",
            "option_symbol": f"SPY_C{i}",
            "delta": 0.5,
            "gamma": 0.01,
            "theta": -0.2,
            "vega": 0.1,
            "implied_volatility": 0.2,
            "open_interest": 100,
            "snapshot_id": f"s{i}",
        }
    if table == "bronze.futures_trades":
        return {
            **common,
            "symbol": symbol or "ES.c.0",
            "price": 6000.25,
            "size": 1,
            "aggressor": -1,
            "exchange": "CME",
            "seq": i,
        }
    if table == "bronze.futures_mbp10":
        book = {
            f"{side}_{kind}_{n}": (6000.0 - n if kind == "px" else n)
            for side in ("bid", "ask")
            for kind in ("px", "sz")
            for n in range(1, 11)
        }
        return {**common, "symbol": symbol or "ES", "is_snapshot": False, "seq": i, **book}
    raise ValueError(table)


def gold_payload(i: int, levels: int = 2, base_ms: int = BASE_NS // 1_000_000) -> dict:
    """A spec-shaped `levels.signals` payload (`ts` in ms, `spy` context) with `levels` levels."""
    return {
        "ts": base_ms + i * 1000,
        "spy": {"spot": 545.42, "bid": 545.41, "ask": 545.43},
        "levels": [
            {
                "id": f"STRIKE_{545 + n}_{i}",
                "price": 545.0 + n,
                "kind": "STRIKE",
                "direction": "SUPPORT",
                "distance": 0.42,
                "break_score_raw": 88,
                "break_score_smooth": 81,
                "signal": "BREAK",
                "confidence": "HIGH",
                "barrier": {
                    "state": "WEAK",
                    "delta_liq": -1.5,
                    "replenishment_ratio": 0.3,
                    "added": 10,
                    "canceled": 4,
                    "filled": 2,
                },
                "tape": {
                    "imbalance": 0.6,
                    "buy_vol": 1000,
                    "sell_vol": 400,
                    "velocity": 2.5,
                    "sweep": {"detected": True, "direction": "DOWN", "notional": 1e6},
                },
                "fuel": {
                    "effect": "AMPLIFY",
                    "net_dealer_gamma": -2e6,
                    "call_wall": 550.0,
                    "put_wall": 540.0,
                    "hvl": 544.0,
                },
                "runway": {
                    "direction": "DOWN",
                    "next_level_id": "PUT_WALL",
                    "next_level_price": 540.0,
                    "distance": 5.0,
                    "quality": "CLEAN",
                },
                "note": "test",
            }
            for n in range(levels)
        ],
    }


def settings_for(
    tmp_path: Path,
    nats_url: str,
    *,
    catalog_uri: str | None = None,
    s3: Any = None,
    **extra: str,
) -> Settings:
    """Settings for a fresh lake in `tmp_path` (optionally PostgreSQL and/or S3)."""
    env = {
        "LAKE_DATA_DIR": str(tmp_path / "lake"),
        "LAKE_NATS_URL": nats_url,
        "LAKE_CATALOG_NAME": f"c{uuid.uuid4().hex[:8]}",
        "LAKE_BRONZE_BATCH_SECONDS": "0.5",
        "LAKE_GOLD_BATCH_SECONDS": "0.5",
    }
    if catalog_uri:
        env["LAKE_CATALOG_URI"] = catalog_uri
    if s3 is not None:
        bucket = f"lake-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(bucket)  # as `lake init` would: `lake serve` never creates the bucket
        env.update(s3.lake_env(f"s3://{bucket}/warehouse"))
    env.update(extra)
    return load_settings(env)


def settings_env(settings: Settings) -> dict[str, str]:
    """`LAKE_*` variables reproducing `settings` (for a `lake serve` subprocess)."""
    env = {
        "LAKE_DATA_DIR": str(settings.data_dir),
        "LAKE_NATS_URL": settings.nats_url,
        "LAKE_CATALOG_NAME": settings.catalog_name,
        "LAKE_CATALOG_URI": settings.catalog_uri,
        "LAKE_WAREHOUSE": settings.warehouse,
        "LAKE_BRONZE_BATCH_SIZE": str(settings.bronze_batch_size),
        "LAKE_BRONZE_BATCH_SECONDS": str(settings.bronze_batch_seconds),
        "LAKE_GOLD_BATCH_SIZE": str(settings.gold_batch_size),
        "LAKE_GOLD_BATCH_SECONDS": str(settings.gold_batch_seconds),
        "LAKE_WRITER_LEASE_SECONDS": str(settings.writer_lease_seconds),
        "LAKE_SHUTDOWN_GRACE_SECONDS": str(settings.shutdown_grace_seconds),
        "LAKE_FETCH_MAX_BYTES": str(settings.fetch_max_bytes),
        "LAKE_STREAM_MAX_AGE": str(settings.stream_max_age),
        "LAKE_STREAM_MAX_BYTES": str(settings.stream_max_bytes),
        "LAKE_STREAM_DUPLICATE_WINDOW_SECONDS": str(settings.stream_duplicate_window_seconds),
    }
    if settings.nats_domain:
        env["LAKE_NATS_DOMAIN"] = settings.nats_domain
    if settings.s3_endpoint:
        env.update(
            LAKE_S3_ENDPOINT=settings.s3_endpoint,
            LAKE_S3_ACCESS_KEY=settings.s3_access_key or "",
            LAKE_S3_SECRET_KEY=settings.s3_secret_key or "",
            LAKE_S3_REGION=settings.s3_region,
        )
    return env


def start_serve(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `lake serve *args` in a session of its own with `settings`, output to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(settings_env(settings))
    with open(log, "ab") as out:
        return subprocess.Popen(
            [LAKE, "--log-level", "INFO", "serve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def serving(settings: Settings, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`start_serve`, killed (and reaped) on leaving the block if it is still running."""
    proc = start_serve(settings, log, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


Item = tuple[str, bytes, dict[str, str] | None]


async def publish_async(
    settings: Settings, items: Iterable[Item], *, acked: bool = False, pace: float = 0.0
) -> int:
    """Publish `(subject, body, headers)` items (streams created first). Returns the count.

    Core publishes (fast) unless `acked`, in which case each publish waits for JetStream's ack
    (needed for `Nats-Msg-Id` duplicate checks). `pace`: at most this many messages per second.
    """
    nc = await bus.connect(settings, name="test-publisher")
    try:
        js = bus.jetstream(nc, settings)
        await bus.ensure_streams(js, settings)
        n = 0
        for subject, body, headers in items:
            if acked:
                await js.publish(subject, body, headers=headers)
            else:
                await nc.publish(subject, body, headers=headers)
            n += 1
            if pace and n % 50 == 0:
                await nc.flush()
                await asyncio.sleep(50 / pace)
            elif n % 2000 == 0:
                await nc.flush()
        await nc.flush()
        return n
    finally:
        await nc.close()


def publish(
    settings: Settings, items: Iterable[Item], *, acked: bool = False, pace: float = 0.0
) -> int:
    """Synchronous `publish_async`."""
    return asyncio.run(publish_async(settings, list(items), acked=acked, pace=pace))


def encode(obj: Any) -> bytes:
    """JSON bytes."""
    return json.dumps(obj).encode()


async def stream_messages(settings: Settings, stream: str) -> int:
    """Messages stored in `stream`."""
    nc = await bus.connect(settings, name="test-info")
    try:
        info = await bus.jetstream(nc, settings).stream_info(stream)
        return int(info.state.messages)
    finally:
        await nc.close()


def wait_stream(settings: Settings, stream: str, count: int, timeout: float = 20.0) -> None:
    """Wait until `stream` holds `count` messages (core publishes are asynchronous)."""
    wait_until(
        lambda: asyncio.run(stream_messages(settings, stream)) >= count,
        timeout,
        f"stream {stream} to hold {count} messages",
    )


@asynccontextmanager
async def service_running(
    settings: Settings, tables: list[str] | None = None
) -> AsyncIterator[tuple[LakeService, asyncio.Task[None]]]:
    """A `LakeService` running in this loop (and its task, for `await_until(alive=...)`):
    stopped on exit, its flush and shutdown awaited (60 s bound)."""
    service = LakeService(settings, tables)
    runner = asyncio.create_task(service.run())
    try:
        yield service, runner
    finally:
        await service.stop()
        await asyncio.wait_for(runner, 60)


def run_until_idle(settings: Settings, tables: list[str] | None = None) -> LakeService:
    """Run the writers until everything published is committed."""
    service = LakeService(settings, tables)
    asyncio.run(asyncio.wait_for(service.run(stop_when_idle=True, idle_seconds=0.3), 120))
    return service


def duck_for(con: duckdb.DuckDBPyConnection, settings: Settings) -> duckdb.DuckDBPyConnection:
    """`con` with the S3 secret of `settings` (when the warehouse is on S3)."""
    if settings.s3_endpoint:
        from iceberg_lake.engine import duck

        duck.configure_s3(
            con,
            settings.s3_endpoint,
            settings.s3_access_key or "",
            settings.s3_secret_key or "",
            settings.s3_region,
        )
    return con


def scan_sql(settings: Settings, table: str) -> str:
    """`iceberg_scan(...)` of the current metadata of `table`."""
    location = LakeCatalog(settings).load_table(table).metadata_location
    return "iceberg_scan('" + location.replace("'", "''") + "')"


def count_rows(con: duckdb.DuckDBPyConnection, settings: Settings, table: str) -> int:
    """Rows of `table` counted by DuckDB from the data files themselves.

    A bare `count(*)` over `iceberg_scan` is answered from the manifests' record counts without
    opening a data file, so it cannot see a committed file that is missing; this reads a column.
    """
    first = LakeCatalog(settings).load_table(table).schema().fields[0].name
    col = '"' + first.replace('"', '""') + '"'
    sql = f"SELECT sum(CASE WHEN {col} IS NULL THEN 1 ELSE 1 END) FROM {scan_sql(settings, table)}"
    return int(con.sql(sql).fetchone()[0] or 0)


def data_files_sorted(settings: Settings, table: str, keys: tuple[str, ...] = ("ts_event_ns",)):
    """(number of data files, whether each is sorted by `keys`)."""
    t = LakeCatalog(settings).load_table(table)
    files = [task.file.file_path for task in t.scan().plan_files()]
    ok = True
    for path in files:
        with t.io.new_input(path).open() as f:
            data = pq.read_table(f, columns=list(keys))
        rows = list(zip(*(data.column(k).to_pylist() for k in keys), strict=True))
        ok = ok and rows == sorted(rows)
    return len(files), ok
