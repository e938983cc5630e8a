"""As-of joins (`timetravel.asof`, `Lake.asof_join`, `lake asof`) against a brute-force search
and pandas' `merge_asof`.

Stock trades with the prevailing NBBO quote and ES futures trades with the prevailing MBP-10 top
of book, on generated data with equal timestamps (quotes stamped in the same nanosecond as a
trade, several quotes per nanosecond whose `seq` order is not their replay order, since their
receive times differ). The expected
NBBO join is what a consumer of an actual replay of the same pins holds when each trade arrives:
quotes first (`strict=False`) or trades first (`strict=True`). Budget: ~7 s.
"""

from __future__ import annotations

import bisect
import json
import random
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from timetravel_data import T14, append, futures, trade
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.replay import ReplayEngine

TRADES, QUOTES = "bronze.stocks_trades", "bronze.stocks_quotes"
FUT, MBP = "bronze.futures_trades", "bronze.futures_mbp10"
MS = 10**6
SEC = 10**9


@pytest.fixture(scope="module")
def asof_data(module_lake: LakeCatalog) -> dict:
    catalog, settings = module_lake, module_lake.settings
    rng = random.Random(8)
    trades = [
        {
            "ts_event_ns": T14 + rng.randrange(0, 600_000) * MS,
            "ts_recv_ns": T14,
            "source": "test",
            "symbol": rng.choice(["SPY", "QQQ", "IWM"]),  # IWM has no quotes
            "price": round(rng.uniform(99, 101), 2),
            "size": rng.randrange(1, 100),
            "seq": i,
        }
        for i in range(3000)
    ]
    quotes = []
    for i in range(3000):
        ts = T14 - 30 * SEC + rng.randrange(0, 630_000) * MS
        if i % 10 == 0:
            ts = trades[i]["ts_event_ns"]  # same nanosecond as a trade
        bid = round(rng.uniform(99, 101), 2)
        quotes.append(
            {
                "ts_event_ns": ts,
                "ts_recv_ns": T14,
                "source": "test",
                "symbol": trades[i]["symbol"]
                if i % 10 == 0 and trades[i]["symbol"] != "IWM"
                else rng.choice(["SPY", "QQQ"]),
                "bid_px": bid,
                "ask_px": bid + 0.01,
                "bid_sz": rng.randrange(1, 900),
                "ask_sz": rng.randrange(1, 900),
                "seq": i,
            }
        )
    # Same-ns repeats with a higher `seq` but received earlier: receive time decides first.
    quotes += [dict(q, seq=q["seq"] + 10_000, bid_sz=1, ts_recv_ns=T14 - 1) for q in quotes[:300]]
    append(catalog.load_table(TRADES), trades)
    append(catalog.load_table(QUOTES), quotes)
    fut = futures("ES", T14, 500, SEC + 7 * MS)
    book = [
        {
            "ts_event_ns": T14 + k * 2 * SEC,
            "ts_recv_ns": T14,
            "source": "test",
            "symbol": "ES",
            "seq": k,
            "bid_px_1": 6000.0 + k * 0.25,
            "ask_px_1": 6000.25 + k * 0.25,
            "bid_sz_1": k % 40 + 1,
            "ask_sz_1": k % 30 + 1,
            "bid_px_2": 5999.75 + k * 0.25,
        }
        for k in range(300)
    ]
    append(catalog.load_table(FUT), fut)
    append(catalog.load_table(MBP), book)
    snapshots.create_tag(settings, "aj", [TRADES, QUOTES, FUT, MBP])
    return {"settings": settings, "trades": trades, "quotes": quotes, "fut": fut, "book": book}


def _prevailing(trades, quotes, key_cols, strict=False, lookback=None, start=None):
    """For each trade: the quote (by symbol) with the latest ts <= trade ts (< if strict); among
    equal timestamps the highest seq. Brute force over sorted lists (right where no two quotes
    of a symbol share a nanosecond)."""
    by_sym: dict[str, list] = defaultdict(list)
    for q in quotes:
        by_sym[q["symbol"]].append(q)
    for lst in by_sym.values():
        lst.sort(key=lambda q: (q["ts_event_ns"], q["seq"]))
    out = []
    for t in trades:
        lst = by_sym.get(t["symbol"], [])
        times = [q["ts_event_ns"] for q in lst]
        i = (bisect.bisect_left if strict else bisect.bisect_right)(times, t["ts_event_ns"]) - 1
        q = lst[i] if i >= 0 else None
        if q is not None and lookback is not None and q["ts_event_ns"] < start - lookback:
            q = None
        out.append(None if q is None else tuple(q[c] for c in key_cols))
    return out


