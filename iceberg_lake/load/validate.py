"""Vectorised row validation for loaded files, with the live writers' rules.

The rules are the writers' (`iceberg_lake.ingest.decode`), taken from there, not restated: each
live column's rule comes from the decoder's `column_rule` (the declared bounds, enumerations,
integer widths and defaults of `catalog/`, else the defaults by name: prices finite and > 0,
sizes >= 0), which columns are required comes from the live schema, and the event-time bounds
and partition-value limits are the decoder's constants. The reasons read like the writers' dead
letters (`tests/test_load_validation.py` feeds the same events to both and compares).

This module works on whole Arrow columns (one compute pass per rule) because a loaded file has
millions of rows; only the rows that fail get a per-row reason string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema

from iceberg_lake.ingest.decode import (
    CONTROL_CHARS,
    DERIVED_TS,
    MAX_PARTITION_VALUE_BYTES,
    MAX_TS_NS,
    MIN_TS_NS,
    ColumnRule,
    column_rule,
)
from iceberg_lake.tables import registry


def column_rules(identifier: str, schema: Schema) -> dict[str, ColumnRule]:
    """The writers' rule of every live column of `identifier`."""
    declared = {}
    if identifier in registry():
        declared = {c.name: c for c in registry().get(identifier).columns}
    return {
        f.name: column_rule(f.name, f.field_type, declared.get(f.name))
        for f in schema.fields
        if f.name != DERIVED_TS
    }


@dataclass
class Checked:
    """The outcome of validating one batch.

    Attributes:
        good: the valid rows (nullable schema; cast to the table's schema before writing).
        bad: `(batch row index, reason)` of every invalid row, in row order.
    """

    good: pa.Table
    bad: list[tuple[int, str]]


class Validator:
    """Checks converted rows of one table with the writers' rules.

    Args:
        identifier: the table (`bronze.stocks_trades`).
        schema: its live Iceberg schema.
        partition_key: the identity-partition column (`symbol`), if any.
    """

    def __init__(self, identifier: str, schema: Schema, partition_key: str | None) -> None:
        self.rules = column_rules(identifier, schema)
        self.required = [f.name for f in schema.fields if f.required and f.name != DERIVED_TS]
        self.partition_key = partition_key

    def check(self, table: pa.Table, problems: dict[int, str] | None = None) -> Checked:
        """Check every row; rows already known to be bad (`problems`) keep their first reason.

        Declared defaults fill missing values first, as the writers do.
        """
        n = table.num_rows
        reasons: dict[int, str] = dict(problems or {})
        table = self._defaults(table)
        for name in self.required:
            if name in table.column_names and table.column(name).null_count:
                _flag(
                    reasons,
                    pc.is_valid(table.column(name)),
                    _fixed(f"missing required field '{name}'"),
                )
        for name, rule in self.rules.items():
            if name not in table.column_names:
                continue
            arr = table.column(name)
            if arr.null_count == n:
                continue
            self._check_column(arr, rule, reasons)
        if "ts_event_ns" in table.column_names:
            ts = table.column("ts_event_ns")
            ok = pc.and_(pc.greater_equal(ts, MIN_TS_NS), pc.less(ts, MAX_TS_NS))
            reason = "ts_event_ns is not a plausible Unix time in nanoseconds"
            _flag(reasons, ok, _with_value(ts, reason))
        self._check_partition_key(table, reasons)
        if not reasons:
            return Checked(table, [])
        keep = np.ones(n, dtype=bool)
        keep[np.fromiter(reasons.keys(), dtype=np.int64, count=len(reasons))] = False
        return Checked(table.filter(pa.array(keep)), sorted(reasons.items()))

    def _defaults(self, table: pa.Table) -> pa.Table:
        for name, rule in self.rules.items():
            if rule.default is None or name not in table.column_names:
                continue
            i = table.column_names.index(name)
            column = table.column(i)
            if column.null_count:
                filled = pc.fill_null(column, pa.scalar(rule.default, column.type))
                table = table.set_column(i, table.field(i), filled)
        return table

    @staticmethod
    def _check_column(arr: Any, rule: ColumnRule, reasons: dict[int, str]) -> None:
        name = rule.name
        if rule.enum:
            allowed = pa.array(list(rule.enum)).cast(arr.type)
            ok = pc.is_in(arr, value_set=allowed)
            ok = pc.if_else(pc.is_null(arr), pa.scalar(None, pa.bool_()), ok)
            _flag(reasons, ok, _with_value(arr, f"{name} must be one of {list(rule.enum)}"))
        if pa.types.is_floating(arr.type):
            ok, text = rule.float_check(arr)
            _flag(reasons, ok, _with_value(arr, text))
        elif pa.types.is_integer(arr.type):
            if rule.int_range is not None:
                lo, hi = rule.int_range
                ok = pc.and_(pc.greater_equal(arr, lo), pc.less_equal(arr, hi))
                _flag(reasons, ok, _with_value(arr, f"{name} must be between {lo} and {hi}"))
            ok = rule.bounds_mask(arr)
            if ok is not None:
                _flag(reasons, ok, _with_value(arr, f"{name} must be {rule.bounds_text()}"))

    def _check_partition_key(self, table: pa.Table, reasons: dict[int, str]) -> None:
        name = self.partition_key
        if not name or name not in table.column_names:
            return
        key = table.column(name)
        if not (pa.types.is_string(key.type) or pa.types.is_large_string(key.type)):
            return
        _flag(reasons, pc.greater(pc.utf8_length(key), 0), _fixed(f"{name} is empty"))
        ok = pc.less_equal(pc.binary_length(key), MAX_PARTITION_VALUE_BYTES)
        text = (
            f"{name} is longer than {MAX_PARTITION_VALUE_BYTES} bytes "
            "(a partition value must fit in a file path)"
        )
        _flag(reasons, ok, _with_value(key, text))
        ok = pc.invert(pc.match_substring_regex(key, CONTROL_CHARS))
        _flag(reasons, ok, _with_value(key, f"{name} contains a control character"))


def _fixed(reason: str) -> Callable[[int], str]:
    return lambda _row: reason


def _with_value(arr: Any, reason: str) -> Callable[[int], str]:
    def text(row: int) -> str:
        shown = repr(arr[row].as_py())
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{reason}, got {shown}"

    return text


def _flag(reasons: dict[int, str], ok: Any, reason: Callable[[int], str]) -> None:
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
