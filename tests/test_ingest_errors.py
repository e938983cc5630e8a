"""Errors by kind in the writer: transient ones are retried, rows the store refuses are
dead-lettered and the rest committed (the consumer never stalls). Budget: about 5 s."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from ingest_support import count_rows, make_event, settings_for
from pyiceberg.exceptions import CommitFailedException

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.exceptions import (
    CatalogUnavailableError,
    CommitConflictError,
    DataRejectedError,
)
from iceberg_lake.ingest.batch import MicroBatch
from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.ingest.writer import ConsumerWriter, classify
from iceberg_lake.tables import registry

TABLE = "bronze.stocks_trades"


def test_classify_by_kind() -> None:
    assert isinstance(classify(OSError(errno.ENAMETOOLONG, "File name too long"), "x"),
                      DataRejectedError)  # fmt: skip
    assert isinstance(classify(OSError("AWS Error NETWORK_CONNECTION"), "x"),
                      CatalogUnavailableError)  # fmt: skip
    assert isinstance(classify(OSError(errno.ECONNREFUSED, "refused"), "x"),
                      CatalogUnavailableError)  # fmt: skip
    s3 = OSError(
        "When initiating multiple part upload for key 'w/symbol=YYY/f.parquet' in bucket 'b': AWS"
        " Error UNKNOWN (HTTP status 400) during CreateMultipartUpload operation: Unable to parse"
        " ExceptionName: KeyTooLongError Message: Your key is too long."  # SeaweedFS, measured
    )
    assert isinstance(classify(s3, "x"), DataRejectedError)
    assert isinstance(classify(CommitFailedException("conflict"), "x"), CommitConflictError)
    assert isinstance(classify(pa.ArrowInvalid("cannot cast"), "x"), DataRejectedError)


def _rows(n: int, long_symbols: set[int]) -> pa.Table:
    d = registry().get(TABLE)
    codec = TableCodec(TABLE, d.iceberg_schema(), d.partition_key)
    events = [make_event(TABLE, i) for i in range(n)]
    table = codec.decode([json.dumps(e).encode() for e in events], recv_ns=1).table
    # Bypass decoding (which may refuse long partition values up front): the writer's own
    # handling of a store that refuses a value is under test.
    symbols = [("Y" * 300 if i in long_symbols else s) for i, s in
               enumerate(table.column("symbol").to_pylist())]  # fmt: skip
    return table.set_column(
        table.schema.get_field_index("symbol"), "symbol", pa.array(symbols, pa.string())
    )


def test_partition_value_the_store_cannot_hold_is_dead_lettered(tmp_path: Path, duck) -> None:
    settings = settings_for(tmp_path, "nats://127.0.0.1:1")  # no bus needed: no ack, no lease
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    n, bad = 40, {3, 17}
    batch = MicroBatch()
    batch.add_messages(n, 1, n, None)
    batch.add_rows(TABLE, _rows(n, bad), np.arange(1, n + 1, dtype=np.int64))

    async def commit() -> None:
        await asyncio.wait_for(writer._commit(batch), 60)

    asyncio.run(commit())  # today: retried forever, the consumer stalls
    assert count_rows(duck, settings, TABLE) == n - len(bad)
    letters = duck.sql(
        "SELECT stream_seq, reason, raw FROM "
        f"iceberg_scan('{LakeCatalog(settings).load_table('bronze.dead_letters').metadata_location}')"
        " ORDER BY stream_seq"
    ).fetchall()
    assert [r[0] for r in letters] == [4, 18]
    assert all("too long" in r[1].lower() for r in letters)
    assert json.loads(bytes(letters[0][2]))["seq"] == 3
    props = LakeCatalog(settings).load_table(TABLE).properties
    assert props[writer.wm_key] == str(n)
    assert writer.rejected_rows == 2


def test_a_whole_batch_refused_goes_to_dead_letters(tmp_path: Path, duck) -> None:
    settings = settings_for(tmp_path, "nats://127.0.0.1:1")
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    batch = MicroBatch()
    batch.add_messages(5, 1, 5, None)
    batch.add_rows(TABLE, _rows(5, set(range(5))), np.arange(1, 6, dtype=np.int64))
    asyncio.run(asyncio.wait_for(writer._commit(batch), 60))
    assert count_rows(duck, settings, TABLE) == 0
    assert count_rows(duck, settings, "bronze.dead_letters") == 5


def _two_writers(tmp_path: Path) -> tuple[Any, ConsumerWriter, ConsumerWriter]:
    """A new lake and two writers of one consumer (no bus: no ack, no lease), both loaded."""
    settings = settings_for(tmp_path, "nats://127.0.0.1:1")
    LakeCatalog(settings).init()
    writers = [ConsumerWriter(settings, TABLE, js=None) for _ in range(2)]  # type: ignore[arg-type]
    for w in writers:
        w._load()
    return settings, writers[0], writers[1]


def test_a_stale_writer_is_fenced_by_the_watermark(tmp_path: Path, duck) -> None:
    """Two writers of one consumer (e.g. a paused ex-holder of the lease): the second commit
    over the same watermark is refused, nothing is duplicated."""
    import pytest

    from iceberg_lake.exceptions import WriterFencedError

    settings, old, new = _two_writers(tmp_path)

    new._commit_sync(_batch(1, 10))
    with pytest.raises(WriterFencedError):
        old._commit_sync(_batch(1, 10))
    assert count_rows(duck, settings, TABLE) == 10


def _batch(first: int, n: int) -> MicroBatch:
    b = MicroBatch()
    b.add_messages(n, first, first + n - 1, None)
    b.add_rows(TABLE, _rows(n, set()), np.arange(first, first + n, dtype=np.int64))
    return b


def test_a_writer_without_a_lease_moving_the_watermark_forward_stops_the_writer(
    tmp_path: Path, duck
) -> None:
    """Fenced while holding its lease (`leases=None` counts as held), a writer asks who moved
    the watermark. Forward: a writer that takes no lease (iceberg_lake 0.1 during a rolling
    upgrade) commits for the consumer; re-reading from its watermark skipped what this writer
    had fetched (the upgrade audit lost 53-123 events that way), so it stops with one line.
    Back: an operator's `reset-position`; it reads on from there."""
    import pytest

    from iceberg_lake.exceptions import ForeignWriterError

    settings, mine, foreign = _two_writers(tmp_path)
    foreign._commit_sync(_batch(1, 10))  # the lease-less writer committed seq 1..10

    async def commit_and_wait(writer: ConsumerWriter, batch: MicroBatch) -> None:
        writer.commit_task = asyncio.ensure_future(writer._commit(batch))
        await asyncio.wait_for(writer._wait_commit(), 60)

    with pytest.raises(ForeignWriterError, match=r"moved from 0 to 10 while this writer held"):
        asyncio.run(commit_and_wait(mine, _batch(11, 5)))
    assert count_rows(duck, settings, TABLE) == 10

    # The watermark set back (what `lake maintain reset-position` does): read on from it.
    reader = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    reader._load()
    table = LakeCatalog(settings).load_table(TABLE)
    with table.transaction() as tx:
        tx.set_properties({reader.wm_key: "0"})
    asyncio.run(commit_and_wait(reader, _batch(11, 5)))
    assert reader.reset_needed and reader.reload_needed
    assert count_rows(duck, settings, TABLE) == 10