def _replay_consumer(settings, tables: list[str], start: int, end: int, cols: list[str]):
    """Replay `tables` (quotes first or trades first) over `[start, end)` at the pin like a
    strategy would: keep the last quote of each symbol; at each trade from `start + LOOKBACK` on,
    record it (None: no quote yet). Returns the trades' `seq` in replay order and the quotes."""
    engine = ReplayEngine(settings, tables, start, end, as_of="aj", pin=False)
    last: dict[str, tuple] = {}
    seqs, seen = [], []
    for event in pa.Table.from_batches(list(engine.batches(verify=False))).to_pylist():
        if event["table"] == QUOTES:
            last[event["symbol"]] = tuple(event[c] for c in cols)
        elif event["ts_event_ns"] >= start + LOOKBACK:
            seqs.append(event["seq"])
            seen.append(last.get(event["symbol"]))
    return seqs, seen


LOOKBACK = 60 * SEC
NBBO_WINDOW = (T14 + 100 * SEC, T14 + 500 * SEC)
NBBO_COLUMNS = ["ts_event_ns", "bid_px", "ask_px", "bid_sz", "ask_sz"]


def _nbbo_join(asof_data: dict, strict: bool) -> pa.Table:
    """`Lake.asof_join` of the trades with the prevailing quote over `NBBO_WINDOW` at the tag."""
    start, end = NBBO_WINDOW
    with Lake(asof_data["settings"]) as lk:
        return lk.asof_join(
            TRADES, QUOTES, start_ns=start, end_ns=end, as_of="aj", strict=strict,
            lookback_ns=LOOKBACK,
        )  # fmt: skip


@pytest.mark.parametrize("strict", [False, True])
def test_trades_with_prevailing_nbbo_match_pandas_merge_asof(asof_data: dict, strict: bool) -> None:
    """The same join computed by pandas' `merge_asof` from the generated rows (not from the lake):
    quotes in replay order (time, then receive time, then the feed's sequence), the last one at
    or before the trade's nanosecond prevails (before it with `strict`), none older than the
    lookback's start."""
    import pandas as pd

    start, end = NBBO_WINDOW
    got = _nbbo_join(asof_data, strict)
    cols = NBBO_COLUMNS
    trades = pd.DataFrame(asof_data["trades"])
    trades = trades[(trades.ts_event_ns >= start) & (trades.ts_event_ns < end)]
    quotes = pd.DataFrame(asof_data["quotes"])
    quotes["row"] = range(len(quotes))  # the prevailing quote's row, looked up below
    quotes = quotes[(quotes.ts_event_ns >= start - LOOKBACK) & (quotes.ts_event_ns < end)]
    quotes = quotes.sort_values(["ts_event_ns", "ts_recv_ns", "seq"], kind="stable")
    joined = pd.merge_asof(
        trades.sort_values("ts_event_ns", kind="stable"),
        quotes[["ts_event_ns", "symbol", "row"]],
        on="ts_event_ns",
        by="symbol",
        allow_exact_matches=not strict,
    )
    rows = asof_data["quotes"]
    expected = {
        int(seq): None if pd.isna(row) else tuple(rows[int(row)][c] for c in cols)
        for seq, row in zip(joined["seq"], joined["row"], strict=True)
    }
    have = {
        seq: None if quote[0] is None else tuple(quote)
        for seq, *quote in zip(
            got.column("seq").to_pylist(),
            *(got.column("quote_" + c).to_pylist() for c in cols),
            strict=True,
        )
    }
    assert len(have) == len(expected) == got.num_rows > 1000
    assert have == expected
    assert sum(q is None for q in expected.values()) > 100  # IWM has no quotes


