"""Building blocks of Silver compaction: dedup SQL, Bronze change detection, data-file writing.

The public entry point is `iceberg_lake.silver` (`SilverCompactor`); these modules are its parts.
"""
