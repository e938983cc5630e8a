"""Nanosecond arguments: exact seconds → ns, and refusing a float where Unix ns (int) is meant.

A float cannot hold every nanosecond of a modern Unix time (2**53 ns is 104 days), and
`int(8.2 * 1e9)` is 8_199_999_999: a product just below the integer truncates down. So seconds
are converted from their decimal text, and the toolkit takes ns only as integers (quant19).
"""

from __future__ import annotations

import numbers
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from iceberg_lake.exceptions import TimeTravelError

__all__ = ["NS_PER_SECOND", "iso_utc", "require_int_ns", "seconds_ns"]

NS_PER_SECOND = 1_000_000_000


def seconds_ns(value: str | float | Decimal) -> int:
    """Seconds as exact nanoseconds: `"8.2"` is 8_200_000_000, not 8_199_999_999.

    Args:
        value: decimal text (`"8.2"`, `"1e-3"`), a `Decimal`, or a float (read as the shortest
            text that gives it back, i.e. what was typed: `8.2` → `"8.2"`).

    Returns:
        The whole number of nanoseconds.

    Raises:
        TimeTravelError: not a finite number, or finer than a nanosecond (`0.0000000001`),
            which no event time can be compared with.
    """
    if isinstance(value, Decimal):
        exact = value
    else:
        try:
            exact = Decimal(value.strip() if isinstance(value, str) else repr(value))
        except InvalidOperation:
            raise TimeTravelError(f"{value!r} is not a number of seconds") from None
    if not exact.is_finite():
        raise TimeTravelError(f"{value!r} is not a finite number of seconds")
    ns = exact * NS_PER_SECOND
    if ns != ns.to_integral_value():
        raise TimeTravelError(
            f"{value!r} seconds is not a whole number of nanoseconds (at most nine decimals)"
        )
    return int(ns)


def require_int_ns(value: object, name: str) -> None:
    """Refuse `value` unless it is an integer (or None): the toolkit's `*_ns` arguments.

    `int()` on a float took `t.timestamp() * 1e9 + 1` (1 ns after t) as t itself, silently.

    Args:
        value: the argument as given (None passes: "no bound" where the API allows it).
        name: the argument's name, for the message.

    Raises:
        TypeError: a float (or anything else that is not an integer).
    """
    if value is None or isinstance(value, numbers.Integral):
        return
    raise TypeError(
        f"{name} must be Unix nanoseconds as an int, got {type(value).__name__} {value!r} "
        "(a float cannot hold every nanosecond: build it from integers, e.g. "
        "seconds * 1_000_000_000 + nanos, or pandas.Timestamp(...).value)"
    )


def iso_utc(ns: int) -> str:
    """Unix nanoseconds as an ISO 8601 UTC timestamp, exact (the manifest's `start`/`end`).

    Whole seconds as `2024-03-11T14:00:00+00:00`, others with nine fractional digits
    (`2024-03-11T13:59:59.999999900+00:00`): `lake replay --start/--end` read either back as
    the same nanosecond. (`ns / 1e9` through a float gave 14:00:00 for 13:59:59.9999999, so a
    replay of the printed window was another window, quant19.)
    """
    seconds, fraction = divmod(ns, 1_000_000_000)
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    digits = f".{fraction:09d}" if fraction else ""
    return f"{when:%Y-%m-%dT%H:%M:%S}{digits}+00:00"
