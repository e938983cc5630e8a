"""Silver compaction: deterministic DuckDB dedup of pinned Bronze snapshots into Silver tables.

For each Bronze partition (partition value, hour; greeks: day) the compactor reads the Parquet
files of a pinned Bronze snapshot with DuckDB, removes duplicate events (see
`iceberg_lake.silver.dedup` for the event identity and the survivor rule), sorts by event time
and streams the result into new Silver data files. All replaced partitions of a run are swapped in
ONE Iceberg `overwrite` snapshot, so every Silver snapshot holds every partition complete.

Idempotent: a partition whose Bronze content is unchanged since the source snapshot of its last
compaction is skipped without reading data (see `iceberg_lake.silver.state`); a run that
changes nothing makes no commit.

Example::

    compactor = SilverCompactor(load_settings())
    compactor.compact_date("2025-12-16", schema="futures.trades", partition_value="ES")
    compactor.compact_incremental()          # every few minutes: only what Bronze changed
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
    Or,
)
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.typedef import Record

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.config import Settings
from iceberg_lake.engine import duck
from iceberg_lake.exceptions import CommitConflictError, CompactionError, UnknownTableError
from iceberg_lake.silver.dedup import (
    BUCKET_COLUMN,
    AdjacentDedup,
    dedup_query,
    duck_type,
    quote_ident,
    quote_str,
)
from iceberg_lake.silver.state import (
    BronzeHistory,
    PartitionId,
    file_prefix,
    fingerprint,
    parse_state,
)
from iceberg_lake.silver.writer import PartitionFileWriter
from iceberg_lake.tables import BRONZE, SILVER, TableDefinition

log = logging.getLogger(__name__)

__all__ = ["SilverCompactor", "resolve_bronze_table", "silver_source_snapshots"]

#: `Progress(table, partitions_done, partitions_total)`, called after each partition.
Progress = Callable[[str, int, int], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def resolve_bronze_table(lake: LakeCatalog, schema: str) -> TableDefinition:
    """The Bronze definition named by a spec schema name or a table name.

    Accepts `futures.trades` (the spec's schema name), `futures_trades`, `bronze.futures_trades`
    and `silver.futures_trades`.

    Raises:
        UnknownTableError: nothing matches, or the table has no Silver counterpart.
    """
    reg = lake.registry
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


def _parse_date(value: str | date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise CompactionError(f"invalid date {value!r} (expected YYYY-MM-DD)") from None


def _local_path(uri: str) -> str:
    """A path DuckDB can open: `file:` URIs become local paths, `s3a://` becomes `s3://`."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "s3a":
        return "s3://" + uri[len("s3a://") :]
    return uri


@dataclass(frozen=True)
class _Layout:
    """Where the partition key and the time bucket sit in a (shared) partition spec."""

    key_column: str | None
    key_pos: int | None
    time_pos: int
    time_unit: str  # "hour" or "day"

    def bounds(self, record: Record) -> tuple[Any, datetime, datetime]:
        value = record[self.key_pos] if self.key_pos is not None else None
        bucket = int(record[self.time_pos])
        step = timedelta(hours=1) if self.time_unit == "hour" else timedelta(days=1)
        lo = _EPOCH + bucket * step
        return value, lo, lo + step

    def bucket_key(self, record: Record) -> tuple[Any, int]:
        """`(key value, time bucket)` as the grouped dedup query reports it."""
        value = record[self.key_pos] if self.key_pos is not None else None
        return value, int(record[self.time_pos])

    def label(self, record: Record) -> list[Any]:
        value, lo, _ = self.bounds(record)
        fmt = "%Y-%m-%dT%H" if self.time_unit == "hour" else "%Y-%m-%d"
        return [value, lo.strftime(fmt)]

    def range_predicate(self, key: Any, first: int, end: int) -> BooleanExpression:
        """Rows of partition value `key` in time buckets `first` .. `end - 1`."""
        step = timedelta(hours=1) if self.time_unit == "hour" else timedelta(days=1)
        lo, hi = _EPOCH + first * step, _EPOCH + end * step
        expr: BooleanExpression = And(
            GreaterThanOrEqual("ts_event", lo.isoformat()), LessThan("ts_event", hi.isoformat())
        )
        if self.key_column is not None:
            expr = And(EqualTo(self.key_column, key), expr)
        return expr

    def sql_filter(self, record: Record) -> str:
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


def _layout(bronze: Table, silver: Table) -> _Layout:
    b_sig = _spec_signature(bronze.spec(), bronze.schema())
    s_sig = _spec_signature(silver.spec(), silver.schema())
    if b_sig != s_sig:
        raise CompactionError(
            f"{_name(silver)} is partitioned as {s_sig} but {_name(bronze)} as {b_sig}; "
            "Silver compaction needs the same partition spec"
        )
    key_pos = next((i for i, (_, t) in enumerate(b_sig) if t == "identity"), None)
    time_pos = next((i for i, (_, t) in enumerate(b_sig) if t in ("hour", "day")), None)
    if time_pos is None or b_sig[time_pos][0] != "ts_event" or len(b_sig) > 2:
        raise CompactionError(f"{_name(bronze)} must be partitioned by [key,] hour/day(ts_event)")
    return _Layout(
        key_column=b_sig[key_pos][0] if key_pos is not None else None,
        key_pos=key_pos,
        time_pos=time_pos,
        time_unit=b_sig[time_pos][1],
    )


@dataclass
class _Partition:
    record: Record
    bronze: list[DataFile] = field(default_factory=list)
    deletes: dict[str, DataFile] = field(default_factory=dict)
    silver: list[DataFile] = field(default_factory=list)
    digest: str = ""

    @property
    def pid(self) -> tuple[Any, ...]:
        return tuple(self.record)


@dataclass
class _Totals:
    rows_read: int = 0
    rows_written: int = 0
    bytes_read: int = 0
    replaced: list[list[Any]] = field(default_factory=list)
    unchanged: int = 0


class SilverCompactor:
    """Compacts Bronze tables into their Silver counterparts.

    Every public method is idempotent: partitions whose Bronze content is unchanged since their
    last compaction are skipped, and a run with nothing to do makes no commit. A run that replaces
    partitions makes exactly one Silver snapshot (operation `overwrite`) per table and call, or
    one per `partitions_per_commit` partitions, whose summary carries `lake.operation`,
    `lake.source-table`, `lake.source-snapshot-id` and `lake.replaced-partitions`.

    Args:
        settings: lake settings, or an open `LakeCatalog`.
        progress: called after each partition with (table, done, total), e.g. for a progress bar.
        partitions_per_commit: bound on the partitions replaced by one snapshot.
        batch_rows: rows per Arrow record batch streamed from DuckDB.
        rows_per_query: Bronze rows (from metadata) one DuckDB query may read; partitions are
            batched up to this bound (a larger partition goes alone), which bounds memory.
        workers: DuckDB queries running at once (each streams into its own files).
        max_attempts: how often a run that lost a commit race is re-planned and retried.
    """

    def __init__(
        self,
        settings: Settings | LakeCatalog,
        *,
        progress: Progress | None = None,
        partitions_per_commit: int = 500,
        batch_rows: int = 250_000,
        rows_per_query: int = 2_000_000,
        workers: int = 2,
        max_attempts: int = 4,
    ) -> None:
        self.lake = settings if isinstance(settings, LakeCatalog) else LakeCatalog(settings)
        self.progress = progress
        self.partitions_per_commit = max(1, partitions_per_commit)
        self.batch_rows = batch_rows
        self.rows_per_query = max(1, rows_per_query)
        self.workers = max(1, workers)
        self.max_attempts = max(1, max_attempts)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._existing: set[str] | None = None
        self._lock = threading.Lock()
        self._iceberg_loaded = False

    # ---- public API -----------------------------------------------------------------------------

    def compact_date(
        self,
        date: str | date,
        schema: str | None = None,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> dict[str, Any]:
        """Compact one UTC day of one schema (or of all schemas when `schema` is None).

        Args:
            date: the day, `YYYY-MM-DD`.
            schema: `futures.trades`, `futures_trades` or `bronze.futures_trades`; None = all.
            partition_value: only this symbol/underlying.
            snapshot_id: pin this Bronze snapshot instead of the current one.
            tag: pin the Bronze snapshot of this tag (or branch).

        Returns:
            The result: status (`success`, `unchanged` or `empty`), rows_read, rows_written,
            duplicates_removed, source_snapshot_id, silver_snapshot_id, partitions (replaced),
            partitions_unchanged, replaced_partitions, table, date, seconds. With `schema=None`
            the counts are summed and `tables` holds the per-table results.
        """
        day = _parse_date(date)
        if schema is None:
            return _merge(self.compact_all_schemas(day, partition_value, snapshot_id, tag), day)
        definition = resolve_bronze_table(self.lake, schema)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        window = And(
            GreaterThanOrEqual("ts_event", start.isoformat()),
            LessThan("ts_event", (start + timedelta(days=1)).isoformat()),
        )
        results = self._compact(definition, window, partition_value, snapshot_id, tag, by_day=False)
        result = results[0] if results else self._empty(definition, None)
        result["date"] = day.isoformat()
        return result

    def compact_all_schemas(
        self,
        date: str | date,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> list[dict[str, Any]]:
        """Compact one day of every Silver table; one result per table (see `compact_date`).

        A `tag` applies to every Bronze table (each must have it); a `snapshot_id` belongs to
        one table, so it is refused here (CompactionError).
        """
        day = _parse_date(date)
        if snapshot_id is not None:
            raise CompactionError("a snapshot id belongs to one Bronze table: name the table")
        results = []
        for d in self._bronze_definitions():
            if not self._exists(d):
                results.append(
                    {**self._empty(d, None), "status": "missing", "date": day.isoformat()}
                )
                continue
            results.append(self.compact_date(day, d.identifier, partition_value, snapshot_id, tag))
        return results

    def compact_all_dates(
        self,
        schema: str,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> list[dict[str, Any]]:
        """Compact every day of one schema; one result per day that has Bronze data.

        Bronze metadata is planned once; each day is committed as its own snapshot.
        """
        definition = resolve_bronze_table(self.lake, schema)
        return self._compact(
            definition, AlwaysTrue(), partition_value, snapshot_id, tag, by_day=True
        )

    def compact_incremental(self, tables: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Compact every partition Bronze changed since the previous incremental run.

        The Bronze snapshot the previous run reached is kept in the Silver table property
        `lake.silver.incremental-source-snapshot-id`; the changed partitions are read from the
        manifests of the Bronze snapshots after it (file rewrites ignored). With no usable
        mark (first run, or that snapshot was expired) every partition is checked from metadata.
        Cheap when nothing changed: two metadata loads per table, no commit.

        Args:
            tables: schemas or table names to consider (default: every Silver table).

        Returns:
            One result per table (see `compact_date`), with `date` None.
        """
        if tables:
            return [self._incremental(resolve_bronze_table(self.lake, t)) for t in tables]
        return [
            self._incremental(d)
            if self._exists(d)
            else {**self._empty(d, None), "status": "missing"}
            for d in self._bronze_definitions()
        ]

    def close(self) -> None:
        """Close the DuckDB connection."""
        if self._con is not None:
            self._con.close()
            self._con = None
            self._iceberg_loaded = False

    def __enter__(self) -> SilverCompactor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- orchestration --------------------------------------------------------------------------

    def _bronze_definitions(self) -> list[TableDefinition]:
        return [
            d
            for d in self.lake.registry.in_namespace(BRONZE)
            if d.subject and f"{SILVER}.{d.name}" in self.lake.registry and d.dedup_columns
        ]

    def _exists(self, definition: TableDefinition) -> bool:
        """Both tables are in the catalog (listing all-schema runs skip missing ones)."""
        if self._existing is None:
            self._existing = set(self.lake.existing_tables())
        return {definition.identifier, f"{SILVER}.{definition.name}"} <= self._existing

    def _tables(self, definition: TableDefinition) -> tuple[Table, Table]:
        return (
            self.lake.load_table(definition.identifier),
            self.lake.load_table(f"{SILVER}.{definition.name}"),
        )

    @staticmethod
    def _pin(bronze: Table, snapshot_id: int | None, tag: str | None) -> Snapshot | None:
        if snapshot_id is not None and tag is not None:
            raise CompactionError("give a snapshot id or a tag, not both")
        if snapshot_id is not None:
            snap = bronze.snapshot_by_id(int(snapshot_id))
            if snap is None:
                raise CompactionError(f"{_name(bronze)} has no snapshot {snapshot_id}")
            return snap
        if tag is not None:
            snap = bronze.snapshot_by_name(tag)
            if snap is None:
                raise CompactionError(f"{_name(bronze)} has no tag or branch '{tag}'")
            return snap
        return bronze.current_snapshot()

    def _empty(self, definition: TableDefinition, snap: Snapshot | None) -> dict[str, Any]:
        return _result("empty", definition, snap, None, _Totals(), 0.0)

    def _compact(
        self,
        definition: TableDefinition,
        window: BooleanExpression,
        partition_value: str | None,
        snapshot_id: int | None,
        tag: str | None,
        *,
        by_day: bool,
    ) -> list[dict[str, Any]]:
        """Plan, compact and commit; one result per day (`by_day`) or one for everything."""
        for attempt in range(1, self.max_attempts + 1):
            bronze, silver = self._tables(definition)
            snap = self._pin(bronze, snapshot_id, tag)
            if snap is None:
                return [self._empty(definition, None)]
            layout = _layout(bronze, silver)
            row_filter = window
            if partition_value is not None:
                if layout.key_column is None:
                    raise CompactionError(f"{definition.identifier} has no partition key")
                row_filter = And(EqualTo(layout.key_column, partition_value), window)
            is_current = snap.snapshot_id == _current_id(bronze)
            parts = self._plan(bronze, silver, snap, row_filter, include_silver_only=is_current)
            if not parts:
                return [self._empty(definition, snap)]
            groups = _group_by_day(parts, layout) if by_day else {None: parts}
            try:
                results = []
                for day, group in groups.items():
                    res = self._run(definition, bronze, silver, snap, layout, group, {})
                    res["date"] = day
                    results.append(res)
                return results
            except CommitConflictError:
                if attempt == self.max_attempts:
                    raise
                log.warning(
                    "%s: concurrent commit, re-planning (attempt %d)", _name(silver), attempt
                )
        raise AssertionError("unreachable")

    def _incremental(self, definition: TableDefinition) -> dict[str, Any]:
        for attempt in range(1, self.max_attempts + 1):
            bronze, silver = self._tables(definition)
            snap = bronze.current_snapshot()
            if snap is None:
                return self._empty(definition, None)
            mark = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
            marks = {P.SILVER_INCREMENTAL_SOURCE: str(snap.snapshot_id)}
            if mark == str(snap.snapshot_id):
                return _result("unchanged", definition, snap, None, _Totals(), 0.0)
            layout = _layout(bronze, silver)
            changed = (
                BronzeHistory(bronze).changed_since(int(mark), snap.snapshot_id)
                if mark and mark.isdigit()
                else None
            )
            if changed is None:
                row_filter: BooleanExpression = AlwaysTrue()
                log.info("%s: no usable incremental mark, checking every partition", _name(silver))
            elif not changed:
                self._set_mark(silver, marks)
                return _result("unchanged", definition, snap, None, _Totals(), 0.0)
            else:
                row_filter = _cover(layout, [Record(*pid[1]) for pid in changed])
            parts = self._plan(bronze, silver, snap, row_filter, include_silver_only=True)
            if changed is not None:
                wanted = {pid[1] for pid in changed}
                parts = {k: v for k, v in parts.items() if k in wanted}
            try:
                res = self._run(definition, bronze, silver, snap, layout, parts, marks)
            except CommitConflictError:
                if attempt == self.max_attempts:
                    raise
                continue
            if res["silver_snapshot_id"] is None:
                self._set_mark(silver, marks)
            res["date"] = None
            return res
        raise AssertionError("unreachable")

    @staticmethod
    def _set_mark(silver: Table, marks: dict[str, str]) -> None:
        """Advance the incremental mark without a snapshot (best effort: next run redoes it)."""
        from pyiceberg.exceptions import CommitFailedException

        try:
            with catalog_errors(f"updating {_name(silver)}"):
                with silver.transaction() as tx:
                    tx.set_properties(marks)
        except CommitFailedException:
            silver.refresh()

    def _plan(
        self,
        bronze: Table,
        silver: Table,
        snap: Snapshot,
        row_filter: BooleanExpression,
        *,
        include_silver_only: bool,
    ) -> dict[tuple[Any, ...], _Partition]:
        """Bronze files of `snap` and current Silver files, grouped by partition (metadata only)."""
        parts: dict[tuple[Any, ...], _Partition] = {}
        spec_id = bronze.spec().spec_id
        with catalog_errors(f"planning {_name(bronze)}"):
            tasks = list(
                bronze.scan(snapshot_id=snap.snapshot_id, row_filter=row_filter).plan_files()
            )
        for task in tasks:
            f = task.file
            if f.spec_id != spec_id:
                raise CompactionError(
                    f"{_name(bronze)} has files of an older partition spec ({f.spec_id}); "
                    "Silver compaction supports one spec"
                )
            p = parts.setdefault(tuple(f.partition), _Partition(Record(*f.partition)))
            p.bronze.append(f)
            for d in task.delete_files:
                p.deletes[d.file_path] = d
        if silver.current_snapshot() is not None:
            with catalog_errors(f"planning {_name(silver)}"):
                silver_tasks = list(silver.scan(row_filter=row_filter).plan_files())
            for task in silver_tasks:
                key = tuple(task.file.partition)
                if key not in parts:
                    if not include_silver_only:
                        continue
                    parts[key] = _Partition(Record(*task.file.partition))
                parts[key].silver.append(task.file)
        return dict(sorted(parts.items(), key=lambda kv: str(kv[0])))

    def _run(
        self,
        definition: TableDefinition,
        bronze: Table,
        silver: Table,
        snap: Snapshot,
        layout: _Layout,
        parts: dict[tuple[Any, ...], _Partition],
        table_properties: dict[str, str],
    ) -> dict[str, Any]:
        """Compact the partitions that changed and commit them; return the result."""
        from iceberg_lake.engine.iceberg import PartitionReplacement

        started = time.perf_counter()
        history = BronzeHistory(bronze)
        totals = _Totals()
        spec_id = bronze.spec().spec_id
        sid = snap.snapshot_id
        todo: list[_Partition] = []
        for part in parts.values():
            part.digest = fingerprint([f.file_path for f in part.bronze] + list(part.deletes))
            state = parse_state(f.file_path for f in part.silver) if part.silver else None
            pid: PartitionId = (spec_id, part.pid)
            if (
                state is not None
                and part.bronze
                and (
                    state.fingerprint == part.digest
                    or history.rows_unchanged(state.source_snapshot_id, sid, pid)
                )
            ):
                totals.unchanged += 1
            else:
                todo.append(part)
        done, total = totals.unchanged, len(parts)
        self._report(silver, done, total)
        job = _Job(self, definition, bronze, silver, snap, layout, uuid.uuid4().hex[:12])
        snapshot_ids: list[int] = []
        chunks = [
            todo[i : i + self.partitions_per_commit]
            for i in range(0, len(todo), self.partitions_per_commit)
        ]
        for n, chunk in enumerate(chunks, start=1):
            rep = PartitionReplacement(silver, {})
            try:
                with ThreadPoolExecutor(max_workers=self.workers) as pool:
                    for outputs in pool.map(job.compact_group, self._groups(chunk, bronze)):
                        for out in outputs:
                            # Files only; the predicate covering the whole chunk is set below.
                            rep.replace_files(AlwaysFalse(), out.files, out.part.silver)
                            totals.rows_read += out.rows_read
                            totals.rows_written += out.rows_written
                            totals.bytes_read += out.bytes_read
                            totals.replaced.append(layout.label(out.part.record))
                        done += len(outputs)
                        self._report(silver, done, total)
            except BaseException:
                rep.discard_new_files()
                raise
            # One compact predicate (ranges of adjacent hours, balanced ORs): a chain of
            # hundreds of nested ORs would exceed Python's recursion limit in pyiceberg.
            rep.predicate = _cover(layout, [p.record for p in chunk])
            marks = table_properties if n == len(chunks) else {}
            snapshot_ids.append(self._commit(rep, definition, snap, layout, marks))
        status = "success" if totals.replaced else "unchanged"
        silver_id = snapshot_ids[-1] if snapshot_ids else None
        return _result(status, definition, snap, silver_id, totals, time.perf_counter() - started)

    def _report(self, silver: Table, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(_name(silver), done, total)

    def _groups(self, parts: list[_Partition], bronze: Table) -> list[list[_Partition]]:
        """Batches of partitions read by one DuckDB query each (about `rows_per_query` rows).

        Partitions with delete files go alone through DuckDB's Iceberg reader; emptied
        partitions (no Bronze files) need no query.
        """
        groups: list[list[_Partition]] = []
        current: list[_Partition] = []
        rows = 0
        # Two queries per worker keep every worker busy to the end (one sorts while another
        # writes), but never more rows per query than the memory bound.
        total = sum(f.record_count for p in parts for f in p.bronze)
        limit = min(self.rows_per_query, max(1, -(-total // (2 * self.workers))))
        for part in parts:
            if not part.bronze or part.deletes:
                groups.append([part])
                continue
            current.append(part)
            rows += sum(f.record_count for f in part.bronze)
            if rows >= limit:
                groups.append(current)
                current, rows = [], 0
        if current:
            groups.append(current)
        return groups

    @staticmethod
    def _commit(
        rep: Any,
        definition: TableDefinition,
        snap: Snapshot,
        layout: _Layout,
        table_properties: dict[str, str],
    ) -> int:
        labels = []
        for f in rep.old_files + rep.new_files:
            label = layout.label(f.partition)
            if label not in labels:
                labels.append(label)
        rep.snapshot_properties = {
            P.LAKE_OPERATION: P.SILVER_COMPACTION,
            P.SOURCE_TABLE: definition.identifier,
            P.SOURCE_SNAPSHOT_ID: str(snap.snapshot_id),
            P.REPLACED_PARTITIONS: json.dumps(sorted(labels, key=str), default=str),
        }
        rep.table_properties = dict(table_properties)
        try:
            with catalog_errors(f"committing {_name(rep.table)}"):
                snapshot_id = rep.commit()
        except Exception:
            rep.discard_new_files()
            raise
        assert snapshot_id is not None
        log.info(
            "%s: committed %d partitions as snapshot %s", _name(rep.table), len(labels), snapshot_id
        )
        return int(snapshot_id)

    # ---- one partition ---------------------------------------------------------------------

    def _duck(self, iceberg: bool = False) -> duckdb.DuckDBPyConnection:
        """The shared DuckDB database (workers take cursors of it).

        Plain Parquet reads need no extension (httpfs for S3); the Iceberg reader, needed only
        for partitions with delete files, is loaded on first use: loading it
        costs a few hundred milliseconds that most runs do not need.
        """
        with self._lock:
            if self._con is None:
                s = self.lake.settings
                s3 = s.is_s3 or bool(s.s3_endpoint)
                con = duck.connect(extensions=("httpfs",) if s3 else ())
                if s3:
                    duck.configure_s3(
                        con,
                        s.s3_endpoint or "https://s3.amazonaws.com",
                        s.s3_access_key or "",
                        s.s3_secret_key or "",
                        s.s3_region,
                    )
                self._con = con
            if iceberg and not self._iceberg_loaded:
                extra = duck.connect(extensions=("avro", "iceberg"))  # installs from the wheels
                extra.close()
                self._con.execute("LOAD avro")
                self._con.execute("LOAD iceberg")
                self._iceberg_loaded = True
            return self._con


@dataclass
class _Output:
    part: _Partition
    files: list[DataFile]
    rows_read: int
    rows_written: int
    bytes_read: int


@dataclass
class _Job:
    """What every DuckDB query of one run shares (runs in worker threads)."""

    compactor: SilverCompactor
    definition: TableDefinition
    bronze: Table
    silver: Table
    snap: Snapshot
    layout: _Layout
    write_id: str

    def compact_group(self, group: list[_Partition]) -> list[_Output]:
        """Dedup + sort the partitions of `group` with one query; stream them into new files."""
        if len(group) == 1 and not group[0].bronze:
            return [_Output(group[0], [], 0, 0, 0)]  # Bronze partition gone: empty it in Silver
        bronze, layout = self.bronze, self.layout
        needs_iceberg = bool(group[0].deletes)
        con = self.compactor._duck(needs_iceberg).cursor()  # one cursor per thread
        try:
            con.execute("SET TimeZone = 'UTC'")
            counts = {p.pid: sum(f.record_count for f in p.bronze) for p in group}
            if needs_iceberg:
                # Delete files: DuckDB's Iceberg reader applies them.
                part = group[0]
                source = (
                    f"(SELECT * FROM iceberg_scan({quote_str(bronze.metadata_location)}, "
                    f"snapshot_from_id={self.snap.snapshot_id}) "
                    f"WHERE {layout.sql_filter(part.record)})"
                )
                row = con.execute(f"SELECT count(*) FROM {source}").fetchone()
                counts[part.pid] = int(row[0]) if row else 0
            else:
                files = ", ".join(
                    quote_str(_local_path(f.file_path)) for p in group for f in p.bronze
                )
                source = f"read_parquet([{files}]{_field_id_schema(bronze)})"
            sql = dedup_query(
                source,
                self.silver.schema(),
                self.definition.dedup_columns,
                set(bronze.schema().column_names),
                partitioned_by=(layout.key_column, layout.time_unit),
            )
            by_bucket = {layout.bucket_key(p.record): p for p in group}
            writers: dict[tuple[Any, ...], PartitionFileWriter] = {}
            what = f"compacting {_name(bronze)}"
            with catalog_errors(what):
                try:
                    reader = con.execute(sql).to_arrow_reader(self.compactor.batch_rows)
                    dedup = AdjacentDedup(self.silver.schema(), self.definition.dedup_columns)
                    for batch in reader:
                        for bucket_key, rows in _segments(dedup.apply(batch), layout.key_column):
                            part = by_bucket.get(bucket_key)
                            if part is None:
                                raise CompactionError(
                                    f"{_name(bronze)}: row outside the planned partitions "
                                    f"({bucket_key})"
                                )
                            if part.pid not in writers:
                                prefix = file_prefix(
                                    self.snap.snapshot_id, part.digest, self.write_id
                                )
                                writers[part.pid] = PartitionFileWriter(
                                    self.silver, part.record, prefix
                                )
                            writers[part.pid].write(rows)
                except duckdb.Error as exc:
                    raise CompactionError(f"{what}: DuckDB failed: {exc}") from exc
        finally:
            con.close()
        outputs = []
        for p in group:
            writer = writers.get(p.pid)
            files = writer.close() if writer else []
            written = writer.rows if writer else 0
            nbytes = sum(f.file_size_in_bytes for f in p.bronze)
            outputs.append(_Output(p, files, counts[p.pid], written, nbytes))
        return outputs


def _segments(rows: pa.Table, key_column: str | None) -> Iterable[tuple[Any, pa.Table]]:
    """Split rows ordered by (key, ts_event_ns) into runs of one partition each.

    Yields `((key, bucket), rows without the bucket column)`; the slices are zero-copy.
    """
    n = rows.num_rows
    if n == 0:
        return
    bucket = rows.column(BUCKET_COLUMN)
    data = rows.drop_columns([BUCKET_COLUMN])
    change = pc.not_equal(bucket.slice(1), bucket.slice(0, n - 1))
    key = rows.column(key_column) if key_column else None
    if key is not None:
        change = pc.or_(change, pc.not_equal(key.slice(1), key.slice(0, n - 1)))
    cuts = (np.flatnonzero(change.to_numpy()) + 1).tolist()
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        k = key[lo].as_py() if key is not None else None
        yield (k, bucket[lo].as_py()), data.slice(lo, hi - lo)


def _field_id_schema(table: Table) -> str:
    """`read_parquet` option that reads columns by Iceberg field id (after schema evolution).

    Files written before a column was added lack it (read as NULL); files written before a
    rename carry the old name; a promoted type is cast. Empty when the table never evolved.
    """
    if len(table.metadata.schemas) <= 1:
        return ""
    fields = ", ".join(
        f"{f.field_id}: {{name: {quote_str(f.name)}, type: {quote_str(duck_type(f.field_type))}, "
        "default_value: NULL}"
        for f in table.schema().fields
    )
    return f", schema = MAP {{{fields}}}"


def _name(table: Table) -> str:
    """`namespace.table` (pyiceberg's `Table.name()` is a tuple)."""
    return ".".join(table.name())


def _current_id(table: Table) -> int | None:
    snap = table.current_snapshot()
    return snap.snapshot_id if snap else None


def _cover(layout: _Layout, records: Sequence[Record]) -> BooleanExpression:
    """A small row filter matching exactly the given partitions.

    Adjacent time buckets of one key merge into one range; the ranges are ORed as a balanced
    tree, so the expression depth grows with log(n), not n.
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


def _group_by_day(
    parts: dict[tuple[Any, ...], _Partition], layout: _Layout
) -> dict[str, dict[tuple[Any, ...], _Partition]]:
    groups: dict[str, dict[tuple[Any, ...], _Partition]] = {}
    for key, part in parts.items():
        _, lo, _ = layout.bounds(part.record)
        groups.setdefault(lo.date().isoformat(), {})[key] = part
    return dict(sorted(groups.items()))


def _result(
    status: str,
    definition: TableDefinition,
    snap: Snapshot | None,
    silver_snapshot_id: int | None,
    totals: _Totals,
    seconds: float,
) -> dict[str, Any]:
    return {
        "status": status,
        "table": f"{SILVER}.{definition.name}",
        "date": None,
        "rows_read": totals.rows_read,
        "rows_written": totals.rows_written,
        "duplicates_removed": totals.rows_read - totals.rows_written,
        "source_snapshot_id": snap.snapshot_id if snap else None,
        "silver_snapshot_id": silver_snapshot_id,
        "partitions": len(totals.replaced),
        "partitions_unchanged": totals.unchanged,
        "replaced_partitions": totals.replaced,
        "bytes_read": totals.bytes_read,
        "seconds": round(seconds, 3),
    }


def _merge(results: list[dict[str, Any]], day: date) -> dict[str, Any]:
    summed = {
        k: sum(r[k] for r in results)
        for k in (
            "rows_read",
            "rows_written",
            "duplicates_removed",
            "partitions",
            "partitions_unchanged",
            "bytes_read",
            "seconds",
        )
    }
    statuses = {r["status"] for r in results}
    status = (
        "success"
        if "success" in statuses
        else ("unchanged" if "unchanged" in statuses else "empty")
    )
    return {
        "status": status,
        "table": None,
        "date": day.isoformat(),
        **summed,
        "source_snapshot_id": None,
        "silver_snapshot_id": None,
        "replaced_partitions": [p for r in results for p in r["replaced_partitions"]],
        "tables": results,
    }


def silver_source_snapshots(settings: Settings | LakeCatalog) -> dict[str, set[int]]:
    """Bronze snapshots that current Silver partitions (and incremental marks) still name.

    Change detection works without them (it falls back to recompacting a partition once), but
    while they exist a Bronze file rewrite (`compact-files`) does not force a recompaction, and
    the next incremental run reads only the manifests added since the mark. Maintenance can pass
    them to snapshot expiry as snapshots to keep. Reads Silver manifests only.

    Returns:
        `{"bronze.stocks_trades": {snapshot ids}, ...}` for every existing Silver table.
    """
    lake = settings if isinstance(settings, LakeCatalog) else LakeCatalog(settings)
    out: dict[str, set[int]] = {}
    existing = set(lake.existing_tables())
    for definition in lake.registry.in_namespace(SILVER):
        if definition.identifier not in existing:
            continue
        silver = lake.load_table(definition.identifier)
        ids: set[int] = set()
        mark = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
        if mark and mark.isdigit():
            ids.add(int(mark))
        if silver.current_snapshot() is not None:
            with catalog_errors(f"planning {definition.identifier}"):
                by_part: dict[tuple[Any, ...], list[str]] = {}
                for task in silver.scan().plan_files():
                    by_part.setdefault(tuple(task.file.partition), []).append(task.file.file_path)
            for paths in by_part.values():
                state = parse_state(paths)
                if state is not None:
                    ids.add(state.source_snapshot_id)
        out[f"{BRONZE}.{definition.name}"] = ids
    return out
