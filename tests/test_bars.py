"""Bars (`timetravel.bars`, `lake bars`) checked against a brute-force pandas computation.

Generated trades, NBBO quotes and MBP-10 books with many equal timestamps, among them runs of
events in the first and the last nanosecond of bars whose `seq` order is the reverse of their
replay order: open/close must be the first/last event a replay of the same pin delivers, so the
expected bars are computed from an actual `ReplayEngine` run. Also a pin that later appends must
not change, and the CLI. Budget: ~8 s.
"""

from __future__ import annotations

import json
import random

import pandas as pd
import pyarrow as pa
import pytest
from timetravel_data import HOUR_NS, T14, append
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.bars import parse_every
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.replay import ReplayEngine

TRADES, QUOTES, MBP = "bronze.stocks_trades", "bronze.stocks_quotes", "bronze.futures_mbp10"
MS = 10**6
MIN = 60 * 10**9


def _trades(rng: random.Random, n: int) -> list[dict]:
    return [
        {
            "ts_event_ns": T14 + rng.randrange(0, 20 * 60 * 1000) * MS,  # ms grid: ties
            "ts_recv_ns": T14 + 3 * HOUR_NS + rng.randrange(0, 10**9),
            "source": "test",
            "symbol": rng.choice(["SPY", "QQQ"]),
            "price": round(rng.uniform(99, 101), 2),
            "size": rng.randrange(1, 500),
            "exchange": 1,
            "seq": i,
        }
        for i in range(n)
    ]


