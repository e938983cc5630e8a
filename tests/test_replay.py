"""Deterministic snapshot-pinned replay (`timetravel.replay.ReplayEngine`, `lake replay`)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pyarrow as pa
import pytest
from timetravel_data import HOUR_NS, T14, append, futures, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import TimeTravelError, UnknownTableError
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.replay import MANIFEST_FORMAT, ReplayEngine, read_manifest
from iceberg_lake.timetravel.replay import events as replay_events
from iceberg_lake.timetravel.replay.window import WindowPipeline

STOCKS = "bronze.stocks_trades"
FUTURES = "bronze.futures_trades"
SILVER = "silver.stocks_trades"
SEC = 10**9


@pytest.fixture(scope="module")
def merged(module_lake: LakeCatalog) -> dict:
    """SPY and QQQ trades every 2 s and ES futures every 3 s for 3 hours from 14:00.

    Equal timestamps happen across symbols (same table) and across tables (every 6 s).
    """
    catalog, settings = module_lake, module_lake.settings
    stock_rows = trades("SPY", T14, 3 * 1800, 2 * SEC) + trades("QQQ", T14, 3 * 1800, 2 * SEC)
    random.Random(3).shuffle(stock_rows)
    append(catalog.load_table(STOCKS), stock_rows)
    future_rows = futures("ES", T14, 3 * 1200, 3 * SEC)
    append(catalog.load_table(FUTURES), future_rows)
    return {"settings": settings, "stocks": stock_rows, "futures": future_rows}


def test_events_are_merged_by_time_with_the_documented_tie_break(
    merged, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, end = T14 + 10 * 60 * SEC, T14 + 70 * 60 * SEC  # crosses the 15:00 partition
    # window_rows=5000: one read window per hour (3,600 + 1,200 rows; the default groups them).
    engine = ReplayEngine(merged["settings"], [FUTURES, STOCKS], start, end, window_rows=5000)
    events = list(engine)

    tagged = [(0, r) for r in merged["futures"]] + [(1, r) for r in merged["stocks"]]
    expected = sorted(
        (p for p in tagged if start <= p[1]["ts_event_ns"] < end),
        key=lambda p: (p[1]["ts_event_ns"], p[0], p[1]["symbol"]),
    )
    got = [(e["table"], e["ts_event_ns"], e["symbol"]) for e in events]
    names = (FUTURES, STOCKS)
    assert got == [(names[i], r["ts_event_ns"], r["symbol"]) for i, r in expected]
    # Ties at the same nanosecond: table order first, then the partition key (QQQ < SPY).
    assert got[:3] == [(FUTURES, start, "ES"), (STOCKS, start, "QQQ"), (STOCKS, start, "SPY")]
    assert set(events[0]) == {"table", *merged["futures"][0].keys(), "conditions"}
    # `for event in engine` splices and decodes blocks of rows: exactly each event's
    # `as_dict()`, keys in the same order, also across block and chunk edges.
    again = ReplayEngine(merged["settings"], [FUTURES, STOCKS], start, end, pin=False)
    one_by_one = [e.as_dict() for e in again.events()]
    assert events == one_by_one and [list(e) for e in events] == [list(e) for e in one_by_one]
    monkeypatch.setattr(replay_events, "_DICT_BLOCK", 1_000)
    monkeypatch.setattr(replay_events, "_DICT_CHUNK", 300)
    small = list(ReplayEngine(merged["settings"], [FUTURES, STOCKS], start, end, pin=False))
    assert small == one_by_one and len(small) > 3 * 1_000

    manifest = engine.manifest()
    assert manifest["complete"] and manifest["format"] == MANIFEST_FORMAT
    assert manifest["event_count"] == len(events) == len(expected)
    assert manifest["events_per_table"] == {
        FUTURES: sum(1 for i, _ in expected if i == 0),
        STOCKS: sum(1 for i, _ in expected if i == 1),
    }
    # Bounded memory: one DuckDB read per table and hour partition, never the whole window.
    assert engine.partition_reads == 4
    assert engine.max_partition_rows == 2 * 1500  # SPY+QQQ 14:10-15:00, not the window


def test_reads_partition_by_partition(merged) -> None:
    engine = ReplayEngine(merged["settings"], [STOCKS], T14, T14 + 3 * HOUR_NS, window_rows=3600)
    count = sum(1 for _ in engine.events())
    assert count == len(merged["stocks"])
    assert engine.partition_reads == 3  # 14:00, 15:00, 16:00: each holds all symbols' rows
    assert engine.max_partition_rows == 2 * 1800 == count // 3
    # Sparse hours are grouped up to window_rows (from file statistics), dense hours split into
    # time slices: fewer or more reads, same sequence.
    for rows, reads in ((2 * 3600, 2), (10**6, 1), (1000, 3 * 4)):
        grouped = ReplayEngine(
            merged["settings"], [STOCKS], T14, T14 + 3 * HOUR_NS, window_rows=rows
        )
        assert sum(1 for _ in grouped.events()) == count
        assert grouped.partition_reads == reads
        assert grouped.manifest()["sequence_hash"] == engine.manifest()["sequence_hash"]


def test_windows_prepared_at_once_never_share_duckdb_cursors(
    merged, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without verification two windows are prepared at once; the first is held until the third
    has started (the order in which a shared cursor set would be reused): each window still has
    cursors no other running window uses, and the rows are the same."""
    import threading

    started_third = threading.Event()
    active: set[int] = set()
    clashes: list[int] = []
    lock = threading.Lock()
    real = WindowPipeline._prepare
    calls: list[int] = []

    def watched(self, cursors, buckets, lo, hi, pool):  # the real preparation, observed
        with lock:
            calls.append(lo)
            nth = len(calls)
            if id(cursors) in active:
                clashes.append(nth)
            active.add(id(cursors))
        if nth == 3:
            started_third.set()
        if nth == 1:
            started_third.wait(timeout=5)  # let the third window start while this one runs
        try:
            return real(self, cursors, buckets, lo, hi, pool)
        finally:
            with lock:
                active.discard(id(cursors))

    monkeypatch.setattr(WindowPipeline, "_prepare", watched)
    engine = ReplayEngine(
        merged["settings"], [STOCKS, FUTURES], T14, T14 + 3 * HOUR_NS, window_rows=2000, pin=False
    )
    rows = pa.Table.from_batches(list(engine.batches(verify=False)))
    assert len(calls) >= 4 and started_third.is_set()
    assert clashes == []
    assert rows.num_rows == len(merged["stocks"]) + len(merged["futures"])


