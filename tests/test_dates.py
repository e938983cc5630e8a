"""`iceberg_lake.dates.utc_date`, the one date parser every stage uses, and `--start/--end`'s
exact ISO times. Budget: <1 s, no servers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import typer

from iceberg_lake.cli.common import parse_time_ns
from iceberg_lake.dates import utc_date
from iceberg_lake.exceptions import CompactionError, LakeError
from iceberg_lake.silver.plan import parse_date
from iceberg_lake.timetravel.readers import time_window
from iceberg_lake.timetravel.snapshots import parse_timestamp_ns

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


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2025-03-07T14:00:00.000000999Z", 1_741_356_000_000_000_999),
        ("2025-03-07T14:00:00.5", 1_741_356_000_500_000_000),
        ("2025-03-07T09:00:00.123456789-05:00", 1_741_356_000_123_456_789),
        ("2025-03-07 14:00:00,0000001+00:00", 1_741_356_000_000_000_100),
        ("2025-03-07T14:00:00Z", 1_741_356_000_000_000_000),
        ("2025-03-07", 1_741_305_600_000_000_000),
        ("1741356000000000999", 1_741_356_000_000_000_999),
    ],
)
def test_start_and_end_keep_every_fractional_digit(text: str, ns: int) -> None:
    """`--start/--end` are exact to the nanosecond (Python's `fromisoformat` keeps six digits)."""
    assert parse_time_ns(text, "--start") == ns


def test_start_finer_than_a_nanosecond_or_not_a_time_is_one_line() -> None:
    with pytest.raises(typer.BadParameter, match="more than nine fractional digits"):
        parse_time_ns("2025-03-07T14:00:00.0000000001Z", "--start")
    with pytest.raises(typer.BadParameter, match="neither Unix nanoseconds nor an ISO time"):
        parse_time_ns("soon", "--start")
    assert parse_timestamp_ns("soon") is None


def test_since_takes_unix_ns_iso_and_ages_in_every_command() -> None:
    """`check --since` refused `2h` and `dead-letters --since` refused nanoseconds (newuser5):
    one parser for both."""
    import time

    from iceberg_lake.cli.common import parse_since_ns
    from iceberg_lake.cli.dead_letters import parse_since

    ns = 1_765_895_400_123_456_789
    assert parse_since_ns(str(ns)) == ns
    assert parse_since_ns("2025-12-16T14:30:00") == 1_765_895_400_000_000_000
    before = time.time_ns()
    two_hours_ago = parse_since_ns("2h")
    assert before - 7200 * 10**9 - 10**9 < two_hours_ago <= time.time_ns() - 7200 * 10**9
    assert parse_since(str(ns)) == datetime(2025, 12, 16, 14, 30, 0, 123456, tzinfo=UTC)
    with pytest.raises(typer.BadParameter, match="looks like Unix seconds|plausible"):
        parse_since_ns("1765895400")  # seconds, not nanoseconds: refused, not read as an age
    with pytest.raises(typer.BadParameter, match="invalid --since 'soon'"):
        parse_since_ns("soon")
