"""Readers resume at any row: `batches(skip_rows=k)` yields exactly rows k.. of a full read, with
row problems at the same file rows, for every format (budget: < 3 s, no catalog)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from iceberg_lake.load import dbn, sources
from iceberg_lake.load.sources import open_source
from tests.load_data import polygon_trades, trades_table, write_csv_gz, write_dbn, write_parquet


def _make(kind: str, tmp_path: Path) -> Path:
    if kind == "csv":
        return write_csv_gz(tmp_path / "t.csv.gz", polygon_trades(3000))
    if kind == "parquet":
        return write_parquet(tmp_path / "t.parquet", trades_table(3000), row_group_size=700)
    if kind == "dbn":
        return write_dbn(tmp_path / "t.dbn.zst", "trades", 3000, {1: "A"}, unknown={5, 2500})
    lines = [json.dumps({"seq": i, "symbol": "A", "price": 1.0 + i}) for i in range(3000)]
    lines[5] = "{not json"
    lines[2500] = "[1, 2]"
    path = tmp_path / "t.ndjson"
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path: Path, fmt: str, skip: int) -> tuple[list[dict], dict[int, str]]:
    rows: list[dict] = []
    problems: dict[int, str] = {}
    expected = skip
    for batch in open_source(path, fmt).batches(skip_rows=skip):
        assert batch.first_row == expected  # contiguous, no gaps, no repeats
        expected += batch.table.num_rows
        rows.extend(batch.table.to_pylist())
        problems.update({batch.first_row + r: p for r, p in batch.problems.items()})
    return rows, problems


@pytest.mark.parametrize("fmt", ["csv", "parquet", "dbn", "ndjson"])
def test_skip_rows_resumes_exactly_at_the_row(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "BATCH_ROWS", 1000)  # several Parquet batches per row group
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16_384)  # several CSV/NDJSON blocks
    monkeypatch.setattr(dbn, "BATCH_RECORDS", 1000)  # several DBN batches per decode
    path = _make(fmt, tmp_path)
    full, full_problems = _read(path, fmt, 0)
    assert len(full) == 3000
    if fmt in ("dbn", "ndjson"):
        assert sorted(full_problems) == [5, 2500]
    for skip in (0, 1, 699, 700, 1234, 2999, 3000, 5000):
        rows, problems = _read(path, fmt, skip)
        assert rows == full[skip:], skip
        assert problems == {r: p for r, p in full_problems.items() if r >= skip}


def test_ndjson_values_keep_their_text_when_a_block_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text('{"a": 1, "b": "x"}\n{"a": "two", "b": null}\n')
    (batch,) = list(open_source(path, "ndjson").batches())
    assert batch.table.column("a").to_pylist() == ["1", "two"]
    assert batch.table.column("b").type == pa.string()


@pytest.mark.parametrize("compressed", [False, True])
def test_dbn_block_decoding_matches_the_record_decoder_with_mappings_in_the_stream(
    compressed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vectorised MBP-10 decoding gives what databento-dbn's record objects say, field by
    field, also across `SymbolMappingMsg` records in the stream (which map a new instrument
    from there on) and batch boundaries."""
    import databento_dbn as d
    import zstandard

    from tests.load_data import T14

    monkeypatch.setattr(dbn, "BATCH_RECORDS", 64)
    plain = write_dbn(tmp_path / "p.dbn", "mbp-10", 600, {1: "ESH6"}, unknown={3, 50, 300, 599})
    data = plain.read_bytes()
    start = 8 + int.from_bytes(data[4:8], "little")
    size = 368
    mapping = d.SymbolMappingMsg(
        publisher_id=1,
        instrument_id=999,
        ts_event=T14,
        stype_in=d.SType.RAW_SYMBOL,
        stype_in_symbol="NQH6",
        stype_out=d.SType.INSTRUMENT_ID,
        stype_out_symbol="999",
        start_ts=T14,
        end_ts=T14 + 10**12,
    )
    # Instrument 999 is mapped from record 100 on (twice, to cross a read and a batch).
    cut = start + 100 * size
    spliced = data[:cut] + bytes(mapping) + data[cut : cut + 5 * size] + bytes(mapping)
    spliced += data[cut + 5 * size :]
    path = tmp_path / ("m.dbn.zst" if compressed else "m.dbn")
    path.write_bytes(zstandard.ZstdCompressor().compress(spliced) if compressed else spliced)

    rows, problems = _read(path, "dbn", 0)
    assert len(rows) == 600
    assert sorted(problems) == [3, 50]  # 300 and 599 are mapped by then
    assert rows[300]["symbol"] == rows[599]["symbol"] == "NQH6"

    decoder = d.DBNDecoder()
    decoder.write(plain.read_bytes())
    records = [r for r in decoder.decode() if isinstance(r, d.MBP10Msg)]
    for row, rec in zip(rows, records, strict=True):
        assert row["ts_event"] == rec.ts_event and row["ts_recv"] == rec.ts_recv
        assert row["instrument_id"] == rec.instrument_id and row["sequence"] == rec.sequence
        assert row["price"] == rec.price / d.FIXED_PRICE_SCALE
        assert (row["side"], row["action"]) == (str(rec.side), str(rec.action))
        for k, level in enumerate(rec.levels):
            bid = None if level.bid_px == d.UNDEF_PRICE else level.bid_px / d.FIXED_PRICE_SCALE
            assert row[f"bid_px_{k:02d}"] == bid
            assert row[f"ask_px_{k:02d}"] == level.ask_px / d.FIXED_PRICE_SCALE
            assert (row[f"bid_sz_{k:02d}"], row[f"ask_ct_{k:02d}"]) == (level.bid_sz, level.ask_ct)


