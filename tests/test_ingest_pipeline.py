"""End-to-end ingestion against a real nats-server: every subject, every catalog × warehouse."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_support import (
    SUBJECTS,
    count_rows,
    data_files_sorted,
    duck_for,
    encode,
    gold_payload,
    make_event,
    publish,
    run_until_idle,
    scan_sql,
    settings_for,
    wait_stream,
)
from pyiceberg.table.snapshots import ancestors_of
from support.wait import await_until

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("catalog_kind", "warehouse_kind"),
    [("sqlite", "file"), ("sqlite", "s3"), ("postgresql", "file"), ("postgresql", "s3")],
)
def test_events_on_every_subject_land_once_in_their_tables(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    nats: NatsServer,
    duck,
    catalog_kind: str,
    warehouse_kind: str,
) -> None:
    pg = request.getfixturevalue("postgres_server").uri if catalog_kind == "postgresql" else None
    s3 = request.getfixturevalue("s3_server") if warehouse_kind == "s3" else None
    settings = settings_for(tmp_path, nats.url, catalog_uri=pg, s3=s3)
    per_table = 40
    items = []
    for table, subject in SUBJECTS.items():
        events = [make_event(table, i) for i in range(per_table)]
        # one event per message, then a batched message (JSON array) and an NDJSON message
        items += [(subject, encode(e), None) for e in events[:30]]
        items.append((subject, encode(events[30:35]), None))
        items.append((subject, b"\n".join(encode(e) for e in events[35:]), None))
    items += [("levels.signals", encode(gold_payload(i, levels=3)), None) for i in range(10)]
    publish(settings, items)
    wait_stream(settings, "MARKET", sum(1 for s, _, _ in items if s.startswith("market.")))

    run_until_idle(settings)

    con = duck_for(duck, settings)
    for table in SUBJECTS:
        assert count_rows(con, settings, table) == per_table, table
        files, ordered = data_files_sorted(settings, table)
        assert files >= 1 and ordered, f"{table}: a data file is not sorted by ts_event_ns"
    assert count_rows(con, settings, "gold.levels_signals") == 30
    assert data_files_sorted(settings, "gold.levels_signals", ("ts_event_ns", "level_id"))[1]
    assert count_rows(con, settings, "bronze.dead_letters") == 0
    distinct = con.sql(
        f"SELECT count(DISTINCT (source, seq)) FROM {scan_sql(settings, 'bronze.stocks_trades')}"
    ).fetchone()[0]
    assert distinct == per_table


def test_append_is_one_snapshot_with_watermark_and_summary(
    tmp_path: Path, nats: NatsServer
) -> None:
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="10")
    publish(
        settings,
        [
            ("market.stocks.trades", encode(make_event("bronze.stocks_trades", i)), None)
            for i in range(25)
        ],
    )
    wait_stream(settings, "MARKET", 25)
    run_until_idle(settings, ["bronze.stocks_trades"])

    table = LakeCatalog(settings).load_table("bronze.stocks_trades")
    snaps = list(ancestors_of(table.current_snapshot(), table.metadata))
    summaries = [s.summary.additional_properties for s in snaps]
    assert all(s[properties.LAKE_OPERATION] == "ingest" for s in summaries)
    assert sum(int(s[properties.EVENT_COUNT]) for s in summaries) == 25
    assert sum(int(s["added-records"]) for s in summaries) == 25
    assert int(summaries[0][properties.LAST_STREAM_SEQ]) == 25
    # one snapshot per flush: the watermark property came with the append, not in its own commit
    firsts = sorted(int(s[properties.FIRST_STREAM_SEQ]) for s in summaries)
    assert firsts[0] == 1 and len(snaps) == len(set(firsts))
    key = f"{properties.WATERMARK_PREFIX}MARKET.lake_bronze_stocks_trades"
    assert table.properties[key] == "25"
    # Every metadata version after the table's creation came with a snapshot: a watermark
    # committed on its own would add a version without one (the log lists earlier versions).
    assert len(table.metadata.metadata_log) == len(snaps) == len(table.metadata.snapshots)


def test_publisher_duplicates_with_same_msg_id_are_stored_once(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    items = []
    for i in range(30):
        body = encode(make_event("bronze.stocks_trades", i))
        items.append(("market.stocks.trades", body, {"Nats-Msg-Id": f"trade-{i}"}))
        if i % 3 == 0:
            items.append(("market.stocks.trades", body, {"Nats-Msg-Id": f"trade-{i}"}))
    publish(settings, items, acked=True)
    run_until_idle(settings, ["bronze.stocks_trades"])
    assert count_rows(duck, settings, "bronze.stocks_trades") == 30


def test_bad_messages_are_quarantined_and_good_ones_around_them_stored(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    good = [make_event("bronze.stocks_trades", i) for i in range(20)]
    bad: list[tuple[bytes, str]] = [
        (b'{"ts_event_ns": 1, "symbol": ', "malformed JSON"),
        (encode({k: v for k, v in good[0].items() if k != "price"}), "missing required field"),
        (encode({**good[0], "size": "ten"}), "invalid value"),
        (
            b'{"ts_event_ns": 1765900000000000000, "source": "t", "symbol": "SPY", '
            b'"price": NaN, "size": 1}',
            "price must be a finite number",
        ),
        (encode({**good[0], "price": -5.0}), "price must be a finite number > 0"),
        (encode({**good[0], "ts_event_ns": 1765900000}), "plausible"),
        (encode({**good[1], "size": -1}), "size must be >= 0"),
    ]
    items = []
    for i, event in enumerate(good):
        items.append(("market.stocks.trades", encode(event), None))
        if i < len(bad):
            items.append(("market.stocks.trades", bad[i][0], None))
    items.append(("levels.signals", b'{"ts": 1765900000000}', None))  # no levels
    items.append(("levels.signals", encode(gold_payload(1)), None))
    publish(settings, items)
    wait_stream(settings, "MARKET", len(good) + len(bad))

    run_until_idle(settings, ["bronze.stocks_trades", "gold.levels_signals"])

    assert count_rows(duck, settings, "bronze.stocks_trades") == len(good)
    assert count_rows(duck, settings, "gold.levels_signals") == 2
    rows = duck.sql(
        "SELECT target_table, subject, stream, stream_seq, reason, raw "
        f"FROM {scan_sql(settings, 'bronze.dead_letters')} ORDER BY stream, stream_seq"
    ).fetchall()
    assert len(rows) == len(bad) + 1
    market = [r for r in rows if r[2] == "MARKET"]
    for (target, subject, _, seq, reason, raw), (body, expected) in zip(market, bad, strict=True):
        assert target == "bronze.stocks_trades" and subject == "market.stocks.trades"
        assert expected in reason, reason
        assert bytes(raw) == body and seq > 0
    gold = [r for r in rows if r[2] == "SIGNALS"]
    assert gold[0][0] == "gold.levels_signals" and "levels" in gold[0][4]

    async def dlq_count() -> int:
        from iceberg_lake.engine import nats as bus

        nc = await bus.connect(settings)
        try:
            return (await nc.jetstream().stream_info("LAKE_DLQ")).state.messages
        finally:
            await nc.close()

    assert asyncio.run(dlq_count()) == len(bad) + 1


def test_path_like_partition_values_round_trip_inside_the_warehouse(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    symbols = ["../x", "a/b", "with space", "ünïcødé✓", "..", "%2F", "a=b"]
    items = [
        ("market.stocks.trades", encode(make_event("bronze.stocks_trades", i, symbol=s)), None)
        for i, s in enumerate(symbols)
    ]
    publish(settings, items)
    wait_stream(settings, "MARKET", len(symbols))
    run_until_idle(settings, ["bronze.stocks_trades"])

    got = duck.sql(
        f"SELECT symbol FROM {scan_sql(settings, 'bronze.stocks_trades')} ORDER BY seq"
    ).fetchall()
    assert [r[0] for r in got] == symbols
    warehouse = (settings.data_dir / "warehouse").resolve()
    outside = [p for p in tmp_path.rglob("*.parquet") if not p.resolve().is_relative_to(warehouse)]
    assert outside == []
    table = LakeCatalog(settings).load_table("bronze.stocks_trades")
    for task in table.scan().plan_files():
        path = Path(task.file.file_path.removeprefix("file://"))
        assert path.resolve().is_relative_to(warehouse), path


def test_unmapped_subjects_are_routed_by_schema_inference(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    quote = make_event("bronze.stocks_quotes", 1)
    es = make_event("bronze.futures_trades", 2)
    greek = make_event("bronze.options_greeks_snapshots", 3)
    env = {
        "schema_name": "stocks.trades.v1",
        "source": "x",
        "ts_event_ns": quote["ts_event_ns"],
        "key": "IWM",
        "seq": 9,
        "payload": {"price": 200.0, "size": 5},
    }
    items = [
        ("market.raw", encode(quote), None),
        ("market.raw", encode(es), None),
        ("market.feed.x", encode(greek), None),
        ("market.raw", encode(env), None),
        ("market.raw", encode({"hello": "world"}), None),
        ("market.stocks.trades", encode(make_event("bronze.stocks_trades", 4)), None),
    ]
    publish(settings, items)
    wait_stream(settings, "MARKET", len(items))
    run_until_idle(settings)

    assert count_rows(duck, settings, "bronze.stocks_quotes") == 1
    assert count_rows(duck, settings, "bronze.futures_trades") == 1
    assert count_rows(duck, settings, "bronze.options_greeks_snapshots") == 1
    trades = duck.sql(
        f"SELECT symbol, seq FROM {scan_sql(settings, 'bronze.stocks_trades')} ORDER BY seq"
    ).fetchall()
    assert trades == [("SPY", 4), ("IWM", 9)]  # the mapped one once, the envelope via its key
    dead = duck.sql(
        f"SELECT target_table, reason FROM {scan_sql(settings, 'bronze.dead_letters')}"
    ).fetchall()
    assert dead == [("unrouted", "cannot infer schema from message")]


def test_running_writer_follows_a_new_optional_column(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ingest_support import publish_async
    from pyiceberg.types import StringType

    from iceberg_lake.ingest import writer
    from iceberg_lake.ingest.service import LakeService
    from iceberg_lake.ops import metrics

    # At the default interval: the message right after the migration is stored with its value
    # (evolve14: a writer re-read the schema at most once a second, so messages decoded in the
    # second after a migration lost the new field; now a pointer check every 50 ms).
    assert writer.SCHEMA_CHECK_SECONDS <= 0.05
    settings = settings_for(tmp_path, nats.url)
    table = "bronze.stocks_trades"

    async def scenario() -> None:
        service = LakeService(settings, [table])
        runner = asyncio.create_task(service.run())
        try:
            first = {**make_event(table, 1), "venue_x": "DARK"}
            await publish_async(settings, [("market.stocks.trades", encode(first), None)])
            await await_until(
                lambda: service.committed_events >= 1, 60, "the first commit", alive=runner
            )
            unknown = metrics.UNKNOWN_FIELDS.labels(table, "venue_x")._value.get()
            assert unknown >= 1
            t = LakeCatalog(settings).load_table(table)
            with t.update_schema() as update:  # what a migration does
                update.add_column("venue_x", StringType())
            second = {**make_event(table, 2), "venue_x": "LIT"}
            await publish_async(settings, [("market.stocks.trades", encode(second), None)])
            await await_until(
                lambda: service.committed_events >= 2, 60, "the second commit", alive=runner
            )
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
    got = LakeCatalog(settings).load_table(table).scan().to_arrow().sort_by("seq")
    assert got.column("venue_x").to_pylist() == [None, "LIT"]


@pytest.mark.parametrize(
    "when", ["a-fetch-sees-it", "the-commit-sees-it", "during-the-commit", "stream-removed-them"]
)
def test_events_buffered_before_a_migration_are_stored_with_its_new_field(
    tmp_path: Path,
    nats: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    when: str,
) -> None:
    """evolve14/live16: events the writer had decoded and buffered (not yet committed) when a
    migration added a field they carry were stored without it, while `lake query --live`
    showed it. Now they are decoded again, from memory, with the new schema: whether the change
    is seen by a later fetch carrying the field, by the check before the commit, or by the
    commit itself (the migration landing between that check and the catalog update: review17,
    a whole batch stored without the field), and even when the stream's limits removed the
    messages meanwhile (review17: a re-read from the stream lost them)."""
    from ingest_support import publish_async, service_running
    from pyiceberg.types import StringType

    from iceberg_lake.engine import nats as bus
    from iceberg_lake.ingest import writer
    from iceberg_lake.ops import metrics

    # Six events make a batch; the interval is long enough that only the sixth flushes it.
    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="6", LAKE_BRONZE_BATCH_SECONDS="120"
    )
    table = "bronze.stocks_trades"
    consumed = metrics.EVENTS_CONSUMED.labels(table)
    before = consumed._value.get()

    def migrate() -> None:
        t = LakeCatalog(settings).load_table(table)
        with t.update_schema() as update:  # what a migration does
            update.add_column("venue_y", StringType())

    if when == "during-the-commit":
        real, calls = writer.watermarked_append, []

        def migrated_first(t: Any, **kwargs: Any) -> Any:
            if t.name()[-1] == "stocks_trades" and not calls:
                migrate()  # after the pre-commit check, before the catalog update
            calls.append(kwargs.get("schema_id"))
            return real(t, **kwargs)

        monkeypatch.setattr(writer, "watermarked_append", migrated_first)

    async def scenario() -> None:
        async with service_running(settings, [table]) as (service, runner):
            first = [
                ("market.stocks.trades", encode({**make_event(table, i), "venue_y": f"V{i}"}), None)
                for i in range(1, 6 if when != "during-the-commit" else 7)
            ]
            await publish_async(settings, first)
            if when == "during-the-commit":
                await await_until(
                    lambda: service.committed_events >= 6, 60, "the commit", alive=runner
                )
                return
            await await_until(
                lambda: consumed._value.get() - before >= 5, 60, "five buffered", alive=runner
            )
            assert service.committed_events == 0
            if when == "stream-removed-them":
                nc = await bus.connect(settings)
                try:
                    await bus.jetstream(nc, settings).purge_stream(bus.MARKET_STREAM)
                finally:
                    await nc.close()
            migrate()
            sixth = make_event(table, 6)
            if when != "the-commit-sees-it":
                sixth["venue_y"] = "V6"
            await publish_async(settings, [("market.stocks.trades", encode(sixth), None)])
            await await_until(lambda: service.committed_events >= 6, 60, "the commit", alive=runner)

    with caplog.at_level(logging.INFO, logger="pyiceberg"):
        asyncio.run(scenario())
    # The commit the migration lands under fails at once: pyiceberg's own conflict loop used
    # to retry it ten times, ~12 s, though it could never pass (review17c).
    retried = [r for r in caplog.records if "concurrent update" in r.getMessage()]
    assert retried == [], [r.getMessage() for r in retried]
    got = LakeCatalog(settings).load_table(table).scan().to_arrow().sort_by("seq")
    assert got.column("seq").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert got.column("venue_y").to_pylist() == [
        "V1",
        "V2",
        "V3",
        "V4",
        "V5",
        None if when == "the-commit-sees-it" else "V6",
    ]


@pytest.mark.parametrize("when", ["published-after-the-widen", "buffered-before-the-widen"])
def test_values_a_widen_accepts_are_stored_by_the_running_writer_not_dead_lettered(
    tmp_path: Path, nats: NatsServer, when: str
) -> None:
    """live19 #1: after `lake table evolve --widen exchange:long`, a running writer kept the
    codec it started with and dead-lettered every `exchange` above the old type's range until
    its own next commit (for good when every message was wide), while the live view and a
    restarted writer stored them. Now the messages it rejects make it look at the catalog
    pointer, and are decoded again with the widened schema before the flush: stored, as the
    live view showed them, whether they came after the widen or were buffered before it."""
    from ingest_support import publish_async, service_running

    from iceberg_lake.ops import metrics
    from iceberg_lake.schema.evolve import WidenColumn, evolve_table
    from iceberg_lake.timetravel.query import Lake

    # One event flushes a batch; rejected messages alone wait for the interval.
    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_BRONZE_BATCH_SIZE="1",
        LAKE_BRONZE_BATCH_SECONDS="1" if when == "published-after-the-widen" else "120",
    )
    table = "bronze.stocks_trades"
    catalog = LakeCatalog(settings)
    consumed = metrics.EVENTS_CONSUMED.labels(table)
    wide = [
        ("market.stocks.trades", encode({**make_event(table, i), "exchange": 70_000}), None)
        for i in range(2, 5)
    ]
    live: list[tuple[int, int]] = []

    def widen() -> None:  # what `lake table evolve bronze.stocks_trades --widen exchange:long` runs
        result = evolve_table(
            catalog.load_table(table), table, [WidenColumn("exchange", "long")], fresh=True
        )
        assert result.committed

    def pairs(rows: Any) -> list[tuple[int, int]]:
        cols = (rows.column("seq").to_pylist(), rows.column("exchange").to_pylist())
        return list(zip(*cols, strict=True))

    def live_rows() -> list[tuple[int, int]]:
        lake = Lake(settings)
        try:
            return pairs(lake.query(f"SELECT seq, exchange FROM {table} ORDER BY seq", live=True))
        finally:
            lake.close()

    async def scenario() -> None:
        async with service_running(settings, [table]) as (service, runner):
            first = [("market.stocks.trades", encode(make_event(table, 1)), None)]
            await publish_async(settings, first)
            await await_until(
                lambda: service.committed_events >= 1, 60, "the first commit", alive=runner
            )
            if when == "published-after-the-widen":
                widen()
                await publish_async(settings, wide)  # every message wide: none commits alone
            else:
                before = consumed._value.get()
                await publish_async(settings, wide)
                await await_until(
                    lambda: consumed._value.get() - before >= 3, 60, "three buffered", alive=runner
                )
                assert service.committed_events == 1
                widen()
                live.extend(await asyncio.to_thread(live_rows))
                last = [("market.stocks.trades", encode(make_event(table, 5)), None)]
                await publish_async(settings, last)  # flushes the batch
            done = 4 if when == "published-after-the-widen" else 5
            await await_until(
                lambda: service.committed_events >= done, 60, "the wide values", alive=runner
            )

    asyncio.run(scenario())
    stored = pairs(catalog.load_table(table).scan().to_arrow().sort_by("seq"))
    wide_rows = [(2, 70_000), (3, 70_000), (4, 70_000)]
    assert stored[:4] == [(1, 4), *wide_rows]
    assert catalog.load_table("bronze.dead_letters").scan().to_arrow().num_rows == 0
    if live:  # the live view before the flush showed what the writer then stored
        assert live == [(1, 4), *wide_rows]


def test_a_field_the_table_lacks_costs_no_table_load_per_commit(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Producers that keep sending a field the table does not store (a vendor's extra field):
    the writer looks at the catalog pointers every 50 ms for a migration, and its own commits
    moved the pointer, so it loaded its table's whole metadata again after every commit."""
    from ingest_support import publish_async

    from iceberg_lake.ingest.service import LakeService

    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="0.05")
    table = "bronze.stocks_trades"
    loads: list[str] = []
    load_table = LakeCatalog.load_table

    def counted(self: LakeCatalog, identifier: str) -> object:
        loads.append(identifier)
        return load_table(self, identifier)

    async def scenario() -> None:
        service = LakeService(settings, [table])
        runner = asyncio.create_task(service.run())
        try:
            for i in range(12):
                event = {**make_event(table, i), "venue_x": "DARK"}
                await publish_async(settings, [("market.stocks.trades", encode(event), None)])
                await await_until(
                    lambda i=i: service.committed_events > i, 60, f"commit {i}", alive=runner
                )
                if i == 1:  # the writer is loaded and has seen the field: count from here
                    monkeypatch.setattr(LakeCatalog, "load_table", counted)
                await asyncio.sleep(0.06)  # past the 50 ms pointer check
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
    reloads = loads.count(table)  # 10 before: one per commit
    assert load_table(LakeCatalog(settings), table).scan().to_arrow().num_rows == 12
    assert reloads == 0, loads


