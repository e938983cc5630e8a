"""Historical backfill: vendor files (Databento DBN, Polygon flat files, Parquet/CSV/NDJSON) into
Bronze with the live writers' validation, exactly once per file (`lake load`)."""

from iceberg_lake.load.loader import (
    DEFAULT_COMMIT_ROWS,
    LoadOptions,
    LoadResult,
    compact_loaded,
    load_file,
    load_files,
)
from iceberg_lake.load.mapping import Mapping, declared_mappings, find_mapping

__all__ = [
    "DEFAULT_COMMIT_ROWS",
    "LoadOptions",
    "LoadResult",
    "Mapping",
    "compact_loaded",
    "declared_mappings",
    "find_mapping",
    "load_file",
    "load_files",
]
