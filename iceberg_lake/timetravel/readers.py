"""Readers with the spec's API: `BronzeReader`, `SilverReader`, `GoldReader`.

Each read names one partition value (symbol or underlying) and a UTC day, optionally narrowed to
a nanosecond range `[start_ns, end_ns)`, and returns a pandas DataFrame with the spec's columns
(the derived partition column `ts_event` is left out) sorted by event time. The day and range are
turned into predicates on the hidden partition source `ts_event` (and on `ts_event_ns`), so
Iceberg's planning skips every data file outside the partition value and the hours asked for;
`last_scan` reports how many files were read out of how many the snapshot holds.

Every read can be pinned with `snapshot_id=` or `tag=` (a reader-wide pin may be given to the
constructor). Bronze is not deduplicated: rows come back as stored, ordered by
`(ts_event_ns, ts_recv_ns)`. Silver rows are deduplicated and already sorted.

Example::

    reader = BronzeReader()
    df = reader.read_stock_trades("SPY", "2025-12-16", start_ns=..., end_ns=...)
    reader.get_available_dates("stocks/trades", "symbol=SPY")   # ["2025-12-16", ...]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
)
from pyiceberg.table import Table

from iceberg_lake.catalog import CatalogSource, as_catalog, catalog_errors
from iceberg_lake.dates import utc_date
from iceberg_lake.engine.filters import eq, ge, lt
from iceberg_lake.engine.iceberg import column_bounds, read_scan_tasks
from iceberg_lake.exceptions import TimeTravelError, UnknownTableError
from iceberg_lake.tables import BRONZE, GOLD, SILVER, TableDefinition
from iceberg_lake.timetravel.nanos import iso_utc, require_int_ns
from iceberg_lake.timetravel.snapshots import (
    AsOf,
    AsOfSpec,
    check_pinned_tables,
    pin_for,
    resolve_as_of,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BronzeReader",
    "GoldReader",
    "ScanStats",
    "SilverReader",
    "event_time_range",
    "time_window",
]

_NS_PER_US = 1_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanStats:
    """What the last read touched: proof that partition pruning happened."""

    table: str
    snapshot_id: int | None
    files_scanned: int
    files_total: int
    rows: int


def _us(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // _NS_PER_US)


def time_window(
    day: str | date | None, start_ns: int | None, end_ns: int | None
) -> tuple[int | None, int | None]:
    """The half-open nanosecond window `[lo, hi)` of a UTC day narrowed by a range.

    Raises:
        TimeTravelError: an invalid date, or `start_ns >= end_ns`.
        TypeError: `start_ns` or `end_ns` is not an int (a float would lose nanoseconds).

    A range that does not overlap the day reads nothing, as the spec's readers always did (its
    own example pairs 2025-12-16 with a 2024 range); it is logged as a WARNING naming both, so
    a typo in the date or the range does not pass silently.
    """
    require_int_ns(start_ns, "start_ns")
    require_int_ns(end_ns, "end_ns")
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise TimeTravelError(f"start ({iso_utc(start_ns)}) must be before end ({iso_utc(end_ns)})")
    lo, hi = start_ns, end_ns
    if day is not None:
        d = utc_date(day, TimeTravelError)
        d0 = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1_000_000_000
        lo = d0 if lo is None else max(lo, d0)
        hi = d0 + 86_400 * 1_000_000_000 if hi is None else min(hi, d0 + 86_400 * 1_000_000_000)
        if lo >= hi:
            log.warning(
                "the range %s does not overlap %s (the UTC day 00:00-24:00 UTC), so nothing "
                "is read: check the date and start_ns/end_ns",
                _range_text(start_ns, end_ns),
                d.isoformat(),
            )
    return lo, hi


def _range_text(start_ns: int | None, end_ns: int | None) -> str:
    """`[start, end)` as UTC times, e.g. `2024-12-16 14:30:00 UTC .. 2024-12-16 18:30:00 UTC`."""

    def at(ns: int | None) -> str:
        return "…" if ns is None else f"{_us(ns):%Y-%m-%d %H:%M:%S} UTC"

    return f"start_ns..end_ns = {at(start_ns)} .. {at(end_ns)}"


def window_filter(lo: int | None, hi: int | None) -> BooleanExpression:
    """Predicates on `ts_event` (partition pruning) and `ts_event_ns` (exact) for `[lo, hi)`."""
    expr: BooleanExpression = AlwaysTrue()
    if lo is not None:
        expr = And(expr, ge("ts_event", _us(lo).isoformat()))
        expr = And(expr, ge("ts_event_ns", lo))
    if hi is not None:
        # ts_event is ts_event_ns truncated to microseconds: include the microsecond of hi - 1.
        expr = And(expr, lt("ts_event", (_us(hi - 1) + timedelta(microseconds=1)).isoformat()))
        expr = And(expr, lt("ts_event_ns", hi))
    return expr


class _Reader:
    """Shared machinery of the tier readers."""

    namespace: str = BRONZE

    def __init__(
        self,
        settings: CatalogSource | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> None:
        self.catalog = as_catalog(settings)
        self._default_pin: AsOf = _pin(snapshot_id, tag)
        #: Files scanned vs total of the last read (None before the first read).
        self.last_scan: ScanStats | None = None

    # ---- generic API ------------------------------------------------------------------------

    def definition(self, table: str) -> TableDefinition:
        """The definition of a table of this tier named `stocks/trades`, `stocks.trades`,
        `stocks_trades` or `bronze.stocks_trades`."""
        name = table.strip()
        if "." in name and name.split(".", 1)[0] in (BRONZE, SILVER, GOLD):
            ident = name
        else:
            ident = f"{self.namespace}.{name.replace('/', '_').replace('.', '_')}"
        if ident.split(".", 1)[0] != self.namespace:
            raise UnknownTableError(
                f"{type(self).__name__} reads {self.namespace} tables, not {ident}"
            )
        return self.catalog.definition(ident)

    def read_arrow(
        self,
        table: str,
        partition_value: str | None,
        date: str | date | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Rows of one partition value and window as Arrow, sorted by event time.

        Args:
            table: table of this tier (`stocks_trades`, `stocks/trades`, ...).
            partition_value: the symbol or underlying; None = all.
            date: UTC day `YYYY-MM-DD`; None = no day bound.
            start_ns: inclusive lower bound on `ts_event_ns`.
            end_ns: exclusive upper bound on `ts_event_ns`.
            snapshot_id: read this snapshot.
            tag: read the snapshot of this tag.
            columns: columns to return (default: the spec's columns).

        Returns:
            The rows; no rows (right columns) when the table or snapshot is empty.

        Raises:
            TimeTravelError: unknown snapshot/tag, bad date or range.
            UnknownTableError: the table does not exist.
        """
        definition = self.definition(table)
        iceberg = self.catalog.load_table(definition.identifier)
        pin = _pin(snapshot_id, tag) if (snapshot_id is not None or tag) else self._default_pin
        sid = resolve_as_of(iceberg, pin)
        names = columns or _spec_columns(iceberg, definition)
        expr = window_filter(*time_window(date, start_ns, end_ns))
        if partition_value is not None and definition.partition_key:
            expr = And(eq(definition.partition_key, partition_value), expr)
        result = self._scan(iceberg, definition, sid, expr, names)
        return result

    def read(
        self, table: str, partition_value: str | None, *args: Any, **kwargs: Any
    ) -> pd.DataFrame:
        """`read_arrow` as a pandas DataFrame."""
        return self.read_arrow(table, partition_value, *args, **kwargs).to_pandas()

    def get_available_dates(
        self,
        table: str,
        partition: str | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> list[str]:
        """UTC days (`YYYY-MM-DD`, sorted) that hold data, from metadata only.

        Args:
            table: `stocks/trades`, `stocks_trades`, `bronze.stocks_trades`, ...
            partition: `symbol=SPY`, `underlying=SPY` or just `SPY`; None = any.
            snapshot_id: look at this snapshot.
            tag: look at the snapshot of this tag.
        """
        definition = self.definition(table)
        iceberg = self.catalog.load_table(definition.identifier)
        pin = _pin(snapshot_id, tag) if (snapshot_id is not None or tag) else self._default_pin
        sid = resolve_as_of(iceberg, pin)
        if sid is None:
            return []
        expr: BooleanExpression = AlwaysTrue()
        if partition and definition.partition_key:
            # Only a `key=` prefix is taken off: a symbol may hold `=` itself (`EUR=X`).
            value = partition
            for key in (definition.partition_key, "symbol", "underlying"):
                if partition.startswith(f"{key}="):
                    value = partition[len(key) + 1 :]
                    break
            expr = eq(definition.partition_key, value)
        days: set[str] = set()
        with catalog_errors(f"planning {definition.identifier}"):
            for task in iceberg.scan(row_filter=expr, snapshot_id=sid).plan_files():
                bounds = column_bounds(task.file, iceberg.schema(), "ts_event_ns")
                if bounds is not None:
                    lo, hi = bounds
                    d = _us(lo).date()
                    while d <= _us(hi).date():
                        days.add(d.isoformat())
                        d += timedelta(days=1)
        return sorted(days)

    # ---- internals --------------------------------------------------------------------------

    def _scan(
        self,
        iceberg: Table,
        definition: TableDefinition,
        sid: int | None,
        expr: BooleanExpression,
        names: list[str],
    ) -> pa.Table:
        if sid is None:
            full = _arrow_schema(iceberg)
            self.last_scan = ScanStats(definition.identifier, None, 0, 0, 0)
            return pa.schema([full.field(n) for n in names]).empty_table()
        sort_cols = _sort_columns(definition, names)
        wanted = list(dict.fromkeys([*names, *sort_cols]))
        with catalog_errors(f"reading {definition.identifier}"):
            scan = iceberg.scan(row_filter=expr, snapshot_id=sid, selected_fields=tuple(wanted))
            tasks = list(scan.plan_files())
            snap = iceberg.snapshot_by_id(sid)
            total = int(snap.summary.get("total-data-files", 0)) if snap and snap.summary else 0
            data = read_scan_tasks(iceberg, tasks, scan.projection(), expr)
        if data.num_rows:
            data = data.take(pc.sort_indices(data, [(c, "ascending") for c in sort_cols]))
        data = data.select(names)
        self.last_scan = ScanStats(definition.identifier, sid, len(tasks), total, data.num_rows)
        return data


def event_time_range(
    catalog: CatalogSource, tables: list[str], as_of: AsOfSpec = None
) -> tuple[int, int] | None:
    """The `[first, last + 1)` event-time window (Unix ns) of the tables' pinned snapshots.

    From file metadata only (`ts_event_ns` bounds); what "replay everything" needs.

    Args:
        catalog: settings or an open catalog.
        tables: table identifiers.
        as_of: one pin for all tables or a mapping per table (None: current snapshots).

    Returns:
        The window, or None when the pinned snapshots hold no rows with bounds.

    Raises:
        TimeTravelError: a pin names no snapshot or tag; UnknownTableError: no such table.
    """
    cat = as_catalog(catalog)
    check_pinned_tables(as_of, tables)
    lo: int | None = None
    hi: int | None = None
    for identifier in tables:
        iceberg = cat.load_table(identifier)
        sid = resolve_as_of(iceberg, pin_for(as_of, identifier))
        if sid is None:
            continue
        schema = iceberg.schema()
        with catalog_errors(f"planning {identifier}"):
            for task in iceberg.scan(snapshot_id=sid).plan_files():
                bounds = column_bounds(task.file, schema, "ts_event_ns")
                if bounds is not None:
                    lo = bounds[0] if lo is None else min(lo, bounds[0])
                    hi = bounds[1] if hi is None else max(hi, bounds[1])
    if lo is None or hi is None:
        return None
    return int(lo), int(hi) + 1


def _pin(snapshot_id: int | None, tag: str | None) -> AsOf:
    if snapshot_id is not None and tag:
        raise TimeTravelError("give snapshot_id or tag, not both")
    return snapshot_id if snapshot_id is not None else tag


def _arrow_schema(iceberg: Table) -> pa.Schema:
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    return schema_to_pyarrow(iceberg.schema(), include_field_ids=False)


def _spec_columns(iceberg: Table, definition: TableDefinition) -> list[str]:
    """Live columns minus derived ones (`ts_event`), in schema order."""
    derived = {c.name for c in definition.columns if c.derived_from}
    return [n for n in iceberg.schema().column_names if n not in derived]


def _sort_columns(definition: TableDefinition, names: list[str]) -> list[str]:
    """Event time first, then the declared sort order and the receive time (a stable tie-break)."""
    cols = ["ts_event_ns", *definition.sort_order]
    if "ts_recv_ns" in definition.column_names:
        cols.append("ts_recv_ns")
    return list(dict.fromkeys(cols))


class BronzeReader(_Reader):
    """Reads Bronze tables (raw, not deduplicated), sorted by `(ts_event_ns, ts_recv_ns)`."""

    namespace = BRONZE

    def read_stock_trades(
        self,
        symbol: str,
        date: str | date,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Stock trades of `symbol` on `date` (UTC), optionally within `[start_ns, end_ns)`."""
        return self.read(
            "stocks_trades", symbol, date, start_ns, end_ns, snapshot_id=snapshot_id, tag=tag
        )

    def read_stock_quotes(
        self,
        symbol: str,
        date: str | date,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Stock quotes of `symbol` on `date` (UTC), optionally within `[start_ns, end_ns)`."""
        return self.read(
            "stocks_quotes", symbol, date, start_ns, end_ns, snapshot_id=snapshot_id, tag=tag
        )

    def read_futures_trades(
        self,
        symbol: str,
        date: str | date,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Futures trades (time and sales) of `symbol` on `date` (UTC)."""
        return self.read(
            "futures_trades", symbol, date, start_ns, end_ns, snapshot_id=snapshot_id, tag=tag
        )

    def read_futures_mbp10(
        self,
        symbol: str,
        date: str | date,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Futures MBP-10 book updates of `symbol` on `date` (UTC)."""
        return self.read(
            "futures_mbp10", symbol, date, start_ns, end_ns, snapshot_id=snapshot_id, tag=tag
        )

    def read_option_trades(
        self,
        underlying: str,
        date: str | date,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Option trades on `underlying` on `date` (UTC)."""
        return self.read(
            "options_trades", underlying, date, start_ns, end_ns, snapshot_id=snapshot_id, tag=tag
        )

    def read_option_greeks(
        self,
        underlying: str,
        date: str | date,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Greeks snapshots on `underlying` on `date` (UTC; day partitions)."""
        return self.read(
            "options_greeks_snapshots",
            underlying,
            date,
            start_ns,
            end_ns,
            snapshot_id=snapshot_id,
            tag=tag,
        )


class SilverReader(BronzeReader):
    """Reads Silver tables: deduplicated, sorted by event time. Same methods as `BronzeReader`."""

    namespace = SILVER


class GoldReader(_Reader):
    """Reads `gold.levels_signals`, sorted by `(ts_event_ns, level_id)`."""

    namespace = GOLD

    def read_level_signals(
        self,
        underlying: str | None = None,
        date: str | date | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        *,
        snapshot_id: int | None = None,
        tag: str | None = None,
    ) -> pd.DataFrame:
        """Level signals of `underlying` (None: all) on `date` (UTC) within `[start_ns, end_ns)`."""
        return self.read(
            "levels_signals", underlying, date, start_ns, end_ns, snapshot_id=snapshot_id, tag=tag
        )