@pytest.mark.parametrize("strict", [False, True])
def test_trades_with_prevailing_nbbo_match_a_replay(asof_data: dict, strict: bool) -> None:
    start, end = NBBO_WINDOW
    got = _nbbo_join(asof_data, strict)
    cols = NBBO_COLUMNS
    # strict=False: quotes of the trade's nanosecond arrive before it (quotes listed first).
    order = [TRADES, QUOTES] if strict else [QUOTES, TRADES]
    seqs, want = _replay_consumer(asof_data["settings"], order, start - LOOKBACK, end, cols)
    assert got.column("seq").to_pylist() == seqs  # the trades in replay order
    names = ["quote_" + c for c in cols]
    rows = list(zip(*(got.column(n).to_pylist() for n in names), strict=True))
    have = [None if r[0] is None else r for r in rows]
    assert have == want
    assert any(w is None for w in want) and sum(w is not None for w in want) > 500
    trade_ts = got.column("ts_event_ns").to_pylist()
    same_ns = sum(1 for ts, w in zip(trade_ts, want, strict=True) if w and w[0] == ts)
    assert (same_ns == 0) if strict else (same_ns > 0)
    # The data makes a bare `seq` tie-break (the highest seq of a nanosecond prevails) fail:
    # the replay orders by receive time before the feed's sequence.
    window = [t for t in asof_data["trades"] if start <= t["ts_event_ns"] < end]
    position = {seq: i for i, seq in enumerate(seqs)}
    window.sort(key=lambda t: position[t["seq"]])
    by_seq = _prevailing(window, asof_data["quotes"], cols, strict, LOOKBACK, start)
    assert sum(a != b for a, b in zip(by_seq, want, strict=True)) >= 5


def test_futures_with_mbp10_top_of_book(asof_data: dict) -> None:
    start, end = T14, T14 + 400 * SEC
    with Lake(asof_data["settings"]) as lk:
        got = lk.asof_join(FUT, MBP, start_ns=start, end_ns=end, as_of="aj")
    window = [t for t in asof_data["fut"] if start <= t["ts_event_ns"] < end]
    cols = ["ts_event_ns", "bid_px_1", "ask_px_1", "bid_sz_1", "ask_sz_1"]
    want = _prevailing(window, asof_data["book"], cols)
    assert got.num_rows == len(window)
    rows = list(zip(*(got.column("quote_" + c).to_pylist() for c in cols), strict=True))
    assert rows == want
    assert "quote_bid_px_2" not in got.column_names


