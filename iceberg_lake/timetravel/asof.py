"""As-of joins: each trade with the quote prevailing at its event time (DuckDB `ASOF JOIN`).

`asof_join(lake, left, right)` pairs every row of `left` (trades) in `[start_ns, end_ns)` with the
quote of `right` of the same `by` value (symbol) prevailing at the trade's `ts_event_ns`, both
read from their pinned snapshots through the `Lake` query layer. Trades with no earlier quote
keep null quote columns: it is a left join. Which quotes are read is bounded by `lookback_ns`,
counted from the window's *start* (quotes at or after `start_ns - lookback_ns`), not from each
trade: a trade late in a long window may be paired with a quote hours old, and the same trade
may get another quote (or none) in a window that starts elsewhere. `max_age_ns` bounds it per
trade: a prevailing quote older than that before the trade counts as none (null columns).

"Prevailing" is what a consumer of a replay of the same pins (`ReplayEngine`) holds when the
trade arrives: the last quote delivered before it. A replay orders events by `ts_event_ns`, then
table position, then each table's row order (`iceberg_lake.timetravel.order`), so:

* of several quotes in one nanosecond, the last in the quotes table's replay order prevails
  (receive time, feed, then the feed's own `seq`: of one feed's quotes received together, the
  highest `seq`);
* quotes stamped in the trade's own nanosecond count when the quotes table comes first in the
  replay (`ReplayEngine(..., [quotes, trades])`), the default (`strict=False`); with
  `strict=True` they do not, which is the replay `[trades, quotes]`. Use `strict=True` for a
  venue's own book (DBN MBP-10/MBP-1 against its trades): a trade and the book update it causes
  share one `ts_event`, so without it the trade is paired with the book after its own effect.

The right-hand columns default by table: NBBO quotes give `bid_px ask_px bid_sz ask_sz`, MBP-10
gives the top of book `bid_px_1 ask_px_1 bid_sz_1 ask_sz_1`; each comes out as `quote_<name>`,
plus `quote_ts_event_ns`.

Example::

    with Lake(settings) as lake:
        tq = lake.asof_join("silver.stocks_trades", "silver.stocks_quotes", start_ns=s, end_ns=e)
        es = lake.asof_join("silver.futures_trades", "silver.futures_mbp10", start_ns=s, end_ns=e)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from iceberg_lake.engine.duck import quote_ident
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.nanos import iso_utc, require_int_ns
from iceberg_lake.timetravel.order import order_by_sql, row_order, table_row_order
from iceberg_lake.timetravel.snapshots import AsOfSpec, check_pinned_tables, pin_for

if TYPE_CHECKING:
    from iceberg_lake.timetravel.query import Lake

__all__ = ["DEFAULT_LOOKBACK_NS", "QUOTE_PREFIX", "asof_join", "asof_sql", "default_quote_columns"]

#: How far before `start_ns` the prevailing quote may lie by default (one hour).
DEFAULT_LOOKBACK_NS = 3_600 * 10**9
QUOTE_PREFIX = "quote_"


def default_quote_columns(columns: Sequence[str]) -> list[str]:
    """The right-hand columns joined by default: NBBO, or the MBP-10 top of book.

    Raises:
        TimeTravelError: the table has neither.
    """
    for names in (
        ["bid_px", "ask_px", "bid_sz", "ask_sz"],
        ["bid_px_1", "ask_px_1", "bid_sz_1", "ask_sz_1"],
    ):
        if all(n in columns for n in names):
            return names
    raise TimeTravelError("name the quote columns: the right table has no bid_px/ask_px levels")


def _relation(table: str) -> str:
    ns, name = table.split(".", 1)
    return f"{ns}.{quote_ident(name)}"


def asof_sql(
    left: str,
    right: str,
    left_columns: Sequence[str],
    right_columns: Sequence[str],
    quote_columns: Sequence[str],
    *,
    by: str,
    start_ns: int,
    end_ns: int,
    lookback_ns: int | None,
    strict: bool,
    left_order: Sequence[str] | None = None,
    right_order: Sequence[str] | None = None,
    max_age_ns: int | None = None,
) -> str:
    """The DuckDB SQL of `asof_join` over two relations.

    `left_order` and `right_order` are the tables' replay row orders (`timetravel.order.row_order`;
    None: those of undeclared tables): the quote prevailing among several in one nanosecond is
    the last in `right_order`, the trades come out in `left_order`.
    """
    for col in (by, "ts_event_ns"):
        if col not in left_columns or col not in right_columns:
            raise TimeTravelError(f"both tables need a {col!r} column for the as-of join")
    # `quote_ts_event_ns` is always in the output: asking for `ts_event_ns` again (or any column
    # twice) would write two columns of one name, a Parquet file pyarrow/pandas cannot read.
    quote_columns = [c for c in dict.fromkeys(quote_columns) if c != "ts_event_ns"]
    missing = [c for c in quote_columns if c not in right_columns]
    if missing:
        raise TimeTravelError(f"the right table has no column {missing[0]!r}")
    keep = [c for c in left_columns if c != "ts_event"]
    if right_order is None:
        right_order = row_order(None, right_columns)
    if left_order is None:
        left_order = row_order(None, left_columns)
    lo = start_ns if lookback_ns is None else start_ns - lookback_ns
    q_lo = "" if lookback_ns is None else f"ts_event_ns >= {int(lo)} AND "
    quotes = (
        f"SELECT {quote_ident(by)}, ts_event_ns, "
        + ", ".join(quote_ident(c) for c in quote_columns)
        + f" FROM {_relation(right)} WHERE {q_lo}ts_event_ns < {int(end_ns)} "
        # One quote per (key, nanosecond): the last in replay order.
        f"QUALIFY row_number() OVER (PARTITION BY {quote_ident(by)}, ts_event_ns "
        f"ORDER BY {order_by_sql(right_order, reverse=True)}) = 1"
    )
    trades = (
        "SELECT " + ", ".join(quote_ident(c) for c in keep) + f" FROM {_relation(left)} "
        f"WHERE ts_event_ns >= {int(start_ns)} AND ts_event_ns < {int(end_ns)}"
    )
    op = ">" if strict else ">="

    def pick(column: str) -> str:
        if max_age_ns is None:
            return f"q.{quote_ident(column)}"
        # A quote older than that before the trade is none (ASOF JOIN takes one inequality).
        fresh = f"q.ts_event_ns >= t.ts_event_ns - {int(max_age_ns)}"
        return f"CASE WHEN {fresh} THEN q.{quote_ident(column)} END"

    picked = "".join(
        f", {pick(c)} AS {quote_ident(QUOTE_PREFIX + c)}" for c in ["ts_event_ns", *quote_columns]
    )
    out_order = [c for c in left_order if c in keep]
    return (
        f"SELECT t.*{picked} "
        f"FROM ({trades}) t ASOF LEFT JOIN ({quotes}) q "
        f"ON t.{quote_ident(by)} = q.{quote_ident(by)} AND t.ts_event_ns {op} q.ts_event_ns "
        f"ORDER BY {order_by_sql(out_order, alias='t')}"
    )


def asof_join(
    lake: Lake,
    left: str,
    right: str,
    *,
    start_ns: int,
    end_ns: int,
    by: str = "symbol",
    quote_columns: Sequence[str] | None = None,
    lookback_ns: int | None = DEFAULT_LOOKBACK_NS,
    strict: bool = False,
    as_of: AsOfSpec = None,
    max_age_ns: int | None = None,
) -> pa.Table:
    """Every `left` row of `[start_ns, end_ns)` with the `right` row prevailing at its time.

    Read-only; idempotent for fixed pins.

    Args:
        lake: the query layer.
        left: trades table, e.g. `silver.stocks_trades` or `silver.futures_trades`.
        right: quotes table, e.g. `silver.stocks_quotes` or `silver.futures_mbp10`.
        start_ns: inclusive start of the trades' window.
        end_ns: exclusive end.
        by: the column both tables are matched on.
        quote_columns: right-hand columns to attach (default: see `default_quote_columns`);
            `ts_event_ns` and repeated names are dropped (`quote_ts_event_ns` is always there).
        lookback_ns: how far before `start_ns` (the window's start, not each trade) a
            prevailing quote may be (None: unbounded).
        strict: only quotes strictly before the trade's nanosecond (a replay listing the
            trades first); default: quotes of that nanosecond count too (quotes listed first).
        as_of: pin for both tables, or a mapping per table.
        max_age_ns: the oldest a prevailing quote may be before each trade; an older one
            counts as none (None: no limit beyond `lookback_ns`).

    Returns:
        The left rows (without the derived `ts_event`) in replay order, plus
        `quote_ts_event_ns` and `quote_<column>` for each quote column.

    Raises:
        TimeTravelError: missing key or quote columns, bad window.
        TypeError: a `*_ns` argument that is not an int (a float would lose nanoseconds).
        UnknownTableError: no such table.
    """
    for value, name in (
        (start_ns, "start_ns"),
        (end_ns, "end_ns"),
        (lookback_ns, "lookback_ns"),
        (max_age_ns, "max_age_ns"),
    ):
        require_int_ns(value, name)
    if start_ns >= end_ns:
        raise TimeTravelError(
            f"as-of join start ({iso_utc(start_ns)}) must be before end ({iso_utc(end_ns)})"
        )
    if lookback_ns is not None and lookback_ns < 0:
        raise TimeTravelError(f"the as-of lookback ({lookback_ns} ns) must not be negative")
    if max_age_ns is not None and max_age_ns < 0:
        raise TimeTravelError(f"the quote age limit ({max_age_ns} ns) must not be negative")
    check_pinned_tables(as_of, [left, right])
    pins = {left: pin_for(as_of, left), right: pin_for(as_of, right)}
    con = lake.duckdb(as_of=pins, tables=[left, right])
    try:
        describe = {
            t: [r[0] for r in con.execute(f"DESCRIBE {_relation(t)}").fetchall()]
            for t in (left, right)
        }
        cols = list(quote_columns) if quote_columns else default_quote_columns(describe[right])
        sql = asof_sql(
            left,
            right,
            describe[left],
            describe[right],
            cols,
            by=by,
            start_ns=start_ns,
            end_ns=end_ns,
            lookback_ns=lookback_ns,
            strict=strict,
            left_order=table_row_order(lake.catalog, left, describe[left]),
            right_order=table_row_order(lake.catalog, right, describe[right]),
            max_age_ns=max_age_ns,
        )
        return con.execute(sql).arrow().read_all()
    finally:
        con.close()
