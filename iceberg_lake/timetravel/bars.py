"""Time bars from trades (OHLCV, VWAP, trade count) and from quotes (mid and spread OHLC).

One DuckDB `GROUP BY` over the pinned snapshot of one table (the `Lake` query layer's views, so
`as_of` takes a tag, snapshot id or time exactly as `lake query` does). No Python loop touches a
row. A bar covers `[bar_start_ns, bar_start_ns + every)`, aligned to multiples of `every` since the
Unix epoch (1-minute bars start on the minute); bars without events are not emitted. Epoch
alignment is UTC and knows no calendar: `7d` bars start on Thursdays 00:00 UTC (1970-01-01 was a
Thursday), and `1d` bars cut at 00:00 UTC, which splits a CME Globex session (17:00 Chicago to
16:00 Chicago the next day) in two. `origin_ns` moves the grid: bars then start at
`origin_ns + k * every` (a Monday 00:00 UTC for weeks; a session's open for one `1d` bar per
session). `bar_start` is the same instant as a UTC `TIMESTAMPTZ`, to the microsecond (DuckDB's
precision): for bars narrower than 1 µs (or off a whole microsecond) several bars share a
`bar_start`; `bar_start_ns` is the exact key.

Which bars a table gets is read from its columns:

* `price` and `size` (stocks/options/futures trades): `open high low close volume vwap trades`;
* `bid_px` and `ask_px` (NBBO quotes), or `bid_px_1`/`ask_px_1` (MBP-10 top of book): the OHLC
  of the mid `(bid + ask) / 2` and of the spread `ask - bid`, and `quotes` (update count), over
  two-sided quotes only (a side that is null or 0, the way feeds send an empty side, is not a
  price; such updates are not counted).

Open and close are the first and last event of the bar in replay order: `ts_event_ns`, then the
rest of the replay's row order (`iceberg_lake.timetravel.order.row_order`: the declared sort
order, the partition key, `ts_recv_ns`, `source`, `seq`, then every column in schema order,
nulls first). So when several
events share a nanosecond at the bar's edge, open and close are the events a `ReplayEngine`
consumer of the same pin sees first and last; the VWAP's sum adds in that order too, so the bar
is the same every time, to the bit.

Example::

    with Lake(settings) as lake:
        one_minute = bars(lake, "silver.stocks_trades", "1m", start_ns=s, end_ns=e, as_of="bt")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from iceberg_lake.engine.duck import quote_ident, quote_str
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.nanos import iso_utc, require_int_ns
from iceberg_lake.timetravel.order import order_by_sql, row_order, table_row_order
from iceberg_lake.timetravel.snapshots import AsOfSpec, check_pinned_tables

if TYPE_CHECKING:
    from iceberg_lake.timetravel.query import Lake

__all__ = ["bar_kind", "bars", "bars_sql", "parse_every"]

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3_600 * 10**9}
_UNITS["d"] = 24 * _UNITS["h"]
_EVERY = re.compile(r"^\s*(\d+)\s*(ns|us|ms|s|m|min|h|d)\s*$")
#: The widest bar: one week. Bars are fixed widths aligned to the epoch, so wider "bars"
#: (months, years) would not be calendar periods anyway; and the bound keeps the SQL's
#: `ts // width * width` far from int64 overflow (DuckDB refuses widths past ~106,000 days).
MAX_EVERY_NS = 7 * _UNITS["d"]


def parse_every(every: str | int) -> int:
    """A bar width: `5s`, `1m` (or `1min`), `15m`, `1h`, `1d`, `250ms`, or nanoseconds.

    Raises:
        TimeTravelError: not a positive width, or wider than 7 days (`MAX_EVERY_NS`).
    """
    if isinstance(every, int):
        width = every
    else:
        match = _EVERY.match(every)
        if not match:
            raise TimeTravelError(f"invalid bar width {every!r} (e.g. 5s, 1m, 15m, 1h)")
        unit = "m" if match.group(2) == "min" else match.group(2)
        width = int(match.group(1)) * _UNITS[unit]
    if width <= 0:
        raise TimeTravelError(f"bar width must be positive, got {every!r}")
    if width > MAX_EVERY_NS:
        raise TimeTravelError(f"bar width {every!r} is more than the maximum of 7d")
    return width


def bar_kind(columns: list[str]) -> tuple[str, str, str]:
    """(`trades` | `quotes`, first column, second column) for a table's columns.

    Raises:
        TimeTravelError: the table has neither trades nor quotes columns.
    """
    if "price" in columns and "size" in columns:
        return "trades", "price", "size"
    for bid, ask in (("bid_px", "ask_px"), ("bid_px_1", "ask_px_1")):
        if bid in columns and ask in columns:
            return "quotes", bid, ask
    raise TimeTravelError(
        "bars need trades (price, size) or quotes (bid_px/ask_px or bid_px_1/ask_px_1)"
    )


def bars_sql(
    relation: str,
    columns: list[str],
    every_ns: int,
    start_ns: int | None,
    end_ns: int | None,
    by: str | None,
    order: list[str] | None = None,
    origin_ns: int = 0,
    symbols: Sequence[str] | None = None,
) -> str:
    """The DuckDB SQL of `bars` over `relation` (a view or table expression).

    `order` is the table's replay row order (`timetravel.order.row_order`; None: that of an
    undeclared table with `columns`): open is the first event of a bar in it, close the last.
    Bars start at `origin_ns + k * every_ns` (default: multiples of `every_ns` since the epoch).
    `symbols`: only rows of these symbols (None: all).
    """
    kind, a, b = bar_kind(columns)
    if by is not None and by not in columns:
        groups = [c for c in ("symbol", "underlying", "option_symbol") if c in columns]
        hint = f" (this table groups by {', '.join(groups)})" if groups else ""
        raise TimeTravelError(f"cannot group bars by {by!r}: no such column{hint}")
    if symbols is not None and "symbol" not in columns:
        raise TimeTravelError("cannot pick symbols: the table has no symbol column")
    key = order_by_sql(order if order is not None else row_order(None, columns))
    # Only the origin's offset within one width matters; kept in [0, every) so the grid is the
    # same for any origin on it and `ts - offset` stays non-negative for real event times.
    offset = int(origin_ns) % every_ns
    start = (
        f"(ts_event_ns // {every_ns}) * {every_ns}"
        if offset == 0
        else f"((ts_event_ns - {offset}) // {every_ns}) * {every_ns} + {offset}"
    )
    group = [f"{quote_ident(by)}"] if by else []
    # AT TIME ZONE 'UTC' makes it a TIMESTAMPTZ of that instant: JSON shows `+00:00` and Arrow,
    # Parquet and pandas carry the UTC zone (a naive timestamp left readers to guess).
    # Names of the inner query's own columns that no table column has (one named like them
    # would otherwise be read instead).
    bar_ns, rn = _unused("__bar_start_ns", columns), _unused("__bar_rn", columns)
    stamp = f"make_timestamp({bar_ns} // 1000) AT TIME ZONE 'UTC'"
    select = [*group, f"{bar_ns} AS bar_start_ns", f"{stamp} AS bar_start"]
    # Each row's place in the replay order (`rn`), from ONE sort of the window's rows:
    # open and close are the rows with the smallest and largest `rn` of a bar, and the
    # VWAP's float sum adds in that order, so it is the same every run (DuckDB's parallel `sum`
    # combines partial sums in whatever order threads finish). Ordering each aggregate by the
    # full row order instead sorted every bar three times over: 1.65x slower, same values.
    if kind == "trades":
        px, sz = quote_ident(a), quote_ident(b)
        select += [
            f"arg_min({px}, {rn}) AS open",
            f"max({px}) AS high",
            f"min({px}) AS low",
            f"arg_max({px}, {rn}) AS close",
            f"sum({sz})::BIGINT AS volume",
            f"sum({px} * {sz} ORDER BY {rn}) / nullif(sum({sz}), 0) AS vwap",
            "count(*) AS trades",
        ]
        valid = f"{px} IS NOT NULL"
    else:
        bid, ask = quote_ident(a), quote_ident(b)
        mid, spread = f"(({bid} + {ask}) / 2)", f"({ask} - {bid})"
        for name, expr in (("mid", mid), ("spread", spread)):
            select += [
                f"arg_min({expr}, {rn}) AS {name}_open",
                f"max({expr}) AS {name}_high",
                f"min({expr}) AS {name}_low",
                f"arg_max({expr}, {rn}) AS {name}_close",
            ]
        select.append("count(*) AS quotes")
        # A side a feed sends empty is stored as 0 (docs/ingest.md), like a missing one as null:
        # neither is a price, and a mid or spread with it would be half the other side's.
        valid = f"{bid} IS NOT NULL AND {ask} IS NOT NULL AND {bid} <> 0 AND {ask} <> 0"
    where = [valid]
    if symbols is not None:
        where.append(f"symbol IN ({', '.join(quote_str(x) for x in symbols) or 'NULL'})")
    if start_ns is not None:
        where.append(f"ts_event_ns >= {int(start_ns)}")
    if end_ns is not None:
        where.append(f"ts_event_ns < {int(end_ns)}")
    numbered = (
        f"SELECT *, {start} AS {bar_ns}, row_number() OVER (ORDER BY {key}) AS {rn} "
        f"FROM {relation} WHERE {' AND '.join(where)}"
    )
    keys = ", ".join([*group, bar_ns])
    return f"SELECT {', '.join(select)} FROM ({numbered}) GROUP BY {keys} ORDER BY {keys}"


def bars(
    lake: Lake,
    table: str,
    every: str | int,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    by: str | None = "symbol",
    as_of: AsOfSpec = None,
    origin_ns: int = 0,
    symbols: Sequence[str] | None = None,
) -> pa.Table:
    """Time bars of `table` over `[start_ns, end_ns)` at its pinned snapshot.

    Read-only; idempotent for a fixed pin.

    Args:
        lake: the query layer.
        table: e.g. `silver.stocks_trades`, `silver.stocks_quotes`, `silver.futures_mbp10`.
        every: bar width (`5s`, `1m`, …; see `parse_every`).
        start_ns: inclusive start (None: from the first event).
        end_ns: exclusive end (None: to the last event).
        by: group column (`symbol`, `underlying`, `option_symbol`), or None for one series.
        as_of: pin (tag, snapshot id, time, or per-table mapping).
        origin_ns: a time on the bars' grid: bars start at `origin_ns + k * every` (default the
            epoch: 00:00 UTC for `1d`, Thursday 00:00 UTC for `7d`).
        symbols: only these symbols (a list, or one symbol as a string; None: every
            symbol), e.g. one contract's session bar with `by=None`.

    Returns:
        One row per (group, bar), ordered by group then bar start; columns as in the module doc.

    Raises:
        TimeTravelError: bad width, a window whose start is not before its end, a table
            without trades/quotes columns, unknown group column. A window without events gives
            no rows (the result's schema stays).
        TypeError: a `*_ns` argument that is not an int (a float would lose nanoseconds).
        UnknownTableError: no such table.
    """
    for value, name in ((start_ns, "start_ns"), (end_ns, "end_ns"), (origin_ns, "origin_ns")):
        require_int_ns(value, name)
    width = parse_every(every)
    if isinstance(symbols, str):  # `symbols="AAPL"` is one symbol, not four letters
        symbols = [symbols]
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise TimeTravelError(
            f"bars start ({iso_utc(start_ns)}) must be before end ({iso_utc(end_ns)})"
        )
    check_pinned_tables(as_of, [table])
    con = lake.duckdb(as_of=as_of, tables=[table])
    try:
        ns, name = table.split(".", 1)
        relation = f"{ns}.{quote_ident(name)}"
        columns = [r[0] for r in con.execute(f"DESCRIBE {relation}").fetchall()]
        order = table_row_order(lake.catalog, table, columns)
        sql = bars_sql(relation, columns, width, start_ns, end_ns, by, order, origin_ns, symbols)
        return con.execute(sql).arrow().read_all()
    finally:
        con.close()


def _unused(name: str, columns: Sequence[str]) -> str:
    """`name`, with more leading underscores until no column of `columns` has it (DuckDB binds
    names case-insensitively, so `__BAR_RN` counts as `__bar_rn`)."""
    taken = {c.lower() for c in columns}
    while name.lower() in taken:
        name = "_" + name
    return name
