"""Guard tests of the databento-dbn internals in `iceberg_lake/engine/dbn.py` (budget: < 1 s).

The loader views DBN record bytes through the dtype each record class publishes. If an upgrade
changes a record's layout or drops the attributes, these fail before any data is misread.
"""

from __future__ import annotations

import databento_dbn as dbn
import numpy as np
import pytest

from iceberg_lake.engine.dbn import hidden_fields, price_fields, record_dtype, timestamp_fields


def _record(cls):  # type: ignore[no-untyped-def]
    common = {
        "publisher_id": 3,
        "instrument_id": 42,
        "ts_event": 1_765_893_600_000_000_123,
        "price": 6_000_250_000_000,
        "size": 7,
        "action": dbn.Action.TRADE,
        "side": dbn.Side.BID,
        "depth": 0,
        "ts_recv": 1_765_893_600_000_000_999,
        "flags": dbn.F_SNAPSHOT,
        "sequence": 99,
    }
    if cls is dbn.TradeMsg:
        return cls(**common)
    level = dbn.BidAskPair(bid_px=6_000 * 10**9, ask_px=6_001 * 10**9, bid_sz=5, ask_sz=6)
    if cls is dbn.MBP1Msg:
        return cls(**common, levels=level)
    return cls(**common, levels=[level] * 10)


@pytest.mark.parametrize("cls", [dbn.TradeMsg, dbn.MBP1Msg, dbn.MBP10Msg])
def test_record_bytes_are_one_item_of_the_published_dtype(cls) -> None:  # type: ignore[no-untyped-def]
    rec = _record(cls)
    raw = bytes(rec)
    dtype = record_dtype(cls)
    assert len(raw) == dtype.itemsize
    item = np.frombuffer(raw, dtype=dtype)[0]
    assert item["instrument_id"] == 42
    assert item["price"] == 6_000_250_000_000
    assert item["ts_event"] == 1_765_893_600_000_000_123
    assert item["ts_recv"] == 1_765_893_600_000_000_999
    assert item["sequence"] == 99
    assert item["side"] == b"B"
    assert item["flags"] & dbn.F_SNAPSHOT
    assert {"price"} <= price_fields(cls)
    assert {"ts_event", "ts_recv"} <= timestamp_fields(cls)
    assert hidden_fields(cls) <= set(dtype.names)
    if cls is not dbn.TradeMsg:
        assert item["bid_px_00"] == 6_000 * 10**9
        assert item["ask_sz_00"] == 6
        assert "bid_px_00" in price_fields(cls)


def test_ts_out_records_are_one_item_of_the_dtype_with_ts_out() -> None:
    rec = dbn.TradeMsg(
        publisher_id=1,
        instrument_id=7,
        ts_event=10**18,
        price=10**9,
        size=1,
        action=dbn.Action.TRADE,
        side=dbn.Side.ASK,
        depth=0,
        ts_recv=10**18 + 1,
        ts_out=10**18 + 9,
    )
    item = np.frombuffer(bytes(rec), dtype=record_dtype(dbn.TradeMsg, ts_out=True))[0]
    assert (item["instrument_id"], item["ts_out"]) == (7, 10**18 + 9)


@pytest.mark.parametrize(
    ("cls", "schema"),
    [
        (dbn.TradeMsg, dbn.Schema.TRADES),
        (dbn.MBP1Msg, dbn.Schema.MBP_1),
        (dbn.MBP1Msg, dbn.Schema.TBBO),
        (dbn.MBP10Msg, dbn.Schema.MBP_10),
    ],
)
def test_data_records_are_the_same_in_every_dbn_version(cls, schema) -> None:  # type: ignore[no-untyped-def]
    """The loader views a file's data records through the current layout whatever the file's
    DBN version (only mapping/system records go through the upgrading decoder), and tells data
    records by the `rtype` of the file's schema."""
    for version in (dbn.v1, dbn.v2, dbn.v3):
        old = getattr(version, cls.__name__)
        assert list(old._dtypes) == list(cls._dtypes), version.__name__
    raw = bytes(_record(cls))
    assert raw[0] * 4 == len(raw)  # the header's length counts 32-bit words
    assert raw[1] == dbn.RType.from_schema(schema).value
