"""Atomic replacement of partitions: ONE Iceberg `overwrite` snapshot that swaps files.

`Table.overwrite(df, overwrite_filter=...)` commits a DELETE snapshot and then an APPEND snapshot,
so a reader pinned between them sees an empty partition; `dynamic_partition_overwrite` refuses
hour/day transforms. This module drives pyiceberg's overwrite snapshot producer directly: the new
data files are written first (partition by partition, so memory stays bounded), then one commit
removes exactly the old files of the replaced partitions and adds the new ones.

It is used by the Silver compactor and by small-file compaction (`lake maintain compact-files`).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysFalse, BooleanExpression, Or
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.typedef import Record

from iceberg_lake.exceptions import CommitConflictError


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
        """Delete the written, uncommitted new files (best effort; after a failed commit)."""
        for f in self.new_files:
            try:
                self.table.io.delete(f.file_path)
            except Exception:  # noqa: BLE001 - an orphan left behind is harmless
                pass

    @property
    def is_empty(self) -> bool:
        """True when nothing would change."""
        return not self.old_files and not self.new_files

    def commit(self) -> int | None:
        """Commit all replacements as one snapshot; return its id (None if nothing to do).

        Raises:
            CommitConflictError: a concurrent commit touched the same partitions (also when
                pyiceberg's retry found the replaced files already gone).
        """
        if self.is_empty:
            return None
        try:
            with self.table.transaction() as tx:
                if self.table_properties:
                    tx.set_properties(self.table_properties)
                with tx.update_snapshot(snapshot_properties=self.snapshot_properties).overwrite(
                    commit_uuid=self.write_uuid
                ) as producer:
                    producer.delete_by_predicate(self.predicate)
                    for f in self.old_files:
                        producer.delete_data_file(f)
                    for f in self.new_files:
                        producer.append_data_file(f)
        except (CommitFailedException, ValidationException) as exc:
            self.table.refresh()
            raise CommitConflictError(f"{self.table.name()}: concurrent commit ({exc})") from exc
        snapshot = self.table.current_snapshot()
        return snapshot.snapshot_id if snapshot else None


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


def partition_values(record: Record) -> tuple[Any, ...]:
    """A partition record (`DataFile.partition`) as a hashable tuple of its values."""
    return tuple(record[i] for i in range(len(record)))
