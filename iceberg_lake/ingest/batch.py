"""The micro-batch a writer buffers between two flushes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from iceberg_lake.ingest.dead_letters import DeadLetter


@dataclass
class MicroBatch:
    """Rows per table, dead letters and the stream position of everything fetched since a flush.

    Attributes:
        tables: table → Arrow chunks (one per fetch).
        seqs: table → the stream sequence of each row's message, chunk by chunk (used to
            dead-letter rows the store refuses).
        dead: rejected messages.
        first_seq: first stream sequence in the batch (0 if none).
        last_seq: highest stream sequence in the batch (the flush's watermark).
        last_msg: the message carrying `last_seq`; acking it acks the batch (AckAll consumer).
        events: rows buffered.
        messages: messages fetched (stored, rejected or skipped).
        started: monotonic time of the first message.
        dropped_fields: (table, schema id) of rows decoded with fields that schema lacked
            (dropped): a schema change before the commit has the batch re-read.
    """

    tables: dict[str, list[pa.Table]] = field(default_factory=dict)
    seqs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    first_seq: int = 0
    last_seq: int = 0
    last_msg: Any = None
    events: int = 0
    messages: int = 0
    started: float = 0.0
    dropped_fields: set[tuple[str, int]] = field(default_factory=set)

    def add_messages(self, count: int, first_seq: int, last_seq: int, last_msg: Any) -> None:
        """Record `count` fetched messages spanning `first_seq..last_seq`."""
        if self.messages == 0:
            self.started = time.monotonic()
            self.first_seq = first_seq
        self.messages += count
        if last_seq > self.last_seq:
            self.last_seq = last_seq
            self.last_msg = last_msg

    def add_rows(self, table: str, rows: pa.Table, seqs: np.ndarray | None = None) -> None:
        """Buffer validated rows for `table` (`seqs`: stream sequence per row, optional)."""
        if rows.num_rows:
            self.tables.setdefault(table, []).append(rows)
            if seqs is None:
                seqs = np.full(rows.num_rows, self.last_seq, dtype=np.int64)
            self.seqs.setdefault(table, []).append(seqs)
            self.events += rows.num_rows

    def age(self) -> float:
        """Seconds since the first message of the batch (0 when empty)."""
        return time.monotonic() - self.started if self.messages else 0.0
