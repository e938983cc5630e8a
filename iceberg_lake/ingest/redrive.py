"""Dead letters inspected and re-driven: `lake dead-letters list|replay`.

`list_dead_letters` reads `bronze.dead_letters` (filtered by target table and time) and marks
those already re-driven. `redrive` decodes each stored dead letter again, from its original
bytes and subject, with today's codec (today's live schema and declared rules), through the same
decoder a writer would use (the table's own, Gold's, or schema inference for `unrouted`), and
appends the ones that now pass to their table.

Exactly once: a dead letter is named by `(stream, stream_seq, event_index)`. The ids re-driven
into a table are recorded in its property `lake.redriven.<stream>` in the SAME transaction as the
append (and in the snapshot summary, for the audit trail); a replay skips every id recorded in
any table, and a commit that lost a race re-reads the property before retrying. Replays hold
the catalog's migration lock while committing, so two of them never interleave. A dead letter
whose events do not all pass stays where it is (nothing partial); so do dead letters sharing an id
(events of one message stored before migration 0002 added `event_index`) until all of them
pass. The quarantine table itself is never changed: its rows are the history of what was
rejected and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression
from pyiceberg.table import Table

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine.filters import eq, ge
from iceberg_lake.exceptions import LakeError, MigrationError
from iceberg_lake.ingest.decode import TableCodec, codec_for, conform
from iceberg_lake.ingest.routing import (
    UNROUTED,
    BronzeDecoder,
    Decoder,
    GoldDecoder,
    InferredDecoder,
)
from iceberg_lake.schema.migrations import MigrationLedger
from iceberg_lake.tables import BRONZE, DEAD_LETTERS_TABLE, GOLD, TableDefinition

log = logging.getLogger(__name__)

#: Attempts of one re-drive commit that keeps losing to concurrent commits.
COMMIT_ATTEMPTS = 10
#: How long a replay waits for another replay (or a migration) to finish.
LOCK_TIMEOUT_SECONDS = 120.0


# ---- id sets ------------------------------------------------------------------------------------


def encode_ids(ids: Iterable[tuple[int, int | None]]) -> str:
    """`(seq, event)` ids as `12-15,20,31.0` (ranges of whole messages; `seq.event` for events)."""
    whole = sorted({s for s, e in ids if e is None})
    events = sorted({(s, e) for s, e in ids if e is not None})
    parts: list[str] = []
    i = 0
    while i < len(whole):
        j = i
        while j + 1 < len(whole) and whole[j + 1] == whole[j] + 1:
            j += 1
        parts.append(str(whole[i]) if i == j else f"{whole[i]}-{whole[j]}")
        i = j + 1
    parts.extend(f"{s}.{e}" for s, e in events)
    return ",".join(parts)


def decode_ids(text: str) -> set[tuple[int, int | None]]:
    """The ids of `encode_ids` text (unreadable tokens are ignored)."""
    out: set[tuple[int, int | None]] = set()
    for token in text.split(","):
        token = token.strip()
        try:
            if "." in token:
                s, e = token.split(".", 1)
                out.add((int(s), int(e)))
            elif "-" in token:
                a, b = token.split("-", 1)
                out.update((n, None) for n in range(int(a), int(b) + 1))
            elif token:
                out.add((int(token), None))
        except ValueError:
            continue
    return out


def redriven_ids(table: Table) -> set[tuple[str, int, int | None]]:
    """`(stream, seq, event)` of the dead letters re-driven into `table`."""
    out: set[tuple[str, int, int | None]] = set()
    for key, value in table.properties.items():
        if key.startswith(properties.REDRIVEN_PREFIX):
            stream = key[len(properties.REDRIVEN_PREFIX) :]
            out.update((stream, s, e) for s, e in decode_ids(value))
    return out


# ---- reading dead letters -----------------------------------------------------------------------


@dataclass
class StoredDeadLetter:
    """One row of `bronze.dead_letters`."""

    received_at: datetime
    target_table: str
    subject: str
    stream: str
    stream_seq: int
    event_index: int | None
    reason: str
    raw: bytes
    redriven: bool = False

    @property
    def id(self) -> tuple[str, int, int | None]:
        """`(stream, seq, event)`: unique per dead letter."""
        return (self.stream, self.stream_seq, self.event_index)

    @property
    def label(self) -> str:
        """`STREAM.seq` or `STREAM.seq.event`."""
        base = f"{self.stream}.{self.stream_seq}"
        return base if self.event_index is None else f"{base}.{self.event_index}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly row (`raw` as text, undecodable bytes escaped)."""
        return {
            "id": self.label,
            "received_at": self.received_at.isoformat(),
            "target_table": self.target_table,
            "subject": self.subject,
            "stream": self.stream,
            "stream_seq": self.stream_seq,
            "event_index": self.event_index,
            "reason": self.reason,
            "redriven": self.redriven,
            "bytes": len(self.raw),
            "raw": self.raw.decode("utf-8", errors="backslashreplace"),
        }


