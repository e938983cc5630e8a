"""Maintenance: small-file compaction, snapshot expiry with file cleanup, orphan removal."""

from __future__ import annotations

import json
import os
import re
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import (
    _determine_partitions,
    pyarrow_to_schema,
    schema_to_pyarrow,
    write_file,
)
from pyiceberg.table import Table, Transaction, WriteTask
from pyiceberg.table.update import _apply_table_update, _TableMetadataUpdateContext
from typer.testing import CliRunner

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import LakeError
from iceberg_lake.ops.maintenance import (
    MB,
    TableMaintenance,
    parse_duration,
    parse_size,
    rows_fingerprint,
)

TABLE = "bronze.stocks_trades"
runner = CliRunner()
HOUR_NS = 3_600_000_000_000
#: A closed hour long ago (2025-12-06T05:00Z) and the hour after it.
BASE_NS = 1_765_000_000_000_000_000 - 1_765_000_000_000_000_000 % HOUR_NS


def _rows(table: Table, start: int, n: int, symbol: str, base_ns: int = BASE_NS) -> pa.Table:
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    out = []
    for k in range(start, start + n):
        ts = base_ns + k * 1_000_000
        out.append(
            {
                "ts_event_ns": ts,
                "ts_recv_ns": ts + 7,
                "source": "test",
                "symbol": symbol,
                "price": 100.0 + k / 100,
                "size": k % 500,
                "exchange": k % 7,
                "seq": k,
                "ts_event": datetime.fromtimestamp(ts // 1000 / 1e6, tz=UTC),
            }
        )
    return pa.Table.from_pylist(out, schema=schema)


def _settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings({"LAKE_DATA_DIR": str(tmp_path / "data"), **env})


class _BulkTransaction(Transaction):
    """A transaction that applies staged updates incrementally.

    pyiceberg re-applies every staged update each time a producer reads the transaction's
    metadata, which is quadratic in the number of snapshots staged; this keeps it linear so the
    test can make thousands of real append snapshots quickly.
    """

    def __init__(self, table: Table) -> None:
        super().__init__(table, autocommit=False)
        self._md = table.metadata
        self._applied = 0
        self._ctx = _TableMetadataUpdateContext()

    @property
    def table_metadata(self) -> Any:
        if self._applied != len(self._updates):
            for update in self._updates[self._applied :]:
                self._md = _apply_table_update(update, self._md, self._ctx)
            self._applied = len(self._updates)
        return self._md


def _many_small_commits(table: Table, commits: int, rows_per_commit: int) -> None:
    """`commits` append snapshots of one small data file each, alternating SPY and QQQ."""
    md = table.metadata
    data = pa.concat_tables(
        [
            _rows(table, i * rows_per_commit, rows_per_commit, "SPY" if i % 2 else "QQQ")
            for i in range(commits)
        ]
    )
    task_schema = pyarrow_to_schema(
        data.schema, name_mapping=md.schema().name_mapping, format_version=md.format_version
    )
    write_uuid, tasks = uuid.uuid4(), []
    for part in _determine_partitions(spec=md.spec(), schema=md.schema(), arrow_table=data):
        for batch in part.arrow_table_partition.to_batches(max_chunksize=rows_per_commit):
            tasks.append(
                WriteTask(
                    write_uuid=write_uuid,
                    task_id=len(tasks),
                    schema=task_schema,
                    record_batches=[batch],
                    partition_key=part.partition_key,
                )
            )
    files = list(write_file(io=table.io, table_metadata=md, tasks=iter(tasks)))
    assert len(files) == commits
    for start in range(0, commits, 500):
        tx = _BulkTransaction(table)
        for f in files[start : start + 500]:
            with tx.update_snapshot(
                snapshot_properties={P.LAKE_OPERATION: "ingest"}
            ).merge_append() as append:
                append.append_data_file(f)
        tx.commit_transaction()


def _local(path: str) -> str:
    return path.removeprefix("file://")


def test_compact_files_after_1000_small_commits_cuts_files_50x_and_keeps_rows(
    lake: LakeCatalog, duck
) -> None:
    table = lake.load_table(TABLE)
    with table.transaction() as tx:
        tx.set_properties({P.WATERMARK_PREFIX + "MARKET.lake_bronze_stocks_trades": "4242"})
    _many_small_commits(table, commits=1000, rows_per_commit=3)
    # Two small appends to the current hour: an open partition compaction must not touch.
    now_ns = datetime.now(UTC).timestamp() * 1e9
    open_hour = int(now_ns) - int(now_ns) % HOUR_NS
    table.append(_rows(table, 0, 2, "SPY", base_ns=open_hour))
    table.append(_rows(table, 2, 2, "SPY", base_ns=open_hour))
    table.refresh()
    assert len(table.metadata.snapshots) >= 1000
    before_files = len(list(table.scan().plan_files()))
    assert before_files == 1002
    # DuckDB reads 1,000 files an order of magnitude faster than pyiceberg
    all_rows = "SELECT * FROM iceberg_scan('{}') ORDER BY ts_event_ns, symbol, seq"
    before_rows = duck.sql(all_rows.format(table.metadata_location)).arrow().read_all()
    assert before_rows.num_rows == 3004
    before_snapshots = len(table.metadata.snapshots)

    maint = TableMaintenance(lake, TABLE)
    dry = maint.compact_files(older_than=timedelta(hours=1), dry_run=True)
    assert dry.files_before == 1000 and dry.snapshot_id is None
    table.refresh()
    assert len(table.metadata.snapshots) == before_snapshots, "dry run must not commit"

    result = maint.compact_files(older_than=timedelta(hours=1), target_size=256 * MB)
    assert result.files_before == 1000
    assert sorted(result.partitions) == ["QQQ/2025-12-06T05", "SPY/2025-12-06T05"]
    table.refresh()
    after_files = list(table.scan().plan_files())
    assert before_files / len(after_files) >= 50, len(after_files)
    assert len(table.metadata.snapshots) == before_snapshots + 1, "one replace snapshot"
    snap = table.current_snapshot()
    assert snap is not None and snap.snapshot_id == result.snapshot_id
    assert snap.summary is not None and snap.summary.operation.value == "overwrite"
    assert snap.summary[P.LAKE_OPERATION] == P.COMPACT_FILES
    replaced = json.loads(snap.summary[P.REPLACED_PARTITIONS])
    assert ["SPY", "2025-12-06T05"] in replaced
    after_rows = duck.sql(all_rows.format(table.metadata_location)).arrow().read_all()
    assert after_rows.equals(before_rows)
    assert table.properties[P.WATERMARK_PREFIX + "MARKET.lake_bronze_stocks_trades"] == "4242"
    # the open hour kept its two files
    open_files = [t for t in after_files if t.file.record_count == 2]
    assert len(open_files) == 2
    # each compacted file is sorted by event time
    compacted = [t for t in after_files if t.file.record_count > 2]
    for task in compacted:
        ts = pa.parquet.read_table(_local(task.file.file_path), columns=["ts_event_ns"])
        values = ts.column(0).to_pylist()
        assert values == sorted(values)
    # pyiceberg reads the same rows at the current snapshot
    now_rows = table.scan().to_arrow()
    assert now_rows.num_rows == before_rows.num_rows
    assert pa.compute.sum(now_rows.column("seq")) == pa.compute.sum(before_rows.column("seq"))
    # idempotent: nothing left to compact
    again = maint.compact_files(older_than=timedelta(hours=1))
    assert again.snapshot_id is None and again.files_before == 0


def test_compact_files_splits_by_target_size(lake: LakeCatalog) -> None:
    table = lake.load_table(TABLE)
    for i in range(6):
        table.append(_rows(table, i * 2000, 2000, "SPY"))
    table.refresh()
    before = rows_fingerprint(table)
    total = sum(t.file.file_size_in_bytes for t in table.scan().plan_files())
    result = TableMaintenance(lake, TABLE).compact_files(
        older_than=timedelta(0), target_size=total // 3 + 1
    )
    table.refresh()
    files = sorted(table.scan().plan_files(), key=lambda t: _bound(t.file.lower_bounds))
    assert result.files_after == len(files) == 3
    assert rows_fingerprint(table).equals(before)
    # Silver keeps its own files (their names carry the compactor's state)
    silver = lake.load_table("silver.stocks_trades")
    silver.append(_rows(silver, 0, 5, "SPY"))
    silver.append(_rows(silver, 5, 5, "SPY"))
    skipped = TableMaintenance(lake, "silver.stocks_trades").compact_files(older_than=timedelta(0))
    assert skipped.snapshot_id is None and skipped.files_before == 0
    silver.refresh()
    assert len(silver.metadata.snapshots) == 2
    # contiguous, non-overlapping event-time ranges
    ranges = [(_bound(t.file.lower_bounds), _bound(t.file.upper_bounds)) for t in files]
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))


