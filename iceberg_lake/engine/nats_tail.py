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

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = [
    "FOLLOW_HEARTBEAT_SECONDS",
    "TailFollower",
    "TailMessage",
    "last_subject_msg",
    "last_subject_seq",
    "read_tail",
    "removed_range",
    "stream_first_seq",
]

#: Seconds the server keeps an ephemeral consumer after its subscriber went away.
INACTIVE_THRESHOLD_SECONDS = 5.0
#: Seconds to wait for the next message of a range known to exist before giving up.
STALL_SECONDS = 10.0
#: Idle heartbeat of a `TailFollower`'s consumer: nats-py recreates an ordered consumer (from
#: the last sequence it delivered + 1) after two missed heartbeats, so a follower whose
#: consumer the server lost (restart, deletion) resumes within 2-4 s instead of 10-20 s.
FOLLOW_HEARTBEAT_SECONDS = 1.0


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


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(stream sequence, timestamp ns, pending) from a JetStream delivery's reply subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`, or with a domain
    `$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>...`.
    Parsed here rather than through `msg.metadata`, which costs more than the rest of the read.
    """
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[7]), int(t[8])
    return int(t[7]), int(t[9]), int(t[10])


def _message(msg: Any) -> tuple[TailMessage, int]:
    seq, ts_ns, pending = _ack_fields(msg.reply)
    return TailMessage(seq, msg.subject, msg.data, ts_ns), pending


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


async def stream_first_seq(js: JetStreamContext, stream: str) -> int:
    """The stream's first stored sequence: everything below it was removed (limits or purge).

    JetStream keeps no record of what it removed, only where the stream now starts.
    """
    info = await js.stream_info(stream)
    return int(info.state.first_seq or 0)


def removed_range(after_seq: int, first_seq: int) -> tuple[int, int] | None:
    """The sequences after `after_seq` that the stream no longer holds, or None.

    `first_seq` is the stream's first stored sequence, taken AFTER reading from `after_seq` on
    (it only grows, so a message removed before it could be read lies below it).
    """
    return (after_seq + 1, first_seq - 1) if first_seq - 1 > after_seq else None


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


async def _subscribe(
    js: JetStreamContext,
    stream: str,
    subject: str,
    start_seq: int,
    cb: Any,
    idle_heartbeat: float | None = None,
) -> Any:
    from nats.js.api import ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(opt_start_seq=max(1, start_seq))
    # A callback subscription: no per-message timer (`next_msg` costs ~100 µs a message).
    return await js.subscribe(
        subject,
        stream=stream,
        cb=cb,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=config,
        idle_heartbeat=idle_heartbeat,
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
    from iceberg_lake.exceptions import TransientError

    out: list[TailMessage] = []
    if upto_seq <= after_seq:
        return out
    done = asyncio.Event()
    progress = [time.monotonic()]

    async def on_message(msg: Any) -> None:
        if done.is_set():
            return
        m, pending = _message(msg)
        progress[0] = time.monotonic()
        if m.seq > upto_seq:
            done.set()
            return
        if m.seq > after_seq:
            out.append(m)
        if m.seq >= upto_seq or pending == 0:
            done.set()

    sub = await _subscribe(js, stream, subject, after_seq + 1, on_message)
    try:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)
            if not done.is_set() and time.monotonic() - progress[0] > STALL_SECONDS:
                raise TransientError(
                    f"reading {subject} from {stream} stalled after seq "
                    f"{out[-1].seq if out else after_seq} (wanted up to {upto_seq})"
                )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


class TailFollower:
    """Follows `subject` from a sequence on: each `poll` returns what arrived since the last one.

    `last_seq` is the last sequence received (buffered for the next `poll` or returned). If the
    server loses the consumer, nats-py recreates it from `last_seq + 1` after two missed idle
    heartbeats (`FOLLOW_HEARTBEAT_SECONDS`); messages the stream removed meanwhile are skipped
    without notice, so a reader checks the stream's first sequence against `last_seq`.

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
        self._arrived: list[TailMessage] = []
        self._event = asyncio.Event()

    async def _on_message(self, msg: Any) -> None:
        m, _ = _message(msg)
        if m.seq > self.last_seq:  # an ordered consumer never repeats; belt and braces
            self.last_seq = m.seq
            self._arrived.append(m)
            self._event.set()

    async def poll(self, timeout: float) -> list[TailMessage]:
        """Messages that arrived, waiting at most `timeout` seconds for the first one."""
        if self.sub is None:
            self.sub = await _subscribe(
                self.js,
                self.stream,
                self.subject,
                self.last_seq + 1,
                self._on_message,
                idle_heartbeat=FOLLOW_HEARTBEAT_SECONDS,
            )
        if not self._arrived:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        return self.drain()

    def drain(self) -> list[TailMessage]:
        """Messages that arrived since the last `poll`/`drain`, without waiting or subscribing."""
        out, self._arrived = self._arrived, []
        self._event.clear()
        return out

    async def close(self) -> None:
        """Unsubscribe (the server removes the ephemeral consumer)."""
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
