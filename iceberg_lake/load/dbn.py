"""Databento DBN files (`.dbn`, `.dbn.zst`) as Arrow batches, decoded by `databento-dbn`.

`databento_dbn.DBNDecoder` reads the metadata header. The record stream after it (zstd
decompressed by pyarrow) is read in blocks of a batch and viewed as a NumPy structured array with
the layout the package publishes for each record class (`iceberg_lake.engine.dbn.record_dtype`):
a block of the schema's data records is checked (`rtype`, record length) and turned into Arrow
columns with a few NumPy operations per field and block of records, never a Python step per
record or per book level. Any other record (a `SymbolMappingMsg`, a system or error message) goes
to `DBNDecoder`, which decodes it and upgrades it from the file's DBN version; data records have
the same layout in every DBN version (`tests/engine/test_dbn_guard.py`).

Output columns (what the `catalog/mappings/databento_*.toml` mappings read):

* the record's own fields, named as in DBN (`ts_event`, `ts_recv`, `price`, `size`,
  `bid_px_00`, ...), with fixed-point prices (1e-9) as float64 and the "undefined" sentinels
  (`UNDEF_PRICE`, `UNDEF_TIMESTAMP`) as null;
* `symbol`: the instrument's symbol from the metadata's symbology mappings (date-ranged) and any
  `SymbolMappingMsg` records in the stream; null for an instrument the file does not map (the
  row is dead-lettered as an unknown instrument);
* `aggressor` (+1 buy, -1 sell, 0 none, from `side`) and `is_snapshot` (the `F_SNAPSHOT` flag);
* `record_seq`: `sequence` x 1,000,000 + the record's position among the earlier records of its
  event for its instrument (same publisher, `ts_event` and `sequence`, received at one
  `ts_recv`; `_EventPositions`): a venue numbers packets, not messages, so the trades of one
  sweep share a sequence; this keeps them apart and in the venue's order (the trades mappings'
  `seq`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from iceberg_lake.engine.dbn import (
    hidden_fields,
    is_decoder_panic,
    price_fields,
    record_dtype,
    timestamp_fields,
)
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load.sources import SourceBatch

#: Decompressed bytes per read at least (a read is normally a whole batch of records).
READ_BYTES = 1 << 20
#: Records per batch at most (a zstd megabyte can hold tens of megabytes of records).
BATCH_RECORDS = 131_072
#: Record bytes per batch at most: wide records (MBP-10: 368 bytes) make shorter batches, so a
#: batch in flight (its bytes, its columns, their conversion) stays a few tens of megabytes.
BATCH_BYTES = 8 << 20
#: Records converted to columns at a time (a few hundred kB: stays in the CPU cache).
CONVERT_BLOCK = 4_096
_NS_PER_DAY = 86_400 * 10**9
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _dbn() -> Any:
    try:
        import databento_dbn
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise LakeError("reading DBN files needs the databento-dbn package") from exc
    return databento_dbn


#: Schemas whose records are the book after each update (TBBO's are trades, each one real).
BOOK_SCHEMAS = frozenset({"mbp-1", "mbp-10"})
#: `record_seq` = sequence x this + the record's position within its event.
RECORD_SEQ_FACTOR = 1_000_000


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
        self.shared = _shared_symbols(self.ranged)
        days = _file_days(metadata)
        for iid, ivs in self.ranged.items():
            # One symbol for the whole file: no per-day lookup. Days outside its intervals
            # stay unmapped (their records are dead-lettered as an unknown instrument;
            # quant13: a record on a day the file does not map was stored under the symbol).
            covered = {day for iv in ivs for day in range(iv.start_day, iv.end_day)}
            if len({iv.symbol for iv in ivs}) == 1 and (days is None or days <= covered):
                self.static[iid] = ivs[0].symbol
        self.ranged = {k: v for k, v in self.ranged.items() if k not in self.static}

    def update(self, instrument_id: int, symbol: str) -> None:
        """A `SymbolMappingMsg`: from now on `instrument_id` is `symbol`."""
        self.static[instrument_id] = symbol
        self.ranged.pop(instrument_id, None)

    def symbols(self, instrument_ids: np.ndarray, ts_recv: np.ndarray) -> pa.Array:
        """The symbol of every record (null where the instrument is not mapped), by the UTC
        day of `ts_recv`, as Databento's own tools look symbols up (quant9: a record of 23:59:59
        received after midnight took the previous day's continuous-contract symbol)."""
        keys = np.fromiter(self.static.keys(), dtype=np.int64, count=len(self.static))
        values = pa.array(list(self.static.values()), pa.string())
        ids = pa.array(instrument_ids.astype(np.int64))
        idx = pa.compute.index_in(ids, pa.array(keys))
        out = values.take(idx)
        if self.ranged:
            result = np.asarray(out.to_pylist(), dtype=object)
            days = ts_recv.astype(np.int64) // _NS_PER_DAY
            for iid, ivs in self.ranged.items():
                hit = instrument_ids == iid
                if not hit.any():
                    continue
                for iv in ivs:
                    result[hit & (days >= iv.start_day) & (days < iv.end_day)] = iv.symbol
            out = pa.array(result.tolist(), pa.string())
        return out


