"""`lake load`: vendor files into Bronze, exactly once per file, in bounded memory.

One file is read as a stream of Arrow batches (`sources`, `dbn`), converted to the target table's
columns by a mapping (`mapping`), validated with the writers' rules (`validate`), and committed
every `commit_rows` rows with the file's ledger entry (`commit`). Invalid rows go to
`bronze.dead_letters` with the reason and the row as JSON; their neighbours are stored. Several
files load in parallel processes (`jobs`), each committing independently.

Idempotent: loading a file again stores nothing; a load interrupted at any point (kill -9
included) resumes at the last committed row when run again. A file whose first commit's worth of
rows holds no valid row at all (a wrong `--format` or `--mapping`) is rejected before anything is
committed (`LoadRejectedError`): a run with the right mapping then loads it. `reload` loads a
file again although the ledger says it is in (a new generation of its ledger entry).
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import queue as queue_module
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings
from iceberg_lake.exceptions import LakeError, LoadRejectedError, TransientError
from iceberg_lake.ingest.dead_letters import DeadLetter
from iceberg_lake.ingest.decode import DERIVED_TS
from iceberg_lake.load.commit import (
    HOUR_NS,
    ConcurrentLoadError,
    FileCommitter,
    LoadFingerprint,
    LoadUndoneError,
)
from iceberg_lake.load.mapping import (
    DEFAULT_SOURCE,
    Mapping,
    convert,
    declared_mappings,
    find_mapping,
    identity_mapping,
    unused_columns,
    with_former_names,
)
from iceberg_lake.load.sources import (
    RAW_LINE_COLUMN,
    TABLE_COLUMN,
    Source,
    SourceBatch,
    detect_format,
    export_tables,
    file_sha256,
    open_source,
)
from iceberg_lake.load.validate import Validator
from iceberg_lake.process import end_with_parent
from iceberg_lake.tables import BRONZE, DEAD_LETTERS_TABLE, TableDefinition, registry

log = logging.getLogger(__name__)

#: Default rows per commit: large enough that commit overhead is a few percent of the load time
#: (see docs/backfill.md for the measurement), small enough to bound memory and lost work.
DEFAULT_COMMIT_ROWS = 500_000
#: A commit is also made once the buffered rows reach this many bytes (wide MBP-10 rows).
MAX_BUFFER_BYTES = 128 << 20
#: A file is refused whole only when none of this many leading rows (or all of a shorter file)
#: is valid, whatever `commit_rows` is.
REJECT_SAMPLE_ROWS = 1_000

#: Progress callback: (file name, rows read so far, fraction of the file read, seconds since the
#: file's load started).
ProgressFn = Callable[[str, int, float, float], None]


@dataclass(frozen=True)
class LoadOptions:
    """How to load files.

    Attributes:
        table: target table (`bronze.stocks_trades`); None = from the mapping or the DBN schema.
        format: `dbn`, `csv`, `parquet`, `ndjson`; None = from the file name.
        mapping: a shipped mapping name or a TOML path; None = detect or identity.
        source: the `source` column value; None = the mapping's, else `file`.
        commit_rows: rows per commit.
        reload: load a file again even if the ledger says it was loaded (Bronze then holds
            both copies; Silver's dedup key keeps one of each event).
    """

    table: str | None = None
    format: str | None = None
    mapping: str | None = None
    source: str | None = None
    commit_rows: int = DEFAULT_COMMIT_ROWS
    reload: bool = False


@dataclass
class LoadResult:
    """The outcome of loading one file.

    Attributes:
        file: the path.
        sha256: content hash (the file's identity in the ledger).
        table: target table.
        status: `loaded`, `reloaded` (`--reload` of a file loaded before), `resumed`
            (continued an interrupted load), `already-loaded`, `loading-elsewhere` (another
            process is loading the same content: it stores the rows, this run stopped without
            storing any more), or `rejected` (`load_files` only: no valid row in the first
            commit's worth of rows; nothing stored, see `error`). A run that read the file
            while another run of the same content committed every chunk (and the done entry)
            first is `already-loaded` too.
        rows_read: file rows read by this run (rows committed before a resume excluded).
        rows_stored: rows appended to the table by this run.
        dead_lettered: rows sent to `bronze.dead_letters` by this run.
        rows_skipped: rows another run committed (stored or dead-lettered): before this run
            started, or meanwhile (a copy of the same content loading at once). For every
            status but `loading-elsewhere` and `rejected`: `rows_stored + dead_lettered +
            rows_skipped + rows_other_tables` = the file's rows = `first_row + rows_read`.
        rows_other_tables: rows of a replay export that its `table` column gives to another
            table (loaded by that table's own run, never stored here).
        unknown_columns: columns of the file the table has no column for (without a mapping:
            their values are not stored).
        partitions: (symbol, hour start ISO) partitions this run wrote to.
        snapshots: snapshot ids this run made on the table.
        seconds: wall time.
        error: why the file was rejected ("" otherwise).
        first_row: the file row this run started reading at (rows before it an earlier run
            had committed: `resumed at row N`).
        warnings: what the run stored but a person should look at (a text file ending without
            a line end: its last row may be cut short).
    """

    file: str
    sha256: str
    table: str
    status: str
    rows_read: int = 0
    rows_stored: int = 0
    dead_lettered: int = 0
    rows_skipped: int = 0
    partitions: list[tuple[str, str]] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    first_row: int = 0
    rows_other_tables: int = 0
    unknown_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def days(self) -> list[str]:
        """UTC days (`YYYY-MM-DD`) touched by this run."""
        return sorted({hour[:10] for _, hour in self.partitions})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        out = asdict(self)
        out["partitions"] = [list(p) for p in self.partitions]
        return out


def resolve(source: Source, options: LoadOptions) -> tuple[Mapping, str]:
    """The mapping and target table for a file.

    Order: `--mapping`; for DBN, the shipped mapping of the file's schema (and `--table`); for
    other formats, a shipped mapping whose `detect` columns the file has; else the identity
    mapping of `--table`.

    Raises:
        LakeError: nothing tells which table the file goes to.
    """
    if options.mapping:
        mapping = find_mapping(options.mapping)
        table = options.table or mapping.table
        if not table:
            raise LakeError(f"mapping '{mapping.name}' names no table: pass --table")
        return mapping, table
    if source.format == "dbn":
        return _dbn_mapping(source, options.table)
    candidates = [
        m
        for m in declared_mappings()
        if not m.dbn_schemas
        and m.matches(source.columns)
        and (options.table is None or m.table == options.table)
    ]
    if candidates:
        best = max(candidates, key=lambda m: len(m.detect))
        return best, options.table or best.table
    if options.table:
        return identity_mapping(options.table), options.table
    if TABLE_COLUMN in source.columns:
        raise LakeError(
            f"{source.path.name} is a replay export (its {TABLE_COLUMN} column names each row's "
            "table): pass the table, or load it with load_files / lake load, which load each "
            "table's rows into its own table"
        )
    raise LakeError(
        f"cannot tell which table {source.path.name} belongs to: pass --table (columns named "
        "like the table's) or --mapping"
    )


def _dbn_mapping(source: Source, table: str | None) -> tuple[Mapping, str]:
    schema = getattr(source, "schema", "")
    dataset = getattr(source, "dataset", "")
    options = [m for m in declared_mappings() if schema in m.dbn_schemas]
    if table:
        chosen = [m for m in options if m.table == table]
        if not chosen:
            tables = ", ".join(sorted(m.table for m in options)) or "none"
            raise LakeError(f"a DBN {schema} file cannot be loaded into {table} (tables: {tables})")
        return chosen[0], table
    if not options:
        raise LakeError(f"no shipped mapping reads DBN schema '{schema}'")
    # CME Globex (GLBX.*) trades are futures; every other venue's are stocks.
    futures = dataset.upper().startswith("GLBX")
    preferred = [m for m in options if ("futures" in m.table) == futures] or options
    return preferred[0], preferred[0].table


def _take_all(tables: list[pa.Table]) -> pa.Table:
    """The tables as one (zero-copy), emptying the list."""
    rows = pa.concat_tables(tables)
    tables.clear()
    return rows


#: Column types a `[scale]` factor applies to.
_NUMBERS = (IntegerType, LongType, FloatType, DoubleType, DecimalType)


def check_mapping_columns(mapping: Mapping, table_id: str, definition: TableDefinition) -> None:
    """Refuse a mapping that names a column the target table does not have (a typo would
    otherwise be ignored and the column left empty).

    Raises:
        LakeError: one line with the unknown keys and the table's columns.
    """
    valid = [c for c in definition.column_names if c != DERIVED_TS]
    unknown = sorted((set(mapping.columns) | set(mapping.scale)) - set(valid))
    if unknown:
        where = f" ({mapping.path})" if mapping.path else ""
        raise LakeError(
            f"mapping '{mapping.name}'{where}: {', '.join(unknown)} "
            f"{'is not a column' if len(unknown) == 1 else 'are not columns'} of {table_id} "
            f"(columns: {', '.join(valid)})"
        )
    schema = definition.iceberg_schema()
    text = sorted(
        c for c in mapping.scale if not isinstance(schema.find_field(c).field_type, _NUMBERS)
    )
    if text:
        where = f" ({mapping.path})" if mapping.path else ""
        raise LakeError(
            f"mapping '{mapping.name}'{where}: [scale] {', '.join(text)}: not a numeric column "
            f"of {table_id} (a factor scales numbers)"
        )


def _defaulted_required(validator: Validator) -> list[str]:
    """Required columns the table fills with a default when a row has no value (the quote
    columns of `stocks_quotes`; not `source` and `ts_recv_ns`, the load's own defaults)."""
    return [
        name
        for name in validator.required
        if name not in ("source", "ts_recv_ns") and validator.rules[name].default is not None
    ]


def _no_column_error(
    path: Path, fmt: str, mapping: Mapping, absent: list[str], table_id: str, sha: str, seen: str
) -> LoadRejectedError:
    """Refuse a file that lacks, altogether, a required column the table fills with a default.

    Defaults stand in for a value missing from one row (a one-sided quote's `bid_sz` = 0); a
    file without the column at all is a file for another table (trades loaded with `--table
    bronze.stocks_quotes` would be stored as 0/0 quotes) or a mapping that misses it.
    """
    return LoadRejectedError(
        f"{path.name} has no column for {', '.join(absent)}, required in {table_id} "
        f"(mapping '{mapping.name}', format {fmt}; {seen}): every row would hold the default. "
        "Nothing stored: check --format/--mapping/--table",
        file=str(path),
        table=table_id,
        sha256=sha,
    )


@functools.lru_cache(maxsize=16)
def _tables_of(path: str, fmt: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """`export_tables` of a file, read once per process and file version (the routing and
    each table's load ask for it; an NDJSON or CSV export is read whole to answer)."""
    return tuple(export_tables(open_source(Path(path), fmt)))


def _export_tables_of(source: Source) -> list[str]:
    """The tables a replay export holds (`export_tables`, cached per file version)."""
    if TABLE_COLUMN not in source.columns:
        return []
    stat = source.path.stat()
    return list(_tables_of(str(source.path), source.format, stat.st_mtime_ns, stat.st_size))


def _version(path: Path) -> tuple[int, int]:
    """(size, modification time) of a file: what changes while it is still being written."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _check_unchanged(path: Path, version: tuple[int, int]) -> None:
    """Refuse to go on with a file that changed since its hash was taken (load18: a download
    still in progress was loaded as it stood, its last row cut short).

    Raises:
        LakeError: the file's size or modification time moved; the commits made stay (they
            hold rows read before the change, under the hash of that version).
    """
    if _version(path) != version:
        raise LakeError(
            f"{path.name} changed while it was being loaded (still being written?): load it "
            "again once it is complete (new content is a new version with its own hash; the "
            "same content, only touched, resumes)"
        )


def _table_name(identifier: str) -> str:
    """`stocks_trades` of `bronze.stocks_trades` (an export of Silver reloads into Bronze)."""
    return identifier.rsplit(".", 1)[-1]


def _export_rows_of(path: Path, source: Source, table_id: str, sha: str, refuse: bool) -> str:
    """The `table` value of `table_id`'s rows in a replay export: the table itself when
    the export holds it, else the one table of the same name it holds (an export of
    `silver.stocks_trades` reloads into `bronze.stocks_trades`).

    Raises:
        LoadRejectedError: (`refuse`) the export holds no row of the table, or several tables
            of its name but not the table itself; nothing stored.
    """
    present = _export_tables_of(source)
    candidates = [t for t in present if _table_name(t) == _table_name(table_id)]
    if table_id in candidates:
        # review13b: an export of bronze.X and silver.X loaded both into bronze.X (each event
        # twice); the table's own rows are its rows.
        return table_id
    if len(candidates) == 1 or (candidates and not refuse):
        return candidates[0]
    what = "no rows of" if not candidates else f"{' and '.join(candidates)}, not"
    raise LoadRejectedError(
        f"{path.name} holds {what} {table_id}: its {TABLE_COLUMN} column names "
        f"{', '.join(present) or 'no table'}. Nothing stored: load it with --table one "
        "of those, or without --table to load each table's rows into its own table",
        file=str(path),
        table=table_id,
        sha256=sha,
    )


def _only_rows_of(
    batch: SourceBatch, table: str, unnamed: bool = False
) -> tuple[pa.Table, dict[int, str], np.ndarray | None]:
    """The batch's rows whose `table` is `table` (with `unnamed`, also those without a `table`
    value, as problems to dead-letter), their reader problems renumbered, and their row numbers
    in the batch (None: every row is the table's)."""
    names = batch.table.column(TABLE_COLUMN)
    if pa.types.is_dictionary(names.type):  # as `lake replay` writes it to Parquet
        names = names.cast(names.type.value_type)
    names = names.cast(pa.string())
    mask = pc.fill_null(pc.equal(names, table), unnamed)
    kept = np.flatnonzero(np.asarray(mask))
    problems = dict(batch.problems)
    if unnamed and names.null_count:
        for row in np.flatnonzero(np.asarray(pc.is_null(names))):
            problems.setdefault(int(row), f"no {TABLE_COLUMN} value: a row of no table")
    if len(kept) == batch.table.num_rows:
        return batch.table, problems, None
    renumber = {int(old): new for new, old in enumerate(kept)}
    problems = {renumber[r]: why for r, why in problems.items() if r in renumber}
    return batch.table.take(pa.array(kept)), problems, kept


def _route(paths: Sequence[Path | str], options: LoadOptions) -> list[tuple[str, str, str]]:
    """(file, table, error) loads for `paths`: a replay export loaded without `--table` or
    `--mapping` goes to the Bronze table of each table its `table` column names (one load per
    table, each with its own ledger entry); any other file to the table its options resolve
    ("" here). A file that cannot be routed (unreadable, an export naming a table `lake load`
    does not write) has its reason in `error` instead of ending the others' loads."""
    out: list[tuple[str, str, str]] = []
    for p in paths:
        path = Path(p)
        try:
            routes = _routes_of(path, options)
        except TransientError:
            raise
        except LakeError as exc:
            out.append((str(path), options.table or "", _naming(path, exc)))
            continue
        out.extend((str(path), table, "") for table in routes)
    return out


def _naming(path: Path | str, exc: Exception) -> str:
    """`exc`'s message, led by the file's name unless it names the file already."""
    name, text = Path(path).name, str(exc)
    return text if name in text else f"{name}: {text}"


def _routes_of(path: Path, options: LoadOptions) -> list[str]:
    """The tables a replay export `path` is loaded into ([""]: its options resolve the one)."""
    routes: list[str] = []
    if options.table is None and options.mapping is None:
        fmt = options.format or _format_of(path, options)
        if fmt != "dbn":
            source = open_source(path, fmt)
            tables = _export_tables_of(source)
            for table in tables:
                target = f"{BRONZE}.{_table_name(table)}"
                if target in routes:
                    continue  # bronze.X and silver.X: one load of bronze.X (its own rows)
                if target not in registry() or target == DEAD_LETTERS_TABLE:
                    others = [t for t in tables if t != table]
                    raise LakeError(
                        f"{path.name}: its {TABLE_COLUMN} column names {table}, which lake "
                        "load cannot write (it writes Bronze market tables; Gold comes "
                        "from its stream)"
                        + (f": load {', '.join(others)} with --table" if others else "")
                    )
                routes.append(target)
    return routes or [""]


def _format_of(path: Path, options: LoadOptions) -> str:
    """The format from the file name, else the format the `--mapping` declares."""
    try:
        return detect_format(path)
    except LakeError:
        if options.mapping and (declared := find_mapping(options.mapping).format):
            return declared
        raise


def _pieces(batch: SourceBatch, first: int, size: int) -> list[SourceBatch]:
    """Split `batch` at commit boundaries: `first` rows, then `size` rows per piece."""
    n = batch.table.num_rows
    if n <= first:
        return [batch]
    out: list[SourceBatch] = []
    start, take = 0, max(1, first)
    while start < n:
        end = min(n, start + take)
        problems = {r - start: p for r, p in batch.problems.items() if start <= r < end}
        out.append(
            SourceBatch(
                batch.table.slice(start, end - start),
                batch.first_row + start,
                problems,
                batch.progress,
                batch.padded_text,
            )
        )
        start, take = end, size
    return out


def _row_json(batch: pa.Table, rows: list[int]) -> list[bytes]:
    """The original rows as JSON (what the dead letter keeps as `raw`)."""
    taken = batch.take(pa.array(rows, pa.int64())).to_pylist()
    return [json.dumps(r, default=str, separators=(",", ":")).encode() for r in taken]


def load_file(
    lake: LakeCatalog | Settings,
    path: Path | str,
    options: LoadOptions | None = None,
    progress: ProgressFn | None = None,
) -> LoadResult:
    """Load one file into its Bronze table, exactly once.

    Idempotent: a file whose ledger entry says done is skipped (`already-loaded`, unless
    `options.reload`); a partly loaded file continues after its last committed row (`resumed`).
    Makes one append snapshot per `commit_rows` rows on the table (plus one on
    `bronze.dead_letters` when rows are bad).

    A file whose first commit holds no valid row (a wrong format or mapping: every row would be
    dead-lettered) is rejected before anything is committed: nothing is stored or dead-lettered
    and the ledger is not set, so loading it again with the right mapping works. The first
    commit is judged over at least `REJECT_SAMPLE_ROWS` rows (or the whole file), so a bad
    leading row with a small `commit_rows` is dead-lettered like any other.

    Args:
        lake: the catalog (or settings to open it).
        path: the file.
        options: target, format, mapping, source, commit size.
        progress: called after each batch with (file name, rows read, fraction read, seconds).

    Returns:
        What this run stored.

    Raises:
        LoadRejectedError: no valid row in the file's first commit (nothing stored).
        LakeError: unreadable file, unknown table or mapping, a mapping key that is not a
            column of the table, catalog unavailable.
    """
    t0 = time.perf_counter()
    options = options or LoadOptions()
    if options.table and "." not in options.table:  # `stocks_trades`, as serve and compact take
        options = replace(options, table=f"{BRONZE}.{options.table}")
    lake = lake if isinstance(lake, LakeCatalog) else LakeCatalog(lake)
    path = Path(path)
    fmt = options.format or _format_of(path, options)
    source = open_source(path, fmt)
    mapping, table_id = resolve(source, options)
    if not table_id.startswith(BRONZE + ".") or table_id == DEAD_LETTERS_TABLE:
        raise LakeError(f"lake load writes Bronze market tables, not {table_id}")
    definition = lake.definition(table_id)
    check_mapping_columns(mapping, table_id, definition)
    twice: frozenset[str] = getattr(source, "duplicated", frozenset())
    if twice:
        read = {mapping.source_column(n, source.columns) for n in definition.column_names}
        if ambiguous := sorted(twice & read):
            raise LakeError(
                f"{path.name}: column {', '.join(ambiguous)} appears more than once in the "
                "header line: which one to load? (rename it in the file, or map another)"
            )
    version = _version(path)
    tail: list[bytes] = []
    sha = file_sha256(path, tail=tail)
    _check_unchanged(path, version)
    warnings = []
    if fmt in ("csv", "ndjson") and tail and tail[0] not in (b"\n", b"\r"):
        # Compressed files too (review18b): their content's last byte, from the checksum pass.
        warnings.append(
            f"{path.name} ends without a line end: cut short (a download that stopped)? Its "
            "last row is read as it stands"
        )
        log.info("%s", warnings[-1])
    # What decides the stored rows, kept with the ledger entry: a resume under other options
    # is refused (load18: a fixed mapping resumed a file half loaded with the wrong one).
    fingerprint = LoadFingerprint.of(mapping, options.source, fmt)
    committer = FileCommitter(
        lake, table_id, sha, path.name, reload=options.reload, fingerprint=fingerprint
    )
    committed, done, dl_committed = committer.state()
    result = LoadResult(
        str(path),
        sha,
        table_id,
        "already-loaded",
        rows_skipped=committed,
        first_row=committed,
        warnings=warnings,
    )
    if done:
        result.seconds = time.perf_counter() - t0
        return result
    result.status = "resumed" if committed else "reloaded" if committer.reloading else "loaded"
    target = committer.arrow_schema()
    # A column renamed since the file was written is read under its old name too (evolve14:
    # the writers' codec did so, `lake load` dropped the column's values without a word).
    mapping = with_former_names(
        mapping, committer.table.schemas().values(), committer.table.schema()
    )
    validator = Validator(table_id, committer.table.schema(), committer.partition_key)
    # A required column with a default that the file lacks altogether refuses it (quant13). A
    # resumed load is never refused (its file was accepted before). The columns of CSV, Parquet
    # and DBN are known up front; an NDJSON line holds only its own keys (a replay export's
    # lines only their table's), so there the rows of the first commit decide (newuser13).
    if (
        not committed
        and fmt != "ndjson"
        and not any(
            mapping.source_column(n, source.columns) is not None for n in definition.column_names
        )
    ):
        # Not one column the table knows: a file for another table or mapping. Said here, not
        # by the first commit's rows: a header-only file has none, and was marked loaded
        # (docs19).
        raise LoadRejectedError(
            f"{path.name}: none of its columns ({', '.join(source.columns) or 'none'}) is a "
            f"column of {table_id} (mapping '{mapping.name}', format {fmt}). Nothing stored: "
            "check --format/--mapping/--table",
            file=str(path),
            table=table_id,
            sha256=sha,
        )
    defaulted = _defaulted_required(validator) if not committed else []
    if defaulted and fmt != "ndjson":
        absent = [n for n in defaulted if mapping.source_column(n, source.columns) is None]
        if absent:
            seen = f"its columns: {', '.join(source.columns)}"
            raise _no_column_error(path, fmt, mapping, absent, table_id, sha, seen)
        defaulted = []
    valued: set[str] = set()  # of `defaulted`: those some line of the first rows has a key for
    judged_rows = 0
    # A replay export names each row's table: only this table's rows are its (quant13: the
    # other tables' rows were stored here, or dead-lettered as missing this table's fields).
    mine, owns_unnamed = None, False
    if TABLE_COLUMN in source.columns and TABLE_COLUMN not in definition.column_names:
        mine = _export_rows_of(path, source, table_id, sha, refuse=not committed)
        # A row without a `table` value belongs to no table's load: the load of the export's
        # first table dead-letters it (once, with its reason), rather than every load skip it.
        owns_unnamed = mine == _export_tables_of(source)[0]
    # Precedence of `source` (docs/backfill.md): --source for every row; else the file's own
    # `source` column where it has a value; else the mapping's `source`; else `file`.
    source_name = options.source or ""
    default_source = mapping.source or DEFAULT_SOURCE
    subject = f"load:{path.name}"
    stream = f"file:{sha}"
    commit_rows = max(1, options.commit_rows)
    partitions: set[tuple[str, int]] = set()
    buffer: list[pa.Table] = []
    buffered_bytes = 0
    letters: list[DeadLetter] = []
    chunk_first = committed
    position = committed
    first_bad: tuple[int, str] | None = None  # (file row, reason) of the first invalid row
    chunk_other = 0  # rows of the chunk that belong to other tables (a replay export)
    unknown: set[str] = set()  # file columns the table has no column for (identity mapping)
    wrote = False  # this run committed something (rows, letters or a ledger entry)

    def flush(end_row: int, last: bool) -> None:
        nonlocal buffered_bytes, letters, chunk_first, wrote, chunk_other, defaulted
        if defaulted:
            if not last and judged_rows < REJECT_SAMPLE_ROWS:
                # Too few of the table's rows to judge the file by: decide at the next commit
                # boundary, committing nothing before (review13b: a ledger entry made first
                # turned the refusal into a resume that stored the rows with the defaults).
                return
            if judged_rows:
                absent = [n for n in defaulted if n not in valued]
                if absent:
                    seen = f"no key for it in the table's first {judged_rows:,} rows"
                    raise _no_column_error(path, fmt, mapping, absent, table_id, sha, seen)
            defaulted = []
        if chunk_first == 0 and not buffer and not letters and first_bad is None and not last:
            # Nothing of this table yet (a replay export's first rows are another table's): no
            # ledger entry before its first rows, so what judges them still refuses cleanly.
            return
        if chunk_first == 0 and not buffer and first_bad is not None:
            if not last and end_row < REJECT_SAMPLE_ROWS:
                # Too few rows to judge the file by (a small --commit-rows): one bad leading
                # row is bad data, not a wrong mapping. Decide at the next commit boundary.
                return
            # Not one valid row in the file's first commit: the mapping or format is wrong,
            # not the data. Commit nothing (no dead letters, no ledger entry) so the file can
            # be loaded again with the right options.
            row, reason = first_bad
            advice = (
                # Options cannot help a DBN file without symbols (backfill15).
                "request the data with symbols (stype_in raw_symbol or parent), not instrument ids"
                if "no symbol mapping in the file" in reason
                else "check --format/--mapping/--table"
            )
            raise LoadRejectedError(
                f"{path.name}: none of its first {end_row:,} rows is valid for {table_id} "
                f"(mapping '{mapping.name}', format {fmt}); first: row {row}: {reason}. "
                f"Nothing stored: {advice}",
                file=str(path),
                table=table_id,
                sha256=sha,
            )
        _check_unchanged(path, version)
        # Only what this run commits is its own: a copy of the same content loading at once
        # may have committed the chunk's letters or rows first (its ledger says so).
        dead = committer.commit_dead_letters(letters, end_row)
        result.dead_lettered += dead
        # The commit holds the only reference to the rows, so they are freed once sorted.
        outcome = committer.commit_rows(
            _take_all(buffer) if buffer else target.empty_table(), chunk_first, end_row, last
        )
        result.rows_stored += outcome.rows
        # The rest of the chunk another run committed (its rows, or letters stored before).
        result.rows_skipped += end_row - chunk_first - outcome.rows - dead - chunk_other
        chunk_other = 0
        wrote = wrote or bool(dead) or not outcome.skipped
        partitions.update(outcome.partitions)
        if outcome.snapshot_id is not None:
            result.snapshots.append(outcome.snapshot_id)
        buffered_bytes, letters = 0, []
        chunk_first = end_row

    if progress is not None:
        progress(path.name, 0, 0.0, time.perf_counter() - t0)
    try:
        for whole in source.batches(skip_rows=committed):
            for batch in _pieces(whole, commit_rows - (position - chunk_first), commit_rows):
                rows_in, problems, kept = batch.table, batch.problems, None
                if mine is not None:
                    rows_in, problems, kept = _only_rows_of(batch, mine, owns_unnamed)
                    other = batch.table.num_rows - rows_in.num_rows
                    result.rows_other_tables += other
                    chunk_other += other
                if mapping.name == "identity":
                    # Columns the table does not have (dropped, or never there): not stored,
                    # and said so in the result (evolve14: they vanished without a word).
                    # Only columns with values: a replay export's rows of this table are null
                    # in the other tables' columns (review14b: each load named them all).
                    unknown.update(
                        c
                        for c in unused_columns(mapping, target, rows_in.column_names)
                        if rows_in.column(c).null_count < rows_in.num_rows
                        and not (mine is not None and c == TABLE_COLUMN)
                        and c != RAW_LINE_COLUMN
                    )
                converted = convert(
                    rows_in,
                    mapping,
                    target,
                    source_name,
                    problems,
                    default_source,
                    trim_text=batch.padded_text,
                )
                if defaulted and converted.table.num_rows:
                    # A key some line has, null or not (JSON writers may write `"bid_px": null`
                    # for a one-sided quote, or leave the key out).
                    judged_rows += converted.table.num_rows
                    valued.update(
                        n for n in defaulted if mapping.source_column(n, rows_in.column_names)
                    )
                checked = validator.check(converted.table, converted.problems)
                if checked.good.num_rows:
                    buffer.append(checked.good)
                    buffered_bytes += checked.good.nbytes
                if checked.bad:
                    if kept is not None:  # rows of this table: back to their batch rows
                        checked.bad = [(int(kept[r]), reason) for r, reason in checked.bad]
                    if first_bad is None:
                        first_bad = (batch.first_row + checked.bad[0][0], checked.bad[0][1])
                    now = time.time_ns()
                    raws = _row_json(batch.table, [r for r, _ in checked.bad])
                    for (row, reason), raw in zip(checked.bad, raws, strict=True):
                        file_row = batch.first_row + row
                        if file_row >= dl_committed:
                            letters.append(
                                DeadLetter(now, table_id, subject, stream, file_row, reason, raw)
                            )
                position = batch.first_row + batch.table.num_rows
                result.rows_read = position - committed
                if progress is not None:
                    progress(path.name, result.rows_read, batch.progress, time.perf_counter() - t0)
                if position - chunk_first >= commit_rows or buffered_bytes >= MAX_BUFFER_BYTES:
                    flush(position, last=False)
        flush(position, last=True)
    except ConcurrentLoadError:
        # A copy of this file (same SHA-256) is loading in another process right now.
        result.status = "loading-elsewhere"
    except LoadUndoneError as exc:
        # What this run committed was taken out again with the rest of the file's loads.
        result.status = "failed"
        result.error = str(exc)
        result.rows_stored = result.dead_lettered = 0
        _finish(result, partitions, unknown, t0)
        raise LoadFailedError(result) from None
    except (TransientError, LoadRejectedError):
        raise
    except LakeError as exc:
        if not result.snapshots:
            raise
        # Chunks committed before the error (a download cut short) stay in Bronze: said so,
        # with their counts and partitions (review15b: reported as 0 rows stored).
        result.status = "failed"
        result.error = (
            f"{_naming(path, exc)} ({result.rows_stored:,} rows and {result.dead_lettered:,} "
            "dead letters committed before it stay in Bronze; a re-run resumes after them)"
        )
        _finish(result, partitions, unknown, t0)
        raise LoadFailedError(result) from None
    else:
        if not wrote and result.rows_read:
            # Another run of the same content committed every chunk first, the last one
            # with the done entry (a skipped last chunk means the ledger said done).
            result.status = "already-loaded"
    _finish(result, partitions, unknown, t0)
    if progress is not None:
        progress(path.name, result.rows_read, 1.0, time.perf_counter() - t0)
    return result


class LoadFailedError(LakeError):
    """A file that failed after some of its chunks were committed; `result` says what was."""

    def __init__(self, result: LoadResult) -> None:
        super().__init__(result.error)
        self.result = result


def _finish(
    result: LoadResult, partitions: set[tuple[str, int]], unknown: set[str], t0: float
) -> None:
    result.partitions = sorted(
        (sym, datetime.fromtimestamp(hour * HOUR_NS / 1e9, tz=UTC).strftime("%Y-%m-%dT%H"))
        for sym, hour in partitions
    )
    result.unknown_columns = sorted(unknown)
    result.seconds = round(time.perf_counter() - t0, 3)


# ---- several files ----------------------------------------------------------------------------

_QUEUE: Any = None


def _init_worker(queue: Any, log_level: int) -> None:
    global _QUEUE
    _QUEUE = queue
    # A worker ends with the `lake load` that started it: if that process is killed (kill -9),
    # the worker would otherwise load its file to the end and then wait for work forever.
    # SIGKILL: its commits are atomic, whatever was committed stays, the rest is loaded by the
    # next run.
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        end_with_parent(parent.pid, signal.SIGKILL)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Files loading in parallel conflict on commits by design; pyiceberg retries them and says
    # so at WARNING, which would scribble over the progress bars.
    logging.getLogger("pyiceberg.table").setLevel(max(log_level, logging.ERROR))
    if log_level > logging.INFO:  # nor its notes on metadata files it could not delete
        from iceberg_lake.engine.iceberg import is_retry_chatter

        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: not is_retry_chatter(record))


def _worker(settings: Settings, path: str, options: LoadOptions) -> LoadResult:
    def report(name: str, rows: int, fraction: float, seconds: float) -> None:
        if _QUEUE is not None:
            _QUEUE.put((name, rows, fraction, seconds))

    return _load_or_reject(settings, path, options, report)


def _load_or_reject(
    lake: LakeCatalog | Settings,
    path: Path | str,
    options: LoadOptions,
    progress: ProgressFn | None,
) -> LoadResult:
    """`load_file`, with a rejected file as a `rejected` result and a file that cannot be
    loaded (unreadable, truncated, no table for it) as a `failed` one: the other files still
    load (backfill15: one bad download stopped a folder's queue and lost the summary). The
    catalog or object store being down (`TransientError`) still ends the run."""
    try:
        return load_file(lake, path, options, progress)
    except LoadRejectedError as exc:
        return LoadResult(str(path), exc.sha256, exc.table, "rejected", rows_read=0, error=str(exc))
    except LoadFailedError as exc:
        return exc.result
    except TransientError:
        raise
    except LakeError as exc:
        return LoadResult(str(path), "", options.table or "", "failed", error=_naming(path, exc))
    except Exception as exc:  # a defect: this file fails, the queue goes on (review15b)
        log.debug("loading %s", path, exc_info=True)
        return LoadResult(
            str(path),
            "",
            options.table or "",
            "failed",
            error=f"{Path(path).name}: internal error: {type(exc).__name__}: {exc}",
        )


def load_files(
    settings: Settings,
    paths: Sequence[Path | str],
    options: LoadOptions | None = None,
    *,
    jobs: int = 1,
    progress: ProgressFn | None = None,
) -> list[LoadResult]:
    """Load several files, `jobs` at a time in separate processes (each file independent).

    Args:
        settings: lake settings.
        paths: the files.
        options: how to load them.
        jobs: processes; 1 loads in this process, one file after another.
        progress: as for `load_file` (called in this process).

    Returns:
        One result per file, in the order given (a replay export loaded without a table: one
        per table it holds, `_route`); a file rejected for having no valid row in its
        first commit has status `rejected`, a file that cannot be loaded (unreadable,
        truncated, no table for it) status `failed`, each with the reason in `error` (the
        others load).

    Raises:
        TransientError: the catalog or object store is unreachable (files already committed
            stay committed; re-run to resume).
    """
    options = options or LoadOptions()
    routed = _route(paths, options)
    failed = {i: LoadResult(p, "", t, "failed", error=e) for i, (p, t, e) in enumerate(routed) if e}
    work = [
        (path, replace(options, table=table) if table else options)
        for path, table, error in routed
        if not error
    ]
    if jobs <= 1 or len(work) <= 1:
        lake = LakeCatalog(settings)
        loaded = iter([_load_or_reject(lake, p, o, progress) for p, o in work])
        return [failed[i] if i in failed else next(loaded) for i in range(len(routed))]
    ctx = multiprocessing.get_context("spawn")
    # A plain queue handed over at worker start-up (no manager process to outlive a kill).
    queue = ctx.Queue()
    results: dict[int, LoadResult] = {}
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(paths), os.cpu_count() or 1) or 1,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(queue, logging.getLogger().getEffectiveLevel()),
    ) as pool:
        futures = {pool.submit(_worker, settings, p, o): i for i, (p, o) in enumerate(work)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
            for fut in done:
                results[futures[fut]] = fut.result()
        _drain(queue, progress)
    loaded = iter([results[i] for i in range(len(work))])
    return [failed[i] if i in failed else next(loaded) for i in range(len(routed))]


def _drain(queue: Any, progress: ProgressFn | None) -> None:
    while True:
        try:
            item = queue.get_nowait()
        except queue_module.Empty:
            return
        if progress is not None:
            progress(*item)


#: Statuses of a file an earlier run loaded all or part of (its days are not in `days`).
EARLIER_RUN = ("already-loaded", "resumed", "loading-elsewhere")


def compact_loaded(settings: Settings | LakeCatalog, results: Sequence[LoadResult]) -> list[dict]:
    """Run Silver compaction on every (table, day) the loads touched, and on every day an
    earlier run of the same files loaded.

    A table with a file an earlier run loaded all or part of (a killed run re-run, a copy
    loaded before: `EARLIER_RUN`) gets its incremental compaction, which compacts every
    partition Bronze changed since Silver last saw it: the days the earlier run committed are
    not this run's `days` (backfill15: a re-run after a kill compacted only the day it
    resumed, and the day the killed run had loaded whole never reached Silver). Other tables:
    one compaction per touched day. Idempotent (the compactor skips unchanged partitions).
    """
    from iceberg_lake.silver import SilverCompactor

    earlier = sorted({r.table for r in results if r.status in EARLIER_RUN and r.table})
    work = sorted({(r.table, day) for r in results if r.table not in earlier for day in r.days})
    out: list[dict] = []
    with SilverCompactor(settings) as compactor:
        for table, day in work:
            out.append(compactor.compact_date(day, table).as_dict())
        for table in earlier:
            out.extend(c.as_dict() for c in compactor.compact_incremental([table]))
    return out
