"""Silver compaction on Spark: the DuckDB compactor's rule, run by Spark for scale-out.

When a day of Bronze outgrows one machine, Spark reads the pinned Bronze snapshot, removes
duplicate events with the same rule as `iceberg_lake.silver.dedup` and replaces the touched
Silver partitions in ONE Iceberg `overwrite` snapshot (`iceberg_lake.engine.spark.
replace_partitions`). For the same Bronze snapshot the Silver rows, and their order within each
partition, are identical to the DuckDB engine's:

- event identity: all dedup columns equal, NULL = NULL, float dedup columns canonical
  (`-0.0` → `0.0`, every NaN → NaN) — Spark groups window partitions null-safe and NaN-safe;
  other float columns keep their value but `-0.0` (stored `0.0`, as DuckDB's sort stores it);
- survivor: smallest `(ts_recv_ns, every other non-dedup column in declaration order)`, NULLs
  last (`row_number()` over that order);
- order: partition key, `ts_event_ns`, the other dedup columns in declaration order (NULLs last),
  one Spark task per Silver partition, written without Iceberg's re-sort.

Differences from the DuckDB engine: no change detection (every partition of the day with Bronze
rows is recompacted; the DuckDB engine recompacts Spark-written partitions once, since their
file names carry no state), and partitions of one call go into one snapshot (no
`partitions_per_commit`) — with `compact_all_dates` that is every day of the table in one
snapshot, where the DuckDB engine commits one per day. Partitions are replaced as on DuckDB:
read at Bronze's current snapshot, every Silver partition of the window (a static overwrite of
it, so one whose Bronze rows were all deleted is emptied); at an older pin, those Bronze has
data files in (one whose rows position deletes removed is emptied too). The write is validated
against commits made to Silver since it was planned, and planned again if one replaced its
partitions.

Example (the session must have the lake's catalog, see `lake engines spark`)::

    compactor = SparkSilverCompactor(spark, load_settings())
    compactor.compact_date("2025-12-16", "futures.trades")
    compactor.compact_all_dates("futures.trades")  # every day with Bronze rows
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.typedef import Record
from pyiceberg.types import DoubleType, FloatType

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.config import Settings
from iceberg_lake.engine.filters import eq, ge, lt
from iceberg_lake.engine.spark import (
    is_write_conflict,
    replace_partitions,
    spark_error_line,
    spark_sql_type,
)
from iceberg_lake.exceptions import CompactionError, LakeError, TimeTravelError
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.silver.commit import follow_bronze_types, lower_mark
from iceberg_lake.silver.dedup import sort_columns, source_columns
from iceberg_lake.silver.plan import (
    Layout,
    PartitionMap,
    layout_of,
    parse_date,
    pin_snapshot,
    resolve_bronze_table,
)
from iceberg_lake.tables import BRONZE, SILVER, TableDefinition
from iceberg_lake.timetravel.snapshots import AsOf, protect_silver_source

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

__all__ = ["SparkSilverCompactor"]

_BUCKET_NS = {"hour": 3_600 * 10**9, "day": 86_400 * 10**9}
_BUCKET = "_lake_bucket"
#: Runs of one compaction when Silver's schema keeps changing under it, or another commit
#: keeps replacing the partitions it writes (each failure wrote nothing; the next run plans
#: on the new state).
SCHEMA_CHANGE_ATTEMPTS = 3


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class SparkSilverCompactor:
    """Compacts Bronze into Silver with Spark (see the module docstring for the rule).

    Args:
        spark: a session with the lake's catalog configured under `settings.catalog_name`.
        settings: lake settings, or an open `LakeCatalog` (pins and results come from it).
    """

    def __init__(self, spark: SparkSession, settings: Settings | LakeCatalog) -> None:
        self.spark = spark
        self.lake = settings if isinstance(settings, LakeCatalog) else LakeCatalog(settings)
        self.catalog_name = self.lake.settings.catalog_name

    def compact_date(
        self,
        date: str | date,
        schema: str,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
        *,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        """Compact one UTC day of one schema through Spark.

        Not incremental: every partition of the day that has Bronze rows is rewritten, as ONE
        `overwrite` snapshot carrying `lake.operation`, `lake.source-table`,
        `lake.source-snapshot-id` and `lake.replaced-partitions`. Running it again on the same
        Bronze snapshot writes identical rows (a new snapshot).

        Args:
            date: the day, `YYYY-MM-DD`.
            schema: `futures.trades`, `futures_trades` or `bronze.futures_trades`.
            partition_value: only this symbol/underlying.
            snapshot_id: pin this Bronze snapshot instead of the current one.
            tag: pin the Bronze snapshot of this tag (or branch).
            as_of: pin Bronze as the rest of the lake does (snapshot id, tag or timestamp),
                resolved as the DuckDB engine resolves it.

        Returns:
            status (`success` or `empty`), rows_read, rows_written, duplicates_removed,
            source_snapshot_id, silver_snapshot_id, partitions, replaced_partitions, table,
            date, seconds — the keys of the DuckDB engine's result.

        Raises:
            CompactionError: bad date, unknown snapshot or tag, or a layout Silver cannot take.
        """
        return self._spark_errors(
            schema,
            lambda: self._compact(
                parse_date(date), schema, partition_value, (snapshot_id, tag, as_of)
            ),
        )

    def compact_all_dates(
        self,
        schema: str,
        partition_value: str | None = None,
        snapshot_id: int | None = None,
        tag: str | None = None,
        *,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        """Compact every day of one schema through Spark, in ONE `overwrite` snapshot.

        The days are those the DuckDB engine's `compact_all_dates` takes: every UTC day with
        Bronze rows in the pinned snapshot (and `partition_value`, if given). Every partition of
        those days is rewritten (no change detection), all in one snapshot for the table.

        Args:
            schema: `futures.trades`, `futures_trades` or `bronze.futures_trades`.
            partition_value: only this symbol/underlying.
            snapshot_id: pin this Bronze snapshot instead of the current one.
            tag: pin the Bronze snapshot of this tag (or branch).
            as_of: pin Bronze as the rest of the lake does (snapshot id, tag or timestamp),
                resolved as the DuckDB engine resolves it.

        Returns:
            The keys of `compact_date`'s result, with `date` None and `dates` the days compacted
            (`YYYY-MM-DD`, in order).

        Raises:
            CompactionError: unknown snapshot or tag, or a layout Silver cannot take.
        """
        return self._spark_errors(
            schema, lambda: self._compact(None, schema, partition_value, (snapshot_id, tag, as_of))
        )

    def _spark_errors(self, schema: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        for attempt in range(1, SCHEMA_CHANGE_ATTEMPTS + 1):
            schema_id = self._silver_schema_id(schema)
            try:
                return run()
            except Exception as exc:
                if not type(exc).__module__.startswith(("pyspark", "py4j")):
                    raise
                # Spark's own errors (analysis, JVM) as one line, like every lake error.
                first = spark_error_line(exc)
                if (
                    "INCOMPATIBLE_DATA_FOR_TABLE" in first
                    and attempt < SCHEMA_CHANGE_ATTEMPTS
                    and self._silver_schema_id(schema) != schema_id
                ):
                    # Silver's schema changed between the read and the write (`lake table
                    # evolve` while compacting): nothing was written; plan again on it.
                    log.warning("Silver's schema changed during the Spark run, again: %s", first)
                    continue
                if is_write_conflict(exc):
                    # Another compaction replaced these partitions while Spark ran (spark17:
                    # the write replaced its newer rows with older ones): plan again on it,
                    # as the DuckDB engine does.
                    if attempt < SCHEMA_CHANGE_ATTEMPTS:
                        log.warning(
                            "%s: another commit replaced its partitions during the Spark run, "
                            "planning again (attempt %d)",
                            schema,
                            attempt,
                        )
                        continue
                    raise CompactionError(
                        f"{schema}: other commits kept replacing its Silver partitions during "
                        f"{attempt} Spark runs (nothing was written by them): run it when no "
                        "other compaction of the same days is running"
                    ) from None
                raise CompactionError(f"Spark: {first}") from exc
        raise AssertionError("unreachable")

    def _silver_schema_id(self, schema: str) -> int | None:
        """The current schema id of `schema`'s Silver table (None: not resolvable here; the
        run itself then says why)."""
        try:
            definition = resolve_bronze_table(self.lake, schema)
            return self.lake.load_table(f"{SILVER}.{definition.name}").metadata.current_schema_id
        except LakeError:
            return None

    def _compact(
        self,
        day: date | None,
        schema: str,
        partition_value: str | None,
        pin: tuple[int | None, str | None, AsOf],
    ) -> dict[str, Any]:
        """One day (`day`) or every day (None) of one schema, as one overwrite snapshot.

        `pin` is (snapshot_id, tag, as_of), at most one given: `pin_snapshot` resolves it, the
        same function the DuckDB engine uses, so a time, tag or id pins the same snapshot.
        """
        started = time.perf_counter()
        definition = resolve_bronze_table(self.lake, schema)
        bronze = self.lake.load_table(definition.identifier)
        silver = self.lake.load_table(f"{SILVER}.{definition.name}")
        if follow_bronze_types(
            bronze, silver, definition.dedup_columns
        ):  # a Bronze-only widening: Silver follows
            silver = self.lake.load_table(f"{SILVER}.{definition.name}")
        layout = layout_of(bronze, silver)
        snap = pin_snapshot(bronze, *pin)
        result = _result(definition, snap, day)
        if snap is None:
            return result
        spark_bronze = f"{self.catalog_name}.{definition.identifier}"
        spark_silver = f"{self.catalog_name}.{SILVER}.{definition.name}"
        # Spark's catalog caches tables: make it see the commits the lake made meanwhile.
        self.spark.sql(f"REFRESH TABLE {spark_bronze}")
        self.spark.sql(f"REFRESH TABLE {spark_silver}")

        source = self.spark.read.option("snapshot-id", str(snap.snapshot_id)).table(spark_bronze)
        row_filter: BooleanExpression = AlwaysTrue()
        if day is not None:
            lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
            hi = lo + timedelta(days=1)
            row_filter = And(ge("ts_event", lo.isoformat()), lt("ts_event", hi.isoformat()))
            # Micros, not timestamp literals: independent of Spark's session time zone.
            lo_us, hi_us = int(lo.timestamp()) * 1_000_000, int(hi.timestamp()) * 1_000_000
            source = source.where(
                f"ts_event >= timestamp_micros({lo_us}) AND ts_event < timestamp_micros({hi_us})"
            )
        if partition_value is not None:
            if layout.key_column is None:
                raise CompactionError(f"{definition.identifier} has no partition key")
            source = source.where(_col(layout.key_column) == partition_value)
            row_filter = And(eq(layout.key_column, partition_value), row_filter)

        # Partitions and row count from Bronze's metadata (no data read): Bronze files are
        # per partition, so the files the filter plans are exactly the day's.
        with catalog_errors(f"planning {definition.identifier}"):
            tasks = list(
                bronze.scan(snapshot_id=snap.snapshot_id, row_filter=row_filter).plan_files()
            )
        labels: list[list[Any]] = []
        records: list[Record] = []
        days: set[str] = set()
        to_silver = PartitionMap(bronze, layout)  # Bronze's spec may be finer than Silver's
        for task in tasks:
            record = Record(*to_silver.of_file(task.file))
            label = layout.label(record)
            if label not in labels:
                labels.append(label)
                records.append(record)
                days.add(layout.bounds(record)[1].date().isoformat())
        fed = source_columns(
            silver.schema(),
            NameHistory(silver.schemas().values()),
            _read_schema(bronze, snap, source.columns),
            NameHistory(bronze.schemas().values()),
            definition.dedup_columns,
            definition.identifier,
        )
        # Which Silver partitions the write replaces, as the DuckDB engine replaces them: read
        # at Bronze's current snapshot, every partition of the window (a static overwrite of
        # it), so one whose Bronze rows all went (a feed purged from Bronze) is emptied
        # (spark17); at an older pin, every partition Bronze has data files in at the pin, so
        # one whose rows position deletes removed is emptied too (review17b), and one only
        # Silver has is kept.
        window: Column | None = None
        emptied: list[list[Any]] = []
        if any(t.delete_files for t in tasks):
            with_rows = _labels_with_rows(source, layout, fed)
            rows_read = sum(with_rows.values())
            gone = [
                r for r, label in zip(records, labels, strict=True) if tuple(label) not in with_rows
            ]
            if gone:
                # Named as emptied below; at an older pin only a filter naming the partitions
                # empties them (the dynamic overwrite replaces those the rows are in).
                window = _partitions(layout, records)
                emptied = [layout.label(r) for r in gone]
                labels = [label for label in labels if tuple(label) in with_rows]
        else:
            rows_read = sum(t.file.record_count for t in tasks)
        if snap.snapshot_id == _current_id(bronze):
            window = _window(layout.key_column, day, partition_value)
            if silver.current_snapshot() is not None:
                with catalog_errors(f"planning {spark_silver}"):
                    silver_tasks = list(silver.scan(row_filter=row_filter).plan_files())
                for task in silver_tasks:
                    if task.file.spec_id != silver.spec().spec_id:
                        raise CompactionError(
                            f"{spark_silver} has files of an older partition spec "
                            f"({task.file.spec_id}); Silver compaction supports one Silver spec"
                        )
                    label = layout.label(task.file.partition)
                    if label not in labels and label not in emptied:
                        emptied.append(label)
                        days.add(layout.bounds(task.file.partition)[1].date().isoformat())
        if rows_read == 0 and not emptied:
            return result

        deduped = self._dedup(source, silver, definition, layout.key_column, layout.time_unit, fed)
        replaced = sorted(labels + emptied, key=str)
        props = {
            P.LAKE_OPERATION: P.SILVER_COMPACTION,
            P.SOURCE_TABLE: definition.identifier,
            P.SOURCE_SNAPSHOT_ID: str(snap.snapshot_id),
            P.REPLACED_PARTITIONS: json.dumps(replaced, default=str),
        }
        before = _current_id(silver)
        # Tag the source before Silver names it, as the pyiceberg path does (silver.commit).
        with catalog_errors(f"tagging the source of {spark_silver}"):
            try:
                protect_silver_source(bronze, snap.snapshot_id)
            except TimeTravelError as exc:
                raise CompactionError(str(exc)) from None
        # A pin older than Silver's incremental mark: Spark's commit cannot carry the lowered
        # mark, so it is lowered just before (and again after, see `lower_mark`).
        lower_mark(bronze, silver, snap)
        replace_partitions(
            deduped.drop(_BUCKET), spark_silver, props, planned_at=before, rows_in=window
        )
        silver = self.lake.load_table(f"{SILVER}.{definition.name}")
        lower_mark(bronze, silver, snap)
        new = silver.current_snapshot()
        if new is None or new.snapshot_id == before:
            raise CompactionError(f"{spark_silver}: Spark wrote no snapshot")
        summary = new.summary.additional_properties if new.summary else {}
        written = int(summary.get("added-records", 0))
        result.update(
            status="success",
            rows_read=rows_read,
            rows_written=written,
            duplicates_removed=rows_read - written,
            silver_snapshot_id=new.snapshot_id,
            partitions=len(replaced),
            replaced_partitions=replaced,
            seconds=round(time.perf_counter() - started, 3),
        )
        if day is None:
            result["dates"] = sorted(days)
        log.info("%s: Spark replaced %d partitions", spark_silver, len(replaced))
        return result

    def compact_all_schemas(
        self,
        date: str | date,
        partition_value: str | None = None,
        tag: str | None = None,
        *,
        as_of: AsOf = None,
    ) -> list[dict[str, Any]]:
        """`compact_date` for every Bronze table that has a Silver table in the catalog.

        A `tag` or `as_of` (tag or timestamp) pins every Bronze table (each must have it); a
        snapshot id belongs to one table, so it is refused (CompactionError), as on DuckDB.

        One table's failure does not stop the others: its result has status `error` and the
        reason in `error`, as on DuckDB.

        Returns:
            One result per table (status `missing` when a table is not in the catalog, `error`
            when it failed).
        """
        if isinstance(as_of, int):
            raise CompactionError("a snapshot id belongs to one Bronze table: name the table")
        existing = set(self.lake.existing_tables())
        results = []
        for d in self.lake.registry.in_namespace(BRONZE):
            silver_name = f"{SILVER}.{d.name}"
            if not d.subject or not d.dedup_columns or silver_name not in self.lake.registry:
                continue
            if {d.identifier, silver_name} <= existing:
                try:
                    results.append(
                        self.compact_date(date, d.identifier, partition_value, tag=tag, as_of=as_of)
                    )
                except Exception as exc:  # noqa: BLE001 - one table must not stop the others
                    reason = " ".join(str(exc).split()) or type(exc).__name__
                    if not isinstance(exc, LakeError):
                        reason = f"internal error: {type(exc).__name__}: {reason}"
                    log.info("%s failed, going on with the other tables: %s", silver_name, reason)
                    failed = {**_result(d, None, parse_date(date)), "status": "error"}
                    results.append({**failed, "error": reason})
            else:
                results.append({**_result(d, None, parse_date(date)), "status": "missing"})
        return results

    def _dedup(
        self,
        source: DataFrame,
        silver: Table,
        definition: TableDefinition,
        key: str | None,
        unit: str,
        fed: dict[str, str] | None = None,
    ) -> DataFrame:
        """Survivors in Silver's columns, plus `_lake_bucket`, clustered and ordered for writing."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F  # noqa: N812 - pyspark's idiom

        schema = silver.schema()
        names = [f.name for f in schema.fields]
        dedup = [c for c in names if c in definition.dedup_columns]
        if len(dedup) != len(definition.dedup_columns):
            raise CompactionError(f"dedup columns of {definition.identifier} not all in Silver")
        # Silver column -> Bronze column (`source_columns`: renames followed by field id).
        if fed is None:
            fed = {c: c for c in source.columns}
        missing = [c for c in dedup if c not in fed]
        if missing:
            raise CompactionError(f"dedup column '{missing[0]}' has no source column in Bronze")
        select = []
        for f in schema.fields:
            col = _ident(f.name)
            src = _ident(fed[f.name]) if f.name in fed else ""
            if not src:
                expr = f"CAST(NULL AS {spark_sql_type(f.field_type)})"
            elif f.name in dedup and isinstance(f.field_type, (FloatType, DoubleType)):
                kind = spark_sql_type(f.field_type)
                expr = (
                    f"CASE WHEN isnan({src}) THEN CAST('NaN' AS {kind}) "
                    f"WHEN {src} = 0 THEN CAST(0 AS {kind}) ELSE {src} END"
                )
            elif isinstance(f.field_type, (FloatType, DoubleType)):
                # -0.0 stored as 0.0, as DuckDB's sort (by every column) stores it (spark17).
                kind = spark_sql_type(f.field_type)
                expr = f"CASE WHEN {src} = 0 THEN CAST(0 AS {kind}) ELSE {src} END"
            else:
                expr = src
            select.append(f"{expr} AS {col}")
        canon = source.selectExpr(*select)

        order = sort_columns(names, dedup)  # ts_event_ns, dedup…, ts_recv_ns, rest…
        survivor_order = [c for c in order if c not in dedup]
        # One shuffle: rows go to tasks by Silver partition (key, time bucket); the window's
        # groups add the bucket (a function of ts_event_ns, so the groups are unchanged) and
        # the key, so that partitioning already satisfies the window's clustering.
        canon = canon.withColumn(_BUCKET, F.expr(f"ts_event_ns div {_BUCKET_NS[unit]}"))
        keys = ([key] if key else []) + [_BUCKET]
        clustered = canon.repartition(*[_col(k) for k in keys])
        groups = [*keys, *[c for c in dedup if c not in keys]]
        rank = F.row_number().over(
            Window.partitionBy(*[_col(c) for c in groups]).orderBy(
                *[_col(c).asc_nulls_last() for c in survivor_order]
            )
        )
        survivors = clustered.withColumn("_lake_rank", rank).where("_lake_rank = 1")
        out_order = [c for c in order if c in dedup]
        return survivors.drop("_lake_rank").sortWithinPartitions(
            *[_col(k).asc_nulls_last() for k in keys],
            *[_col(c).asc_nulls_last() for c in out_order],
        )


