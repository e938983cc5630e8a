"""Guards for `PartitionReplacement(validation="files")` (`engine.iceberg._NamedFilesOverwrite`).

`compact-files` commits its attempts after a lost race through a subclass of pyiceberg's
private `_OverwriteFiles` whose retry-time conflict check (`_validate_concurrency`) only asks
that the replaced files still exist. These tests fail loudly when a pyiceberg upgrade changes
what that relies on: the version and a hash of the source of each function involved (re-verify
the behaviour below, then update the hash), and the behaviour itself on a real SQL catalog:

* no predicate: a file added meanwhile, even in the same partition and event-time range, is
  kept as it is through pyiceberg's own commit retry, and only the named files are removed;
* the same late file fails the predicate-validated replacement (Silver's, and `compact-files`'
  first attempt), and stock pyiceberg's check without a predicate fails on ANY added file (why
  the override exists);
* a named file deleted meanwhile (a concurrent compaction) conflicts, by the retry-time check
  and, without a race, by `_OverwriteFiles`' own required-deletes check.

Budget: about 3 s, no servers.
"""

from __future__ import annotations

import hashlib
import inspect
import uuid

import pyiceberg
import pytest
from pyiceberg.exceptions import ValidationException
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table, Transaction
from pyiceberg.table.update import validate
from pyiceberg.table.update.snapshot import (
    CommitWindow,
    UpdateSnapshot,
    _OverwriteFiles,
    _SnapshotProducer,
)
from table_rows import BASE_NS, make_rows

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine import iceberg as engine
from iceberg_lake.engine.iceberg import PartitionReplacement
from iceberg_lake.exceptions import CommitConflictError

TABLE = "bronze.stocks_trades"

#: sha256[:16] of the source of each pyiceberg function `_NamedFilesOverwrite` relies on.
PYICEBERG_SOURCES = {
    "_SnapshotProducer.__init__": "b852274884153a53",
    "_SnapshotProducer._validate_concurrency": "67cd595d63cfc55e",
    "_SnapshotProducer._refresh_for_retry": "3d5a357551789d6b",
    "_OverwriteFiles._existing_manifests": "87a4d15adfa183e5",
    "_OverwriteFiles._deleted_entries": "1ff365cd42eb4b11",
    "_OverwriteFiles._validate_required_deletes": "eab377f3ac58dd63",
    "UpdateSnapshot.overwrite": "f2118100ad3a9d25",
    "Transaction._rebuild_snapshot_updates": "772a9824c3918fb1",
    "CommitWindow.is_empty": "b4f086c6b09d4cec",
    "_validate_data_files_exist": "bd7d3dda6e38d0cc",
    "_validate_no_new_deletes_for_data_files": "a5cfb62dfa50c9b4",
}


def _sources() -> dict[str, object]:
    return {
        "_SnapshotProducer.__init__": _SnapshotProducer.__init__,
        "_SnapshotProducer._validate_concurrency": _SnapshotProducer._validate_concurrency,
        "_SnapshotProducer._refresh_for_retry": _SnapshotProducer._refresh_for_retry,
        "_OverwriteFiles._existing_manifests": _OverwriteFiles._existing_manifests,
        "_OverwriteFiles._deleted_entries": _OverwriteFiles._deleted_entries,
        "_OverwriteFiles._validate_required_deletes": _OverwriteFiles._validate_required_deletes,
        "UpdateSnapshot.overwrite": UpdateSnapshot.overwrite,
        "Transaction._rebuild_snapshot_updates": Transaction._rebuild_snapshot_updates,
        "CommitWindow.is_empty": CommitWindow.is_empty,
        "_validate_data_files_exist": validate._validate_data_files_exist,
        "_validate_no_new_deletes_for_data_files": (
            validate._validate_no_new_deletes_for_data_files
        ),
    }


def test_pyiceberg_is_the_version_and_source_the_files_only_overwrite_was_written_for() -> None:
    assert pyiceberg.__version__.startswith(engine.PYICEBERG_VERSIONS_CHECKED)
    changed = [
        name
        for name, obj in _sources().items()
        if hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
        != PYICEBERG_SOURCES[name]
    ]
    assert not changed, f"pyiceberg changed {changed}: re-verify engine/iceberg.py's overwrite"
    assert issubclass(engine._NamedFilesOverwrite, _OverwriteFiles)
    # The retry calls the hook the subclass overrides, with the window it reads.
    rebuild = inspect.getsource(Transaction._rebuild_snapshot_updates)
    assert "producer._commit_window = commit_window" in rebuild
    assert "producer._validate_concurrency()" in rebuild


def _window(first: int, last: int) -> And:
    """SPY's rows with event times `first` .. `last` ms after `BASE_NS` (one hour partition)."""
    return And(
        EqualTo("symbol", "SPY"),
        And(
            GreaterThanOrEqual("ts_event_ns", BASE_NS + first * 1_000_000),
            LessThan("ts_event_ns", BASE_NS + (last + 1) * 1_000_000),
        ),
    )


