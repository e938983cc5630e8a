"""Exactly-once commits of a loaded file: a ledger of rows committed, set with every append.

The ledger is a table property, `lake.load.<sha256 of the file>` = rows of the file committed so
far (`<n>:done` once the whole file is in), set in the SAME transaction as the append that stores
those rows, like the live writers' watermark. A commit either lands with its ledger entry or not
at all, so after a kill -9 a re-run reads the entry, skips exactly the rows already committed and
stores every row once; a file whose entry says `done` is skipped whole. The entry survives
snapshot expiry and other components' commits (compaction, maintenance).

`lake load --reload` loads a file again although its entry says done: the run starts a new
*generation* of the file, `<n>[:done]@<g>`, whose first commit replaces the done entry in the same
compare-and-swap (a reload killed before it leaves the old entry: nothing of it is stored). From
then on it is an ordinary load of generation g (a kill -9 resumes it, with or without
`--reload`); its dead letters have their own entry (`...@<g>`), so they are recorded again.

The entry also carries a fingerprint of what decides the stored rows (`;m=<mapping>,s=<source>,
f=<format>`: hashes of the mapping's content and of `--source`, and the format; the table is the
one holding the entry), and the load snapshots say them in words (`lake.load-mapping`, ...). A
resume under other options would store the file half under each (load18: a fixed `[scale]`
gave 40,000 trades at 100x price), so it is refused. An entry written before (no fingerprint)
resumes as before.

Dead letters of a commit go first, to `bronze.dead_letters`, with their own entry
(`lake.load.<table>.<sha256>`); the target table's commit follows. A re-run after a kill between
the two skips the bad rows the quarantine already holds.

Commits go through the writers' append path (`engine.iceberg.watermarked_append`: memoised
metadata, fast append with the bounded manifest fold, ledger and rows in one transaction). Rows
are sorted by partition and event time and handed over one slice per (symbol, hour) partition
(`append_partitions`: pyiceberg would otherwise filter the whole batch once per partition); one
append snapshot adds them all. Concurrent loaders (other files, `--jobs`) and live writers commit
to the same tables: a lost compare-and-swap is retried on a refreshed table, after checking the
ledger so a commit whose response was lost is never repeated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine.iceberg import (
    current_data_files,
    file_tag,
    file_tag_of,
    identity_partition_column,
    partition_codes,
    tagged_write_uuid,
    watermarked_append,
)
from iceberg_lake.exceptions import CommitConflictError, LakeError
from iceberg_lake.ingest.dead_letters import DeadLetter, dead_letter_table
from iceberg_lake.load.mapping import Mapping
from iceberg_lake.tables import DEAD_LETTERS_TABLE

log = logging.getLogger(__name__)

HOUR_NS = 3600 * 10**9
DONE = "done"
#: The state of a ledger entry after `lake load --undo` (`0:undone@<next generation>;k=<rows
#: it removed>`), and while it runs (`0:undoing@<next generation>;k=<rows stored>`: set first,
#: so a load of the file running meanwhile fails its next commit).
UNDONE = "undone"
UNDOING = "undoing"
#: The ledger's count of rows stored by all loads of the file (`…;<options>,k=<n>`).
STORED = "k"
#: Attempts at one commit before giving up (each on a refreshed table, with backoff).
MAX_ATTEMPTS = 12


class ConcurrentLoadError(CommitConflictError):
    """Another process is loading the same file (same content) into the same table right now."""


def ledger_key(sha256: str) -> str:
    """The target table's ledger property of a file."""
    return f"{P.LOAD_PREFIX}{sha256}"


def dead_letter_key(table: str, sha256: str, generation: int = 0) -> str:
    """The quarantine table's ledger property of a file loaded into `table` (per generation)."""
    key = f"{P.LOAD_PREFIX}{table}.{sha256}"
    return f"{key}@{generation}" if generation else key


class LoadUndoneError(LakeError):
    """The file's load was undone (`lake load --undo`) while this run was loading it: the run
    stopped, nothing of it is in the table."""


class OptionsChangedError(LakeError):
    """A resume (or a concurrent load of the same content) under options other than those the
    file's stored rows were loaded with: it would store the file half under each."""


