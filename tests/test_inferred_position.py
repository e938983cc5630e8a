"""The inference writer (`lake serve --tables inferred`, subject `market.>`) skips every mapped
subject, so no table's rows move its position while only mapped subjects flow. It records its
position in the catalog on its own (a property-only commit on the dead letters: when it stops or
drains, else at most once a minute), so a restart does not re-read the whole stream (the soak
audit: 285k messages, 1.6 GB, 10 s of a worker's CPU per start) — and a catalog restored from a
backup is read on from its own position, not from NATS's acks (ops5: the unmapped events acked
after the backup were skipped for good). Budget: ~15 s.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from ingest_support import (
    count_rows,
    duck_for,
    encode,
    make_event,
    publish,
    publish_async,
    scan_sql,
    serving,
    settings_for,
    start_serve,
    stream_messages,
    wait_stream,
)
from support.wait import wait_until

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.testing import NatsServer

TRADES = "bronze.stocks_trades"
INFERRED_POSITION = "lake.position.MARKET.lake_inferred"


def _drain(settings: Settings, log: Path, tables: str) -> None:
    proc = start_serve(settings, log, "--tables", tables, "--until-idle")
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]


def test_the_inference_writer_restarts_after_its_recorded_position(
    tmp_path: Path, nats: NatsServer
) -> None:
    settings = settings_for(tmp_path, nats.url)
    n = 300
    publish(
        settings, [("market.stocks.trades", encode(make_event(TRADES, i)), None) for i in range(n)]
    )
    log = tmp_path / "serve.log"
    for _ in range(2):
        _drain(settings, log, "inferred")
    text = log.read_text()
    starts = re.findall(
        r"writer inferred: active on consumer \S+ of MARKET \S+ from stream seq (\d+)", text
    )
    assert starts == ["1", str(n + 1)], text[-3000:]
    dead_letters = LakeCatalog(settings).load_table("bronze.dead_letters")
    assert dead_letters.properties[INFERRED_POSITION] == str(n)
    assert dead_letters.current_snapshot() is None, "the position alone makes no snapshot"


def _events(first: int, n: int) -> list[tuple[str, bytes, None]]:
    """Trades alternating between their mapped subject (source `m`) and an unmapped one that
    schema inference routes into the same table (source `u`); seq = a global id."""
    items = []
    for i in range(first, first + n):
        event = make_event(TRADES, i)
        mapped = i % 2 == 0
        event["source"] = "m" if mapped else "u"
        subject = "market.stocks.trades" if mapped else "market.custom.trades"
        items.append((subject, encode(event), None))
    return items


def test_a_restored_catalog_stores_the_unmapped_events_again(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """Drain, back the SQLite catalog up, drain more, restore the backup (the warehouse keeps
    its files), drain: every event of both kinds stored exactly once. The inference writer read
    on from its consumer's ack floor and skipped the unmapped half of the second batch."""
    settings = settings_for(tmp_path, nats.url)
    log = tmp_path / "serve.log"
    n = 200
    publish(settings, _events(0, n))
    wait_stream(settings, "MARKET", n)
    _drain(settings, log, "stocks_trades,inferred")
    catalog_db = settings.data_dir / "catalog.db"
    backup = tmp_path / "catalog.backup.db"
    with sqlite3.connect(catalog_db) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)  # what `sqlite3 catalog.db .backup` does
    publish(settings, _events(n, n))
    wait_stream(settings, "MARKET", 2 * n)
    _drain(settings, log, "stocks_trades,inferred")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{catalog_db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, catalog_db)

    _drain(settings, log, "stocks_trades,inferred")

    con = duck_for(duck, settings)
    got = con.sql(
        f"SELECT source, count(*), count(DISTINCT seq), min(seq), max(seq) "
        f"FROM {scan_sql(settings, TRADES)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == [("m", n, n, 0, 2 * n - 2), ("u", n, n, 1, 2 * n - 1)]
    assert count_rows(duck, settings, TRADES) == 2 * n


def _inferred_acked(settings: Settings) -> int:
    async def read() -> int:
        nc = await bus.connect(settings, name="test-ack-floor")
        try:
            floor = await bus.consumer_ack_floor(
                bus.jetstream(nc, settings), "MARKET", "lake_inferred"
            )
            return floor or 0
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_stop_records_the_position_of_skipped_messages_flushed_before_it(
    tmp_path: Path, nats: NatsServer
) -> None:
    """Mapped messages only, flushed (acked) well within the minute between position records,
    then SIGTERM with nothing buffered: the stop records the position. It did not, and the next
    start re-read them, and reported them lost once a stream limit had removed them (review7)."""
    settings = settings_for(tmp_path, nats.url)
    n = 200
    publish(
        settings, [("market.stocks.trades", encode(make_event(TRADES, i)), None) for i in range(n)]
    )
    log = tmp_path / "serve.log"
    with serving(settings, log, "--tables", "stocks_trades,inferred") as proc:
        wait_until(lambda: _inferred_acked(settings) == n, 60, "the inference writer's flush")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    dead_letters = LakeCatalog(settings).load_table("bronze.dead_letters")
    assert dead_letters.properties.get(INFERRED_POSITION) == str(n), log.read_text()[-2000:]


def test_a_catalog_restored_while_serving_is_not_skipped_past_by_the_stop_record(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """Unmapped events flushed, the catalog backed up, more unmapped flushed, mapped ones
    skipped, the backup restored under the running writer, SIGTERM: the stop's position record
    must not land past the restored watermark (it did: the record's compare-and-swap covered
    the dead letters only, and 100 of 200 unmapped events were skipped for good; review8)."""
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="3")
    log = tmp_path / "serve.log"
    catalog_db = settings.data_dir / "catalog.db"
    backup = tmp_path / "catalog.backup.db"
    with serving(settings, log, "--tables", "inferred") as proc:
        publish(settings, _events(1, 200)[::2])  # 100 unmapped (odd ids)
        wait_until(lambda: _inferred_acked(settings) == 100, 60, "the first flush")
        with sqlite3.connect(catalog_db) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        publish(settings, _events(201, 200)[::2])  # 100 more unmapped
        wait_until(lambda: _inferred_acked(settings) == 200, 60, "the second flush")
        publish(settings, _events(400, 200)[::2])  # 100 mapped: skipped
        wait_until(lambda: _inferred_acked(settings) == 300, 60, "the skipped flush")
        with sqlite3.connect(backup) as src, sqlite3.connect(catalog_db) as dst:
            src.backup(dst)  # restored while serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    _drain(settings, log, "inferred")
    got = (
        duck_for(duck, settings)
        .sql(f"SELECT count(*), count(DISTINCT seq) FROM {scan_sql(settings, TRADES)}")
        .fetchone()
    )
    assert got == (200, 200), log.read_text()[-3000:]


def _restore_then(
    settings: Settings, tmp_path: Path, tables: str, consumer: str, after: list, total: int
) -> Path:
    """100 trades flushed, the catalog backed up, 100 more flushed, the backup restored under
    the running writer, then `after` published and flushed (up to `total` acked), SIGTERM, and
    a drain: the serve log."""
    log = tmp_path / "serve.log"
    catalog_db = settings.data_dir / "catalog.db"
    backup = tmp_path / "catalog.backup.db"
    subject = "market.stocks.trades" if consumer != "lake_inferred" else "market.custom.trades"

    def trades(first: int) -> list[tuple[str, bytes, None]]:
        return [(subject, encode(make_event(TRADES, i)), None) for i in range(first, first + 100)]

    def acked() -> int:
        async def read() -> int:
            nc = await bus.connect(settings, name="test-ack-floor")
            try:
                js = bus.jetstream(nc, settings)
                return await bus.consumer_ack_floor(js, "MARKET", consumer) or 0
            finally:
                await nc.close()

        return asyncio.run(read())

    with serving(settings, log, "--tables", tables) as proc:
        publish(settings, trades(1))
        wait_until(lambda: acked() == 100, 60, "the first flush")
        with sqlite3.connect(catalog_db) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        publish(settings, trades(101))
        wait_until(lambda: acked() == 200, 60, "the second flush")
        with sqlite3.connect(backup) as src, sqlite3.connect(catalog_db) as dst:
            src.backup(dst)  # restored while serving
        publish(settings, after)
        wait_until(lambda: acked() == total, 60, "the flush after the restore")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    _drain(settings, log, tables)
    return log


def test_a_restore_is_not_skipped_past_by_a_flush_to_another_table(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """The first flush after a restore under the inference writer has rows for another table
    only (quotes): its commit's compare-and-swap covers the quotes, and the position it
    records counts over every table, so the restored trades were skipped for good (100 of 200;
    review9)."""
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="3")
    quotes = [
        ("market.custom.quotes", encode(make_event("bronze.stocks_quotes", i)), None)
        for i in range(1, 11)
    ]
    log = _restore_then(settings, tmp_path, "inferred", "lake_inferred", quotes, 210)
    con = duck_for(duck, settings)
    got = con.sql(f"SELECT count(*), count(DISTINCT seq) FROM {scan_sql(settings, TRADES)}")
    assert got.fetchone() == (200, 200), log.read_text()[-3000:]
    assert count_rows(con, settings, "bronze.stocks_quotes") == 10


def test_a_restore_is_not_skipped_past_by_a_flush_of_dead_letters_only(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """A table writer: the first flush after a restore holds undecodable messages only, so it
    commits (and records the position) on the dead letters alone; the restored trades were
    skipped for good (100 of 200; review9)."""
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="3")
    poison = [("market.stocks.trades", b"not json", None)] * 10
    log = _restore_then(
        settings, tmp_path, "stocks_trades", "lake_bronze_stocks_trades", poison, 210
    )
    con = duck_for(duck, settings)
    got = con.sql(f"SELECT count(*), count(DISTINCT seq) FROM {scan_sql(settings, TRADES)}")
    assert got.fetchone() == (200, 200), log.read_text()[-3000:]


def test_messages_handled_before_a_kill_and_then_removed_by_a_limit_are_flagged_as_such(
    tmp_path: Path, nats: NatsServer
) -> None:
    """The inference writer's recorded position trails what it acked by up to a minute of
    skipped messages; after a SIGKILL a stream limit that removed those handled messages is
    reported as a possible loss. Whether it is one cannot be told (a catalog restored from a
    backup trails the acks the same way, and loses them; review10), so the warning stays, and
    says what the ack floor suggests (review9)."""
    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_STREAM_MAX_AGE="8",
        LAKE_WRITER_LEASE_SECONDS="2",
        LAKE_STREAM_DUPLICATE_WINDOW_SECONDS="1",
    )
    log = tmp_path / "serve.log"
    mapped = [("market.stocks.trades", encode(make_event(TRADES, i)), None) for i in range(50)]
    with serving(settings, log, "--tables", "inferred") as proc:
        # Published once the writer reads: a slow start would let the max age remove them
        # unread (then the warning is right, and this test would prove nothing).
        wait_until(
            lambda: "writer inferred: active on consumer" in log.read_text(),
            60,
            "the writer to start",
            alive=proc,
        )
        publish(settings, mapped)  # skipped by the inference writer, acked, position not recorded
        wait_until(lambda: _inferred_acked(settings) == 50, 60, "the skipped flush acked")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert "no longer holds" not in log.read_text(), "removed before the first writer read them"
    wait_until(
        lambda: asyncio.run(stream_messages(settings, "MARKET")) == 0,
        60,
        "the stream's max age to remove the 50 handled messages",
    )
    _drain(settings, log, "inferred")
    text = log.read_text()
    (warning,) = [line for line in text.splitlines() if "no longer holds seq 1..50" in line]
    assert "its consumer had acked up to seq 50: unless the catalog was restored" in warning


