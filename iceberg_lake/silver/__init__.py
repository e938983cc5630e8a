"""Silver: pin a Bronze snapshot, dedup and sort it with DuckDB, swap partitions in ONE snapshot.

`compactor` (the spec's `SilverCompactor`), `dedup` (the dedup SQL), `state` (Bronze change
detection), `writer` (Silver data files).
"""

from iceberg_lake.silver.compactor import SilverCompactor

__all__ = ["SilverCompactor"]
