"""Databento DBN files (`.dbn`, `.dbn.zst`) as Arrow batches, decoded by `databento-dbn`.

`databento_dbn.DBNDecoder` reads the metadata header and splits the (zstd) stream into records,
upgrading older DBN versions to the current layout. The records of the file's schema are packed
back to their wire bytes and viewed as a NumPy structured array with the layout the package
publishes for each record class (`iceberg_lake.engine.dbn.record_dtype`), so a million MBP-10
records become columns without a Python loop over fields.

Output columns (what the `catalog/mappings/databento_*.toml` mappings read):

* the record's own fields, named as in DBN (`ts_event`, `ts_recv`, `price`, `size`,
  `bid_px_00`, ...), with fixed-point prices (1e-9) as float64 and the "undefined" sentinels
  (`UNDEF_PRICE`, `UNDEF_TIMESTAMP`) as null;
* `symbol`: the instrument's symbol from the metadata's symbology mappings (date-ranged) and any
  `SymbolMappingMsg` records in the stream; null for an instrument the file does not map (the
  row is dead-lettered as an unknown instrument);
* `aggressor` (+1 buy, -1 sell, 0 none, from `side`) and `is_snapshot` (the `F_SNAPSHOT` flag).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from iceberg_lake.engine.dbn import hidden_fields, price_fields, record_dtype, timestamp_fields
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load.sources import SourceBatch

#: Decoded bytes per read (records stay in the decoder between reads).
READ_BYTES = 1 << 20
#: Records per batch at most (a zstd megabyte can hold tens of megabytes of records).
BATCH_RECORDS = 131_072
_NS_PER_DAY = 86_400 * 10**9
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _dbn() -> Any:
    try:
        import databento_dbn
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise LakeError("reading DBN files needs the databento-dbn package") from exc
    return databento_dbn


def record_class(schema: str) -> Any:
    """The record class of a DBN schema the lake loads (`trades`, `tbbo`, `mbp-1`, `mbp-10`).

    Raises:
        LakeError: the schema is not one the lake loads.
    """
    d = _dbn()
    classes = {"trades": d.TradeMsg, "tbbo": d.MBP1Msg, "mbp-1": d.MBP1Msg, "mbp-10": d.MBP10Msg}
    if schema not in classes:
        raise LakeError(
            f"DBN schema '{schema}' is not loaded by the lake (supported: {', '.join(classes)})"
        )
    return classes[schema]


@dataclass(frozen=True)
class _Interval:
    instrument_id: int
    start_day: int
    end_day: int
    symbol: str


class _Symbology:
    """instrument_id → symbol, by UTC day, from the metadata and in-stream mapping records."""

    def __init__(self, metadata: Any) -> None:
        self.static: dict[int, str] = {}
        self.ranged: dict[int, list[_Interval]] = {}
        d = _dbn()
        out_is_id = metadata.stype_out == d.SType.INSTRUMENT_ID
        in_is_id = metadata.stype_in == d.SType.INSTRUMENT_ID
        for raw_symbol, intervals in (metadata.mappings or {}).items():
            for iv in intervals:
                start = _day(iv["start_date"])
                end = _day(iv["end_date"])
                if out_is_id:
                    key, symbol = iv["symbol"], raw_symbol
                elif in_is_id:
                    key, symbol = raw_symbol, iv["symbol"]
                else:
                    continue
                try:
                    iid = int(key)
                except ValueError:
                    continue
                self.ranged.setdefault(iid, []).append(_Interval(iid, start, end, symbol))
        for iid, ivs in self.ranged.items():
            if len({iv.symbol for iv in ivs}) == 1:
                self.static[iid] = ivs[0].symbol
        self.ranged = {k: v for k, v in self.ranged.items() if k not in self.static}

    def update(self, instrument_id: int, symbol: str) -> None:
        """A `SymbolMappingMsg`: from now on `instrument_id` is `symbol`."""
        self.static[instrument_id] = symbol
        self.ranged.pop(instrument_id, None)

    def symbols(self, instrument_ids: np.ndarray, ts_event: np.ndarray) -> pa.Array:
        """The symbol of every record (null where the instrument is not mapped)."""
        keys = np.fromiter(self.static.keys(), dtype=np.int64, count=len(self.static))
        values = pa.array(list(self.static.values()), pa.string())
        ids = pa.array(instrument_ids.astype(np.int64))
        idx = pa.compute.index_in(ids, pa.array(keys))
        out = values.take(idx)
        if self.ranged:
            result = np.asarray(out.to_pylist(), dtype=object)
            days = ts_event.astype(np.int64) // _NS_PER_DAY
            for iid, ivs in self.ranged.items():
                hit = instrument_ids == iid
                if not hit.any():
                    continue
                for iv in ivs:
                    result[hit & (days >= iv.start_day) & (days < iv.end_day)] = iv.symbol
            out = pa.array(result.tolist(), pa.string())
        return out


def _day(value: Any) -> int:
    import datetime as dt

    if isinstance(value, str):
        value = dt.date.fromisoformat(value)
    return (value - dt.date(1970, 1, 1)).days


class DbnSource:
    """A DBN file (plain or zstd) of one schema: trades, tbbo, mbp-1 or mbp-10."""

    format = "dbn"

    def __init__(self, path: Path) -> None:
        self.path = path
        d = _dbn()
        with path.open("rb") as f:
            head = f.read(4)
        self._compression = d.Compression.ZSTD if head == _ZSTD_MAGIC else d.Compression.NONE
        self.metadata = self._read_metadata()
        schema = self.metadata.schema
        if schema is None:
            raise LakeError(f"{path.name}: a DBN file of mixed schemas cannot be loaded")
        self.schema = str(schema)
        self.record_class = record_class(self.schema)
        self.ts_out = bool(self.metadata.ts_out)
        self.dtype = record_dtype(self.record_class, self.ts_out)
        self.fields: tuple[str, ...] = self.dtype.names or ()
        self.dataset = str(self.metadata.dataset)

    def _decoder(self) -> Any:
        return _dbn().DBNDecoder(compression=self._compression)

    def _read_metadata(self) -> Any:
        d = _dbn()
        dec = self._decoder()
        try:
            with self.path.open("rb") as f:
                while chunk := f.read(1 << 16):
                    dec.write(chunk)
                    records = dec.decode()
                    if records:
                        first = records[0]
                        if isinstance(first, d.Metadata):
                            return first
                        break
        except d.DBNError as exc:
            raise LakeError(f"{self.path.name}: not a readable DBN file ({exc})") from None
        raise LakeError(f"{self.path.name}: not a DBN file (no metadata header)")

    @property
    def columns(self) -> list[str]:
        names = [n for n in self.fields if n not in hidden_fields(self.record_class)]
        return [*names, "symbol", "aggressor", "is_snapshot"]

    def batches(self, skip_rows: int = 0) -> Iterator[SourceBatch]:
        d = _dbn()
        symbology = _Symbology(self.metadata)
        cls = self.record_class
        mapping_cls = d.SymbolMappingMsg
        dec = self._decoder()
        size = max(1, self.path.stat().st_size)
        read = 0
        row = 0
        with self.path.open("rb") as f:
            while True:
                chunk = f.read(READ_BYTES)
                if chunk:
                    read += len(chunk)
                    dec.write(chunk)
                try:
                    records = dec.decode()
                except d.DBNError as exc:
                    raise LakeError(f"{self.path.name}: corrupt DBN data ({exc})") from None
                if records and isinstance(records[0], d.Metadata):
                    records = records[1:]
                # Runs of data records between symbol-mapping records share one mapping state.
                if set(map(type, records)) <= {cls}:
                    if records:  # the usual case: only data records
                        yield from self._emit(records, row, skip_rows, symbology, read / size)
                        row += len(records)
                    records = []
                run: list[Any] = []
                for rec in records:
                    if isinstance(rec, cls):
                        run.append(rec)
                    elif isinstance(rec, mapping_cls):
                        if run:
                            yield from self._emit(run, row, skip_rows, symbology, read / size)
                            row += len(run)
                            run = []
                        symbology.update(int(rec.instrument_id), str(rec.stype_in_symbol))
                if run:
                    yield from self._emit(run, row, skip_rows, symbology, read / size)
                    row += len(run)
                if not chunk:
                    break
        if len(dec.buffer()):
            raise LakeError(f"{self.path.name}: truncated DBN file (partial record at the end)")

    def _emit(
        self,
        run: list[Any],
        first_row: int,
        skip_rows: int,
        symbology: _Symbology,
        progress: float,
    ) -> Iterator[SourceBatch]:
        if first_row + len(run) <= skip_rows:
            return
        start = max(0, skip_rows - first_row)
        while start < len(run):
            end = min(len(run), start + BATCH_RECORDS)
            records = np.frombuffer(b"".join(map(bytes, run[start:end])), dtype=self.dtype)
            table, problems = self._to_arrow(records, symbology)
            yield SourceBatch(table, first_row + start, problems, progress=min(1.0, progress))
            start = end

    def _to_arrow(
        self, records: np.ndarray, symbology: _Symbology
    ) -> tuple[pa.Table, dict[int, str]]:
        d = _dbn()
        cls = self.record_class
        prices = price_fields(cls)
        stamps = timestamp_fields(cls) | ({"ts_out"} if self.ts_out else set())
        hidden = hidden_fields(cls)
        columns: dict[str, pa.Array] = {}
        for name in self.fields:
            if name in hidden:
                continue
            values = records[name]
            if name in prices:
                undefined = values == d.UNDEF_PRICE
                floats = values.astype(np.float64) / d.FIXED_PRICE_SCALE
                columns[name] = pa.array(floats, pa.float64(), mask=undefined)
            elif name in stamps:
                undefined = values == d.UNDEF_TIMESTAMP
                ns = values.astype(np.int64)
                columns[name] = pa.array(ns, pa.int64(), mask=undefined)
            elif values.dtype.kind == "S":
                columns[name] = pa.array(values.astype("U1"), pa.string())
            elif values.dtype.kind == "u" and values.dtype.itemsize >= 4:
                columns[name] = pa.array(values.astype(np.int64))
            else:
                columns[name] = pa.array(values)
        iids = records["instrument_id"]
        columns["symbol"] = symbology.symbols(iids, records["ts_event"])
        if "side" in self.fields:
            side = records["side"]
            columns["aggressor"] = pa.array(
                np.where(side == b"B", 1, np.where(side == b"A", -1, 0)).astype(np.int8)
            )
        if "flags" in self.fields:
            columns["is_snapshot"] = pa.array((records["flags"] & d.F_SNAPSHOT) != 0)
        table = pa.table(columns)
        problems: dict[int, str] = {}
        missing = columns["symbol"].is_null()
        if pa.compute.any(missing).as_py():
            for row in np.flatnonzero(missing.to_numpy(zero_copy_only=False)):
                problems[int(row)] = (
                    f"unknown instrument_id {int(iids[row])}: no symbol mapping in the file"
                )
        return table, problems
