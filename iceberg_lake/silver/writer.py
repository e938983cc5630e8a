"""Silver's file writer: the engine's streaming `PartitionFileWriter` with Silver's encoding policy.

Silver streams the deduplicated, sorted rows of each partition into files it names itself (the
name encodes its change-detection state, see `iceberg_lake.silver.state`); the writing and the
data files' statistics are `iceberg_lake.engine.iceberg.PartitionFileWriter`'s. What is Silver's
own is which columns are dictionary-encoded.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table
from pyiceberg.typedef import Record

from iceberg_lake.engine.iceberg import PartitionFileWriter

__all__ = ["DICTIONARY_MAX_DISTINCT_RATIO", "dictionary_columns", "partition_file_writer"]

#: Dictionary-encode a column only if a sample of its first batch repeats values this much
#: (distinct / rows). Dictionary pages for near-unique columns (timestamps, sequence numbers)
#: cost about half the write time and make files larger: measured 1.33 → 0.66 CPU-s and
#: 51 → 34 MB for 2M trades.
DICTIONARY_MAX_DISTINCT_RATIO = 0.5
_SAMPLE_ROWS = 10_000


def dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary encoding, judged on a sample of `table`'s first rows."""
    sample = table.slice(0, _SAMPLE_ROWS)
    n = max(1, sample.num_rows)
    chosen = []
    for name, column in zip(sample.column_names, sample.columns, strict=True):
        if pa.types.is_boolean(column.type):
            continue
        distinct = pc.count_distinct(column, mode="all").as_py()
        if distinct / n <= DICTIONARY_MAX_DISTINCT_RATIO:
            chosen.append(name)
    return chosen


def partition_file_writer(table: Table, partition: Record, file_prefix: str) -> PartitionFileWriter:
    """A writer of ONE Silver partition's files `<file_prefix>-<n>.parquet` (nothing committed).

    Args:
        table: the Silver table (its current schema, default spec and properties are used).
        partition: the partition tuple of the default spec that all rows belong to.
        file_prefix: file name prefix (`iceberg_lake.silver.state.file_prefix`).
    """
    return PartitionFileWriter(table, partition, file_prefix, use_dictionary=dictionary_columns)
