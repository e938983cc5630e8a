"""Test files for `lake load`, made here: DBN with databento-dbn's own encoder, CSV/Parquet with
pyarrow. Shared by `test_load*.py` and `scripts/bench_load.py`."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import databento_dbn as dbn
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

#: 2025-12-16 14:00:00 UTC in nanoseconds.
T14 = int(dt.datetime(2025, 12, 16, 14, tzinfo=dt.UTC).timestamp()) * 10**9
HOUR_NS = 3600 * 10**9
DAY = dt.date(2025, 12, 16)
PX = 10**9  # DBN fixed-point scale


def dbn_metadata(
    schema: Any, symbols: dict[int, str], dataset: str = "GLBX.MDP3", ts_out: bool = False
) -> Any:
    """DBN metadata mapping each instrument id to its symbol for the whole test day."""
    mappings = [
        SimpleNamespace(
            raw_symbol=sym,
            intervals=[
                SimpleNamespace(
                    start_date=DAY, end_date=DAY + dt.timedelta(days=1), symbol=str(iid)
                )
            ],
        )
        for iid, sym in symbols.items()
    ]
    return dbn.Metadata(
        dataset=dataset,
        start=T14 - 14 * HOUR_NS,
        stype_in=dbn.SType.RAW_SYMBOL,
        stype_out=dbn.SType.INSTRUMENT_ID,
        schema=schema,
        symbols=list(symbols.values()),
        mappings=mappings,
        end=T14 + 10 * HOUR_NS,
        ts_out=ts_out,
    )


def write_dbn(
    path: Path,
    schema: str,
    n: int,
    symbols: dict[int, str],
    *,
    unknown: set[int] = frozenset(),  # type: ignore[assignment]
    bad_price: set[int] = frozenset(),  # type: ignore[assignment]
    spread_ns: int = 2 * HOUR_NS,
    dataset: str = "GLBX.MDP3",
    ts_out: bool = False,
    event_size: int = 0,
) -> Path:
    """Write `n` records of `schema` (`trades`, `mbp-1`, `mbp-10`) with databento-dbn's encoder.

    Row i: instrument `ids[i % len]` (or 999, not in the mappings, when `i in unknown`), event
    time spread evenly over `spread_ns` from 14:00, price 100 + i/100 (or 0 when `i in
    bad_price`), size i % 7 + 1, sequence i, no flags. A `.zst` path is zstd-compressed.
    `event_size` > 0: records come in events of that many records of one instrument, as a venue
    sends them (the event's event time, receive time and sequence, `F_LAST` on its last record
    only: the book as the event left it).
    """
    ids = list(symbols)
    dbn_schema = {
        "trades": dbn.Schema.TRADES,
        "mbp-1": dbn.Schema.MBP_1,
        "mbp-10": dbn.Schema.MBP_10,
    }
    out = io.BytesIO()
    out.write(dbn_metadata(dbn_schema[schema], symbols, dataset, ts_out).encode())
    for i in range(n):
        iid = 999 if i in unknown else ids[i % len(ids)]
        ts = T14 + (i * spread_ns) // max(1, n)
        price = 0 if i in bad_price else (100 * PX + i * PX // 100)
        flags, sequence = 0, i
        if event_size:
            event = i // event_size
            iid = ids[event % len(ids)]
            ts = T14 + (event * event_size * spread_ns) // max(1, n)
            sequence = event
            flags = dbn.F_LAST if i % event_size == event_size - 1 else 0
        common = {
            "publisher_id": 1,
            "instrument_id": iid,
            "ts_event": ts,
            "price": price,
            "size": i % 7 + 1,
            "action": dbn.Action.TRADE,
            "side": dbn.Side.BID if i % 2 else dbn.Side.ASK,
            "depth": 0,
            "ts_recv": ts + 500,
            "flags": flags,
            "sequence": sequence,
        }
        if ts_out:
            common["ts_out"] = ts + 900
        if schema == "trades":
            rec: Any = dbn.TradeMsg(**common)
        elif schema == "mbp-1":
            level = dbn.BidAskPair(
                bid_px=price - PX // 100 if price else 0,
                ask_px=price + PX // 100,
                bid_sz=10,
                ask_sz=12,
            )
            rec = dbn.MBP1Msg(**common, levels=level)
        else:
            levels = [
                dbn.BidAskPair(
                    bid_px=price - (k + 1) * PX // 4 if price else 0,
                    ask_px=price + (k + 1) * PX // 4,
                    bid_sz=10 + k,
                    ask_sz=20 + k,
                )
                for k in range(10)
            ]
            rec = dbn.MBP10Msg(**common, levels=levels)
        out.write(bytes(rec))
    data = out.getvalue()
    if path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def polygon_trades(n: int, symbols: tuple[str, ...] = ("AAPL", "MSFT")) -> dict[str, list[Any]]:
    """Polygon flat-file trade rows, as text (the way the files are)."""
    ts = [T14 + i * 1_000_000 for i in range(n)]
    return {
        "ticker": [symbols[i % len(symbols)] for i in range(n)],
        "conditions": ["12,37" if i % 3 == 0 else "" for i in range(n)],
        "correction": ["" for _ in range(n)],
        "exchange": [str(4 + i % 8) for i in range(n)],
        "id": [str(i) for i in range(n)],
        "participant_timestamp": [str(t - 1000) for t in ts],
        "price": [f"{150 + (i % 100) / 100:.2f}" for i in range(n)],
        "sequence_number": [str(i) for i in range(n)],
        "sip_timestamp": [str(t) for t in ts],
        "size": [str(i % 500 + 1) for i in range(n)],
        "tape": ["3" for _ in range(n)],
        "trf_id": ["" for _ in range(n)],
        "trf_timestamp": ["" for _ in range(n)],
    }


def polygon_quotes(n: int, symbols: tuple[str, ...] = ("AAPL", "MSFT")) -> dict[str, list[Any]]:
    """Polygon flat-file quote rows, as text."""
    ts = [T14 + i * 1_000_000 for i in range(n)]
    return {
        "ticker": [symbols[i % len(symbols)] for i in range(n)],
        "ask_exchange": ["11" for _ in range(n)],
        "ask_price": [f"{150.02 + (i % 10) / 100:.2f}" for i in range(n)],
        "ask_size": [str(i % 9 + 1) for i in range(n)],
        "bid_exchange": ["12" for _ in range(n)],
        "bid_price": [f"{150 + (i % 10) / 100:.2f}" for i in range(n)],
        "bid_size": [str(i % 5 + 1) for i in range(n)],
        "conditions": ["1" for _ in range(n)],
        "indicators": ["" for _ in range(n)],
        "participant_timestamp": [str(t - 1000) for t in ts],
        "sequence_number": [str(i) for i in range(n)],
        "sip_timestamp": [str(t) for t in ts],
        "tape": ["3" for _ in range(n)],
        "trf_timestamp": ["" for _ in range(n)],
    }


def write_csv_gz(path: Path, columns: dict[str, list[Any]]) -> Path:
    """Write text columns as a gzip CSV with pyarrow."""
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))
    return path


def trades_table(n: int, symbols: tuple[str, ...] = ("ESH6", "ESM6"), start: int = T14) -> pa.Table:
    """Futures trades with vendor column names (for a user mapping), event times in ms-spaced ns."""
    i = np.arange(n, dtype=np.int64)
    sym = np.array(symbols, dtype=object)[i % len(symbols)]
    return pa.table(
        {
            "instrument": pa.array(sym, pa.string()),
            "t_ns": pa.array(start + i * 1_000_000, pa.int64()),
            "px": pa.array(6000.0 + (i % 400) * 0.25, pa.float64()),
            "qty": pa.array((i % 20 + 1).astype(np.int64), pa.int64()),
            "trade_id": pa.array(i, pa.int64()),
        }
    )


def write_parquet(path: Path, table: pa.Table, row_group_size: int = 65_536) -> Path:
    """Write `table` as Parquet with pyarrow."""
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return path


TRADES_MAPPING = """
name = "vendor_futures"
table = "bronze.futures_trades"
source = "vendor"

[columns]
symbol = "instrument"
ts_event_ns = "t_ns"
price = "px"
size = "qty"
seq = "trade_id"
"""


def killed_at_commit(monkeypatch: Any, n: int, load: Any, what: str = "killed") -> None:
    """Run `load()` and stop it at its `n`-th commit of rows, the ones before in (a kill -9
    between commits: `FileCommitter.commit_rows` raises); the commit path is restored after."""
    import pytest

    from iceberg_lake.load.commit import FileCommitter

    real = FileCommitter.commit_rows

    def kill() -> None:
        raise RuntimeError(what)

    at_commit(monkeypatch, n, kill)
    try:
        with pytest.raises(RuntimeError, match=re.escape(what)):
            load()
    finally:
        monkeypatch.setattr(FileCommitter, "commit_rows", real)


def at_commit(monkeypatch: Any, n: int, action: Any) -> None:
    """Run `action()` just before the `n`-th commit of rows (`FileCommitter.commit_rows`)."""
    from iceberg_lake.load.commit import FileCommitter

    real = FileCommitter.commit_rows
    calls = {"n": 0}

    def commit_rows(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FileCommitter, "commit_rows", commit_rows)
