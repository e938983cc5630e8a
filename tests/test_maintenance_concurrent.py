"""Maintenance while writers commit: orphan removal, snapshot expiry and small-file compaction
never break a table, lose or duplicate a row, and late rows never stall compaction.

Budget: about 20 s on an idle 2-core machine (a `lake serve` process or a writer thread, a few
maintenance rounds).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from ingest_support import (
    SUBJECTS,
    count_rows,
    encode,
    make_event,
    settings_env,
    settings_for,
    start_serve,
)
from pyiceberg.table import Table
from support.wait import wait_until
from table_rows import make_rows
from typer.testing import CliRunner

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import CommitConflictError, LakeError
from iceberg_lake.ops import maintenance
from iceberg_lake.ops.maintenance import TableMaintenance
from iceberg_lake.testing import NatsServer

TABLES = ("bronze.stocks_trades", "bronze.futures_trades", "bronze.stocks_quotes")
runner = CliRunner()


def _local(uri: str) -> str:
    return urlparse(uri).path


def referenced_files(table: Table) -> set[str]:
    """Every file the table's current metadata and its metadata log name (independent walk)."""
    out = {_local(table.metadata_location)}
    out |= {_local(e.metadata_file) for e in table.metadata.metadata_log}
    manifests = {}
    for snap in table.metadata.snapshots:
        out.add(_local(snap.manifest_list))
        manifests.update({m.manifest_path: m for m in snap.manifests(table.io)})
    for path, manifest in manifests.items():
        out.add(_local(path))
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
            out.add(_local(entry.data_file.file_path))
    return out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    LakeCatalog(load_settings({"LAKE_DATA_DIR": str(path)})).init()
    return path


class Writer(threading.Thread):
    """Appends small batches to several tables until stopped; counts rows per table."""

    def __init__(self, data_dir: Path, tables: tuple[str, ...], action: Callable | None = None):
        super().__init__(daemon=True)
        self.catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
        self.tables = tables
        self.rows = dict.fromkeys(tables, 0)
        self.commits = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.action = action

    def run(self) -> None:
        try:
            loaded = {t: self.catalog.load_table(t) for t in self.tables}
            while not self.stop.is_set():
                for ident, table in loaded.items():
                    table.append(make_rows(table, self.rows[ident], 20))
                    self.rows[ident] += 20
                    self.commits += 1
                    if self.action is not None:
                        self.action(table)
        except BaseException as exc:  # reported by the test
            self.error = exc


def _plant(location: str, name: str, age: timedelta | None) -> Path:
    path = Path(_local(location)) / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind by a crashed writer")
    if age is not None:
        old = time.time() - age.total_seconds()
        os.utime(path, (old, old))
    return path