def test_errors_and_cli(asof_data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with Lake(asof_data["settings"]) as lk:
        with pytest.raises(TimeTravelError, match="no column 'nope'"):
            lk.asof_join(TRADES, QUOTES, start_ns=T14, end_ns=T14 + SEC, quote_columns=["nope"])
        with pytest.raises(TimeTravelError, match="must be before"):
            lk.asof_join(TRADES, QUOTES, start_ns=T14, end_ns=T14)
    monkeypatch.setenv("LAKE_DATA_DIR", str(asof_data["settings"].data_dir))
    res = CliRunner().invoke(
        app,
        ["asof", FUT, MBP, "--start", str(T14), "--end", str(T14 + 10 * SEC), "--as-of", "aj"]
        + ["--columns", "bid_px_1,bid_px_2", "-o", "json"],
    )
    assert res.exit_code == 0, res.output
    assert '"quote_bid_px_2": 5999.75' in res.stdout


def test_max_age_bounds_the_prevailing_quote_per_trade(
    asof_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookback counts from the window's start, so a trade late in a window was paired
    with a quote of any age, and the same trade got another quote in another window (quant16).
    `max_age_ns` / `--max-quote-age` bound it per trade; `--lookback inf` is one line."""
    start, end, age = T14 + 100 * SEC, T14 + 500 * SEC, SEC // 5
    cols = ["ts_event_ns", "bid_px", "ask_px", "bid_sz", "ask_sz"]
    with Lake(asof_data["settings"]) as lk:
        plain = lk.asof_join(TRADES, QUOTES, start_ns=start, end_ns=end, as_of="aj")
        aged = lk.asof_join(TRADES, QUOTES, start_ns=start, end_ns=end, as_of="aj", max_age_ns=age)
    assert aged.column("seq").to_pylist() == plain.column("seq").to_pylist()
    trade_ts = plain.column("ts_event_ns").to_pylist()
    rows = zip(*(plain.column("quote_" + c).to_pylist() for c in cols), strict=True)
    # The unbounded join's quote where it is at most `age` old, else none.
    want = [r if r[0] is not None and r[0] >= ts - age else (None,) * len(cols)
            for ts, r in zip(trade_ts, rows, strict=True)]  # fmt: skip
    have = list(zip(*(aged.column("quote_" + c).to_pylist() for c in cols), strict=True))
    assert have == want
    before = plain.column("quote_bid_px").to_pylist()
    dropped = sum(w[0] is None and b is not None for w, b in zip(want, before, strict=True))
    assert dropped > 300 and sum(w[0] is not None for w in want) > 300
    monkeypatch.setenv("LAKE_DATA_DIR", str(asof_data["settings"].data_dir))
    for flag in ("--lookback", "--max-quote-age"):
        res = CliRunner().invoke(
            app, ["asof", TRADES, QUOTES, "--start", str(start), "--end", str(end), flag, "inf"]
        )
        assert res.exit_code == 1 and "must be 0-315,360,000 seconds, got inf" in res.output
        assert "Traceback" not in res.output


def test_a_pin_for_a_table_not_read_is_refused_not_dropped(
    asof_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--as-of bronze.stocks_trade=TAG` (a typo, another layer, another case) pinned nothing:
    the table meant was read at its current snapshot, rows committed after the tag included,
    exit 0 (quant16). Every pinned read refuses a per-table pin for a table it does not read."""
    settings = asof_data["settings"]
    typo = {"bronze.stocks_trade": "aj"}
    window = {"start_ns": T14, "end_ns": T14 + SEC}
    with Lake(settings) as lk:
        with pytest.raises(TimeTravelError, match="a pin names bronze.stocks_trade, which"):
            lk.asof_join(TRADES, QUOTES, as_of={**typo, QUOTES: "aj"}, **window)
    with pytest.raises(TimeTravelError, match=r"it reads bronze.stocks_trades\)"):
        ReplayEngine(settings, [TRADES], T14, T14 + SEC, as_of=typo, pin=False)
    monkeypatch.setenv("LAKE_DATA_DIR", str(settings.data_dir))
    span = ["--start", str(T14), "--end", str(T14 + SEC)]
    for args in (
        ["replay", "--tables", TRADES, *span, "--as-of", "Bronze.Stocks_Trades=aj"],
        ["asof", TRADES, QUOTES, *span, "--as-of", "silver.stocks_trades=aj"],
        # Another table that exists: the pin was meant for the one read.
        ["bars", TRADES, "--every", "1m", *span, "--as-of", f"{QUOTES}=aj"],
    ):
        res = CliRunner().invoke(app, [*args, "--no-progress"] if args[0] == "replay" else args)
        assert res.exit_code == 1, res.output
        assert "a pin names" in res.output and "read unpinned" in res.output, res.output
        assert "Traceback" not in res.output


def test_asking_for_ts_event_ns_or_a_column_twice_gives_one_column(
    asof_data: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--columns bid_px,ts_event_ns -o parquet` once wrote two `quote_ts_event_ns` columns: a
    file pyarrow and pandas refuse to read (`Multiple matches for FieldRef`)."""
    monkeypatch.setenv("LAKE_DATA_DIR", str(asof_data["settings"].data_dir))
    out = tmp_path / "joined.parquet"
    res = CliRunner().invoke(
        app,
        ["asof", TRADES, QUOTES, "--start", str(T14), "--end", str(T14 + 60 * SEC), "--as-of"]
        + ["aj", "--columns", "bid_px,ts_event_ns,bid_px", "-o", "parquet", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    quote = [c for c in table.column_names if c.startswith("quote_")]
    assert quote == ["quote_ts_event_ns", "quote_bid_px"]
    assert table.num_rows > 0 and table.to_pandas()["quote_ts_event_ns"].notna().any()
    with Lake(asof_data["settings"]) as lk:
        only_ts = lk.asof_join(
            TRADES, QUOTES, start_ns=T14, end_ns=T14 + 60 * SEC, quote_columns=["ts_event_ns"]
        )
    assert [c for c in only_ts.column_names if c.startswith("quote_")] == ["quote_ts_event_ns"]


def test_quote_age_and_lookback_in_seconds_are_exact_to_the_nanosecond(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--max-quote-age 8.2` was `int(8.2 * 1e9)` = 8_199_999_999 ns, so a quote exactly 8.2 s
    before its trade counted as none; `--lookback 8.2` likewise (quant19 #1). A float `*_ns`
    in Python was truncated the same way: it is a TypeError now."""
    settings = lake.settings
    qa, qb = T14 + 100 * SEC, T14 + 200 * SEC
    ta, tb = qa + 8_200_000_000, qb + 4_100_000_000  # exactly 8.2 s and 4.1 s after
    append(lake.load_table(TRADES), [trade(ta, "MQA"), trade(tb, "MQB", seq=1)])
    quotes = [
        {"ts_event_ns": ts, "ts_recv_ns": ts, "source": "test", "symbol": sym, "seq": 0}
        | {"bid_px": 19.9, "ask_px": 20.1, "bid_sz": 1, "ask_sz": 1}
        for ts, sym in ((qa, "MQA"), (qb, "MQB"))
    ]
    append(lake.load_table(QUOTES), quotes)
    monkeypatch.setenv("LAKE_DATA_DIR", str(settings.data_dir))

    def quote_ts(*args: str) -> dict[str, str]:
        res = CliRunner().invoke(app, ["-o", "json", "asof", TRADES, QUOTES, *args])
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)
        return {r["symbol"]: r["quote_ts_event_ns"] for r in rows}

    window = ["--start", str(T14), "--end", str(T14 + 300 * SEC)]
    assert quote_ts(*window, "--max-quote-age", "8.2") == {"MQA": qa, "MQB": qb}
    assert quote_ts(*window, "--max-quote-age", "4.1") == {"MQA": None, "MQB": qb}
    assert quote_ts(*window, "--max-quote-age", "4.099999999") == {"MQA": None, "MQB": None}
    # The lookback counts from the window's start: the trade itself starts it.
    at_a = ["--start", str(ta), "--end", str(ta + 1)]
    assert quote_ts(*at_a, "--lookback", "8.2") == {"MQA": qa}
    assert quote_ts(*at_a, "--lookback", "8.199999999") == {"MQA": None}
    res = CliRunner().invoke(app, ["asof", TRADES, QUOTES, *window, "--max-quote-age", "1e-10"])
    assert res.exit_code == 1 and "not a whole number of nanoseconds" in res.output, res.output
    assert "Traceback" not in res.output

    meant = T14 + 1  # 1 ns after T14: a float cannot say it
    with Lake(settings) as lk:
        for kwargs in (
            {"start_ns": float(meant), "end_ns": ta + 1},
            {"start_ns": T14, "end_ns": ta + 1, "max_age_ns": 8.2e9},
            {"start_ns": T14, "end_ns": ta + 1, "lookback_ns": 3.6e12},
        ):
            with pytest.raises(TypeError, match=r"_ns must be Unix nanoseconds as an int"):
                lk.asof_join(TRADES, QUOTES, **kwargs)
        with pytest.raises(TypeError, match="end_ns must be"):
            lk.bars(TRADES, "1m", start_ns=T14, end_ns=float(T14 + SEC))
    with pytest.raises(TypeError, match="start_ns must be"):
        ReplayEngine(settings, [TRADES], float(meant), ta + 1, pin=False)


def test_trades_without_any_prevailing_quote_are_named_on_stderr(
    asof_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A join where no trade found a quote (the wrong quotes table, `ES.c.0` against `ESH4`)
    printed only its row count, every quote column null; symbols without any quote were as
    silent (quant19 #3). One line on stderr names them; stdout keeps its shape, exit 0."""
    monkeypatch.setenv("LAKE_DATA_DIR", str(asof_data["settings"].data_dir))
    window = ["--start", str(T14), "--end", str(T14 + 600 * SEC), "--as-of", "aj"]
    res = CliRunner().invoke(app, ["-o", "json", "asof", FUT, QUOTES, *window])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and all(r["quote_ts_event_ns"] is None for r in rows)
    assert (
        f"no trade found a prevailing quote in {QUOTES} (all {len(rows):,} have null quote "
        "columns)" in res.stderr
    ), res.stderr
    # IWM has trades but no quote at all; SPY and QQQ have quotes.
    res = CliRunner().invoke(app, ["-o", "json", "asof", TRADES, QUOTES, *window])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    unquoted = sum(r["quote_ts_event_ns"] is None for r in rows)
    line = f"no prevailing quote in {QUOTES} for symbol IWM ({unquoted:,} of {len(rows):,} trades"
    assert line in res.stderr, res.stderr
    # Every symbol quoted: nothing said.
    res = CliRunner().invoke(app, ["-o", "json", "asof", FUT, MBP, *window])
    assert res.exit_code == 0 and "prevailing quote" not in res.stderr, res.output