def _plan(table: Table) -> dict[str, int]:
    return {t.file.file_path: t.file.record_count for t in table.scan().plan_files()}


def _seqs(table: Table) -> list[int]:
    return sorted(table.scan().to_arrow().column("seq").to_pylist())


def _two_files_and_a_late_one(lake: LakeCatalog) -> tuple[Table, Table, str]:
    """Two files of SPY's hour planned by `stale`; then another connection appends a late file
    inside their event-time range (the late file's path is returned)."""
    table = lake.load_table(TABLE)
    for first in (0, 100):
        table.append(make_rows(table, first, 10))
    stale = lake.load_table(TABLE)
    other = lake.load_table(TABLE)
    before = set(_plan(other))
    other.append(make_rows(other, 50, 10))  # 50..59 ms: inside 0..109
    (late,) = set(_plan(other)) - before
    return stale, other, late


def _compaction(stale: Table, validation: str) -> PartitionReplacement:
    tasks = list(stale.scan().plan_files())
    rows = stale.scan().to_arrow().sort_by("ts_event_ns")
    rep = PartitionReplacement(stale, {}, validation=validation)  # type: ignore[arg-type]
    rep.replace(_window(0, 109), rows, [t.file for t in tasks])
    return rep


def test_files_validation_keeps_a_late_file_in_the_range_through_pyiceberg_retry(
    lake: LakeCatalog,
) -> None:
    stale, other, late = _two_files_and_a_late_one(lake)
    planned = set(_plan(stale))
    late_snapshot = lake.load_table(TABLE).current_snapshot().snapshot_id

    snapshot_id = _compaction(stale, "files").commit()

    table = lake.load_table(TABLE)
    assert table.current_snapshot().snapshot_id == snapshot_id
    # Committed on top of the late append by pyiceberg's retry, not over it.
    assert table.current_snapshot().parent_snapshot_id == late_snapshot
    files = _plan(table)
    assert late in files and files[late] == 10, "the late file was dropped or rewritten"
    assert not planned & set(files), "a replaced file is still there"
    assert sorted(files.values()) == [10, 20]
    assert _seqs(table) == sorted([*range(10), *range(50, 60), *range(100, 110)])


def test_predicate_validation_and_stock_check_without_predicate_conflict_on_the_late_file(
    lake: LakeCatalog,
) -> None:
    stale, other, late = _two_files_and_a_late_one(lake)
    head = lake.load_table(TABLE).current_snapshot().snapshot_id

    with pytest.raises(CommitConflictError, match="Added data files"):
        _compaction(stale, "predicate").commit()
    assert lake.load_table(TABLE).current_snapshot().snapshot_id == head

    # Stock pyiceberg's producer with only named deletes (no predicate): serializable isolation
    # with no filter makes any added data file a conflict, even another symbol's. This is why
    # `_NamedFilesOverwrite` overrides the check; if it stops failing, re-check the override.
    stale = lake.load_table(TABLE)
    tasks = list(stale.scan().plan_files())
    new_files = engine.write_data_files(stale, stale.scan().to_arrow(), uuid.uuid4())
    other.refresh()
    other.append(make_rows(other, 0, 10, symbol="QQQ"))
    head = other.current_snapshot().snapshot_id
    with pytest.raises(ValidationException, match="Added data files"):
        with stale.transaction() as tx:
            with tx.update_snapshot().overwrite() as producer:
                for task in tasks:
                    producer.delete_data_file(task.file)
                for f in new_files:
                    producer.append_data_file(f)
    table = lake.load_table(TABLE)
    assert table.current_snapshot().snapshot_id == head
    assert late in _plan(table)


def test_files_validation_conflicts_when_a_replaced_file_is_gone(lake: LakeCatalog) -> None:
    table = lake.load_table(TABLE)
    for first in (0, 100):
        table.append(make_rows(table, first, 10))
    stale = lake.load_table(TABLE)
    mine = _compaction(stale, "files")
    # Another connection compacts the same files first.
    winner = _compaction(lake.load_table(TABLE), "files").commit()

    with pytest.raises(CommitConflictError) as raised:
        mine.commit()
    # The retry-time check of `_NamedFilesOverwrite` said so.
    assert "concurrently deleted" in str(raised.value.__cause__)
    table = lake.load_table(TABLE)
    assert table.current_snapshot().snapshot_id == winner
    assert _seqs(table) == [*range(10), *range(100, 110)], "rows added twice"

    # Without a race (fresh metadata, a named file no longer in the table): pyiceberg's own
    # required-deletes check of `_OverwriteFiles` refuses it before anything is committed.
    mine.table = lake.load_table(TABLE)
    with pytest.raises(CommitConflictError) as raised:
        mine.commit()
    assert "Missing required files to delete" in str(raised.value.__cause__)
    assert lake.load_table(TABLE).current_snapshot().snapshot_id == winner