def _filter(table: str | None, since: datetime | None) -> BooleanExpression:
    expr: BooleanExpression = AlwaysTrue()
    if table is not None:
        expr = And(expr, eq("target_table", table))
    if since is not None:
        expr = And(expr, ge("received_at", since.astimezone(UTC).isoformat()))
    return expr


def _ingest_tables(catalog: LakeCatalog) -> list[str]:
    """Tables a dead letter can be re-driven into (Bronze market tables and Gold)."""
    return [d.identifier for d in catalog.registry.ingest_tables()]


def read_dead_letters(
    catalog: LakeCatalog, table: str | None = None, since: datetime | None = None
) -> list[StoredDeadLetter]:
    """Dead letters for `table` (a target table or `unrouted`) received at or after `since`,
    oldest first, each marked `redriven` if a replay stored it already.

    Raises:
        LakeError: the catalog cannot be read, or `table` is not a table writers feed.
    """
    if table is not None and table != UNROUTED and table not in _ingest_tables(catalog):
        known = ", ".join([*_ingest_tables(catalog), UNROUTED])
        raise LakeError(f"'{table}' is not a table the writers feed (known: {known})")
    with catalog_errors("reading dead letters"):
        quarantine = catalog.load_table(DEAD_LETTERS_TABLE)
        rows = quarantine.scan(row_filter=_filter(table, since)).to_arrow()
        done = _all_redriven(catalog)
    has_event = "event_index" in rows.column_names
    out = []
    for r in rows.to_pylist():
        letter = StoredDeadLetter(
            received_at=r["received_at"],
            target_table=r["target_table"],
            subject=r["subject"],
            stream=r.get("stream") or "",
            stream_seq=int(r.get("stream_seq") or 0),
            event_index=r.get("event_index") if has_event else None,
            reason=r["reason"],
            raw=bytes(r["raw"]),
        )
        letter.redriven = letter.id in done
        out.append(letter)
    out.sort(key=lambda d: (d.received_at, d.stream, d.stream_seq, d.event_index or -1))
    return out


def _all_redriven(catalog: LakeCatalog) -> set[tuple[str, int, int | None]]:
    done: set[tuple[str, int, int | None]] = set()
    for tid in _ingest_tables(catalog):
        try:
            done |= redriven_ids(catalog.load_table(tid))
        except LakeError:  # table not created (yet): nothing re-driven into it
            continue
    return done


# ---- re-driving ---------------------------------------------------------------------------------