def _bound(bounds: dict[int, bytes]) -> int:
    """The ts_event_ns (field 1) bound of a data file."""
    return int(struct.unpack("<q", bounds[1])[0])


def _all_files_on_disk(table: Table) -> set[str]:
    root = Path(_local(table.location()))
    return {str(p) for p in root.rglob("*") if p.is_file()}


def test_expire_snapshots_keeps_tagged_readable_and_deletes_expired_only_files(
    lake: LakeCatalog, duck
) -> None:
    table = lake.load_table(TABLE)
    for i in range(4):
        table.append(_rows(table, i * 10, 10, "SPY"))
    table.refresh()
    tagged = table.metadata.snapshots[1]
    table.manage_snapshots().create_tag(tagged.snapshot_id, "eod").commit()
    tagged_rows = rows_fingerprint(table, tagged.snapshot_id)
    TableMaintenance(lake, TABLE).compact_files(older_than=timedelta(0))
    for i in range(4, 6):
        table.append(_rows(table, i * 10, 10, "SPY"))
    table.refresh()
    current_rows = rows_fingerprint(table)
    snapshots = [s.snapshot_id for s in table.metadata.snapshots]
    # files only the 4th append snapshot reached: its data file and manifest list
    fourth = table.metadata.snapshots[3]
    fourth_data = {
        _local(e.data_file.file_path)
        for m in fourth.manifests(table.io)
        for e in m.fetch_manifest_entry(table.io)
        if e.snapshot_id == fourth.snapshot_id
    }
    assert len(fourth_data) == 1
    disk_before = _all_files_on_disk(table)

    maint = TableMaintenance(lake, TABLE, protected_snapshots=set())
    dry = maint.expire_snapshots(older_than=timedelta(0), dry_run=True)
    assert tagged.snapshot_id not in dry.expired
    assert _all_files_on_disk(table) == disk_before, "dry run deletes nothing"
    table.refresh()
    assert [s.snapshot_id for s in table.metadata.snapshots] == snapshots

    result = maint.expire_snapshots(older_than=timedelta(0))
    assert sorted(result.expired) == sorted(dry.expired)
    assert set(result.deleted_files) == set(dry.deleted_files)
    table.refresh()
    remaining = {s.snapshot_id for s in table.metadata.snapshots}
    assert remaining == {tagged.snapshot_id, table.current_snapshot().snapshot_id}
    disk_after = _all_files_on_disk(table)
    assert fourth_data <= disk_before and not fourth_data & disk_after
    assert _local(fourth.manifest_list) not in disk_after
    assert {_local(p) for p in result.deleted_files} <= disk_before - disk_after
    # the tagged snapshot reads back in full through pyiceberg and DuckDB, the current one too
    assert rows_fingerprint(table, tagged.snapshot_id).equals(tagged_rows)
    assert rows_fingerprint(table).equals(current_rows)
    (n,) = duck.sql(
        f"SELECT count(*) FROM iceberg_scan('{table.metadata_location}',"
        f" snapshot_from_id={tagged.snapshot_id})"
    ).fetchone()
    assert n == tagged_rows.num_rows == 20
    # nothing referenced went missing
    assert maint.remove_orphans(older_than=timedelta(0), dry_run=True).orphans == []
    again = maint.expire_snapshots(older_than=timedelta(0))
    assert again.expired == [] and again.deleted_files == []


