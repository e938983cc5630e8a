"""Planning a Silver compaction from metadata only: which partitions, pinned where, changed or not.

Nothing here reads data files or commits: the plan groups the Bronze files of a pinned snapshot
and the current Silver files by Silver partition (Silver's layout is its own: `PartitionMap`
places Bronze files of any Bronze partition spec in it), decides which partitions changed since
their last compaction (see `iceberg_lake.silver.state`), and batches the changed ones into DuckDB
queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pyiceberg.expressions import (
    AlwaysFalse,
    And,
    BooleanExpression,
    Or,
)
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.typedef import Record

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.dates import utc_date
from iceberg_lake.engine.duck import quote_ident, quote_str
from iceberg_lake.engine.filters import eq, ge, lt
from iceberg_lake.engine.iceberg import partition_values
from iceberg_lake.exceptions import CompactionError, TimeTravelError, UnknownTableError
from iceberg_lake.silver.state import BronzeHistory, fingerprint, parse_state
from iceberg_lake.tables import BRONZE, SILVER, TableDefinition
from iceberg_lake.timetravel.snapshots import AsOf, resolve_as_of

__all__ = [
    "Layout",
    "Partition",
    "PartitionMap",
    "cover",
    "day_window",
    "group_by_day",
    "layout_of",
    "parse_date",
    "pin_snapshot",
    "plan_partitions",
    "query_groups",
    "resolve_bronze_table",
    "split_changed",
    "table_name",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def table_name(table: Table) -> str:
    """`namespace.table` (pyiceberg's `Table.name()` is a tuple)."""
    return ".".join(table.name())


def current_snapshot_id(table: Table) -> int | None:
    """The id of the table's current snapshot (None: empty table)."""
    snap = table.current_snapshot()
    return snap.snapshot_id if snap else None


def resolve_bronze_table(catalog: LakeCatalog, schema: str) -> TableDefinition:
    """The Bronze definition named by a spec schema name or a table name.

    Accepts `futures.trades` (the spec's schema name), `futures_trades`, `bronze.futures_trades`
    and `silver.futures_trades`.

    Raises:
        UnknownTableError: nothing matches, or the table has no Silver counterpart.
    """
    reg = catalog.registry
    name = schema.strip()
    found = reg.by_schema_name(name, BRONZE)
    if found is None:
        table = name.split(".", 1)[1] if name.startswith((f"{BRONZE}.", f"{SILVER}.")) else name
        if "." not in table and f"{BRONZE}.{table}" in reg:
            found = reg.get(f"{BRONZE}.{table}")
    if found is None or f"{SILVER}.{found.name}" not in reg:
        known = ", ".join(sorted(d.schema_name for d in reg.in_namespace(SILVER)))
        raise UnknownTableError(f"no Silver table for '{schema}' (known schemas: {known})")
    return found


def parse_date(value: str | date) -> date:
    """The UTC day of `YYYY-MM-DD`, a `date` or a `datetime` (aware: its UTC day).

    Raises:
        CompactionError: not a date.
    """
    return utc_date(value, CompactionError)


def day_window(day: date) -> BooleanExpression:
    """Rows whose `ts_event` falls on UTC day `day`."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return And(
        ge("ts_event", start.isoformat()),
        lt("ts_event", (start + timedelta(days=1)).isoformat()),
    )


def pin_snapshot(
    bronze: Table, snapshot_id: int | None, tag: str | None, as_of: AsOf = None
) -> Snapshot | None:
    """The Bronze snapshot to compact: `as_of` (the lake's one pin vocabulary: snapshot id, tag
    or branch, timestamp), or the older spelling `snapshot_id` / `tag`, or the current one.

    Raises:
        CompactionError: more than one pin given, or the snapshot/tag does not exist.
    """
    if sum(x is not None for x in (snapshot_id, tag, as_of)) > 1:
        raise CompactionError("give one pin: a snapshot id, a tag or as_of")
    if as_of is not None:
        try:
            sid = resolve_as_of(bronze, as_of)
        except TimeTravelError as exc:
            raise CompactionError(str(exc)) from None
        return bronze.snapshot_by_id(sid) if sid is not None else None
    if snapshot_id is not None:
        snap = bronze.snapshot_by_id(int(snapshot_id))
        if snap is None:
            raise CompactionError(f"{table_name(bronze)} has no snapshot {snapshot_id}")
        return snap
    if tag is not None:
        snap = bronze.snapshot_by_name(tag)
        if snap is None:
            raise CompactionError(f"{table_name(bronze)} has no tag or branch '{tag}'")
        return snap
    return bronze.current_snapshot()


@dataclass(frozen=True)
class Layout:
    """Where the partition key and the time bucket sit in a (shared) partition spec."""

    key_column: str | None
    key_pos: int | None
    time_pos: int
    time_unit: str  # "hour" or "day"

    @property
    def step(self) -> timedelta:
        """The length of one time bucket."""
        return timedelta(hours=1) if self.time_unit == "hour" else timedelta(days=1)

    def bounds(self, record: Record) -> tuple[Any, datetime, datetime]:
        """`(key value, bucket start, bucket end)` of a partition tuple."""
        value = record[self.key_pos] if self.key_pos is not None else None
        lo = _EPOCH + int(record[self.time_pos]) * self.step
        return value, lo, lo + self.step

    def bucket_key(self, record: Record) -> tuple[Any, int]:
        """`(key value, time bucket)` as the grouped dedup query reports it."""
        value = record[self.key_pos] if self.key_pos is not None else None
        return value, int(record[self.time_pos])

    def label(self, record: Record) -> list[Any]:
        """`[key value, "YYYY-MM-DDTHH" or "YYYY-MM-DD"]`: a partition as results name it."""
        value, lo, _ = self.bounds(record)
        fmt = "%Y-%m-%dT%H" if self.time_unit == "hour" else "%Y-%m-%d"
        return [value, lo.strftime(fmt)]

    def range_predicate(self, key: Any, first: int, end: int) -> BooleanExpression:
        """Rows of partition value `key` in time buckets `first` .. `end - 1`."""
        lo, hi = _EPOCH + first * self.step, _EPOCH + end * self.step
        expr: BooleanExpression = And(
            ge("ts_event", lo.isoformat()), lt("ts_event", hi.isoformat())
        )
        if self.key_column is not None:
            expr = And(eq(self.key_column, key), expr)
        return expr

    def sql_filter(self, record: Record) -> str:
        """A DuckDB `WHERE` condition selecting the rows of one partition."""
        value, lo, hi = self.bounds(record)
        parts = [
            f"ts_event >= TIMESTAMPTZ {quote_str(lo.isoformat())}",
            f"ts_event < TIMESTAMPTZ {quote_str(hi.isoformat())}",
        ]
        if self.key_column is not None:
            parts.insert(0, f"{quote_ident(self.key_column)} = {quote_str(str(value))}")
        return " AND ".join(parts)


def _spec_signature(spec: PartitionSpec, schema: Schema) -> list[tuple[str, str]]:
    return [(schema.find_column_name(f.source_id) or "", str(f.transform)) for f in spec.fields]


def layout_of(bronze: Table, silver: Table) -> Layout:
    """Silver's partition layout, checked against the Bronze table it is compacted from.

    Silver's layout is its own: `[key,] hour/day(ts_event)` of its current spec. Bronze may be
    partitioned differently (say `lake table evolve bronze.x --add-partition-field
    source:identity`) as long as each Bronze file can be placed in one Silver partition
    (see `PartitionMap`); Bronze's current spec is checked here, older specs when their files
    are planned.

    Raises:
        CompactionError: Silver's spec is not `[key,] hour/day(ts_event)`, or Bronze's current
            spec has no field to place its files in Silver partitions.
    """
    s_sig = _spec_signature(silver.spec(), silver.schema())
    key_pos = next((i for i, (_, t) in enumerate(s_sig) if t == "identity"), None)
    time_pos = next((i for i, (_, t) in enumerate(s_sig) if t in ("hour", "day")), None)
    if time_pos is None or s_sig[time_pos][0] != "ts_event" or len(s_sig) > 2:
        raise CompactionError(
            f"{table_name(silver)} is partitioned as {_describe(s_sig)}; Silver compaction "
            "writes [key,] hour/day(ts_event) partitions only"
        )
    layout = Layout(
        key_column=s_sig[key_pos][0] if key_pos is not None else None,
        key_pos=key_pos,
        time_pos=time_pos,
        time_unit=s_sig[time_pos][1],
    )
    PartitionMap(bronze, layout).check(bronze.spec().spec_id)
    return layout


def _describe(sig: Sequence[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{t}({c})" for c, t in sig) + "]"


#: Bronze time transform → Silver time transform → how many Bronze buckets make a Silver one.
_TIME_RATIO = {("hour", "hour"): 1, ("hour", "day"): 24, ("day", "day"): 1}


class PartitionMap:
    """Places Bronze files, of any of Bronze's partition specs, in Silver's partitions.

    Silver's partitions are its own (`Layout`); a Bronze file belongs to exactly one of them
    when its spec has `identity(<Silver's key>)` (if Silver has a key) and `hour(ts_event)`,
    or `day(ts_event)` for a day-partitioned Silver. Further Bronze partition fields (an added
    `identity(source)`) only split a Silver partition's Bronze files into more groups. A
    Bronze spec without those fields (a day-partitioned Bronze for an hour-partitioned Silver,
    a key dropped by another engine) cannot be placed and is refused with one line.

    Args:
        bronze: the Bronze table (its specs and current schema).
        layout: Silver's layout.
    """

    def __init__(self, bronze: Table, layout: Layout) -> None:
        self._bronze = bronze
        self._layout = layout
        self._width = 1 + (layout.key_pos is not None)
        self._positions: dict[int, tuple[int | None, int, int]] = {}

    def check(self, spec_id: int) -> tuple[int | None, int, int]:
        """`(key position, time position, ratio)` of Bronze spec `spec_id`.

        Raises:
            CompactionError: the spec cannot place its files in Silver partitions.
        """
        found = self._positions.get(spec_id)
        if found is not None:
            return found
        specs = self._bronze.specs()
        layout = self._layout
        spec = specs.get(spec_id)
        sig = _spec_signature(spec, self._bronze.schema()) if spec is not None else []
        key_pos = None
        if layout.key_column is not None:
            key_pos = next(
                (i for i, (c, t) in enumerate(sig) if (c, t) == (layout.key_column, "identity")),
                None,
            )
        time = [
            (i, _TIME_RATIO[(t, layout.time_unit)])
            for i, (c, t) in enumerate(sig)
            if c == "ts_event" and (t, layout.time_unit) in _TIME_RATIO
        ]
        if (layout.key_column is not None and key_pos is None) or not time:
            want = [f"{layout.time_unit}(ts_event)"]
            if layout.time_unit == "day":
                want = ["hour(ts_event) or day(ts_event)"]
            if layout.key_column is not None:
                want.insert(0, f"identity({layout.key_column})")
            raise CompactionError(
                f"{table_name(self._bronze)} partition spec {spec_id} is {_describe(sig)}: "
                f"Silver compaction needs {' and '.join(want)} in it to place Bronze files in "
                "Silver's partitions"
            )
        time_pos, ratio = min(time, key=lambda tr: tr[1])  # the finest: hour before day
        self._positions[spec_id] = (key_pos, time_pos, ratio)
        return self._positions[spec_id]

    def pid(self, spec_id: int, partition: Record) -> tuple[Any, ...]:
        """The Silver partition tuple of a Bronze partition of spec `spec_id`."""
        key_pos, time_pos, ratio = self.check(spec_id)
        values: list[Any] = [None] * self._width
        bucket = partition[time_pos]
        values[self._layout.time_pos] = bucket if ratio == 1 else int(bucket) // ratio
        if self._layout.key_pos is not None:
            assert key_pos is not None
            values[self._layout.key_pos] = partition[key_pos]
        return tuple(values)

    def of_file(self, data_file: DataFile) -> tuple[Any, ...]:
        """The Silver partition tuple a Bronze data or delete file belongs to."""
        return self.pid(data_file.spec_id, data_file.partition)


@dataclass
class Partition:
    """One partition: its Bronze files (at the pinned snapshot) and current Silver files."""

    record: Record
    bronze: list[DataFile] = field(default_factory=list)
    deletes: dict[str, DataFile] = field(default_factory=dict)
    silver: list[DataFile] = field(default_factory=list)
    #: Fingerprint of the Bronze file set (set by `split_changed`).
    digest: str = ""

    @property
    def pid(self) -> tuple[Any, ...]:
        """The partition tuple as a hashable key."""
        return partition_values(self.record)

    @property
    def bronze_rows(self) -> int:
        """Bronze rows according to the file metadata (before deletes)."""
        return sum(f.record_count for f in self.bronze)


def plan_partitions(
    bronze: Table,
    silver: Table,
    snap: Snapshot,
    row_filter: BooleanExpression,
    *,
    include_silver_only: bool,
    layout: Layout | None = None,
) -> dict[tuple[Any, ...], Partition]:
    """Bronze files of `snap` and current Silver files, grouped by Silver partition (metadata).

    Bronze files are placed in Silver's partitions by `PartitionMap`, so a Bronze table whose
    partition spec gained a field (or holds files of several specs) plans like any other.

    Args:
        bronze: the Bronze table.
        silver: its Silver table.
        snap: the pinned Bronze snapshot.
        row_filter: which partitions to consider.
        include_silver_only: also return partitions only Silver has (Bronze emptied them);
            only meaningful when `snap` is Bronze's current snapshot.
        layout: Silver's layout (default: `layout_of(bronze, silver)`).

    Raises:
        CompactionError: Bronze has files Silver's partitions cannot take, or Silver has files
            of another partition spec than its current one.
    """
    layout = layout or layout_of(bronze, silver)
    to_silver = PartitionMap(bronze, layout)
    parts: dict[tuple[Any, ...], Partition] = {}
    with catalog_errors(f"planning {table_name(bronze)}"):
        tasks = list(bronze.scan(snapshot_id=snap.snapshot_id, row_filter=row_filter).plan_files())
    for task in tasks:
        f = task.file
        pid = to_silver.of_file(f)
        p = parts.setdefault(pid, Partition(Record(*pid)))
        p.bronze.append(f)
        for d in task.delete_files:
            p.deletes[d.file_path] = d
    if silver.current_snapshot() is not None:
        silver_spec = silver.spec().spec_id
        with catalog_errors(f"planning {table_name(silver)}"):
            silver_tasks = list(silver.scan(row_filter=row_filter).plan_files())
        for task in silver_tasks:
            if task.file.spec_id != silver_spec:
                raise CompactionError(
                    f"{table_name(silver)} has files of an older partition spec "
                    f"({task.file.spec_id}); Silver compaction supports one Silver spec"
                )
            key = partition_values(task.file.partition)
            if key not in parts:
                if not include_silver_only:
                    continue
                parts[key] = Partition(task.file.partition)
            parts[key].silver.append(task.file)
    return dict(sorted(parts.items(), key=lambda kv: str(kv[0])))


def split_changed(
    history: BronzeHistory, snap: Snapshot, parts: dict[tuple[Any, ...], Partition]
) -> tuple[list[Partition], int]:
    """The partitions that need compacting, and how many are unchanged.

    A partition is unchanged when its Silver files record the same Bronze file set, or a
    source snapshot whose rows in the partition are the same (only file rewrites since).
    Sets each partition's `digest`.

    Args:
        history: Bronze's history, keyed by Silver partition (`PartitionMap.of_file`).
        snap: the pinned Bronze snapshot.
        parts: the planned Silver partitions.
    """
    todo: list[Partition] = []
    unchanged = 0
    for part in parts.values():
        part.digest = fingerprint([f.file_path for f in part.bronze] + list(part.deletes))
        state = parse_state(f.file_path for f in part.silver) if part.silver else None
        if (
            state is not None
            and part.bronze
            and (
                state.fingerprint == part.digest
                or history.rows_unchanged(state.source_snapshot_id, snap.snapshot_id, part.pid)
            )
        ):
            unchanged += 1
        else:
            todo.append(part)
    return todo, unchanged


def query_groups(
    parts: list[Partition], rows_per_query: int, workers: int
) -> list[list[Partition]]:
    """Batches of partitions read by one DuckDB query each (about `rows_per_query` rows).

    Partitions with delete files go alone through DuckDB's Iceberg reader; emptied
    partitions (no Bronze files) need no query.
    """
    groups: list[list[Partition]] = []
    current: list[Partition] = []
    rows = 0
    # Two queries per worker keep every worker busy to the end (one sorts while another
    # writes), but never more rows per query than the memory bound.
    total = sum(p.bronze_rows for p in parts)
    limit = min(rows_per_query, max(1, -(-total // (2 * workers))))
    for part in parts:
        if not part.bronze or part.deletes:
            groups.append([part])
            continue
        current.append(part)
        rows += part.bronze_rows
        if rows >= limit:
            groups.append(current)
            current, rows = [], 0
    if current:
        groups.append(current)
    return groups


def cover(layout: Layout, records: Sequence[Record]) -> BooleanExpression:
    """A small row filter matching exactly the given partitions.

    Adjacent time buckets of one key merge into one range; the ranges are ORed as a balanced
    tree, so the expression depth grows with log(n), not n (a chain of hundreds of nested ORs
    would exceed Python's recursion limit in pyiceberg).
    """
    by_key: dict[Any, list[int]] = {}
    for r in records:
        key, bucket = layout.bucket_key(r)
        by_key.setdefault(key, []).append(bucket)
    ranges: list[BooleanExpression] = []
    for key in sorted(by_key, key=str):
        buckets = sorted(set(by_key[key]))
        start = prev = buckets[0]
        for b in [*buckets[1:], None]:
            if b is not None and b == prev + 1:
                prev = b
                continue
            ranges.append(layout.range_predicate(key, start, prev + 1))
            if b is not None:
                start = prev = b
    return _balanced_or(ranges) if ranges else AlwaysFalse()


def _balanced_or(exprs: Sequence[BooleanExpression]) -> BooleanExpression:
    if len(exprs) == 1:
        return exprs[0]
    mid = len(exprs) // 2
    return Or(_balanced_or(exprs[:mid]), _balanced_or(exprs[mid:]))


def group_by_day(
    parts: dict[tuple[Any, ...], Partition], layout: Layout
) -> dict[str, dict[tuple[Any, ...], Partition]]:
    """Partitions grouped by the UTC day of their time bucket, days in order."""
    groups: dict[str, dict[tuple[Any, ...], Partition]] = {}
    for key, part in parts.items():
        _, lo, _ = layout.bounds(part.record)
        groups.setdefault(lo.date().isoformat(), {})[key] = part
    return dict(sorted(groups.items()))