@dataclass
class RedriveOutcome:
    """What happened to one dead letter."""

    letter: StoredDeadLetter
    status: str  # redriven | would-redrive | still-failing | already-redriven | from-file
    table: str | None = None
    rows: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly row."""
        return {
            "id": self.letter.label,
            "target_table": self.letter.target_table,
            "status": self.status,
            "table": self.table,
            "rows": self.rows,
            "reason": self.reason,
        }


@dataclass
class RedriveReport:
    """The outcome of one replay."""

    outcomes: list[RedriveOutcome] = field(default_factory=list)
    snapshots: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Dead letters with `status`."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def rows(self) -> int:
        """Rows appended (or that would be, in a dry run)."""
        return sum(o.rows for o in self.outcomes)


class Redriver:
    """Re-decodes dead letters with today's codecs and appends the ones that now pass.

    Args:
        catalog: the lake catalog.
    """

    def __init__(self, catalog: LakeCatalog) -> None:
        self.catalog = catalog
        self._codecs: dict[str, TableCodec] = {}
        self._decoders: dict[str, Decoder] = {}

    def _codec(self, tid: str) -> TableCodec:
        if tid not in self._codecs:
            definition = self.catalog.definition(tid)
            table = self.catalog.load_table(tid)
            self._codecs[tid] = codec_for(tid, table, definition.partition_key)
        return self._codecs[tid]

    def decoder(self, target: str) -> Decoder:
        """The decoder a writer uses for `target` (a table, or `unrouted`: schema inference)."""
        if target not in self._decoders:
            if target == UNROUTED:
                bronze = [d for d in self.catalog.registry.ingest_tables() if d.namespace == BRONZE]
                codecs = {d.schema_name: self._codec(d.identifier) for d in bronze}
                self._decoders[target] = InferredDecoder(codecs, set())
            elif target.startswith(GOLD + "."):
                self._decoders[target] = GoldDecoder(self._codec(target))
            else:
                self._decoders[target] = BronzeDecoder(self._codec(target))
        return self._decoders[target]

    def try_decode(self, letter: StoredDeadLetter) -> tuple[dict[str, pa.Table], str]:
        """Decode one dead letter; (rows per table, "") if all of it passes, else ({}, reason)."""
        try:
            decoder = self.decoder(letter.target_table)
        except LakeError as exc:
            return {}, str(exc)
        recv_ns = int(letter.received_at.timestamp() * 1_000_000) * 1000
        routed = decoder.decode([letter.raw], [letter.subject], recv_ns)
        if routed.rejected:
            return {}, routed.rejected[0][2]
        if routed.rejected_events:
            return {}, f"event {routed.rejected_events[0][1]}: {routed.rejected_events[0][3]}"
        if routed.skipped:
            return {}, "subject now has its own consumer"
        tables = {t: b.table for t, b in routed.tables.items() if b.table.num_rows}
        if not tables:
            return {}, "no rows"
        return tables, ""

    def run(
        self, table: str | None = None, since: datetime | None = None, dry_run: bool = False
    ) -> RedriveReport:
        """Re-drive the dead letters of `table` (default all) received since `since`.

        Returns:
            One outcome per dead letter read.

        Raises:
            LakeError: the catalog cannot be read or a commit keeps failing.
        """
        report = RedriveReport()
        letters = read_dead_letters(self.catalog, table, since)
        decoded = {
            i: self.try_decode(letter)
            for i, letter in enumerate(letters)
            if not letter.redriven and not _from_file(letter)
        }
        # Rows sharing an id: rejected events of one message stored before migration 0002 added
        # `event_index` (all null). Their id is recorded once, so they are re-driven together
        # or not at all: re-driving some now would mark the others done before they pass.
        failing_ids = {letters[i].id for i, (tables, _) in decoded.items() if not tables}
        todo: dict[str, list[tuple[StoredDeadLetter, pa.Table]]] = {}
        for i, letter in enumerate(letters):
            if letter.redriven:
                report.outcomes.append(RedriveOutcome(letter, "already-redriven"))
                continue
            if _from_file(letter):
                report.outcomes.append(RedriveOutcome(letter, "from-file", reason=FROM_FILE))
                continue
            tables, reason = decoded[i]
            if tables and letter.id in failing_ids:
                tables, reason = (
                    {},
                    (
                        f"shares its id {letter.label} with a dead letter that still fails (events"
                        " of one message stored before `lake migrate up` added event_index);"
                        " re-driven together once all of them pass"
                    ),
                )
            if not tables:
                report.outcomes.append(RedriveOutcome(letter, "still-failing", reason=reason))
                continue
            status = "would-redrive" if dry_run else "redriven"
            for tid, rows in tables.items():
                todo.setdefault(tid, []).append((letter, rows))
                report.outcomes.append(RedriveOutcome(letter, status, tid, rows.num_rows))
        if dry_run or not todo:
            return report
        with self._lock():
            for tid, items in todo.items():
                snapshot, skipped = self._commit(tid, items)
                if snapshot is not None:
                    report.snapshots[tid] = snapshot
                for o in report.outcomes:
                    if o.table == tid and o.letter.id in skipped:
                        o.status, o.rows = "already-redriven", 0
        return report

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize replays (and migrations) on this catalog.

        A replay commit that loses a race is rebased and re-applied by pyiceberg with the ids it
        read before: two replays of the same dead letters would both append them. Holding the
        catalog's migration lock around the commits rules that out (a migration changing a
        schema under a replay's decoded rows would fail its append anyway). Writers do not take
        it: they never touch the re-drive property.
        """
        settings = self.catalog.settings
        ledger = MigrationLedger(settings.catalog_uri, settings.catalog_name)
        try:
            with ledger.lock(LOCK_TIMEOUT_SECONDS):
                yield
        except MigrationError as exc:
            raise LakeError(
                "another `lake dead-letters replay` or `lake migrate up` is running; "
                f"try again when it has finished ({exc})"
            ) from None
        finally:
            ledger.close()

    def _commit(
        self, tid: str, items: list[tuple[StoredDeadLetter, pa.Table]]
    ) -> tuple[int | None, set[tuple[str, int, int | None]]]:
        """Append the rows of `items` and record their ids, in one transaction.

        Returns:
            The new snapshot id (None if nothing was left to append) and the ids skipped
            because a concurrent replay stored them first.
        """
        skipped: set[tuple[str, int, int | None]] = set()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            with catalog_errors(f"re-driving dead letters into {tid}"):
                table = self.catalog.load_table(tid)
                done = redriven_ids(table)
                fresh = [(d, rows) for d, rows in items if d.id not in done]
                skipped = {d.id for d, _ in items if d.id in done}
                if not fresh:
                    return None, skipped
                rows = _prepare(table, self.catalog.definition(tid), [r for _, r in fresh])
                by_stream: dict[str, set[tuple[int, int | None]]] = {}
                for s, seq, e in done | {d.id for d, _ in fresh}:
                    by_stream.setdefault(s, set()).add((seq, e))
                updates = {
                    f"{properties.REDRIVEN_PREFIX}{s}": encode_ids(ids)
                    for s, ids in by_stream.items()
                    if any(d.stream == s for d, _ in fresh)
                }
                summary = {
                    properties.LAKE_OPERATION: properties.REDRIVE,
                    properties.EVENT_COUNT: str(rows.num_rows),
                    properties.REDRIVEN_IDS: _summary_ids([d.id for d, _ in fresh]),
                }
                try:
                    with table.transaction() as tx:
                        tx.set_properties(updates)
                        tx.append(rows, snapshot_properties=summary)
                except CommitFailedException as exc:
                    # A writer or another replay committed first: re-read the ids and retry.
                    log.info(
                        "re-drive commit to %s lost a race (attempt %d): %s", tid, attempt, exc
                    )
                    time.sleep(min(2.0, 0.05 * 2**attempt))
                    continue
                snapshot = table.current_snapshot()
                return (snapshot.snapshot_id if snapshot else None), skipped
        raise LakeError(f"re-driving dead letters into {tid}: {COMMIT_ATTEMPTS} commits conflicted")


