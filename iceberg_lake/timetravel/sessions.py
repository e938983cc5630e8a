"""Trading sessions as event-time windows, from a maintained exchange calendar.

A session is what an exchange calls one trading day, in the exchange's local time: NYSE's is
09:30–16:00 New York, CME Globex equity futures' opens at 17:00 Chicago the evening before and
closes at 16:00 Chicago. In UTC the hours move with daylight saving: NYSE's `2024-05-13` is
13:30–20:00 UTC but `2024-11-04` is 14:30–21:00 UTC; CME's `2024-05-13` opens on Sunday
2024-05-12 at 22:00 UTC, its `2024-11-04` on 2024-11-03 at 23:00 UTC; half days close early
(NYSE 13:00 New York). Replay, bars and as-of joins take a session instead of a `[start, end)`
pair, so an ES session that spans two UTC days is one window.

Calendars come from `pandas-market-calendars` (which builds on `exchange-calendars`): exchange
codes such as `XNYS`, `NASDAQ`, `XLON`, or the CME products `CME Globex Equity` (ES, NQ: the
default for futures tables), `CME_Rate`, `CMEGlobex_Energy` …; holidays, early closes and
daylight-saving changes are theirs. Names match regardless of case, spaces and underscores.
`CME_Equity` is pandas-market-calendars' CME *pit* equity calendar: it closes equity-index half
days (2024-07-03, 11-29, 12-24) at 12:00 Chicago, 15 minutes before Globex, so the events of
those last minutes fall in no session (desk14); use `CME Globex Equity` for Globex data.

A session is `[open, close)`: a print stamped at the close (NYSE's closing cross, 16:00:00.000
New York or later) is not in it. `events_outside` counts what a session leaves out next to it
(between the previous close and the open, the close and the next open; `neighbours`).

Example::

    window = session_window("2024-05-13", "CME Globex Equity")   # Session(open_ns=…, close_ns=…)
    ReplayEngine(settings, ["silver.futures_trades"], window.open_ns, window.close_ns)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from iceberg_lake.dates import utc_date
from iceberg_lake.engine.duck import quote_ident, quote_str
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.nanos import require_int_ns
from iceberg_lake.timetravel.snapshots import AsOfSpec

if TYPE_CHECKING:
    from iceberg_lake.timetravel.query import Lake

__all__ = [
    "DEFAULT_CALENDAR",
    "FUTURES_CALENDAR",
    "Outside",
    "Session",
    "calendar_for",
    "calendar_names",
    "events_outside",
    "neighbours",
    "session_containing",
    "session_window",
]

DEFAULT_CALENDAR = "XNYS"
#: The calendar of `--session` when every table is a futures table (CME Globex equity index).
FUTURES_CALENDAR = "CME Globex Equity"
_NS = 1_000_000_000
#: Names people use that the calendar package spells otherwise.
_ALIASES = {"xnas": "NASDAQ", "cmeglobexes": FUTURES_CALENDAR, "cmeglobexequity": FUTURES_CALENDAR}


def calendar_for(tables: Sequence[str]) -> str:
    """The default calendar of a session over `tables`: `FUTURES_CALENDAR` when every one is a
    futures table (`*.futures_*`), else `DEFAULT_CALENDAR` (NYSE)."""
    if tables and all(t.rsplit(".", 1)[-1].startswith("futures_") for t in tables):
        return FUTURES_CALENDAR
    return DEFAULT_CALENDAR


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


def _folded(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def resolve_calendar(name: str) -> str:
    """The calendar package's spelling of `name` (case, spaces and underscores aside).

    Raises:
        TimeTravelError: no such calendar (one line with similar names).
    """
    names = calendar_names()
    if name in names:
        return name
    key = _folded(name)
    if key in _ALIASES:
        return _ALIASES[key]
    matches = [n for n in names if _folded(n) == key]
    if matches:
        return matches[0]
    close = [n for n in names if key[:3] and key[:3] in _folded(n)][:6]
    hint = f" (similar: {', '.join(close)})" if close else ""
    raise TimeTravelError(f"unknown trading calendar {name!r}{hint}")


@lru_cache(maxsize=16)
def _calendar(name: str) -> Any:
    import pandas_market_calendars as mcal

    return mcal.get_calendar(name)


def _to_ns(ts: Any) -> int:
    return int(ts.value) if ts.tzinfo is not None else int(ts.tz_localize("UTC").value)


def session_window(day: str | date, calendar: str = DEFAULT_CALENDAR) -> Session:
    """The session labelled `day` on `calendar`, as a UTC nanosecond window.

    Args:
        day: the trading day (`YYYY-MM-DD` or a date; an aware datetime names the calendar's
            local day, which for CME after 16:00 Chicago is not the session trading then: use
            `session_containing` for an instant); for overnight markets the session that
            *closes* on that day (CME's convention).
        calendar: a `pandas-market-calendars` name, e.g. `XNYS` or `CME Globex Equity`.

    Returns:
        The session; `open_ns` inclusive, `close_ns` exclusive.

    Raises:
        TimeTravelError: unknown calendar, bad date, or no session that day (weekend, holiday).
    """
    calendar = resolve_calendar(calendar)
    cal = _calendar(calendar)
    if isinstance(day, datetime) and day.tzinfo is not None:
        # A session is labelled by the exchange's local day, not a UTC partition day: 20:00 in
        # New York on the 16th is the 16th's session even though it is the 17th in UTC.
        day = day.astimezone(cal.tz).date()
    label = utc_date(day, TimeTravelError, "session date")
    if not date(1678, 1, 1) <= label <= date(2262, 4, 10):
        raise TimeTravelError(
            f"session {label.isoformat()} cannot be expressed in Unix nanoseconds "
            "(1678-01-01 to 2262-04-10)"
        )
    schedule = cal.schedule(start_date=label.isoformat(), end_date=label.isoformat())
    if schedule.empty:
        raise TimeTravelError(f"{calendar} has no trading session on {label.isoformat()}")
    row = schedule.iloc[0]
    return Session(label, calendar, _to_ns(row["market_open"]), _to_ns(row["market_close"]))


def session_containing(when: datetime | int, calendar: str = DEFAULT_CALENDAR) -> Session | None:
    """The session trading at `when` (an aware datetime or Unix ns), None between sessions.

    CME's evening belongs to the next day's session: 2024-03-12 18:00 Chicago is in the
    2024-03-13 session, Sunday 2024-03-10 18:00 in Monday's (desk14: `session_window` of the
    local day gave a session that had closed, or none). A session is `[open, close)` as in
    `session_window`: a lunch break inside it (XHKG) is in it.

    Raises:
        TimeTravelError: unknown calendar, or a naive datetime (its zone is unknown).
        TypeError: `when` is neither a datetime nor an int (a float would lose nanoseconds).
    """
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise TimeTravelError(f"{when.isoformat()} has no time zone: give an aware datetime")
        when_ns = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1_000
    else:
        require_int_ns(when, "when")
        when_ns = int(when)
    calendar = resolve_calendar(calendar)
    day = datetime.fromtimestamp(when_ns // _NS, tz=UTC).date()
    if not _FIRST_DAY <= day <= _LAST_DAY:
        return None
    schedule = _schedule(calendar, day - timedelta(days=3), day + timedelta(days=3))
    for label, row in schedule.iterrows():
        open_ns, close_ns = _to_ns(row["market_open"]), _to_ns(row["market_close"])
        if open_ns <= when_ns < close_ns:
            return Session(label.date(), calendar, open_ns, close_ns)
    return None


#: How far `neighbours` looks for the previous and next sessions (holidays, long weekends).
_NEIGHBOUR_DAYS = 14
#: The days pandas' nanosecond timestamps can hold (calendar schedules are pandas).
_FIRST_DAY, _LAST_DAY = date(1677, 9, 22), date(2262, 4, 10)


def _schedule(calendar: str, first: date, last: date) -> Any:
    """`calendar`'s sessions labelled `first`..`last`, kept inside pandas' range."""
    return _calendar(calendar).schedule(
        start_date=max(first, _FIRST_DAY).isoformat(), end_date=min(last, _LAST_DAY).isoformat()
    )


def neighbours(session: Session) -> tuple[int | None, int | None]:
    """`(previous close, next open)` of `session` on its calendar, in Unix ns: the gaps
    `[previous close, open)` and `[close, next open)` belong to no session (nights, weekends,
    CME's daily break, the minutes a pit calendar's half day leaves out). None: no such session
    within two weeks."""
    reach = timedelta(days=_NEIGHBOUR_DAYS)
    schedule = _schedule(session.calendar, session.day - reach, session.day + reach)
    closes = [_to_ns(t) for t in schedule["market_close"] if _to_ns(t) <= session.open_ns]
    opens = [_to_ns(t) for t in schedule["market_open"] if _to_ns(t) >= session.close_ns]
    return max(closes, default=None), min(opens, default=None)


@dataclass(frozen=True)
class Outside:
    """One table's events next to a session but in no session (`events_outside`)."""

    table: str
    #: Events in `[previous close, open)`, and the time of the last of them.
    before: int
    last_before_ns: int | None
    #: Events in `[close, next open)`, and the time of the first of them.
    after: int
    first_after_ns: int | None
    #: False: no session closed in the two weeks before (`before` counts those two weeks).
    previous_close: bool = True
    #: False: no session opens in the two weeks after (`after` counts those two weeks).
    next_open: bool = True


