"""Trading-session windows and the file outputs of `lake replay` (budget ~5 s).

An ES (CME Globex equity) session opens the evening before its label: `2024-05-13` runs from
2024-05-12 22:00 UTC to 2024-05-13 21:00 UTC, so it spans two UTC days and must be one window.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from timetravel_data import append, futures
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.replay import ReplayEngine, read_manifest
from iceberg_lake.timetravel.sessions import session_window
from iceberg_lake.timetravel.snapshots import parse_timestamp

FUT = "bronze.futures_trades"
SEC = 10**9


def _ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * SEC


OPEN, CLOSE = _ns(2024, 5, 12, 22), _ns(2024, 5, 13, 21)


def test_sessions_from_the_calendars() -> None:
    es = session_window("2024-05-13", "CME_Equity")
    assert (es.open_ns, es.close_ns, es.hours) == (OPEN, CLOSE, 23.0)
    nyse = session_window("2024-05-13", "XNYS")
    assert (nyse.open_ns, nyse.close_ns) == (_ns(2024, 5, 13, 13, 30), _ns(2024, 5, 13, 20))
    with pytest.raises(TimeTravelError, match="no trading session on 2024-05-11"):
        session_window("2024-05-11", "XNYS")  # a Saturday
    with pytest.raises(TimeTravelError, match="unknown trading calendar"):
        session_window("2024-05-13", "MOON")
    with pytest.raises(TimeTravelError, match="invalid session date"):
        session_window("13/05/2024")
    # An aware datetime names the exchange's local day: 20:00 in New York on the 13th (00:00
    # UTC on the 14th) is the 13th's session.
    evening = datetime(2024, 5, 14, 0, 0, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    assert session_window(evening, "XNYS") == nyse
    assert session_window(evening.astimezone(UTC), "XNYS") == nyse


@pytest.fixture(scope="module")
def session_data(module_lake: LakeCatalog) -> dict:
    catalog, settings = module_lake, module_lake.settings
    # Every 10 minutes from 2024-05-12 20:00 to 2024-05-13 23:00 UTC (27 h, 163 trades).
    rows = futures("ES", _ns(2024, 5, 12, 20), 163, 600 * SEC)
    append(catalog.load_table(FUT), rows)
    return {"settings": settings, "rows": rows}


def test_es_session_spanning_two_utc_days_is_one_window(session_data: dict, tmp_path: Path) -> None:
    in_session = [r for r in session_data["rows"] if OPEN <= r["ts_event_ns"] < CLOSE]
    assert len(in_session) == 23 * 6
    days = {datetime.fromtimestamp(r["ts_event_ns"] / SEC, UTC).date() for r in in_session}
    assert len(days) == 2

    window = session_window("2024-05-13", "CME_Equity")
    engine = ReplayEngine(session_data["settings"], [FUT], window.open_ns, window.close_ns)
    assert [e.ts_event_ns for e in engine.events()] == [r["ts_event_ns"] for r in in_session]
    assert engine.partition_reads == 1  # 138 rows: one read window across both UTC days
    hourly = ReplayEngine(
        session_data["settings"], [FUT], window.open_ns, window.close_ns, window_rows=6
    )
    assert sum(1 for _ in hourly.events()) == len(in_session)
    assert hourly.partition_reads == 23  # hour partitions across both days


def test_cli_replay_session_to_parquet_arrow_and_ndjson(
    session_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_DATA_DIR", str(session_data["settings"].data_dir))
    runner = CliRunner()
    base = ["replay", "--tables", FUT, "--session", "2024-05-13", "--calendar", "CME_Equity"]
    hashes = {}
    for fmt in ("parquet", "arrow", "ndjson"):
        out, manifest = tmp_path / f"e.{fmt}", tmp_path / f"m-{fmt}.json"
        res = runner.invoke(
            app, [*base, "--format", fmt, "--out", str(out), "--manifest", str(manifest)]
        )
        assert res.exit_code == 0, res.output
        saved = read_manifest(manifest)
        assert (saved["start_ns"], saved["end_ns"], saved["event_count"]) == (OPEN, CLOSE, 138)
        # How the window was chosen (desk14: a calendar package's hours may change).
        assert (saved["session"], saved["calendar"]) == ("2024-05-13", "CME_Equity")
        assert saved["calendars"].startswith("pandas-market-calendars ")
        hashes[fmt] = saved["sequence_hash"]
        if fmt == "parquet":
            table = pq.read_table(out)
        elif fmt == "arrow":
            table = ipc.open_stream(out.read_bytes()).read_all()
        else:
            lines = [json.loads(x) for x in out.read_text().splitlines()]
            assert [x["ts_event_ns"] for x in lines] == table.column("ts_event_ns").to_pylist()
            continue
        assert table.column_names[0] == "table" and table.num_rows == 138
        assert set(table.column("table").to_pylist()) == {FUT}
        assert table.column("price").to_pylist()[0] == 6000.0 + 12 * 0.25
    assert len(set(hashes.values())) == 1  # one sequence, whichever output

    # --no-verify: the same rows, no hash; the manifest is named after what the replay read.
    monkeypatch.chdir(tmp_path)
    fast = tmp_path / "fast.arrow"
    res = runner.invoke(app, [*base, "--format", "arrow", "--out", str(fast), "--no-verify"])
    assert res.exit_code == 0, res.output
    assert ipc.open_stream(fast.read_bytes()).read_all().equals(table)
    assert "no sequence hash" in res.output
    (named,) = tmp_path.glob("replay-*.json")
    saved = read_manifest(named)
    assert saved["sequence_hash"] is None and saved["event_count"] == 138
    no_hash = runner.invoke(app, [*base, "--no-verify", "--out", str(fast)])
    assert no_hash.exit_code == 1 and "--no-verify" in no_hash.output

    bad = runner.invoke(app, [*base, "--format", "arrow"])
    assert bad.exit_code == 1 and "--out" in bad.output
    both = runner.invoke(app, [*base, "--start", "2024-05-13"])
    assert both.exit_code == 1 and "not both" in both.output
    bars = runner.invoke(
        app, ["bars", FUT, "--every", "1h", *base[3:], "-o", "json", "--limit", "0"]
    )
    assert bars.exit_code == 0, bars.output
    assert [b["trades"] for b in json.loads(bars.stdout)] == [6] * 23


def test_calendar_names_edges_and_the_futures_default(
    session_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """desk14: `CME_Equity` (the pit calendar) closes ES half days at 12:00 Chicago, Globex at
    12:15, so the documented calendar dropped the session's last minutes; a `--session` on a
    futures table used NYSE's hours without a word; `XNAS` was advertised and unknown; a date
    past 2262 was an internal error."""
    from iceberg_lake.timetravel.sessions import FUTURES_CALENDAR, calendar_for

    half = session_window("2024-11-29", "cme globex equity")  # names fold case and spaces
    assert half.calendar == FUTURES_CALENDAR
    assert half.close_ns == _ns(2024, 11, 29, 18, 15)  # 12:15 Chicago
    assert session_window("2024-11-29", "CME_Equity").close_ns == _ns(2024, 11, 29, 18)
    assert session_window("2024-05-13", "XNAS").calendar == "NASDAQ"
    assert calendar_for([FUT, "silver.futures_mbp10"]) == FUTURES_CALENDAR
    assert calendar_for([FUT, "silver.stocks_trades"]) == "XNYS"
    with pytest.raises(TimeTravelError, match="cannot be expressed in Unix nanoseconds"):
        session_window("2300-01-02")

    monkeypatch.setenv("LAKE_DATA_DIR", str(session_data["settings"].data_dir))
    args = ["bars", FUT, "--every", "1d", "--by", "", "--session", "2024-05-13"]
    res = CliRunner().invoke(app, [*args, "--origin", "session", "-o", "json"])
    assert res.exit_code == 0, res.output
    assert [b["trades"] for b in json.loads(res.stdout)] == [138]  # the Globex session, not NYSE's
    assert "session 2024-05-13 on CME Globex Equity: [2024-05-12T22:00:00Z" in res.stderr
    pit = CliRunner().invoke(app, [*args, "--calendar", "CME Equity", "-o", "json"])
    assert pit.exit_code == 0 and "on CME_Equity" in pit.stderr
    assert "the pit calendar" in pit.stderr  # review14b: the folded name reached it silently


def test_a_date_with_a_utc_offset_is_refused_not_read_as_a_time(session_data: dict) -> None:
    """desk14: Python's fromisoformat read `2024-03-11+05:30` as 05:30 UTC (11 h late)."""
    res = CliRunner().invoke(
        app,
        ["replay", "--tables", FUT, "--start", "2024-05-13+05:30", "--end", "2024-05-14"],
        env={"LAKE_DATA_DIR": str(session_data["settings"].data_dir)},
    )
    assert res.exit_code == 1 and "needs a time, e.g. 2024-05-13T00:00+05:30" in res.output
    with pytest.raises(TimeTravelError, match="needs a time"):  # review14b: with seconds too
        parse_timestamp("2024-03-11+05:30:00")
    assert "Traceback" not in res.output