class Publisher(threading.Thread):
    """Publishes valid events for several tables to JetStream until stopped (acked: `sent` is
    exactly what the stream holds)."""

    def __init__(self, settings: Settings, tables: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.tables = tables
        self.sent = dict.fromkeys(tables, 0)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _publish(self) -> None:
        nc = await bus.connect(self.settings, name="test-publisher")
        try:
            js = bus.jetstream(nc, self.settings)
            await bus.ensure_streams(js, self.settings)
            while not self.stop.is_set():
                for ident in self.tables:
                    for _ in range(10):
                        event = make_event(ident, self.sent[ident])
                        await js.publish(SUBJECTS[ident], encode(event))
                        self.sent[ident] += 1
                # ~50 events/s per table: a commit every batch interval (1 s), not hundreds
                # of snapshots for the rounds (and the test's own walks) to read.
                await asyncio.sleep(0.2)
        finally:
            await nc.close()


def test_remove_orphans_0s_force_in_a_loop_while_lake_serve_commits_keeps_every_table_readable(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    """`remove-orphans --older-than 0s --force` at least six times while a real `lake serve`
    commits the events a publisher sends to JetStream: nothing referenced is deleted, every table
    stays readable, and every event is stored exactly once. Budget ~20 s."""
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="1")
    catalog = LakeCatalog(settings)
    catalog.init()
    env = settings_env(settings)
    refused = runner.invoke(app, ["maintain", "remove-orphans", "--older-than", "0s"], env=env)
    assert refused.exit_code == 1 and "--force" in refused.output
    assert refused.output.strip().count("\n") == 0 and "Traceback" not in refused.output

    publisher = Publisher(settings, TABLES)
    publisher.start()
    short = ",".join(t.split(".", 1)[1] for t in TABLES)
    proc = start_serve(settings, tmp_path / "serve.log", "--tables", short)

    def running() -> bool:
        return proc.poll() is None and publisher.error is None

    try:

        def snapshots() -> list[int]:
            return [len(catalog.load_table(t).metadata.snapshots) for t in TABLES]

        wait_until(lambda: min(snapshots()) >= 1, 60, "commits by lake serve", alive=running)
        before = snapshots()

        def committed_meanwhile() -> bool:
            return all(b < d for b, d in zip(before, snapshots(), strict=True))

        # At least six rounds, and on until every table has committed during them: six fast
        # rounds can end inside one batch interval (the race this test is about needs both).
        deadline = time.monotonic() + 30
        i = 0
        while i < 6 or (not committed_meanwhile() and time.monotonic() < deadline):
            table = catalog.load_table(TABLES[i % len(TABLES)])
            old = _plant(table.location(), f"00000-{i}-crashed.parquet", timedelta(days=2))
            # written after the cutoff (the run's start): kept whatever the grace
            fresh = _plant(table.location(), f"00000-{i}-inflight.parquet", -timedelta(minutes=1))
            out = runner.invoke(
                app,
                ["maintain", "remove-orphans", "--older-than", "0s", "--force", "-o", "json"],
                env=env,
            )
            assert out.exit_code == 0, out.output
            assert not old.exists(), "an old orphan is removed"
            assert fresh.exists(), "a file written during the run is kept"
            for ident in TABLES:
                t = catalog.load_table(ident)
                missing = {p for p in referenced_files(t) if not Path(p).exists()}
                # The writer itself drops metadata files that fall off the metadata log
                # (write.metadata.previous-versions-max): only what fresh metadata names counts.
                t.refresh()
                missing &= {_local(e.metadata_file) for e in t.metadata.metadata_log} | (
                    referenced_files(t) - {_local(e.metadata_file) for e in t.metadata.metadata_log}
                )
                assert not missing, f"{ident}: referenced files deleted: {sorted(missing)[:3]}"
                (n,) = duck.sql(
                    f"SELECT count(*) FROM iceberg_scan('{t.metadata_location}')"
                ).fetchone()
                assert n == t.scan().to_arrow().num_rows > 0
            assert running(), f"lake serve: {proc.poll()}, publisher: {publisher.error!r}"
            i += 1
        assert committed_meanwhile(), "serve committed meanwhile"
        publisher.stop.set()
        publisher.join(timeout=30)
        assert publisher.error is None, repr(publisher.error)

        def all_stored() -> bool:
            return all(count_rows(duck, settings, t) >= publisher.sent[t] for t in TABLES)

        wait_until(all_stored, 60, "every published event committed", alive=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        publisher.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for ident in TABLES:
        t = catalog.load_table(ident)
        assert t.scan().to_arrow().num_rows == publisher.sent[ident]
        (n,) = duck.sql(f"SELECT count(*) FROM iceberg_scan('{t.metadata_location}')").fetchone()
        assert n == publisher.sent[ident]


def test_remove_orphans_grace_in_flight_metadata_and_unreadable_tables(data_dir: Path) -> None:
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    ident = TABLES[0]
    table = catalog.load_table(ident)
    for i in range(3):
        table.append(make_rows(table, i * 10, 10))
    location = table.location()
    metadata_dir = Path(_local(location)) / "metadata"
    just_written = _plant(location, "00000-9-just-written.parquet", None)
    in_flight = metadata_dir / "00099-in-flight.metadata.json"
    lost_race = metadata_dir / "00001-lost-the-race.metadata.json"
    for path in (in_flight, lost_race):
        path.write_text("{}")
        old = time.time() - 3600
        os.utime(path, (old, old))
    maint = TableMaintenance(catalog, ident)
    with pytest.raises(LakeError, match="below 1h.*--force"):
        maint.remove_orphans(older_than=timedelta(minutes=59))
    result = maint.remove_orphans(older_than=timedelta(0), force=True)
    # older than the cutoff but within COMMIT_GRACE of the final check: kept
    assert just_written.exists()
    # a metadata file newer than the current version may be a commit in flight: kept
    assert in_flight.exists() and not lost_race.exists()
    assert result.orphans == [lost_race.as_uri()] and result.kept_recent == 2

    # a table whose current snapshot cannot be read stops the run before anything is deleted
    other = catalog.load_table(TABLES[1])
    other.append(make_rows(other, 0, 10))
    Path(_local(other.current_snapshot().manifest_list)).unlink()
    doomed = _plant(location, "00000-9-crashed.parquet", timedelta(days=2))
    with pytest.raises(LakeError, match=f"{TABLES[1]}: current snapshot .* cannot be read"):
        maint.remove_orphans(older_than=timedelta(days=1))
    assert doomed.exists()


# ---- expire-snapshots against a concurrent committer -------------------------------------------


def test_expire_snapshot_ids_precondition_guards_pyiceberg_behaviour(data_dir: Path) -> None:
    """Guard for `engine.iceberg.expire_snapshot_ids`: the SQL catalog validates our requirement.

    pyiceberg's own expiry on stale metadata raises a bare ValueError; ours a retryable
    CommitFailedException, and it never drops a tag created meanwhile.
    """
    from pyiceberg.exceptions import CommitFailedException

    from iceberg_lake.engine.iceberg import expire_snapshot_ids

    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    ident = TABLES[0]
    writer = catalog.load_table(ident)
    for i in range(4):
        writer.append(make_rows(writer, i * 10, 10))
    s0, s1, s2, _ = (s.snapshot_id for s in writer.metadata.snapshots)
    stale = catalog.load_table(ident)
    # the behaviour that made `lake maintain expire-snapshots` print a traceback
    writer.maintenance.expire_snapshots().by_ids([s0]).commit()
    with pytest.raises(ValueError, match="does not exist"):
        stale.maintenance.expire_snapshots().by_ids([s0]).commit()
    stale.refresh()
    writer.refresh()
    writer.maintenance.expire_snapshots().by_ids([s1]).commit()
    with pytest.raises(CommitFailedException, match="expired concurrently"):
        expire_snapshot_ids(stale, [s1])
    stale.refresh()
    writer.manage_snapshots().create_tag(s2, "pinned").commit()
    with pytest.raises(CommitFailedException, match="pinned"):
        expire_snapshot_ids(stale, [s2])
    writer.refresh()
    assert writer.snapshot_by_name("pinned").snapshot_id == s2
    # a concurrent append is no conflict: the removal applies on top of it
    stale.refresh()
    s3 = stale.metadata.snapshots[-1].snapshot_id
    writer.append(make_rows(writer, 100, 10))
    appended = writer.current_snapshot().snapshot_id
    expire_snapshot_ids(stale, [s3])
    assert stale.current_snapshot().snapshot_id == appended
    assert s3 not in {s.snapshot_id for s in stale.metadata.snapshots}
    assert stale.scan().to_arrow().num_rows == 50


def test_expire_snapshots_while_a_writer_commits_and_expires_retries_or_says_one_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"LAKE_DATA_DIR": str(data_dir)}
    catalog = LakeCatalog(load_settings(env))
    ident = TABLES[0]

    def writer_retention(table: Table) -> None:
        # What the ingest writer does after its commits: expire its own retention window
        # with pyiceberg, a failure is retried next time.
        try:
            table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
        except Exception:
            table.refresh()

    writer = Writer(data_dir, (ident,), action=writer_retention)
    writer.start()
    outcomes: dict[str, int] = {"ok": 0, "conflict": 0}
    try:
        wait_until(lambda: writer.commits >= 3, 10, "three writer commits", alive=writer.is_alive)
        # Racing the writer, an expiry may still lose every attempt; then it says so in one
        # line. Whether it retried is proved deterministically below.
        for _ in range(25):
            maint = TableMaintenance(catalog, ident, protected_snapshots=set())
            try:
                maint.expire_snapshots(older_than=timedelta(0))
                outcomes["ok"] += 1
            except CommitConflictError as exc:
                assert "\n" not in str(exc) and ident in str(exc)
                outcomes["conflict"] += 1
        cli = runner.invoke(
            app, ["maintain", "expire-snapshots", "-t", ident, "--older-than", "0"], env=env
        )
        assert cli.exit_code in (0, 1), cli.output
        assert "Traceback" not in cli.output
        if cli.exit_code == 1:
            assert "concurrent commits" in cli.output
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    assert writer.error is None, repr(writer.error)
    assert outcomes["ok"] > 0
    table = catalog.load_table(ident)
    assert table.scan().to_arrow().num_rows == writer.rows[ident]

    # The retry, deterministically: just before the first attempt commits its removal, another
    # catalog connection (another process's writer) expires one of the same snapshots. The SQL
    # catalog rejects the stale removal (a real `CommitFailedException`); the second attempt
    # recomputes from refreshed metadata and succeeds.
    for _ in range(3):
        table.append(make_rows(table, writer.rows[ident], 20))
        writer.rows[ident] += 20
    other = LakeCatalog(load_settings(env)).load_table(ident)
    removals: list[list[int]] = []
    real_expire = maintenance.expire_snapshot_ids

    def expire_after_a_concurrent_expiry(stale: Table, snapshot_ids: Iterable[int]) -> None:
        ids = sorted(snapshot_ids)
        removals.append(ids)
        if len(removals) == 1:
            other.refresh()
            real_expire(other, ids[:1])
        real_expire(stale, ids)

    monkeypatch.setattr(maintenance, "expire_snapshot_ids", expire_after_a_concurrent_expiry)
    result = TableMaintenance(catalog, ident, protected_snapshots=set()).expire_snapshots(
        older_than=timedelta(0)
    )
    assert len(removals) == 2, removals  # one conflict, one retry
    assert removals[0][0] not in removals[1]  # the retry saw the concurrent expiry
    assert result.expired == removals[1]
    table = catalog.load_table(ident)
    assert not {s.snapshot_id for s in table.metadata.snapshots} & set(removals[0])
    assert table.scan().to_arrow().num_rows == writer.rows[ident]


def test_remove_orphans_keeps_files_of_any_catalog_table_under_a_lake_location(
    data_dir: Path,
) -> None:
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    lake_table = catalog.load_table(TABLES[0])
    lake_table.append(make_rows(lake_table, 0, 10))
    catalog.catalog.create_namespace("scratch")
    other = catalog.catalog.create_table(
        "scratch.nested", schema=lake_table.schema(), location=f"{lake_table.location()}/nested"
    )
    other.append(make_rows(other, 0, 5))
    crashed = _plant(lake_table.location(), "00000-9-crashed.parquet", timedelta(days=2))
    old = time.time() - 3 * 86_400
    for path in Path(_local(lake_table.location())).rglob("*"):
        os.utime(path, (old, old))
    result = TableMaintenance(catalog, TABLES[0]).remove_orphans(older_than=timedelta(days=1))
    assert result.orphans == [crashed.as_uri()]
    other.refresh()
    assert other.scan().to_arrow().num_rows == 5


def _closed_hour_rows(data_dir: Path, *firsts: int) -> tuple[dict[str, str], LakeCatalog, str]:
    """A lake whose first table got one 10-row append per `first` (event times `first`..
    `first`+9 ms of a closed hour); (env, catalog, table id)."""
    env = {"LAKE_DATA_DIR": str(data_dir)}
    catalog = LakeCatalog(load_settings(env))
    ident = TABLES[0]
    table = catalog.load_table(ident)
    for first in firsts:
        table.append(make_rows(table, first, 10))
    return env, catalog, ident


def _late_append_on_read(
    monkeypatch: pytest.MonkeyPatch, other: Table, firsts: list[int]
) -> list[int]:
    """Between compact-files' plan and its commit, another catalog connection appends 10 late
    rows (event times `first` ms .. after row 0) to the partition being compacted, one batch
    per plan while `firsts` lasts. Returns the number of files each plan read."""
    planned: list[int] = []
    real_read = maintenance.read_scan_tasks

    def read_after_a_late_append(table: Table, tasks: list[Any]) -> Any:
        planned.append(len(tasks))
        if len(planned) <= len(firsts):
            other.refresh()
            other.append(make_rows(other, firsts[len(planned) - 1], 10))
        return real_read(table, tasks)

    monkeypatch.setattr(maintenance, "read_scan_tasks", read_after_a_late_append)
    return planned


def _data_files_on_disk(table: Table) -> set[str]:
    return {str(p) for p in Path(_local(table.location()), "data").rglob("*.parquet")}


def _seqs(table: Table) -> list[int]:
    return sorted(table.scan().to_arrow().column("seq").to_pylist())


def test_compact_files_replans_when_late_rows_land_in_the_partition_and_loses_none(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 3 s. Late rows inside the rewritten event-time range, committed by another
    catalog connection between the plan and the commit, fail the commit's validation (they are
    never overwritten); compact-files re-plans on the new snapshot and compacts them too: every
    row exactly once."""
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100, 200)
    other = LakeCatalog(load_settings(env)).load_table(ident)
    planned = _late_append_on_read(monkeypatch, other, [50])  # 50..59 ms: inside the range

    result = TableMaintenance(catalog, ident).compact_files(older_than=timedelta(0))

    assert result.attempts == 2 and planned == [3, 4], (result, planned)
    assert result.as_dict()["attempts"] == 2
    assert result.files_before == 4 and result.rows == 40
    table = catalog.load_table(ident)
    assert table.current_snapshot().snapshot_id == result.snapshot_id
    expected = [k for first in (0, 50, 100, 200) for k in range(first, first + 10)]
    assert _seqs(table) == expected, "a late row lost or duplicated"
    assert len(list(table.scan().plan_files())) == 1
    # The first attempt's written files were deleted, not left as orphans.
    assert _data_files_on_disk(table) - referenced_files(table) == set()


def test_compact_files_keeps_newer_late_rows_without_a_conflict(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 2 s. Late rows newer than every rewritten event (a writer still catching
    up on a closed hour) do not conflict: one attempt, and the late file stays as it is."""
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100)
    other = LakeCatalog(load_settings(env)).load_table(ident)
    planned = _late_append_on_read(monkeypatch, other, [500])

    result = TableMaintenance(catalog, ident).compact_files(older_than=timedelta(0))

    assert result.attempts == 1 and planned == [2] and result.rows == 20, (result, planned)
    table = catalog.load_table(ident)
    assert _seqs(table) == [*range(10), *range(100, 110), *range(500, 510)]
    counts = sorted(t.file.record_count for t in table.scan().plan_files())
    assert counts == [10, 20], counts  # the late file, and the compacted one