def events_outside(
    lake: Lake,
    tables: Sequence[str],
    session: Session,
    as_of: AsOfSpec = None,
    symbols: Sequence[str] | None = None,
) -> list[Outside]:
    """The events of `tables` between `session` and its neighbours (`neighbours`), at the
    same pins as the read they accompany: what a `--session` window leaves out next to it
    (pre- and post-market prints, a closing cross stamped at the close, a pit calendar's
    half day that closes before the market; desk14). `symbols`: only these symbols' events.

    Raises:
        LakeError: a table cannot be read (unknown table, no `ts_event_ns`, bad pin).
    """
    found_close, found_open = neighbours(session)
    opens, closes = session.open_ns, session.close_ns
    span = _NEIGHBOUR_DAYS * 86_400 * _NS
    previous_close = found_close if found_close is not None else max(opens - span, -(2**63))
    next_open = found_open if found_open is not None else min(closes + span, 2**63 - 1)
    only = f" AND symbol IN ({', '.join(quote_str(s) for s in symbols)})" if symbols else ""
    found = []
    for table in tables:
        name = ".".join(quote_ident(part) for part in table.split("."))
        sql = (
            f"SELECT count(*) FILTER (WHERE ts_event_ns < {opens}), "
            f"max(ts_event_ns) FILTER (WHERE ts_event_ns < {opens}), "
            f"count(*) FILTER (WHERE ts_event_ns >= {closes}), "
            f"min(ts_event_ns) FILTER (WHERE ts_event_ns >= {closes}) FROM {name} "
            f"WHERE ((ts_event_ns >= {previous_close} AND ts_event_ns < {opens}) "
            f"OR (ts_event_ns >= {closes} AND ts_event_ns < {next_open})){only}"
        )
        before, last, after, first = lake.query(sql, as_of).to_pylist()[0].values()
        found.append(
            Outside(
                table,
                int(before),
                last,
                int(after),
                first,
                previous_close=found_close is not None,
                next_open=found_open is not None,
            )
        )
    return found
