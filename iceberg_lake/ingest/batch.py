"""The micro-batch a writer buffers between two flushes."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from iceberg_lake.ingest.dead_letters import DeadLetter


class RawMessage(NamedTuple):
    """A message's body and subject: what it is decoded from (`Fetched.messages`)."""

    data: bytes
    subject: str


@dataclass
class Fetched:
    """Raw messages of one fetch, kept until the commit while a schema change could decode
    them differently: all of them when rows dropped fields a table lacked (a migration may add
    them), or only the messages rejected for a table (a widen may accept their values).

    Kept compact (review17c: the client's message objects took ~5x the bodies' memory): the
    bodies joined in one buffer, their end offsets, the subjects (interned).

    Attributes:
        data: the bodies, one after the other.
        ends: the end offset of each body in `data`.
        subjects: each message's subject.
        seqs: their stream sequences.
        recv_ns: when the fetch was received.
        schema_ids: table -> the schema id its rows were decoded with (the tables whose
            fields were dropped, or which rejected messages).
    """

    data: bytes
    ends: np.ndarray
    subjects: list[str]
    seqs: list[int]
    recv_ns: int
    schema_ids: dict[str, int]

    @classmethod
    def of(
        cls, msgs: list[Any], seqs: list[int], recv_ns: int, schema_ids: dict[str, int]
    ) -> Fetched:
        """Keep `msgs` (anything with `.data` and `.subject`) compactly."""
        bodies = [m.data for m in msgs]
        ends = np.cumsum([len(b) for b in bodies], dtype=np.int64)
        subjects = [sys.intern(m.subject) for m in msgs]
        return cls(b"".join(bodies), ends, subjects, list(seqs), recv_ns, schema_ids)

    def messages(self) -> list[RawMessage]:
        """The messages again, in stream order."""
        starts = [0, *self.ends[:-1].tolist()]
        return [
            RawMessage(self.data[a:b], subject)
            for a, b, subject in zip(starts, self.ends.tolist(), self.subjects, strict=True)
        ]


@dataclass
class Part:
    """One fetch's share of a batch: rows per table, their stream sequences, dead letters.

    Attributes:
        tables: table -> (rows, stream sequence of each row's message).
        dead: rejected messages and events.
        fetched: the raw messages, when rows dropped fields (else None: nothing kept).
        rejects: without `fetched`, the messages rejected (whole or some of their events) for
            a table the writer decodes for (else None).
        unknown: (table, field) -> events whose field was dropped (counted once committed).
    """

    tables: dict[str, tuple[pa.Table, np.ndarray]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    fetched: Fetched | None = None
    rejects: Fetched | None = None
    unknown: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class MicroBatch:
    """Rows per table, dead letters and the stream position of everything fetched since a flush.

    Attributes:
        tables: table → Arrow chunks (one per fetch).
        seqs: table → the stream sequence of each row's message, chunk by chunk (used to
            dead-letter rows the store refuses).
        dead: rejected messages.
        parts: what each fetch added (`tables`, `seqs` and `dead` are their concatenation
            until a commit isolates refused rows).
        dropped_fields: (table, schema id) of rows decoded with fields that schema lacked
            (dropped), and of messages rejected in the same fetches, over the parts with
            `fetched` (kept as they are added: checked at every fetch).
        rejected_under: (table, schema id) of messages rejected for that table when decoded
            with that schema, over the parts (`Part.rejects`).
        first_seq: first stream sequence in the batch (0 if none).
        last_seq: highest stream sequence in the batch (the flush's watermark).
        last_msg: the message carrying `last_seq`; acking it acks the batch (AckAll consumer).
        events: rows buffered.
        messages: messages fetched (stored, rejected or skipped).
        started: monotonic time of the first message.
    """

    tables: dict[str, list[pa.Table]] = field(default_factory=dict)
    seqs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    dropped_fields: set[tuple[str, int]] = field(default_factory=set)
    rejected_under: set[tuple[str, int]] = field(default_factory=set)
    first_seq: int = 0
    last_seq: int = 0
    last_msg: Any = None
    events: int = 0
    messages: int = 0
    started: float = 0.0

    def add_messages(self, count: int, first_seq: int, last_seq: int, last_msg: Any) -> None:
        """Record `count` fetched messages spanning `first_seq..last_seq`."""
        if self.messages == 0:
            self.started = time.monotonic()
            self.first_seq = first_seq
        self.messages += count
        if last_seq > self.last_seq:
            self.last_seq = last_seq
            self.last_msg = last_msg

    def add_part(self, part: Part) -> None:
        """Buffer one fetch's rows and dead letters."""
        self.parts.append(part)
        self._take(part)

    def add_rows(self, table: str, rows: pa.Table, seqs: np.ndarray | None = None) -> None:
        """Buffer validated rows for `table` as a part of their own (`seqs`: the stream
        sequence of each row's message; default: the batch's last)."""
        if seqs is None:
            seqs = np.full(rows.num_rows, self.last_seq, dtype=np.int64)
        self.add_part(Part(tables={table: (rows, seqs)}))

    def replace_parts(self, parts: list[Part]) -> None:
        """Buffer `parts` instead of the parts held (the same fetches, decoded again)."""
        self.tables, self.seqs, self.dead, self.events = {}, {}, [], 0
        self.dropped_fields, self.rejected_under = set(), set()
        self.parts = list(parts)
        for part in self.parts:
            self._take(part)

    def _take(self, part: Part) -> None:
        if part.fetched is not None:
            self.dropped_fields.update(part.fetched.schema_ids.items())
        if part.rejects is not None:
            self.rejected_under.update(part.rejects.schema_ids.items())
        for tid, (rows, seqs) in part.tables.items():
            if rows.num_rows:
                self.tables.setdefault(tid, []).append(rows)
                self.seqs.setdefault(tid, []).append(seqs)
                self.events += rows.num_rows
        self.dead.extend(part.dead)

    @property
    def schema_bound(self) -> set[tuple[str, int]]:
        """(table, schema id) of what a change of that table's schema may decode differently:
        rows that dropped fields, messages rejected."""
        return self.dropped_fields | self.rejected_under

    def age(self) -> float:
        """Seconds since the first message of the batch (0 when empty)."""
        return time.monotonic() - self.started if self.messages else 0.0