def test_a_second_replay_of_the_same_pins_plans_nothing_and_a_new_pin_plans_again(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plans are kept per (table, snapshot, window): the same pins reuse them, a new snapshot
    of the same table is planned afresh (never served a stale file list)."""
    from iceberg_lake.timetravel.replay import source

    planned: list[int] = []
    real = source.plan_data_files

    def counting(table, snapshot_id, row_filter):  # the real planner, counted
        planned.append(snapshot_id)
        return real(table, snapshot_id, row_filter)

    monkeypatch.setattr(source, "plan_data_files", counting)
    catalog, settings = lake, lake.settings
    append(catalog.load_table(STOCKS), trades("SPY", T14, 600, SEC))
    append(catalog.load_table(FUTURES), futures("ES", T14, 300, 2 * SEC))
    window = (T14, T14 + HOUR_NS)
    first = ReplayEngine(settings, [STOCKS, FUTURES], *window, pin=False)
    rows = pa.Table.from_batches(list(first.batches(verify=False)))
    assert rows.num_rows == 900 and len(planned) == 2

    again = ReplayEngine(settings, [STOCKS, FUTURES], *window, pin=False)
    assert sum(1 for _ in again.events()) == 900
    assert len(planned) == 2  # same snapshots: no manifest read
    assert again.manifest()["snapshots"] == first.manifest()["snapshots"]

    append(catalog.load_table(STOCKS), trades("QQQ", T14, 100, SEC))
    newer = ReplayEngine(settings, [STOCKS, FUTURES], *window, pin=False)
    assert sum(1 for _ in newer.events()) == 1000
    assert planned[2:] == [newer.pins[STOCKS]]  # only the table with a new snapshot


def test_day_partitioned_greeks_merge_with_hourly_trades(lake: LakeCatalog) -> None:
    catalog, settings = lake, lake.settings
    greeks_table = "bronze.options_greeks_snapshots"
    greeks = [
        {
            "ts_event_ns": T14 + i * 40 * 60 * SEC,
            "source": "test",
            "underlying": "SPY",
            "option_symbol": f"SPY251216C00{600 + k}000",
            "delta": 0.5 - k / 100,
            "snapshot_id": f"g{i}",
        }
        for i in range(6)  # every 40 min over 4 hours: one day partition
        for k in (2, 1)
    ]
    append(catalog.load_table(greeks_table), greeks)
    append(catalog.load_table(STOCKS), trades("SPY", T14, 240, 60 * SEC))
    engine = ReplayEngine(settings, [greeks_table, STOCKS], T14, T14 + 4 * HOUR_NS, window_rows=70)
    events = list(engine)
    assert len(events) == 12 + 240
    assert engine.partition_reads == 1 + 4  # one day read for greeks, four hours for trades
    at_start = [(e["table"], e.get("option_symbol")) for e in events[:3]]
    # Equal times: greeks (first table) first, sorted by the remaining columns (option_symbol).
    assert at_start == [
        (greeks_table, "SPY251216C00601000"),
        (greeks_table, "SPY251216C00602000"),
        (STOCKS, None),
    ]
    times = [e["ts_event_ns"] for e in events]
    assert times == sorted(times)
    # Arrow batches: the same rows in the same order, each window holding its slice of the day.
    batches = pa.Table.from_batches(list(engine.batches()))
    assert batches.column("ts_event_ns").to_pylist() == times
    assert batches.column("table").to_pylist() == [e["table"] for e in events]
    assert batches.column("option_symbol").to_pylist() == [e.get("option_symbol") for e in events]


def test_same_pins_give_the_same_sequence_after_appends_and_recompaction(
    lake: LakeCatalog,
) -> None:
    catalog, settings = lake, lake.settings
    rows = trades("SPY", T14, 600, SEC) + trades("QQQ", T14, 600, SEC)
    append(catalog.load_table(STOCKS), rows + rows[:50])  # with duplicates
    with SilverCompactor(settings) as compactor:
        compactor.compact_date("2025-12-16", "stocks.trades")
    snapshots.create_tag(settings, "bt", [STOCKS, SILVER])
    window = (T14, T14 + HOUR_NS)

    first = ReplayEngine(settings, [SILVER, STOCKS], *window, as_of="bt")
    first_events = list(first)
    manifest = first.manifest()
    assert manifest["events_per_table"] == {SILVER: 1200, STOCKS: 1250}
    assert manifest["snapshots"] == snapshots.create_tag(settings, "bt2", [SILVER, STOCKS])

    # More data in the replayed hour, and Silver recompacted into new files (new snapshot).
    append(catalog.load_table(STOCKS), trades("SPY", T14 + 30 * SEC, 100, SEC, seq0=10_000))
    with SilverCompactor(settings) as compactor:
        assert compactor.compact_date("2025-12-16", "stocks.trades")["status"] == "success"
    assert (
        catalog.load_table(SILVER).current_snapshot().snapshot_id != manifest["snapshots"][SILVER]
    )

    again = ReplayEngine(settings, [SILVER, STOCKS], *window, as_of="bt")
    assert list(again) == first_events
    assert again.manifest()["sequence_hash"] == manifest["sequence_hash"]
    replayed = ReplayEngine.from_manifest(settings, manifest)
    assert sum(1 for _ in replayed.events()) == manifest["event_count"]
    assert replayed.manifest()["sequence_hash"] == manifest["sequence_hash"]

    current = ReplayEngine(settings, [SILVER, STOCKS], *window)
    assert sum(1 for _ in current.events()) == 1200 + 1250 + 200
    assert current.manifest()["sequence_hash"] != manifest["sequence_hash"]


def test_async_iteration_matches_and_speed_paces_in_event_time(merged) -> None:
    settings = merged["settings"]
    window = (T14, T14 + 8 * SEC)  # SPY+QQQ at 0,2,4,6 s: 8 events spanning 6 s
    expected = list(ReplayEngine(settings, [STOCKS], *window))

    async def collect(speed: float | None) -> tuple[list[dict], float]:
        began = time.monotonic()
        got = [e async for e in ReplayEngine(settings, [STOCKS], *window, speed=speed)]
        return got, time.monotonic() - began

    fast, _ = asyncio.run(collect(None))
    assert fast == expected
    paced, elapsed = asyncio.run(collect(20.0))  # 6 s of event time at 20x: >= 0.3 s
    assert paced == expected and elapsed >= 0.29

    began = time.monotonic()
    assert list(ReplayEngine(settings, [STOCKS], *window, speed=30.0)) == expected
    assert time.monotonic() - began >= 0.19


def test_bad_arguments_are_clear_errors(merged) -> None:
    settings = merged["settings"]
    with pytest.raises(TimeTravelError, match="at least one table"):
        ReplayEngine(settings, [], T14, T14 + SEC)
    with pytest.raises(TimeTravelError, match="must be before"):
        ReplayEngine(settings, [STOCKS], T14, T14)
    with pytest.raises(TimeTravelError, match="listed twice"):
        ReplayEngine(settings, [STOCKS, STOCKS], T14, T14 + SEC)
    with pytest.raises(TimeTravelError, match="no ts_event_ns"):
        ReplayEngine(settings, ["bronze.dead_letters"], T14, T14 + SEC)
    with pytest.raises(UnknownTableError):
        ReplayEngine(settings, ["bronze.nope"], T14, T14 + SEC)
    with pytest.raises(TimeTravelError, match="no tag or snapshot"):
        ReplayEngine(settings, [STOCKS], T14, T14 + SEC, as_of="nope")
    # An empty table replays as nothing, not as an error.
    engine = ReplayEngine(settings, ["gold.levels_signals"], T14, T14 + HOUR_NS)
    assert list(engine) == [] and engine.manifest()["snapshots"] == {"gold.levels_signals": None}


def test_cli_replay_writes_ndjson_and_a_manifest_that_reproduces_it(
    merged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_DATA_DIR", str(merged["settings"].data_dir))
    monkeypatch.chdir(tmp_path)  # the default manifest name is relative (conftest does it too)
    runner = CliRunner()
    out, again, manifest = tmp_path / "a.ndjson", tmp_path / "b.ndjson", tmp_path / "m.json"
    args = ["replay", "--tables", f"{FUTURES},{STOCKS}", "--start", "2025-12-16T14:00:00Z"]
    res = runner.invoke(
        app, [*args, "--end", str(T14 + 60 * SEC), "--out", str(out), "--manifest", str(manifest)]
    )
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == 20 + 30 + 30
    assert events[0] == {"table": FUTURES, **merged["futures"][0], "conditions": None}
    saved = read_manifest(manifest)
    assert saved["event_count"] == 80 and saved["sequence_hash"] in res.stderr

    res = runner.invoke(app, ["replay", "--from-manifest", str(manifest), "--out", str(again)])
    assert res.exit_code == 0, res.output
    assert again.read_bytes() == out.read_bytes()
    default = Path(f"replay-{saved['sequence_hash'].removeprefix('sha256:')[:12]}.json")
    assert read_manifest(default)["snapshots"] == saved["snapshots"]  # written by default

    bad = runner.invoke(app, ["replay", "--tables", STOCKS, "--start", "yesterday"])
    assert bad.exit_code == 1 and "--start" in bad.output and "Traceback" not in bad.output

    # No --start: everything the pinned snapshot holds.
    everything = tmp_path / "all.ndjson"
    res = runner.invoke(
        app, ["replay", "--tables", FUTURES, "--out", str(everything), "--manifest", str(manifest)]
    )
    assert res.exit_code == 0, res.output
    assert len(everything.read_text().splitlines()) == len(merged["futures"])


def test_an_interrupted_replay_has_no_hash_in_its_manifest(merged) -> None:
    """Breaking out of a replay left the manifest with the hash of windows the hash thread had
    run ahead to (the whole window's, here) beside an event count of 0 (quant8): an interrupted
    manifest has no hash; a full iteration then has the full one."""
    start, end = T14, T14 + 70 * 60 * SEC
    engine = ReplayEngine(merged["settings"], [FUTURES, STOCKS], start, end, window_rows=5000)
    for i, _ in enumerate(engine.events()):
        if i == 10:
            break
    partial = engine.manifest()
    assert not partial["complete"] and partial["sequence_hash"] is None
    full = sum(1 for _ in engine.events())
    manifest = engine.manifest()
    assert manifest["complete"] and manifest["event_count"] == full > 10
    assert manifest["sequence_hash"].startswith("sha256:")


@pytest.mark.parametrize(("how", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_of_a_replay_says_interrupted_and_exits_130(
    merged, tmp_path: Path, how: str, code: int
) -> None:
    """Ctrl-C cut a paced replay short, yet the CLI printed `replayed 0 events, no sequence
    hash (--no-verify)` and exited 0, so `lake replay … && backtest` went on with a partial
    file (newuser10). It says interrupted and exits 130; the manifest says complete: false.
    SIGTERM (docker stop, systemd) the same, exit 143 (live16: it died with its buffer and
    without a manifest)."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from support.wait import wait_until

    out, manifest = tmp_path / "part.ndjson", tmp_path / "part.json"
    exe = shutil.which("lake", path=os.path.dirname(sys.executable)) or "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env |= {"LAKE_DATA_DIR": str(merged["settings"].data_dir), "COLUMNS": "400"}
    args = ["replay", "--tables", FUTURES, "--start", "2025-12-16", "--speed", "1"]
    proc = subprocess.Popen(
        [exe, *args, "--no-progress", "--out", str(out), "--manifest", str(manifest)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: out.exists() or proc.poll() is not None, 60, "the replay to start")
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(getattr(signal, how))
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    name = "Ctrl-C" if how == "SIGINT" else how
    assert f"interrupted ({name})" in stderr and "--no-verify" not in stderr, stderr
    # The line and the manifest say what the output holds (newuser13: the manifest counted 0
    # events beside a file of 4,122 lines).
    lines = len(out.read_text().splitlines())
    recorded = read_manifest(manifest)
    assert recorded["complete"] is False and recorded["events_written"] == lines
    assert f"the output holds the first {lines:,} events of the replay" in stderr, stderr


def test_the_manifests_readable_window_replays_the_same_events(
    lake: LakeCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's `start`/`end` went through `ns / 1e9`: a window of 13:59:59.9999999 to
    14:00:01.000000001 was written as 14:00:00 to 14:00:01, and a replay of those times held 0
    events instead of 2 (quant19 #2). They are exact now, in a form `--start/--end` read back."""
    start, end = T14 - 100, T14 + SEC + 1
    append(
        lake.load_table(STOCKS), [*trades("INFX", T14 - 50, 1, 1), *trades("NANX", T14 + SEC, 1, 1)]
    )
    monkeypatch.setenv("LAKE_DATA_DIR", str(lake.settings.data_dir))
    runner = CliRunner()

    def replay(*window: str) -> dict:
        manifest = tmp_path / "m.json"
        res = runner.invoke(
            app,
            ["replay", "--tables", STOCKS, *window, "--no-pin", "--no-progress"]
            + ["--out", str(tmp_path / "out.ndjson"), "--manifest", str(manifest)],
        )
        assert res.exit_code == 0, res.output
        return read_manifest(manifest)

    first = replay("--start", str(start), "--end", str(end))
    assert first["event_count"] == 2
    assert (first["start"], first["end"]) == (
        "2025-12-16T13:59:59.999999900+00:00",
        "2025-12-16T14:00:01.000000001+00:00",
    )
    again = replay("--start", first["start"], "--end", first["end"])
    assert (again["start_ns"], again["end_ns"]) == (start, end)
    assert again["sequence_hash"] == first["sequence_hash"] and again["event_count"] == 2
    # Open-ended: the first event's own nanosecond, not the second it rounds to.
    held = replay()
    assert held["start"] == "2025-12-16T13:59:59.999999950+00:00", held


def test_a_speed_that_is_not_a_finite_number_is_refused(
    merged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--speed nan` passed the `speed < 0` check, replayed unpaced and wrote `"speed": NaN`
    into the manifest, which JSON parsers refuse (`--speed inf`: `Infinity`) (quant19 #4)."""
    settings = merged["settings"]
    for speed in (float("nan"), float("inf"), -1.0):
        with pytest.raises(TimeTravelError, match="speed must be a finite number >= 0"):
            ReplayEngine(settings, [STOCKS], T14, T14 + SEC, speed=speed, pin=False)
    monkeypatch.setenv("LAKE_DATA_DIR", str(settings.data_dir))
    manifest = tmp_path / "m.json"
    for text in ("nan", "inf", "-inf"):
        res = CliRunner().invoke(
            app,
            ["replay", "--tables", STOCKS, "--start", str(T14), "--end", str(T14 + SEC)]
            + ["--speed", text, "--no-pin", "--no-progress", "--out", str(tmp_path / "o")]
            + ["--manifest", str(manifest)],
        )
        assert res.exit_code == 1, res.output
        assert "speed must be a finite number >= 0" in res.output, res.output
        assert "Traceback" not in res.output and not manifest.exists()