def test_events_stamped_far_ahead_are_dead_lettered_and_a_wide_commit_is_warned_of(
    tmp_path: Path, nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """ops15: any event time in 2000-2100 was taken, so a feed with garbage times (ids, a wrong
    clock) made one partition and one file per event: a 100k-event commit took 131 s and good
    events of the subject fell behind for good. Events stamped more than a day after the lake
    received them are dead letters now; a commit whose events span more than `MANY_HOURS`
    distinct hours (times spread over the past) is warned of once a minute, and one of many
    symbols in one hour is not (review15c: the warning counted partitions)."""
    import logging
    import random

    from iceberg_lake.ingest import writer

    settings = settings_for(tmp_path, nats.url)
    table = "bronze.stocks_trades"
    rng = random.Random(15)
    year = 365 * 86_400 * 10**9
    events = [make_event(table, i) for i in range(40)]
    for e in events[:10]:  # 2-70 years ahead of now: not stored
        e["ts_event_ns"] = time.time_ns() + rng.randrange(2, 70) * year + rng.randrange(year)
    for e in events[10:20]:  # ahead of the publisher's clock by under a day: stored
        e["ts_event_ns"] = time.time_ns() + rng.randrange(3_600 * 10**9)
    publish(settings, [("market.stocks.trades", encode(e), None) for e in events])

    old = writer.MANY_HOURS
    writer.MANY_HOURS = 2  # the 30 stored events span 4-6 hours
    try:
        with caplog.at_level(logging.WARNING, logger="iceberg_lake.ingest.writer"):
            run_until_idle(settings, [table])
    finally:
        writer.MANY_HOURS = old
    stored = LakeCatalog(settings).load_table(table).scan().to_arrow()
    assert sorted(stored.column("seq").to_pylist()) == list(range(10, 40))
    letters = LakeCatalog(settings).load_table("bronze.dead_letters").scan().to_arrow()
    reasons = letters.column("reason").to_pylist()
    assert len(reasons) == 10 and all(
        "days after the lake received the event" in r for r in reasons
    )
    wide = [r.getMessage() for r in caplog.records if "distinct hours" in r.getMessage()]
    assert len(wide) == 1 and "30 rows over" in wide[0], wide

    # Many symbols in one hour: many partitions, no warning.
    caplog.clear()
    now = time.time_ns()
    symbols = [
        {**make_event(table, 100 + i, symbol=f"S{i:04d}"), "ts_event_ns": now} for i in range(8)
    ]
    publish(settings, [("market.stocks.trades", encode(e), None) for e in symbols])
    writer.MANY_HOURS = 2
    try:
        with caplog.at_level(logging.WARNING, logger="iceberg_lake.ingest.writer"):
            run_until_idle(settings, [table])
    finally:
        writer.MANY_HOURS = old
    assert not [r for r in caplog.records if "distinct hours" in r.getMessage()]


def test_a_flush_retried_after_its_first_table_committed_is_not_decoded_again(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review19c: the target table committed, the dead letters' commit hit a catalog blip, and
    a widen landed before the retry: the retry decoded the batch again, committed the table's
    row a second time and lost the message the widen accepted (in neither table). A flush that
    partly committed keeps its verdicts: one row, one dead letter."""
    from ingest_support import publish_async, service_running

    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.schema.evolve import WidenColumn, evolve_table

    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="1000", LAKE_BRONZE_BATCH_SECONDS="2"
    )
    table = "bronze.stocks_trades"
    catalog = LakeCatalog(settings)
    real = writer_module.dead_letter_table
    blips: list[int] = []

    def blip_after_a_widen(payload: Any, schema: Any) -> Any:
        if not blips and payload:
            blips.append(1)
            widened = evolve_table(
                catalog.load_table(table), table, [WidenColumn("exchange", "long")], fresh=True
            )
            assert widened.committed
            raise ConnectionError("catalog blip while writing the dead letters")
        return real(payload, schema)

    monkeypatch.setattr(writer_module, "dead_letter_table", blip_after_a_widen)
    messages = [
        ("market.stocks.trades", encode(make_event(table, 1)), None),
        ("market.stocks.trades", encode({**make_event(table, 2), "exchange": 70_000}), None),
    ]

    async def scenario() -> None:
        async with service_running(settings, [table]) as (service, runner):
            await publish_async(settings, messages)
            await await_until(lambda: bool(blips), 60, "the blip", alive=runner)
            await await_until(
                lambda: _rows_of(settings, "bronze.dead_letters") >= 1,
                60,
                "the dead letter after the retry",
                alive=runner,
            )

    asyncio.run(scenario())
    stored = catalog.load_table(table).scan().to_arrow()
    assert stored.column("seq").to_pylist() == [1]
    assert _rows_of(settings, "bronze.dead_letters") == 1


def _rows_of(settings: Any, table: str) -> int:
    return LakeCatalog(settings).load_table(table).scan().to_arrow().num_rows


def test_a_migration_between_two_tables_of_a_flush_is_followed_not_retried_for_ever(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review19d: one flush of the inferred writer holds a quote and a trade carrying a field
    stocks_trades lacks; stocks_quotes commits, then a migration adds the field before the
    trade's commit. Keeping the partly committed flush as decoded made that commit fail its
    schema check at every retry (the writer stored nothing more); the uncommitted table's rows
    are decoded again, the committed one's are not committed twice."""
    from ingest_support import publish_async, service_running

    from iceberg_lake.engine.nats import INFERRED_TARGET
    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.schema.evolve import AddColumn, evolve_table

    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="1000", LAKE_BRONZE_BATCH_SECONDS="1"
    )
    catalog = LakeCatalog(settings)
    catalog.init()
    trades, quotes = "bronze.stocks_trades", "bronze.stocks_quotes"
    real = writer_module.ConsumerWriter._prepare
    migrated: list[int] = []

    def migrate_then_prepare(self: Any, tid: str, table: Any, chunks: Any) -> Any:
        if tid == trades and not migrated:
            migrated.append(1)
            added = evolve_table(
                catalog.load_table(trades), trades, [AddColumn("venue_x", "string")], fresh=True
            )
            assert added.committed
        return real(self, tid, table, chunks)

    monkeypatch.setattr(writer_module.ConsumerWriter, "_prepare", migrate_then_prepare)
    messages = [
        ("market.other.feed", encode(make_event(quotes, 1)), None),
        ("market.other.feed", encode({**make_event(trades, 2), "venue_x": "DARK"}), None),
    ]

    async def scenario() -> None:
        async with service_running(settings, [INFERRED_TARGET]) as (service, runner):
            await publish_async(settings, messages)
            await await_until(
                lambda: _rows_of(settings, trades) >= 1, 60, "the trade", alive=runner
            )

    asyncio.run(scenario())
    stored = catalog.load_table(trades).scan().to_arrow()
    assert stored.select(["seq", "venue_x"]).to_pylist() == [{"seq": 2, "venue_x": "DARK"}]
    assert _rows_of(settings, quotes) == 1


def test_a_lost_commit_response_then_a_widen_keeps_the_message_once(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review19e: the target table's commit landed, its response was lost, a widen landed and
    the table refresh failed once: the retry took the committed table out of the flush without
    recording its watermark, and the message the widen accepted was in neither table. It is
    stored once or dead-lettered once, and no row twice."""
    import contextlib

    from ingest_support import publish_async, service_running

    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.schema.evolve import WidenColumn, evolve_table

    settings = settings_for(
        tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="1000", LAKE_BRONZE_BATCH_SECONDS="2"
    )
    table = "bronze.stocks_trades"
    catalog = LakeCatalog(settings)
    catalog.init()
    real_append = writer_module.watermarked_append
    real_refresh = writer_module.ConsumerWriter._refresh_tables
    state = {"lost": False, "refresh_fails": False}

    @contextlib.contextmanager
    def response_lost(target: Any, **kwargs: Any) -> Any:
        with real_append(target, **kwargs) as app:
            yield app
        if not state["lost"] and target.name()[-1] == "stocks_trades":
            state["lost"] = state["refresh_fails"] = True
            widened = evolve_table(
                catalog.load_table(table), table, [WidenColumn("exchange", "long")], fresh=True
            )
            assert widened.committed
            raise ConnectionError("response lost")

    def refresh_fails_once(self: Any) -> None:
        if state["refresh_fails"]:
            state["refresh_fails"] = False
            self._reload_schemas()  # the writer's schema check got through meanwhile
            raise ConnectionError("catalog blip on refresh")
        real_refresh(self)

    monkeypatch.setattr(writer_module, "watermarked_append", response_lost)
    monkeypatch.setattr(writer_module.ConsumerWriter, "_refresh_tables", refresh_fails_once)
    messages = [
        ("market.stocks.trades", encode(make_event(table, 1)), None),
        ("market.stocks.trades", encode({**make_event(table, 2), "exchange": 70_000}), None),
    ]

    def settled() -> bool:
        stored = _seqs(settings, table)
        return 1 in stored and (2 in stored or 2 in _seqs(settings, "bronze.dead_letters"))

    async def scenario() -> None:
        async with service_running(settings, [table]) as (service, runner):
            await publish_async(settings, messages)
            await await_until(settled, 60, "seq 1 stored and seq 2 kept", alive=runner)

    asyncio.run(scenario())
    stored = _seqs(settings, table)
    letters = _seqs(settings, "bronze.dead_letters")
    assert sorted(stored) == sorted(set(stored)) and 1 in stored
    assert (2 in stored) != (2 in letters)


def _seqs(settings: Any, table: str) -> list[int]:
    rows = LakeCatalog(settings).load_table(table).scan().to_arrow()
    column = "stream_seq" if table == "bronze.dead_letters" else "seq"
    return rows.column(column).to_pylist()


@pytest.mark.parametrize(
    ("batched", "compressed"),
    [(False, False), (True, False), (False, True)],
    ids=["message", "event", "compressed"],
)
def test_a_stop_between_a_tables_commit_and_its_dead_letters_then_a_widen_keeps_the_letter(
    tmp_path: Path,
    nats: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    batched: bool,
    compressed: bool,
) -> None:
    """review19e #2: the target table committed a flush whose message was rejected (a value its
    column could not hold), the dead letters' commit failed until the stop (as a kill between the
    two commits), and a widen landed before the restart. The restart read the message again: the
    widened schema accepted it, the table's watermark skipped its row, and no dead letter was
    made, so it was in neither table. It keeps its first verdict, a rejected event of a batched
    message too (the message's other events stored once), and a list stored compressed, as a
    long one is (review20: the span a long list once became dead-lettered stored messages)."""
    from ingest_support import publish_async, service_running

    from iceberg_lake.engine.nats import consumer_target
    from iceberg_lake.exceptions import ShutdownTimeoutError
    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.schema.evolve import WidenColumn, evolve_table

    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_BRONZE_BATCH_SIZE="1000",
        LAKE_BRONZE_BATCH_SECONDS="1",
        LAKE_SHUTDOWN_GRACE_SECONDS="2",
    )
    table = "bronze.stocks_trades"
    catalog = LakeCatalog(settings)
    catalog.init()
    real = writer_module.dead_letter_table
    state = {"down": True}

    def down_until_the_restart(payload: Any, schema: Any) -> Any:
        if state["down"] and payload:
            raise ConnectionError("catalog down while writing the dead letters")
        return real(payload, schema)

    monkeypatch.setattr(writer_module, "dead_letter_table", down_until_the_restart)
    if compressed:
        monkeypatch.setattr(writer_module, "REJECTED_TEXT_PLAIN_MAX", 0)
    wide = {**make_event(table, 2), "exchange": 70_000}
    second = encode([make_event(table, 4), wide]) if batched else encode(wide)

    async def first_run() -> None:
        with pytest.raises(ShutdownTimeoutError):
            async with service_running(settings, [table]) as (service, runner):
                await publish_async(
                    settings,
                    [
                        ("market.stocks.trades", encode(make_event(table, 1)), None),
                        ("market.stocks.trades", second, None),
                    ],
                )
                await await_until(
                    lambda: _rows_of(settings, table) >= 1, 60, "seq 1 committed", alive=runner
                )

    async def restart() -> None:
        async with service_running(settings, [table]) as (service, runner):
            await publish_async(
                settings, [("market.stocks.trades", encode(make_event(table, 3)), None)]
            )
            await await_until(
                lambda: 3 in _seqs(settings, table) and 2 in _seqs(settings, "bronze.dead_letters"),
                60,
                "seq 3 stored and seq 2 dead-lettered",
                alive=runner,
            )
            await publish_async(
                settings, [("market.stocks.trades", encode(make_event(table, 5)), None)]
            )
            await await_until(lambda: 5 in _seqs(settings, table), 60, "seq 5", alive=runner)

    asyncio.run(first_run())
    stored = [1, 4] if batched else [1]
    assert sorted(_seqs(settings, table)) == stored
    assert _seqs(settings, "bronze.dead_letters") == []
    stream, consumer, _ = consumer_target(table)
    key = f"lake.rejected.{stream}.{consumer}"
    recorded = catalog.load_table(table).properties.get(key)
    widened = evolve_table(
        catalog.load_table(table), table, [WidenColumn("exchange", "long")], fresh=True
    )
    assert widened.committed
    state["down"] = False
    asyncio.run(restart())
    assert sorted(_seqs(settings, table)) == sorted([*stored, 3, 5])
    letters = catalog.load_table("bronze.dead_letters").scan().to_arrow().to_pylist()
    event = 1 if batched else None
    assert [(d["stream_seq"], d["event_index"], d["target_table"]) for d in letters] == [
        (2, event, table)
    ]
    assert "first read" in letters[0]["reason"]
    assert json.loads(letters[0]["raw"]) == wide
    # Recorded with the watermark, in the table's commit: message 2 (its event 1) was rejected;
    # emptied by the next flush without rejects (message 4, seq 5), so it never applies again.
    if compressed:
        assert recorded is not None and recorded.startswith("2:z")
    else:
        assert recorded == ("2:2.1" if batched else "2:2")
    assert catalog.load_table(table).properties.get(key) == "4:"
