"""Vectorised row validation for loaded files, with the writers' rules.

The rules are the live writers' (`iceberg_lake.ingest.decode`): required columns present, prices
finite and > 0, sizes >= 0, other floats finite, `ts_event_ns` a plausible Unix time in
nanoseconds, the partition column non-empty. The column classes (`is_price_column`,
`is_size_column`) and the time bounds are imported from there, and which columns are required
comes from the table's live schema (the declared definition), so a rule changed for the writers
changes here too. The reasons read the same as the writers' dead letters.

This module works on whole Arrow columns (one compute pass per rule) because a loaded file has
millions of rows; only the rows that fail get a per-row reason string.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iceberg_lake.ingest.decode import (
    DERIVED_TS,
    MAX_TS_NS,
    MIN_TS_NS,
    is_price_column,
    is_size_column,
)


@dataclass
class Checked:
    """The outcome of validating one batch.

    Attributes:
        good: the valid rows (nullable schema; cast to the table's schema before writing).
        good_rows: batch row index of every valid row.
        bad: `(batch row index, reason)` of every invalid row, in row order.
    """

    good: pa.Table
    good_rows: np.ndarray
    bad: list[tuple[int, str]]


def validate(
    table: pa.Table,
    required: list[str],
    partition_key: str | None,
    problems: dict[int, str] | None = None,
) -> Checked:
    """Check every row of `table` (the target table's columns) with the writers' rules.

    Args:
        table: the converted rows.
        required: the required columns of the live table (the derived `ts_event` excluded).
        partition_key: the identity-partition column that must be non-empty (`symbol`).
        problems: rows already known to be bad (reader or conversion problems); first reason wins.

    Returns:
        The valid rows and the reasons of the invalid ones.
    """
    n = table.num_rows
    reasons: dict[int, str] = dict(problems or {})
    for name in required:
        if name == DERIVED_TS or name not in table.column_names:
            continue
        arr = table.column(name)
        if arr.null_count:
            _flag(reasons, pc.is_valid(arr), lambda _v, c=name: f"missing required field '{c}'")
    for name in table.column_names:
        if name == DERIVED_TS:
            continue
        arr = table.column(name)
        if arr.null_count == n:
            continue
        if is_price_column(name) and pa.types.is_floating(arr.type):
            ok = pc.and_(pc.is_finite(arr), pc.greater(arr, 0.0))
            _flag(reasons, ok, _with_value(arr, f"{name} must be a finite number > 0"))
        elif is_size_column(name) and pa.types.is_integer(arr.type):
            _flag(reasons, pc.greater_equal(arr, 0), _with_value(arr, f"{name} must be >= 0"))
        elif pa.types.is_floating(arr.type):
            _flag(reasons, pc.is_finite(arr), _with_value(arr, f"{name} must be a finite number"))
    if "ts_event_ns" in table.column_names:
        ts = table.column("ts_event_ns")
        ok = pc.and_(pc.greater_equal(ts, MIN_TS_NS), pc.less(ts, MAX_TS_NS))
        reason = "ts_event_ns is not a plausible Unix time in nanoseconds"
        _flag(reasons, ok, _with_value(ts, reason))
    if partition_key and partition_key in table.column_names:
        key = table.column(partition_key)
        if pa.types.is_string(key.type) or pa.types.is_large_string(key.type):
            ok = pc.greater(pc.utf8_length(key), 0)
            _flag(reasons, ok, lambda _v: f"{partition_key} is empty")
    if not reasons:
        return Checked(table, np.arange(n, dtype=np.int64), [])
    keep = np.ones(n, dtype=bool)
    bad_rows = np.fromiter(reasons.keys(), dtype=np.int64, count=len(reasons))
    keep[bad_rows] = False
    good_rows = np.flatnonzero(keep)
    good = table.filter(pa.array(keep))
    return Checked(good, good_rows, sorted(reasons.items()))


def _with_value(arr: pa.ChunkedArray | pa.Array, reason: str):  # type: ignore[no-untyped-def]
    def text(row: int) -> str:
        return f"{reason}, got {arr[row].as_py()!r}"

    return text


def _flag(reasons: dict[int, str], ok: pa.ChunkedArray | pa.Array, reason) -> None:  # type: ignore[no-untyped-def]
    """Record `reason(row)` for rows where `ok` is false (null `ok` = null value: not this rule)."""
    failed = pc.invert(pc.fill_null(ok, True))
    if not pc.any(failed).as_py():
        return
    if isinstance(failed, pa.ChunkedArray):
        failed = failed.combine_chunks()
    for row in np.flatnonzero(failed.to_numpy(zero_copy_only=False)):
        r = int(row)
        if r not in reasons:
            reasons[r] = reason(r)
