"""The lake's one date parser: every `date` argument (Silver, readers, sessions, loads) goes here.

The lake's days are UTC partition days (`ts_event` is partitioned by `day` in UTC), so an aware
datetime names the UTC day it falls in: 23:30 at UTC-5 is the next UTC day. A naive datetime is
taken as UTC already (the lake's convention for naive times, see `snapshots.parse_timestamp`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from iceberg_lake.exceptions import LakeError

__all__ = ["utc_date"]


def utc_date(value: str | date, error: type[LakeError] = LakeError, what: str = "date") -> date:
    """The UTC day of `YYYY-MM-DD`, a `date` or a `datetime`.

    Args:
        value: an ISO day string, a date, or a datetime (aware: converted to UTC first; naive:
            taken as UTC).
        error: the `LakeError` subclass to raise for a bad value (each stage names its own).
        what: how the message names the value (`date`, `session date`).

    Returns:
        The day.

    Raises:
        LakeError: `error`, when `value` is not a date.
    """
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo is not None else value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise error(f"invalid {what} {value!r} (expected YYYY-MM-DD)") from None
