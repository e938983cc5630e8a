"""Committing a Silver compaction: one atomic `overwrite` snapshot per batch of partitions.

`SilverCommit` is a builder in the style of pyiceberg's `table/update/snapshot.py`: it collects
the new files of each compacted partition and commits them, replacing the partitions' old files,
when its `with` block ends cleanly; on an error it deletes the files it was given instead.

    with SilverCommit(silver, definition, snap, layout) as commit:
        for output in outputs:
            commit.add(output)
    commit.snapshot_id  # the new Silver snapshot
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from types import TracebackType

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import DecimalType, DoubleType, FloatType, IcebergType, IntegerType, LongType

from iceberg_lake import properties as P
from iceberg_lake.catalog import catalog_errors
from iceberg_lake.engine.iceberg import PartitionReplacement
from iceberg_lake.exceptions import CompactionError, SchemaChangeError, TimeTravelError
from iceberg_lake.schema.evolve import Change, WidenColumn, evolve_table
from iceberg_lake.silver.job import PartitionOutput
from iceberg_lake.silver.plan import Layout, Partition, cover, table_name
from iceberg_lake.tables import TableDefinition
from iceberg_lake.timetravel.snapshots import protect_silver_source

log = logging.getLogger(__name__)

__all__ = ["SilverCommit", "advance_mark", "follow_bronze_types"]


class SilverCommit:
    """Stages the replacement of Silver partitions; commits ONE snapshot on a clean exit.

    The snapshot's summary carries `lake.operation`, `lake.source-table`,
    `lake.source-snapshot-id` and `lake.replaced-partitions`. Right before it, the Bronze
    source snapshot is tagged `silver-source-<id>` (`snapshots.protect_silver_source`, given
    `bronze`), so no engine's snapshot expiry can remove the source Silver names; the tag is
    idempotent (a rerun finds it). Not idempotent by itself: the planner decides which
    partitions need replacing.

    Args:
        silver: the Silver table.
        definition: the Bronze definition compacted.
        snap: the pinned Bronze snapshot the new files were computed from.
        layout: the partition layout (to label and cover the partitions).
        table_properties: table properties set in the same commit (e.g. the incremental mark).
        bronze: the Bronze table `snap` belongs to: its source tag is made before the commit
            (None: no tag; the expiry policy tags Silver's sources on its next run).

    Raises:
        CommitConflictError: (on exit) a concurrent commit touched the same partitions.
        CompactionError: (on exit) the source snapshot was expired before it could be tagged.
    """

    def __init__(
        self,
        silver: Table,
        definition: TableDefinition,
        snap: Snapshot,
        layout: Layout,
        table_properties: dict[str, str] | None = None,
        bronze: Table | None = None,
    ) -> None:
        self.silver = silver
        self.bronze = bronze
        self.definition = definition
        self.snap = snap
        self.layout = layout
        self.table_properties = dict(table_properties or {})
        self.partitions: list[Partition] = []
        #: The committed snapshot (None until a commit, or when there was nothing to commit).
        self.snapshot_id: int | None = None
        self._replacement = PartitionReplacement(silver, {})

    def add(self, output: PartitionOutput) -> None:
        """Replace `output.part`'s current Silver files with `output.files`."""
        from pyiceberg.expressions import AlwaysFalse

        # Files only: the predicate covering every partition is set once, at commit.
        self._replacement.replace_files(AlwaysFalse(), output.files, output.part.silver)
        self.partitions.append(output.part)

    def discard(self) -> None:
        """Delete the new, uncommitted files (best effort)."""
        self._replacement.discard_new_files()

    def __enter__(self) -> SilverCommit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()
            return
        self.commit()

    def commit(self) -> int | None:
        """Commit the staged replacements as one snapshot; return its id (None: nothing)."""
        rep = self._replacement
        if rep.is_empty and not self.partitions:
            return None
        labels: list[list[object]] = []
        for f in rep.old_files + rep.new_files:
            label = self.layout.label(f.partition)
            if label not in labels:
                labels.append(label)
        rep.predicate = cover(self.layout, [p.record for p in self.partitions])
        rep.snapshot_properties = {
            P.LAKE_OPERATION: P.SILVER_COMPACTION,
            P.SOURCE_TABLE: self.definition.identifier,
            P.SOURCE_SNAPSHOT_ID: str(self.snap.snapshot_id),
            P.REPLACED_PARTITIONS: json.dumps(sorted(labels, key=str), default=str),
        }
        rep.table_properties = self.table_properties
        try:
            if self.bronze is not None:
                # Before the Silver commit: once Silver names the source, a ref protects it.
                with catalog_errors(f"tagging the source of {table_name(self.silver)}"):
                    try:
                        protect_silver_source(self.bronze, self.snap.snapshot_id)
                    except TimeTravelError as exc:
                        raise CompactionError(str(exc)) from None
            with catalog_errors(f"committing {table_name(self.silver)}"):
                snapshot_id = rep.commit()
        except Exception:
            self.discard()
            raise
        self.snapshot_id = snapshot_id
        log.info(
            "%s: committed %d partitions as snapshot %s",
            table_name(self.silver),
            len(labels),
            snapshot_id,
        )
        return snapshot_id


def advance_mark(silver: Table, marks: dict[str, str]) -> None:
    """Set the incremental mark without a snapshot (best effort: the next run redoes it)."""
    try:
        with catalog_errors(f"updating {table_name(silver)}"):
            with silver.transaction() as tx:
                tx.set_properties(marks)
    except CommitFailedException:
        silver.refresh()


def follow_bronze_types(
    bronze: Table, silver: Table, dedup_columns: Sequence[str] = ()
) -> list[str]:
    """Widen Silver columns that Bronze has widened since (`int`→`long`, ...); return what changed.

    A column renamed on Bronze only is refused with the command that renames it on Silver (a
    dedup column, which `catalog/` names, with the command that renames it back).

    Silver is written with its own schema, so a Bronze column widened alone (`lake table evolve
    bronze.stocks_trades --widen size:long`, for sizes above 2^31) would not fit it. Widening is
    the one type change Iceberg allows and it never alters a stored value, so Silver follows in
    one metadata commit (no snapshot; `lake.schema-version` + 1) before the data is compacted.
    Idempotent: nothing is committed when the types already agree, or Silver's is the wider.

    Raises:
        CompactionError: a column's types differ in a way a widening cannot reconcile, or a
            Silver column was renamed on Bronze only.
    """
    _refuse_bronze_only_renames(bronze, silver, dedup_columns)
    silver_fields = {f.name: f.field_type for f in silver.schema().fields}
    changes: list[Change] = []
    for f in bronze.schema().fields:
        mine = silver_fields.get(f.name)
        if mine is None or mine == f.field_type or _widens(f.field_type, mine):
            continue  # not in Silver, the same, or Silver's is wider: DuckDB casts up
        changes.append(WidenColumn(f.name, str(f.field_type)))
    if not changes:
        return []
    try:
        result = evolve_table(silver, table_name(silver), changes)
    except SchemaChangeError as exc:
        raise CompactionError(
            f"{table_name(silver)} cannot follow the column types of {table_name(bronze)}: "
            f"{exc}; make the two tables' types match"
        ) from None
    done = [c.describe() for c in result.plan.apply] if result.committed else []
    for line in done:
        log.warning("%s: %s (to follow %s)", table_name(silver), line, table_name(bronze))
    return done


def _refuse_bronze_only_renames(bronze: Table, silver: Table, dedup: Sequence[str]) -> None:
    """Refuse a Silver column that Bronze has renamed since (Silver matches columns by name).

    Compacting anyway would write NULL for the column, for old rows too, and a NULL dedup
    column merges distinct events; the operator renames Silver as well (migrations do both).
    """
    current = {f.field_id: f.name for f in bronze.schema().fields}
    names = set(current.values())
    for column in silver.schema().column_names:
        if column in names:
            continue
        for schema in bronze.metadata.schemas:
            old = next((f for f in schema.fields if f.name == column), None)
            new = current.get(old.field_id) if old is not None else None
            if new is not None and new not in silver.schema().column_names:
                if column in dedup:
                    raise CompactionError(
                        f"{table_name(bronze)} renamed column {column} to {new}, but Silver "
                        f"identifies events by the dedup columns catalog/ declares ({column} is "
                        f"one): rename it back (lake table evolve {table_name(bronze)} "
                        f"--rename {new}:{column})"
                    )
                raise CompactionError(
                    f"{table_name(bronze)} renamed column {column} to {new} but "
                    f"{table_name(silver)} still calls it {column}: rename it there too "
                    f"(lake table evolve {table_name(silver)} --rename {column}:{new})"
                )


def _widens(narrow: IcebergType, wide: IcebergType) -> bool:
    """True when `wide` is an Iceberg widening of `narrow` (so `narrow` values fit it)."""
    if isinstance(narrow, DecimalType) and isinstance(wide, DecimalType):
        return narrow.scale == wide.scale and narrow.precision < wide.precision
    return (type(narrow), type(wide)) in {(IntegerType, LongType), (FloatType, DoubleType)}
