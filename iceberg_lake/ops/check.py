"""Data-quality checks over a time window, read-only: `lake check`.

Each check counts rows of one table whose event time (`ts_event_ns`) lies in `[since, until)`,
at one pinned snapshot per table, through the lake's DuckDB query layer (a sandboxed `Lake`: the
checks read the warehouse and nothing else). A check applies to a table when the table has the
columns it needs; nothing is written anywhere.

Checks:

- `seq_gap`: sequence numbers missing between consecutive distinct `seq` values of one `source`
  (3 → 4 → 8 counts 3). The window's edges are not gaps.
- `recv_before_event`: rows with `ts_recv_ns < ts_event_ns` (received before they happened).
- `ts_event_mismatch`: rows whose partition column `ts_event` is not `ts_event_ns` in
  microseconds. The lake's writers derive it; an engine's write (a Spark `INSERT`) may not, and
  such a row is counted by queries but missed by every replay window, which reads both.
- `crossed_book`: quotes with `bid_px > ask_px`, MBP-10 with `bid_px_1 > ask_px_1`, both sides
  present (> 0). A locked book (equal) is not counted.
- `out_of_range`: rows with any value outside its domain; `detail` per column. A column's domain
  is what `catalog/` declares for it (`enum`, `ge`/`gt`/`le`, an int8/int16 `spec_type`; the
  writers enforce the same), plus "finite" for a bounded float; a column that declares nothing
  falls back to `OUT_OF_RANGE` (prices > 0, sizes >= 0, ...).
- `duplicates`: rows beyond the first of each event identity, by the Silver dedup key
  (`iceberg_lake.silver.dedup.key_expression` over the table's declared `dedup_columns`):
  duplicates still in Bronze. A Silver table must show 0.

Example::

    report = check_tables(Lake(settings, sandbox=True), ["bronze.stocks_quotes"],
                          since_ns=..., until_ns=...)
    for row in report.rows:
        print(row.table, row.check, row.count, row.detail)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from iceberg_lake.engine.duck import quote_ident, quote_str
from iceberg_lake.exceptions import LakeError, UnknownTableError
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.silver.dedup import key_expression
from iceberg_lake.tables.definitions import TableDefinition
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.snapshots import AsOfSpec

__all__ = ["CHECKS", "OUT_OF_RANGE", "CheckReport", "CheckRow", "check_tables"]

#: Every check, in report order.
CHECKS = (
    "seq_gap",
    "recv_before_event",
    "ts_event_mismatch",
    "crossed_book",
    "out_of_range",
    "duplicates",
)

_PRICE = "({c} <= 0 OR NOT isfinite({c}))"
_NON_NEGATIVE_FLOAT = "({c} < 0 OR NOT isfinite({c}))"
_NON_NEGATIVE = "({c} < 0)"
_LEVELS = range(1, 11)

#: Fallback domains for columns `catalog/` declares no constraint for: column → SQL condition
#: (`{c}` is the quoted column) true when a value is out of range. NULLs are never out of range
#: (a missing side of a quote is allowed).
OUT_OF_RANGE: dict[str, str] = {
    "price": _PRICE,
    "strike": _PRICE,
    "bid_px": _NON_NEGATIVE_FLOAT,
    "ask_px": _NON_NEGATIVE_FLOAT,
    "opt_bid": _NON_NEGATIVE_FLOAT,
    "opt_ask": _NON_NEGATIVE_FLOAT,
    "implied_volatility": _NON_NEGATIVE_FLOAT,
    "size": _NON_NEGATIVE,
    "bid_sz": _NON_NEGATIVE,
    "ask_sz": _NON_NEGATIVE,
    "open_interest": _NON_NEGATIVE,
    "aggressor": "({c} NOT IN (-1, 0, 1))",
    "right": "({c} NOT IN ('C', 'P'))",
    **{f"bid_px_{i}": _NON_NEGATIVE_FLOAT for i in _LEVELS},
    **{f"ask_px_{i}": _NON_NEGATIVE_FLOAT for i in _LEVELS},
    **{f"bid_sz_{i}": _NON_NEGATIVE for i in _LEVELS},
    **{f"ask_sz_{i}": _NON_NEGATIVE for i in _LEVELS},
}

#: (bid, ask) column pairs whose crossing is a crossed book: top of book for quotes and MBP-10.
_BOOK_SIDES = (("bid_px", "ask_px"), ("bid_px_1", "ask_px_1"))
_SKIPPED_TABLES = frozenset({"bronze.dead_letters"})


@dataclass(frozen=True)
class CheckRow:
    """The result of one check on one table."""

    table: str
    check: str
    count: int
    rows: int
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "table": self.table,
            "check": self.check,
            "count": self.count,
            "rows": self.rows,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class CheckReport:
    """All checks of a run, with the window and the snapshot each table was read at."""

    rows: list[CheckRow]
    since_ns: int | None
    until_ns: int | None
    snapshots: dict[str, int | None] = field(default_factory=dict)

    @property
    def issues(self) -> int:
        """The sum of all counts."""
        return sum(r.count for r in self.rows)

    def count(self, table: str, check: str) -> int:
        """The count of one check on one table (0 when it did not apply)."""
        return next((r.count for r in self.rows if r.table == table and r.check == check), 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: window, snapshots, checks, total."""
        return {
            "since_ns": self.since_ns,
            "until_ns": self.until_ns,
            "snapshots": self.snapshots,
            "issues": self.issues,
            "checks": [r.as_dict() for r in self.rows],
        }