def test_an_idle_inference_writer_records_its_position_while_serving(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped (mapped) messages flushed within `INFERRED_POSITION_SECONDS` of the last record
    record nothing then; once the writer has been idle that long it records them, without
    stopping (interval lowered to 1 s here; 60 s by default)."""
    from support.wait import await_until

    from iceberg_lake.engine.nats import INFERRED_TARGET
    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.ingest.service import LakeService

    monkeypatch.setattr(writer_module, "INFERRED_POSITION_SECONDS", 1.0)
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="0.2")
    mapped = [("market.stocks.trades", encode(make_event(TRADES, i)), None) for i in range(100)]
    catalog = LakeCatalog(settings)
    catalog.init()

    def recorded() -> str | None:
        return catalog.load_table("bronze.dead_letters").properties.get(INFERRED_POSITION)

    async def scenario() -> None:
        service = LakeService(settings, [INFERRED_TARGET])
        runner = asyncio.create_task(service.run())
        try:
            await publish_async(settings, mapped[:50])
            await await_until(lambda: recorded() == "50", 30, "the first record (due at once)")
            await publish_async(settings, mapped[50:])  # within the interval: not recorded yet
            await await_until(lambda: recorded() == "100", 30, "the record after 1 s idle")
            assert not runner.done(), "recorded while serving, not by a stop"
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())


def test_a_table_pointed_back_at_older_metadata_is_read_again_from_its_watermark(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """Following the corrupt-metadata hint (point the catalog's metadata_location back at an
    older file) moves one table's watermark back, but the consumer's position, recorded on the
    dead letters by a flush of bad messages only, was past it: the restart skipped 100 of 200
    trades for good (ops8). The watermarks recorded with the position tell it to read on from
    the table's own."""
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="1")
    log = tmp_path / "serve.log"
    catalog_db = settings.data_dir / "catalog.db"

    def acked() -> int:
        async def read() -> int:
            nc = await bus.connect(settings, name="test-ack-floor")
            try:
                js = bus.jetstream(nc, settings)
                floor = await bus.consumer_ack_floor(js, "MARKET", "lake_bronze_stocks_trades")
                return floor or 0
            finally:
                await nc.close()

        return asyncio.run(read())

    def trades(first: int) -> list[tuple[str, bytes, None]]:
        return [
            ("market.stocks.trades", encode(make_event(TRADES, i)), None)
            for i in range(first, first + 100)
        ]

    def metadata_location() -> str:
        with sqlite3.connect(catalog_db) as db:
            (where,) = db.execute(
                "SELECT metadata_location FROM iceberg_tables WHERE table_name = 'stocks_trades'"
            ).fetchone()
        return str(where)

    with serving(settings, log, "--tables", "stocks_trades") as proc:
        publish(settings, trades(1))
        wait_until(lambda: acked() == 100, 60, "the first flush")
        older = metadata_location()
        publish(settings, trades(101))
        wait_until(lambda: acked() == 200, 60, "the second flush")
        publish(settings, [("market.stocks.trades", b"{bad", None)] * 10)
        wait_until(lambda: acked() == 210, 60, "the flush of dead letters only")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    with sqlite3.connect(catalog_db) as db:
        db.execute(
            "UPDATE iceberg_tables SET metadata_location = ? WHERE table_name = 'stocks_trades'",
            (older,),
        )
    _drain(settings, log, "stocks_trades")
    con = duck_for(duck, settings)
    got = con.sql(f"SELECT count(*), count(DISTINCT seq) FROM {scan_sql(settings, TRADES)}")
    assert got.fetchone() == (200, 200), log.read_text()[-3000:]
    assert "its metadata was moved back" in log.read_text()
    dead = count_rows(con, settings, "bronze.dead_letters")
    assert dead == 10, "the bad messages are not stored again"


