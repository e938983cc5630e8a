"""Ingestion: JetStream messages → validated Arrow → Iceberg appends with an exactly-once watermark.

Modules: `decode` (schema-aware decode/validate → column-wise Arrow), `gold` (levels.signals
flattening), `routing` (per-consumer decoders, schema inference), `dead_letters` (quarantine rows),
`batch` (the micro-batch), `writer` (one writer per durable consumer).
"""

from iceberg_lake.ingest.gold import flatten_level_signals

__all__ = ["flatten_level_signals"]
