"""`lake load --undo`: take every row the loads of a file stored back out of Bronze.

A load under wrong options (a mapping with the wrong `[scale]`, the wrong `--source`) stored rows
that `--reload` cannot take back: it only adds the file again beside them (load18, review18b).
The undo removes them, whatever generations (`--reload`s) stored them:

* **Which rows.** Every load commit writes its data files under a write id tagged with the
  file's SHA-256 (`engine.iceberg.tagged_write_uuid`), and `lake maintain compact-files` keeps
  the tag (it merges files of one tag only), so the files holding a file's rows are found by
  name in the current snapshot. The ledger entry counts the rows all its loads stored (`k=`);
  the files found must hold exactly that many, else the undo is refused with nothing changed
  (rows rewritten into other files by another engine's compaction; a load made before the
  count existed).
* **A fence first.** The ledger entry becomes `0:undoing@<next generation>;k=<n>` (compare-and-
  swap on the entry read): a load of the same file running meanwhile fails its next commit of
  rows or dead letters (`LoadUndoneError`), so the file's dead letters stop changing; a load
  started later is refused until the undo finished (a crash leaves the fence: run it again).
* **Then the dead letters** (`stream = file:<sha256>` for this table) and their ledger entries,
  in one commit on `bronze.dead_letters`.
* **Then the rows, in one commit** that deletes those data files by name (a concurrent
  compaction of them conflicts; appends of other files never do), sets the entry to
  `0:undone@<next generation>;k=<n>` (compare-and-swap on the fence) and records its snapshot
  (`<id>:<sequence number>`): a rollback past it brings the rows back, which
  `rows_back_after_undo` tells, so the undo runs again and a plain load is refused. Last, the
  letters of a fenced load's last chunk are swept. Loading the file afterwards is an ordinary
  load (a new generation, its own dead letters).
* **History stays.** Snapshots before the undo still hold the rows: a replay pinned before it
  reads them as it did. Silver changes only when the affected partitions are compacted again
  (`lake compact --date D` or `--incremental`; `--compact` does it for the undone days): their
  Bronze file sets changed, so change detection recompacts them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysFalse, And
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine.filters import eq
from iceberg_lake.engine.iceberg import (
    PartitionReplacement,
    column_bounds,
    current_data_files,
    delete_rows,
    file_tag,
    file_tag_of,
    set_properties_if,
)
from iceberg_lake.exceptions import CommitConflictError, LakeError
from iceberg_lake.load.commit import (
    MAX_ATTEMPTS,
    dead_letter_key,
    is_undoing,
    is_undone,
    ledger_generation,
    ledger_key,
    ledger_stored,
    rows_back_after_undo,
    undo_snapshot_key,
    undoing_value,
    undone_rows,
    undone_value,
)
from iceberg_lake.load.sources import file_sha256
from iceberg_lake.tables import BRONZE, DEAD_LETTERS_TABLE

log = logging.getLogger(__name__)

HOUR_US = 3600 * 10**6


@dataclass
class UndoResult:
    """The outcome of undoing one file's loads in one table.

    Attributes:
        file: the path (or name) given.
        sha256: the file's content hash.
        table: the Bronze table ("" when no table holds the file).
        status: `undone`, or `not-loaded` (no table's ledger has the file, or it was undone
            already: nothing to do).
        rows_removed: rows taken out of the table.
        dead_letters_removed: the file's dead letters taken out of `bronze.dead_letters`.
        files_removed: data files the undo snapshot removed.
        days: UTC days (`YYYY-MM-DD`) whose partitions lost rows (Silver's to recompact).
        snapshot_id: the undo snapshot on the table (None: none made).
    """

    file: str
    sha256: str
    table: str
    status: str
    rows_removed: int = 0
    dead_letters_removed: int = 0
    files_removed: int = 0
    days: list[str] = field(default_factory=list)
    snapshot_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return asdict(self)


class UndoRefusedError(LakeError):
    """The undo cannot find every row the file's loads stored; nothing was changed."""


def undo_file(lake: LakeCatalog, path: Path | str, table: str | None = None) -> list[UndoResult]:
    """Undo every load of the file at `path` (identified by its content): see the module doc.

    Args:
        lake: the catalog.
        path: the loaded file (its bytes decide which loads are undone, not its name).
        table: only in this Bronze table (default: every Bronze table whose ledger has it).

    Returns:
        One result per table the file was loaded into (one `not-loaded` result if none).

    Raises:
        UndoRefusedError: the rows cannot all be found (nothing changed in that table).
        LakeError: unreadable file, unknown table, catalog unavailable.
    """
    path = Path(path)
    try:
        sha = file_sha256(path, verify=False)
    except OSError as exc:
        raise LakeError(f"cannot read {path}: {exc.strerror or exc}") from None
    return undo_sha256(lake, sha, path.name, table)


def undo_sha256(
    lake: LakeCatalog, sha256: str, name: str, table: str | None = None
) -> list[UndoResult]:
    """`undo_file` for the file of content hash `sha256` (named `name` in summaries)."""
    if table is not None and "." not in table:
        table = f"{BRONZE}.{table}"
    if table is not None:
        if not table.startswith(BRONZE + ".") or table == DEAD_LETTERS_TABLE:
            raise LakeError(f"lake load --undo works on Bronze market tables, not {table}")
        candidates = [table]
    else:
        candidates = [
            t
            for t in lake.existing_tables()
            if t.startswith(BRONZE + ".") and t != DEAD_LETTERS_TABLE
        ]
    results = [
        r
        for t in candidates
        if (r := _undo_in(lake, t, sha256, name, quiet=table is None)) is not None
    ]
    return results or [UndoResult(name, sha256, table or "", "not-loaded")]


def _undo_in(
    lake: LakeCatalog, table_id: str, sha256: str, name: str, *, quiet: bool
) -> UndoResult | None:
    """Undo the file's loads in one table; None (when `quiet`) if its ledger lacks the file."""
    key = ledger_key(sha256)
    tag = file_tag_of(sha256)
    letters = 0  # removed over all attempts (review19: only the last attempt's were counted)
    for attempt in range(MAX_ATTEMPTS):
        with catalog_errors(f"reading {table_id}"):
            table = lake.load_table(table_id)
            value = table.properties.get(key)
            rolled_back = rows_back_after_undo(table, sha256, value)
            if value is None or is_undone(value) and not rolled_back:
                return None if quiet else UndoResult(name, sha256, table_id, "not-loaded")
            stored = undone_rows(value) if is_undone(value) or is_undoing(value) else None
            if stored is None:
                stored = ledger_stored(value)
            if stored is None:
                raise UndoRefusedError(
                    f"{name}: its load into {table_id} was made by a version of lake load that "
                    "did not count the rows it stored, so the undo cannot check it finds them "
                    "all; nothing was removed"
                )
            files = [f for f in current_data_files(table) if file_tag(f.file_path) == tag]
        found = sum(f.record_count for f in files)
        if rolled_back:
            # Rolled back to some point after the load: whatever of its rows that snapshot
            # held is back (a generation or all of them), every row of them the file's.
            stored = found
        if found != stored:
            raise UndoRefusedError(
                f"{name}: {table_id} holds {found:,} rows in data files of its loads, their "
                f"ledger counts {stored:,}: the others were rewritten into files of other rows "
                "(another engine's compaction, or a rollback to before a load?) and cannot be "
                "told apart; nothing was removed"
            )
        generation = ledger_generation(value) if is_undoing(value) else ledger_generation(value) + 1
        fence = undoing_value(generation, stored)
        try:
            with catalog_errors(f"undoing {name} in {table_id}"):
                if value != fence:
                    # First the fence: a load of the file running meanwhile fails its next
                    # commit (rows or dead letters), so the dead letters below stop changing
                    # (review19: they kept conflicting, and the load finished).
                    set_properties_if(table, {key: value}, {key: fence})
                letters += _remove_dead_letters(lake, table_id, sha256, name, generation - 1)
                table = lake.load_table(table_id)
                result = UndoResult(
                    name,
                    sha256,
                    table_id,
                    "undone",
                    rows_removed=found,
                    files_removed=len(files),
                    days=_days(table, files),
                )
                done = {key: undone_value(generation, stored)}
                if files:
                    rep = PartitionReplacement(
                        table,
                        {
                            P.LAKE_OPERATION: P.LOAD_UNDO,
                            P.LOAD_SHA256: sha256,
                            P.LOAD_FILE: name,
                            P.EVENT_COUNT: str(found),
                        },
                        validation="files",
                        table_properties=done,
                        expected_properties={key: fence},
                        # What tells a later rollback past this undo (`rows_back_after_undo`).
                        snapshot_id_property=undo_snapshot_key(sha256),
                        snapshot_sequence=True,
                    )
                    rep.replace_files(AlwaysFalse(), [], files)
                    result.snapshot_id = rep.commit()
                else:  # every row of it was dead-lettered: only the ledger changes
                    set_properties_if(table, {key: fence}, done)
                # A dead-letter commit of a fenced load that was already under way.
                letters += _remove_dead_letters(lake, table_id, sha256, name, generation - 1)
            result.dead_letters_removed = letters
            return result
        except (CommitConflictError, CommitFailedException, ValidationException) as exc:
            # A load of the file committed before the fence, or a compaction rewrote its files:
            # plan again on the new snapshot (the fence, once set, stays).
            log.info("undo of %s in %s conflicted (attempt %d): %s", name, table_id, attempt, exc)
    raise CommitConflictError(
        f"{name}: the undo in {table_id} kept conflicting with other commits ({MAX_ATTEMPTS} "
        "attempts); run it again"
    )


def _remove_dead_letters(
    lake: LakeCatalog, table_id: str, sha256: str, name: str, generation: int
) -> int:
    """Delete the file's dead letters for `table_id` and their ledger entries (every
    generation up to `generation`); the number deleted."""
    row_filter = And(eq("stream", f"file:{sha256}"), eq("target_table", table_id))
    keys = [dead_letter_key(table_id, sha256, g) for g in range(generation + 1)]
    for attempt in range(MAX_ATTEMPTS):
        with catalog_errors(f"removing the dead letters of {name}"):
            quarantine = lake.load_table(DEAD_LETTERS_TABLE)
            count = 0
            if quarantine.current_snapshot() is not None:
                count = quarantine.scan(row_filter, selected_fields=("stream_seq",)).count()
            if not count and not any(k in quarantine.properties for k in keys):
                return 0
            try:
                delete_rows(
                    quarantine,
                    row_filter,
                    remove_properties=keys,
                    snapshot_properties={
                        P.LAKE_OPERATION: P.LOAD_UNDO,
                        P.LOAD_SHA256: sha256,
                        P.LOAD_FILE: name,
                    },
                )
                return count
            except (CommitFailedException, ValidationException) as exc:
                log.info("dead letters of %s: conflict (attempt %d): %s", name, attempt, exc)
    raise CommitConflictError(
        f"{DEAD_LETTERS_TABLE}: removing the dead letters of {name} kept conflicting "
        f"({MAX_ATTEMPTS} attempts); run the undo again"
    )


def _days(table: Table, files: list[DataFile]) -> list[str]:
    """UTC days of the files' `ts_event` bounds (the Silver days the undo changes)."""
    schema = table.schema()
    days: set[str] = set()
    for f in files:
        bounds = column_bounds(f, schema, "ts_event")
        if bounds is None:
            continue
        low, high = bounds
        for us in range(_us(low) // (24 * HOUR_US), _us(high) // (24 * HOUR_US) + 1):
            days.add(datetime.fromtimestamp(us * 24 * 3600, UTC).date().isoformat())
    return sorted(days)


def _us(value: Any) -> int:
    """Microseconds since the epoch of a `ts_event` bound (a datetime or an int)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 10**6)
    return int(value)