def test_a_commit_fenced_while_the_writer_fetched_is_handled_not_dropped(
    tmp_path: Path, duck, caplog: pytest.LogCaptureFixture
) -> None:
    """ops19 #5: the running commit is fenced (the watermark set back under the writer) while
    the writer fetches; the next flush comes due before the loop looked at the commit. The
    flush waits: the fence is handled by `_wait_commit` (re-read from the new watermark), and
    asyncio never logs "Task exception was never retrieved" for the fenced commit (the flush
    replaced it unawaited, and `lake serve`'s log showed the error and a traceback)."""
    import gc
    import logging

    settings, mine, _other = _two_writers(tmp_path)
    mine._commit_sync(_batch(1, 10))
    table = LakeCatalog(settings).load_table(TABLE)
    with table.transaction() as tx:
        tx.set_properties({mine.wm_key: "0"})  # an operator's reset-position

    async def fenced_during_a_fetch() -> None:
        mine.commit_task = asyncio.ensure_future(mine._commit(_batch(11, 5)))
        await asyncio.wait([mine.commit_task], timeout=60)  # the fetch: nothing retrieved
        mine.batch = _batch(16, 5)
        mine._maybe_flush(force=True)
        await asyncio.wait_for(mine._wait_commit(), 60)

    caplog.set_level(logging.ERROR, logger="asyncio")
    asyncio.run(fenced_during_a_fetch())
    gc.collect()

    assert "never retrieved" not in caplog.text, caplog.text
    assert mine.reset_needed and mine.reload_needed
    assert mine.batch.messages == 5, "no commit of the next batch against the stale watermark"
    assert LakeCatalog(settings).load_table(TABLE).properties[mine.wm_key] == "0"
    assert count_rows(duck, settings, TABLE) == 10