def test_events_next_to_the_session_are_named_not_dropped_silently(
    session_data: dict, lake: LakeCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """desk14: a `--session` window leaves out what lies between sessions (a pit calendar's
    half day closed 15 minutes before Globex, a closing cross stamped at the close, pre- and
    post-market prints) and said nothing. Each command reading a session names them on
    stderr: how many on each side, the nearest one, at the pins it read."""
    from iceberg_lake.timetravel.query import Lake
    from iceberg_lake.timetravel.sessions import events_outside, neighbours

    window = session_window("2024-05-13", "CME Globex Equity")
    # Friday 16:00 Chicago, and 17:00 the same evening (CME's daily break).
    assert neighbours(window) == (_ns(2024, 5, 10, 21), _ns(2024, 5, 13, 22))
    monkeypatch.setenv("LAKE_DATA_DIR", str(session_data["settings"].data_dir))
    # The fixture's trades every 10 minutes from Sunday 20:00 UTC: 12 before the 22:00 open
    # (the last at 21:50), 6 between the 21:00 close and the 22:00 open, the rest in sessions.
    said = (
        "not in session 2024-05-13 (CME Globex Equity), left out: bronze.futures_trades has "
        "12 events between the previous close and the open (the last at "
        "2024-05-12T21:50:00.000Z) and 6 events between the close and the next open (the first "
        "at 2024-05-13T21:00:00.000Z); --start/--end takes them"
    )
    runner = CliRunner()
    out = tmp_path / "e.ndjson"
    replay = runner.invoke(
        app, ["replay", "--tables", FUT, "--session", "2024-05-13", "--out", str(out)]
    )
    assert replay.exit_code == 0, replay.output
    assert said in replay.stderr and len(out.read_text().splitlines()) == 138
    bars = runner.invoke(app, ["bars", FUT, "--every", "1h", "--session", "2024-05-13"])
    assert bars.exit_code == 0 and said in bars.stderr
    # Only the symbols asked for; a window of dates says nothing.
    other = runner.invoke(app, ["bars", FUT, "--session", "2024-05-13", "--symbols", "NQ"])
    assert other.exit_code == 0 and "not in session" not in other.stderr
    dates = runner.invoke(app, ["bars", FUT, "--start", "2024-05-13"])
    assert dates.exit_code == 0 and "not in session" not in dates.stderr
    # A replay of the manifest names them too (its recorded session and bounds).
    (manifest,) = Path.cwd().glob("replay-*.json")
    again = runner.invoke(app, ["replay", "--from-manifest", str(manifest), "--out", str(out)])
    assert again.exit_code == 0 and said in again.stderr
    # review15: on the calendar the read took. With a stocks table (empty) beside the
    # futures, that is XNYS (13:30-20:00 UTC): 105 trades before its open, 19 after.
    mixed = runner.invoke(
        app,
        ["replay", "--tables", f"{FUT},bronze.stocks_trades", "--session", "2024-05-13"]
        + ["--out", str(out)],
    )
    assert mixed.exit_code == 0 and len(out.read_text().splitlines()) == 39
    assert "(XNYS), left out: bronze.futures_trades has 105 events" in mixed.stderr
    assert "and 19 events between the close" in mixed.stderr
    asof = runner.invoke(app, ["asof", FUT, "bronze.stocks_quotes", "--session", "2024-05-13"])
    assert asof.exit_code == 0 and "(XNYS), left out: bronze.futures_trades has 105" in asof.stderr

    # The last two weeks of pandas' range: no neighbours past it, the bars are printed.
    edge = runner.invoke(app, ["bars", FUT, "--session", "2262-04-04", "-o", "json"])
    assert edge.exit_code == 0 and edge.stdout.strip() == "[]", edge.output

    # At the pins read: rows committed after a pin are not counted for it.
    table = lake.load_table(FUT)
    append(table, futures("ES", _ns(2024, 5, 13, 21, 30), 1, SEC))
    pin = table.refresh().current_snapshot().snapshot_id
    append(table, futures("ES", _ns(2024, 5, 13, 21, 5), 2, SEC))
    with Lake(lake) as reader:
        (then,) = events_outside(reader, [FUT], window, pin)
        (now,) = events_outside(reader, [FUT], window)
    assert (then.before, then.after, then.first_after_ns) == (0, 1, _ns(2024, 5, 13, 21, 30))
    assert (now.after, now.first_after_ns) == (3, _ns(2024, 5, 13, 21, 5))

    # review15: at the snapshot the command read, not one committed after it (without
    # --as-of bars read the current snapshot, and the note loaded "current" again).
    monkeypatch.setenv("LAKE_DATA_DIR", str(lake.settings.data_dir))
    real_bars = Lake.bars

    def bars_then_a_commit(self: Lake, *args: Any, **kwargs: Any) -> Any:
        computed = real_bars(self, *args, **kwargs)
        append(table, futures("ES", _ns(2024, 5, 13, 21, 1), 5, SEC, seq0=10))
        return computed

    monkeypatch.setattr(Lake, "bars", bars_then_a_commit)
    raced = runner.invoke(app, ["bars", FUT, "--every", "1h", "--session", "2024-05-13"])
    assert raced.exit_code == 0, raced.output
    assert "has 3 events between the close and the next open" in raced.stderr


def test_the_session_containing_an_instant() -> None:
    """desk14: `session_window` of a CME evening's local day is the session that closed at
    16:00 (or none on a Sunday); `session_containing` gives the one trading then."""
    from iceberg_lake.timetravel.sessions import session_containing

    chicago = ZoneInfo("America/Chicago")
    tuesday_evening = datetime(2024, 3, 12, 18, tzinfo=chicago)
    wednesday = session_window("2024-03-13", "CME Globex Equity")
    assert session_containing(tuesday_evening, "CME Globex Equity") == wednesday
    assert session_window(tuesday_evening, "CME Globex Equity").day.isoformat() == "2024-03-12"
    sunday_evening = datetime(2024, 3, 10, 18, tzinfo=chicago)
    monday = session_containing(sunday_evening, "CME Globex Equity")
    assert monday is not None and monday.day.isoformat() == "2024-03-11"
    # The daily break and the weekend are in no session; the close is not in its session.
    assert (
        session_containing(datetime(2024, 3, 12, 16, 30, tzinfo=chicago), "CME Globex Equity")
        is None
    )
    assert session_containing(wednesday.close_ns, "CME Globex Equity") is None
    assert session_containing(wednesday.close_ns - 1, "CME Globex Equity") == wednesday
    assert session_containing(datetime(2024, 3, 9, 12, tzinfo=chicago), "XNYS") is None
    with pytest.raises(TimeTravelError, match="no time zone"):
        session_containing(datetime(2024, 3, 12, 18))