def _quotes(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        bid = round(rng.uniform(99, 101), 2)
        out.append(
            {
                "ts_event_ns": T14 + rng.randrange(0, 20 * 60 * 100) * 10 * MS,
                "ts_recv_ns": T14,
                "source": "test",
                "symbol": rng.choice(["SPY", "QQQ"]),
                # Every 37th quote has an empty bid, sent as 0 (docs/ingest.md): not a price.
                "bid_px": 0.0 if i % 37 == 0 else bid,
                "ask_px": round(bid + rng.choice([0.01, 0.02, 0.05]), 2),
                "bid_sz": rng.randrange(1, 900),
                "ask_sz": rng.randrange(1, 900),
                "seq": i,
            }
        )
    return out


def _edge_ties(rows: list[dict], edges: list[int], per_edge: int, vary: dict) -> list[dict]:
    """`per_edge` copies of a random row of `rows` in the first and in the last nanosecond of
    the bars starting at `edges`, with different values (`vary`: column → function of the copy
    number). Within a nanosecond, receive time rises with the copy number (replay order) while
    `seq` falls: ordering by `seq` gives the reverse."""
    rng = random.Random(len(edges))
    out = []
    for edge in edges:
        for ts in (edge, edge - 1):
            base = rng.choice(rows)
            for j in range(per_edge):
                row = dict(base, ts_event_ns=ts, ts_recv_ns=ts + 1_000 + j // 2, seq=-j)
                out.append(row | {col: f(j) for col, f in vary.items()})
    return out


def _book(n: int) -> list[dict]:
    rng = random.Random(12)
    rows = []
    for k in range(n):
        bid = 6000.0 + rng.randrange(-8, 8) * 0.25
        rows.append(
            {
                "ts_event_ns": T14 + rng.randrange(0, 5 * 60 * 1000) * MS,
                "ts_recv_ns": T14,
                "source": "test",
                "symbol": "ESZ5" if k % 3 else "ESH6",
                "seq": k,
                "bid_px_1": None if k % 29 == 0 else bid,
                "ask_px_1": 0.0 if k % 31 == 0 else bid + rng.choice([0.25, 0.5]),
                "bid_sz_1": rng.randrange(1, 50),
                "ask_sz_1": rng.randrange(1, 50),
            }
        )
    return rows


@pytest.fixture(scope="module")
def bars_data(module_lake: LakeCatalog) -> dict:
    catalog, settings = module_lake, module_lake.settings
    rng = random.Random(5)
    trades, quotes, book = _trades(rng, 4000), _quotes(rng, 4000), _book(1500)
    minutes = [T14 + k * MIN for k in range(1, 20)]
    # Copies j and j+1 share a receive time: price decides (the key's next column).
    trades += _edge_ties(trades, minutes, 4, {"price": lambda j: 101.5 - j, "size": lambda j: 7})
    quotes += _edge_ties(
        quotes,
        [T14 + k * 5 * 10**9 for k in range(1, 240, 7)],
        3,
        {"bid_px": lambda j: 98.0 + j, "ask_px": lambda j: 98.5 + 2 * j},
    )
    book += _edge_ties(
        book, [T14 + k * MIN for k in range(1, 5)], 3, {"bid_px_1": lambda j: 5990.0 - j}
    )
    append(catalog.load_table(TRADES), trades[:2000])
    append(catalog.load_table(TRADES), trades[2000:])
    append(catalog.load_table(QUOTES), quotes)
    append(catalog.load_table(MBP), book)
    snapshots.create_tag(settings, "bars", [TRADES, QUOTES, MBP])
    # After the tag: bars pinned to it must not see these.
    append(catalog.load_table(TRADES), _trades(random.Random(9), 500))
    return {"settings": settings, "trades": trades, "quotes": quotes, "book": book}


def _replayed(settings, table: str, start: int, end: int) -> pd.DataFrame:
    """The rows of `table` in `[start, end)` at the pin, in the order a replay delivers them."""
    engine = ReplayEngine(settings, [table], start, end, as_of="bars", pin=False)
    return pa.Table.from_batches(list(engine.batches(verify=False))).to_pandas()


def _first_last(df: pd.DataFrame, value: str, every: int, by: str | None) -> pd.DataFrame:
    """OHLC of `value` per bar; `df` is in replay order (open/close: first/last row of a bar)."""
    df = df.assign(bar_start_ns=(df["ts_event_ns"] // every) * every)
    keys = [by, "bar_start_ns"] if by else ["bar_start_ns"]
    g = df.groupby(keys, sort=True)[value]
    return pd.DataFrame(
        {"open": g.first(), "high": g.max(), "low": g.min(), "close": g.last(), "n": g.size()}
    )


def _bars_by_seq_differ(df: pd.DataFrame, value: str, every: int, by: str | None) -> int:
    """How many bars whose open or close an order by (`ts_event_ns`, `seq`) gets wrong: the data
    must make a `seq` tie-break fail."""
    by_seq = df.sort_values(["ts_event_ns", "seq", "ts_recv_ns"], kind="stable")
    a, b = _first_last(df, value, every, by), _first_last(by_seq, value, every, by)
    return int(((a["open"] != b["open"]) | (a["close"] != b["close"])).sum())


def test_trade_bars_match_a_replay(bars_data: dict) -> None:
    start, end = T14 + 3 * MIN + 7 * MS, T14 + 17 * MIN
    with Lake(bars_data["settings"]) as lk:
        got = lk.bars(TRADES, "1m", start_ns=start, end_ns=end, as_of="bars").to_pandas()
    df = _replayed(bars_data["settings"], TRADES, start, end)
    assert _bars_by_seq_differ(df, "price", MIN, "symbol") >= 10
    want = _first_last(df, "price", MIN, "symbol")
    df = df.assign(bar_start_ns=(df.ts_event_ns // MIN) * MIN, pv=df.price * df["size"])
    sums = df.groupby(["symbol", "bar_start_ns"]).agg(volume=("size", "sum"), pv=("pv", "sum"))
    want["volume"] = sums["volume"]
    want["vwap"] = sums["pv"] / sums["volume"]
    want = want.reset_index()

    assert list(got.columns) == [
        "symbol", "bar_start_ns", "bar_start", "open", "high", "low", "close", "volume", "vwap",
        "trades",
    ]  # fmt: skip
    assert len(got) == len(want) == 2 * 14  # minutes 3 (from 03:00.007) to 16
    assert got["symbol"].tolist() == want["symbol"].tolist()
    assert got["bar_start_ns"].tolist() == want["bar_start_ns"].tolist()
    for col in ("open", "high", "low", "close", "volume"):
        assert got[col].tolist() == want[col].tolist(), col
    assert got["trades"].tolist() == want["n"].tolist()
    assert (got["vwap"] - want["vwap"]).abs().max() < 1e-9
    assert str(got["bar_start"].iloc[0]).startswith("2025-12-16 14:03:00")


def _check_quote_bars(got: pd.DataFrame, df: pd.DataFrame, bid: str, ask: str, every: int, by):
    one_sided = df[bid].isna() | df[ask].isna() | (df[bid] == 0) | (df[ask] == 0)
    assert (df[bid] == 0).sum() + (df[ask] == 0).sum() >= 10  # empty sides sent as 0
    df = df[~one_sided]  # bars skip one-sided books, null or 0
    df = df.assign(mid=(df[bid] + df[ask]) / 2, spread=df[ask] - df[bid])
    assert _bars_by_seq_differ(df, "mid", every, by) >= 3
    mid = _first_last(df, "mid", every, by).reset_index()
    spread = _first_last(df, "spread", every, by).reset_index()
    assert got["bar_start_ns"].tolist() == mid["bar_start_ns"].tolist()
    if by:
        assert got[by].tolist() == mid[by].tolist()
    for part in ("open", "high", "low", "close"):
        assert (got[f"mid_{part}"] - mid[part]).abs().max() < 1e-9, part
        assert (got[f"spread_{part}"] - spread[part]).abs().max() < 1e-9, part
    assert got["quotes"].tolist() == mid["n"].tolist()
    assert got["quotes"].sum() == len(df)


def test_quote_bars_mid_and_spread_match_a_replay(bars_data: dict) -> None:
    with Lake(bars_data["settings"]) as lk:
        got = lk.bars(QUOTES, "5s", by=None, as_of="bars").to_pandas()
    df = _replayed(bars_data["settings"], QUOTES, T14 - MIN, T14 + 30 * MIN)
    assert len(df) == len(bars_data["quotes"])
    _check_quote_bars(got, df, "bid_px", "ask_px", parse_every("5s"), None)


def test_mbp10_bars_from_the_top_of_book_match_a_replay(bars_data: dict) -> None:
    with Lake(bars_data["settings"]) as lk:
        got = lk.bars(MBP, "1m", as_of="bars").to_pandas()
    assert "mid_open" in got.columns and "quotes" in got.columns
    df = _replayed(bars_data["settings"], MBP, T14 - MIN, T14 + 10 * MIN)
    assert len(df) == len(bars_data["book"])
    _check_quote_bars(got, df, "bid_px_1", "ask_px_1", MIN, "symbol")


def test_vwap_is_the_same_every_run(bars_data: dict) -> None:
    """DuckDB's parallel `sum` adds partial sums in whatever order its threads finish; the VWAP
    adds in replay order, so it is identical to the bit, run after run (two data files, two
    threads)."""
    with Lake(bars_data["settings"]) as lk:
        runs = {tuple(lk.bars(TRADES, "1h", by=None).column("vwap").to_pylist()) for _ in range(12)}
    assert len(runs) == 1, runs


def test_symbols_pick_the_series_of_one_bar_over_everything(
    bars_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quant13: a whole-session bar (`--by ''`) mixed every symbol of the table (ES with NQ),
    and nothing could restrict it. `symbols` keeps only those symbols' rows."""
    with Lake(bars_data["settings"]) as lk:
        by_symbol = lk.bars(TRADES, "1h", as_of="bars").to_pandas()
        spy = lk.bars(TRADES, "1h", by=None, as_of="bars", symbols=["SPY"]).to_pandas()
        both = lk.bars(TRADES, "1h", as_of="bars", symbols=["SPY", "QQQ"]).to_pandas()
        none = lk.bars(TRADES, "1h", as_of="bars", symbols=["IWM"])
    want = by_symbol[by_symbol["symbol"] == "SPY"].drop(columns="symbol").reset_index(drop=True)
    assert len(want) >= 1 and spy.to_dict("records") == want.to_dict("records")
    assert both.to_dict("records") == by_symbol.to_dict("records")
    assert none.num_rows == 0
    with Lake(bars_data["settings"]) as lk:  # one symbol as a string, not its letters
        text = lk.bars(TRADES, "1h", by=None, as_of="bars", symbols="SPY").to_pandas()
    assert text.to_dict("records") == spy.to_dict("records")
    monkeypatch.setenv("LAKE_DATA_DIR", str(bars_data["settings"].data_dir))
    # An empty list from a script is refused, not taken as every symbol (newuser13).
    empty = CliRunner().invoke(app, ["bars", TRADES, "--symbols", "", "--start", "2025-12-16"])
    assert (
        empty.exit_code == 1 and "--symbols" in empty.output and "names no symbol" in empty.output
    )
    args = ["bars", TRADES, "--every", "1h", "--by", "", "--symbols", "SPY", "--as-of", "bars"]
    res = CliRunner().invoke(app, [*args, "--start", "2025-12-16", "-o", "json"])
    assert res.exit_code == 0, res.output
    assert [r["trades"] for r in json.loads(res.stdout)] == spy["trades"].tolist()
    assert "no rows for" not in res.stderr
    # A symbol with no rows (a typo, or absent from the window) is named on stderr, not
    # left for the user to take an empty series for a quiet market.
    args = ["bars", TRADES, "--every", "1h", "--symbols", "SPY,SPX", "--as-of", "bars"]
    res = CliRunner().invoke(app, [*args, "--start", "2025-12-16", "-o", "json"])
    assert res.exit_code == 0, res.output
    assert {r["symbol"] for r in json.loads(res.stdout)} == {"SPY"}
    assert "no rows for --symbols SPX in bronze.stocks_trades" in res.stderr
    assert "SPY" not in res.stderr.split("no rows for")[1]


def test_pin_and_errors(bars_data: dict) -> None:
    with Lake(bars_data["settings"]) as lk:
        pinned = lk.bars(TRADES, "1h", by=None, as_of="bars")
        current = lk.bars(TRADES, "1h", by=None)
        assert pinned.column("trades").to_pylist() == [len(bars_data["trades"])]
        assert current.column("trades").to_pylist() == [len(bars_data["trades"]) + 500]
        with pytest.raises(TimeTravelError, match="invalid bar width"):
            lk.bars(TRADES, "1 fortnight")
        with pytest.raises(TimeTravelError, match="trades .* or quotes"):
            lk.bars("bronze.options_greeks_snapshots", "1m")
        with pytest.raises(TimeTravelError, match="group bars by"):
            lk.bars(TRADES, "1m", by="underlying")
    assert parse_every("250ms") == 250 * MS and parse_every("1min") == MIN


def test_cli_bars(bars_data: dict, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LAKE_DATA_DIR", str(bars_data["settings"].data_dir))
    out = tmp_path / "bars.parquet"
    res = CliRunner().invoke(
        app,
        ["bars", TRADES, "--every", "5m", "--start", "2025-12-16", "--as-of", "bars"]
        + ["-o", "parquet", "--file", str(out)],  # --file: the old, hidden spelling of --out
    )
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(out)
    assert len(table) == 2 * 4 and table["trades"].sum() == len(bars_data["trades"])
    bad = CliRunner().invoke(app, ["bars", TRADES, "--every", "soon", "--start", "2025-12-16"])
    assert bad.exit_code == 1 and "invalid bar width" in bad.output


def test_bar_start_is_utc_and_origin_moves_the_grid(
    bars_data: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bar_start` once came out naive (`"2025-12-16T14:03:00"` in JSON); and the epoch grid
    starts `7d` bars on Thursdays and cuts `1d` bars at 00:00 UTC, inside a CME session."""
    n = len(bars_data["trades"])
    day = pd.Timestamp("2025-12-16", tz="UTC").value
    with Lake(bars_data["settings"]) as lk:
        one = lk.bars(TRADES, "1m", by=None, as_of="bars")
        assert one.schema.field("bar_start").type == pa.timestamp("us", tz="UTC")
        week = lk.bars(TRADES, "7d", by=None, as_of="bars").to_pylist()
        monday = pd.Timestamp("2025-12-15", tz="UTC").value
        on_monday = lk.bars(TRADES, "7d", by=None, as_of="bars", origin_ns=monday).to_pylist()
        half = lk.bars(TRADES, "1h", by=None, as_of="bars", origin_ns=T14 + 30 * MIN)
    assert [b["bar_start"].strftime("%a %Y-%m-%d %H:%M %Z") for b in week] == [
        "Thu 2025-12-11 00:00 UTC"
    ]
    assert [(b["bar_start_ns"], b["trades"]) for b in on_monday] == [(monday, n)]
    assert half.column("bar_start_ns").to_pylist() == [T14 - 30 * MIN]  # 13:30: all 20 minutes

    monkeypatch.setenv("LAKE_DATA_DIR", str(bars_data["settings"].data_dir))
    base = ["bars", TRADES, "--every", "1d", "--by", "", "--as-of", "bars", "-o", "json"]
    cme = ["--session", "2025-12-16", "--calendar", "CME_Equity"]
    cut = CliRunner().invoke(app, [*base, *cme])
    per_session = CliRunner().invoke(app, [*base, *cme, "--origin", "session"])
    assert cut.exit_code == 0 and per_session.exit_code == 0, cut.output + per_session.output
    assert [b["bar_start"] for b in json.loads(cut.stdout)] == ["2025-12-16T00:00:00+00:00"]
    (bar,) = json.loads(per_session.stdout)  # the session opens 17:00 Chicago, 23:00 UTC
    assert (bar["bar_start"], bar["trades"]) == ("2025-12-15T23:00:00+00:00", n)
    assert bar["bar_start_ns"] == day - 3_600 * 10**9
    bad = CliRunner().invoke(app, [*base, "--start", "2025-12-16", "--origin", "session"])
    assert bad.exit_code == 1 and "--origin session needs --session" in bad.output
    # An origin in Unix ns is any point of the grid: a 23 h offset is not "milliseconds".
    offset = CliRunner().invoke(app, [*base, *cme, "--origin", str(23 * 3_600 * 10**9)])
    assert offset.exit_code == 0, offset.output
    assert json.loads(offset.stdout) == json.loads(per_session.stdout)


@pytest.mark.parametrize(
    "rn, start", [("__bar_rn", "__bar_start_ns"), ("__BAR_RN", "__Bar_Start_Ns")]
)
def test_columns_named_like_the_querys_own_are_not_read_instead(duck, rn: str, start: str) -> None:
    """The bars query numbers rows in an inner query; a table column named like one of its own
    (`__bar_rn`, `__bar_start_ns`, in any case: DuckDB binds names case-insensitively) must not
    be read in its place (found by reviews)."""
    from iceberg_lake.timetravel.bars import bars_sql

    duck.sql(
        "CREATE TABLE odd AS SELECT ts_event_ns::BIGINT AS ts_event_ns, price::DOUBLE AS price,"
        f' size::BIGINT AS size, a AS "{rn}", b AS "{start}" FROM (VALUES (0, 1, 1, 9, 42),'
        " (60000000000, 2, 1, 1, 42), (60000000001, 3, 2, 0, 42))"
        " v(ts_event_ns, price, size, a, b)"
    )
    columns = ["ts_event_ns", "price", "size", rn, start]
    got = duck.sql(bars_sql("odd", columns, 60 * 10**9, None, None, None)).fetchall()
    assert [(r[0], r[2], r[5], r[8]) for r in got] == [  # bar_start_ns, open, close, trades
        (0, 1.0, 1.0, 1),
        (60 * 10**9, 2.0, 3.0, 2),
    ]