class SchemaChangedError(LakeError):
    """The target table's schema changed while a file was loading (a migration, `lake table
    evolve`): the rows read so far were converted to the old one. A re-run resumes."""


#: Separates a ledger value's fingerprint of the load options (`<rows>[:done][@<g>];<options>`).
OPTIONS_SEP = ";"


@dataclass(frozen=True)
class LoadFingerprint:
    """What decides the rows a load stores from a file, beside the file and the table.

    Attributes:
        mapping: hash of the mapping's content (`[columns]`, `[scale]`, its `source`), 10 hex.
        source: hash of `--source` (empty without it), 8 hex.
        format: the format the file is read as.
        mapping_label: the mapping in words (`my_vendor (v1.toml)`), for summaries and messages.
        source_value: `--source` as given.
    """

    mapping: str
    source: str
    format: str
    mapping_label: str = ""
    source_value: str = ""

    @classmethod
    def of(cls, mapping: Mapping, source: str | None, fmt: str) -> LoadFingerprint:
        """The fingerprint of loading with `mapping`, `--source` `source` and format `fmt`."""
        content = json.dumps(
            {"columns": mapping.columns, "scale": mapping.scale, "source": mapping.source},
            sort_keys=True,
        )
        return cls(
            mapping=hashlib.sha256(content.encode()).hexdigest()[:10],
            source=hashlib.sha256(source.encode()).hexdigest()[:8] if source else "",
            format=fmt,
            mapping_label=f"{mapping.name} ({mapping.path})" if mapping.path else mapping.name,
            source_value=source or "",
        )

    def encode(self) -> str:
        """The ledger form: `m=<mapping>,s=<source>,f=<format>`."""
        return f"m={self.mapping},s={self.source},f={self.format}"

    def differences(self, stored: str) -> list[str]:
        """What differs from a stored `encode()` (empty when it matches or holds nothing)."""
        if not stored:
            return []  # a ledger entry from before fingerprints: nothing to compare
        theirs = dict(part.partition("=")[::2] for part in stored.split(","))
        out = []
        if theirs.get("m", self.mapping) != self.mapping:
            out.append("the mapping")
        if theirs.get("s", self.source) != self.source:
            out.append("--source")
        if theirs.get("f", self.format) != self.format:
            out.append(f"the format (was {theirs['f']}, now {self.format})")
        return out

    def summary(self) -> dict[str, str]:
        """The load snapshot's summary entries, in words."""
        return {
            P.LOAD_MAPPING: self.mapping_label,
            P.LOAD_SOURCE: self.source_value,
            P.LOAD_FORMAT: self.format,
        }


def parse_ledger(value: str | None) -> tuple[int, bool]:
    """(rows committed, whole file done) from a ledger property value (an undone file's
    entry: no rows, not done)."""
    if not value:
        return 0, False
    rows, _, state = value.partition(OPTIONS_SEP)[0].partition("@")[0].partition(":")
    return int(rows), state == DONE


def _state_of(value: str | None) -> str:
    """The `<rows>[:<state>]` part of a ledger value ("" for none)."""
    return (value or "").partition(OPTIONS_SEP)[0].partition("@")[0]


def is_undone(value: str | None) -> bool:
    """Whether a ledger value is the mark `lake load --undo` leaves (`0:undone@<g>`)."""
    return _state_of(value) == f"0:{UNDONE}"


def is_undoing(value: str | None) -> bool:
    """Whether a ledger value is the mark of an undo running or interrupted (`0:undoing@<g>`)."""
    return _state_of(value) == f"0:{UNDOING}"


def _counted(value: str | None) -> int | None:
    """The `k=` count of a ledger value's options part (None: none)."""
    for part in ledger_options(value).split(","):
        name, _, count = part.partition("=")
        if name == STORED:
            return int(count)
    return None


def ledger_stored(value: str | None) -> int | None:
    """Rows stored in the table by every load of the file so far (all generations; dead
    letters not counted), from a ledger value: 0 for no entry or an undone one, None when an
    entry predates the count (`lake load --undo` then cannot check it found every row)."""
    if not value or is_undone(value):
        return 0
    return _counted(value)


