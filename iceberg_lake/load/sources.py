"""File readers: every supported format as a stream of bounded Arrow batches.

Each reader is decoded by a maintained library, never by hand: pyarrow's streaming CSV reader
(plain, gzip, zstd, bz2 by extension), pyarrow's Parquet `iter_batches`, pyarrow's JSON reader for
NDJSON, and `databento-dbn` for DBN (`iceberg_lake.load.dbn`). Batches carry their row offset in
the file, so a resumed load skips exactly the rows an earlier run committed; a Parquet reader
skips whole row groups without decoding them.

CSV is read as text (every column a string) and converted by the mapping, so one malformed value
dead-letters its row instead of failing the whole block. NDJSON blocks that pyarrow refuses
(a value whose type changes between lines, a malformed line) are parsed line by line with the
standard JSON parser; a line that is not JSON becomes a row problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from iceberg_lake.exceptions import LakeError

#: Rows per batch handed to conversion (bounded memory, amortised per-batch overhead).
BATCH_ROWS = 131_072
#: Bytes per CSV/NDJSON block.
BLOCK_BYTES = 8 << 20
#: Formats `lake load --format` accepts.
FORMATS = ("dbn", "csv", "parquet", "ndjson")
#: The text of a malformed NDJSON line (in its dead letter; never a table column).
RAW_LINE_COLUMN = "__raw_line"


@dataclass
class SourceBatch:
    """Rows of a file, in the file's own columns.

    Attributes:
        table: the rows (source column names and types).
        first_row: index of the first row in the file (0-based, counting every data row).
        problems: batch row → reason for rows the reader already knows are bad.
        progress: fraction of the file read so far (0..1), for progress bars.
    """

    table: pa.Table
    first_row: int
    problems: dict[int, str] = field(default_factory=dict)
    progress: float = 0.0
    #: Text to trim before it is stored (a CSV's: fixed-width exports pad their cells).
    padded_text: bool = False


class Source(Protocol):
    """A file opened for loading."""

    path: Path
    format: str

    @property
    def columns(self) -> list[str]:
        """The file's column names (known before reading rows)."""
        ...

    def batches(self, skip_rows: int = 0) -> Iterator[SourceBatch]:
        """Stream the rows from row `skip_rows` on."""
        ...


#: First bytes of a compressed file whose format carries a checksum the decompressor checks:
#: gzip (CRC-32 and length of every member), zstd (a frame's content checksum, where written).
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}


class CorruptFileError(LakeError):
    """A compressed file whose data does not decompress or match its checksum."""


def file_sha256(
    path: Path, chunk: int = 4 << 20, verify: bool = True, tail: list[bytes] | None = None
) -> str:
    """The SHA-256 of the file's bytes (the identity of a file for exactly-once loading).

    With `verify`, a gzip or zstd file (told by its first bytes) is also decompressed whole, in a
    thread beside the hashing (both release the GIL), its output discarded: a corrupt member or
    frame fails here, before any of its rows is committed (load18: a bit flipped mid-file was
    caught by gzip's CRC only at the member's end, after 499,995 rows, 63 of them wrong, were
    committed). Corruption is found only where the format carries a checksum: gzip always;
    zstd where the frame has its content checksum (the `zstd` tool writes one, some libraries
    do not) or where the damage breaks the compressed structure.

    Args:
        tail: if given, receives the file's last byte of content (decompressed, for a gzip or
            zstd file read with `verify`), none for an empty file.

    Raises:
        CorruptFileError: the file does not decompress, or fails its checksum.
    """
    compression = magic_compression(path) if verify else None
    failure: list[str] = []
    content_tail: list[bytes] = []
    checker = None
    if compression:
        checker = threading.Thread(
            target=_decompress_all,
            args=(path, compression, failure, content_tail),
            daemon=True,
        )
        checker.start()
    h = hashlib.sha256()
    last = b""
    try:
        with path.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
                last = block[-1:]
    finally:
        if checker is not None:
            checker.join()
    if failure:
        raise CorruptFileError(
            f"{path.name}: corrupt {compression} data ({failure[0]}): nothing stored; "
            "download the file again"
        )
    if tail is not None:
        tail[:] = content_tail if compression else [last] if last else []
    return h.hexdigest()