def test_dbn_books_are_the_books_each_event_left(tmp_path: Path) -> None:
    """A venue's event updates a book several times; its records share the event's time and
    sequence, and only the last (`F_LAST`) is a book that stood. The others shared the dedup
    key, so Silver kept one of them at random and replay and as-of joins saw books that never
    existed (quant8). Rows are the events' last records; a file without `F_LAST` keeps all."""
    for schema in ("mbp-10", "mbp-1"):
        path = write_dbn(tmp_path / f"events.{schema}.dbn", schema, 30, {1: "ESH6"}, event_size=3)
        source = dbn.DbnSource(path)
        rows = pa.concat_tables(b.table for b in source.batches())
        assert rows.num_rows == 10, schema
        assert rows.column("sequence").to_pylist() == list(range(10))
        # Each kept row is the event's last record (record 3k + 2: price 100 + (3k + 2)/100).
        px = "price"
        assert rows.column(px).to_pylist() == [100 + (3 * k + 2) / 100 for k in range(10)]
        # Resuming after row 4 continues with the fifth event, not the fifth record.
        resumed = pa.concat_tables(b.table for b in source.batches(skip_rows=4))
        assert resumed.column("sequence").to_pylist() == list(range(4, 10))
    plain = dbn.DbnSource(write_dbn(tmp_path / "plain.mbp-10.dbn", "mbp-10", 30, {1: "ESH6"}))
    assert sum(b.table.num_rows for b in plain.batches()) == 30


