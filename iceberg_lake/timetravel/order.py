"""Replay order: the one definition of how a table's rows are ordered in a replay.

A replay (`iceberg_lake.timetravel.replay`) orders events by `(ts_event_ns, table position, row
order within the table)`. The row order within a table is the key `row_order` returns, ascending
with nulls first: `ts_event_ns`, then the table's declared sort order, then its partition key
(`symbol`/`underlying`), then the arrival columns `ts_recv_ns`, `source`, `seq`, then every
remaining column in schema order. That is a total order over distinct rows. Everything that has
to agree with a replay about which of several events in the same nanosecond comes first — bars'
open and close (`timetravel.bars`), the prevailing quote of an as-of join (`timetravel.asof`),
the live tail's rounds — takes the key from here.

The rule has versions, named in every replay manifest (`tie_break`, the text of `TIE_BREAKS`), so
a manifest replays in the order it was recorded in. Rule 1 (before 2026-11-29) went from the
partition key straight to the remaining columns in schema order, which put `price` before `seq`:
events of one feed stamped in the same nanosecond and received together (flat files stamp both
times with the SIP time) came out by price, not in the feed's own sequence. Rule 2 orders them by
receive time, feed and the feed's sequence first.

Example::

    order = row_order(catalog.definition("silver.stocks_trades"), columns)
    sql = f"SELECT * FROM t ORDER BY {order_by_sql(order)}"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from iceberg_lake.engine.duck import quote_ident
from iceberg_lake.exceptions import TimeTravelError

if TYPE_CHECKING:
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.tables import TableDefinition

__all__ = [
    "TIE_BREAKS",
    "TIE_BREAK_RULE",
    "order_by_sql",
    "row_order",
    "rule_of",
    "table_row_order",
]

#: Each tie-break rule as a replay manifest names it (`tie_break`).
TIE_BREAKS = {
    1: (
        "ts_event_ns, table position, then per table: declared sort order, partition key, "
        "remaining columns in schema order (nulls first)"
    ),
    2: (
        "ts_event_ns, table position, then per table: declared sort order, partition key, "
        "ts_recv_ns, source, seq, remaining columns in schema order (nulls first)"
    ),
}
#: The rule new replays use.
TIE_BREAK_RULE = 2
#: Rule 2's arrival columns, right after the partition key: when, from which feed, and the
#: feed's own sequence decide before any value does.
_ARRIVAL = ("ts_recv_ns", "source", "seq")


def row_order(
    definition: TableDefinition | None, columns: Sequence[str], rule: int = TIE_BREAK_RULE
) -> list[str]:
    """The columns a replay orders one table's rows by (ascending, nulls first).

    Args:
        definition: the table's declared definition (None for an undeclared table: event time,
            then the arrival columns, then every column in schema order).
        columns: the table's columns in schema order (the pinned snapshot's); columns the
            definition declares as derived (`ts_event`) are skipped, as the replay skips them.
        rule: the tie-break rule (`TIE_BREAKS`); 1 only to reproduce a manifest recorded by it.

    Returns:
        `ts_event_ns`, the declared sort order, the partition key, the arrival columns
        (`ts_recv_ns`, `source`, `seq`; rule 2), then the remaining columns, each once and only
        if present in `columns`.
    """
    keys = ["ts_event_ns"]
    derived: set[str] = set()
    if definition is not None:
        keys.extend(definition.sort_order)
        if definition.partition_key:
            keys.append(definition.partition_key)
        derived = {c.name for c in definition.columns if c.derived_from}
    if rule >= 2:
        keys.extend(_ARRIVAL)
    present = [c for c in columns if c not in derived]
    keys.extend(present)
    return [k for k in dict.fromkeys(keys) if k in present]


def rule_of(tie_break: object) -> int:
    """The rule a manifest's `tie_break` text names.

    Raises:
        TimeTravelError: a text no rule of this version has (a newer lake's manifest).
    """
    for rule, text in TIE_BREAKS.items():
        if tie_break == text:
            return rule
    raise TimeTravelError(
        f"the manifest's tie-break rule is not one this version knows ({tie_break!r}); "
        "replay it with the version of iceberg_lake that wrote it"
    )


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
