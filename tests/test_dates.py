"""`iceberg_lake.dates.utc_date`, the one date parser every stage uses. Budget: <1 s, no servers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from iceberg_lake.dates import utc_date
from iceberg_lake.exceptions import CompactionError, LakeError
from iceberg_lake.silver.plan import parse_date
from iceberg_lake.timetravel.readers import time_window

LATE_NY = datetime(2025, 12, 16, 23, 30, tzinfo=timezone(timedelta(hours=-5)))


def test_an_aware_datetime_is_converted_to_utc_before_taking_its_day() -> None:
    assert utc_date(LATE_NY) == date(2025, 12, 17)
    assert utc_date(datetime(2025, 12, 16, 23, 30)) == date(2025, 12, 16)  # naive = UTC
    assert utc_date(" 2025-12-16 ") == utc_date(date(2025, 12, 16)) == date(2025, 12, 16)


def test_silver_and_the_readers_agree_on_the_day() -> None:
    day0 = int(datetime(2025, 12, 17, tzinfo=UTC).timestamp()) * 10**9
    assert parse_date(LATE_NY) == date(2025, 12, 17)
    assert time_window(LATE_NY, None, None) == (day0, day0 + 86_400 * 10**9)


def test_a_bad_value_raises_the_callers_error() -> None:
    with pytest.raises(CompactionError, match="invalid date 'yesterday'"):
        parse_date("yesterday")
    with pytest.raises(LakeError, match="invalid session date"):
        utc_date("16/12/2025", what="session date")
