"""Keys of the table properties and snapshot summary properties the lake writes and reads.

One place for every key so writers, the compactor, maintenance and replay agree on them.
"""

from __future__ import annotations

from iceberg_lake.tables.definitions import SCHEMA_NAME_PROPERTY, SCHEMA_VERSION_PROPERTY

# ---- snapshot summary: who made the snapshot --------------------------------------------------
#: What produced a snapshot: `ingest`, `silver-compaction`, `compact-files`, `migration`.
LAKE_OPERATION = "lake.operation"

# ---- snapshot summary: ingest (Bronze/Gold appends) -------------------------------------------
STREAM = "lake.stream"
CONSUMER = "lake.consumer"
FIRST_STREAM_SEQ = "lake.first-stream-seq"
LAST_STREAM_SEQ = "lake.last-stream-seq"
EVENT_COUNT = "lake.event-count"
#: The lease holder an ingest commit was made under (absent: a writer that takes no lease, as
#: iceberg_lake 0.1). A writer fenced while it holds its lease reads it to tell a previous
#: holder's late commit from a lease-less writer's (`ingest.writer`).
WRITER_LEASE = "lake.writer-lease"

#: Table property prefix for the exactly-once watermark, one key per consumer:
#: `lake.watermark.<stream>.<consumer>` = last committed stream sequence. Written in the same
#: transaction as the append, so it survives snapshot expiry and commits by other components.
WATERMARK_PREFIX = "lake.watermark."
#: Table property prefix for a consumer's completed position: `lake.position.<stream>.<consumer>`
#: = the last stream sequence of the last fully committed flush (all its tables). Set on the
#: last commit of each flush; a writer restarts its consumer at max(position) + 1.
POSITION_PREFIX = "lake.position."
#: Table property prefix for the watermarks a position was recorded with:
#: `lake.position-marks.<stream>.<consumer>` = JSON {table: watermark} of every table of the
#: consumer, written beside the position. A table found below its mark at start was moved back
#: on its own (its metadata pointed back at an older file, restored from a backup): the writer
#: reads on from that table's watermark, not from the position past it.
POSITION_MARKS_PREFIX = "lake.position-marks."
#: Table property prefix naming the stream the watermark and position count in:
#: `lake.stream-created.<stream>.<consumer>` = the stream's creation time (UTC, ISO-8601, µs),
#: set in the same transaction as the watermark. A stream deleted and created again (or a NATS
#: server that lost its storage) numbers its messages from 1 again under a new creation time: a
#: writer that finds another one refuses to start (`iceberg_lake.ingest.position`).
STREAM_CREATED_PREFIX = "lake.stream-created."
#: Table property prefix for the messages a flush rejected for the table:
#: `lake.rejected.<stream>.<consumer>` = `<watermark>:<ids>` (`12-15,20,31.0`, as
#: `REDRIVEN_PREFIX`; `z` + base64 of the zlib-compressed gaps between the ids past 2 KiB,
#: `ingest.writer._rejects_value`), set in the same
#: transaction as the watermark by a flush that dead-lettered messages for the table, and
#: emptied by the next one. A writer stopped after the table's commit but before the dead
#: letters' re-reads those messages: their letters are made again even if a widen made since
#: would accept them (review19e #2), as the table's watermark skips their rows.
REJECTED_PREFIX = "lake.rejected."

# ---- snapshot summary: Silver compaction / file rewrites ---------------------------------------
SOURCE_TABLE = "lake.source-table"
SOURCE_SNAPSHOT_ID = "lake.source-snapshot-id"
#: JSON list of the replaced partitions, e.g. `[["SPY", "2025-12-16T14"]]`.
REPLACED_PARTITIONS = "lake.replaced-partitions"

# ---- dead-letter re-drive ---------------------------------------------------------------------
#: `lake.operation` value of appends made by `lake dead-letters replay`.
REDRIVE = "redrive"
#: Table property prefix recording which dead letters were re-driven into the table:
#: `lake.redriven.<stream>` = a compact id set (`12-15,20,31.0`: stream sequences, ranges of
#: them, and `<seq>.<event>` for one event of a batched message). Set in the same transaction as
#: the append, so a second replay skips them (exactly once).
REDRIVEN_PREFIX = "lake.redriven."
#: Snapshot summary of a re-drive append: the ids it re-drove (same format, with the stream).
REDRIVEN_IDS = "lake.redriven-ids"

