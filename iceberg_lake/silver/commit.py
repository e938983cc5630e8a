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

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import DecimalType, DoubleType, FloatType, IcebergType, IntegerType, LongType

from iceberg_lake import properties as P
from iceberg_lake.catalog import catalog_errors
from iceberg_lake.engine.iceberg import PartitionReplacement, require_properties
from iceberg_lake.exceptions import (
    CommitConflictError,
    CompactionError,
    SchemaChangeError,
    TimeTravelError,
)
from iceberg_lake.schema.evolve import Change, WidenColumn, evolve_table
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.silver.job import PartitionOutput
from iceberg_lake.silver.plan import Layout, Partition, cover, table_name
from iceberg_lake.silver.state import is_ancestor
from iceberg_lake.tables import TableDefinition
from iceberg_lake.timetravel.snapshots import protect_silver_source

log = logging.getLogger(__name__)

__all__ = [
    "SilverCommit",
    "advance_mark",
    "follow_bronze_types",
    "lower_mark",
    "mark_for_pin",
    "usable_mark",
]


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
        expected_properties: property values Silver must still have when the commit lands
            (None: absent), e.g. the incremental mark the run planned from; None: no check.

    Raises:
        CommitConflictError: (on exit) a concurrent commit touched the same partitions, or
            changed one of `expected_properties`.
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
        expected_properties: dict[str, str | None] | None = None,
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
        self._replacement.expected_properties = expected_properties

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
        if self.table_properties.get(P.SILVER_INCREMENTAL_SOURCE):
            rep.snapshot_id_property = P.SILVER_INCREMENTAL_SILVER_SNAPSHOT
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


def advance_mark(
    silver: Table, marks: dict[str, str], expected: dict[str, str | None] | None = None
) -> None:
    """Set the incremental mark without a snapshot (best effort: the next run redoes it).

    `expected`: the mark as the run read it (None: absent). The update is a compare-and-swap
    on it, checked again on pyiceberg's own conflict retry, so a mark another run lowered
    meanwhile (a pinned run, `mark_for_pin`) is never raised over.

    Raises:
        CommitConflictError: the mark is no longer `expected` (plan again).
    """
    try:
        with catalog_errors(f"updating {table_name(silver)}"):
            with silver.transaction() as tx:
                if expected is not None:
                    require_properties(tx, expected)
                tx.set_properties({**marks, **_marked_on(silver)})
    except ValidationException as exc:
        silver.refresh()
        raise CommitConflictError(
            f"{table_name(silver)}: the incremental mark changed meanwhile ({exc})"
        ) from exc
    except CommitFailedException:
        silver.refresh()


def _marked_on(silver: Table) -> dict[str, str]:
    """The property naming the Silver snapshot a mark set without a snapshot is set on."""
    current = silver.current_snapshot()
    return {P.SILVER_INCREMENTAL_SILVER_SNAPSHOT: str(current.snapshot_id) if current else ""}


def usable_mark(silver: Table, *, quiet: bool = False) -> str | None:
    """The incremental mark, unless Silver's current snapshot does not descend from the
    snapshot it was set on (a rollback, or that snapshot expired): then None, and the run
    checks every partition from metadata (and sets the mark anew).

    A rollback moves Silver back to older content and leaves table properties as they were, so
    the mark went on claiming the rolled-back compactions and every incremental run answered
    `unchanged` (silver18).
    """
    mark = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
    if not mark:
        return mark
    marked_on = silver.properties.get(P.SILVER_INCREMENTAL_SILVER_SNAPSHOT)
    current = silver.current_snapshot()
    if marked_on is None:  # a mark set before this property existed
        return None
    if current is None:
        return mark if marked_on == "" else None
    if marked_on.isdigit() and (
        int(marked_on) == current.snapshot_id
        or is_ancestor(silver, int(marked_on), current.snapshot_id)
    ):
        return mark
    if quiet:
        return None
    log.warning(
        "%s: the incremental mark was set on snapshot %s, which the current snapshot %d does "
        "not descend from (rolled back, or that snapshot expired): checking every partition",
        table_name(silver),
        marked_on or "(none)",
        current.snapshot_id,
    )
    return None