def _col(name: str) -> Column:
    from pyspark.sql import functions as F  # noqa: N812

    return F.col(_ident(name))


def _window(key_column: str | None, day: date | None, partition_value: str | None) -> Column:
    """The rows of one day (all days: None) and one partition value (all: None), as a Spark
    filter Iceberg turns into its own (UTC datetime literals: no session time zone)."""
    from pyspark.sql import functions as F  # noqa: N812

    cond = F.lit(True)
    if day is not None:
        lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
        cond = (_col("ts_event") >= F.lit(lo)) & (_col("ts_event") < F.lit(lo + timedelta(days=1)))
    if partition_value is not None and key_column is not None:
        cond = cond & (_col(key_column) == F.lit(partition_value))
    return cond


def _partitions(layout: Layout, records: list[Record]) -> Column:
    """The rows of exactly these Silver partitions, as a Spark filter Iceberg turns into its
    own (a balanced OR, so a long list does not nest deeply)."""
    from pyspark.sql import functions as F  # noqa: N812

    conds = []
    for record in records:
        value, lo, hi = layout.bounds(record)
        cond = (_col("ts_event") >= F.lit(lo)) & (_col("ts_event") < F.lit(hi))
        if layout.key_column is not None:
            cond = (_col(layout.key_column) == F.lit(value)) & cond
        conds.append(cond)
    while len(conds) > 1:
        conds = [a | b for a, b in zip(conds[::2], conds[1::2], strict=False)] + (
            [conds[-1]] if len(conds) % 2 else []
        )
    return conds[0]


