"""Silver compaction: deterministic DuckDB dedup of pinned Bronze snapshots into Silver tables.

For each Bronze partition (partition value, hour; greeks: day) the compactor reads the Parquet
files of a pinned Bronze snapshot with DuckDB, removes duplicate events (see
`iceberg_lake.silver.dedup` for the event identity and the survivor rule), sorts by event time
and streams the result into new Silver data files. All replaced partitions of a run are swapped in
ONE Iceberg `overwrite` snapshot, so every Silver snapshot holds every partition complete.

The work is split in three modules: `silver.plan` (metadata only: partitions, pins, what
changed), `silver.job` (DuckDB reads, dedup, streamed writes) and `silver.commit` (the atomic
snapshot); this module orchestrates them and returns `CompactionResult`s (`silver.result`).

Idempotent: a partition whose Bronze content is unchanged since the source snapshot of its last
compaction is skipped without reading data (see `iceberg_lake.silver.state`); a run that
changes nothing makes no commit.

Example::

    compactor = SilverCompactor()            # settings from LAKE_* / lake.toml
    compactor.compact_date("2025-12-16", schema="futures.trades", partition_value="ES")
    results = compactor.compact_all_schemas("2025-12-16")   # {"futures.trades": result, ...}
    compactor.compact_incremental()          # every few minutes: only what Bronze changed
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from functools import partial
from typing import Any

from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.typedef import Record

from iceberg_lake import properties as P
from iceberg_lake.catalog import CatalogSource, as_catalog, catalog_errors
from iceberg_lake.engine.filters import eq
from iceberg_lake.engine.iceberg import partition_values
from iceberg_lake.exceptions import CommitConflictError, CompactionError, LakeError
from iceberg_lake.silver.commit import (
    SilverCommit,
    advance_mark,
    follow_bronze_types,
    mark_for_pin,
    usable_mark,
)
from iceberg_lake.silver.job import CompactionJob, DuckSession
from iceberg_lake.silver.plan import (
    Layout,
    Partition,
    PartitionMap,
    cover,
    current_snapshot_id,
    day_window,
    group_by_day,
    layout_of,
    parse_date,
    pin_snapshot,
    plan_partitions,
    query_groups,
    resolve_bronze_table,
    split_changed,
    table_name,
)
from iceberg_lake.silver.result import CompactionResult, merge_results
from iceberg_lake.silver.state import BronzeHistory, parse_state
from iceberg_lake.tables import BRONZE, SILVER, TableDefinition
from iceberg_lake.timetravel.snapshots import AsOf

log = logging.getLogger(__name__)

__all__ = [
    "CompactionResult",
    "SilverCompactor",
    "resolve_bronze_table",
    "silver_source_snapshots",
]

#: `Progress(table, partitions_done, partitions_total)`, called after each partition.
Progress = Callable[[str, int, int], None]


class SilverCompactor:
    """Compacts Bronze tables into their Silver counterparts.

    Every public method is idempotent: partitions whose Bronze content is unchanged since their
    last compaction are skipped, and a run with nothing to do makes no commit. A run that replaces
    partitions makes exactly one Silver snapshot (operation `overwrite`) per table and call, or
    one per `partitions_per_commit` partitions, whose summary carries `lake.operation`,
    `lake.source-table`, `lake.source-snapshot-id` and `lake.replaced-partitions`.

    Args:
        catalog: lake settings or an open `LakeCatalog`; default: settings from the
            environment (`LAKE_*`, `lake.toml`), as the spec's `SilverCompactor()`.
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
        catalog: CatalogSource | None = None,
        *,
        progress: Progress | None = None,
        partitions_per_commit: int = 500,
        batch_rows: int = 250_000,
        rows_per_query: int = 2_000_000,
        workers: int = 2,
        max_attempts: int = 4,
    ) -> None:
        self.catalog = as_catalog(catalog)
        self.progress = progress
        self.partitions_per_commit = max(1, partitions_per_commit)
        self.batch_rows = batch_rows
        self.rows_per_query = max(1, rows_per_query)
        self.workers = max(1, workers)
        self.max_attempts = max(1, max_attempts)
        self._duck = DuckSession(self.catalog.settings)
        self._existing: set[str] | None = None

    # ---- public API -----------------------------------------------------------------------------

    def compact_date(
        self,
        date: str | date,
        schema: str | None = None,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
        *,
        as_of: AsOf = None,
    ) -> CompactionResult:
        """Compact one UTC day of one schema (or of all schemas when `schema` is None).

        Args:
            date: the day, `YYYY-MM-DD`.
            schema: `futures.trades`, `futures_trades` or `bronze.futures_trades`; None = all.
            partition_value: only this symbol/underlying.
            snapshot_id: pin this Bronze snapshot instead of the current one.
            tag: pin the Bronze snapshot of this tag (or branch).
            as_of: pin Bronze as the rest of the lake does (snapshot id, tag or timestamp).

        Returns:
            The result (also readable as the spec's dict): status (`success`, `unchanged` or
            `empty`), rows_read, rows_written, duplicates_removed, source_snapshot_id,
            silver_snapshot_id, partitions (replaced), partitions_unchanged,
            replaced_partitions, table, date, seconds. With `schema=None` the counts are summed
            and `tables` holds the per-table results; a table that failed has status `error`
            and its reason in `error` (so does the merged result), the others are compacted.

        Raises:
            CompactionError: a bad date, pin or partition value; UnknownTableError: no such
            schema; CommitConflictError: lost every commit race (with `schema=None` only
            argument errors raise).
        """
        day = parse_date(date)
        if schema is None:
            by_schema = self.compact_all_schemas(
                day, partition_value, snapshot_id, tag, as_of=as_of
            )
            return merge_results(by_schema, day.isoformat())
        definition = resolve_bronze_table(self.catalog, schema)
        results = self._compact(
            definition, day_window(day), partition_value, (snapshot_id, tag, as_of), by_day=False
        )
        result = results[0] if results else _empty(definition, None)
        return result.with_date(day.isoformat())

    def compact_all_schemas(
        self,
        date: str | date,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
        *,
        as_of: AsOf = None,
    ) -> dict[str, CompactionResult]:
        """Compact one day of every Silver table.

        A `tag` (or an `as_of` tag or timestamp) applies to every Bronze table (each must have
        it); a snapshot id belongs to one table, so it is refused here (CompactionError).

        One table's failure does not stop the others: it is logged and becomes that table's
        result with status `error` and the reason in `error`.

        Returns:
            Schema name (`futures.trades`, ...) → that table's result (see `compact_date`);
            a table not yet in the catalog has status `missing`, one that failed `error`.
        """
        day = parse_date(date)
        if snapshot_id is not None or isinstance(as_of, int):
            raise CompactionError("a snapshot id belongs to one Bronze table: name the table")
        results: dict[str, CompactionResult] = {}
        for d in self._bronze_definitions():
            if not self._exists(d):
                results[d.schema_name] = CompactionResult(
                    status="missing", table=f"{SILVER}.{d.name}", date=day.isoformat()
                )
                continue
            results[d.schema_name] = self._guarded(
                d,
                partial(
                    self.compact_date,
                    day,
                    d.identifier,
                    partition_value,
                    snapshot_id,
                    tag,
                    as_of=as_of,
                ),
                day.isoformat(),
            )
        return results

    def compact_all_dates(
        self,
        schema: str,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
        *,
        as_of: AsOf = None,
    ) -> list[CompactionResult]:
        """Compact every day of one schema; one result per day that has Bronze data.

        Bronze metadata is planned once; each day is committed as its own snapshot.
        """
        definition = resolve_bronze_table(self.catalog, schema)
        return self._compact(
            definition, AlwaysTrue(), partition_value, (snapshot_id, tag, as_of), by_day=True
        )

    def compact_incremental(self, tables: Sequence[str] | None = None) -> list[CompactionResult]:
        """Compact every partition Bronze changed since the previous incremental run.

        The Bronze snapshot the previous run reached is kept in the Silver table property
        `lake.silver.incremental-source-snapshot-id`; the changed partitions are read from the
        manifests of the Bronze snapshots after it (file rewrites ignored). With no usable
        mark (first run, or that snapshot was expired) every partition is checked from metadata.
        Cheap when nothing changed: two metadata loads per table, no commit.

        One table's failure does not stop the others: it is logged and becomes that table's
        result with status `error` and the reason in `error` (a maintenance loop keeps every
        other table fresh while one needs an operator).

        Args:
            tables: schemas or table names to consider (default: every Silver table).

        Returns:
            One result per table (see `compact_date`), with `date` None.

        Raises:
            UnknownTableError: a name in `tables` has no Silver table (before any work).
        """
        if tables:
            chosen = [resolve_bronze_table(self.catalog, t) for t in tables]
            return [self._guarded(d, partial(self._incremental, d), None) for d in chosen]
        return [
            self._guarded(d, partial(self._incremental, d), None)
            if self._exists(d)
            else CompactionResult(status="missing", table=f"{SILVER}.{d.name}")
            for d in self._bronze_definitions()
        ]

    def close(self) -> None:
        """Close the DuckDB connection."""
        self._duck.close()

    def __enter__(self) -> SilverCompactor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- orchestration --------------------------------------------------------------------------

    def _bronze_definitions(self) -> list[TableDefinition]:
        reg = self.catalog.registry
        return [
            d
            for d in reg.in_namespace(BRONZE)
            if d.subject and f"{SILVER}.{d.name}" in reg and d.dedup_columns
        ]

    def _exists(self, definition: TableDefinition) -> bool:
        """Both tables are in the catalog (listing all-schema runs skip missing ones)."""
        if self._existing is None:
            self._existing = set(self.catalog.existing_tables())
        return {definition.identifier, f"{SILVER}.{definition.name}"} <= self._existing

    def _tables(self, definition: TableDefinition) -> tuple[Table, Table]:
        """Bronze and Silver, Silver's column types widened to Bronze's first if need be."""
        silver_name = f"{SILVER}.{definition.name}"
        bronze = self.catalog.load_table(definition.identifier)
        silver = self.catalog.load_table(silver_name)
        if follow_bronze_types(bronze, silver, definition.dedup_columns):
            silver = self.catalog.load_table(silver_name)
        return bronze, silver

    def _guarded(
        self, definition: TableDefinition, run: Callable[[], CompactionResult], day: str | None
    ) -> CompactionResult:
        """`run()` for one table of a several-table run: a failure becomes an `error` result."""
        table = f"{SILVER}.{definition.name}"
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - one table must not stop the others
            if isinstance(exc, LakeError):
                reason = " ".join(str(exc).split()) or type(exc).__name__
            else:  # a bug: the traceback goes to the debug log
                reason = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
                log.debug("%s: the error's traceback", table, exc_info=True)
            # Info, not error: the result carries it, and whoever reads it reports it once
            # (the CLI prints one line per failed table).
            log.info("%s failed, going on with the other tables: %s", table, reason)
            return CompactionResult(status="error", table=table, date=day, error=reason)

    def _compact(
        self,
        definition: TableDefinition,
        window: BooleanExpression,
        partition_value: str | None,
        pin: tuple[int | None, str | None, AsOf],
        *,
        by_day: bool,
    ) -> list[CompactionResult]:
        """Plan, compact and commit; one result per day (`by_day`) or one for everything."""
        for attempt in range(1, self.max_attempts + 1):
            bronze, silver = self._tables(definition)
            snap = pin_snapshot(bronze, *pin)
            if snap is None:
                return [_empty(definition, None)]
            layout = layout_of(bronze, silver)
            row_filter = window
            if partition_value is not None:
                if layout.key_column is None:
                    raise CompactionError(f"{definition.identifier} has no partition key")
                row_filter = And(eq(layout.key_column, partition_value), window)
            is_current = snap.snapshot_id == current_snapshot_id(bronze)
            parts = plan_partitions(
                bronze, silver, snap, row_filter, include_silver_only=is_current, layout=layout
            )
            if not parts:
                return [_empty(definition, snap)]
            groups = group_by_day(parts, layout) if by_day else {None: parts}
            mark = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
            lowered = mark_for_pin(bronze, silver, snap)
            # A lowering is a compare-and-swap on the mark read: another pinned run may have
            # lowered it further meanwhile (another day or partition, so no file conflict),
            # and setting this run's higher pin over it would hide that run's older content
            # from the next incremental run. A mark raised meanwhile past this pin came with a
            # rewrite of any partition that changed, which this run's commit conflicts with.
            expected: dict[str, str | None] | None = (
                {P.SILVER_INCREMENTAL_SOURCE: mark} if lowered else None
            )
            try:
                results = []
                for day, group in groups.items():
                    result = self._run(
                        definition,
                        bronze,
                        silver,
                        snap,
                        layout,
                        group,
                        {},
                        every_commit=lowered,
                        expected=expected,
                    )
                    results.append(result.with_date(day))
                    if expected is not None and result.silver_snapshot_id is not None:
                        # This day's commit lowered the mark (a day with every partition
                        # unchanged commits nothing and leaves it as read).
                        expected = {
                            P.SILVER_INCREMENTAL_SOURCE: lowered[P.SILVER_INCREMENTAL_SOURCE]
                        }
                return results
            except CommitConflictError:
                if attempt == self.max_attempts:
                    raise
                log.warning(
                    "%s: concurrent commit, re-planning (attempt %d)", table_name(silver), attempt
                )
        raise AssertionError("unreachable")

    def _incremental(self, definition: TableDefinition) -> CompactionResult:
        for attempt in range(1, self.max_attempts + 1):
            bronze, silver = self._tables(definition)
            snap = bronze.current_snapshot()
            if snap is None:
                return _empty(definition, None)
            marks = {P.SILVER_INCREMENTAL_SOURCE: str(snap.snapshot_id)}
            # The mark is raised only if it is still the one read (compare-and-swap): a pinned
            # run (`mark_for_pin`) may lower it while this run plans, and must not be undone.
            read: dict[str, str | None] = {
                P.SILVER_INCREMENTAL_SOURCE: silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
            }
            mark = usable_mark(silver)
            if mark == str(snap.snapshot_id):
                return _unchanged(definition, snap)
            layout = layout_of(bronze, silver)
            history = BronzeHistory(bronze, PartitionMap(bronze, layout).of_file)
            changed = (
                history.changed_since(int(mark), snap.snapshot_id)
                if mark and mark.isdigit()
                else None
            )
            if changed is None:
                row_filter: BooleanExpression = AlwaysTrue()
                log.info(
                    "%s: no usable incremental mark, checking every partition", table_name(silver)
                )
            elif not changed:
                try:
                    advance_mark(silver, marks, read)
                except CommitConflictError:
                    if attempt == self.max_attempts:
                        raise
                    continue
                return _unchanged(definition, snap)
            else:
                row_filter = cover(layout, [Record(*pid) for pid in changed])
            parts = plan_partitions(
                bronze, silver, snap, row_filter, include_silver_only=True, layout=layout
            )
            if changed is not None:
                parts = {k: v for k, v in parts.items() if k in changed}
            try:
                res = self._run(
                    definition,
                    bronze,
                    silver,
                    snap,
                    layout,
                    parts,
                    marks,
                    history=history,
                    expected=read,
                )
                if res.silver_snapshot_id is None:
                    advance_mark(silver, marks, read)
            except CommitConflictError:
                if attempt == self.max_attempts:
                    raise
                log.warning(
                    "%s: concurrent commit, re-planning (attempt %d)", table_name(silver), attempt
                )
                continue
            return res.with_date(None)
        raise AssertionError("unreachable")

    def _run(
        self,
        definition: TableDefinition,
        bronze: Table,
        silver: Table,
        snap: Snapshot,
        layout: Layout,
        parts: dict[tuple[Any, ...], Partition],
        table_properties: dict[str, str],
        *,
        history: BronzeHistory | None = None,
        every_commit: dict[str, str] | None = None,
        expected: dict[str, str | None] | None = None,
    ) -> CompactionResult:
        """Compact the partitions that changed and commit them; return the result.

        `table_properties` are set by the last commit of the run (an advanced incremental mark
        holds only once every partition is in); `every_commit` by each commit (a lowered mark
        must hold as soon as the first partition is rewritten from an older snapshot).
        `expected`: property values each commit requires (compare-and-swap; the run's own
        commits carry them forward), else `CommitConflictError`.
        """
        started = time.perf_counter()
        history = history or BronzeHistory(bronze, PartitionMap(bronze, layout).of_file)
        todo, unchanged = split_changed(history, snap, parts)
        rows_read = rows_written = bytes_read = 0
        replaced: list[list[Any]] = []
        done, total = unchanged, len(parts)
        self._report(silver, done, total)
        job = CompactionJob(
            self._duck,
            definition,
            bronze,
            silver,
            snap,
            layout,
            write_id=uuid.uuid4().hex[:12],
            batch_rows=self.batch_rows,
        )
        snapshot_ids: list[int] = []
        per = self.partitions_per_commit
        chunks = [todo[i : i + per] for i in range(0, len(todo), per)]
        for n, chunk in enumerate(chunks, start=1):
            marks = {**(every_commit or {}), **(table_properties if n == len(chunks) else {})}
            groups = query_groups(chunk, self.rows_per_query, self.workers)
            with SilverCommit(
                silver, definition, snap, layout, marks, bronze, expected_properties=expected
            ) as commit:
                pool = ThreadPoolExecutor(max_workers=self.workers)
                futures = [pool.submit(job.compact_group_unless_failed, g) for g in groups]
                consumed = 0
                try:
                    for future in futures:
                        outputs = future.result()
                        consumed += 1
                        for out in outputs:
                            commit.add(out)
                            rows_read += out.rows_read
                            rows_written += out.rows_written
                            bytes_read += out.bytes_read
                            replaced.append(layout.label(out.part.record))
                        done += len(outputs)
                        self._report(silver, done, total)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    # The files of queries that finished meanwhile go to the commit too, which
                    # deletes every file it was given as the failure leaves its block.
                    for future in futures[consumed:]:
                        if not future.cancelled() and future.exception() is None:
                            for out in future.result():
                                commit.add(out)
                    raise
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
            if commit.snapshot_id is not None:
                snapshot_ids.append(commit.snapshot_id)
                if expected is not None:  # this run's own commit moved them
                    expected = {k: marks.get(k, v) for k, v in expected.items()}
        return CompactionResult(
            status="success" if replaced else "unchanged",
            table=f"{SILVER}.{definition.name}",
            rows_read=rows_read,
            rows_written=rows_written,
            source_snapshot_id=snap.snapshot_id,
            silver_snapshot_id=snapshot_ids[-1] if snapshot_ids else None,
            partitions=len(replaced),
            partitions_unchanged=unchanged,
            replaced_partitions=replaced,
            bytes_read=bytes_read,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _report(self, silver: Table, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(table_name(silver), done, total)


def _empty(definition: TableDefinition, snap: Snapshot | None) -> CompactionResult:
    return CompactionResult(
        status="empty",
        table=f"{SILVER}.{definition.name}",
        source_snapshot_id=snap.snapshot_id if snap else None,
    )


def _unchanged(definition: TableDefinition, snap: Snapshot) -> CompactionResult:
    return CompactionResult(
        status="unchanged", table=f"{SILVER}.{definition.name}", source_snapshot_id=snap.snapshot_id
    )


def silver_source_snapshots(catalog: CatalogSource | None = None) -> dict[str, set[int]]:
    """Bronze snapshots that current Silver partitions (and incremental marks) still name.

    Change detection works without them (it falls back to recompacting a partition once), but
    while they exist a Bronze file rewrite (`compact-files`) does not force a recompaction, and
    the next incremental run reads only the manifests added since the mark. Maintenance can pass
    them to snapshot expiry as snapshots to keep. Reads Silver manifests only.

    Returns:
        `{"bronze.stocks_trades": {snapshot ids}, ...}` for every existing Silver table.
    """
    cat = as_catalog(catalog)
    out: dict[str, set[int]] = {}
    existing = set(cat.existing_tables())
    for definition in cat.registry.in_namespace(SILVER):
        if definition.identifier not in existing:
            continue
        silver = cat.load_table(definition.identifier)
        ids: set[int] = set()
        mark = silver.properties.get(P.SILVER_INCREMENTAL_SOURCE)
        if mark and mark.isdigit():
            ids.add(int(mark))
        if silver.current_snapshot() is not None:
            with catalog_errors(f"planning {definition.identifier}"):
                by_part: dict[tuple[Any, ...], list[str]] = {}
                for task in silver.scan().plan_files():
                    by_part.setdefault(partition_values(task.file.partition), []).append(
                        task.file.file_path
                    )
            for paths in by_part.values():
                state = parse_state(paths)
                if state is not None:
                    ids.add(state.source_snapshot_id)
        out[f"{BRONZE}.{definition.name}"] = ids
    return out