def check_tables(
    lake: Lake,
    tables: Iterable[str] | None = None,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    as_of: AsOfSpec = None,
) -> CheckReport:
    """Run every applicable check on each table over `[since_ns, until_ns)` of `ts_event_ns`.

    Read-only and repeatable: each table is read at one snapshot (current, or `as_of`), named in
    the report.

    Args:
        lake: the query layer (`Lake(settings, sandbox=True)` is what `lake check` uses).
        tables: tables to check (default: every Bronze, Silver and Gold table but dead letters).
        since_ns: window start, inclusive (default: unbounded).
        until_ns: window end, exclusive (default: unbounded).
        as_of: pin(s) as in `Lake.duckdb`.

    Returns:
        One row per (table, applicable check), in table order then `CHECKS` order.

    Raises:
        UnknownTableError: a table is not in the catalog.
        LakeError: the window is empty, or a table cannot be read.
    """
    if since_ns is not None and until_ns is not None and until_ns <= since_ns:
        raise LakeError("the window is empty: --until must be after --since")
    existing = lake.catalog.existing_tables()
    if tables is None:
        wanted = [t for t in existing if t not in _SKIPPED_TABLES]
    else:
        wanted = list(dict.fromkeys(tables))
        for ident in wanted:
            if ident not in existing:
                lake.catalog.load_table(ident)  # raises a clear UnknownTableError
                raise UnknownTableError(f"no table '{ident}' in the catalog")
    con = lake.duckdb(as_of=as_of, tables=wanted)
    try:
        out: list[CheckRow] = []
        for ident in wanted:
            out.extend(_check_table(lake, con, ident, since_ns, until_ns))
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LakeError(f"check failed: {first}") from None
    finally:
        con.close()
    return CheckReport(out, since_ns, until_ns, dict(lake.last_pins))


