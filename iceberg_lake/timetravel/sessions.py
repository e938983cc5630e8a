"""Trading sessions as event-time windows, from a maintained exchange calendar.

A session is what an exchange calls one trading day, in the exchange's local time: NYSE's is
09:30–16:00 New York, CME Globex equity futures' opens at 17:00 Chicago the evening before and
closes at 16:00 Chicago. In UTC the hours move with daylight saving: NYSE's `2024-05-13` is
13:30–20:00 UTC but `2024-11-04` is 14:30–21:00 UTC; CME's `2024-05-13` opens on Sunday
2024-05-12 at 22:00 UTC, its `2024-11-04` on 2024-11-03 at 23:00 UTC; half days close early
(NYSE 13:00 New York). Replay, bars and as-of joins take a session instead of a `[start, end)`
pair, so an ES session that spans two UTC days is one window.

Calendars come from `pandas-market-calendars` (which builds on `exchange-calendars`): exchange
codes such as `XNYS`, `XNAS`, `XLON`, or the CME products `CME_Equity`, `CME_Rate`, `CMEGlobex_ES`
…; holidays, early closes and daylight-saving changes are theirs.

Example::

    window = session_window("2024-05-13", "CME_Equity")   # Session(open_ns=…, close_ns=…)
    ReplayEngine(settings, ["silver.futures_trades"], window.open_ns, window.close_ns)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from iceberg_lake.dates import utc_date
from iceberg_lake.exceptions import TimeTravelError

__all__ = ["DEFAULT_CALENDAR", "Session", "calendar_names", "session_window"]

DEFAULT_CALENDAR = "XNYS"
_NS = 1_000_000_000


@dataclass(frozen=True)
class Session:
    """One trading session: its label (trading day), calendar and `[open_ns, close_ns)`."""

    day: date
    calendar: str
    open_ns: int
    close_ns: int

    @property
    def hours(self) -> float:
        """Length in hours (6.5 for a regular NYSE day, 23 for CME Globex)."""
        return (self.close_ns - self.open_ns) / (3_600 * _NS)


@lru_cache(maxsize=1)
def calendar_names() -> tuple[str, ...]:
    """Every calendar name the installed `pandas-market-calendars` knows."""
    import pandas_market_calendars as mcal

    return tuple(sorted(mcal.get_calendar_names()))


@lru_cache(maxsize=16)
def _calendar(name: str) -> Any:
    import pandas_market_calendars as mcal

    if name not in calendar_names():
        close = [n for n in calendar_names() if n.lower().startswith(name[:3].lower())][:6]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise TimeTravelError(f"unknown trading calendar {name!r}{hint}")
    return mcal.get_calendar(name)


def _to_ns(ts: Any) -> int:
    return int(ts.value) if ts.tzinfo is not None else int(ts.tz_localize("UTC").value)


def session_window(day: str | date, calendar: str = DEFAULT_CALENDAR) -> Session:
    """The session labelled `day` on `calendar`, as a UTC nanosecond window.

    Args:
        day: the trading day (`YYYY-MM-DD` or a date; an aware datetime names the calendar's
            local day); for overnight markets the session that *closes* on that day (CME's
            convention).
        calendar: a `pandas-market-calendars` name, e.g. `XNYS` or `CME_Equity`.

    Returns:
        The session; `open_ns` inclusive, `close_ns` exclusive.

    Raises:
        TimeTravelError: unknown calendar, bad date, or no session that day (weekend, holiday).
    """
    cal = _calendar(calendar)
    if isinstance(day, datetime) and day.tzinfo is not None:
        # A session is labelled by the exchange's local day, not a UTC partition day: 20:00 in
        # New York on the 16th is the 16th's session even though it is the 17th in UTC.
        day = day.astimezone(cal.tz).date()
    label = utc_date(day, TimeTravelError, "session date")
    schedule = cal.schedule(start_date=label.isoformat(), end_date=label.isoformat())
    if schedule.empty:
        raise TimeTravelError(f"{calendar} has no trading session on {label.isoformat()}")
    row = schedule.iloc[0]
    return Session(label, calendar, _to_ns(row["market_open"]), _to_ns(row["market_close"]))