class _EventPositions:
    """Each record's position among the earlier records of its event for its instrument.

    An event is one venue packet: one `publisher_id`, `ts_event` and `sequence`; it may hold
    several records of one instrument (the trades of a sweep, repeats at one price), and it is
    received at once, so its records share `ts_recv`. Positions count, among the records of one
    run of equal `ts_recv`, the earlier ones of the same (publisher, instrument, `ts_event`,
    `sequence`): records of other events between them (several venues at one receive time, a
    merged file) change nothing (quant10: a trade after an interruption counted from 0 again,
    and Silver merged it with the event's first). The run still open at the end of a block
    carries over, so positions never depend on where the stream is cut (a resume, a batch size).
    """

    def __init__(self) -> None:
        self._recv: int | None = None
        self._seen: dict[tuple[int, int, int, int], int] = {}

    def positions(self, records: np.ndarray) -> np.ndarray:
        """The positions of `records` (the next block of the stream, in order)."""
        n = len(records)
        if not n:
            return np.zeros(0, dtype=np.int64)
        pub = records["publisher_id"].astype(np.int64)
        iid = records["instrument_id"].astype(np.int64)
        ts = records["ts_event"].astype(np.int64)
        seq = records["sequence"].astype(np.int64)
        recv = records["ts_recv"].view(np.int64) if "ts_recv" in (records.dtype.names or ()) else ts
        change = np.ones(n, dtype=bool)
        change[1:] = recv[1:] != recv[:-1]
        run = np.cumsum(change) - 1
        continues = self._recv == int(recv[0])
        positions = np.zeros(n, dtype=np.int64)
        # Only records of runs longer than one can have a position above 0.
        rows = np.flatnonzero(np.bincount(run)[run] > 1)
        if len(rows):
            # Stable: stream order within a (run, event, instrument).
            order = rows[np.lexsort((rows, seq[rows], ts[rows], iid[rows], pub[rows], run[rows]))]
            keys = np.stack([run[order], pub[order], iid[order], ts[order], seq[order]])
            starts = np.ones(len(order), dtype=bool)
            starts[1:] = np.any(keys[:, 1:] != keys[:, :-1], axis=0)
            index = np.arange(len(order))
            positions[order] = index - np.maximum.accumulate(np.where(starts, index, 0))

        def key(k: Any) -> tuple[int, int, int, int]:
            return int(pub[k]), int(iid[k]), int(ts[k]), int(seq[k])

        if continues:
            for k in np.flatnonzero(run == 0):
                positions[k] += self._seen.get(key(k), 0)
        # The run open at the end of this block: how many records of each event it has.
        seen = dict(self._seen) if continues and run[-1] == 0 else {}
        for k in np.flatnonzero(run == run[-1]):
            seen[key(k)] = seen.get(key(k), 0) + 1
        self._seen, self._recv = seen, int(recv[-1])
        return positions