def _labels_with_rows(
    source: DataFrame, layout: Layout, fed: dict[str, str]
) -> dict[tuple[Any, ...], int]:
    """Rows per Silver partition (as `Layout.label` names it) that `source` has rows in: a
    Spark count grouped by the partition key and the time bucket of `ts_event`."""
    from pyspark.sql import functions as F  # noqa: N812

    bucket_us = _BUCKET_NS[layout.time_unit] // 1000
    key = fed.get(layout.key_column) if layout.key_column is not None else None
    grouped = source.groupBy(
        (_col(key) if key is not None else F.lit(None)).alias("k"),
        F.expr(f"floor(unix_micros(ts_event) / {bucket_us})").alias("b"),
    ).count()
    out: dict[tuple[Any, ...], int] = {}
    for row in grouped.collect():
        values: list[Any] = [None] * (1 + (layout.key_pos is not None))
        values[layout.time_pos] = int(row["b"])
        if layout.key_pos is not None:
            values[layout.key_pos] = row["k"]
        out[tuple(layout.label(Record(*values)))] = int(row["count"])
    return out


def _current_id(table: Table) -> int | None:
    snap = table.current_snapshot()
    return snap.snapshot_id if snap else None


def _result(definition: TableDefinition, snap: Snapshot | None, day: date | None) -> dict[str, Any]:
    return {
        "status": "empty",
        "table": f"{SILVER}.{definition.name}",
        "date": day.isoformat() if day else None,
        "rows_read": 0,
        "rows_written": 0,
        "duplicates_removed": 0,
        "source_snapshot_id": snap.snapshot_id if snap else None,
        "silver_snapshot_id": None,
        "partitions": 0,
        "partitions_unchanged": 0,
        "replaced_partitions": [],
        "seconds": 0.0,
        "engine": "spark",
        **({"dates": []} if day is None else {}),
    }


def _read_schema(bronze: Table, snap: Snapshot, columns: list[str]) -> Schema:
    """The Bronze schema Spark read the pinned snapshot with: the one whose column names are
    the DataFrame's. Iceberg's Spark reader (1.10) reads `snapshot-id` with the table's current
    schema, an older release with the snapshot's own; the names tell which (a rename since the
    pin made the snapshot's schema name columns the DataFrame does not have)."""
    current = bronze.schema()
    pinned = bronze.schemas().get(snap.schema_id) if snap.schema_id is not None else None
    for schema in (current, pinned):
        if schema is not None and [f.name for f in schema.fields] == list(columns):
            return schema
    return current