# ---- Silver compaction ---------------------------------------------------------------------------
#: `lake.operation` value of Silver compaction snapshots.
SILVER_COMPACTION = "silver-compaction"
#: `lake.operation` value of small-file rewrites (same rows, new files) made by maintenance.
COMPACT_FILES = "compact-files"
#: Silver table property: the Bronze snapshot id up to which `lake compact --incremental` has
#: compacted every changed partition (the start of the next incremental run's change scan).
SILVER_INCREMENTAL_SOURCE = "lake.silver.incremental-source-snapshot-id"
#: Silver table property: the Silver snapshot the incremental mark was set on (the snapshot its
#: commit made, or the current one). The mark holds only while that snapshot is Silver's current
#: snapshot or an ancestor of it: a rollback leaves the property as it was (silver18).
SILVER_INCREMENTAL_SILVER_SNAPSHOT = "lake.silver.incremental-silver-snapshot-id"

# ---- backfill (`lake load`) -------------------------------------------------------------------
#: `lake.operation` value of snapshots made by `lake load`.
LOAD = "load"
#: Table property prefix of the exactly-once ledger of loaded files: `lake.load.<sha256>` = the
#: number of the file's rows committed so far, `<n>:done` once the whole file is in (then
#: `@<generation>` after a reload, `;<options fingerprint>` since load18, `,k=<rows stored by all
#: generations>` since 2026-11-30; `0:undone@<g>` after `lake load --undo`). On
#: `bronze.dead_letters` the key is `lake.load.<target table>.<sha256>`. Written in the same
#: transaction as each append, like the writers' watermark.
LOAD_PREFIX = "lake.load."
#: Snapshot summary of a load commit: the file's SHA-256, its name, and the file rows it covers.
LOAD_SHA256 = "lake.load-sha256"
LOAD_FILE = "lake.load-file"
LOAD_FIRST_ROW = "lake.load-first-row"
LOAD_END_ROW = "lake.load-end-row"
#: ... and what decided its rows (load18): the mapping (`name (path)`), `--source`, the format.
LOAD_MAPPING = "lake.load-mapping"
LOAD_SOURCE = "lake.load-source"
LOAD_FORMAT = "lake.load-format"
#: `lake.operation` value of a `lake load --undo` snapshot (it removes a file's rows; the
#: summary names the file with `LOAD_SHA256` and `LOAD_FILE`).
LOAD_UNDO = "load-undo"
#: Table property prefix: `lake.load-undo.<sha256>` = `<snapshot id>:<sequence number>` of the
#: file's last undo (a rollback past it brings the rows back; review19).
LOAD_UNDO_PREFIX = "lake.load-undo."

# ---- time travel -------------------------------------------------------------------------------
#: Table property prefix recording that tag `<name>` was made while the table had no snapshot:
#: `lake.empty-tag.<name>` = creation time (epoch ms). Iceberg cannot tag "no snapshot", and a
#: backtest pinned to the tag must still see the table, empty.
EMPTY_TAG_PREFIX = "lake.empty-tag."

__all__ = [
    "REDRIVE",
    "REDRIVEN_IDS",
    "REDRIVEN_PREFIX",
    "COMPACT_FILES",
    "CONSUMER",
    "EMPTY_TAG_PREFIX",
    "EVENT_COUNT",
    "FIRST_STREAM_SEQ",
    "LAKE_OPERATION",
    "LAST_STREAM_SEQ",
    "LOAD",
    "LOAD_END_ROW",
    "LOAD_FILE",
    "LOAD_FIRST_ROW",
    "LOAD_FORMAT",
    "LOAD_MAPPING",
    "LOAD_PREFIX",
    "LOAD_SHA256",
    "LOAD_SOURCE",
    "LOAD_UNDO",
    "LOAD_UNDO_PREFIX",
    "POSITION_MARKS_PREFIX",
    "POSITION_PREFIX",
    "REJECTED_PREFIX",
    "REPLACED_PARTITIONS",
    "SCHEMA_NAME_PROPERTY",
    "SCHEMA_VERSION_PROPERTY",
    "SILVER_COMPACTION",
    "SILVER_INCREMENTAL_SILVER_SNAPSHOT",
    "SILVER_INCREMENTAL_SOURCE",
    "SOURCE_SNAPSHOT_ID",
    "SOURCE_TABLE",
    "STREAM",
    "STREAM_CREATED_PREFIX",
    "WATERMARK_PREFIX",
    "WRITER_LEASE",
]