def _shared_symbols(ranged: dict[int, list[_Interval]]) -> dict[str, set[int]]:
    """Symbols that name more than one instrument on one day (a parent request's `ES.FUT`
    maps every contract and spread), with the instruments they name."""
    by_symbol: dict[str, list[_Interval]] = {}
    for ivs in ranged.values():
        for iv in ivs:
            by_symbol.setdefault(iv.symbol, []).append(iv)
    shared: dict[str, set[int]] = {}
    for symbol, ivs in by_symbol.items():
        active: list[_Interval] = []  # intervals still open at the current start
        for iv in sorted(ivs, key=lambda iv: iv.start_day):
            active = [a for a in active if a.end_day > iv.start_day]
            if any(a.instrument_id != iv.instrument_id for a in active):
                shared[symbol] = {i.instrument_id for i in ivs}
                break
            active.append(iv)
    return shared


def _mapped_symbol(msg: Any, parent_file: bool) -> str:
    """The symbol a live `SymbolMappingMsg` gives its instrument: the requested symbol, as a
    historical file's metadata gives it (a live recording and a file of the same trades must
    agree, or Silver keeps both; review12), except under a parent subscription, where that is
    the parent (ES.FUT) for every contract: there the output symbol (ESH6; quant9), unless it
    is an instrument id.

    Whether the instrument came from a parent subscription is the record's own `stype_in`: a
    live recording's metadata has none (one session mixes subscriptions; review13), only DBN
    v1 records lack it, and for those the file's `parent_file` decides.
    """
    stype_in = getattr(msg, "stype_in", None)
    parent = parent_file if stype_in is None else stype_in == _dbn().SType.PARENT
    out = str(msg.stype_out_symbol)
    return out if parent and out and not out.isdigit() else str(msg.stype_in_symbol)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _chars(raw: np.ndarray) -> pa.Array:
    """The bytes of a one-byte `c_char` column as strings, in one pass.

    A NUL byte is the empty string, as NumPy's `astype(str)` of the field gives.
    """
    present = raw != 0
    offsets = np.zeros(len(raw) + 1, dtype=np.int32)
    np.cumsum(present, out=offsets[1:])
    data = raw[present] if not present.all() else raw
    return pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets), pa.py_buffer(data))


def _read_exactly(stream: Any, n: int) -> bytes:
    """`n` bytes of `stream` (a short read is a truncated file)."""
    parts: list[bytes] = []
    while n > 0:
        block = stream.read(n)
        if not block:
            raise LakeError("truncated DBN file (the metadata header is cut short)")
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


