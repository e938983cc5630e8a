"""Reading a JetStream subject's tail with an ephemeral ordered consumer (public nats-py APIs).

The live views and live replays (`iceberg_lake.timetravel.live`) read the messages a table has not
committed yet: everything on the table's subject after its committed watermark. They use an
*ephemeral ordered push consumer* (`js.subscribe(..., ordered_consumer=True)`): created per read,
no acks, memory storage, removed by the server once unsubscribed (inactive threshold). The
writers' durable consumers are never touched, so a reader cannot delay or reorder ingest.

`last_subject_seq` gives the stream sequence of the subject's newest message (one direct request
to the server), so a reader can decide the end of its range *before* subscribing and stop exactly
there, and skip the consumer entirely when nothing is beyond the watermark (the common case of a
query right after a commit).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = ["TailFollower", "TailMessage", "last_subject_msg", "last_subject_seq", "read_tail"]

#: Seconds the server keeps an ephemeral consumer after its subscriber went away.
INACTIVE_THRESHOLD_SECONDS = 5.0
#: Seconds to wait for the next message of a range known to exist before giving up.
STALL_SECONDS = 10.0


@dataclass(frozen=True)
class TailMessage:
    """One message of a subject's tail.

    Attributes:
        seq: its stream sequence.
        subject: its subject.
        data: its body, as published.
        ts_ns: when the stream stored it (Unix ns).
    """

    seq: int
    subject: str
    data: bytes
    ts_ns: int


def _message(msg: Any) -> TailMessage:
    meta = msg.metadata
    ts = meta.timestamp
    ts_ns = int(ts.timestamp() * 1e9) if ts is not None else time.time_ns()
    return TailMessage(int(meta.sequence.stream), msg.subject, msg.data, ts_ns)


async def last_subject_seq(js: JetStreamContext, stream: str, subject: str) -> int:
    """The stream sequence of the newest message on `subject` (0: none).

    `subject` may contain wildcards; then the stream's last sequence is returned (an upper
    bound: the reader stops at the first message beyond it or when nothing is pending).
    """
    from nats.js.errors import NotFoundError

    if "*" in subject or ">" in subject:
        info = await js.stream_info(stream)
        return int(info.state.last_seq or 0)
    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


async def last_subject_msg(js: JetStreamContext, stream: str, subject: str) -> TailMessage | None:
    """The newest message on `subject` (an exact subject), or None when there is none."""
    from nats.js.errors import NotFoundError

    try:
        msg = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    ts = getattr(msg, "time", None)
    ts_ns = int(ts.timestamp() * 1e9) if ts is not None else time.time_ns()
    return TailMessage(int(msg.seq or 0), msg.subject or subject, msg.data or b"", ts_ns)


async def _subscribe(js: JetStreamContext, stream: str, subject: str, start_seq: int) -> Any:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(opt_start_seq=max(1, start_seq))
    return await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=config,
        inactive_threshold=INACTIVE_THRESHOLD_SECONDS,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1024**3,
    )


async def read_tail(
    js: JetStreamContext, stream: str, subject: str, after_seq: int, upto_seq: int
) -> list[TailMessage]:
    """Messages on `subject` with `after_seq < seq <= upto_seq`, in stream order.

    Args:
        js: JetStream context.
        stream: the stream that captures `subject`.
        subject: the subject (filter of the ephemeral consumer).
        after_seq: the last sequence the caller already has (a table's watermark).
        upto_seq: the last sequence to read (from `last_subject_seq`, taken before).

    Returns:
        The messages. Fewer than stored if the stream's limits removed older ones.

    Raises:
        TransientError: the range stalled (no message for `STALL_SECONDS`).
    """
    from nats.errors import TimeoutError as NatsTimeout

    from iceberg_lake.exceptions import TransientError

    out: list[TailMessage] = []
    if upto_seq <= after_seq:
        return out
    sub = await _subscribe(js, stream, subject, after_seq + 1)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=STALL_SECONDS)
            except (TimeoutError, NatsTimeout):
                raise TransientError(
                    f"reading {subject} from {stream} stalled after seq "
                    f"{out[-1].seq if out else after_seq} (wanted up to {upto_seq})"
                ) from None
            m = _message(msg)
            if m.seq > upto_seq:
                break
            if m.seq > after_seq:
                out.append(m)
            if m.seq >= upto_seq or msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


class TailFollower:
    """Follows `subject` from a sequence on: each `poll` returns what arrived since the last one.

    Args:
        js: JetStream context.
        stream: the stream.
        subject: the subject.
        after_seq: deliver messages after this sequence.
    """

    def __init__(self, js: JetStreamContext, stream: str, subject: str, after_seq: int) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.last_seq = after_seq
        self.sub: Any = None

    async def poll(self, timeout: float, limit: int = 10_000) -> list[TailMessage]:
        """Messages that arrived, waiting at most `timeout` seconds for the first one."""
        from nats.errors import TimeoutError as NatsTimeout

        if self.sub is None:
            self.sub = await _subscribe(self.js, self.stream, self.subject, self.last_seq + 1)
        out: list[TailMessage] = []
        wait = timeout
        while len(out) < limit:
            try:
                msg = await self.sub.next_msg(timeout=max(wait, 0.001))
            except (TimeoutError, NatsTimeout):
                break
            m = _message(msg)
            if m.seq > self.last_seq:  # an ordered consumer never repeats; belt and braces
                self.last_seq = m.seq
                out.append(m)
            wait = 0.0  # take what is queued, do not wait for more
        return out

    async def close(self) -> None:
        """Unsubscribe (the server removes the ephemeral consumer)."""
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