def _plan(table: Table) -> dict[str, int]:
    """The current snapshot's data files: path -> record count."""
    return {t.file.file_path: t.file.record_count for t in table.scan().plan_files()}


def _assert_each_file_sorted(table: Table) -> None:
    for path in _plan(table):
        ts = pq.read_table(_local(path), columns=["ts_event_ns"]).column(0).to_pylist()
        assert ts == sorted(ts), f"{path}: not sorted by event time"


def test_compact_files_final_attempt_replaces_only_the_planned_files_and_keeps_late_ones(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 4 s. Late rows inside the range before every commit: the window-checked
    attempts lose and re-plan (each plan includes the late file before it), the final attempt
    replaces exactly the planned files (even when more attempts would check the window): the
    CLI succeeds, every row (original and late) is there once, and the file that landed during
    the final attempt is kept as it is."""
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100)
    monkeypatch.setattr(maintenance, "COMPACT_ATTEMPTS", 3)
    monkeypatch.setattr(maintenance, "COMPACT_WINDOW_ATTEMPTS", 5)  # the last one never does
    other = LakeCatalog(load_settings(env)).load_table(ident)
    planned = _late_append_on_read(monkeypatch, other, [20, 40, 60])

    cli = runner.invoke(
        app, ["maintain", "compact-files", "-t", ident, "--older-than", "0s", "-o", "json"], env=env
    )

    assert cli.exit_code == 0, cli.output
    # pyiceberg logs its own in-commit retries as WARNINGs on the same stream.
    said = "\n".join(line for line in cli.output.splitlines() if " pyiceberg." not in line)
    (row,) = json.loads(said)
    assert row["attempts"] == 3 and row["files_before"] == 4 and row["rows"] == 40, row
    assert planned == [2, 3, 4], planned  # each attempt re-planned with the new late file
    table = catalog.load_table(ident)
    assert table.current_snapshot().summary[P.LAKE_OPERATION] == P.COMPACT_FILES
    assert table.current_snapshot().snapshot_id == row["snapshot_id"]
    expected = [k for first in (0, 20, 40, 60, 100) for k in range(first, first + 10)]
    assert _seqs(table) == expected, "a row lost or duplicated"
    files = _plan(table)
    assert sorted(files.values()) == [10, 40]  # the kept late file, the compacted one
    (kept,) = (path for path, n in files.items() if n == 10)
    assert kept in _plan(other), "the late file of the final attempt was rewritten"
    seqs = pq.read_table(_local(kept), columns=["seq"]).column(0).to_pylist()
    assert seqs == list(range(60, 70))
    _assert_each_file_sorted(table)
    assert _data_files_on_disk(table) - referenced_files(table) == set()


def test_compact_files_makes_progress_when_late_rows_land_before_every_attempt(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 5 s. A steady stream of late rows: another catalog connection commits a
    batch inside the rewritten range of each partition before EVERY commit (also during the
    final attempt, so pyiceberg's own retry re-plans the manifests on top of it). Default
    attempts: the window attempt loses, the next one lands and keeps every late file that
    landed after its plan as it was; the next run compacts those. No row lost or duplicated."""
    env = {"LAKE_DATA_DIR": str(data_dir)}
    catalog = LakeCatalog(load_settings(env))
    ident = TABLES[0]
    table = catalog.load_table(ident)
    for symbol in ("SPY", "QQQ"):  # two closed partitions, one group each
        for first in (0, 100):
            table.append(make_rows(table, first, 10, symbol=symbol))
    other = LakeCatalog(load_settings(env)).load_table(ident)
    real_read = maintenance.read_scan_tasks
    landed: list[str] = []  # file paths of the late appends, in order

    def read_after_a_late_append(t: Table, tasks: list[Any]) -> Any:
        symbol = tasks[0].file.partition[0]
        other.refresh()
        before = set(_plan(other))
        other.append(make_rows(other, 10 + 5 * len(landed), 5, symbol=symbol))  # in the range
        other.refresh()
        (path,) = set(_plan(other)) - before
        landed.append(path)
        return real_read(t, tasks)

    monkeypatch.setattr(maintenance, "read_scan_tasks", read_after_a_late_append)
    result = TableMaintenance(catalog, ident).compact_files(older_than=timedelta(0))

    assert result.attempts == 2, result
    assert len(result.partitions) == 2 and len(landed) == 4, (result, landed)
    table = catalog.load_table(ident)
    assert table.current_snapshot().snapshot_id == result.snapshot_id
    files = _plan(table)
    # The two files that landed during the final attempt are kept, by path; the two that
    # landed during the first were planned by the second and compacted.
    assert set(landed[2:]) <= set(files) and not set(landed[:2]) & set(files)
    assert sorted(files.values()) == [5, 5, 25, 25], files
    expected = sorted(
        [k for first in (0, 100) for k in range(first, first + 10)] * 2
        + [k for i in range(4) for k in range(10 + 5 * i, 15 + 5 * i)]
    )
    assert _seqs(table) == expected, "a row lost or duplicated"
    _assert_each_file_sorted(table)
    assert _data_files_on_disk(table) - referenced_files(table) == set()

    monkeypatch.setattr(maintenance, "read_scan_tasks", real_read)
    again = TableMaintenance(catalog, ident).compact_files(older_than=timedelta(0))
    assert again.attempts == 1 and again.files_before == 4 and again.files_after == 2, again
    table = catalog.load_table(ident)
    assert sorted(_plan(table).values()) == [30, 30] and _seqs(table) == expected


def test_compact_files_gives_up_in_one_line_when_other_compactions_keep_winning(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 3 s. What still stops it: before every commit another process compacts the
    planned files (and new small files land), so even the files-only attempts conflict. After
    `COMPACT_ATTEMPTS` the CLI says so in one line and exits 1; nothing of this run was
    committed, no row is lost or duplicated, and its written files were deleted."""
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100)
    monkeypatch.setattr(maintenance, "COMPACT_ATTEMPTS", 2)
    other = TableMaintenance(LakeCatalog(load_settings(env)), ident)
    real_read = maintenance.read_scan_tasks
    won: list[int | None] = []
    inside = threading.Event()  # the other compaction's own reads go straight through

    def read_while_another_compacts(t: Table, tasks: list[Any]) -> Any:
        if not inside.is_set():
            inside.set()
            try:
                won.append(other.compact_files(older_than=timedelta(0)).snapshot_id)
                for first in (200 + 20 * len(won), 210 + 20 * len(won)):
                    other.table.append(make_rows(other.table, first, 5))
            finally:
                inside.clear()
        return real_read(t, tasks)

    monkeypatch.setattr(maintenance, "read_scan_tasks", read_while_another_compacts)
    cli = runner.invoke(
        app, ["maintain", "compact-files", "-t", ident, "--older-than", "0s"], env=env
    )

    assert cli.exit_code == 1, cli.output
    assert "Traceback" not in cli.output
    assert "kept conflicting" in cli.output and "2 attempts" in cli.output, cli.output
    # pyiceberg logs its own in-commit retries as WARNINGs; the error itself is one line.
    said = [line for line in cli.output.splitlines() if line and " pyiceberg." not in line]
    assert len(said) == 1 and said[0].startswith("error:"), cli.output
    assert len(said[0]) < 400, "pyiceberg's list of file paths is cut"
    assert len(won) == 2 and None not in won, won
    table = catalog.load_table(ident)
    compactions = [
        s.snapshot_id
        for s in table.metadata.snapshots
        if s.summary and s.summary.get(P.LAKE_OPERATION) == P.COMPACT_FILES
    ]
    assert compactions == won, "only the other process's compactions landed"
    expected = sorted(
        [*range(10), *range(100, 110)]
        + [
            k
            for i in (1, 2)
            for first in (200 + 20 * i, 210 + 20 * i)
            for k in range(first, first + 5)
        ]
    )
    assert _seqs(table) == expected
    assert _data_files_on_disk(table) - referenced_files(table) == set()


@pytest.mark.parametrize("window_attempts", [1, 0], ids=["window-checked", "files-only"])
def test_two_compactions_racing_never_duplicate_rows(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, window_attempts: int
) -> None:
    """Budget: about 2 s each. Another process compacts the same files between this one's plan
    and commit: the replaced files are gone, so this commit conflicts (it would otherwise add the
    rows a second time), also when it only checks the planned files (the attempts after a lost
    race); the re-plan finds nothing left to do."""
    monkeypatch.setattr(maintenance, "COMPACT_WINDOW_ATTEMPTS", window_attempts)
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100, 200)
    other = TableMaintenance(LakeCatalog(load_settings(env)), ident)
    real_read = maintenance.read_scan_tasks
    raced: list[int | None] = []

    def read_while_another_compacts(t: Table, tasks: list[Any]) -> Any:
        if not raced:
            monkeypatch.setattr(maintenance, "read_scan_tasks", real_read)
            raced.append(other.compact_files(older_than=timedelta(0)).snapshot_id)
        return real_read(t, tasks)

    monkeypatch.setattr(maintenance, "read_scan_tasks", read_while_another_compacts)
    result = TableMaintenance(catalog, ident).compact_files(older_than=timedelta(0))

    assert raced and raced[0] is not None
    assert result.attempts == 2 and result.snapshot_id is None, result
    table = catalog.load_table(ident)
    assert table.current_snapshot().snapshot_id == raced[0]
    assert _seqs(table) == [k for first in (0, 100, 200) for k in range(first, first + 10)]


def _s3_lake_of_three_appends(tmp_path: Path, s3_server: Any) -> tuple[LakeCatalog, Table]:
    """A lake on SeaweedFS whose `bronze.stocks_trades` has three appends (a metadata log)."""
    import uuid

    s3_server.create_bucket("lake")
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    env |= s3_server.lake_env(f"s3://lake/{uuid.uuid4().hex[:8]}")
    catalog = LakeCatalog(load_settings(env))
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    for k in range(3):
        table.append(make_rows(table, k * 10, 10))
    return catalog, table


def test_remove_orphans_on_s3_takes_a_metadata_file_deleted_between_head_and_get_as_gone(
    tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ops13: on S3, a writer's commit deletes its oldest metadata file; when that happens
    between the object store's HEAD and GET of remove-orphans' read, S3 reports a plain
    `OSError`, not `FileNotFoundError`, and the whole run failed (1 run in 27 during ingest).
    The deletion is made at exactly that moment here (real SeaweedFS, real delete): the file
    is gone, so it is no longer retained, and the run goes on. A file that exists but cannot be
    read still stops the run."""
    catalog, table = _s3_lake_of_three_appends(tmp_path, s3_server)
    ident = "bronze.stocks_trades"
    victim = table.metadata.metadata_log[1].metadata_file
    real = maintenance.read_table_metadata
    raised: list[BaseException] = []

    def deleted_meanwhile(t: Table, location: str) -> Any:
        if location != victim or raised:
            return real(t, location)
        with t.io.new_input(location).open() as f:  # the HEAD
            t.io.delete(location)  # a writer's commit, between the two requests
            try:
                f.read()  # the GET
            except BaseException as exc:
                raised.append(exc)
                raise
        raise AssertionError("the object was read after its deletion")

    monkeypatch.setattr(maintenance, "read_table_metadata", deleted_meanwhile)
    results = maintenance.remove_orphans(catalog, [ident], timedelta(hours=1), force=True)

    assert raised and not isinstance(raised[0], FileNotFoundError), raised  # S3's plain error
    assert [r.table for r in results] == [ident]
    assert catalog.load_table(ident).scan().to_arrow().num_rows == 30

    # A metadata file that is there but unreadable (S3 refusing the GET) still stops the run.
    def refused(t: Table, location: str) -> Any:
        if location == table.metadata.metadata_log[0].metadata_file:
            raise OSError("AWS Error ACCESS_DENIED during GetObject operation")
        return real(t, location)

    monkeypatch.setattr(maintenance, "read_table_metadata", refused)
    with pytest.raises(LakeError, match="cannot read metadata file .*ACCESS_DENIED"):
        maintenance.remove_orphans(catalog, [ident], timedelta(hours=1), force=True)


def test_remove_orphans_on_s3_takes_a_snapshot_expired_while_it_is_read_as_unreachable(
    tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for a snapshot's manifest list: an expiry removes the snapshot and deletes
    the list between remove-orphans' HEAD and GET (S3's plain `OSError`). The snapshot is no
    longer in the table's newest metadata, so nobody can read it: unreachable, as a missing
    file is, and the run goes on; a snapshot the table still holds stops the run."""
    from iceberg_lake.engine.iceberg import expire_snapshot_ids

    catalog, table = _s3_lake_of_three_appends(tmp_path, s3_server)
    ident = "bronze.stocks_trades"
    victim = table.metadata.snapshots[0]
    real = maintenance._Reachability._manifests
    raised: list[BaseException] = []

    def expired_meanwhile(self: Any, snapshot: Any) -> Any:
        if snapshot.snapshot_id != victim.snapshot_id or raised:
            return real(self, snapshot)
        with self.io.new_input(snapshot.manifest_list).open() as f:  # the HEAD
            expire_snapshot_ids(catalog.load_table(ident), [snapshot.snapshot_id])
            self.io.delete(snapshot.manifest_list)
            try:
                f.read()  # the GET
            except BaseException as exc:
                raised.append(exc)
                raise
        raise AssertionError("the manifest list was read after its deletion")

    monkeypatch.setattr(maintenance._Reachability, "_manifests", expired_meanwhile)
    maintenance.remove_orphans(catalog, [ident], timedelta(hours=1), force=True)

    assert raised and not isinstance(raised[0], FileNotFoundError), raised
    assert catalog.load_table(ident).scan().to_arrow().num_rows == 30

    held = catalog.load_table(ident).metadata.snapshots[0]

    def refused(self: Any, snapshot: Any) -> Any:
        if snapshot.snapshot_id == held.snapshot_id:
            raise OSError("AWS Error SLOW_DOWN during GetObject operation")
        return real(self, snapshot)

    monkeypatch.setattr(maintenance._Reachability, "_manifests", refused)
    with pytest.raises(LakeError, match="cannot read .*SLOW_DOWN"):
        maintenance.remove_orphans(catalog, [ident], timedelta(hours=1), force=True)


def test_a_manifest_an_expired_snapshot_failed_to_read_is_read_again_for_the_live_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review13b: the references marked a manifest as counted before reading it; when the read
    failed for a snapshot expired meanwhile (tolerated), the live snapshot sharing that
    manifest skipped it, and its live data files were missing from the references (orphans
    to the run). The failing read is forced here on the expired snapshot's turn only."""
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    catalog.init()
    ident = "bronze.stocks_trades"
    table = catalog.load_table(ident)
    for k in range(2):
        table.append(make_rows(table, k * 10, 10))
    first, head = table.metadata.snapshots[0], table.current_snapshot()
    assert head is not None
    shared = {m.manifest_path for m in first.manifests(table.io)}
    assert shared & {m.manifest_path for m in head.manifests(table.io)}  # fast appends share
    turn: dict[str, Any] = {}
    real_manifests = maintenance._Reachability._manifests
    real_entries = maintenance._Reachability._entries

    def manifests(self: Any, snapshot: Any) -> Any:
        turn["snapshot"] = snapshot.snapshot_id
        return real_manifests(self, snapshot)

    def entries(self: Any, manifest: Any, live_only: bool) -> Any:
        if turn["snapshot"] == first.snapshot_id and not turn.get("failed"):
            turn["failed"] = True
            raise OSError("AWS Error SLOW_DOWN during GetObject operation (503)")
        return real_entries(self, manifest, live_only)

    monkeypatch.setattr(maintenance._Reachability, "_manifests", manifests)
    monkeypatch.setattr(maintenance._Reachability, "_entries", entries)
    monkeypatch.setattr(maintenance._CatalogReferences, "_expired_since", lambda *a: True)
    referenced, _ = maintenance._CatalogReferences(catalog).collect()

    assert turn.get("failed")
    live = {
        urlparse(task.file.file_path).path for task in catalog.load_table(ident).scan().plan_files()
    }
    assert live and live <= {urlparse(p).path for p in referenced}


def _append_before_rewrite(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], ident: str, times: int
) -> list[int]:
    """Before each of the first `times` manifest rewrites of `ident`, another catalog connection
    appends 5 rows to it (a writer's commit landing between the read and the commit). Returns
    the first seq of each append.

    pyiceberg's own in-commit retries (`commit.retry.num-retries`) are turned off on that table,
    so this one commit loses the rewrite's commit, as a busy table's commits landing during
    each of pyiceberg's ten retries do (ops19 #4)."""
    other = LakeCatalog(load_settings(env)).load_table(ident)
    other.transaction().set_properties({"commit.retry.num-retries": "0"}).commit_transaction()
    real = maintenance.rewrite_manifests
    appended: list[int] = []

    def rewrite_after_an_append(table: Table, properties: Any) -> Any:
        if table.name()[-1] == ident.split(".")[1] and len(appended) < times:
            other.refresh()
            appended.append(1000 + 10 * len(appended))
            other.append(make_rows(other, appended[-1], 5))
        return real(table, properties)

    monkeypatch.setattr(maintenance, "rewrite_manifests", rewrite_after_an_append)
    return appended


def test_rewrite_manifests_merges_again_after_a_concurrent_commit(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 2 s. A writer's commit lands between the rewrite's read of the manifests
    and its commit: the commit loses, the rewrite reads the new snapshot and merges again
    (`attempts` 2); the concurrent rows are kept and every manifest is merged."""
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100, 200)
    appended = _append_before_rewrite(monkeypatch, env, ident, 1)

    result = TableMaintenance(catalog, ident).rewrite_manifests()

    assert appended == [1000] and result["attempts"] == 2, result
    assert result["manifests_before"] == 4 and result["manifests_after"] == 1, result
    table = catalog.load_table(ident)
    assert table.current_snapshot().snapshot_id == result["snapshot_id"]
    assert table.current_snapshot().summary[P.LAKE_OPERATION] == "rewrite-manifests"
    expected = [k for first in (0, 100, 200) for k in range(first, first + 10)]
    assert _seqs(table) == sorted([*expected, *range(1000, 1005)])


def test_rewrite_manifests_cli_reports_a_table_it_lost_in_one_line_after_the_others(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budget: about 3 s. A writer commits to one table before every attempt: after
    `REWRITE_MANIFESTS_ATTEMPTS` that table is one `error:` line (exit 1); the other tables are
    still rewritten and reported in the JSON, and nothing of the lost table changed."""
    env, catalog, ident = _closed_hour_rows(data_dir, 0, 100)
    others = catalog.load_table(TABLES[1])
    for first in (0, 100, 200):
        others.append(make_rows(others, first, 10))
    # raising=False: the same test shows the code before the retry loop stopping at this table.
    monkeypatch.setattr(maintenance, "REWRITE_MANIFESTS_ATTEMPTS", 2, raising=False)
    appended = _append_before_rewrite(monkeypatch, env, ident, 99)

    cli = runner.invoke(app, ["maintain", "rewrite-manifests", "-o", "json"], env=env)

    assert cli.exit_code == 1, cli.output
    assert "Traceback" not in cli.output
    errors = [line for line in cli.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, cli.stderr
    assert ident in errors[0] and "2 attempts" in errors[0], errors
    rows = {r["table"]: r for r in json.loads(cli.stdout)}
    assert ident not in rows and TABLES[1] in rows, sorted(rows)
    assert rows[TABLES[1]]["manifests_before"] == 3 and rows[TABLES[1]]["manifests_after"] == 1
    assert len(appended) == 2
    table = catalog.load_table(ident)
    assert table.current_snapshot().summary.get(P.LAKE_OPERATION) != "rewrite-manifests"
    assert len(table.current_snapshot().manifests(table.io)) == 4