def test_dbn_symbols_of_a_parent_subscription_and_of_a_roll_at_midnight(tmp_path: Path) -> None:
    """Two ways a DBN file named the wrong contract (quant9): a live recording subscribed to
    the parent `ES.FUT` maps each instrument with a `SymbolMappingMsg` whose input symbol is
    `ES.FUT` for every contract (the output symbol is the contract, as databento-python reads
    it); and a continuous-contract roll at midnight UTC is looked up by the receive time, as
    Databento's tools do, not the event time (a trade at 23:59:59.999999 received after
    midnight took the previous day's contract)."""
    import datetime as dt
    from types import SimpleNamespace as NS

    import databento_dbn as d

    from tests.load_data import PX, T14

    def trade(iid: int, ts_event: int, ts_recv: int, sequence: int) -> bytes:
        return bytes(
            d.TradeMsg(
                publisher_id=1, instrument_id=iid, ts_event=ts_event, ts_recv=ts_recv,
                price=6000 * PX, size=1, action=d.Action.TRADE, side=d.Side.BID, depth=0,
                flags=d.F_LAST, sequence=sequence,
            )
        )  # fmt: skip

    # A live recording's metadata has no input stype (a session mixes subscriptions; review13:
    # the lake read the parent from it and stored every contract as ES.FUT): each mapping
    # record says how its instrument was requested, here by parent and by raw symbol.
    live = d.Metadata(
        dataset="GLBX.MDP3", start=T14 - 10**12, stype_in=None,
        stype_out=d.SType.INSTRUMENT_ID, schema=d.Schema.TRADES, symbols=["ES.FUT", "NQH6"],
        mappings=[],
    )  # fmt: skip
    data = bytearray(live.encode())
    contracts = {200: "ESH6", 300: "ESM6", 400: "ESH6-ESM6", 500: "NQH6"}
    for iid, raw in contracts.items():
        stype_in, requested = (
            (d.SType.RAW_SYMBOL, raw) if raw == "NQH6" else (d.SType.PARENT, "ES.FUT")
        )
        data += bytes(
            d.SymbolMappingMsg(
                publisher_id=1, instrument_id=iid, ts_event=T14 - 10**9,
                stype_in=stype_in, stype_in_symbol=requested,
                stype_out=d.SType.RAW_SYMBOL, stype_out_symbol=raw,
                start_ts=T14 - 10**12, end_ts=T14 + 10**14,
            )
        )  # fmt: skip
    for k, iid in enumerate(contracts):
        data += trade(iid, T14 + k, T14 + k + 500, k)
    path = tmp_path / "live.trades.dbn"
    path.write_bytes(bytes(data))
    rows = pa.concat_tables(b.table for b in dbn.DbnSource(path).batches())
    assert rows.column("symbol").to_pylist() == list(contracts.values())

    # Any other subscription keeps the requested symbol, as a historical file of the same
    # trades names it (ES.c.0, not ESH6): the two loads must agree, or Silver keeps both copies
    # (review12).
    data = bytearray(
        d.Metadata(
            dataset="GLBX.MDP3", start=T14 - 10**12, stype_in=d.SType.CONTINUOUS,
            stype_out=d.SType.INSTRUMENT_ID, schema=d.Schema.TRADES, symbols=["ES.c.0"],
            mappings=[],
        ).encode()
    )  # fmt: skip
    data += bytes(
        d.SymbolMappingMsg(
            publisher_id=1, instrument_id=200, ts_event=T14 - 10**9,
            stype_in=d.SType.CONTINUOUS, stype_in_symbol="ES.c.0",
            stype_out=d.SType.RAW_SYMBOL, stype_out_symbol="ESH6",
            start_ts=T14 - 10**12, end_ts=T14 + 10**14,
        )
    )  # fmt: skip
    data += trade(200, T14, T14 + 500, 1)
    path = tmp_path / "live-continuous.trades.dbn"
    path.write_bytes(bytes(data))
    rows = pa.concat_tables(b.table for b in dbn.DbnSource(path).batches())
    assert rows.column("symbol").to_pylist() == ["ES.c.0"]

    midnight = int(dt.datetime(2025, 12, 17, tzinfo=dt.UTC).timestamp()) * 10**9
    day, next_day, after = (dt.date(2025, 12, 16) + dt.timedelta(days=k) for k in range(3))
    roll = d.Metadata(
        dataset="GLBX.MDP3", start=midnight - 86_400 * 10**9, end=midnight + 86_400 * 10**9,
        stype_in=d.SType.CONTINUOUS, stype_out=d.SType.INSTRUMENT_ID, schema=d.Schema.TRADES,
        symbols=["ES.c.0", "ES.c.1"],
        mappings=[
            NS(raw_symbol="ES.c.0", intervals=[NS(start_date=day, end_date=next_day, symbol="100"),
                NS(start_date=next_day, end_date=after, symbol="200")]),
            NS(raw_symbol="ES.c.1", intervals=[NS(start_date=day, end_date=next_day, symbol="200"),
                NS(start_date=next_day, end_date=after, symbol="300")]),
        ],
    )  # fmt: skip
    data = bytearray(roll.encode())
    data += trade(200, midnight - 1_000, midnight + 1_000, 1)  # event before, received after
    data += trade(200, midnight - 10**9, midnight - 10**9 + 500, 2)  # both before midnight
    path = tmp_path / "roll.trades.dbn"
    path.write_bytes(bytes(data))
    rows = pa.concat_tables(b.table for b in dbn.DbnSource(path).batches())
    assert rows.column("symbol").to_pylist() == ["ES.c.0", "ES.c.1"]


def test_a_dbn_record_on_a_day_its_instrument_is_not_mapped_has_no_symbol(
    tmp_path: Path,
) -> None:
    """An instrument mapped to one symbol for part of the file's range took that symbol on
    every day (quant13: ESH6 mapped for 2025-12-16 only named a trade of 12-17 too); outside
    its intervals a record has no symbol, so the load dead-letters it as an unknown
    instrument, as docs/backfill.md says."""
    import datetime as dt
    from types import SimpleNamespace as NS

    import databento_dbn as d

    from tests.load_data import PX

    day = dt.date(2025, 12, 16)
    start = int(dt.datetime(2025, 12, 16, tzinfo=dt.UTC).timestamp()) * 10**9
    day_ns = 86_400 * 10**9
    meta = d.Metadata(
        dataset="GLBX.MDP3", start=start, end=start + 2 * day_ns, stype_in=d.SType.RAW_SYMBOL,
        stype_out=d.SType.INSTRUMENT_ID, schema=d.Schema.TRADES, symbols=["ESH6", "NQH6"],
        mappings=[
            NS(raw_symbol="ESH6",
               intervals=[NS(start_date=day, end_date=day + dt.timedelta(days=1), symbol="10")]),
            NS(raw_symbol="NQH6",
               intervals=[NS(start_date=day, end_date=day + dt.timedelta(days=2), symbol="20")]),
        ],
    )  # fmt: skip
    data = bytearray(meta.encode())
    for k, (iid, ts) in enumerate([(10, start + 1), (10, start + day_ns + 1), (20, start + 2)]):
        data += bytes(
            d.TradeMsg(
                publisher_id=1, instrument_id=iid, ts_event=ts, ts_recv=ts + 500,
                price=6000 * PX, size=1, action=d.Action.TRADE, side=d.Side.BID, depth=0,
                flags=d.F_LAST, sequence=k,
            )
        )  # fmt: skip
    path = tmp_path / "partial-day.trades.dbn"
    path.write_bytes(bytes(data))
    rows = pa.concat_tables(b.table for b in dbn.DbnSource(path).batches())
    assert rows.column("symbol").to_pylist() == ["ESH6", None, "NQH6"]