def undone_rows(value: str | None) -> int:
    """The rows an undone (or undoing) entry's undo removes: its `k=`."""
    return _counted(value) or 0


def ledger_generation(value: str | None) -> int:
    """The load generation of a ledger value (0 until the file is loaded again with --reload)."""
    body = (value or "").partition(OPTIONS_SEP)[0]
    if "@" not in body:
        return 0
    return int(body.partition("@")[2])


def ledger_options(value: str | None) -> str:
    """The options fingerprint of a ledger value ("" for entries written before load18)."""
    return (value or "").partition(OPTIONS_SEP)[2]


def ledger_value(
    rows: int, done: bool, generation: int = 0, options: str = "", stored: int | None = None
) -> str:
    """The ledger property value for `rows` committed (and `done`) in `generation`, loaded
    with the options fingerprint `options` (`LoadFingerprint.encode`), `stored` rows in the
    table from all generations (None: not counted)."""
    value = f"{rows}:{DONE}" if done else str(rows)
    value = f"{value}@{generation}" if generation else value
    if stored is not None:
        options = f"{options},{STORED}={stored}" if options else f"{STORED}={stored}"
    return f"{value}{OPTIONS_SEP}{options}" if options else value


def undone_value(generation: int, rows: int) -> str:
    """The ledger value `lake load --undo` leaves: nothing loaded, next load in `generation`,
    `rows` removed (what a rollback past the undo brings back)."""
    return f"0:{UNDONE}@{generation}{OPTIONS_SEP}{STORED}={rows}"


def undoing_value(generation: int, rows: int) -> str:
    """The ledger value an undo sets first: the `rows` stored are still there, every load of
    the file is fenced (generation `generation`)."""
    return f"0:{UNDOING}@{generation}{OPTIONS_SEP}{STORED}={rows}"


def undo_snapshot_key(sha256: str) -> str:
    """The target table's property naming the snapshot of a file's last undo
    (`<snapshot id>:<sequence number>`): a rollback past it brings the rows back."""
    return f"{P.LOAD_UNDO_PREFIX}{sha256}"


@dataclass
class CommitOutcome:
    """What one commit stored."""

    rows: int
    dead_letters: int
    snapshot_id: int | None
    partitions: set[tuple[str, int]]
    #: The ledger already covered the chunk (another run committed it): nothing was written.
    skipped: bool = False


