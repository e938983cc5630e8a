"""Replay order: the one definition of how a table's rows are ordered in a replay.

A replay (`iceberg_lake.timetravel.replay`) orders events by `(ts_event_ns, table position, row
order within the table)`. The row order within a table is the key `row_order` returns, ascending
with nulls first: `ts_event_ns`, then the table's declared sort order, then its partition key
(`symbol`/`underlying`), then every remaining column in schema order. That is a total order over
distinct rows. Everything that has to agree with a replay about which of several events in the
same nanosecond comes first — bars' open and close (`timetravel.bars`), the prevailing quote of
an as-of join (`timetravel.asof`), the live tail's rounds — takes the key from here.

Example::

    order = row_order(catalog.definition("silver.stocks_trades"), columns)
    sql = f"SELECT * FROM t ORDER BY {order_by_sql(order)}"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from iceberg_lake.engine.duck import quote_ident

if TYPE_CHECKING:
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.tables import TableDefinition

__all__ = ["order_by_sql", "row_order", "table_row_order"]


def row_order(definition: TableDefinition | None, columns: Sequence[str]) -> list[str]:
    """The columns a replay orders one table's rows by (ascending, nulls first).

    Args:
        definition: the table's declared definition (None for an undeclared table: event time,
            then every column in schema order).
        columns: the table's columns in schema order (the pinned snapshot's); columns the
            definition declares as derived (`ts_event`) are skipped, as the replay skips them.

    Returns:
        `ts_event_ns`, the declared sort order, the partition key, then the remaining columns,
        each once and only if present in `columns`.
    """
    keys = ["ts_event_ns"]
    derived: set[str] = set()
    if definition is not None:
        keys.extend(definition.sort_order)
        if definition.partition_key:
            keys.append(definition.partition_key)
        derived = {c.name for c in definition.columns if c.derived_from}
    present = [c for c in columns if c not in derived]
    keys.extend(present)
    return [k for k in dict.fromkeys(keys) if k in present]


def table_row_order(catalog: LakeCatalog, table: str, columns: Sequence[str]) -> list[str]:
    """`row_order` of `table` (its declared definition, if the registry has one)."""
    definition = catalog.registry.get(table) if table in catalog.registry else None
    return row_order(definition, columns)


def order_by_sql(order: Sequence[str], *, reverse: bool = False, alias: str = "") -> str:
    """A DuckDB `ORDER BY` list for `order` (replay order; `reverse`: last event first).

    Args:
        order: columns from `row_order`.
        reverse: the exact reverse (descending, nulls last).
        alias: a relation alias to qualify the columns with (`t` → `t."ts_event_ns"`).
    """
    direction = "DESC NULLS LAST" if reverse else "ASC NULLS FIRST"
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{quote_ident(c)} {direction}" for c in order)