def follow_bronze_types(
    bronze: Table, silver: Table, dedup_columns: Sequence[str] = ()
) -> list[str]:
    """Widen Silver columns that Bronze has widened since (`int`→`long`, ...); return what changed.

    Columns are paired by meaning, not only by name: a column Bronze renamed since is the
    Silver column of its old name (`NameHistory`; compaction feeds it the same way, see
    `silver.dedup.source_columns`). `dedup_columns` is accepted for the callers' sake.

    Silver is written with its own schema, so a Bronze column widened alone (`lake table evolve
    bronze.stocks_trades --widen size:long`, for sizes above 2^31) would not fit it. Widening is
    the one type change Iceberg allows and it never alters a stored value, so Silver follows in
    one metadata commit (no snapshot; `lake.schema-version` + 1) before the data is compacted.
    Idempotent: nothing is committed when the types already agree, or Silver's is the wider.

    Raises:
        CompactionError: a column's types differ in a way a widening cannot reconcile.
    """
    del dedup_columns  # renames are followed, not refused: nothing to check by name
    history = NameHistory(bronze.schemas().values())
    bronze_schema = bronze.schema()
    theirs = {f.name: f.field_type for f in bronze_schema.fields}
    changes: list[Change] = []
    for f in silver.schema().fields:
        source = history.resolve(f.name, bronze_schema)
        if source is None:
            continue  # not in Bronze
        wide = theirs[source]
        if f.field_type == wide or _widens(wide, f.field_type):
            continue  # the same, or Silver's is wider: DuckDB casts up
        changes.append(WidenColumn(f.name, str(wide)))
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


def _widens(narrow: IcebergType, wide: IcebergType) -> bool:
    """True when `wide` is an Iceberg widening of `narrow` (so `narrow` values fit it)."""
    if isinstance(narrow, DecimalType) and isinstance(wide, DecimalType):
        return narrow.scale == wide.scale and narrow.precision < wide.precision
    return (type(narrow), type(wide)) in {(IntegerType, LongType), (FloatType, DoubleType)}


def mark_for_pin(bronze: Table, silver: Table, snap: Snapshot) -> dict[str, str]:
    """The incremental mark a `compact_date`/`compact_all_dates` run of `snap` commits with.

    The mark (`lake.silver.incremental-source-snapshot-id`) promises that every Silver
    partition holds Bronze as of the mark or later, so the next incremental run need only look
    at what Bronze changed after it. A run pinned to an older snapshot (`--as-of`, a tag)
    rewrites partitions with older content and breaks that promise: it lowers the mark to its
    own snapshot, in the same commit, so the next incremental run catches up. When neither
    snapshot descends from the other (a branch, an expired mark) the mark is cleared and the
    next incremental run checks every partition from metadata.

    Returns:
        `{}` (keep the mark: none is set, or `snap` is the mark or newer) or the property to
        set (the pinned snapshot id, or `""` to clear).
    """
    mark = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
    if not mark or not mark.isdigit():
        return {}  # no usable mark: the next incremental run checks every partition anyway
    if usable_mark(silver, quiet=True) is None:
        # Set on content Silver no longer holds (a rollback): lowered, it would name this
        # run's commit as its snapshot and count as usable again, and the days a rollback
        # undid outside this run would never be recompacted (review18).
        return {P.SILVER_INCREMENTAL_SOURCE: ""}
    marked, pinned = int(mark), snap.snapshot_id
    if marked == pinned or is_ancestor(bronze, marked, pinned):
        return {}
    if is_ancestor(bronze, pinned, marked):
        return {P.SILVER_INCREMENTAL_SOURCE: str(pinned)}
    return {P.SILVER_INCREMENTAL_SOURCE: ""}


def lower_mark(bronze: Table, silver: Table, snap: Snapshot, attempts: int = 4) -> None:
    """Lower (or clear) the incremental mark for a run of `snap` as a metadata-only commit.

    For writers that cannot set it in their own commit (Spark's partition overwrite): called
    before the write, so no moment has older Silver content under a newer mark, and again after
    it, in case an incremental run raised the mark in between. A lower mark is always safe: it
    only makes the next incremental run look at more. The update is a compare-and-swap on the
    mark it read, so it never raises a mark another run lowered further meanwhile; it re-reads
    the mark on a lost race.

    Raises:
        CompactionError: every attempt lost a race with another commit.
    """
    for _ in range(attempts):
        marks = mark_for_pin(bronze, silver, snap)
        if not marks:
            return
        read = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
        try:
            with catalog_errors(f"updating {table_name(silver)}"):
                with silver.transaction() as tx:
                    require_properties(tx, {P.SILVER_INCREMENTAL_SOURCE: read})
                    tx.set_properties({**marks, **_marked_on(silver)})
            return
        except (CommitFailedException, ValidationException):
            silver.refresh()
    raise CompactionError(f"{table_name(silver)}: could not lower the incremental mark")
