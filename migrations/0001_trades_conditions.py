"""Add `conditions` (trade condition codes) to the stocks and futures trades tables.

Feeds such as the consolidated tape and CME time-and-sales tag each trade with condition codes
(odd lot, out of sequence, average price, ...). The writers fill the new optional string column
when a message carries `conditions` and write null when it does not; rows written before this
migration read back as null, and a snapshot taken before it still shows the old shape.

catalog/stocks_trades.toml and catalog/futures_trades.toml declare the column (schema_version 2),
so a lake created after this migration already has it and this step is a recorded no-op there.
"""

from __future__ import annotations

from iceberg_lake.schema.migrations import MigrationContext

TABLES = [
    "bronze.stocks_trades",
    "silver.stocks_trades",
    "bronze.futures_trades",
    "silver.futures_trades",
]


def upgrade(ctx: MigrationContext) -> None:
    """Add the optional `conditions` string column to the four trades tables."""
    ctx.add_column(
        TABLES,
        "conditions",
        "string",
        doc="trade condition codes as sent by the feed, comma-separated",
    )
