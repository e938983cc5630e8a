"""Stream Arrow record batches into Iceberg data files of one partition, with chosen file names.

pyiceberg's writer needs the whole partition as one Arrow table (and filters it once per
partition); this writer takes a record-batch stream, so memory stays at one batch, and names each
file itself: the Silver compactor encodes its change-detection state in the name (see
`iceberg_lake.compaction.state`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.io.pyarrow import ParquetFormatWriter, schema_to_pyarrow
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.locations import load_location_provider
from pyiceberg.typedef import Record
from pyiceberg.utils.properties import property_as_int


@dataclass(frozen=True)
class _PartitionPath:
    """What a location provider needs from a partition key: its `k=v/...` path."""

    spec: PartitionSpec
    schema: Schema
    record: Record

    def to_path(self) -> str:
        return self.spec.partition_to_path(self.record, self.schema)


def write_partition_files(
    table: Table,
    batches: Iterable[pa.RecordBatch],
    partition: Record,
    file_prefix: str,
) -> tuple[list[DataFile], int]:
    """Write a stream of sorted batches as data files of one partition of `table`.

    Files roll over at `write.target-file-size-bytes` (uncompressed Arrow bytes, as pyiceberg
    measures it). Nothing is committed.

    Args:
        table: the target table (its current schema, default spec and properties are used).
        batches: rows of exactly one partition, already in storage order; their columns must be
            the table schema's columns in order (types are cast, nullability set from the schema).
        partition: the partition tuple of the default spec that all rows belong to.
        file_prefix: file name prefix; files are `<prefix>-<n>.parquet`.

    Returns:
        The data files written and the number of rows.
    """
    metadata = table.metadata
    schema = metadata.schema()
    spec = metadata.spec()
    properties = metadata.properties
    target_bytes = property_as_int(
        properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    assert target_bytes is not None
    arrow_schema = schema_to_pyarrow(schema, include_field_ids=True)
    loose = pa.schema([f.with_nullable(True) for f in arrow_schema])
    locations = load_location_provider(
        table_location=metadata.location, table_properties=properties
    )
    key = _PartitionPath(spec, schema, partition)

    files: list[DataFile] = []
    rows = 0
    writer: ParquetFormatWriter | None = None
    path = ""
    size = 0

    def finish() -> None:
        nonlocal writer
        if writer is None:
            return
        stats = writer.close()
        files.append(
            DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=partition,
                file_size_in_bytes=len(table.io.new_input(path)),
                sort_order_id=None,
                spec_id=metadata.default_spec_id,
                equality_ids=None,
                key_metadata=None,
                **stats.to_serialized_dict(),
            )
        )
        writer = None

    for batch in batches:
        if batch.num_rows == 0:
            continue
        if batch.schema != loose:
            batch = batch.rename_columns(loose.names).cast(loose)
        # Same buffers, declared (non-)nullability of the table schema; nulls in a required
        # column would be a bug upstream, and pyarrow's writer rejects them.
        batch = pa.RecordBatch.from_arrays(batch.columns, schema=arrow_schema)
        if writer is None:
            path = locations.new_data_location(f"{file_prefix}-{len(files):05d}.parquet", key)  # type: ignore[arg-type]
            writer = ParquetFormatWriter(table.io.new_output(path), schema, properties)
            size = 0
        writer.write(pa.Table.from_batches([batch]))
        rows += batch.num_rows
        size += batch.nbytes
        if size >= target_bytes:
            finish()
    finish()
    return files, rows