class FileCommitter:
    """Commits the rows of one file to one table, exactly once.

    Args:
        lake: the catalog.
        table_id: the target table (`bronze.stocks_trades`).
        sha256: the file's content hash.
        file_name: for snapshot summaries and dead letters.
        reload: load the file again if its ledger says done (a new generation, see above).
        fingerprint: the options of this load (None: not recorded, not checked).
    """

    def __init__(
        self,
        lake: LakeCatalog,
        table_id: str,
        sha256: str,
        file_name: str,
        reload: bool = False,
        fingerprint: LoadFingerprint | None = None,
    ) -> None:
        self.lake = lake
        self.fingerprint = fingerprint
        self.options = fingerprint.encode() if fingerprint else ""
        self.table_id = table_id
        self.sha256 = sha256
        self.file_name = file_name
        self.reload = reload
        self.table: Table = lake.load_table(table_id)
        self._dl_table: Table | None = None
        self.key = ledger_key(sha256)
        #: The generation this run writes, and (reload) the done entry its first commit replaces.
        self.generation = 0
        self._replaces: str | None = None
        #: The schema the load converts rows to (set by `state`); commits require it.
        self.schema_id: int | None = None
        self.dl_key = dead_letter_key(table_id, sha256)

    @property
    def partition_key(self) -> str | None:
        """The identity-partitioned column (`symbol`) as the live table names it now (load18: a
        renamed partition column failed every load with `KeyError`)."""
        return identity_partition_column(self.table)

    # ---- ledger ---------------------------------------------------------------------------------

    @property
    def reloading(self) -> bool:
        """True when this run loads the file again (`reload` of a done entry)."""
        return self._replaces is not None

    @property
    def dl_table(self) -> Table:
        """The dead-letter table (`bronze.dead_letters`), loaded on first use.

        `state` and a lost commit replace it with freshly loaded metadata.
        """
        if self._dl_table is None:
            self._dl_table = self.lake.load_table(DEAD_LETTERS_TABLE)
        return self._dl_table

    def state(self) -> tuple[int, bool, int]:
        """(rows committed, done, rows whose dead letters are committed), from fresh metadata.

        With `reload`, a done entry starts the next generation: (0, False, its dead letters).
        """
        with catalog_errors(f"reading the load ledger of {self.table_id}"):
            self.table = self.lake.load_table(self.table_id)
            self.schema_id = self.table.schema().schema_id
            value = self.table.properties.get(self.key)
            if is_undoing(value):
                raise LakeError(
                    f"{self.file_name}: an undo of its load into {self.table_id} is running or "
                    f"was interrupted: run `lake load --undo {self.file_name}` (again) first"
                )
            if is_undone(value) and rows_back_after_undo(self.table, self.sha256, value):
                raise LakeError(
                    f"{self.file_name}: {self.table_id} was rolled back past the undo of its "
                    f"load, and the load's rows are back: run `lake load --undo "
                    f"{self.file_name}` again before loading it"
                )
            rows, done = parse_ledger(value)
            self.generation = ledger_generation(value)
            if done and self.reload:
                self._replaces = value
                self.generation += 1
                rows, done = 0, False
            elif rows and not done and self.reload and self._options_differ(value):
                # The way out of a half load under wrong options (review18b: finishing it under
                # them first, as advised, put the whole file into Silver at 100x price): the
                # whole file again under this run's options, as the next generation; the rows
                # stored under the old ones stay (`lake load --undo` takes them out).
                self._replaces = value
                self.generation += 1
                rows = 0
            if rows and not done:
                self.check_options(value, rows)
            self.dl_key = dead_letter_key(self.table_id, self.sha256, self.generation)
            dl_rows = 0
            if not done:
                self._dl_table = self.lake.load_table(DEAD_LETTERS_TABLE)
                dl_rows, _ = parse_ledger(self._dl_table.properties.get(self.dl_key))
        return rows, done, dl_rows

    def _options_differ(self, value: str | None) -> bool:
        return self.fingerprint is not None and bool(
            self.fingerprint.differences(ledger_options(value))
        )

    def check_options(self, value: str | None, rows: int) -> None:
        """Refuse to add rows to a file's load started under other options (`value`: its ledger
        entry, `rows` of the file committed).

        Raises:
            OptionsChangedError: the fingerprint differs (one line: what differs, what it was
                started with where the load snapshots still say, and how to go on).
        """
        if self.fingerprint is None:
            return
        stored = ledger_options(value)
        differs = self.fingerprint.differences(stored)
        if not differs:
            return
        started = self._started_with()
        what = " and ".join(differs) + (" differs" if len(differs) == 1 else " differ")
        raise OptionsChangedError(
            f"{self.file_name}: {rows:,} of its rows are in {self.table_id}, loaded with other "
            f"options than this run's ({what}{'; started with ' + started if started else ''}): "
            "resuming would store the file half under each. `lake load --undo` takes those "
            f"{rows:,} rows out, then load it with this run's options; `--reload` with this "
            f"run's options loads the whole file again under them, beside those {rows:,} rows "
            "(they stay in Bronze, and in Silver where their dedup key differs); or re-run "
            "with the options it was started with to finish it as it began"
        )

    def _started_with(self) -> str:
        """The options of the file's latest load snapshot in words ("" once expired)."""
        for snap in reversed(self.table.snapshots()):
            summary: Any = snap.summary or {}
            if summary.get(P.LOAD_SHA256) == self.sha256 and P.LOAD_MAPPING in summary:
                source = summary.get(P.LOAD_SOURCE, "")
                return (
                    f"mapping {summary[P.LOAD_MAPPING]}, "
                    f"{'--source ' + source if source else 'no --source'}, "
                    f"format {summary.get(P.LOAD_FORMAT, '?')}"
                )
        return ""

    def arrow_schema(self) -> pa.Schema:
        """The live Arrow schema of the target table."""
        return schema_to_pyarrow(self.table.schema(), include_field_ids=False)

    # ---- commits --------------------------------------------------------------------------------

    def commit_dead_letters(self, letters: list[DeadLetter], end_row: int) -> int:
        """Commit `letters` (rows of the file before `end_row`) with the quarantine's ledger.

        Letters of rows the quarantine's ledger already covers are not committed again: another
        run loading the same content (or an earlier, interrupted run) stored them.

        Returns:
            How many letters this call committed (0 when the ledger already covered them all;
            also after a commit whose response was lost, which cannot be told apart).
        """
        if not letters:
            return 0
        self._check_not_undone()
        for attempt in range(MAX_ATTEMPTS):
            table = self.dl_table
            done_rows, _ = parse_ledger(table.properties.get(self.dl_key))
            if done_rows >= end_row:
                return 0  # another run (or this one, response lost) stored them
            fresh = [d for d in letters if d.stream_seq >= done_rows]
            try:
                with catalog_errors(f"committing dead letters of {self.file_name}"):
                    rows = dead_letter_table(
                        fresh, schema_to_pyarrow(table.schema(), include_field_ids=False)
                    )
                    watermarked_append(
                        table,
                        watermark={self.dl_key: ledger_value(end_row, False, self.generation)},
                        snapshot_properties=self._summary(len(fresh), end_row),
                        # Compare-and-swap on the ledger: a concurrent load of the same file
                        # that moved it makes this commit fail (also in pyiceberg's retries).
                        expected={self.dl_key: table.properties.get(self.dl_key)},
                    ).append(rows).commit()
                return len(fresh)
            except (CommitFailedException, ValidationException) as exc:
                self._backoff(attempt, exc)
                self._dl_table = self.lake.load_table(DEAD_LETTERS_TABLE)
        raise CommitConflictError(f"{DEAD_LETTERS_TABLE}: gave up after {MAX_ATTEMPTS} conflicts")

    def commit_rows(
        self, rows: pa.Table, first_row: int, end_row: int, done: bool
    ) -> CommitOutcome:
        """Append `rows` (valid rows of file rows `first_row..end_row`) with the ledger entry.

        Idempotent: if the ledger already covers `end_row`, nothing is written (another run
        loading the same content committed the chunk first): the outcome says `skipped`.

        Returns:
            Rows stored, the snapshot id (None for a ledger-only commit), the partitions, and
            whether the chunk was skipped.
        """
        self._check_schema()
        prepared = rows.cast(self.arrow_schema()) if rows.num_rows else rows
        del rows  # the uncast copy is not needed any more
        spec_id: int | None = None
        parts: list[pa.Table] = []
        partitions: set[tuple[str, int]] = set()
        for attempt in range(MAX_ATTEMPTS):
            self._check_schema()  # after a lost commit: the refreshed table's
            if self.table.metadata.default_spec_id != spec_id:  # first, or the spec changed
                spec_id = self.table.metadata.default_spec_id
                prepared, bounds = self._layout(prepared)
                partitions = self._partitions(prepared, bounds)
                parts = [prepared.slice(o, n) for o, n in bounds]
            value = self.table.properties.get(self.key)
            committed, was_done = parse_ledger(value)
            if value is not None and value == self._replaces:
                committed, was_done = 0, False  # the done entry this reload replaces
            elif ledger_generation(value) > self.generation and (
                is_undone(value) or is_undoing(value)
            ):
                raise LoadUndoneError(
                    f"{self.file_name}: its load into {self.table_id} was undone (`lake load "
                    "--undo`) while this run was loading it; nothing more was stored: load it "
                    "again to load it whole"
                )
            elif ledger_generation(value) > self.generation:
                # Another run reloaded the file meanwhile: its rows are its own.
                raise ConcurrentLoadError(
                    f"{self.file_name} is being reloaded into {self.table_id} by another process"
                )
            if was_done or committed >= end_row and not done:
                return CommitOutcome(0, 0, None, set(), skipped=True)
            if committed and value != self._replaces:
                # A run of the same content under other options got there first.
                self.check_options(value, committed)
            if committed > first_row:
                # Another process loading the same file got further: never store rows twice.
                raise ConcurrentLoadError(
                    f"{self.file_name} is being loaded into {self.table_id} by another process"
                )
            if first_row and not committed and value != self._replaces:
                # The rows before this chunk are gone from the ledger (removed by hand):
                # storing the rest would leave half a file.
                raise LoadUndoneError(
                    f"{self.file_name}: the ledger entry of its load into {self.table_id} was "
                    "removed while this run was loading it; nothing more was stored"
                )
            # Every load's rows, counted in the ledger (all generations), so `lake load
            # --undo` can tell it found them all by the tag in their files' names.
            stored = ledger_stored(value)
            stored_after = None if stored is None else stored + prepared.num_rows
            try:
                with catalog_errors(f"committing {self.file_name} to {self.table_id}"):
                    summary = self._summary(prepared.num_rows, end_row, first_row)
                    snapshot_id = (
                        watermarked_append(
                            self.table,
                            watermark={
                                self.key: ledger_value(
                                    end_row, done, self.generation, self.options, stored_after
                                )
                            },
                            snapshot_properties=summary,
                            expected={self.key: self.table.properties.get(self.key)},
                            # A migration landing meanwhile fails the commit: the rows are in
                            # the schema read at the start.
                            schema_id=self.schema_id,
                            # The file's tag in the data files' names: `lake load --undo`
                            # finds its rows by it.
                            write_uuid=tagged_write_uuid(file_tag_of(self.sha256)),
                        )
                        .append_partitions(parts)
                        .commit()
                    )
                return CommitOutcome(
                    prepared.num_rows, 0, snapshot_id if parts else None, partitions
                )
            except (CommitFailedException, ValidationException) as exc:
                self._backoff(attempt, exc)
                with catalog_errors(f"refreshing {self.table_id}"):
                    self.table = self.lake.load_table(self.table_id)
        raise CommitConflictError(f"{self.table_id}: gave up after {MAX_ATTEMPTS} conflicts")

    def _check_not_undone(self) -> None:
        """Raise `LoadUndoneError` when an undo of the file fenced this load (its mark in the
        target table's ledger): checked before dead letters are committed, which go to another
        table than the ledger (review19: a chunk's letters committed after the undo removed the
        file's were left behind, and duplicated by the next load)."""
        with catalog_errors(f"reading the load ledger of {self.table_id}"):
            self.table = self.lake.load_table(self.table_id)
        value = self.table.properties.get(self.key)
        if ledger_generation(value) > self.generation and (is_undone(value) or is_undoing(value)):
            raise LoadUndoneError(
                f"{self.file_name}: its load into {self.table_id} was undone (`lake load "
                "--undo`) while this run was loading it; nothing more was stored: load it "
                "again to load it whole"
            )

    def _check_schema(self) -> None:
        """Raise `SchemaChangedError` when the table's schema is not the one the load converts
        rows to (load18: a migration during a load ended it with `internal error: ValueError:
        Target schema's field names are not matching…`)."""
        current = self.table.schema().schema_id
        if self.schema_id is not None and current != self.schema_id:
            raise SchemaChangedError(
                f"{self.table_id} changed schema during the load (schema {self.schema_id} → "
                f"{current}: a migration or `lake table evolve`); re-run to load the rest "
                "with the new schema"
            )

    def _backoff(self, attempt: int, exc: Exception) -> None:
        delay = min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
        log.info("load commit conflict on %s (attempt %d): %s", self.table_id, attempt + 1, exc)
        time.sleep(delay)

    def _summary(self, count: int, end_row: int, first_row: int | None = None) -> dict[str, str]:
        summary = {
            P.LAKE_OPERATION: P.LOAD,
            P.LOAD_SHA256: self.sha256,
            P.LOAD_FILE: self.file_name,
            P.LOAD_END_ROW: str(end_row),
            P.EVENT_COUNT: str(count),
        }
        if first_row is not None:
            summary[P.LOAD_FIRST_ROW] = str(first_row)
            if self.fingerprint is not None:
                summary.update(self.fingerprint.summary())
        return summary

    # ---- layout ---------------------------------------------------------------------------------

    def _layout(self, rows: pa.Table) -> tuple[pa.Table, list[tuple[int, int]]]:
        """The rows grouped by partition of the table's current spec, by event time within each,
        and (offset, length) of each run in one partition and one hour.

        Every field of the spec counts, with its transform, as the live writers cut
        (`sort_and_slice`): load18: a field added to Bronze (`source:identity`) was ignored and
        each file labelled with its first row's value. Vendor files are usually in time order
        already: a stable sort on the partition codes then keeps time order inside each
        partition and is much cheaper than a two-key sort.
        """
        n = rows.num_rows
        if n == 0:
            return rows, []
        ts = rows.column("ts_event_ns").combine_chunks().to_numpy(zero_copy_only=False)
        codes = partition_codes(self.table, rows)
        if codes is None:
            if not np.all(ts[1:] >= ts[:-1]):
                order = np.argsort(ts, kind="stable")
                rows, ts = rows.take(pa.array(order)), ts[order]
        else:
            order = np.argsort(codes, kind="stable")
            ts_sorted, codes_sorted = ts[order], codes[order]
            same_key = codes_sorted[1:] == codes_sorted[:-1]
            if np.any(same_key & (ts_sorted[1:] < ts_sorted[:-1])):
                order = np.lexsort((ts, codes))
                ts_sorted, codes_sorted = ts[order], codes[order]
            if not np.all(order[1:] > order[:-1]):
                rows = rows.take(pa.array(order))
            ts, codes = ts_sorted, codes_sorted
        hours = ts // HOUR_NS
        change = np.zeros(n, dtype=bool)
        change[0] = True
        change[1:] = hours[1:] != hours[:-1]
        if codes is not None:
            change[1:] |= codes[1:] != codes[:-1]
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], n)
        return rows, [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]

    def _partitions(self, rows: pa.Table, bounds: list[tuple[int, int]]) -> set[tuple[str, int]]:
        """The (partition key value, hour) pairs of the runs `bounds` (what the load reports)."""
        out: set[tuple[str, int]] = set()
        ts = rows.column("ts_event_ns")
        key = self.partition_key
        keys = rows.column(key) if key else None
        for offset, _length in bounds:
            hour = int(ts[offset].as_py()) // HOUR_NS
            out.add((str(keys[offset].as_py()) if keys is not None else "", hour))
        return out


