"""Guard tests for the commit-path fixes in `iceberg_lake.engine.iceberg` (issue 13).

They fail loudly when a pyiceberg upgrade changes what the fixes rely on: the version, the source
of every pyiceberg function the fixes replace or reuse (re-verify the fix, then update the hash),
and the behaviour (same metadata as stock pyiceberg, shared unchanged parts, same JSON).
Budget: about 15 s on the shared machine.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyiceberg
import pytest
from pyiceberg.catalog import MetastoreCatalog
from pyiceberg.exceptions import ValidationException
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.serializers import ToOutputFile
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadataCommonFields
from pyiceberg.table.snapshots import Operation, Snapshot, Summary
from pyiceberg.table.update.snapshot import (
    _FastAppendFiles,
    _ManifestMergeManager,
    _MergeAppendFiles,
    _SnapshotProducer,
)

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine import iceberg as engine

TABLE = "bronze.stocks_trades"

#: sha256[:16] of the source of each pyiceberg function the fixes copy, replace or reuse.
PYICEBERG_SOURCES = {
    "update_table_metadata": "cdfaa6553c2f4d68",
    "SqlCatalog.commit_table": "fb22ea690ba68b07",
    "MetastoreCatalog._update_and_stage_table": "2a491d0056395468",
    "Transaction.table_metadata": "b17e042b477c6adb",
    "Transaction._append_snapshot_producer": "1094520849e4f4bc",
    "Transaction.commit_transaction": "31e91e28f2729338",
    "Transaction._stage": "6881b41fb183aa8d",
    "Table._do_commit": "794b91fe1dcf7b5f",
    "_SnapshotProducer._manifests": "f57f3aac3c95f9f3",
    "_FastAppendFiles._existing_manifests": "d0255db202bdc4a0",
    "_MergeAppendFiles.__init__": "1643051b9eac538c",
    "_ManifestMergeManager._create_manifest": "4b92b581460f2a82",
    "_ManifestMergeManager.merge_manifests": "253237ff3eb47774",
    "ToOutputFile.table_metadata": "5fae1315550ee2b5",
    "TableMetadata.snapshot_by_id": "75e74f74b599292b",
    "TableMetadata.serialize_snapshots": "9201fd09d62e50ad",
}


def _sources() -> dict[str, object]:
    stock_update, stock_commit, stock_by_id = engine.stock_functions()
    return {
        "update_table_metadata": stock_update,
        "SqlCatalog.commit_table": stock_commit,
        "MetastoreCatalog._update_and_stage_table": MetastoreCatalog._update_and_stage_table,
        "Transaction.table_metadata": Transaction.table_metadata.fget,
        "Transaction._append_snapshot_producer": Transaction._append_snapshot_producer,
        "Transaction.commit_transaction": Transaction.commit_transaction,
        "Transaction._stage": Transaction._stage,
        "Table._do_commit": Table._do_commit,
        "_SnapshotProducer._manifests": _SnapshotProducer._manifests,
        "_FastAppendFiles._existing_manifests": _FastAppendFiles._existing_manifests,
        "_MergeAppendFiles.__init__": _MergeAppendFiles.__init__,
        "_ManifestMergeManager._create_manifest": _ManifestMergeManager._create_manifest,
        "_ManifestMergeManager.merge_manifests": _ManifestMergeManager.merge_manifests,
        "ToOutputFile.table_metadata": ToOutputFile.table_metadata,
        "TableMetadata.snapshot_by_id": stock_by_id,
        "TableMetadata.serialize_snapshots": TableMetadataCommonFields.serialize_snapshots,
    }


def _rows(table: Table, start: int, n: int = 10) -> pa.Table:
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    base = 1_765_900_800_000_000_000 + start * 1_000_000
    ts = [base + i * 1_000_000 for i in range(n)]
    cols = {
        "ts_event_ns": ts,
        "ts_recv_ns": ts,
        "source": ["t"] * n,
        "symbol": ["SPY"] * n,
        "price": [1.0] * n,
        "size": [1] * n,
        "exchange": [1] * n,
        "seq": list(range(start, start + n)),
        "ts_event": pa.array([t // 1000 for t in ts], pa.timestamp("us", "UTC")),
    }
    return pa.Table.from_pydict(
        {f.name: pa.array(cols.get(f.name, [None] * n), f.type) for f in schema}, schema=schema
    )


def test_pyiceberg_is_the_version_and_source_the_commit_fixes_were_written_for() -> None:
    assert pyiceberg.__version__ == engine.PYICEBERG_COMMIT_FIX_VERSION, (
        "pyiceberg was upgraded: re-verify iceberg_lake/engine/iceberg.py's commit fixes "
        "(shallow metadata updates, known-base SQL commit, snapshot JSON cache, manifest fold)"
    )
    changed = [
        name
        for name, obj in _sources().items()
        if hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
        != PYICEBERG_SOURCES[name]
    ]
    assert not changed, f"pyiceberg changed {changed}: re-verify engine/iceberg.py's fixes"
    # What the fix removes is still there in stock pyiceberg.
    assert "model_copy(deep=True)" in inspect.getsource(engine.stock_functions()[0])
    assert engine.commit_fixes_installed()


def test_shallow_update_equals_stock_and_shares_unchanged_parts(lake: LakeCatalog) -> None:
    table = lake.load_table(TABLE)
    for i in range(3):
        table.append(_rows(table, i * 10))
    tx = Transaction(table)
    tx.set_properties({"lake.watermark.x": "1"})
    tx.append(_rows(table, 100))
    stock_update = engine.stock_functions()[0]
    stock = stock_update(table.metadata, tx._updates)
    shallow = engine._update_table_metadata_shallow(table.metadata, tx._updates)
    same_time = {**stock.model_dump(), "last-updated-ms": shallow.last_updated_ms}
    assert shallow.model_dump() == same_time
    # The unchanged snapshots are the very same (frozen) objects: nothing was deep-copied.
    assert all(a is b for a, b in zip(table.metadata.snapshots, shallow.snapshots, strict=False))
    assert not any(a is b for a, b in zip(table.metadata.snapshots, stock.snapshots, strict=False))
    # The cached-snapshot JSON is the JSON pyiceberg writes.
    assert json.loads(engine.metadata_json(shallow)) == json.loads(shallow.model_dump_json())


def test_metadata_json_and_snapshot_index_match_pyiceberg_across_appends_and_expiry(
    lake: LakeCatalog,
) -> None:
    table = lake.load_table(TABLE)
    for i in range(70):  # past the index's 64-snapshot threshold
        with engine.watermarked_append(table, watermark={"lake.watermark.s.c": str(i)}) as app:
            app.append(_rows(table, i * 10, 2))
        if i % 23 == 0 or i >= 66:  # the incremental (prefix) path and a full rebuild
            assert json.loads(engine.metadata_json(table.metadata)) == json.loads(
                table.metadata.model_dump_json()
            )
    stock_by_id = engine.stock_functions()[2]
    md = table.metadata
    for snap in md.snapshots[::7]:
        assert md.snapshot_by_id(snap.snapshot_id) is stock_by_id(md, snap.snapshot_id) is snap
    assert md.snapshot_by_id(12345) is None
    # Expiry removes snapshots from the start: not a prefix any more, rebuilt exactly.
    table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in md.snapshots[:5]]).commit()
    assert json.loads(engine.metadata_json(table.metadata)) == json.loads(
        table.metadata.model_dump_json()
    )
    assert lake.load_table(TABLE).metadata.model_dump() == table.metadata.model_dump()


def test_snapshot_json_cache_keeps_one_string_per_snapshot_across_reloads(
    lake: LakeCatalog,
) -> None:
    """Reloading a table parses new objects for the same snapshots, and expiry removes
    snapshots: the cache follows the snapshots kept, not the reloads (it reached 100,000
    entries, ~400 MB, in a soak run) nor the commits made (found by the second soak)."""
    table = lake.load_table(TABLE)
    for i in range(12):
        with engine.watermarked_append(table, watermark={"lake.watermark.s.c": str(i)}) as app:
            app.append(_rows(table, i * 10, 2))
    uuid_ = str(table.metadata.table_uuid)
    engine._SNAPSHOT_JSON.clear()
    for _ in range(4):
        table.refresh()
        assert json.loads(engine.metadata_json(table.metadata)) == json.loads(
            table.metadata.model_dump_json()
        )
        cache = engine._SNAPSHOT_JSON[uuid_]
        assert len(cache) == 12 and all(isinstance(v[1], str) for v in cache.values())
    # A different snapshot under a known id (a retried commit's new manifest list) is not
    # served the cached JSON.
    snap = table.metadata.snapshots[-1]
    other = snap.model_copy(update={"manifest_list": snap.manifest_list + ".retry"})
    assert json.loads(engine._snapshot_json(cache, other))["manifest-list"].endswith(".retry")
    assert json.loads(engine._snapshot_json(cache, snap))["manifest-list"] == snap.manifest_list
    # 60 more commits, each followed by an expiry down to 5 snapshots.
    for i in range(60):
        with engine.watermarked_append(table, watermark={"lake.watermark.s.c": str(i)}) as app:
            app.append(_rows(table, 1000 + i * 10, 1))
        old = [s.snapshot_id for s in table.metadata.snapshots[:-5]]
        engine.expire_snapshot_ids(table, old)
    assert len(table.metadata.snapshots) == 5
    assert len(engine._SNAPSHOT_JSON[uuid_]) <= 2 * 5 + 16 + 1
    assert json.loads(engine.metadata_json(table.metadata)) == json.loads(
        table.metadata.model_dump_json()
    )


def test_snapshot_json_cache_is_pruned_safely_beside_another_commit_thread() -> None:
    """`lake serve` commits to one Bronze table from two threads (its writer and the inference
    writer): pruning the table's cache while the other thread adds to it raised "dictionary
    changed size during iteration" inside a commit (review6)."""
    table_uuid = str(uuid.uuid4())

    def snap(i: int) -> Snapshot:
        return Snapshot(
            snapshot_id=i,
            sequence_number=i,
            timestamp_ms=i,
            manifest_list=f"file:///m/{i}.avro",
            summary=Summary(Operation.APPEND),
        )

    kept = [snap(i) for i in range(5)]
    expired = [snap(i) for i in range(100_000, 101_000)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(work: Callable[[], None]) -> None:
        try:
            while not stop.is_set():
                work()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever ended it
            errors.append(exc)
            stop.set()

    def fill_then_prune() -> None:
        cache = engine._snapshot_cache(table_uuid, kept)
        for s in expired:
            engine._snapshot_json(cache, s)
        engine._snapshot_cache(table_uuid, kept)

    counter = iter(range(200_000, 10**9))

    def add_one() -> None:
        engine._snapshot_json(engine._snapshot_cache(table_uuid, kept), snap(next(counter)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(w,)) for w in (fill_then_prune, add_one)]
        for t in threads:
            t.start()
        stop.wait(2.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        engine._SNAPSHOT_JSON.pop(table_uuid, None)
    assert errors == []


def test_expiry_deletes_the_metadata_files_it_drops_from_the_log(lake: LakeCatalog) -> None:
    """`expire_snapshot_ids` commits through `Table._do_commit`, which applies
    `write.metadata.delete-after-commit.enabled`: a commit through the catalog alone left one
    metadata file behind per expiry (found by the soak audit)."""
    table = lake.load_table(TABLE)
    keep = int(table.properties["write.metadata.previous-versions-max"])
    metadata_dir = Path(table.metadata_location.removeprefix("file://")).parent

    def stray() -> set[str]:
        table.refresh()
        on_disk = {p.name for p in metadata_dir.glob("*.metadata.json")}
        logged = {Path(e.metadata_file).name for e in table.metadata.metadata_log}
        return on_disk - logged - {Path(table.metadata_location).name}

    for i in range(keep + 5):
        table.append(_rows(table, i * 10, 1))
    assert len(table.metadata.metadata_log) == keep and not stray()
    for i in range(6):
        engine.expire_snapshot_ids(table, [table.metadata.snapshots[0].snapshot_id])
        table.append(_rows(table, 1000 + i * 10, 1))
    assert not stray()
    assert len(list(metadata_dir.glob("*.metadata.json"))) == keep + 1


def test_watermarked_append_is_one_fast_append_and_stale_tables_still_commit(
    lake: LakeCatalog,
) -> None:
    table = lake.load_table(TABLE)
    # pyiceberg's merge-append would fold from the 2nd manifest on (the default, 100, would hide
    # a writer that merges): the 6 manifests below are the writers' fast appends.
    with table.transaction() as tx:
        tx.set_properties(
            {"commit.manifest-merge.enabled": "true", "commit.manifest.min-count-to-merge": "2"}
        )
    producer = engine._FastAppendTransaction(table)._append_snapshot_producer({})
    assert isinstance(producer, _FastAppendFiles) and not isinstance(producer, _MergeAppendFiles)
    stale = lake.load_table(TABLE)
    for i in range(6):
        with engine.watermarked_append(table, watermark={"lake.watermark.s.c": str(i)}) as app:
            app.append(_rows(table, i * 10))
    fresh = lake.load_table(TABLE)
    assert fresh.properties["lake.watermark.s.c"] == "5"
    assert len(fresh.metadata.snapshots) == 6
    assert {s.summary.operation.value for s in fresh.metadata.snapshots} == {"append"}
    # Writers never fold: one manifest per commit, until the policy run folds them.
    assert len(fresh.current_snapshot().manifests(fresh.io)) == 6
    assert engine.small_manifest_count(fresh) == 6
    assert engine.fold_small_manifests(fresh, {"lake.operation": "fold-manifests"}, 7) is None
    before = fresh.current_snapshot().snapshot_id
    folded = engine.fold_small_manifests(fresh, {"lake.operation": "fold-manifests"}, 4)
    fresh = lake.load_table(TABLE)
    snap = fresh.current_snapshot()
    assert folded == snap.snapshot_id and snap.parent_snapshot_id == before
    assert snap.summary.additional_properties["lake.operation"] == "fold-manifests"
    assert snap.summary.additional_properties.get("added-records", "0") == "0"
    assert len(snap.manifests(fresh.io)) == 1 and engine.small_manifest_count(fresh) == 1
    assert engine.fold_small_manifests(fresh, {"lake.operation": "fold-manifests"}, 2) is None
    assert fresh.properties["lake.watermark.s.c"] == "5"
    assert fresh.scan().to_arrow().num_rows == 60
    # A fold's output is folded again with the next small manifests (bounded list length).
    for i in range(3):
        with engine.watermarked_append(fresh, watermark={"lake.watermark.s.c": str(6 + i)}) as a:
            a.append(_rows(fresh, 500 + i * 10))
    assert engine.small_manifest_count(fresh) == 4
    assert engine.fold_small_manifests(fresh, {"lake.operation": "fold-manifests"}, 4)
    fresh = lake.load_table(TABLE)
    (manifest,) = fresh.current_snapshot().manifests(fresh.io)
    assert manifest.existing_files_count == 9 and fresh.scan().to_arrow().num_rows == 90
    # A commit from a table loaded before those commits falls back to pyiceberg's own path.
    with engine.watermarked_append(stale, watermark={"lake.watermark.s.c": "9"}) as app:
        app.append(_rows(stale, 1000))
    fresh = lake.load_table(TABLE)
    assert fresh.scan().to_arrow().num_rows == 100
    assert fresh.properties["lake.watermark.s.c"] == "9"
    # Maintenance's manifest rewrite leaves one manifest and the same rows.
    assert engine.rewrite_manifests(fresh, {"lake.operation": "rewrite-manifests"}) is not None
    fresh = lake.load_table(TABLE)
    assert len(fresh.current_snapshot().manifests(fresh.io)) == 1
    assert fresh.scan().to_arrow().num_rows == 100


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_lake(request: pytest.FixtureRequest, tmp_path: Path) -> LakeCatalog:
    """A fresh lake on each SQL catalog the lake supports (its own catalog name on the shared
    PostgreSQL server)."""
    env = {"LAKE_DATA_DIR": str(tmp_path / "data"), "LAKE_CATALOG_NAME": f"c{uuid.uuid4().hex[:8]}"}
    if request.param == "postgresql":
        env["LAKE_CATALOG_URI"] = request.getfixturevalue("postgres_server").uri
    catalog = LakeCatalog(load_settings(env))
    catalog.init()
    return catalog


def test_sql_commit_lands_on_the_known_base_falls_back_when_stale_and_fences(
    sql_lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patched `SqlCatalog.commit_table` (`engine._sql_commit_table`) on SQLite and
    PostgreSQL: a commit from an up-to-date table is one conditional UPDATE (no stock call); a
    stale table's UPDATE matches no row, its staged metadata file is deleted and the stock
    method decides: it lands a plain append and rejects a fenced one (`expected=`)."""
    stock_calls: list[int] = []
    stock = engine._STOCK_SQL_COMMIT

    def counted(*args: object) -> object:
        stock_calls.append(1)
        return stock(*args)

    monkeypatch.setattr(engine, "_STOCK_SQL_COMMIT", counted)
    key = "lake.watermark.s.c"
    a, stale, fenced = (sql_lake.load_table(TABLE) for _ in range(3))
    # The known-base path needs the UPDATE's row count; without it every commit is stock.
    assert a.catalog.engine.dialect.supports_sane_rowcount  # type: ignore[attr-defined]
    with engine.watermarked_append(a, watermark={key: "1"}, expected={key: None}) as app:
        app.append(_rows(a, 0))
    assert stock_calls == []
    fresh = sql_lake.load_table(TABLE)
    assert fresh.metadata_location == a.metadata_location and fresh.properties[key] == "1"
    assert fresh.metadata.metadata_log[-1].metadata_file == stale.metadata_location

    with engine.watermarked_append(stale, watermark={key: "2"}) as app:
        app.append(_rows(stale, 100))
    assert stock_calls == [1]
    fresh = sql_lake.load_table(TABLE)
    assert fresh.properties[key] == "2" and fresh.scan().to_arrow().num_rows == 20
    assert len(fresh.metadata.snapshots) == 2

    with pytest.raises(ValidationException, match="this writer expected"):
        with engine.watermarked_append(fenced, watermark={key: "3"}, expected={key: None}) as app:
            app.append(_rows(fenced, 200))
    assert stock_calls == [1, 1]
    fresh = sql_lake.load_table(TABLE)
    assert fresh.properties[key] == "2" and fresh.scan().to_arrow().num_rows == 20
    # No metadata file left behind by the two commits that did not land on the known base.
    metadata_dir = Path(fresh.metadata_location.removeprefix("file://")).parent
    written = {p.name for p in metadata_dir.glob("*.metadata.json")}
    logged = {Path(e.metadata_file).name for e in fresh.metadata.metadata_log}
    assert written == logged | {Path(fresh.metadata_location).name}
