"""Bars (`timetravel.bars`, `lake bars`) checked against a brute-force pandas computation.

Generated trades and quotes with many equal timestamps (open/close must follow replay order),
a pin that later appends must not change, and the CLI. Budget: ~6 s.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
from timetravel_data import HOUR_NS, T14, append
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.bars import parse_every
from iceberg_lake.timetravel.query import Lake

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
                "bid_px": bid,
                "ask_px": round(bid + rng.choice([0.01, 0.02, 0.05]), 2),
                "bid_sz": rng.randrange(1, 900),
                "ask_sz": rng.randrange(1, 900),
                "seq": i,
            }
        )
    return out


@pytest.fixture(scope="module")
def bars_data(module_lake: LakeCatalog) -> dict:
    catalog, settings = module_lake, module_lake.settings
    rng = random.Random(5)
    trades, quotes = _trades(rng, 4000), _quotes(rng, 4000)
    append(catalog.load_table(TRADES), trades[:2000])
    append(catalog.load_table(TRADES), trades[2000:])
    append(catalog.load_table(QUOTES), quotes)
    snapshots.create_tag(settings, "bars", [TRADES, QUOTES])
    # After the tag: bars pinned to it must not see these.
    append(catalog.load_table(TRADES), _trades(random.Random(9), 500))
    return {"settings": settings, "trades": trades, "quotes": quotes}


def _first_last(df: pd.DataFrame, value: str, every: int, by: str | None) -> pd.DataFrame:
    df = df.assign(bar_start_ns=(df["ts_event_ns"] // every) * every)
    df = df.sort_values(["ts_event_ns", "seq", "ts_recv_ns"], kind="stable")
    keys = [by, "bar_start_ns"] if by else ["bar_start_ns"]
    g = df.groupby(keys, sort=True)[value]
    return pd.DataFrame(
        {"open": g.first(), "high": g.max(), "low": g.min(), "close": g.last(), "n": g.size()}
    )


def test_trade_bars_match_pandas(bars_data: dict) -> None:
    start, end = T14 + 3 * MIN + 7 * MS, T14 + 17 * MIN
    with Lake(bars_data["settings"]) as lk:
        got = lk.bars(TRADES, "1m", start_ns=start, end_ns=end, as_of="bars").to_pandas()
    df = pd.DataFrame(bars_data["trades"])
    df = df[(df.ts_event_ns >= start) & (df.ts_event_ns < end)]
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


def test_quote_bars_mid_and_spread_match_pandas(bars_data: dict) -> None:
    with Lake(bars_data["settings"]) as lk:
        got = lk.bars(QUOTES, "5s", by=None, as_of="bars").to_pandas()
    df = pd.DataFrame(bars_data["quotes"])
    df["mid"] = (df.bid_px + df.ask_px) / 2
    df["spread"] = df.ask_px - df.bid_px
    every = parse_every("5s")
    mid = _first_last(df, "mid", every, None).reset_index()
    spread = _first_last(df, "spread", every, None).reset_index()
    assert got["bar_start_ns"].tolist() == mid["bar_start_ns"].tolist()
    for part in ("open", "high", "low", "close"):
        assert (got[f"mid_{part}"] - mid[part]).abs().max() < 1e-9, part
        assert (got[f"spread_{part}"] - spread[part]).abs().max() < 1e-9, part
    assert got["quotes"].tolist() == mid["n"].tolist()
    assert got["quotes"].sum() == len(df)


def test_pin_and_errors(bars_data: dict) -> None:
    with Lake(bars_data["settings"]) as lk:
        pinned = lk.bars(TRADES, "1h", by=None, as_of="bars")
        current = lk.bars(TRADES, "1h", by=None)
        assert pinned.column("trades").to_pylist() == [4000]
        assert current.column("trades").to_pylist() == [4500]
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
    assert len(table) == 2 * 4 and table["trades"].sum() == 4000
    bad = CliRunner().invoke(app, ["bars", TRADES, "--every", "soon", "--start", "2025-12-16"])
    assert bad.exit_code == 1 and "invalid bar width" in bad.output