def magic_compression(path: Path) -> str | None:
    """`gzip` or `zstd` when the file starts with that format's magic bytes, else None."""
    with path.open("rb") as f:
        head = f.read(4)
    return next((c for magic, c in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def _decompress_all(path: Path, compression: str, failure: list[str], tail: list[bytes]) -> None:
    """Decompress `path` to nowhere (pyarrow's codecs, as the readers use); an error into
    `failure`, the last byte of content into `tail`."""
    try:
        with pa.input_stream(str(path), compression=compression) as stream:
            while block := stream.read(BLOCK_BYTES):
                tail[:] = [block[-1:]]
    except (OSError, pa.ArrowInvalid) as exc:
        failure.append(str(exc))


def detect_format(path: Path) -> str:
    """The format of `path` from its name (`.dbn`, `.dbn.zst`, `.csv[.gz]`, `.parquet`, ...).

    Raises:
        LakeError: the extension is not one the loader reads (then pass `--format`).
    """
    name = _uncompressed_name(path)
    if name.endswith(".dbn"):
        return "dbn"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    raise LakeError(f"cannot tell the format of {path.name} from its name: pass --format {FORMATS}")


def open_source(path: Path, fmt: str) -> Source:
    """Open `path` as `fmt` (one of `FORMATS`).

    Raises:
        LakeError: unknown format, unreadable file.
    """
    if not path.is_file():
        raise LakeError(f"no such file: {path}")
    if fmt == "csv":
        return CsvSource(path)
    if fmt == "parquet":
        return ParquetSource(path)
    if fmt == "ndjson":
        return NdjsonSource(path)
    if fmt == "dbn":
        from iceberg_lake.load.dbn import DbnSource

        return DbnSource(path)
    raise LakeError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")


def _compression(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    if name.endswith(".bz2"):
        return "bz2"
    return None


class _CountingFile(io.RawIOBase):
    """A read-only file that counts the compressed bytes read (progress of a streamed file)."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb")
        self.size = max(1, path.stat().st_size)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        n = self._f.readinto(b)
        self.read_bytes += n or 0
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()

    @property
    def fraction(self) -> float:
        return min(1.0, self.read_bytes / self.size)


def _skip(batch: pa.Table, first_row: int, skip_rows: int) -> tuple[pa.Table, int] | None:
    """Drop the rows of `batch` before file row `skip_rows`; None when nothing is left."""
    end = first_row + batch.num_rows
    if end <= skip_rows:
        return None
    if first_row < skip_rows:
        cut = skip_rows - first_row
        return batch.slice(cut), skip_rows
    return batch, first_row


class CsvSource:
    """A CSV file (header line required), optionally gzip/zstd/bz2 compressed."""

    format = "csv"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._columns = self._read_header()

    def _stream(self) -> tuple[_CountingFile, pa.NativeFile]:
        raw = _CountingFile(self.path)
        stream = pa.input_stream(io.BufferedReader(raw), compression=_compression(self.path))
        return raw, stream

    def _read_header(self) -> list[str]:
        raw, stream = self._stream()
        try:
            # Up to the header line's end (review15c: a header past 64 KiB was cut short).
            head = stream.read(1 << 16)
            while b"\n" not in head and b"\r" not in head and len(head) < (64 << 20):
                more = stream.read(1 << 20)
                if not more:
                    break
                head += more
        except (OSError, pa.ArrowInvalid) as exc:
            raise LakeError(f"cannot read {self.path.name}: {exc}") from None
        finally:
            stream.close()
            raw.close()
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which pyarrow's reader
        # drops; read with it, the first column was `\ufeffticker` (backfill15).
        text = head.decode("utf-8-sig", errors="replace")
        delimiter = _delimiter(self.path)
        try:
            first = next(
                csv.reader(io.StringIO(text.splitlines()[0] if text else ""), delimiter=delimiter),
                [],
            )
        except csv.Error as exc:  # a header cell past the csv module's 128 KiB field limit
            raise LakeError(f"{self.path.name}: unreadable header line ({exc})") from None
        if not first:
            raise LakeError(f"{self.path.name} has no header line")
        names = [c.strip() for c in first]
        #: Named columns the header has more than once: a mapping may not read them (the
        #: loader refuses that); the later ones read as `name.2`, … (Excel's trailing commas
        #: give several empty names).
        self.duplicated = frozenset(n for n in names if n and names.count(n) > 1)
        return _unique(names)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def batches(self, skip_rows: int = 0) -> Iterator[SourceBatch]:
        raw, stream = self._stream()
        delimiter = _delimiter(self.path)
        try:
            reader = pacsv.open_csv(
                stream,
                # The header's names as read here (stripped, repeats renamed), all as text.
                read_options=pacsv.ReadOptions(
                    block_size=BLOCK_BYTES, column_names=self._columns, skip_rows=1
                ),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in self._columns},
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
            row = 0
            for batch in reader:
                # The loader trims the text it loads (`SourceBatch.padded_text`): CSV only,
                # Parquet and JSON values are typed and their text is data (a replay export
                # loads back as it was written). The routing column of a replay export is
                # trimmed here, where rows are told apart by it (review15e).
                table = pa.Table.from_batches([batch])
                if TABLE_COLUMN in table.column_names:
                    at = table.column_names.index(TABLE_COLUMN)
                    trimmed = pc.utf8_trim_whitespace(table.column(at))
                    table = table.set_column(at, TABLE_COLUMN, trimmed)
                start = row
                row += table.num_rows
                kept = _skip(table, start, skip_rows)
                if kept is None:
                    continue
                yield SourceBatch(kept[0], kept[1], progress=raw.fraction, padded_text=True)
        except (pa.ArrowInvalid, OSError) as exc:  # OSError: truncated or corrupt compression
            raise LakeError(f"{self.path.name}: unreadable CSV ({exc})") from None
        finally:
            stream.close()
            raw.close()


#: The column a replay export names each row's table in (`lake replay --format parquet|ndjson`;
#: `timetravel.replay.arrow.TABLE_COLUMN`, checked equal by tests/test_load_exports.py).
TABLE_COLUMN = "table"


def export_tables(source: Source) -> list[str]:
    """The tables a replay export's rows belong to (distinct `table` values, sorted; none when
    the file has no such column). Reads that column through the whole file."""
    if TABLE_COLUMN not in source.columns:
        return []
    if isinstance(source, ParquetSource):
        column = pq.read_table(source.path, columns=[TABLE_COLUMN]).column(0)
        return sorted(str(v) for v in pc.unique(column).to_pylist() if v is not None)
    found: set[str] = set()
    for batch in source.batches():
        values = pc.unique(batch.table.column(TABLE_COLUMN)).to_pylist()
        found.update(str(v) for v in values if v is not None)
    return sorted(found)


class ParquetSource:
    """A Parquet file, streamed by row group and batch."""

    format = "parquet"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise LakeError(f"{path.name}: not a readable Parquet file ({exc})") from None
        self.num_rows = self._file.metadata.num_rows

    @property
    def columns(self) -> list[str]:
        return list(self._file.schema_arrow.names)

    def batches(self, skip_rows: int = 0) -> Iterator[SourceBatch]:
        meta = self._file.metadata
        groups: list[int] = []
        first = 0
        row = 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if row + n > skip_rows:
                if not groups:
                    first = row
                groups.append(i)
            row += n
        if not groups:
            return
        total = max(1, self.num_rows)
        row = first
        for batch in _parquet_batches(self.path, self._file, groups):
            table = pa.Table.from_batches([batch])
            start = row
            row += table.num_rows
            kept = _skip(table, start, skip_rows)
            if kept is None:
                continue
            yield SourceBatch(kept[0], kept[1], progress=row / total)


def _parquet_batches(
    path: Path, file: pq.ParquetFile, groups: list[int]
) -> Iterator[pa.RecordBatch]:
    """`file`'s row groups `groups` as batches; a corrupt page is one line naming the file."""
    try:
        yield from file.iter_batches(batch_size=BATCH_ROWS, row_groups=groups)
    except (OSError, pa.ArrowInvalid) as exc:
        raise LakeError(f"{path.name}: unreadable Parquet ({exc})") from None


def _unique(names: list[str]) -> list[str]:
    """`names` with each repeat renamed `name.2`, `name.3`, … (the first keeps its name; a
    suffix the header has already is skipped)."""
    taken = set(names)
    used: set[str] = set()
    suffix: dict[str, int] = {}
    out: list[str] = []
    for name in names:
        if name not in used:
            used.add(name)
            out.append(name)
            continue
        k = suffix.get(name, 2)
        while f"{name}.{k}" in taken or f"{name}.{k}" in used:
            k += 1
        suffix[name] = k + 1
        used.add(f"{name}.{k}")
        out.append(f"{name}.{k}")
    return out


def _uncompressed_name(path: Path) -> str:
    """`path`'s name in lower case without a compression suffix (`a.tsv.gz` → `a.tsv`)."""
    name = path.name.lower()
    for suffix in (".gz", ".zst", ".zstd", ".bz2"):
        name = name.removesuffix(suffix)
    return name


def _delimiter(path: Path) -> str:
    """Tab for a `.tsv` file (compressed too: `.tsv.gz`), else comma."""
    return "\t" if _uncompressed_name(path).endswith(".tsv") else ","


def _read_json(data: bytes) -> pa.Table | None:
    """`data` (whole lines) read by pyarrow's JSON reader, typed by it; None when it cannot
    (a malformed line, a value whose type changes, invalid UTF-8 in a text value)."""
    for options in (None, pajson.ReadOptions(block_size=len(data) + 1)):
        try:
            table = pajson.read_json(io.BytesIO(data), read_options=options)
            # The reader does not check text is UTF-8 (review15b: a stray byte ended the
            # whole run at the Parquet writer): a block with such a value goes line by line,
            # where the line is a dead letter.
            table.validate(full=True)
            return table
        except pa.ArrowInvalid as exc:
            # A line longer than the reader's block (1 MB): once more as one block.
            if options is not None or "straddl" not in str(exc):
                return None
    return None


class NdjsonSource:
    """Newline-delimited JSON (one object per line), optionally compressed."""

    format = "ndjson"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._columns: list[str] | None = None

    @property
    def columns(self) -> list[str]:
        if self._columns is None:
            first = next(self._blocks(), b"")
            names: list[str] = []
            for line in first.split(b"\n")[:100]:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    names.extend(k for k in obj if k not in names)
            self._columns = names
        return list(self._columns)

    def _blocks(self) -> Iterator[bytes]:
        raw = _CountingFile(self.path)
        stream = pa.input_stream(io.BufferedReader(raw), compression=_compression(self.path))
        self._raw = raw
        try:
            rest = b""
            while True:
                try:
                    chunk = stream.read(BLOCK_BYTES)
                except OSError as exc:  # truncated or corrupt compression
                    raise LakeError(f"{self.path.name}: unreadable ({exc})") from None
                if not chunk:
                    break
                data = rest + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    continue
                rest = data[cut + 1 :]
                yield data[: cut + 1]
            if rest.strip():
                yield rest + b"\n"
        finally:
            stream.close()
            raw.close()

    def batches(self, skip_rows: int = 0) -> Iterator[SourceBatch]:
        row = 0
        for block in self._blocks():
            lines = [ln for ln in block.split(b"\n") if ln.strip()]
            if row + len(lines) <= skip_rows:
                row += len(lines)
                continue
            table, problems = self._parse(block, lines)
            start = row
            row += table.num_rows
            kept = _skip(table, start, skip_rows)
            if kept is None:
                continue
            cut = kept[1] - start
            if cut:
                problems = {r - cut: p for r, p in problems.items() if r >= cut}
            yield SourceBatch(kept[0], kept[1], problems, progress=self._raw.fraction)

    def _parse(self, block: bytes, lines: list[bytes]) -> tuple[pa.Table, dict[int, str]]:
        table = _read_json(block)
        if table is not None and table.num_rows == len(lines):
            return table, {}
        objects: list[Any] = []
        problems: dict[int, str] = {}
        for i, line in enumerate(lines):
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                problems[i] = f"malformed JSON line: {exc}"
                obj = None
            objects.append(obj)
        good = [i for i, obj in enumerate(objects) if obj is not None]
        if problems and good:
            # The block's good lines read by the same reader as a clean block, so their values
            # are typed alike (backfill15: the text path below turned ISO times into dead
            # letters and lists into JSON text for the whole 8 MB block around one bad line).
            table = _read_json(b"\n".join(lines[i] for i in good) + b"\n")
            if table is not None:
                if table.num_rows == len(good):
                    at: list[int | None] = [None] * len(lines)
                    for k, i in enumerate(good):
                        at[i] = k
                    table = table.take(pa.array(at, pa.int64()))
                    raw = [
                        lines[i].decode("utf-8", errors="replace") if i in problems else None
                        for i in range(len(lines))
                    ]
                    text = pa.array(raw, pa.string())
                    return table.append_column(RAW_LINE_COLUMN, text), problems
        # Values the reader cannot type alike in one block: every value as text, the mapping
        # converts it (this block only).
        rows: list[dict[str, str | None]] = []
        for line, obj in zip(lines, objects, strict=True):
            if obj is None:
                rows.append({RAW_LINE_COLUMN: line.decode("utf-8", errors="replace")})
                continue
            rows.append(
                {
                    k: None if v is None else (v if isinstance(v, str) else json.dumps(v))
                    for k, v in obj.items()
                }
            )
        names: list[str] = []
        for r in rows:
            names.extend(k for k in r if k not in names)
        columns = {n: pa.array([r.get(n) for r in rows], pa.string()) for n in names}
        return pa.table(columns), problems
