"""Iceberg row filters by column name, typed.

pyiceberg's predicates are pydantic models whose own `__init__(term, literal)` mypy cannot see (it
checks calls against the field-by-field `__init__` pydantic synthesizes), so `EqualTo("c", v)`
fails type checking although it is the documented call. These builders make the same predicates
with the fields spelled out, which type-checks and reads the same.
"""

from __future__ import annotations

from typing import Any

from pyiceberg.expressions import (
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
    Reference,
)
from pyiceberg.expressions.literals import literal

__all__ = ["eq", "ge", "is_null", "lt"]


def eq(column: str, value: Any) -> BooleanExpression:
    """`column = value`."""
    return EqualTo(term=Reference(column), value=literal(value))


def ge(column: str, value: Any) -> BooleanExpression:
    """`column >= value` (a timestamp column takes an ISO string)."""
    return GreaterThanOrEqual(term=Reference(column), value=literal(value))


def lt(column: str, value: Any) -> BooleanExpression:
    """`column < value` (a timestamp column takes an ISO string)."""
    return LessThan(term=Reference(column), value=literal(value))


def is_null(column: str) -> BooleanExpression:
    """`column IS NULL`."""
    return IsNull(term=Reference(column))
