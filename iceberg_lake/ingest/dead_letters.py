"""Dead letters: rows for the `bronze.dead_letters` quarantine table and their NATS copies.

A rejected message keeps its original bytes, subject, stream and stream sequence and the reason.
A rejected event of a batched message (JSON array or NDJSON) keeps that event's bytes and its
position (`event_index`); the other events of the message are stored. Each is published to
`lake.dlq.<table>` (stream `LAKE_DLQ`, `Nats-Msg-Id` = `<stream>.<seq>[.<event>]` so a retry
after a crash does not publish it twice) and appended to the quarantine table in the same flush
as the valid rows around it, before the ack.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from iceberg_lake.exceptions import MigrationError

if TYPE_CHECKING:
    from iceberg_lake.ingest.routing import RoutedBatch


@dataclass(frozen=True)
class DeadLetter:
    """One rejected message."""

    received_ns: int
    target_table: str
    subject: str
    stream: str
    stream_seq: int
    reason: str
    raw: bytes
    event_index: int | None = None

    @property
    def key(self) -> str:
        """`<stream>.<seq>` or `<stream>.<seq>.<event>`: unique per rejected message/event."""
        base = f"{self.stream}.{self.stream_seq}"
        return base if self.event_index is None else f"{base}.{self.event_index}"

    def headers(self) -> dict[str, str]:
        """NATS headers of the published copy (reason truncated, one line)."""
        reason = " ".join(self.reason.split())[:500]
        extra = {} if self.event_index is None else {"Lake-Event-Index": str(self.event_index)}
        return {
            **extra,
            "Nats-Msg-Id": self.key,
            "Lake-Reason": reason,
            "Lake-Subject": self.subject,
            "Lake-Stream": self.stream,
            "Lake-Stream-Seq": str(self.stream_seq),
            "Lake-Target-Table": self.target_table,
        }


def dead_letter_table(letters: list[DeadLetter], schema: pa.Schema) -> pa.Table:
    """The quarantine rows of `letters`, sorted by time, in the live table's Arrow `schema`.

    Raises:
        MigrationError: a letter is one event of a batched message and the table has no
            `event_index` column (a lake upgraded without `lake migrate up`). Stored without
            it, two rejected events of one message would share the id `(stream, stream_seq)`
            that `lake dead-letters replay` re-drives exactly once, so the second would never
            be re-driven. A writer treats this as retryable: it keeps the batch unacknowledged
            and commits it once the migration has added the column.
    """
    if "event_index" not in schema.names:
        events = [d for d in letters if d.event_index is not None]
        if events:
            raise MigrationError(
                f"bronze.dead_letters has no event_index column, so the {len(events)} rejected"
                f" event(s) of batched messages (first {events[0].key}) cannot be told apart:"
                " run `lake migrate up` (migration 0002_dead_letters_event_index)"
            )
    letters = sorted(
        letters,
        key=lambda d: (d.received_ns, d.stream_seq, -1 if d.event_index is None else d.event_index),
    )
    columns = {
        "received_at": pa.array([d.received_ns // 1000 for d in letters], pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
        "target_table": pa.array([d.target_table for d in letters], pa.string()),
        "subject": pa.array([d.subject for d in letters], pa.string()),
        "stream": pa.array([d.stream for d in letters], pa.string()),
        "stream_seq": pa.array([d.stream_seq for d in letters], pa.int64()),
        "reason": pa.array([d.reason for d in letters], pa.string()),
        "raw": pa.array([d.raw for d in letters], pa.binary()),
        "event_index": pa.array([d.event_index for d in letters], pa.int32()),
    }
    arrays = []
    for f in schema:
        if f.name in columns:
            arrays.append(columns[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(len(letters), f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def from_routed(
    routed: RoutedBatch,
    msgs: Sequence[Any],
    seqs: Sequence[int],
    stream: str,
    recv_ns: int,
    floor: int = 0,
) -> list[DeadLetter]:
    """The dead letters of a decoded fetch: rejected messages and rejected events of batches.

    Args:
        routed: the decoder's output for the fetch.
        msgs: the fetched messages (`.subject`, `.data`), indexed like the decoder's input.
        seqs: their stream sequences.
        stream: the stream name.
        recv_ns: when the fetch was received.
        floor: the quarantine table's watermark: letters at or below it were stored before.

    Returns:
        The dead letters, in message (and event) order.
    """
    out: list[DeadLetter] = []
    for i, target, reason in routed.rejected:
        if seqs[i] > floor:
            m = msgs[i]
            out.append(DeadLetter(recv_ns, target, m.subject, stream, seqs[i], reason, m.data))
    for i, event, target, reason, raw in routed.rejected_events:
        if seqs[i] > floor:
            m = msgs[i]
            out.append(DeadLetter(recv_ns, target, m.subject, stream, seqs[i], reason, raw, event))
    out.sort(key=lambda d: (d.stream_seq, -1 if d.event_index is None else d.event_index))
    return out


def now_ns() -> int:
    """The current time in Unix nanoseconds."""
    return time.time_ns()