#: Why `lake dead-letters replay` leaves a row of a loaded file alone.
FROM_FILE = (
    "a row of a file loaded with `lake load`: its `raw` is the file's row, which only that load's "
    "format, mapping and scaling turn into table rows (the live codec would store it "
    "unconverted); fix the row and load it as a file of its own"
)


def _from_file(letter: StoredDeadLetter) -> bool:
    """A dead letter of `lake load` (`stream` = `file:<sha256>`), not of a stream message."""
    return letter.stream.startswith("file:")


def _summary_ids(ids: list[tuple[str, int, int | None]]) -> str:
    """`MARKET:12-15,20;SIGNALS:7.1`: the ids of one re-drive commit, per stream."""
    streams = sorted({s for s, _, _ in ids})
    return ";".join(f"{s}:{encode_ids([(q, e) for ss, q, e in ids if ss == s])}" for s in streams)


def _prepare(table: Table, definition: TableDefinition, chunks: list[pa.Table]) -> pa.Table:
    """Concatenate decoded rows, sort them in the declared order, cast to the live schema."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    target = schema_to_pyarrow(table.schema(), include_field_ids=False)
    rows = pa.concat_tables(chunks)
    keys = definition.sort_keys
    return conform(rows.sort_by(keys) if keys else rows, target)


def list_dead_letters(
    catalog: LakeCatalog, table: str | None = None, since: datetime | None = None
) -> list[StoredDeadLetter]:
    """Dead letters, oldest first (see `read_dead_letters`)."""
    return read_dead_letters(catalog, table, since)


def redrive(
    catalog: LakeCatalog,
    table: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
) -> RedriveReport:
    """Re-drive dead letters that pass today's codec (see `Redriver.run`)."""
    return Redriver(catalog).run(table, since, dry_run)
