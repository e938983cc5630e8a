"""Spec readers (`BronzeReader`, `SilverReader`, `GoldReader`): columns, order, pins, pruning."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from timetravel_data import DAY_NS, HOUR_NS, T14, append, futures, to_arrow, trades

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import TimeTravelError, UnknownTableError
from iceberg_lake.ingest.gold import flatten_level_signals
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.readers import BronzeReader, GoldReader, SilverReader

DAY = "2025-12-16"
TRADES = "bronze.stocks_trades"
SPEC_TRADE_COLUMNS = [
    "ts_event_ns",
    "ts_recv_ns",
    "source",
    "symbol",
    "price",
    "size",
    "exchange",
    "seq",
    "conditions",
]


@pytest.fixture(scope="module")
def reader_lake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """SPY and QQQ, 20 trades an hour for 14:00-17:59 (shuffled, 5 duplicated per symbol-hour),
    tagged `r1`; then one more SPY hour (18:00) and a QQQ trade the next day; Silver compacted;
    ES futures; two Gold level-signal payloads."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path_factory.mktemp("readers") / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    rows: list[dict] = []
    for symbol in ("SPY", "QQQ"):
        for h in range(4):
            hour = trades(symbol, T14 + h * HOUR_NS, 20, 180 * 10**9, seq0=h * 100)
            rows += hour + hour[:5]  # redelivered duplicates: Bronze keeps them
    random.Random(7).shuffle(rows)
    append(catalog.load_table(TRADES), rows)
    tagged = snapshots.create_tag(settings, "r1", [TRADES])[TRADES]
    append(
        catalog.load_table(TRADES),
        trades("SPY", T14 + 4 * HOUR_NS, 20, 180 * 10**9, seq0=400)
        + trades("QQQ", DAY_NS + 24 * HOUR_NS + HOUR_NS, 1, 1),
    )
    with SilverCompactor(settings) as compactor:
        assert compactor.compact_date(DAY, "stocks.trades")["status"] == "success"
    append(
        catalog.load_table("bronze.futures_trades"),
        futures("ES", T14, 30, 60 * 10**9) + futures("EUR=X", T14, 1, 1),  # `=` in a symbol
    )
    gold = catalog.load_table("gold.levels_signals")
    signals = []
    for i, ts_ms in enumerate((T14 // 10**6 + 1_000, T14 // 10**6)):
        payload = {
            "ts": ts_ms,
            "spy": {"spot": 545.1 + i, "bid": 545.0, "ask": 545.2},
            "levels": [
                {"id": "STRIKE_546", "kind": "STRIKE", "price": 546.0, "signal": "BREAK"},
                {"id": "STRIKE_545", "kind": "STRIKE", "price": 545.0, "signal": "REJECT"},
            ],
        }
        signals += flatten_level_signals(payload)
    gold.append(to_arrow(gold, signals))
    return {"settings": settings, "tagged": tagged}


def test_bronze_reader_reads_one_symbol_hour_from_one_file(reader_lake) -> None:
    reader = BronzeReader(reader_lake["settings"])
    start, end = T14 + HOUR_NS, T14 + 2 * HOUR_NS
    df = reader.read_stock_trades("SPY", DAY, start_ns=start, end_ns=end)

    assert list(df.columns) == SPEC_TRADE_COLUMNS
    assert len(df) == 25  # 20 trades + 5 duplicates: Bronze is not deduplicated
    assert set(df["symbol"]) == {"SPY"}
    assert df["ts_event_ns"].between(start, end - 1).all()
    assert df["ts_event_ns"].is_monotonic_increasing
    scan = reader.last_scan
    assert scan is not None and scan.files_scanned == 1 and scan.files_total == 10

    whole_day = reader.read_stock_trades("SPY", DAY)
    assert len(whole_day) == 4 * 25 + 20
    assert reader.last_scan.files_scanned == 5  # the five SPY hours, none of QQQ's


def test_readers_pin_a_tag_or_a_snapshot(reader_lake) -> None:
    reader = BronzeReader(reader_lake["settings"])
    assert len(reader.read_stock_trades("SPY", DAY, tag="r1")) == 4 * 25
    assert reader.last_scan.snapshot_id == reader_lake["tagged"]
    assert len(reader.read_stock_trades("SPY", DAY, snapshot_id=reader_lake["tagged"])) == 100
    pinned = BronzeReader(reader_lake["settings"], tag="r1")
    assert len(pinned.read_stock_trades("SPY", DAY)) == 100
    assert pinned.get_available_dates("stocks/trades", "symbol=QQQ") == [DAY]
    assert reader.get_available_dates("stocks/trades", "symbol=QQQ") == [DAY, "2025-12-17"]
    assert reader.get_available_dates("bronze.stocks_trades", "SPY") == [DAY]
    assert reader.get_available_dates("stocks_trades", "symbol=XYZ") == []
    # Only a `key=` prefix is taken off: `EUR=X` is a symbol, `symbol=EUR=X` the same one.
    assert reader.get_available_dates("futures_trades", "EUR=X") == [DAY]
    assert reader.get_available_dates("futures_trades", "symbol=EUR=X") == [DAY]
    assert reader.get_available_dates("futures_trades", "X") == []
    with pytest.raises(TimeTravelError, match="no tag or snapshot"):
        reader.read_stock_trades("SPY", DAY, tag="nope")


def test_silver_reader_returns_deduplicated_sorted_rows(reader_lake) -> None:
    reader = SilverReader(reader_lake["settings"])
    df = reader.read_stock_trades("QQQ", DAY)
    assert len(df) == 4 * 20
    assert df["ts_event_ns"].is_monotonic_increasing
    assert df["seq"].is_unique
    hour = reader.read_stock_trades("QQQ", DAY, start_ns=T14 + 3 * HOUR_NS)
    assert len(hour) == 20 and reader.last_scan.files_scanned == 1


def test_futures_and_gold_readers(reader_lake) -> None:
    es = BronzeReader(reader_lake["settings"]).read_futures_trades(
        "ES", DAY, start_ns=T14 + 10 * 60 * 10**9, end_ns=T14 + 20 * 60 * 10**9
    )
    assert len(es) == 10 and es["ts_event_ns"].is_monotonic_increasing
    assert "aggressor" in es.columns and "ts_event" not in es.columns

    gold = GoldReader(reader_lake["settings"])
    df = gold.read_level_signals("SPY", DAY, T14, T14 + HOUR_NS)
    assert list(zip(df["ts_event_ns"], df["level_id"], strict=True)) == [
        (T14, "STRIKE_545"),
        (T14, "STRIKE_546"),
        (T14 + 10**9, "STRIKE_545"),
        (T14 + 10**9, "STRIKE_546"),
    ]
    assert df["spot"].tolist() == [546.1, 546.1, 545.1, 545.1]
    assert gold.read_level_signals("QQQ", DAY).empty
    assert len(gold.read_level_signals(date=DAY)) == 4


def test_empty_tables_bad_dates_and_wrong_tier(reader_lake) -> None:
    reader = BronzeReader(reader_lake["settings"])
    empty = reader.read_option_trades("SPY", DAY)
    assert empty.empty and "option_symbol" in empty.columns and "ts_event" not in empty.columns
    assert reader.last_scan.snapshot_id is None
    with pytest.raises(TimeTravelError, match="invalid date"):
        reader.read_stock_trades("SPY", "16/12/2025")
    with pytest.raises(UnknownTableError):
        reader.read("silver.stocks_trades", "SPY", DAY)


def test_a_range_that_misses_the_date_reads_nothing_with_a_warning(
    reader_lake, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/time-travel.md once paired 2025-12-16 with a 2024-12-16 range (the spec's own reader
    example still does): 0 rows, as the spec's readers always returned, but no longer silently."""
    reader = BronzeReader(reader_lake["settings"])
    # The corrected doc example (14:30-18:30 UTC of the date) reads rows.
    doc = reader.read_stock_trades(
        "SPY", DAY, start_ns=1765895400000000000, end_ns=1765909800000000000
    )
    # a trade every 3 min: 10 in 14:30-15:00 (the duplicated first five are before 14:15),
    # 3 x 25 in 15:00-18:00, 10 in 18:00-18:30
    assert len(doc) == 10 + 3 * 25 + 10 and doc["ts_event_ns"].min() >= 1765895400000000000
    assert not caplog.records
    cases = [
        (
            lambda: reader.read_stock_trades(
                "SPY", DAY, start_ns=1734359400000000000, end_ns=1734373800000000000
            ),
            "start_ns..end_ns = 2024-12-16 14:30:00 UTC .. 2024-12-16 18:30:00 UTC "
            "does not overlap 2025-12-16",
        ),
        (  # only a start
            lambda: reader.read_stock_trades("SPY", DAY, start_ns=T14 + 10 * HOUR_NS),
            "2025-12-17 00:00:00 UTC .. … does not overlap",
        ),
        (  # an empty table too
            lambda: reader.read_option_trades("SPY", DAY, start_ns=1, end_ns=2),
            "does not overlap",
        ),
    ]
    for read, said in cases:
        caplog.clear()
        assert len(read()) == 0
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and said in warned[0], warned


def test_an_aware_datetime_names_its_utc_day_in_readers_and_silver(reader_lake) -> None:
    """23:30 at UTC-5 on the 16th is 04:30 UTC on the 17th: both entry points take the UTC day
    (they once disagreed: Silver took the local date). Only one QQQ trade is on the 17th."""
    late = datetime(2025, 12, 16, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert len(BronzeReader(reader_lake["settings"]).read_stock_trades("QQQ", late)) == 1
    with SilverCompactor(reader_lake["settings"]) as compactor:
        # ES futures are on the 16th only: the 17th is empty (the local date would compact them).
        result = compactor.compact_date(late, "futures.trades")
    assert (result["date"], result["status"]) == ("2025-12-17", "empty")