def _check_table(
    lake: Lake,
    con: duckdb.DuckDBPyConnection,
    ident: str,
    since_ns: int | None,
    until_ns: int | None,
) -> list[CheckRow]:
    table = lake.catalog.load_table(ident)
    fields = {f.name: f.field_type for f in table.schema().fields}
    if "ts_event_ns" not in fields:
        return []
    ns, name = ident.split(".", 1)
    source = f"{ns}.{quote_ident(name)}"
    conditions = []
    if since_ns is not None:
        conditions.append(f"ts_event_ns >= {int(since_ns)}")
    if until_ns is not None:
        conditions.append(f"ts_event_ns < {int(until_ns)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    window = f"(SELECT * FROM {source} {where})"

    aggregates = ["count(*)"]
    labels: list[str] = []
    if {"ts_recv_ns", "ts_event_ns"} <= fields.keys():
        aggregates.append("count(*) FILTER (WHERE ts_recv_ns < ts_event_ns)")
        labels.append("recv_before_event")
    if "ts_event" in fields:
        # spark13: a Spark INSERT with another ts_event was in Silver and in no replay.
        aggregates.append("count(*) FILTER (WHERE epoch_us(ts_event) <> ts_event_ns // 1000)")
        labels.append("ts_event_mismatch")
    sides = [(b, a) for b, a in _BOOK_SIDES if {b, a} <= fields.keys()]
    if sides:
        bid, ask = (quote_ident(c) for c in sides[0])
        aggregates.append(f"count(*) FILTER (WHERE {bid} > 0 AND {ask} > 0 AND {bid} > {ask})")
        labels.append("crossed_book")
    definition = lake.catalog.registry.get(ident) if ident in lake.catalog.registry else None
    domains = range_rules(definition, fields)
    ranged = list(domains)
    rules = list(domains.values())
    if rules:
        # NULL in a rule is "unknown": coalesce so one NULL column cannot hide another's value.
        any_rule = " OR ".join(f"coalesce({r}, false)" for r in rules)
        aggregates.append(f"count(*) FILTER (WHERE {any_rule})")
        labels.append("out_of_range")
        aggregates += [f"count(*) FILTER (WHERE {r})" for r in rules]
    values = con.execute(f"SELECT {', '.join(aggregates)} FROM {window}").fetchone()
    assert values is not None
    total = int(values[0])
    found = dict(zip(labels, (int(v) for v in values[1 : 1 + len(labels)]), strict=True))
    per_column = {c: int(v) for c, v in zip(ranged, values[1 + len(labels) :], strict=True) if v}

    rows: dict[str, CheckRow] = {}
    if {"seq", "source"} <= fields.keys():
        rows["seq_gap"] = _seq_gaps(con, ident, window, total)
    for label, count in found.items():
        detail = ""
        if label == "out_of_range" and per_column:
            detail = ", ".join(f"{c}: {n}" for c, n in per_column.items())
        elif label == "crossed_book" and count:
            detail = f"{sides[0][0]} > {sides[0][1]}"
        rows[label] = CheckRow(ident, label, count, total, detail)
    # The declared dedup columns under their current names (a rename keeps the field).
    history = NameHistory(table.schemas().values())
    declared = definition.dedup_columns if definition else ()
    key = [k for k in (history.resolve(c, table.schema()) for c in declared) if k is not None]
    if key and definition is not None and len(key) == len(declared):
        rows["duplicates"] = _duplicates(con, ident, window, total, key, fields)
    return [rows[c] for c in CHECKS if c in rows]


def _seq_gaps(con: duckdb.DuckDBPyConnection, ident: str, window: str, total: int) -> CheckRow:
    missing, gaps, largest, sources = con.execute(
        f"""
        WITH s AS (SELECT DISTINCT source, seq FROM {window} WHERE seq IS NOT NULL),
        d AS (
            SELECT source, seq - lag(seq) OVER (PARTITION BY source ORDER BY seq) - 1 AS missing
            FROM s
        )
        SELECT coalesce(sum(missing), 0), count(*), coalesce(max(missing), 0),
               string_agg(DISTINCT source, ', ' ORDER BY source)
        FROM d WHERE missing > 0
        """
    ).fetchone()  # type: ignore[misc]
    detail = f"{gaps} gap(s), largest {largest}, source(s): {sources}" if gaps else ""
    return CheckRow(ident, "seq_gap", int(missing), total, detail)


def _duplicates(
    con: duckdb.DuckDBPyConnection,
    ident: str,
    window: str,
    total: int,
    key: list[str],
    fields: dict[str, Any],
) -> CheckRow:
    exprs = ", ".join(key_expression(c, fields[c]) for c in key)
    extra, groups = con.execute(
        f"SELECT coalesce(sum(n - 1), 0), count(*) FROM "
        f"(SELECT count(*) AS n FROM {window} GROUP BY {exprs} HAVING count(*) > 1)"
    ).fetchone()  # type: ignore[misc]
    detail = f"{groups} event(s) stored more than once" if groups else ""
    return CheckRow(ident, "duplicates", int(extra), total, detail)


def range_rules(definition: TableDefinition | None, fields: dict[str, Any]) -> dict[str, str]:
    """Column → SQL condition true when its value is out of range, in the table's column order.

    From the column's declaration in `catalog/` when it declares a constraint, else from
    `OUT_OF_RANGE`.
    """
    declared = {c.name: c for c in (definition.columns if definition else ())}
    out: dict[str, str] = {}
    for name, kind in fields.items():
        col = quote_ident(name)
        column = declared.get(name)
        conditions: list[str] = []
        if column is not None:
            if column.enum is not None:
                values = ", ".join(
                    quote_str(v) if isinstance(v, str) else repr(v) for v in column.enum
                )
                conditions.append(f"{col} NOT IN ({values})")
            for bound, op in ((column.ge, "<"), (column.gt, "<="), (column.le, ">")):
                if bound is not None:
                    conditions.append(f"{col} {op} {bound!r}")
            if column.spec_type in ("int8", "int16") and column.int_range is not None:
                lo, hi = column.int_range
                conditions.append(f"{col} NOT BETWEEN {lo} AND {hi}")
            if conditions and str(kind) in ("double", "float"):
                conditions.append(f"NOT isfinite({col})")
        if conditions:
            out[name] = "(" + " OR ".join(conditions) + ")"
        elif name in OUT_OF_RANGE:
            out[name] = OUT_OF_RANGE[name].format(c=col)
    return out