def test_a_writers_own_commit_landed_with_its_answer_lost_is_not_a_foreign_writer(
    tmp_path: Path, duck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog connection drops after the commit landed, and the refresh after it fails
    too: the retry, on a stale view, is fenced by this writer's own watermark. That is not a
    writer without a lease (found by review): the writer reads on from the watermark, and the
    batch is stored once."""
    import sqlalchemy.exc
    from pyiceberg.catalog.sql import SqlCatalog

    from iceberg_lake.ingest import writer as writer_mod

    settings, mine, _other = _two_writers(tmp_path)
    monkeypatch.setattr(writer_mod, "BACKOFF_MIN_SECONDS", 0.01)
    mine._commit_sync(_batch(1, 10))
    real_commit, real_refresh = SqlCatalog.commit_table, ConsumerWriter._refresh_tables
    calls = {"commit": 0, "refresh": 0}

    def commit_then_lose_the_answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["commit"] += 1
        out = real_commit(self, *args, **kwargs)
        if calls["commit"] == 1:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("connection closed"))
        return out

    def refresh_fails_once(self: ConsumerWriter) -> None:
        calls["refresh"] += 1
        if calls["refresh"] == 1:
            raise CatalogUnavailableError("refreshing tables: catalog database unavailable")
        real_refresh(self)

    monkeypatch.setattr(SqlCatalog, "commit_table", commit_then_lose_the_answer)
    monkeypatch.setattr(ConsumerWriter, "_refresh_tables", refresh_fails_once)

    async def commit_and_wait() -> None:
        mine.commit_task = asyncio.ensure_future(mine._commit(_batch(11, 5)))
        await asyncio.wait_for(mine._wait_commit(), 60)

    asyncio.run(commit_and_wait())  # no ForeignWriterError
    assert calls["commit"] >= 2 and mine.reset_needed
    assert count_rows(duck, settings, TABLE) == 15
    table = LakeCatalog(settings).load_table(TABLE)
    assert table.properties[mine.wm_key] == "15"
    # The landed commit's data files are still there (they were deleted as "never committed":
    # a count from the manifests did not notice; found by the production chaos audit).
    assert table.scan().to_arrow().num_rows == 15


def test_a_previous_lease_holders_late_commit_is_read_on_from(tmp_path: Path, duck, nats) -> None:
    """A holder whose lease ran out while it uploaded commits after its successor loaded: the
    successor's commit is fenced by a forward watermark, but that commit names its lease
    (`lake.writer-lease`), so it is no lease-less writer: the successor reads on from it (found
    by review: it stopped `lake serve` with ForeignWriterError). Real leases (NATS KV)."""
    from iceberg_lake import properties
    from iceberg_lake.engine import nats as bus

    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()

    async def scenario() -> None:
        nc = await bus.connect(settings)
        try:
            bucket = await bus.lease_bucket(bus.jetstream(nc, settings), settings)
            old = ConsumerWriter(settings, TABLE, js=None, leases=bucket, holder="old:1")  # type: ignore[arg-type]
            new = ConsumerWriter(settings, TABLE, js=None, leases=bucket, holder="new:2")  # type: ignore[arg-type]
            old._load()
            assert await old.lease.try_acquire()  # type: ignore[union-attr]
            real_prepare = old._prepare

            def successor_loads_meanwhile(*args: Any, **kwargs: Any) -> Any:
                new._load()  # the successor starts from the watermark before old's commit
                return real_prepare(*args, **kwargs)

            old._prepare = successor_loads_meanwhile  # type: ignore[method-assign]
            await asyncio.wait_for(old._commit(_batch(1, 10)), 60)  # lands: watermark 10
            await old.lease.release()  # type: ignore[union-attr]
            assert await new.lease.try_acquire()  # type: ignore[union-attr]
            new.commit_task = asyncio.ensure_future(new._commit(_batch(1, 15)))
            await asyncio.wait_for(new._wait_commit(), 60)  # no ForeignWriterError
            assert new.reset_needed
        finally:
            await nc.close()

    asyncio.run(scenario())
    assert count_rows(duck, settings, TABLE) == 10
    snap = LakeCatalog(settings).load_table(TABLE).current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary[properties.WRITER_LEASE] == "old:1"


def test_a_leased_writer_stands_by_while_a_lease_less_writer_is_active(
    tmp_path: Path, nats, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit without a lease (iceberg_lake 0.1) less than `LEASELESS_QUIET_SECONDS` ago: the
    leased writer gives the lease back and stands by instead of resetting the consumer under it
    (a 0.2 writer restarted beside a running 0.1 one lost 625-641 events per session in the
    upgrade audit); once that writer is quiet it takes over. Real leases (NATS KV)."""
    from iceberg_lake.engine import nats as bus
    from iceberg_lake.ingest import writer as writer_mod

    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    old = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    old._load()
    old._commit_sync(_batch(1, 10))  # a lease-less commit, just now

    async def scenario() -> None:
        nc = await bus.connect(settings)
        try:
            bucket = await bus.lease_bucket(bus.jetstream(nc, settings), settings)
            new = ConsumerWriter(settings, TABLE, js=None, leases=bucket, holder="new:1")  # type: ignore[arg-type]
            stop = asyncio.Event()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(new._acquire(stop), 1.5)
            assert new.lease is not None and not new.lease.held()
            monkeypatch.setattr(writer_mod, "LEASELESS_QUIET_SECONDS", 0.0)
            assert await asyncio.wait_for(new._acquire(stop), 10)
            assert new.lease.held()
        finally:
            await nc.close()

    asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("a writer without a lease" in m and "standing by" in m for m in said), said


def test_a_commit_failing_at_once_during_shutdown_still_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a stop is asked, the back-off between commit attempts used to end at once (it
    waited on the stop event, already set): a commit that fails fast was retried thousands of
    times within the grace period (found by the upgrade re-audit). Now it backs off, within the
    grace period, and then gives up without acking."""
    from iceberg_lake.exceptions import ShutdownTimeoutError, TransientError

    settings = settings_for(tmp_path, "nats://127.0.0.1:1", LAKE_SHUTDOWN_GRACE_SECONDS="1.5")
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    attempts: list[int] = []

    def fails_at_once(batch: MicroBatch) -> None:
        attempts.append(1)
        raise TransientError("catalog database unavailable")

    monkeypatch.setattr(writer, "_commit_sync", fails_at_once)

    async def stopping() -> None:
        writer._stop = asyncio.Event()
        writer._stop.set()
        await asyncio.wait_for(writer._commit(_batch(1, 5)), 30)

    with pytest.raises(ShutdownTimeoutError):
        asyncio.run(stopping())
    assert 2 <= len(attempts) < 20, len(attempts)


def test_the_pre_flush_check_reads_pointers_and_loads_only_a_moved_table(
    tmp_path: Path, duck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a flush records the position, the tables it does not commit to (here the dead
    letters) must still hold the watermark this writer saw. An unchanged metadata pointer says
    so without loading the table (a load per table and flush cost 1-4 ms; review10); a pointer
    moved by a commit that kept the watermark (maintenance) is loaded once; a watermark moved
    back fences the writer."""
    from iceberg_lake.exceptions import WriterFencedError

    settings = settings_for(tmp_path, "nats://127.0.0.1:1")
    catalog = LakeCatalog(settings)
    catalog.init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    loads: list[str] = []
    load = writer.catalog.load_table

    def counting_load(identifier: str) -> Any:
        loads.append(identifier)
        return load(identifier)

    monkeypatch.setattr(writer.catalog, "load_table", counting_load)
    dead_letters = "bronze.dead_letters"
    writer._commit_sync(_batch(1, 10))
    writer._commit_sync(_batch(11, 10))
    assert dead_letters not in loads, loads

    # A maintenance commit on the dead letters (a property; the watermark kept).
    catalog.load_table(dead_letters).transaction().set_properties(
        note="maintained"
    ).commit_transaction()
    writer._commit_sync(_batch(21, 10))
    writer._commit_sync(_batch(31, 10))
    assert loads.count(dead_letters) == 1
    assert count_rows(duck, settings, TABLE) == 40

    # The writer's watermark on the dead letters moved by someone else (a restore, a writer).
    catalog.load_table(dead_letters).transaction().set_properties(
        {writer.wm_key: "7"}
    ).commit_transaction()
    with pytest.raises(WriterFencedError, match="bronze.dead_letters: watermark 7"):
        writer._commit_sync(_batch(41, 10))
    assert count_rows(duck, settings, TABLE) == 40


def test_an_unreadable_untouched_table_stops_the_flush_with_its_line_not_a_retry(
    tmp_path: Path, duck
) -> None:
    """The pre-flush check of the tables a flush does not write (here the dead letters): a
    current metadata file damaged in place is not even read (its pointer has not moved, and
    the trades flow); a pointer moved to a file that cannot be read is the corrupt-metadata
    error that stops `lake serve` with one line, as everywhere. It was classified as a
    transient error and retried forever, so no table of the writer committed (review11)."""
    import shutil
    import sqlite3
    from urllib.parse import urlparse

    from iceberg_lake.exceptions import CorruptMetadataError

    settings = settings_for(tmp_path, "nats://127.0.0.1:1")
    catalog = LakeCatalog(settings)
    catalog.init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    writer._commit_sync(_batch(1, 10))
    current = Path(urlparse(catalog.load_table("bronze.dead_letters").metadata_location).path)
    good = current.read_bytes()
    current.write_bytes(good[: len(good) // 2])  # damaged in place
    writer._commit_sync(_batch(11, 10))
    assert count_rows(duck, settings, TABLE) == 20
    current.write_bytes(good)

    damaged = current.with_name("00099-restored.metadata.json")
    shutil.copy(current, damaged)
    damaged.write_bytes(good[: len(good) // 2])
    with sqlite3.connect(settings.data_dir / "catalog.db") as con:
        con.execute(
            "UPDATE iceberg_tables SET metadata_location = ? WHERE table_name = 'dead_letters'",
            (f"file://{damaged}",),
        )
    with pytest.raises(CorruptMetadataError, match="bronze.dead_letters"):
        writer._commit_sync(_batch(21, 10))
    assert count_rows(duck, settings, TABLE) == 20


def test_a_committed_tables_metadata_gone_for_good_stops_the_commit_with_its_line(
    tmp_path: Path,
) -> None:
    """The catalog of a running writer restored from a backup older than the table's kept
    metadata versions: the catalog names a metadata file that no longer exists. Each retry
    failed on the missing file as "storage unavailable", and the reload that says what happened
    had its error suppressed, so serve retried forever; a start stops at once with the line
    (ops10). The commit now stops with the same one line."""
    import sqlite3
    from urllib.parse import urlparse

    from iceberg_lake.exceptions import CorruptMetadataError

    settings = settings_for(tmp_path, "nats://127.0.0.1:1")
    LakeCatalog(settings).init()
    writer = ConsumerWriter(settings, TABLE, js=None)  # type: ignore[arg-type]
    writer._load()
    writer._commit_sync(_batch(1, 10))
    current = Path(urlparse(writer.tables[TABLE].metadata_location).path)
    gone = current.with_name("00000-restored-from-an-old-backup.metadata.json")
    with sqlite3.connect(settings.data_dir / "catalog.db") as con:
        con.execute(
            "UPDATE iceberg_tables SET metadata_location = ? WHERE table_name = 'stocks_trades'",
            (f"file://{gone}",),
        )

    async def commit() -> None:
        await asyncio.wait_for(writer._commit(_batch(11, 10)), 30)

    with pytest.raises(CorruptMetadataError, match="does not exist"):
        asyncio.run(commit())


def test_a_stale_schema_check_racing_a_commit_is_corrected_at_the_next_check(
    tmp_path: Path,
) -> None:
    """review15: the migration check (thread A) loads the table, someone else's commit and a
    migration land, the writer's own commit (thread B) follows the migration from its
    response and records its pointer, then A follows the older metadata it loaded: the codec
    went back to the old schema with the catalog's current pointer recorded, so no check
    loaded again until the next commit (up to the flush interval, 30 s by default). The pointer
    is now recorded with the schema followed, so the next check corrects it."""
    from pyiceberg.types import StringType

    settings, writer, _ = _two_writers(tmp_path)
    writer._reload_schemas()
    other = LakeCatalog(settings)
    with other.load_table(TABLE).transaction() as tx:  # e.g. maintenance: same schema
        tx.set_properties({"review15": "x"})
    old_id = writer.codecs[TABLE].schema_id
    follow = writer._follow_schema
    raced: list[int] = []

    def racing_follow(tid: str, table: Any) -> bool:
        if not raced and table.schema().schema_id == old_id:
            # A has loaded (before the migration); B commits after it, in between.
            with other.load_table(TABLE).update_schema() as update:
                update.add_column("venue_x", StringType())
            asyncio.run(asyncio.wait_for(writer._commit(_batch(1, 1)), 60))
            raced.append(writer.codecs[TABLE].schema_id)
        return follow(tid, table)

    writer._follow_schema = racing_follow  # type: ignore[method-assign]
    writer._reload_schemas()  # A
    new_id = other.load_table(TABLE).schema().schema_id
    assert raced == [new_id] and writer.codecs[TABLE].schema_id == old_id  # the race
    writer._last_schema_check = 0.0
    assert writer._reload_schemas()  # the next check loads again and follows the migration
    assert writer.codecs[TABLE].schema_id == new_id

    # The other order: the check follows the migration, then a commit's older response is
    # followed late (it landed before the migration). Corrected at the next check too (before
    # this change it was not: the check's pointer stayed recorded with the older schema).
    older = other.load_table(TABLE)
    with other.load_table(TABLE).update_schema() as update:
        update.add_column("venue_y", StringType())
    writer._last_schema_check = 0.0
    assert writer._reload_schemas()
    newest = other.load_table(TABLE).schema().schema_id
    writer._follow_schema(TABLE, older)  # the late response
    assert writer.codecs[TABLE].schema_id == new_id
    writer._last_schema_check = 0.0
    assert writer._reload_schemas() and writer.codecs[TABLE].schema_id == newest
