"""Atomic replacement of partitions: ONE Iceberg `overwrite` snapshot that swaps files.

`Table.overwrite(df, overwrite_filter=...)` commits a DELETE snapshot and then an APPEND snapshot,
so a reader pinned between them sees an empty partition; `dynamic_partition_overwrite` refuses
hour/day transforms. This module drives pyiceberg's overwrite snapshot producer directly: the new
data files are written first (partition by partition, so memory stays bounded), then one commit
removes exactly the old files of the replaced partitions and adds the new ones.

It is used by the Silver compactor and by small-file compaction (`lake maintain compact-files`).
`expire_snapshot_ids` removes snapshots with a commit precondition (pyiceberg's expiry has none),
for `lake maintain expire-snapshots`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysFalse, BooleanExpression, Or
from pyiceberg.io import FileIO, OutputFile
from pyiceberg.manifest import DataFile, ManifestContent, ManifestFile
from pyiceberg.partitioning import PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata, TableMetadataUtil
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update import (
    AssertTableUUID,
    RemoveSnapshotsUpdate,
    ValidatableTableRequirement,
)
from pyiceberg.table.update.snapshot import (
    _FastAppendFiles,
    _ManifestMergeManager,
    _OverwriteFiles,
)
from pyiceberg.typedef import Record

from iceberg_lake.exceptions import CommitConflictError, LakeError

log = logging.getLogger(__name__)


@contextmanager
def _commit_conflicts(table: Table) -> Iterator[None]:
    """A lost optimistic commit (another writer's commit won) as `CommitConflictError`, with
    `table` refreshed so the caller can retry on the new state."""
    try:
        yield
    except (CommitFailedException, ValidationException) as exc:
        table.refresh()
        raise CommitConflictError(f"{table.name()}: concurrent commit ({exc})") from exc


#: The exceptions that prove a commit did not land: pyiceberg raises them before the catalog took
#: the new metadata, and `Transaction.commit_transaction` deletes its own files on exactly these.
#: After any other exception (a lost reply from the catalog database, an interrupt) the commit
#: may have landed, and the files written for it may be the table's: they are kept (orphans, if
#: it did not land, for `lake maintain remove-orphans`). Deleting them lost committed data.
COMMIT_REFUSED = (CommitFailedException, ValidationException)


def _keep_files_note(table: Table, count: int, exc: BaseException) -> None:
    log.info(
        "%s: commit outcome unknown (%s): its %d written files are kept",
        table.name(),
        type(exc).__name__,
        count,
    )


def _current_snapshot_id(table: Table) -> int | None:
    snapshot = table.current_snapshot()
    return snapshot.snapshot_id if snapshot else None


def write_data_files(
    table: Table,
    rows: pa.Table,
    write_uuid: uuid.UUID,
    counter: itertools.count[int] | None = None,
) -> list[DataFile]:
    """Write `rows` as Parquet data files of `table` (not yet committed).

    Wraps pyiceberg's private `_dataframe_to_data_files` in this one place. The rows must already
    be sorted the way they should be stored (pyiceberg does not sort on write). File names are
    `<n>-<task>-<write_uuid>`: calls that share a `write_uuid` must share `counter` too, or a
    later call overwrites an earlier call's files.
    """
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    if rows.num_rows == 0:
        return []
    return list(
        _dataframe_to_data_files(
            table.metadata, rows, table.io, write_uuid=write_uuid, counter=counter
        )
    )


def write_partition_files(
    table: Table,
    partitions: list[pa.Table],
    write_uuid: uuid.UUID,
    counter: itertools.count[int] | None = None,
) -> list[DataFile]:
    """Write rows already split by partition as data files of `table` (not yet committed).

    Each table in `partitions` must hold rows of ONE partition of the table's current spec (the
    caller sorted and sliced them). pyiceberg's `_dataframe_to_data_files` would find the
    partitions again by filtering the whole input once per partition; here the partition key is
    read from each part (checked to hold one value of every field: `ValueError` otherwise) and
    every part goes straight to pyiceberg's `write_file` (which writes the parts in its thread
    pool). Uses pyiceberg internals (`WriteTask`,
    `write_file`, `bin_pack_arrow_table`, `pyarrow_to_schema`, `PartitionKey`): guarded by
    `tests/engine/test_partition_files_guard.py`, which compares the result with `write_data_files`.
    """
    import pyarrow.compute as pc
    from pyiceberg.io.pyarrow import bin_pack_arrow_table, pyarrow_to_schema, write_file
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.table import TableProperties, WriteTask
    from pyiceberg.utils.properties import property_as_int

    parts = [p for p in partitions if p.num_rows]
    if not parts:
        return []
    metadata = table.metadata
    spec, schema = metadata.spec(), metadata.schema()
    counter = counter if counter is not None else itertools.count()
    target_size = (
        property_as_int(
            metadata.properties,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
        )
        or TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT
    )
    task_schema = pyarrow_to_schema(
        parts[0].schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )

    def key_of(part: pa.Table) -> PartitionKey | None:
        if spec.is_unpartitioned():
            return None
        values = []
        for f in spec.fields:
            source = schema.find_field(f.source_id)
            name = schema.find_column_name(f.source_id)
            keys = f.transform.pyarrow_transform(source.field_type)(part.column(name))
            # The file is labelled with this one value and readers prune by it: a part holding
            # several (load18: cut by symbol and hour only, after a field was added to the
            # spec) would hide its other rows from every filter on the field.
            low, high = pc.min_max(keys).values()
            nulls = keys.null_count
            if low != high or 0 < nulls < len(keys):
                raise ValueError(
                    f"{table.name()}: a part holds several values of partition field {f.name}"
                )
            values.append(PartitionFieldValue(field=f, value=low.as_py()))
        return PartitionKey(field_values=values, partition_spec=spec, schema=schema)

    tasks = (
        WriteTask(
            write_uuid=write_uuid,
            task_id=next(counter),
            record_batches=batches,
            partition_key=key_of(part),
            schema=task_schema,
        )
        for part in parts
        for batches in bin_pack_arrow_table(part, target_size)
    )
    return list(write_file(io=table.io, table_metadata=metadata, tasks=tasks))


class _NamedFilesOverwrite(_OverwriteFiles):
    """pyiceberg's overwrite producer whose conflict check is only "the named files still exist".

    pyiceberg validates an overwrite on its own retry (`Transaction.commit_transaction` refreshes,
    then `_rebuild_snapshot_updates` calls `_validate_concurrency` and re-plans the manifests on
    the new head). The stock check also fails on ANY data file added since the start when the
    overwrite has no predicate (serializable isolation with no filter), so a late append
    anywhere in the table would conflict. This one keeps only the checks about the replaced
    files themselves: none of them was deleted meanwhile (`_validate_data_files_exist`; a
    concurrent compaction of the same files conflicts, which is what keeps rows from being added
    twice) and no delete file was added for them (`_validate_no_new_deletes_for_data_files`).
    The re-planned manifests drop only entries named by `delete_data_file` (`_existing_manifests`
    keeps every other entry; `_deleted_entries` raises when a named file is gone), so files
    added meanwhile are kept as they are. Guard: `tests/engine/test_iceberg_replace_guard.py`.
    """

    def _validate_concurrency(self) -> None:
        from pyiceberg.table.update.validate import (
            _validate_data_files_exist,
            _validate_no_new_deletes_for_data_files,
        )

        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        table = self._transaction._table
        _validate_data_files_exist(table, window.head, self._deleted_data_files, window.base)
        _validate_no_new_deletes_for_data_files(
            table, window.head, None, self._deleted_data_files, window.base
        )


@dataclass
class PartitionReplacement:
    """Collects partition replacements and commits them as one `overwrite` snapshot.

    Usage::

        rep = PartitionReplacement(table, {"lake.source-snapshot-id": "123"})
        for predicate, rows in partitions:
            rep.replace(predicate, rows, old_files)   # writes new files now
        snapshot_id = rep.commit()

    Not idempotent by itself: callers decide whether a replacement is needed. If the commit fails,
    the written files are orphans (removed by `lake maintain remove-orphans`).

    Whatever the validation, the commit deletes only `old_files`, by name: the predicates never
    delete anything. `validation` decides what a concurrent commit must not have done:

    * `"predicate"` (default): added or deleted a data file matching the predicates (pyiceberg's
      serializable overwrite check), or deleted one of `old_files`. The replaced partitions are
      exactly what was planned: a late file inside the predicates makes the caller re-plan.
    * `"files"`: deleted one of `old_files` (or added delete files for them). Files added
      meanwhile, even inside the predicates, do not conflict and stay as they are (not deleted,
      not rewritten); no predicate is passed to pyiceberg at all. For rewrites that keep rows
      (`compact-files`), which must make progress while late rows keep landing.
    """

    table: Table
    snapshot_properties: dict[str, str]
    write_uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    _file_counter: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    predicate: BooleanExpression = field(default_factory=AlwaysFalse)
    old_files: list[DataFile] = field(default_factory=list)
    new_files: list[DataFile] = field(default_factory=list)
    #: Table properties set in the same transaction as the snapshot (e.g. a progress watermark).
    table_properties: dict[str, str] = field(default_factory=dict)
    #: Property values the table must still have at commit time (None: absent), checked on
    #: every pyiceberg retry: a compare-and-swap on the values this writer planned from
    #: (`require_properties`). None: no check.
    expected_properties: dict[str, str | None] | None = None
    #: What a concurrent commit must not have done for this one to land (see the class doc).
    validation: Literal["predicate", "files"] = "predicate"
    #: A table property set to the new snapshot's id in the same commit (None: none); with
    #: `snapshot_sequence`, `<id>:<sequence number>` (the number staged: a retry of pyiceberg's
    #: own may commit it higher, never lower).
    snapshot_id_property: str | None = None
    snapshot_sequence: bool = False
    #: Set once the commit was sent and not refused: the new files are (or may be) the table's,
    #: so `discard_new_files` leaves them alone.
    _sent: bool = field(default=False, repr=False)

    def replace(
        self, predicate: BooleanExpression, rows: pa.Table, old_files: list[DataFile]
    ) -> None:
        """Replace the files `old_files` (all inside `predicate`) with `rows`.

        Args:
            predicate: a row filter that covers exactly the replaced partition(s); it scopes the
                commit's conflict validation so appends to other partitions do not conflict.
            rows: the new content of the partition(s), sorted; may be empty (partition emptied).
            old_files: the data files currently holding the partition(s).
        """
        self.predicate = Or(self.predicate, predicate)
        self.old_files.extend(old_files)
        self.new_files.extend(
            write_data_files(self.table, rows, self.write_uuid, self._file_counter)
        )

    def replace_files(
        self, predicate: BooleanExpression, new_files: list[DataFile], old_files: list[DataFile]
    ) -> None:
        """Like `replace`, with data files the caller already wrote (e.g. streamed).

        Args:
            predicate: a row filter that covers exactly the replaced partition(s).
            new_files: uncommitted data files holding the partition's new content (may be empty).
            old_files: the data files currently holding the partition(s).
        """
        self.predicate = Or(self.predicate, predicate)
        self.old_files.extend(old_files)
        self.new_files.extend(new_files)

    def discard_new_files(self) -> None:
        """Delete the written, uncommitted new files (best effort; after a failed commit).

        Does nothing once the commit was sent and not refused (see `COMMIT_REFUSED`): it landed
        or may have, so the files may be the table's.
        """
        if self._sent:
            return
        _delete_quietly(self.table, self.new_files)

    @property
    def is_empty(self) -> bool:
        """True when nothing would change."""
        return not self.old_files and not self.new_files

    def commit(self) -> int | None:
        """Commit all replacements as one snapshot; return its id (None if nothing to do).

        Raises:
            CommitConflictError: a concurrent commit touched the same partitions (with
                `validation="predicate"`), deleted one of the replaced files (also when
                pyiceberg's retry found them already gone), or changed one of
                `expected_properties`.
        """
        if self.is_empty:
            return None
        with _commit_conflicts(self.table):
            tx = self.table.transaction()
            if self.expected_properties is not None:
                require_properties(tx, self.expected_properties)
            if self.table_properties:
                tx.set_properties(self.table_properties)
            producer: _OverwriteFiles
            if self.validation == "files":
                # No predicate at all: nothing but the named files can be deleted, and the
                # conflict check is only that they still exist (`_NamedFilesOverwrite`).
                producer = _NamedFilesOverwrite(
                    # as `UpdateSnapshot.overwrite` decides it
                    operation=Operation.OVERWRITE
                    if tx.table_metadata.snapshot_by_name(MAIN_BRANCH) is not None
                    else Operation.APPEND,
                    transaction=tx,
                    io=self.table.io,
                    commit_uuid=self.write_uuid,
                    snapshot_properties=self.snapshot_properties,
                    branch=MAIN_BRANCH,
                )
            else:
                producer = tx.update_snapshot(
                    snapshot_properties=self.snapshot_properties
                ).overwrite(commit_uuid=self.write_uuid)
                producer.delete_by_predicate(self.predicate)
            with producer:
                for f in self.old_files:
                    producer.delete_data_file(f)
                for f in self.new_files:
                    producer.append_data_file(f)
            if self.snapshot_id_property:
                # The staged metadata's main branch is the new snapshot (its id is fixed when
                # the producer is made, so pyiceberg's own retries keep it).
                staged = tx.table_metadata.snapshot_by_name(MAIN_BRANCH)
                assert staged is not None
                value = str(staged.snapshot_id)
                if self.snapshot_sequence:
                    value = f"{value}:{staged.sequence_number or 0}"
                tx.set_properties({self.snapshot_id_property: value})
            try:
                tx.commit_transaction()
            except BaseException as exc:
                if not isinstance(exc, COMMIT_REFUSED):
                    self._sent = True
                    _keep_files_note(self.table, len(self.new_files), exc)
                raise
            self._sent = True
        return _current_snapshot_id(self.table)


# ---- data files written by the lake's own writers (Silver streams them) ------------------------

#: pyiceberg versions whose private members below are known to behave as relied on; the guard
#: tests in `tests/engine/test_guards.py` fail on any other version until re-checked.
PYICEBERG_VERSIONS_CHECKED = ("0.12.",)


def parquet_writer_kwargs(properties: Mapping[str, str]) -> dict[str, Any]:
    """`pyarrow.parquet.ParquetWriter` options from a table's `write.parquet.*` properties.

    Wraps pyiceberg's private `_get_parquet_writer_kwargs` (compression codec and level, page
    and dictionary sizes, the same options `Table.append` uses) in this one place. Guard test:
    `test_parquet_writer_kwargs_guard`.
    """
    from pyiceberg.io.pyarrow import _get_parquet_writer_kwargs

    return dict(_get_parquet_writer_kwargs(dict(properties)))


@dataclass(frozen=True)
class RecordPartitionKey(PartitionKey):
    """A `PartitionKey` built from an already transformed partition record (a data file's).

    pyiceberg's `PartitionKey` computes its record from source values; a writer that already
    knows the partition tuple (`DataFile.partition`) passes it here. Relies on
    `PartitionKey.to_path()` reading `self.partition`.
    Guard test: `test_record_partition_key_guard`.
    """

    record: Record = field(default_factory=Record)

    @property
    def partition(self) -> Record:
        """The partition tuple given at construction."""
        return self.record


def partition_key(spec: PartitionSpec, schema: Schema, record: Record) -> PartitionKey:
    """The `PartitionKey` of a partition tuple of `spec` (for `LocationProvider` and friends)."""
    return RecordPartitionKey(field_values=[], partition_spec=spec, schema=schema, record=record)


def column_bounds(data_file: DataFile, schema: Schema, column: str) -> tuple[Any, Any] | None:
    """The (lower, upper) bounds a data file's metadata records for `column`, decoded.

    Decoded with `pyiceberg.conversions.from_bytes` for the column's type (a `long` comes back
    as an `int`). None when the file has no bounds for the column.
    """
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import PrimitiveType

    field_ = schema.find_field(column)
    lower, upper = data_file.lower_bounds or {}, data_file.upper_bounds or {}
    if field_.field_id not in lower or field_.field_id not in upper:
        return None
    if not isinstance(field_.field_type, PrimitiveType):
        return None
    return (
        from_bytes(field_.field_type, lower[field_.field_id]),
        from_bytes(field_.field_type, upper[field_.field_id]),
    )


def partition_field_bounds(
    manifest: ManifestFile, spec: PartitionSpec, schema: Schema, position: int
) -> tuple[Any, Any] | None:
    """The (lower, upper) bounds a manifest's partition summary records for one partition field.

    Decoded with `pyiceberg.conversions.from_bytes` for the field's result type (an `hour` or
    `day` partition comes back as an `int`: hours or days since the epoch). The manifest must
    be of `spec` (the caller checks `manifest.partition_spec_id`). None when the manifest has no
    partition summaries or no bounds for the field (all its values are null).

    Args:
        manifest: a manifest of the snapshot's manifest list.
        spec: the partition spec the manifest was written with.
        schema: the table schema (for the partition field's source type).
        position: the field's position in `spec.fields`.
    """
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import PrimitiveType

    summaries = manifest.partitions or []
    if position >= len(summaries):
        return None
    summary = summaries[position]
    if summary.lower_bound is None or summary.upper_bound is None:
        return None
    pf = spec.fields[position]
    result_type = pf.transform.result_type(schema.find_field(pf.source_id).field_type)
    if not isinstance(result_type, PrimitiveType):
        return None
    return (
        from_bytes(result_type, summary.lower_bound),
        from_bytes(result_type, summary.upper_bound),
    )


def partition_values(record: Record) -> tuple[Any, ...]:
    """A partition record (`DataFile.partition`) as a hashable tuple of its values."""
    return tuple(record[i] for i in range(len(record)))


# ---- commit cost independent of history --------------------------------------------------------
#
# pyiceberg 0.12's `update_table_metadata` ends with `new_metadata.model_copy(deep=True)`: a deep
# copy of the whole table metadata (every snapshot, its summary, every log entry). It runs on
# every `Transaction.table_metadata` access (about 19 times per append) and once more in the
# catalog's commit, so an append costs more with every snapshot kept (45 ms at 10 snapshots,
# 471 ms at 600 in the measurement of issue 13). The metadata models are frozen pydantic models
# and every update function in `pyiceberg.table.update` builds new lists/dicts instead of
# mutating the base's (checked in the guard test), so sharing the unchanged parts with the base
# is equivalent to the deep copy. `install_commit_fixes()` swaps in the same function without the
# deep copy; it is installed when this module is imported (every lake component that commits
# imports it) and is idempotent.

#: The pyiceberg release the commit fix was written and verified for (guard test).
PYICEBERG_COMMIT_FIX_VERSION = "0.12.0"
_STOCK_UPDATE_TABLE_METADATA: Any = None


def _update_table_metadata_shallow(
    base_metadata: TableMetadata,
    updates: tuple[Any, ...],
    enforce_validation: bool = False,
    metadata_location: str | None = None,
) -> TableMetadata:
    """pyiceberg 0.12's `update_table_metadata`, minus the final deep copy (see above)."""
    from pyiceberg.table.update import (
        _apply_table_update,
        _TableMetadataUpdateContext,
        _update_table_metadata_log,
    )
    from pyiceberg.utils.datetime import datetime_to_millis

    context = _TableMetadataUpdateContext()
    new_metadata = base_metadata
    for update in updates:
        new_metadata = _apply_table_update(update, new_metadata, context)
    if context.has_changes():
        if metadata_location:
            new_metadata = _update_table_metadata_log(
                new_metadata, metadata_location, base_metadata.last_updated_ms
            )
        if base_metadata.last_updated_ms == new_metadata.last_updated_ms:
            now_ms = datetime_to_millis(datetime.now().astimezone())
            new_metadata = new_metadata.model_copy(update={"last_updated_ms": now_ms})
    new_metadata.spec().check_compatible(new_metadata.schema())
    new_metadata.sort_order().check_compatible(new_metadata.schema())
    if enforce_validation:
        return TableMetadataUtil.parse_obj(new_metadata.model_dump())
    return new_metadata


#: Modules that bound `update_table_metadata` by name at import (`from ... import ...`).
_PATCHED_MODULES = ("pyiceberg.table.update", "pyiceberg.table", "pyiceberg.catalog")
_STOCK_SQL_COMMIT: Any = None


#: Snapshot JSON per table (uuid), by snapshot id: (fingerprint, its JSON). A snapshot never
#: changes once committed, so each is serialised once instead of once per commit (pyiceberg
#: serialises a snapshot's summary with a Python-level serializer: 56 ms per commit at 3,600
#: snapshots), also across reloads of the table, which parse new objects for the same snapshots.
#: Only strings are kept, and only for about the table's current snapshots (expired ones are
#: dropped once they would double the cache): keyed by object, every reload added a full set of
#: entries holding the parsed objects alive (~400 MB in a long-running writer), and keyed by id
#: alone every commit added one for good (both found by the soak audits). The fingerprint
#: (manifest list, sequence number, parent, timestamp) tells a snapshot from a different one
#: that reuses its id (a retried commit writes a new manifest list).
_SNAPSHOT_JSON: dict[str, dict[int, tuple[tuple[Any, ...], str]]] = {}
_SNAPSHOT_JSON_TABLES_MAX = 1_000
#: The last JSON array written per (table uuid, field): (the list, its items' JSON as a few
#: UTF-8 chunks). A commit's list usually extends the previous one (same objects, one more at
#: the end), so only the new items are serialised and nothing is copied: the chunks are written
#: one after the other (merged into one every 64 commits).
_LIST_JSON: dict[tuple[str, str], tuple[list[Any], list[bytes]]] = {}


def _snapshot_json(cache: dict[int, tuple[tuple[Any, ...], str]], snap: Any) -> str:
    fingerprint = (
        snap.manifest_list,
        snap.sequence_number,
        snap.parent_snapshot_id,
        snap.timestamp_ms,
    )
    entry = cache.get(snap.snapshot_id)
    if entry is None or entry[0] != fingerprint:
        entry = (fingerprint, snap.model_dump_json())
        cache[snap.snapshot_id] = entry
    return entry[1]


def _snapshot_cache(uuid_: str, snapshots: list[Any]) -> dict[int, tuple[tuple[Any, ...], str]]:
    """The table's snapshot-JSON cache, without the expired snapshots once they would double
    it (amortised: one pass per about as many commits as the table keeps snapshots)."""
    cache = _SNAPSHOT_JSON.get(uuid_)
    if cache is None:
        if len(_SNAPSHOT_JSON) >= _SNAPSHOT_JSON_TABLES_MAX:
            _SNAPSHOT_JSON.clear()
        cache = _SNAPSHOT_JSON[uuid_] = {}
    elif len(cache) > 2 * len(snapshots) + 16:
        # A new dict swapped in, not deletions while iterating: another commit thread of the
        # process (the inference writer beside a table's writer) may be adding to this one
        # (`list()` copies it in one step under the GIL; an entry it misses is recomputed).
        live = {s.snapshot_id for s in snapshots}
        cache = _SNAPSHOT_JSON[uuid_] = {k: v for k, v in list(cache.items()) if k in live}
    return cache


def _log_entry_json(entry: Any) -> str:
    return f'{{"snapshot-id":{int(entry.snapshot_id)},"timestamp-ms":{int(entry.timestamp_ms)}}}'


def _array_parts(key: tuple[str, str], items: list[Any], encode: Any) -> list[bytes]:
    """The JSON of `items` (without brackets) as chunks, reusing the previous array of `key`
    when `items` extends it (checked object by object)."""
    cached = _LIST_JSON.get(key)
    if cached is not None:
        prev, parts = cached
        n = len(prev)
        if (
            n
            and len(items) >= n
            and items[n - 1] is prev[-1]
            and all(map(operator.is_, items[:n], prev))
        ):
            if len(items) > n:
                new = ",".join(encode(x) for x in items[n:]).encode()
                parts = [*parts, b"," + new]
                if len(parts) > 64:
                    parts = [b"".join(parts)]
            _LIST_JSON[key] = (items, parts)
            return parts
    parts = [",".join(encode(x) for x in items).encode()] if items else []
    _LIST_JSON[key] = (items, parts)
    return parts


def _metadata_parts(metadata: TableMetadata) -> list[bytes]:
    """`metadata_json` as UTF-8 chunks (v2/v3 metadata with snapshots only)."""
    head = metadata.model_dump_json(exclude={"snapshots", "snapshot_log"}).encode()
    uuid_ = str(metadata.table_uuid)
    cache = _snapshot_cache(uuid_, metadata.snapshots)
    snaps = _array_parts(
        (uuid_, "snapshots"), metadata.snapshots, functools.partial(_snapshot_json, cache)
    )
    log = _array_parts((uuid_, "snapshot-log"), metadata.snapshot_log, _log_entry_json)
    return [head[:-1], b',"snapshots":[', *snaps, b'],"snapshot-log":[', *log, b"]}"]


def _spliceable(metadata: TableMetadata) -> bool:
    return metadata.format_version != 1 and bool(metadata.snapshots)


def metadata_json(metadata: TableMetadata) -> str:
    """The table metadata as pyiceberg writes it (`model_dump_json()`), in time independent of
    the number of snapshots: snapshots and the snapshot log are spliced in from caches.

    The result parses to exactly the same JSON value as `metadata.model_dump_json()` (guard test).
    """
    if not _spliceable(metadata):
        return metadata.model_dump_json()
    return b"".join(_metadata_parts(metadata)).decode()


#: Snapshot-id index per snapshots list: (the list, {id: snapshot}); see `_snapshot_by_id`.
_SNAPSHOT_INDEX: dict[int, tuple[list[Any], dict[int, Any]]] = {}
_STOCK_SNAPSHOT_BY_ID: Any = None


def _snapshot_by_id(self: Any, snapshot_id: int) -> Any:
    """`TableMetadata.snapshot_by_id` with an index instead of a linear scan.

    pyiceberg calls it about 13 times per append (a scan of every snapshot each time: 9 ms per
    commit at 2,500 snapshots). Metadata is frozen and pyiceberg builds a new snapshots list for
    every change, so an index per list object is exact.
    """
    snaps = self.snapshots
    if len(snaps) < 64:
        return next((s for s in snaps if s.snapshot_id == snapshot_id), None)
    entry = _SNAPSHOT_INDEX.get(id(snaps))
    if entry is None or entry[0] is not snaps:
        index: dict[int, Any] | None = None
        for prev, prev_index in list(_SNAPSHOT_INDEX.values()):
            n = len(prev)
            # A list that extends an indexed one (the usual append): copy that index (C speed).
            if n and len(snaps) >= n and snaps[n - 1] is prev[-1] and snaps[0] is prev[0]:
                if all(map(operator.is_, snaps[:n], prev)):
                    index = dict(prev_index)
                    index.update((s.snapshot_id, s) for s in snaps[n:])
                    break
        if index is None:
            index = {s.snapshot_id: s for s in snaps}
        if len(_SNAPSHOT_INDEX) > 64:
            _SNAPSHOT_INDEX.clear()
        entry = (snaps, index)
        _SNAPSHOT_INDEX[id(snaps)] = entry
    return entry[1].get(snapshot_id)


def _write_metadata(metadata: TableMetadata, io: Any, path: str) -> None:
    """`Catalog._write_metadata` (`ToOutputFile.table_metadata`) using `metadata_json`."""
    from pyiceberg.serializers import Compressor, ToOutputFile
    from pyiceberg.utils.config import Config

    output_file = io.new_output(path)
    if not _spliceable(metadata) or Config().get_bool("legacy-current-snapshot-id"):
        ToOutputFile.table_metadata(metadata, output_file)
        return
    parts = _metadata_parts(metadata)
    if path.endswith(".gz.metadata.json"):
        compress = Compressor.get_compressor(output_file.location).bytes_compressor()
        parts = [compress(b"".join(parts))]
    with output_file.create(overwrite=False) as stream:
        for part in parts:
            stream.write(part)


def _sql_commit_table(
    self: Any, table: Table, requirements: tuple[Any, ...], updates: tuple[Any, ...]
) -> Any:
    """`SqlCatalog.commit_table` that applies the updates to the committing table's metadata.

    The stock method first re-reads and parses the current metadata file (O(snapshots): 4 MB of
    JSON at 3,600 snapshots), only to make the conditional `UPDATE ... WHERE metadata_location =
    <current>` that detects concurrent commits anyway. When the `Table` object knows its
    metadata location, that `UPDATE` conditioned on the table's own location gives the same
    guarantee: it lands only if nobody committed since the table was loaded. If it matches no
    row (a concurrent commit), or anything is unusual, the stock method runs (reload, validate,
    apply) and decides, so the outcome is exactly the stock one.
    """
    from pyiceberg.catalog import Catalog
    from pyiceberg.catalog.sql import IcebergTables
    from pyiceberg.table import CommitTableResponse
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    stock = _STOCK_SQL_COMMIT
    base_location = table.metadata_location
    if not base_location or not self.engine.dialect.supports_sane_rowcount:
        return stock(self, table, requirements, updates)
    try:
        staged = self._update_and_stage_table(table, table.name(), requirements, updates)
    except Exception:  # noqa: BLE001 - the stock path raises the right error
        return stock(self, table, requirements, updates)
    if staged.metadata == table.metadata:
        return stock(self, table, requirements, updates)
    _write_metadata(staged.metadata, staged.io, staged.metadata_location)
    identifier = table.name()
    namespace = Catalog.namespace_to_string(Catalog.namespace_from(identifier))
    with Session(self.engine) as session:
        result = session.execute(
            update(IcebergTables)
            .where(
                IcebergTables.catalog_name == self.name,
                IcebergTables.table_namespace == namespace,
                IcebergTables.table_name == Catalog.table_name_from(identifier),
                IcebergTables.metadata_location == base_location,
            )
            .values(
                metadata_location=staged.metadata_location,
                previous_metadata_location=base_location,
            )
        )
        landed = int(getattr(result, "rowcount", 0)) >= 1  # a CursorResult: UPDATE row count
        if landed:
            session.commit()
        else:
            session.rollback()
    if not landed:
        try:
            staged.io.delete(staged.metadata_location)
        except Exception:  # noqa: BLE001 - an orphan metadata file is harmless
            pass
        return stock(self, table, requirements, updates)
    return CommitTableResponse(metadata=staged.metadata, metadata_location=staged.metadata_location)


def other_catalogs_tables(catalog: Any) -> list[tuple[str, str, str]]:
    """The tables that other catalogs keep in this catalog's database (several lakes may share
    one PostgreSQL database, told apart by `LAKE_CATALOG_NAME`).

    Read from `iceberg_tables` directly: pyiceberg's `SqlCatalog` only lists its own catalog's
    rows. Guard: tests/test_shared_database.py.

    Args:
        catalog: pyiceberg's `SqlCatalog`.

    Returns:
        `(catalog name, namespace.table, metadata location)` per table of another catalog.
    """
    from pyiceberg.catalog.sql import IcebergTables
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    with Session(catalog.engine) as session:
        rows = session.execute(
            select(
                IcebergTables.catalog_name,
                IcebergTables.table_namespace,
                IcebergTables.table_name,
                IcebergTables.metadata_location,
            ).where(IcebergTables.catalog_name != catalog.name)
        ).all()
    return [(r[0], f"{r[1]}.{r[2]}", r[3] or "") for r in rows]


def current_metadata_locations(
    catalog: Any, identifiers: Iterable[str]
) -> dict[str, str | None] | None:
    """The current metadata file of each table, read from a `SqlCatalog`'s `iceberg_tables`
    rows in one query, without reading any file.

    Each commit writes a new, uniquely named metadata file and moves this pointer, so an
    unchanged pointer means an unchanged table: a check of many tables costs one catalog
    query instead of loading (and parsing) each table's metadata. Guard:
    tests/engine/test_guards.py.

    Args:
        catalog: pyiceberg's catalog.
        identifiers: `namespace.table` names.

    Returns:
        The location per identifier (None: no such row), or None when the catalog is not a
        `SqlCatalog` (the caller then loads the tables).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the catalog database cannot be reached.
    """
    from pyiceberg.catalog import Catalog
    from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    if not isinstance(catalog, SqlCatalog):
        return None
    wanted = {
        (Catalog.namespace_to_string(Catalog.namespace_from(i)), Catalog.table_name_from(i)): i
        for i in identifiers
    }
    found: dict[str, str | None] = dict.fromkeys(wanted.values())
    if not wanted:
        return found
    with Session(catalog.engine) as session:
        rows = session.execute(
            select(
                IcebergTables.table_namespace,
                IcebergTables.table_name,
                IcebergTables.metadata_location,
            ).where(
                IcebergTables.catalog_name == catalog.name,
                IcebergTables.table_name.in_({name for _, name in wanted}),
            )
        ).all()
    for namespace, name, location in rows:
        identifier = wanted.get((namespace, name))
        if identifier is not None:
            found[identifier] = location
    return found


def metadata_locations(catalog: Any, identifier: str) -> tuple[str | None, str | None]:
    """The current and previous metadata file of a table, as a `SqlCatalog` records them.

    Read from the catalog's `iceberg_tables` row without parsing either file: `load_table`
    parses the current file first, so when that file is corrupt this is the only way to name
    it in the error. For error messages only: any failure (another catalog type, no row, a
    catalog that is down) gives `(None, None)`.

    Args:
        catalog: pyiceberg's `SqlCatalog`.
        identifier: `namespace.table`.

    Returns:
        `(metadata_location, previous_metadata_location)`, each None when unknown.
    """
    try:
        from pyiceberg.catalog import Catalog
        from pyiceberg.catalog.sql import IcebergTables
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        namespace = Catalog.namespace_to_string(Catalog.namespace_from(identifier))
        with Session(catalog.engine) as session:
            row = session.execute(
                select(
                    IcebergTables.metadata_location, IcebergTables.previous_metadata_location
                ).where(
                    IcebergTables.catalog_name == catalog.name,
                    IcebergTables.table_namespace == namespace,
                    IcebergTables.table_name == Catalog.table_name_from(identifier),
                )
            ).first()
    except Exception:  # noqa: BLE001 - only an error message's detail depends on it
        return None, None
    if row is None:
        return None, None
    return row[0], row[1]


def install_commit_fixes(enabled: bool = True) -> None:
    """Use the shallow-copy `update_table_metadata` in pyiceberg (or restore the stock one).

    Idempotent. `enabled=False` restores pyiceberg's own function (the benchmark's baseline).
    """
    import importlib

    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table.metadata import TableMetadataCommonFields

    global _STOCK_UPDATE_TABLE_METADATA, _STOCK_SQL_COMMIT, _STOCK_SNAPSHOT_BY_ID
    update_module = importlib.import_module("pyiceberg.table.update")
    if _STOCK_UPDATE_TABLE_METADATA is None:
        _STOCK_UPDATE_TABLE_METADATA = update_module.update_table_metadata
        _STOCK_SQL_COMMIT = SqlCatalog.commit_table
        _STOCK_SNAPSHOT_BY_ID = TableMetadataCommonFields.snapshot_by_id
    TableMetadataCommonFields.snapshot_by_id = (  # type: ignore[method-assign]
        _snapshot_by_id if enabled else _STOCK_SNAPSHOT_BY_ID
    )
    func = _update_table_metadata_shallow if enabled else _STOCK_UPDATE_TABLE_METADATA
    for name in _PATCHED_MODULES:
        module = importlib.import_module(name)
        module.update_table_metadata = func  # type: ignore[attr-defined]
    SqlCatalog.commit_table = _sql_commit_table if enabled else _STOCK_SQL_COMMIT  # type: ignore[method-assign]


def commit_fixes_installed() -> bool:
    """True when every module that calls `update_table_metadata` uses the shallow one."""
    import importlib

    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table.metadata import TableMetadataCommonFields

    fixes = (
        SqlCatalog.commit_table is _sql_commit_table
        and TableMetadataCommonFields.snapshot_by_id is _snapshot_by_id
    )
    return fixes and all(
        importlib.import_module(name).update_table_metadata is _update_table_metadata_shallow
        for name in _PATCHED_MODULES
    )


def stock_functions() -> tuple[Any, Any, Any]:
    """pyiceberg's own `update_table_metadata`, `SqlCatalog.commit_table` and
    `TableMetadata.snapshot_by_id` (guard test, benchmark baseline)."""
    return _STOCK_UPDATE_TABLE_METADATA, _STOCK_SQL_COMMIT, _STOCK_SNAPSHOT_BY_ID


class _FastAppendTransaction(Transaction):
    """A transaction whose appends are fast appends and whose staged metadata is memoised.

    * `Transaction.table_metadata` re-applies every staged update on each access (about 19
      times per append); the result depends only on (base metadata, staged updates), both
      immutable, so it is computed once per staged state.
    * `Transaction.append` merges manifests when `commit.manifest-merge.enabled` is set (every
      ~100 commits, 1.7-2 s that set the writers' p99). Writers always fast-append; manifests
      are folded by the policy run (`fold_small_manifests`) and rewritten by maintenance
      (`rewrite_manifests`).
    """

    _memo: tuple[TableMetadata, tuple[Any, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        memo = self._memo
        base = self._table.metadata
        if memo is not None and memo[0] is base and memo[1] is self._updates:
            return memo[2]
        result = super().table_metadata
        self._memo = (base, self._updates, result)
        return result

    def _append_snapshot_producer(
        self, snapshot_properties: dict[str, str], branch: str | None = MAIN_BRANCH
    ) -> Any:
        producer = _BoundedAppendFiles(
            operation=Operation.APPEND,
            transaction=self,
            io=self._table.io,
            branch=branch,
            snapshot_properties=snapshot_properties,
        )
        producer.fold_min = WRITER_FOLD_COUNT
        producer.refold = False
        return producer


#: Writers' commits never fold manifests: measured at the defaults (docs/time-travel.md,
#: "Manifests"), a fold of 128 one-commit manifests inside a writer commit cost 170-380 ms,
#: 11-30x the p50 commit. Each fast append adds one manifest and the manifest list grows with
#: them (about +0.05 ms per commit per manifest), so the writers' policy run folds them as a
#: commit of its own (`fold_small_manifests`, from `ops.maintenance.expire_inline` and
#: `fold_inline`). A count here brings the previous design back, the fold inside the writers'
#: commits (only `scripts/bench_commits.py` sets it, to measure it in the same run).
WRITER_FOLD_COUNT: int | None = None
#: A fold happens once the current snapshot has this many small manifests.
FOLD_MIN_MANIFESTS = 32
#: A manifest is "small" (foldable) while it lists fewer files than this and deletes none. A
#: fold's output stays small, and is folded again with the next ones, until it reaches this
#: size; then it is left alone. So the manifest list holds fewer than `FOLD_MIN_MANIFESTS` small
#: ones, one growing fold output and one full manifest per `SMALL_MANIFEST_FILES` files, and a
#: fold reads at most `FOLD_MIN_MANIFESTS` small manifests plus fewer than this many entries:
#: bounded, whatever the table's size (unlike pyiceberg's merge-append, which rewrites
#: everything in the bin).
SMALL_MANIFEST_FILES = 1000


def _small_manifests(
    manifests: list[ManifestFile], exclude_snapshot: int | None, *, refold: bool = True
) -> dict[int, list[ManifestFile]]:
    """The foldable manifests by partition spec id (see `SMALL_MANIFEST_FILES`).

    `refold=False` is the previous writer fold's rule: single-append manifests only (ADDED
    entries), never a fold's output.
    """
    small: dict[int, list[ManifestFile]] = {}
    for m in manifests:
        files = (m.added_files_count or 0) + (m.existing_files_count or 0)
        if (
            m.content == ManifestContent.DATA
            and m.added_snapshot_id != exclude_snapshot
            and not m.deleted_files_count
            and (files < SMALL_MANIFEST_FILES if refold else not m.has_existing_files())
            and (m.added_files_count or 0) <= SMALL_MANIFEST_FILES
        ):
            small.setdefault(m.partition_spec_id, []).append(m)
    return small


class _BoundedAppendFiles(_FastAppendFiles):
    """pyiceberg's fast append; with `fold_min` set, it also folds the small manifests of the
    parent snapshot into one per spec once there are `fold_min` of them."""

    fold_min: int | None = None
    #: Fold earlier folds' outputs too (`_small_manifests`); False: the previous writer fold.
    refold: bool = True

    def _process_manifests(self, manifests: list[ManifestFile]) -> list[ManifestFile]:
        if self.fold_min is None:
            return manifests
        small = _small_manifests(manifests, self._snapshot_id, refold=self.refold)
        folded = {s: g for s, g in small.items() if len(g) >= self.fold_min}
        if not folded:
            return manifests
        merger = _ManifestMergeManager(
            target_size_bytes=1 << 62,
            min_count_to_merge=2,
            merge_enabled=True,
            snapshot_producer=self,
        )
        gone = {m.manifest_path for group in folded.values() for m in group}
        out = [m for m in manifests if m.manifest_path not in gone]
        for spec_id, group in folded.items():
            out.append(merger._create_manifest(spec_id, group))
        return out


def small_manifest_count(table: Table) -> int:
    """How many foldable manifests the current snapshot has (reads its manifest list)."""
    current = table.current_snapshot()
    if current is None:
        return 0
    small = _small_manifests(current.manifests(table.io), None)
    return max((len(g) for g in small.values()), default=0)


def fold_small_manifests(
    table: Table, snapshot_properties: Mapping[str, str], min_count: int | None = None
) -> int | None:
    """Fold the current snapshot's small manifests into one per partition spec (maintenance).

    One `append` snapshot that adds no rows and changes no table property (summary properties
    mark it), or none when fewer than `min_count` (at least 2; default `FOLD_MIN_MANIFESTS`)
    small manifests exist. Its cost is bounded by the number of small manifests, not by the
    table's size. Idempotent: right after a fold there is nothing left to fold.

    Returns:
        The new snapshot id, or None when there was nothing to fold.

    Raises:
        CommitConflictError: a concurrent commit won; retry.
    """
    need = max(2, FOLD_MIN_MANIFESTS if min_count is None else min_count)
    if small_manifest_count(table) < need:
        return None
    with _commit_conflicts(table):
        tx = table.transaction()
        producer = _BoundedAppendFiles(
            operation=Operation.APPEND,
            transaction=tx,
            io=table.io,
            branch=MAIN_BRANCH,
            snapshot_properties=dict(snapshot_properties),
        )
        producer.fold_min = need
        producer.commit()
        tx.commit_transaction()
    return _current_snapshot_id(table)


# ---- the writers' data path: sorted, sliced, written in threads -------------------------------
#
# `Transaction.append` (pyiceberg 0.12) checks schema compatibility on every call (building a
# `rich` table: ~9 ms), splits the rows into partitions with one full-table filter per partition
# and converts every batch to the file schema before writing. The writers' rows are already in
# the table's Arrow schema, so this path sorts them once by (partition values, table sort order),
# cuts zero-copy slices per partition, writes the slices' Parquet files in a thread pool
# (pyarrow's Parquet writer releases the GIL, so the ingest event loop keeps running) and builds
# the `DataFile`s from each file's Parquet footer with pyiceberg's public statistics helpers.

#: Threads writing one commit's Parquet files (pyarrow releases the GIL while encoding).
WRITE_THREADS = 4


class _DaemonPool:
    """A fixed pool of daemon threads.

    `concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so a write
    stuck on an unreachable object store would keep a stopping writer process alive; the
    writers' shutdown grace relies on commits never doing that (their commit threads are
    daemons too).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue[tuple[Future[Any], Any, tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _work(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        """Run `fn(*args)` on a pool thread; its future."""
        with self._lock:
            if len(self._threads) < self._size:
                t = threading.Thread(target=self._work, name="lake-parquet", daemon=True)
                t.start()
                self._threads.append(t)
        future: Future[Any] = Future()
        self._queue.put((future, fn, args))
        return future


_WRITE_POOL = _DaemonPool(WRITE_THREADS)


def identity_partition_column(table: Table) -> str | None:
    """The current name of the column of the first identity field of `table`'s current spec.

    Taken from the live table, not a declared definition: a partition column renamed since
    (`lake table evolve --rename symbol:ticker`) is named as the table names it now.
    """
    from pyiceberg.transforms import IdentityTransform

    meta = table.metadata
    schema = meta.schema()
    for f in meta.spec().fields:
        if isinstance(f.transform, IdentityTransform):
            return schema.find_column_name(f.source_id)
    return None


def partition_codes(table: Table, rows: pa.Table) -> np.ndarray | None:
    """One int64 per row, equal for two rows iff they fall in the same partition of `table`'s
    current spec (every field, with its transform, as `sort_and_slice` cuts); None when the
    table is unpartitioned. Codes number the partitions in order of first appearance."""
    import pyarrow.compute as pc

    meta = table.metadata
    schema = meta.schema()
    codes: np.ndarray | None = None
    for f in meta.spec().fields:
        source = schema.find_field(f.source_id)
        column = rows.column(schema.find_column_name(f.source_id)).combine_chunks()
        keys = f.transform.pyarrow_transform(source.field_type)(column)
        encoded = pc.dictionary_encode(keys, null_encoding="encode")
        idx = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        width = max(1, len(encoded.dictionary))
        if codes is None:
            codes = idx
            continue
        codes = codes * width + idx
        if int(codes.max(initial=0)) > 1 << 40:  # keep the product of the widths small
            codes = np.unique(codes, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return codes


@dataclass(frozen=True)
class _WritePlan:
    """What writing a data file of one table schema/spec/properties needs (cached)."""

    arrow_schema: pa.Schema  # the table's schema as the writers' rows carry it (no field ids)
    file_schema: pa.Schema  # the same with Parquet field ids
    stats_plan: dict[int, Any]
    column_mapping: dict[str, int]
    writer_kwargs: dict[str, Any]
    row_group_size: int | None
    partition_names: tuple[str, ...]
    sort_names: tuple[str, ...]
    #: The writers' fast path (`write_sorted_data_files`) supports the table: Parquet, column
    #: names pyiceberg would not sanitize, every partition source present.
    fast: bool


_PLANS: dict[tuple[str, int, int, int, int], _WritePlan] = {}


def _plan(table: Table) -> _WritePlan | None:
    """The cached write plan of `table`'s current schema/spec/sort order; None if the writers'
    fast path does not support the table."""
    plan = _file_plan(table)
    return plan if plan.fast else None


def _file_plan(table: Table) -> _WritePlan:
    """The cached write plan of `table`'s current schema/spec/sort order (any table)."""
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        parquet_path_to_id_mapping,
        sanitize_column_names,
        schema_to_pyarrow,
    )
    from pyiceberg.table import TableProperties
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.utils.properties import property_as_int

    meta = table.metadata
    schema = meta.schema()
    # Only `write.*` properties shape files and their statistics (watermarks change every commit).
    write_props = tuple(
        sorted((k, v) for k, v in meta.properties.items() if k.startswith("write."))
    )
    key = (
        meta.table_uuid.hex,
        schema.schema_id,
        meta.default_spec_id,
        meta.default_sort_order_id,
        hash(write_props),
    )
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    props = meta.properties
    fmt = props.get(TableProperties.WRITE_FILE_FORMAT, TableProperties.WRITE_FILE_FORMAT_DEFAULT)
    spec = meta.spec()
    partition_ok = all(schema.find_column_name(f.source_id) for f in spec.fields)
    sort_names: list[str] = []
    for sf in meta.sort_order().fields:
        name = schema.find_column_name(sf.source_id)
        if name is None or not isinstance(sf.transform, IdentityTransform):
            break
        sort_names.append(name)
    result = _WritePlan(
        arrow_schema=schema_to_pyarrow(schema, include_field_ids=False),
        file_schema=schema_to_pyarrow(schema, include_field_ids=True),
        stats_plan=compute_statistics_plan(schema, props),
        column_mapping=parquet_path_to_id_mapping(schema),
        writer_kwargs=parquet_writer_kwargs(props),
        row_group_size=property_as_int(
            props,
            TableProperties.PARQUET_ROW_GROUP_LIMIT,
            TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT,
        ),
        partition_names=tuple(f.name for f in spec.fields),
        sort_names=tuple(sort_names),
        fast=(
            fmt.lower() == "parquet" and sanitize_column_names(schema) == schema and partition_ok
        ),
    )
    if len(_PLANS) > 1000:
        _PLANS.clear()
    _PLANS[key] = result
    return result


def table_arrow_schema(table: Table) -> pa.Schema:
    """The Arrow schema (no field ids) whose rows `watermarked_append` writes on its fast path."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    plan = _plan(table)
    return plan.arrow_schema if plan else schema_to_pyarrow(table.schema(), include_field_ids=False)


def fast_path_applies(table: Table, rows: pa.Table) -> bool:
    """True when `rows` can be written by `write_sorted_data_files` (schema exactly the table's).

    Equality of the Arrow schema with the table's replaces pyiceberg's per-call compatibility
    check: such rows are compatible by construction (same names, types, nullability).
    """
    plan = _plan(table)
    return plan is not None and rows.schema.equals(plan.arrow_schema)


def sort_and_slice(table: Table, rows: pa.Table) -> list[tuple[Any, pa.Table]]:
    """Sort `rows` by (partition values, sort order) once; zero-copy slices per partition.

    Returns:
        (pyiceberg `PartitionKey` or None when unpartitioned, slice) in sorted order.
    """
    import pyarrow.compute as pc
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey

    plan = _plan(table)
    if plan is None:
        raise ValueError(f"{table.name()}: no fast write path for this table")
    if rows.num_rows == 0:
        return []
    meta = table.metadata
    spec = meta.spec()
    schema = meta.schema()
    keys: dict[str, pa.Array] = {}
    for i, pf in enumerate(spec.fields):
        source = schema.find_field(pf.source_id)
        column = rows.column(schema.find_column_name(pf.source_id))
        keys[f"_p{i}"] = pf.transform.pyarrow_transform(source.field_type)(column)
    order = [(name, "ascending") for name in keys]
    sort_cols = {f"_s{i}": rows.column(n) for i, n in enumerate(plan.sort_names)}
    order += [(name, "ascending") for name in sort_cols]
    if order:
        key_table = pa.table({**keys, **sort_cols})
        indices = pc.sort_indices(key_table, sort_keys=order)
        rows = rows.take(indices)
        if keys:
            keys = {n: pc.take(a, indices) for n, a in keys.items()}
    if not keys:
        return [(None, rows)]
    names = list(keys)
    # On sorted keys, a group-by without threads yields the groups in order of appearance:
    # the partitions' values and their row counts, i.e. the slice boundaries.
    groups = (
        pa.table(keys)
        .group_by(names, use_threads=False)
        .aggregate([(names[0], "count", pc.CountOptions(mode="all"))])
    )
    counts = groups.column(f"{names[0]}_count").to_pylist()
    values = [groups.column(n).to_pylist() for n in names]
    out: list[tuple[Any, pa.Table]] = []
    offset = 0
    for g, n in enumerate(counts):
        pkey = PartitionKey(
            field_values=[
                PartitionFieldValue(field=pf, value=values[i][g])
                for i, pf in enumerate(spec.fields)
            ],
            partition_spec=spec,
            schema=schema,
        )
        out.append((pkey, rows.slice(offset, n)))
        offset += n
    return out


def _write_one(
    table: Table, plan: _WritePlan, pkey: Any, rows: pa.Table, file_name: str
) -> DataFile:
    """Write one Parquet data file and describe it from its footer (runs in the write pool)."""
    import pyarrow.parquet as pq
    from pyiceberg.table.locations import load_location_provider

    meta = table.metadata
    provider = load_location_provider(meta.location, meta.properties)
    path = provider.new_data_location(data_file_name=file_name, partition_key=pkey)
    # Same buffers, the schema with field ids (zero-copy).
    data = pa.Table.from_arrays(rows.columns, schema=plan.file_schema)
    output = table.io.new_output(path)
    with output.create(overwrite=True) as stream:
        writer = pq.ParquetWriter(
            stream, schema=plan.file_schema, store_decimal_as_integer=True, **plan.writer_kwargs
        )
        try:
            writer.write_table(data, row_group_size=plan.row_group_size)
        finally:
            writer.close()
        size = stream.tell()
    partition = pkey.partition if pkey is not None else Record()
    return _footer_data_file(meta, plan, path, partition, size, writer.writer.metadata)


def _footer_data_file(
    meta: TableMetadata,
    plan: _WritePlan,
    path: str,
    partition: Record,
    size: int,
    parquet_metadata: Any,
) -> DataFile:
    """The `DataFile` of a written Parquet file, its statistics read from the file's footer the
    way pyiceberg's own writer reads them (column metrics modes, bounds truncation)."""
    from pyiceberg.io.pyarrow import data_file_statistics_from_parquet_metadata
    from pyiceberg.manifest import DataFileContent, FileFormat

    stats = data_file_statistics_from_parquet_metadata(
        parquet_metadata=parquet_metadata,
        stats_columns=plan.stats_plan,
        parquet_column_mapping=plan.column_mapping,
    )
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=partition,
        file_size_in_bytes=size,
        sort_order_id=None,
        spec_id=meta.default_spec_id,
        equality_ids=None,
        key_metadata=None,
        **stats.to_serialized_dict(),
    )


def write_sorted_data_files(
    table: Table,
    rows: pa.Table,
    write_uuid: uuid.UUID,
    counter: itertools.count[int] | None = None,
) -> list[DataFile]:
    """Write `rows` (in `table_arrow_schema(table)`) as uncommitted data files of `table`.

    One sort by (partition values, table sort order), one zero-copy slice per partition, the
    Parquet files written in parallel in the write pool; `DataFile`s from the files' footers.
    File names follow pyiceberg's (`00000-<n>-<write_uuid>.parquet`): calls sharing a
    `write_uuid` must share `counter`. On an error, the files already written are deleted.
    """
    plan = _plan(table)
    if plan is None:
        raise ValueError(f"{table.name()}: no fast write path for this table")
    counter = counter if counter is not None else itertools.count()
    pieces = sort_and_slice(table, rows)
    names = [f"00000-{next(counter)}-{write_uuid}.parquet" for _ in pieces]
    if len(pieces) == 1:
        return [_write_one(table, plan, pieces[0][0], pieces[0][1], names[0])]
    futures = [
        _WRITE_POOL.submit(_write_one, table, plan, pkey, part, name)
        for (pkey, part), name in zip(pieces, names, strict=True)
    ]
    files: list[DataFile] = []
    error: BaseException | None = None
    for fut in futures:
        try:
            files.append(fut.result())
        except BaseException as exc:  # noqa: BLE001 - collect the others, then re-raise
            error = error or exc
    if error is not None:
        _delete_quietly(table, files)
        raise error
    return files


class _StreamedParquetFile:
    """One Parquet data file being written in batches with the table's writer options."""

    def __init__(
        self,
        output: OutputFile,
        plan: _WritePlan,
        first: pa.Table,
        use_dictionary: list[str] | None,
    ) -> None:
        import pyarrow.parquet as pq

        kwargs = dict(plan.writer_kwargs)
        if use_dictionary is not None:
            kwargs["use_dictionary"] = use_dictionary
        self._row_group = plan.row_group_size
        self._stream = output.create(overwrite=True)
        try:
            self._writer = pq.ParquetWriter(
                self._stream, schema=first.schema, store_decimal_as_integer=True, **kwargs
            )
        except Exception:
            self._stream.close()
            raise

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=self._row_group)

    def close(self) -> tuple[Any, int]:
        """Finish the file: (its Parquet footer metadata, its size in bytes)."""
        with self._stream:
            self._writer.close()
            size = self._stream.tell()
        return self._writer.writer.metadata, size


class PartitionFileWriter:
    """Streams record batches of ONE partition into data files of `table`, named by the caller.

    pyiceberg's writer needs the whole partition as one Arrow table (and filters it once per
    partition); this writer takes a record-batch stream, so memory stays at one batch, and names
    each file `<file_prefix>-<n>.parquet` (Silver encodes its change-detection state in the name,
    see `iceberg_lake.silver.state`). Files roll over at `write.target-file-size-bytes`
    (uncompressed Arrow bytes, as pyiceberg measures it). Nothing is committed.

    The data files are described as pyiceberg's own writer describes them (the table's Parquet
    options through the private `_get_parquet_writer_kwargs`, `compute_statistics_plan`,
    `data_file_statistics_from_parquet_metadata`, `parquet_path_to_id_mapping`,
    `load_location_provider`, `DataFile.from_args`). Guard test:
    `tests/engine/test_partition_file_writer_guard.py`, which compares the data files with
    pyiceberg's own write of the same rows.

    Args:
        table: the target table (its current schema, default spec and properties are used).
        partition: the partition tuple of the default spec that all rows belong to.
        file_prefix: file name prefix.
        use_dictionary: chooses each file's dictionary-encoded columns (pyarrow's
            `use_dictionary`) from its first rows; None: pyarrow's default (every column).
    """

    def __init__(
        self,
        table: Table,
        partition: Record,
        file_prefix: str,
        use_dictionary: Callable[[pa.Table], list[str]] | None = None,
    ) -> None:
        from pyiceberg.table import TableProperties
        from pyiceberg.table.locations import load_location_provider
        from pyiceberg.utils.properties import property_as_int

        metadata = table.metadata
        self._table = table
        self._metadata = metadata
        self._plan = _file_plan(table)
        self._partition = partition
        self._prefix = file_prefix
        self._use_dictionary = use_dictionary
        target = property_as_int(
            metadata.properties,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
        )
        assert target is not None
        self._target_bytes = target
        self._arrow_schema = self._plan.file_schema
        self._loose = pa.schema([f.with_nullable(True) for f in self._arrow_schema])
        self._locations = load_location_provider(
            table_location=metadata.location, table_properties=metadata.properties
        )
        self._key = partition_key(metadata.spec(), metadata.schema(), partition)
        self._writer: _StreamedParquetFile | None = None
        self._path = ""
        self._size = 0
        self.files: list[DataFile] = []
        self.rows = 0

    def write(self, rows: pa.RecordBatch | pa.Table) -> None:
        """Append rows (columns: the table schema's, in order; types are cast)."""
        if rows.num_rows == 0:
            return
        table = pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
        if table.schema != self._loose:
            table = table.rename_columns(self._loose.names).cast(self._loose)
        # Same buffers, declared (non-)nullability of the table schema; nulls in a required
        # column would be a bug upstream, and pyarrow's writer rejects them.
        table = pa.Table.from_arrays(table.columns, schema=self._arrow_schema)
        if self._writer is None:
            name = f"{self._prefix}-{len(self.files):05d}.parquet"
            self._path = self._locations.new_data_location(name, self._key)
            output = self._table.io.new_output(self._path)
            columns = self._use_dictionary(table) if self._use_dictionary else None
            self._writer = _StreamedParquetFile(output, self._plan, table, columns)
            self._size = 0
        self._writer.write(table)
        self.rows += table.num_rows
        self._size += table.nbytes
        if self._size >= self._target_bytes:
            self._finish()

    def close(self) -> list[DataFile]:
        """Finish the open file; return every data file written."""
        self._finish()
        return self.files

    def _finish(self) -> None:
        if self._writer is None:
            return
        footer, size = self._writer.close()
        self.files.append(
            _footer_data_file(self._metadata, self._plan, self._path, self._partition, size, footer)
        )
        self._writer = None


#: Threads finishing streamed files at once. Closing a file is a round trip to the object store
#: (an S3 multipart upload's completion): closed one after the other, a stalled store cost one
#: client timeout (~12 s) per open file, 240 s for 20 partitions (prod17).
CLOSE_THREADS = 16

_CLOSE_POOL = _DaemonPool(CLOSE_THREADS)


def close_writers(writers: Sequence[PartitionFileWriter]) -> list[list[DataFile]]:
    """Finish every writer at once (`PartitionFileWriter.close`); their data files, in order.

    Every writer has finished or failed when this returns, so none is left for a destructor to
    finish later. On a failure the first error is raised; the files the others wrote stay
    (uncommitted: `lake maintain remove-orphans` collects them).
    """
    if len(writers) <= 1:
        return [w.close() for w in writers]
    futures = [_CLOSE_POOL.submit(w.close) for w in writers]
    results: list[list[DataFile]] = []
    error: BaseException | None = None
    for fut in futures:
        try:
            results.append(fut.result())
        except BaseException as exc:  # noqa: BLE001 - wait for the others, then re-raise
            error = error or exc
    if error is not None:
        raise error
    return results


def abandon_writers(table: Table, writers: Sequence[PartitionFileWriter]) -> None:
    """Finish writers whose rows will not be committed (a failed run) and delete their files.

    Errors are ignored: the run already failed with its own. The closes run at once (see
    `close_writers`); when the store cannot finish them, deleting is not tried.
    """
    try:
        done = close_writers(writers)
    except Exception:  # noqa: BLE001 - the caller raises the run's own error
        return
    _delete_quietly(table, [f for files in done for f in files])


def _delete_quietly(table: Table, files: list[DataFile]) -> None:
    """Delete `files` (best effort), at once: one after the other, a stalled store cost one
    client timeout per file (review18: a failed Silver run took 128 s to end)."""

    def delete(path: str) -> None:
        try:
            table.io.delete(path)
        except Exception:  # noqa: BLE001 - an orphan left behind is harmless
            pass

    if len(files) <= 1:
        for f in files:
            delete(f.file_path)
        return
    for fut in [_CLOSE_POOL.submit(delete, f.file_path) for f in files]:
        fut.result()


class WatermarkedAppend:
    """One atomic commit: append rows and set table properties (a writer's watermark).

    A context-manager builder in the style of pyiceberg's snapshot producers
    (`table.update_snapshot().fast_append()`): nothing is written until the block exits without
    an exception; then the rows' data files are written and ONE fast-append snapshot is
    committed together with the property updates. Use `watermarked_append(...)`.
    """

    def __init__(
        self,
        table: Table,
        watermark: Mapping[str, str],
        snapshot_properties: Mapping[str, str] | None = None,
        expected: Mapping[str, str | None] | None = None,
        schema_id: int | None = None,
        write_uuid: uuid.UUID | None = None,
    ) -> None:
        self.table = table
        self.write_uuid = write_uuid
        self.watermark = dict(watermark)
        self.snapshot_properties = dict(snapshot_properties or {})
        self.expected = dict(expected) if expected is not None else None
        self.schema_id = schema_id
        self._chunks: list[pa.Table] = []
        self._parts: list[pa.Table] = []

    def append(self, rows: pa.Table) -> WatermarkedAppend:
        """Add rows to the snapshot (written when the block exits)."""
        self._chunks.append(rows)
        return self

    def append_partitions(self, parts: list[pa.Table]) -> WatermarkedAppend:
        """Add rows already split by partition, one table per partition (see
        `write_partition_files`): written without pyiceberg's per-partition filter passes."""
        self._parts.extend(p for p in parts if p.num_rows)
        return self

    def commit(self) -> int | None:
        """Commit now; returns the new current snapshot id (None if the table stays empty).

        Rows whose Arrow schema is exactly the table's (`table_arrow_schema`) take the writer's
        own data path (`write_sorted_data_files`: files written in threads, `DataFile`s from the
        Parquet footers); anything else goes through pyiceberg's `Transaction.append`, which
        checks schema compatibility and converts.
        """
        files: list[DataFile] = []
        stock: list[pa.Table] = []
        fast = 0
        commit_uuid = self.write_uuid or uuid.uuid4()
        counter = itertools.count()
        sent = False
        try:
            for rows in self._chunks:
                if fast_path_applies(self.table, rows):
                    fast += 1
                    files.extend(write_sorted_data_files(self.table, rows, commit_uuid, counter))
                else:
                    stock.append(rows)
            if self._parts:  # already split by partition (`append_partitions`)
                fast += 1
                files.extend(write_partition_files(self.table, self._parts, commit_uuid, counter))
            tx = _FastAppendTransaction(self.table)
            if self.expected is not None:  # fencing: see `require_properties`
                require_properties(tx, self.expected)
            if self.schema_id is not None:
                require_schema(tx, self.schema_id)
            if self.watermark:
                tx.set_properties(self.watermark)
            if fast:  # (an empty append still makes a snapshot, as pyiceberg's does)
                with tx._append_snapshot_producer(self.snapshot_properties) as producer:
                    for f in files:
                        producer.append_data_file(f)
            for rows in stock:
                tx.append(rows, snapshot_properties=self.snapshot_properties)
            sent = True
            tx.commit_transaction()
        except BaseException as exc:
            if sent and not isinstance(exc, COMMIT_REFUSED):
                _keep_files_note(self.table, len(files), exc)  # may be committed: keep them
            else:
                _delete_quietly(self.table, files)  # written but never committed
            raise
        self._chunks = []
        self._parts = []
        snapshot = self.table.current_snapshot()
        return snapshot.snapshot_id if snapshot else None

    def __enter__(self) -> WatermarkedAppend:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()


def watermarked_append(
    table: Table,
    *,
    watermark: Mapping[str, str],
    snapshot_properties: Mapping[str, str] | None = None,
    expected: Mapping[str, str | None] | None = None,
    schema_id: int | None = None,
    write_uuid: uuid.UUID | None = None,
) -> WatermarkedAppend:
    """Append rows and set `watermark` properties in one fast-append commit.

    `expected` (optional): property values the table must still have at commit time (None =
    absent), a compare-and-swap that fences a stale writer (`require_properties`); a mismatch
    raises `ValidationException` and nothing is committed. `schema_id` (optional): the table's
    current schema id must still be this one at commit time (`require_schema`), else
    `ValidationException` and nothing is committed. `write_uuid` (optional): the id in the data
    files' names (`tagged_write_uuid`: their provenance); one per commit, never reused.

    Usage::

        with watermarked_append(table, watermark={key: "42"}, snapshot_properties=s) as app:
            app.append(arrow_rows)

    The commit's cost does not grow with the number of snapshots kept (memoised, shallow
    metadata updates; no manifest merge). Raises what pyiceberg raises on commit
    (`CommitFailedException` on a conflict): the caller retries on a refreshed table.
    """
    return WatermarkedAppend(table, watermark, snapshot_properties, expected, schema_id, write_uuid)


# ---- provenance of data files, in their names ---------------------------------------------------

#: pyiceberg's data file names (`write_data_files`, `write_partition_files`, the writers' own
#: path): `<5 digits>-<task>-<write uuid>.parquet`.
_DATA_FILE_NAME = re.compile(
    r"(?:^|/)\d{5}-\d+-([0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3})-[0-9a-f-]+\.parquet$"
)


def file_tag_of(digest_hex: str) -> str:
    """The 16-hex-digit tag that files written for `digest_hex` (e.g. a loaded file's SHA-256)
    carry in their names: its first 16 digits with the 13th set to the UUID version 8
    ("custom"), which random (version 4) write ids never have."""
    tag = digest_hex[:16].lower()
    return f"{tag[:12]}8{tag[13:16]}"


def tagged_write_uuid(tag: str) -> uuid.UUID:
    """A fresh write id (random in its last 64 bits) whose data files carry `tag`
    (`file_tag_of`) in their names, for `file_tag` to find them again."""
    raw = bytearray(bytes.fromhex(tag) + os.urandom(8))
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant, as a UUID must have
    return uuid.UUID(bytes=bytes(raw))


def file_tag(path: str) -> str | None:
    """The tag in a data file's name (`tagged_write_uuid`); None for any other file (random
    write ids, other engines' names)."""
    match = _DATA_FILE_NAME.search(path)
    return match.group(1).replace("-", "") if match else None


def current_data_files(table: Table) -> list[DataFile]:
    """Every data file of the table's current snapshot (no pruning)."""
    from pyiceberg.expressions import AlwaysTrue

    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    return plan_data_files(table, snapshot.snapshot_id, AlwaysTrue())[0]


def delete_rows(
    table: Table,
    row_filter: BooleanExpression,
    *,
    remove_properties: Iterable[str] = (),
    snapshot_properties: Mapping[str, str] | None = None,
) -> None:
    """Delete the rows matching `row_filter` (copy-on-write: pyiceberg rewrites the files that
    hold them) and remove `remove_properties`, in one commit. A filter matching no row still
    removes the properties."""
    tx = table.transaction()
    tx.delete(row_filter, snapshot_properties=dict(snapshot_properties or {}))
    keys = [k for k in remove_properties if k in table.properties]
    if keys:
        tx.remove_properties(*keys)
    tx.commit_transaction()


def rewrite_manifests(table: Table, snapshot_properties: Mapping[str, str]) -> int | None:
    """Merge the current snapshot's data manifests into few large ones (maintenance).

    pyiceberg 0.12 has no `rewrite_manifests`; this drives its merge-append producer with no new
    files and a minimum merge count of 2, so every small manifest is merged into manifests of
    `commit.manifest.target-size-bytes`. It makes one `append` snapshot that adds no rows (same
    data for every reader); summary properties mark it (`lake.operation=rewrite-manifests`).

    Returns:
        The new snapshot id, or None when there was nothing to merge (fewer than 2 manifests).

    Raises:
        CommitConflictError: a concurrent commit won; retry.
    """
    current = table.current_snapshot()
    if current is None:
        return None
    if len(current.manifests(table.io)) < 2:
        return None
    with _commit_conflicts(table), table.transaction() as tx:
        producer = tx.update_snapshot(snapshot_properties=dict(snapshot_properties))
        merge = producer.merge_append()
        # Private attributes of `_MergeAppendFiles` (guarded in tests/engine): force the
        # merge whatever the table's merge properties say.
        merge._merge_enabled = True
        merge._min_count_to_merge = 2
        merge.commit()
    return _current_snapshot_id(table)


install_commit_fixes()


# ---- Avro readers resolved once per file schema -------------------------------------------------

#: (Avro schema text, read schema, read types, read enums) -> (file schema, read schema, reader,
#: the objects whose ids the key holds, kept alive so no id is reused while cached).
_AVRO_READERS: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_AVRO_READERS_KEPT = 64
_AVRO_READERS_LOCK = threading.Lock()
_STOCK_AVRO_ENTER: Any = None


def _avro_enter(self: Any) -> Any:
    """`pyiceberg.avro.file.AvroFile.__enter__`, with the file schema's conversion and the
    reader resolved once per schema instead of once per file.

    Every manifest of a table carries the same Avro schema text, and converting it and
    resolving the reader cost ~1.5 ms per manifest, 90% of reading a small manifest (a replay's
    planning of 72 manifests: 0.14 s, 0.06 s with this). pyiceberg's readers keep no state
    between reads (each `read` takes the decoder), so one reader serves every file and thread.
    Guard: `tests/engine/test_iceberg_plan_guard.py`.
    """
    from pyiceberg.avro.file import _SCHEMA_KEY, new_decoder, resolve_reader

    with self.input_file.open() as f:
        self.decoder = new_decoder(f.read())
    self.header = self._read_header()
    text = self.header.meta.get(_SCHEMA_KEY)
    if text is None:  # pyiceberg's own error
        self.schema = self.header.get_schema()
    held = (self.read_schema, *self.read_types.values(), *self.read_enums.values())
    key = (
        text,
        id(self.read_schema),
        tuple((k, id(v)) for k, v in self.read_types.items()),
        tuple((k, id(v)) for k, v in self.read_enums.items()),
    )
    with _AVRO_READERS_LOCK:
        cached = _AVRO_READERS.get(key)
    if cached is None:
        schema = self.header.get_schema()
        read_schema = self.read_schema or schema
        reader = resolve_reader(schema, read_schema, self.read_types, self.read_enums)
        cached = (schema, read_schema, reader, held)
        with _AVRO_READERS_LOCK:
            if len(_AVRO_READERS) >= _AVRO_READERS_KEPT:
                _AVRO_READERS.pop(next(iter(_AVRO_READERS)))
            _AVRO_READERS[key] = cached
    self.schema, self.read_schema, self.reader = cached[0], cached[1], cached[2]
    return self


def install_read_fixes(enabled: bool = True) -> None:
    """Use `_avro_enter` for pyiceberg's Avro files (or restore the stock `__enter__`).

    Idempotent. `enabled=False` restores pyiceberg's own method (the guard's baseline).
    """
    from pyiceberg.avro.file import AvroFile

    global _STOCK_AVRO_ENTER
    if _STOCK_AVRO_ENTER is None:
        _STOCK_AVRO_ENTER = AvroFile.__enter__
    AvroFile.__enter__ = _avro_enter if enabled else _STOCK_AVRO_ENTER  # type: ignore[method-assign]
    with _AVRO_READERS_LOCK:
        _AVRO_READERS.clear()


install_read_fixes()


# ---- pyiceberg's log chatter about its own retries ----------------------------------------------

#: How pyiceberg's WARNING records about work it retries or cleans up on its own begin: its
#: commit retry (`Transaction.commit_transaction`), the deletion of old metadata files after a
#: commit and of an uncommitted attempt's manifests (`Catalog` / `_SnapshotProducer`). None of
#: them is an error of the operation: the commit either lands or raises. Guard test:
#: `tests/engine/test_iceberg_log_guard.py`.
RETRY_CHATTER_PREFIXES = (
    "Commit failed due to a concurrent update, retrying",
    "Failed to delete ",
)


def is_retry_chatter(record: logging.LogRecord) -> bool:
    """True for a pyiceberg WARNING (or lower) about a retry or a best-effort cleanup.

    Errors stay errors: records at ERROR or above are never chatter.
    """
    if record.levelno >= logging.ERROR or not record.name.startswith("pyiceberg"):
        return False
    message = record.msg if isinstance(record.msg, str) else str(record.msg)
    return message.startswith(RETRY_CHATTER_PREFIXES)


#: How pyiceberg's note begins that an old metadata file it deletes after a commit was not
#: there (`write.metadata.delete-after-commit.enabled`). After a catalog restore every commit of
#: the next 20 names one file the newer timeline already deleted (ops19: 97 lines in a minute).
METADATA_DELETE_NOTE = "Failed to delete metadata file "
_METADATA_NOTED: set[str] = set()
_METADATA_NOTED_LOCK = threading.Lock()


def is_repeated_metadata_delete_note(record: logging.LogRecord) -> bool:
    """True for pyiceberg's "Failed to delete metadata file" WARNING about a table this process
    already logged one for (the first per table location is False).

    Errors are never repeated notes. The table is the file's path up to its `/metadata/`.
    """
    if record.levelno >= logging.ERROR or not record.name.startswith("pyiceberg"):
        return False
    message = record.msg if isinstance(record.msg, str) else str(record.msg)
    if not message.startswith(METADATA_DELETE_NOTE):
        return False
    path = message[len(METADATA_DELETE_NOTE) :]
    table = path.rsplit("/metadata/", 1)[0]
    with _METADATA_NOTED_LOCK:
        if table in _METADATA_NOTED:
            return True
        _METADATA_NOTED.add(table)
    return False


# ---- snapshot expiry with a precondition ------------------------------------------------------


def _require_existing(
    base_metadata: TableMetadata | None, snapshot_ids: list[int]
) -> TableMetadata:
    """`base_metadata`; `CommitFailedException` unless it exists and holds every snapshot."""
    if base_metadata is None:
        raise CommitFailedException("Requirement failed: current table metadata is missing")
    existing = {s.snapshot_id for s in base_metadata.snapshots}
    gone = [i for i in snapshot_ids if i not in existing]
    if gone:
        raise CommitFailedException(
            f"Requirement failed: snapshot {gone[0]} was expired concurrently"
        )
    return base_metadata


class AssertExpirable(ValidatableTableRequirement):
    """Commit precondition: every snapshot to remove still exists and no branch or tag points at it.

    pyiceberg's own `ExpireSnapshots` commits with no requirement at all, so against metadata
    that moved meanwhile it either fails with a bare `ValueError` (a concurrent expiry removed
    a snapshot first) or silently drops a tag created meanwhile on an expired snapshot. The SQL
    catalog validates requirements against the current metadata inside its compare-and-swap,
    so this turns both cases into a `CommitFailedException` the caller can retry.
    """

    type: Literal["lake-assert-expirable"] = Field(default="lake-assert-expirable")
    snapshot_ids: list[int] = Field(default_factory=list)

    def validate(self, base_metadata: TableMetadata | None) -> None:  # type: ignore[override]
        """Raise `CommitFailedException` if a snapshot is gone or now referenced by a ref."""
        metadata = _require_existing(base_metadata, self.snapshot_ids)
        wanted = set(self.snapshot_ids)
        for name, ref in metadata.refs.items():
            if ref.snapshot_id in wanted:
                raise CommitFailedException(
                    f"Requirement failed: {name} now points at snapshot {ref.snapshot_id}"
                )


def expire_snapshot_ids(table: Table, snapshot_ids: Iterable[int]) -> None:
    """Remove snapshots from the table's metadata in one commit, if they are still expirable.

    Deletes no data or manifest files (only the metadata files the table's
    `write.metadata.previous-versions-max` drops, as every commit does). Concurrent appends do not
    conflict (the removal applies to whatever the current metadata is); a concurrent expiry of
    one of the snapshots, or a branch/tag now pointing at one, does. On success `table` holds the
    committed metadata.

    Args:
        table: the table (may be stale).
        snapshot_ids: the snapshots to remove.

    Raises:
        CommitFailedException: a concurrent commit made the removal invalid, or lost the
            catalog's compare-and-swap; refresh, recompute and retry.
    """
    ids = sorted(set(snapshot_ids))
    if not ids:
        return
    requirements = (
        AssertTableUUID(uuid=table.metadata.table_uuid),
        AssertExpirable(snapshot_ids=ids),
    )
    updates = (RemoveSnapshotsUpdate(snapshot_ids=ids),)
    try:
        # `Table._do_commit`, not `catalog.commit_table`: it also deletes the metadata files the
        # commit drops from the metadata log (`write.metadata.delete-after-commit.enabled`);
        # committing through the catalog left one behind per expiry (found by the soak audit).
        # Guards: tests/engine/test_iceberg_commit_guard.py (the expiry test, `Table._do_commit`).
        table._do_commit(updates, requirements)  # type: ignore[arg-type]  # noqa: SLF001
    except ValueError as exc:
        # Defensive: a catalog that applies the updates without validating requirements.
        if "does not exist" not in str(exc):
            raise
        raise CommitFailedException(f"snapshot expired concurrently: {exc}") from None


# ---- refs on snapshots that must still exist ---------------------------------------------------


class AssertSnapshotsExist(ValidatableTableRequirement):
    """Commit requirement: every snapshot a ref update points at still exists.

    A tag or branch commit (`ManageSnapshots`) is validated by pyiceberg only against the
    metadata the transaction read; when an expiry removes the snapshot before the commit lands,
    the catalog re-applies the `SetSnapshotRefUpdate` to the current metadata and pyiceberg
    raises a bare `ValueError: Cannot set <ref> to unknown snapshot <id>`. The SQL catalog
    validates requirements against the current metadata before applying updates, so this turns
    that case into a `CommitFailedException`: the caller refreshes and decides (retag the new
    current snapshot, or report the snapshot as expired). Guard test:
    `tests/engine/test_iceberg_ref_guard.py`.
    """

    type: Literal["lake-assert-snapshots-exist"] = Field(default="lake-assert-snapshots-exist")
    snapshot_ids: list[int] = Field(default_factory=list)

    def validate(self, base_metadata: TableMetadata | None) -> None:  # type: ignore[override]
        """Raise `CommitFailedException` if one of the snapshots is gone."""
        _require_existing(base_metadata, self.snapshot_ids)


def require_snapshots(tx: Transaction, snapshot_ids: Iterable[int]) -> None:
    """Make the commit of `tx` fail (`CommitFailedException`) unless every snapshot still exists.

    For ref updates (tags) on snapshots read earlier: see `AssertSnapshotsExist`. Call it once
    per transaction, with every snapshot the transaction tags (pyiceberg keeps one requirement
    of each type). Uses the transaction's private `_stage` (the only way to add a requirement).
    """
    ids = sorted(set(snapshot_ids))
    if ids:
        tx._stage((), (AssertSnapshotsExist(snapshot_ids=ids),))  # type: ignore[arg-type]


# ---- compare-and-swap of table properties (writer fencing) --------------------------------------


class AssertProperties(ValidatableTableRequirement):
    """Commit requirement: table properties still hold the values this writer last saw.

    Iceberg has no such requirement type; this one is checked where the built-in ones are, by
    the catalog against the *current* metadata at commit time and again on every pyiceberg
    conflict retry (which re-applies the staged property update on a refreshed base, so without
    it a stale writer would overwrite another writer's watermark). A mismatch raises pyiceberg's
    `ValidationException`, which the retry loop does not retry and after which it deletes the
    attempt's files. Works with catalogs that validate requirements in-process (SQL catalog);
    a REST catalog would reject the unknown type. Guard test: `tests/test_engine_fencing.py`.
    """

    type: Literal["lake-assert-properties"] = Field(default="lake-assert-properties")
    expected: dict[str, str | None]

    def validate(self, base_metadata: TableMetadata | None) -> None:  # type: ignore[override]
        """Raise `ValidationException` unless every expected property has its value."""
        if base_metadata is None:
            raise ValidationException("table metadata is missing")
        props = base_metadata.properties
        for key, value in self.expected.items():
            if props.get(key) != value:
                raise ValidationException(
                    f"property {key} is {props.get(key)!r}, this writer expected {value!r}"
                )


def require_properties(tx: Transaction, expected: dict[str, str | None]) -> None:
    """Make the commit of `tx` fail unless the table properties equal `expected` at commit time.

    `None` means "absent". Raises `ValidationException` at once if they already differ, or from
    the commit. Uses the transaction's private `_stage` (the only way to add a requirement).
    """
    tx._stage((), (AssertProperties(expected=expected),))  # type: ignore[arg-type]


def set_properties_if(
    table: Table, expected: dict[str, str | None], properties: Mapping[str, str]
) -> None:
    """Set `properties` in a metadata-only commit, if the table's properties still equal
    `expected` (`require_properties`; else `ValidationException`, nothing changed)."""
    tx = table.transaction()
    require_properties(tx, expected)
    tx.set_properties(dict(properties))
    tx.commit_transaction()


class AssertSchemaId(ValidatableTableRequirement):
    """Commit requirement: the table's current schema is still the one the rows were decoded
    with. Iceberg's own `assert-current-schema-id` raises `CommitFailedException`, which
    pyiceberg's conflict loop retries ten times (~12 s, review17c) though it can never pass;
    this one raises `ValidationException`, as `AssertProperties` does, so the writer learns at
    once. Guard test: `tests/test_ingest_pipeline.py` (`during-the-commit`).
    """

    type: Literal["lake-assert-schema-id"] = Field(default="lake-assert-schema-id")
    schema_id: int

    def validate(self, base_metadata: TableMetadata | None) -> None:  # type: ignore[override]
        """Raise `ValidationException` unless the current schema id is `schema_id`."""
        if base_metadata is None:
            raise ValidationException("table metadata is missing")
        if base_metadata.current_schema_id != self.schema_id:
            raise ValidationException(
                f"schema changed: the rows were decoded with schema {self.schema_id}, the table "
                f"is at schema {base_metadata.current_schema_id}"
            )


def require_schema(tx: Transaction, schema_id: int) -> None:
    """Make the commit of `tx` fail unless the table's current schema id is `schema_id` at
    commit time (`AssertSchemaId`). Raises `ValidationException` at once if it already
    differs, or from the commit. Uses `_stage`, as `require_properties` does.
    """
    tx._stage((), (AssertSchemaId(schema_id=schema_id),))  # type: ignore[arg-type]


def plan_data_files(
    table: Table, snapshot_id: int, row_filter: BooleanExpression
) -> tuple[list[DataFile], bool]:
    """The data files of a snapshot that may hold rows matching `row_filter`, planned cheaply.

    Same manifest and file pruning as `table.scan(row_filter, snapshot_id).plan_files()`
    (partition summaries, partition values, column statistics), without the per-file residual
    expression that `plan_files` builds and the replay never uses (86% of its planning time:
    0.48 of 0.57 CPU-s for 240 files). Uses pyiceberg's `ManifestGroupPlanner`, the planner
    behind `DataScan.plan_files` (guard: `tests/engine/test_iceberg_plan_guard.py`).

    Args:
        table: the table.
        snapshot_id: the snapshot to plan.
        row_filter: the predicate to prune with.

    Returns:
        The data files, and whether the planned manifests hold any delete file (position or
        equality deletes: the caller must then read through an engine that applies them).
    """
    from pyiceberg.manifest import DataFileContent
    from pyiceberg.table import ManifestGroupPlanner

    snapshot = table.snapshot_by_id(snapshot_id)
    if snapshot is None:
        return [], False
    planner = ManifestGroupPlanner(table.metadata, table.io, row_filter=row_filter)
    files: list[DataFile] = []
    deletes = False
    for entries in planner.plan_manifest_entries(snapshot.manifests(table.io)):
        for entry in entries:
            if entry.data_file.content == DataFileContent.DATA:
                files.append(entry.data_file)
            else:
                deletes = True
    return files, deletes


# ---- reading planned files, metadata files and the warehouse listing ----------------------------


def read_scan_tasks(
    table: Table,
    tasks: Iterable[Any],
    projection: Schema | None = None,
    row_filter: BooleanExpression | None = None,
) -> pa.Table:
    """The rows of already planned scan tasks, as one Arrow table (pyiceberg's `ArrowScan`).

    Args:
        table: the table the tasks were planned on.
        tasks: `FileScanTask`s (from `scan.plan_files()` or a subset of them).
        projection: the schema to read (default: the table's current schema).
        row_filter: the residual predicate to apply row by row (default: none).
    """
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    schema = projection if projection is not None else table.schema()
    expr = row_filter if row_filter is not None else AlwaysTrue()
    return ArrowScan(table.metadata, table.io, schema, expr).to_table(tasks)


def read_table_metadata(table: Table, location: str) -> TableMetadata:
    """A `metadata.json` of `table` (current or older) parsed from `location`.

    Raises:
        FileNotFoundError: no such file (any other error: the file is unreadable or corrupt).
    """
    from pyiceberg.serializers import FromInputFile

    return FromInputFile.table_metadata(table.io.new_input(location))


def default_table_location(catalog: Any, identifier: str) -> str:
    """Where `catalog` (a pyiceberg catalog) puts a new table `identifier` created without a
    location: pyiceberg's private `_resolve_table_location` (guard:
    `tests/engine/test_table_location_guard.py`)."""
    namespace, name = identifier.rsplit(".", 1)
    return str(catalog._resolve_table_location(None, namespace, name))


def metadata_files_at(catalog: Any, location: str) -> list[tuple[str, datetime | None, int]]:
    """The `*.metadata.json` files under a table location's `metadata/` (URI, modification
    time, size), read with a FileIO made from the catalog's properties; empty when there is no
    such directory.

    Raises:
        LakeError: the location cannot be listed.
    """
    from pyiceberg.io.pyarrow import PyArrowFileIO

    io = PyArrowFileIO(dict(catalog.properties))
    found = list_files(io, f"{location.rstrip('/')}/metadata")
    return sorted(f for f in found if f[0].endswith(".metadata.json"))


def read_metadata_file(catalog: Any, location: str) -> TableMetadata:
    """A `metadata.json` parsed from `location`, read with a FileIO made from the catalog's
    properties (no table needed).

    Raises:
        FileNotFoundError: no such file (any other error: unreadable or corrupt).
    """
    from pyiceberg.io import load_file_io
    from pyiceberg.serializers import FromInputFile

    io = load_file_io(dict(catalog.properties), location)
    return FromInputFile.table_metadata(io.new_input(location))


def listing_io(table: Table) -> FileIO:
    """A pyarrow FileIO with the table's properties (listing needs a pyarrow filesystem)."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if isinstance(table.io, PyArrowFileIO):
        return table.io
    return PyArrowFileIO(table.io.properties)


def list_files(io: FileIO, location: str) -> list[tuple[str, datetime | None, int]]:
    """Every file under `location`: (URI, modification time in UTC, size in bytes).

    Args:
        io: a FileIO from `listing_io`.
        location: a directory URI (`file://…`, `s3://…`).

    Raises:
        LakeError: the location cannot be listed.
    """
    from pyarrow.fs import FileSelector, FileType
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if not isinstance(io, PyArrowFileIO):
        raise TypeError("list_files needs the FileIO of listing_io()")
    scheme, netloc, path = PyArrowFileIO.parse_location(location, io.properties)
    fs = io.fs_by_scheme(scheme, netloc)
    try:
        infos = fs.get_file_info(
            FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True)
        )
    except OSError as exc:
        raise LakeError(f"cannot list {location}: {exc}") from exc
    out = []
    for info in infos:
        if info.type != FileType.File:
            continue
        uri = f"file://{info.path}" if scheme == "file" else f"{scheme}://{info.path}"
        mtime = info.mtime
        if mtime is not None and mtime.tzinfo is None:
            mtime = mtime.replace(tzinfo=UTC)
        out.append((uri, mtime, info.size or 0))
    return out


def holds_files_beside(catalog: Any, location: str) -> bool:
    """Whether the directory of the file `location` (a table's `metadata/`) lists any file,
    read with a FileIO made from the catalog's properties (the table itself cannot be loaded).

    Tells a current metadata file gone for good (its directory still holds older versions and
    manifests) from storage that is not there at all (a mount not up yet, a bucket missing).
    False also when the directory cannot be listed.
    """
    from pyiceberg.io.pyarrow import PyArrowFileIO

    directory = location.rsplit("/", 1)[0]
    try:
        return bool(list_files(PyArrowFileIO(dict(catalog.properties)), directory))
    except (LakeError, OSError, ValueError):
        return False


def store_clock_offset(
    io: FileIO, location: str, local_now: Callable[[], datetime]
) -> timedelta | None:
    """How far the store's clock is ahead of `local_now` (negative: behind), from the
    modification time of an empty probe object written under `location` and deleted after.

    An under-estimate by construction (the store stamped the probe before `local_now` was read
    after the write; S3 also truncates to the second): a store "now" computed with it is never
    later than the store's real one, so files never look older than they are.

    Args:
        io: a FileIO from `listing_io`.
        location: a directory URI on the store (a table's location).
        local_now: this machine's clock.

    Returns:
        The offset, or None for a local directory that does not exist (it holds no files).

    Raises:
        LakeError: the probe could not be written or read back.
    """
    from pyarrow.fs import FileType
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if not isinstance(io, PyArrowFileIO):
        raise TypeError("store_clock_offset needs the FileIO of listing_io()")
    scheme, netloc, path = PyArrowFileIO.parse_location(location, io.properties)
    fs = io.fs_by_scheme(scheme, netloc)
    directory = path.rstrip("/")
    if scheme == "file" and fs.get_file_info(directory).type != FileType.Directory:
        return None
    probe = f"{directory}/.lake-clock-probe-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"")
        after = local_now()
        info = fs.get_file_info(probe)
    except OSError as exc:
        raise LakeError(f"cannot write a clock probe under {location}: {exc}") from exc
    finally:
        try:
            fs.delete_file(probe)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a store that lets us write but not delete: say it once
            log.warning("the clock probe %s could not be deleted: %s", probe, exc)
    if info.type != FileType.File or info.mtime is None:
        raise LakeError(f"the clock probe under {location} has no modification time")
    mtime = info.mtime if info.mtime.tzinfo is not None else info.mtime.replace(tzinfo=UTC)
    return mtime - after


def delete_file(io: FileIO, location: str) -> None:
    """Delete one file; a file already gone is fine.

    Raises:
        LakeError: the store refused the delete.
    """
    try:
        io.delete(location)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LakeError(f"cannot delete {location}: {exc}") from exc


# ---- a table that reads but never commits (dry runs) --------------------------------------------


class CommitRefusedError(Exception):
    """A commit (or a transaction) on a `read_only_table`."""


def read_only_table(table: Table, why: str) -> Table:
    """`table` as of now, for reading only: writing a file through its `io`, starting a
    transaction or committing raises `CommitRefusedError(why)`, before anything is written.

    pyiceberg's own `StaticTable` (a table without a catalog) with its `transaction()` refused,
    and an `io` that reads but never writes or deletes: every writer (pyiceberg's `append`,
    the lake's own `watermarked_append`, manifests) opens its files through `table.io`
    (review14b: the lake's append wrote its data files before the refused commit). Guard:
    `tests/engine/test_iceberg_read_only_guard.py`.
    """
    from pyiceberg.catalog.noop import NoopCatalog
    from pyiceberg.io import FileIO, InputFile
    from pyiceberg.table import StaticTable

    class _ReadOnlyIO(FileIO):
        def __init__(self, io: FileIO) -> None:
            super().__init__(io.properties)
            self._io = io

        def new_input(self, location: str) -> InputFile:
            return self._io.new_input(location)

        def new_output(self, location: str) -> OutputFile:
            raise CommitRefusedError(why)

        def delete(self, location: str | InputFile | OutputFile) -> None:
            raise CommitRefusedError(why)

        def __getattr__(self, name: str) -> Any:  # reading helpers of the wrapped io
            return getattr(self._io, name)

    class _RefusingCatalog(NoopCatalog):
        def commit_table(self, *args: Any, **kwargs: Any) -> Any:
            raise CommitRefusedError(why)

    class _ReadOnlyTable(StaticTable):
        def transaction(self) -> Transaction:
            raise CommitRefusedError(why)

    return _ReadOnlyTable(
        identifier=table.name(),
        metadata_location=table.metadata_location,
        metadata=table.metadata,
        io=_ReadOnlyIO(table.io),
        catalog=_RefusingCatalog("read-only"),
    )
