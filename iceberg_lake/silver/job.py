"""Running a Silver compaction: DuckDB reads, dedups and sorts; new files are streamed out.

One `CompactionJob` holds what every query of one run shares; `compact_group` runs in a worker
thread and returns the written (uncommitted) files of each partition of its group. Committing
them is `iceberg_lake.silver.commit`'s job.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from iceberg_lake.catalog import catalog_errors
from iceberg_lake.engine.duck import DuckSession, duckdb_path, quote_str
from iceberg_lake.engine.iceberg import PartitionFileWriter, abandon_writers, close_writers
from iceberg_lake.exceptions import CompactionError
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.silver.dedup import (
    BUCKET_COLUMN,
    AdjacentDedup,
    dedup_query,
    duck_type,
    source_columns,
)
from iceberg_lake.silver.plan import Layout, Partition, table_name
from iceberg_lake.silver.state import file_prefix
from iceberg_lake.silver.writer import partition_file_writer
from iceberg_lake.tables import TableDefinition

__all__ = ["CompactionJob", "DuckSession", "PartitionOutput"]


@dataclass
class PartitionOutput:
    """The new (uncommitted) Silver files of one partition and its row counts."""

    part: Partition
    files: list[DataFile]
    rows_read: int
    rows_written: int
    bytes_read: int


@dataclass
class CompactionJob:
    """What every DuckDB query of one run shares (runs in worker threads)."""

    duck: DuckSession
    definition: TableDefinition
    bronze: Table
    silver: Table
    snap: Snapshot
    layout: Layout
    write_id: str
    batch_rows: int
    failed: threading.Event = field(default_factory=threading.Event)

    def compact_group_unless_failed(self, group: list[Partition]) -> list[PartitionOutput]:
        """`compact_group`, unless a query of this run already failed (the run fails with it).

        A query not started after a failure is not run: on a stalled store each would wait out
        its own timeouts first (a Silver run took 4 minutes to fail, prod17).
        """
        if self.failed.is_set():
            raise CompactionError("not run: an earlier query of this run failed")
        try:
            return self.compact_group(group)
        except BaseException:
            self.failed.set()
            raise

    def compact_group(self, group: list[Partition]) -> list[PartitionOutput]:
        """Dedup + sort the partitions of `group` with one query; stream them into new files."""
        if len(group) == 1 and not group[0].bronze:
            return [PartitionOutput(group[0], [], 0, 0, 0)]  # Bronze partition gone: empty it
        bronze, layout = self.bronze, self.layout
        needs_iceberg = bool(group[0].deletes)
        con = self.duck.cursor(iceberg=needs_iceberg, utc=True)  # one cursor per thread
        writers: dict[tuple[Any, ...], PartitionFileWriter] = {}
        try:
            counts = {p.pid: p.bronze_rows for p in group}
            if needs_iceberg:
                # Delete files: DuckDB's Iceberg reader applies them.
                only = group[0]
                source = (
                    f"(SELECT * FROM iceberg_scan({quote_str(bronze.metadata_location)}, "
                    f"snapshot_from_id={self.snap.snapshot_id}) "
                    f"WHERE {layout.sql_filter(only.record)})"
                )
                row = con.execute(f"SELECT count(*) FROM {source}").fetchone()
                counts[only.pid] = int(row[0]) if row else 0
            else:
                paths = ", ".join(
                    quote_str(duckdb_path(f.file_path)) for p in group for f in p.bronze
                )
                # No Hive partitioning: the values in the directory names (`symbol=7203`,
                # `symbol=X+Y`) are escaped and typed by guesswork; the columns in the file
                # are the data.
                options = f"{field_id_schema(bronze)}, hive_partitioning = false"
                source = f"read_parquet([{paths}]{options})"
            silver_schema = self.silver.schema()
            keys = self.dedup_columns()
            sql = dedup_query(
                source,
                silver_schema,
                keys,
                source_columns(
                    silver_schema,
                    NameHistory(self.silver.schemas().values()),
                    self.source_schema(needs_iceberg),
                    NameHistory(bronze.schemas().values()),
                    keys,
                    table_name(bronze),
                ),
                partitioned_by=(layout.key_column, layout.time_unit),
            )
            by_bucket = {layout.bucket_key(p.record): p for p in group}
            what = f"compacting {table_name(bronze)}"
            with catalog_errors(what):
                try:
                    reader = con.execute(sql).to_arrow_reader(self.batch_rows)
                    dedup = AdjacentDedup(
                        silver_schema, keys, [c for c in (layout.key_column, BUCKET_COLUMN) if c]
                    )
                    for batch in reader:
                        for bucket_key, rows in segments(dedup.apply(batch), layout.key_column):
                            part = by_bucket.get(bucket_key)
                            if part is None:
                                raise CompactionError(
                                    f"{table_name(bronze)}: row outside the planned partitions "
                                    f"({bucket_key})"
                                )
                            if part.pid not in writers:
                                prefix = file_prefix(
                                    self.snap.snapshot_id, part.digest, self.write_id
                                )
                                writers[part.pid] = partition_file_writer(
                                    self.silver, part.record, prefix
                                )
                            writers[part.pid].write(rows)
                except duckdb.Error as exc:
                    raise CompactionError(f"{what}: DuckDB failed: {exc}") from exc
                except pa.ArrowException as exc:
                    # Rows that do not fit Silver's schema (a type Silver could not follow, a
                    # NULL in a required column): one line, not an internal error.
                    raise CompactionError(
                        f"{what}: rows do not fit {table_name(self.silver)}'s schema: {exc}"
                    ) from exc
        except BaseException:
            # Left open, each file would be finished by its destructor, one after the other.
            abandon_writers(self.silver, list(writers.values()))
            raise
        finally:
            con.close()
        # Closing a file completes its upload (S3 multipart): a storage outage here is one,
        # not an internal error (prod17).
        with catalog_errors(f"finishing the files of {table_name(self.silver)}"):
            closed = dict(zip(writers, close_writers(list(writers.values())), strict=True))
        outputs = []
        for p in group:
            writer = writers.get(p.pid)
            written = writer.rows if writer else 0
            nbytes = sum(f.file_size_in_bytes for f in p.bronze)
            outputs.append(
                PartitionOutput(p, closed.get(p.pid, []), counts[p.pid], written, nbytes)
            )
        return outputs

    def dedup_columns(self) -> list[str]:
        """The declared dedup columns as Silver names them now (a rename keeps the field).

        Raises:
            CompactionError: a dedup column is no longer in the Silver table.
        """
        history = NameHistory(self.silver.schemas().values())
        schema = self.silver.schema()
        out = []
        for name in self.definition.dedup_columns:
            found = history.resolve(name, schema)
            if found is None:
                raise CompactionError(
                    f"{table_name(self.silver)} has no dedup column '{name}' (dropped?): "
                    "make it agree with catalog/ (`lake migrate check`) and compact again"
                )
            out.append(found)
        return out

    def source_schema(self, iceberg: bool) -> Schema:
        """The Bronze schema whose column names the source relation has.

        `read_parquet` with `field_id_schema` reads every file with the table's current schema;
        DuckDB's `iceberg_scan` reads a snapshot with the schema that snapshot was written with.
        """
        if iceberg and self.snap.schema_id is not None:
            pinned = self.bronze.schemas().get(self.snap.schema_id)
            if pinned is not None:
                return pinned
        return self.bronze.schema()


def segments(rows: pa.Table, key_column: str | None) -> Iterable[tuple[Any, pa.Table]]:
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


def field_id_schema(table: Table) -> str:
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
