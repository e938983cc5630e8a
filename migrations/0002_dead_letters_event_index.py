"""Add `event_index` to the dead-letter table: one rejected event of a batched message.

A message may carry a JSON array (or NDJSON lines) of events. The writers now reject only the bad
event of such a message and store its neighbours; the dead letter then holds that event's bytes
and its position in the message, so `(stream, stream_seq, event_index)` names it uniquely (what
`lake dead-letters replay` records to re-drive it exactly once). Dead letters of whole messages
keep `event_index` null, as do all rows written before this migration.

catalog/dead_letters.toml declares the column (schema_version 2), so a lake created after this
migration already has it and this step is a recorded no-op there.
"""

from __future__ import annotations

from iceberg_lake.schema.migrations import MigrationContext


def upgrade(ctx: MigrationContext) -> None:
    """Add the optional `event_index` int column to `bronze.dead_letters`."""
    ctx.add_column(
        "bronze.dead_letters",
        "event_index",
        "int",
        doc=(
            "position of the rejected event in a batched message (raw holds that event); "
            "null for a whole message"
        ),
    )