def test_expire_snapshots_keeps_bronze_snapshots_silver_names_as_source(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    table = lake.load_table(TABLE)
    for i in range(3):
        table.append(_rows(table, i * 10, 10, "SPY"))
    table.refresh()
    source = table.metadata.snapshots[0]
    silver = lake.load_table("silver.stocks_trades")
    silver.append(
        _rows(silver, 0, 10, "SPY"),
        snapshot_properties={P.SOURCE_TABLE: TABLE, P.SOURCE_SNAPSHOT_ID: str(source.snapshot_id)},
    )
    cli = runner.invoke(
        app,
        ["maintain", "expire-snapshots", "-t", TABLE, "--older-than", "0", "--dry-run"]
        + ["-o", "json"],
        env={"LAKE_DATA_DIR": str(tmp_path / "data")},
    )
    assert cli.exit_code == 0, cli.output
    would = json.loads(cli.output)[0]["expired"]
    assert len(would) == 1 and source.snapshot_id not in would
    result = TableMaintenance(lake, TABLE).expire_snapshots(older_than=timedelta(0))
    assert result.expired == would
    assert source.snapshot_id not in result.expired
    assert source.snapshot_id in result.protected
    table.refresh()
    assert table.snapshot_by_id(source.snapshot_id) is not None
    assert rows_fingerprint(table, source.snapshot_id).num_rows == 10
    assert len(table.metadata.snapshots) == 2


def _plant(table: Table, relative: str, age: timedelta | None) -> str:
    path = Path(_local(table.location())) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind by a crashed writer")
    if age is not None:
        old = (datetime.now(UTC) - age).timestamp()
        os.utime(path, (old, old))
    return str(path)


def test_remove_orphans_deletes_old_orphans_and_nothing_referenced(lake: LakeCatalog, duck) -> None:
    table = lake.load_table(TABLE)
    for i in range(3):
        table.append(_rows(table, i * 10, 10, "SPY"))
    table.refresh()
    old_orphan = _plant(table, "data/symbol=SPY/00000-0-crashed.parquet", timedelta(days=2))
    new_orphan = _plant(table, "data/00000-1-inflight.parquet", None)
    on_disk = _all_files_on_disk(table)
    maint = TableMaintenance(lake, TABLE)

    dry = maint.remove_orphans(older_than=timedelta(days=1), dry_run=True)
    assert [_local(p) for p in dry.orphans] == [old_orphan]
    assert _all_files_on_disk(table) == on_disk

    result = maint.remove_orphans(older_than=timedelta(days=1))
    assert [_local(p) for p in result.orphans] == [old_orphan]
    assert result.kept_recent == 1
    assert _all_files_on_disk(table) == on_disk - {old_orphan}
    assert Path(new_orphan).exists()
    (n,) = duck.sql(f"SELECT count(*) FROM iceberg_scan('{table.metadata_location}')").fetchone()
    assert n == 30
    assert rows_fingerprint(table).num_rows == 30


@pytest.mark.integration
def test_remove_orphans_measures_ages_on_the_store_clock(
    tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """This machine's clock two hours ahead of the store's: a file the store stamped a moment
    ago (a commit in flight) is a moment old, not two hours, and `--older-than 1h` keeps it.
    With ages taken against this machine's clock it was deleted."""
    from iceberg_lake.ops import maintenance

    settings = _settings(tmp_path, **s3_server.lake_env(f"s3://skew-{uuid.uuid4().hex[:8]}/wh"))
    lake = LakeCatalog(settings)
    lake.init()
    table = lake.load_table(TABLE)
    table.append(_rows(table, 0, 10, "SPY"))
    table.refresh()
    in_flight = f"{table.location()}/data/00000-9-inflight.parquet"
    with table.io.new_output(in_flight).create(overwrite=True) as out:
        out.write(b"not committed yet")
    monkeypatch.setattr(maintenance, "_local_now", lambda: datetime.now(UTC) + timedelta(hours=2))
    with caplog.at_level("WARNING", logger=maintenance.__name__):
        result = TableMaintenance(lake, TABLE).remove_orphans(older_than=timedelta(hours=1))
    assert result.orphans == [] and result.kept_recent == 1
    assert table.io.new_input(in_flight).exists()
    # S3 keeps whole seconds, and the measure errs towards files looking younger.
    assert re.search(r"s3://skew-\w+ is 720[01] s behind this machine's", caplog.text)
    assert rows_fingerprint(lake.load_table(TABLE)).num_rows == 10


@pytest.mark.integration
def test_remove_orphans_and_expiry_on_s3(tmp_path: Path, s3_server, duck) -> None:
    from iceberg_lake.engine.duck import configure_s3

    settings = _settings(
        tmp_path,
        **s3_server.lake_env(f"s3://orph-{uuid.uuid4().hex[:8]}/wh"),
    )
    lake = LakeCatalog(settings)
    lake.init()
    table = lake.load_table(TABLE)
    for i in range(3):
        table.append(_rows(table, i * 10, 10, "SPY"))
    table.refresh()
    orphan = f"{table.location()}/data/00000-9-crashed.parquet"
    with table.io.new_output(orphan).create(overwrite=True) as out:
        out.write(b"orphan")
    maint = TableMaintenance(lake, TABLE)
    assert maint.remove_orphans(older_than=timedelta(days=1)).orphans == [], "too recent"
    later = datetime.now(UTC) + timedelta(days=2)
    result = maint.remove_orphans(older_than=timedelta(days=1), now=later)
    assert result.orphans == [orphan]
    assert not table.io.new_input(orphan).exists()
    expired = maint.expire_snapshots(older_than=timedelta(0))
    assert len(expired.expired) == 2 and expired.deleted_files
    assert all(not table.io.new_input(p).exists() for p in expired.deleted_files)
    table.refresh()
    configure_s3(
        duck, s3_server.endpoint, s3_server.access_key, s3_server.secret_key, s3_server.region
    )
    (n,) = duck.sql(f"SELECT count(*) FROM iceberg_scan('{table.metadata_location}')").fetchone()
    assert n == 30


def test_parse_duration_and_size() -> None:
    assert parse_duration("1h") == timedelta(hours=1)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("0") == timedelta(0)
    assert parse_size("256MB") == 256 * MB
    assert parse_size("1GiB") == 1024 * MB
    assert parse_size("4096") == 4096
    for bad in ("soon", "1x", ""):
        with pytest.raises(LakeError):
            parse_duration(bad)
    for bad in ("big", "0MB", "-1"):
        with pytest.raises(LakeError):
            parse_size(bad)


def test_cli_maintain_commands(lake: LakeCatalog, tmp_path: Path) -> None:
    table = lake.load_table(TABLE)
    for i in range(4):
        table.append(_rows(table, i * 10, 10, "SPY"))
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    out = runner.invoke(
        app,
        ["maintain", "compact-files", "--table", TABLE, "--older-than", "1h", "-o", "json"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert rows[0]["files_before"] == 4 and rows[0]["files_after"] == 1
    out = runner.invoke(
        app,
        ["maintain", "expire-snapshots", "--older-than", "0", "--dry-run", "-o", "json"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    by_table = {r["table"]: r for r in json.loads(out.output)}
    assert by_table[TABLE]["expired_snapshots"] == 4 and by_table[TABLE]["dry_run"] is True
    out = runner.invoke(app, ["maintain", "expire-snapshots", "--older-than", "0"], env=env)
    assert out.exit_code == 0, out.output
    table.refresh()
    assert len(table.metadata.snapshots) == 1
    out = runner.invoke(app, ["maintain", "remove-orphans", "--table", TABLE], env=env)
    assert out.exit_code == 0, out.output
    bad = runner.invoke(app, ["maintain", "expire-snapshots", "--older-than", "soon"], env=env)
    assert bad.exit_code == 1 and "invalid duration" in bad.output
    assert bad.output.strip().count("\n") == 0
    unknown = runner.invoke(app, ["maintain", "compact-files", "--table", "bronze.nope"], env=env)
    assert unknown.exit_code == 1 and "bronze.nope" in unknown.output


def test_a_file_the_store_cannot_give_is_one_line_in_compact_files_and_expiry(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    """A read the store refuses half-way (here: files gone, as an outage or a lost object gives
    them) is one line naming the step, not "internal error" (found by the production chaos
    audit: S3 and PostgreSQL outages during compact-files and expire-snapshots)."""
    table = lake.load_table(TABLE)
    for i in range(3):
        table.append(_rows(table, i * 10, 10, "SPY"))
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    first = table.scan().plan_files()[0].file.file_path
    Path(_local(first)).unlink()
    out = runner.invoke(app, ["maintain", "compact-files", "--table", TABLE], env=env)
    assert out.exit_code == 1, out.output
    assert out.output.startswith(f"error: compacting the files of {TABLE}: storage unavailable")
    assert "internal error" not in out.output and out.output.strip().count("\n") == 0
    oldest = table.metadata.snapshots[0].manifest_list
    Path(_local(oldest)).unlink()
    out = runner.invoke(
        app, ["maintain", "expire-snapshots", "--table", TABLE, "--older-than", "0"], env=env
    )
    assert out.exit_code == 1, out.output
    assert out.output.startswith(f"error: expiring snapshots of {TABLE}: storage unavailable")
    assert "internal error" not in out.output and out.output.strip().count("\n") == 0