def _file_days(metadata: Any) -> set[int] | None:
    """The UTC days (since the epoch) a file's request spans, or None when it has no end or
    spans more than ten years (a per-day lookup then decides)."""
    start, end = metadata.start, metadata.end
    if start is None or end is None or end <= start or end >= _dbn().UNDEF_TIMESTAMP:
        return None
    first, last = int(start) // _NS_PER_DAY, (int(end) - 1) // _NS_PER_DAY
    return set(range(first, last + 1)) if last - first <= 3_660 else None


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
        #: The `rtype` of the schema's records on the wire (TBBO records are MBP-1 records).
        self.rtype = int(d.RType.from_schema(schema).value)
        self.version = int(self.metadata.version)
        self.ts_out = bool(self.metadata.ts_out)
        self.dtype = record_dtype(self.record_class, self.ts_out)
        self.fields: tuple[str, ...] = self.dtype.names or ()
        #: Records per batch for this file's record size.
        self.batch_records = max(1, min(BATCH_RECORDS, BATCH_BYTES // self.dtype.itemsize))
        self.dataset = str(self.metadata.dataset)
        #: Book schemas whose records mark the end of each event (`F_LAST`): only those records
        #: are rows. The others hold the book part-way through an event, which never stood:
        #: as rows they share the event's dedup key, and Silver kept one of them at random
        #: (quant8). A file with no `F_LAST` anywhere in its first block (hand-made) keeps all.
        self.events_only = self.schema in BOOK_SCHEMAS and self._marks_event_ends()
        shared = _Symbology(self.metadata).shared
        if shared:
            symbol, ids = sorted(shared.items())[0]
            raise LakeError(
                f"{path.name}: {symbol} names {len(ids)} instruments on the same day (a "
                f"{self.metadata.stype_in} request): the file does not say which contract each "
                f"is, and all would be stored as {symbol}, mixed in one series; load "
                "a file requested by raw symbols (stype_in raw_symbol), or a live recording, "
                "whose mapping records name the contracts"
            )

    def _marks_event_ends(self) -> bool:
        """Whether the first block of data records has any record with `F_LAST` set."""
        last = _dbn().F_LAST
        for item, _ in self._records():
            if isinstance(item, np.ndarray):
                return bool(np.any(item["flags"] & last))
        return False

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
        except (d.DBNError, RuntimeError) as exc:
            # RuntimeError: the decoder's zstd stream (docs19: a frame asking for a dictionary
            # gave `internal error: RuntimeError: Dictionary mismatch`).
            raise LakeError(f"{self.path.name}: not a readable DBN file ({exc})") from None
        except BaseException as exc:
            if not is_decoder_panic(exc):
                raise
            raise LakeError(f"{self.path.name}: corrupt DBN data ({_first_line(exc)})") from None
        raise LakeError(f"{self.path.name}: not a DBN file (no metadata header)")

    @property
    def columns(self) -> list[str]:
        names = [n for n in self.fields if n not in hidden_fields(self.record_class)]
        return [*names, "symbol", "aggressor", "is_snapshot", "record_seq"]

    def batches(self, skip_rows: int = 0) -> Iterator[SourceBatch]:
        """Stream the data records from record `skip_rows` on, as Arrow batches.

        The decompressed record stream is read in large blocks and viewed through the record
        dtype: a block of data records (the schema's `rtype` and record length) becomes one
        NumPy structured array without touching each record in Python. Any other record (a
        `SymbolMappingMsg`, a system or error message) is handed to `databento-dbn`'s decoder,
        which also upgrades it from the file's DBN version; data records are the same in every
        DBN version (guarded). Runs of data records between mapping records share one mapping
        state, as when every record is decoded one by one.
        """
        symbology = _Symbology(self.metadata)
        events = _EventPositions()
        pending: list[np.ndarray] = []
        pending_rows = 0
        row = 0
        last = _dbn().F_LAST
        for item, progress in self._records():
            if isinstance(item, np.ndarray):
                if self.events_only:
                    item = item[(item["flags"] & last) != 0]
                pending.append(item)
                pending_rows += len(item)
                # Reads are a batch long, so a block usually goes out as it is (no copy).
                if pending_rows < self.batch_records // 2:
                    continue
            elif not pending:
                symbology.update(*item)
                continue
            records = pending[0] if len(pending) == 1 else np.concatenate(pending)
            pending, pending_rows = [], 0
            positions = events.positions(records)  # every record, skipped ones too
            yield from self._emit(records, positions, row, skip_rows, symbology, progress)
            row += len(records)
            if not isinstance(item, np.ndarray):
                symbology.update(*item)
        if pending:
            records = pending[0] if len(pending) == 1 else np.concatenate(pending)
            positions = events.positions(records)
            yield from self._emit(records, positions, row, skip_rows, symbology, 1.0)

    def _records(self) -> Iterator[tuple[np.ndarray | tuple[int, str], float]]:
        """(block of data records, or an (instrument_id, symbol) mapping; fraction read)."""
        d = _dbn()
        size = self.dtype.itemsize
        words = size // 4
        rtype = self.rtype
        raw = pa.OSFile(str(self.path))
        total = max(1, self.path.stat().st_size)
        stream: Any = (
            pa.CompressedInputStream(raw, "zstd")
            if self._compression == d.Compression.ZSTD
            else raw
        )
        # A header-less decoder for the records that are not data records.
        other = d.DBNDecoder(has_metadata=False, ts_out=self.ts_out, input_version=self.version)
        # How DBN v1 mapping records (no `stype_in` of their own) name symbols.
        parent = self.metadata.stype_in == d.SType.PARENT
        buf = b""
        pos = 0
        # Records checked per view: all that are buffered, until a record that is not a data
        # record turns up; then a window that doubles with every clean block, so a file dense
        # with mapping records is not re-checked to the end of the buffer after each of them.
        window = 0
        try:
            # The DBN prelude: b"DBN", the version byte, the metadata length (u32 LE).
            header = _read_exactly(stream, 8)
            if header[:3] != b"DBN":
                raise LakeError(f"{self.path.name}: not a DBN file (no DBN prelude)")
            _read_exactly(stream, int.from_bytes(header[4:8], "little"))  # the metadata
            while True:
                # Whole batches per read: a block is viewed as it is, never concatenated.
                want = self.batch_records * size - (len(buf) - pos)
                chunk = stream.read(max(READ_BYTES, want))
                buf = buf[pos:] + chunk if pos < len(buf) else chunk
                pos = 0
                progress = min(1.0, raw.tell() / total)
                while pos < len(buf):
                    n = (len(buf) - pos) // size
                    if window:
                        n = min(n, window)
                    if n:
                        view = np.frombuffer(buf, dtype=self.dtype, count=n, offset=pos)
                        ok = (view["length"] == words) & (view["rtype"] == rtype)
                        k = n if ok.all() else int(np.argmin(ok))
                        if k:
                            yield view[:k], progress
                            pos += k * size
                            window = window * 2 if window and k == n else window
                            continue
                    length = buf[pos] * 4
                    if length == 0:
                        raise LakeError(f"{self.path.name}: corrupt DBN data (zero-length record)")
                    if len(buf) - pos < length:
                        break  # a partial record: more bytes to come
                    other.write(buf[pos : pos + length])
                    pos += length
                    window = 1_024
                    for rec in other.decode():
                        if isinstance(rec, self.record_class):
                            yield np.frombuffer(bytes(rec), dtype=self.dtype), progress
                        elif isinstance(rec, d.SymbolMappingMsg):
                            yield (int(rec.instrument_id), _mapped_symbol(rec, parent)), progress
                if not chunk:
                    break
        except OSError as exc:  # pyarrow's zstd stream: corrupt or truncated compressed data
            if "truncated" in str(exc).lower():
                raise LakeError(f"{self.path.name}: truncated DBN file ({exc})") from None
            raise LakeError(f"{self.path.name}: corrupt DBN data ({exc})") from None
        except d.DBNError as exc:
            raise LakeError(f"{self.path.name}: corrupt DBN data ({exc})") from None
        except BaseException as exc:
            if not is_decoder_panic(exc):
                raise
            # A malformed record made the decoder panic (quant10: a raw Rust panic and its
            # backtrace stopped every file of the command).
            raise LakeError(f"{self.path.name}: corrupt DBN data ({_first_line(exc)})") from None
        finally:
            raw.close()
        if pos < len(buf):
            raise LakeError(f"{self.path.name}: truncated DBN file (partial record at the end)")

    def _emit(
        self,
        records: np.ndarray,
        positions: np.ndarray,
        first_row: int,
        skip_rows: int,
        symbology: _Symbology,
        progress: float,
    ) -> Iterator[SourceBatch]:
        if first_row + len(records) <= skip_rows:
            return
        start = max(0, skip_rows - first_row)
        while start < len(records):
            end = min(len(records), start + self.batch_records)
            table, problems = self._to_arrow(records[start:end], positions[start:end], symbology)
            yield SourceBatch(table, first_row + start, problems, progress=min(1.0, progress))
            start = end

    def _plan(self) -> list[tuple[str, str, np.dtype]]:
        """(field, how it is converted, output dtype) of every data field, in record order."""
        cls = self.record_class
        prices = price_fields(cls)
        stamps = timestamp_fields(cls) | ({"ts_out"} if self.ts_out else set())
        hidden = hidden_fields(cls)
        plan: list[tuple[str, str, np.dtype]] = []
        for name in self.fields:
            kind = self.dtype[name]
            if name in hidden:
                continue
            if name in prices:
                plan.append((name, "price", np.dtype(np.float64)))
            elif name in stamps:
                plan.append((name, "stamp", np.dtype(np.int64)))
            elif kind.kind == "S" and kind.itemsize == 1:
                plan.append((name, "char", np.dtype(np.uint8)))
            elif kind.kind == "S":
                plan.append((name, "text", kind))
            elif kind.kind == "u" and kind.itemsize >= 4:
                plan.append((name, "wide", np.dtype(np.int64)))
            else:
                plan.append((name, "copy", kind))
        return plan

    def _to_arrow(
        self, records: np.ndarray, positions: np.ndarray, symbology: _Symbology
    ) -> tuple[pa.Table, dict[int, str]]:
        """The records as Arrow columns, converted in one cache-sized block after another.

        A batch of wide records (MBP-10: 368 bytes) is far larger than the CPU cache; pulling
        out one field over the whole batch at a time would read the batch from memory once per
        field. Converting every field of a block of records before the next block reads it once.
        """
        d = _dbn()
        n = len(records)
        plan = self._plan()
        out = {name: np.empty(n, dtype=dtype) for name, _, dtype in plan}
        undefined = {
            name: np.empty(n, dtype=bool) for name, how, _ in plan if how in ("price", "stamp")
        }
        for lo in range(0, n, CONVERT_BLOCK):
            hi = min(n, lo + CONVERT_BLOCK)
            block = records[lo:hi]
            for name, how, _ in plan:
                values, dst = block[name], out[name][lo:hi]
                if how == "price":
                    # int64 → float64 and the division in one pass (not a multiplication by
                    # 1e-9, which rounds differently).
                    np.divide(values, d.FIXED_PRICE_SCALE, out=dst)
                    np.equal(values, d.UNDEF_PRICE, out=undefined[name][lo:hi])
                elif how == "stamp":
                    np.equal(values, d.UNDEF_TIMESTAMP, out=undefined[name][lo:hi])
                    dst[:] = values.view(np.int64) if values.dtype.kind == "u" else values
                elif how == "char":
                    dst[:] = values.view(np.uint8)
                else:
                    dst[:] = values
        columns: dict[str, pa.Array] = {}
        for name, how, _ in plan:
            values = out[name]
            if how in ("price", "stamp"):
                mask = undefined[name]
                columns[name] = pa.array(values, mask=mask if mask.any() else None)
            elif how == "char":
                columns[name] = _chars(values)
            elif how == "text":
                columns[name] = pa.array(values.astype("U"), pa.string())
            else:
                columns[name] = pa.array(values)
        iids = out["instrument_id"]
        received = out.get("ts_recv", out["ts_event"])
        if "ts_recv" in undefined and undefined["ts_recv"].any():
            received = np.where(undefined["ts_recv"], out["ts_event"], received)
        columns["symbol"] = symbology.symbols(iids, received)
        if "side" in out:
            side = out["side"]
            columns["aggressor"] = pa.array(
                np.where(side == ord("B"), 1, np.where(side == ord("A"), -1, 0)).astype(np.int8)
            )
        if "flags" in out:
            columns["is_snapshot"] = pa.array((out["flags"] & d.F_SNAPSHOT) != 0)
        columns["record_seq"] = pa.array(out["sequence"] * RECORD_SEQ_FACTOR + positions)
        table = pa.table(columns)
        problems: dict[int, str] = {}
        missing = columns["symbol"].is_null()
        if pa.compute.any(missing).as_py():
            for row in np.flatnonzero(missing.to_numpy(zero_copy_only=False)):
                problems[int(row)] = (
                    f"unknown instrument_id {int(iids[row])}: no symbol mapping in the file"
                )
        return table, problems