def test_a_table_pointed_back_under_a_serving_inference_writer_is_read_on_from_once(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inference writer, mostly mapped (skipped) traffic, and the trades table pointed back
    at older metadata while it serves: the pre-flush check fences the next position record and
    the writer reads on from the table's watermark. The first re-read batch of skipped messages
    was a due position record again, below the dead letters' watermark: fenced, re-read,
    forever, with the table left at 100 of 200 rows (review11)."""
    import logging

    from iceberg_lake.engine.nats import INFERRED_TARGET
    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.ingest.service import LakeService

    monkeypatch.setattr(writer_module, "INFERRED_POSITION_SECONDS", 1.0)  # 60 s by default
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="0.2")
    catalog = LakeCatalog(settings)
    catalog.init()
    catalog_db = settings.data_dir / "catalog.db"
    wm = "lake.watermark.MARKET.lake_inferred"

    def items(subject: str, first: int, n: int) -> list[tuple[str, bytes, None]]:
        return [(subject, encode(make_event(TRADES, i)), None) for i in range(first, first + n)]

    def pointer() -> str:
        with sqlite3.connect(catalog_db) as con:
            sql = "SELECT metadata_location FROM iceberg_tables WHERE table_name='stocks_trades'"
            return con.execute(sql).fetchone()[0]

    async def until(what: str, check: object, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():  # type: ignore[operator]
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.1)

    fenced: list[str] = []

    class Fenced(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "re-reading from the new watermark" in record.getMessage():
                fenced.append(record.getMessage())

    handler = Fenced()
    logging.getLogger("iceberg_lake").addHandler(handler)

    async def scenario() -> None:
        service = LakeService(settings, [INFERRED_TARGET])
        runner = asyncio.create_task(service.run())
        try:
            await publish_async(settings, items("market.custom.trades", 0, 100))  # seq 1..100
            await until(
                "100 trades", lambda: catalog.load_table(TRADES).properties.get(wm) == "100"
            )
            older = pointer()
            await publish_async(
                settings,
                items("market.stocks.trades", 1000, 60_000)
                + items("market.custom.trades", 100, 100),
            )
            await until(
                "200 trades", lambda: catalog.load_table(TRADES).properties.get(wm) == "60200"
            )
            await publish_async(settings, items("market.stocks.trades", 5000, 500))  # skipped
            position = "lake.position.MARKET.lake_inferred"
            await until(
                "the skipped messages' position",
                lambda: (
                    catalog.load_table("bronze.dead_letters").properties.get(position) == "60700"
                ),
            )
            with sqlite3.connect(catalog_db) as con:  # pointed back under the running writer
                sql = "UPDATE iceberg_tables SET metadata_location=? WHERE table_name=?"
                con.execute(sql, (older, "stocks_trades"))
            # Mapped traffic keeps coming (skipped): position records fall due every second.
            await publish_async(settings, items("market.stocks.trades", 9000, 2000), pace=400)
            await until(
                "the trades read on from the table's watermark",
                lambda: count_rows(duck, settings, TRADES) == 200,
            )
            assert not runner.done()
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    import duckdb

    duck = duckdb.connect()
    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger("iceberg_lake").removeHandler(handler)
    assert count_rows(duck, settings, TRADES) == 200
    assert len(fenced) <= 2, fenced[:3]