def test_record_positions_within_events_do_not_depend_on_block_boundaries() -> None:
    """`record_seq`'s position is the count of earlier records of the same instrument in the
    same event (publisher, `ts_event`, `sequence`) received at the same time, however the
    stream is cut into blocks (an event straddles blocks) and whatever other events' records
    sit between them (quant10: an interruption restarted the count, and Silver merged a real
    trade with its event's first)."""
    import random

    import numpy as np

    layout = np.dtype(
        [("publisher_id", "<u2"), ("instrument_id", "<u4"), ("ts_event", "<u8"),
         ("sequence", "<u4"), ("ts_recv", "<u8")]
    )  # fmt: skip
    rng = random.Random(3)
    for _ in range(200):
        records = []
        for event in range(1, rng.randint(2, 30)):
            # Events of two venues received at the same time, their records interleaved.
            batch = [
                (pub, rng.randint(1, 3), event * 10 + pub, event, event * 100)
                for pub in (1, 2)
                for _ in range(rng.randint(1, 4))
            ]
            rng.shuffle(batch)
            records.extend(batch)
        seen: dict[tuple[int, ...], int] = {}
        expected = []
        for r in records:
            expected.append(seen.get(r, 0))
            seen[r] = seen.get(r, 0) + 1
        stream = np.array(records, dtype=layout)
        cuts = sorted(rng.sample(range(1, len(stream)), min(3, len(stream) - 1)))
        events = dbn._EventPositions()
        got = np.concatenate([events.positions(part) for part in np.split(stream, cuts)])
        assert got.tolist() == expected, (records, cuts)


def test_dbn_files_the_lake_cannot_name_or_decode_are_one_line(tmp_path: Path) -> None:
    """A historical file of a parent request (ES.FUT) maps the parent to every contract and
    spread without naming them: all were stored as ES.FUT in one series (quant10), so the file
    is refused with what to load instead. A malformed record made databento-dbn's decoder
    panic, a BaseException that escaped as a raw Rust panic and stopped every file of the
    command (quant10): it is one line naming the file."""
    import datetime as dt
    from types import SimpleNamespace as NS

    import databento_dbn as d

    from iceberg_lake.exceptions import LakeError
    from tests.load_data import DAY, T14

    day_after = DAY + dt.timedelta(days=1)
    parent = d.Metadata(
        dataset="GLBX.MDP3", start=T14 - 10**12, end=T14 + 10**12, stype_in=d.SType.PARENT,
        stype_out=d.SType.INSTRUMENT_ID, schema=d.Schema.TRADES, symbols=["ES.FUT"],
        mappings=[NS(raw_symbol="ES.FUT", intervals=[
            NS(start_date=DAY, end_date=day_after, symbol=str(i)) for i in (200, 300, 400)
        ])],
    )  # fmt: skip
    path = tmp_path / "parent.trades.dbn"
    path.write_bytes(parent.encode())
    with pytest.raises(LakeError, match=r"ES.FUT names 3 instruments on the same day"):
        dbn.DbnSource(path)

    with_ts_out = d.Metadata(
        dataset="GLBX.MDP3", start=T14 - 10**12, stype_in=d.SType.RAW_SYMBOL,
        stype_out=d.SType.INSTRUMENT_ID, schema=d.Schema.TRADES, symbols=["ESH6"], mappings=[],
        ts_out=True,
    )  # fmt: skip
    mapping = d.SymbolMappingMsg(
        publisher_id=1, instrument_id=1, ts_event=T14, stype_in=d.SType.RAW_SYMBOL,
        stype_in_symbol="ESH6", stype_out=d.SType.INSTRUMENT_ID, stype_out_symbol="1",
        start_ts=T14, end_ts=T14 + 10**12,
    )  # fmt: skip
    path = tmp_path / "malformed.trades.dbn"
    path.write_bytes(with_ts_out.encode() + bytes(mapping))  # a record short of its ts_out
    with pytest.raises(LakeError, match=r"malformed.trades.dbn: corrupt DBN data"):
        list(dbn.DbnSource(path).batches())
