"""Dead letters: rows for the `bronze.dead_letters` quarantine table and their NATS copies.

A rejected message keeps its original bytes, subject, stream and stream sequence and the reason.
It is published to `lake.dlq.<table>` (stream `LAKE_DLQ`, `Nats-Msg-Id` = `<stream>.<seq>` so a
retry after a crash does not publish it twice) and appended to the quarantine table in the same
flush as the valid rows around it, before the ack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

#: Arrow schema of the quarantine rows (nullability fixed when cast to the live table schema).
DEAD_LETTER_COLUMNS = (
    "received_at",
    "target_table",
    "subject",
    "stream",
    "stream_seq",
    "reason",
    "raw",
)


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

    def headers(self) -> dict[str, str]:
        """NATS headers of the published copy (reason truncated, one line)."""
        reason = " ".join(self.reason.split())[:500]
        return {
            "Nats-Msg-Id": f"{self.stream}.{self.stream_seq}",
            "Lake-Reason": reason,
            "Lake-Subject": self.subject,
            "Lake-Stream": self.stream,
            "Lake-Stream-Seq": str(self.stream_seq),
            "Lake-Target-Table": self.target_table,
        }


def dead_letter_table(letters: list[DeadLetter], schema: pa.Schema) -> pa.Table:
    """The quarantine rows of `letters`, sorted by time, in the live table's Arrow `schema`."""
    letters = sorted(letters, key=lambda d: (d.received_ns, d.stream_seq))
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
    }
    arrays = []
    for f in schema:
        if f.name in columns:
            arrays.append(columns[f.name].cast(f.type))
        else:
            arrays.append(pa.nulls(len(letters), f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def now_ns() -> int:
    """The current time in Unix nanoseconds."""
    return time.time_ns()