def rows_back_after_undo(table: Table, sha256: str, value: str | None) -> bool:
    """Whether the table was rolled back past the undo an undone entry `value` records and rows
    of the file's loads are back (review19: a rollback restored 995 wrong rows while the ledger
    still said undone; the undo then answered `not-loaded` and a load stored the file beside
    them). A rollback to before the load brings none back (review19b: that was taken as rows
    back, and neither the undo nor a load could go on).

    Table properties are not rolled back with the data: the undo's snapshot (`undo_snapshot_key`)
    tells. The current snapshot descends from it: not rolled back. An ancestor older than it
    (by sequence number) is reached first: rolled back, and then the current snapshot's files
    tagged with the file's SHA-256 say whether rows are back. History expired before either:
    taken as not rolled back.
    """
    if not is_undone(value) or not undone_rows(value) or not _rolled_back(table, sha256):
        return False
    tag = file_tag_of(sha256)
    return any(file_tag(f.file_path) == tag for f in current_data_files(table))


def _rolled_back(table: Table, sha256: str) -> bool:
    """Whether the current snapshot does not descend from the file's recorded undo snapshot."""
    recorded = table.properties.get(undo_snapshot_key(sha256), "")
    snapshot_id, _, sequence = recorded.partition(":")
    if not snapshot_id.isdigit() or not sequence.isdigit():
        return False
    current = table.current_snapshot()
    if current is None:
        return True
    for ancestor in ancestors_of(current, table.metadata):
        if ancestor.snapshot_id == int(snapshot_id):
            return False
        if (ancestor.sequence_number or 0) < int(sequence):
            return True
    return False
