"""Reading a JetStream subject's tail with an ephemeral ordered consumer.

Public nats-py APIs, except `_stream_info`: `JetStreamContext._api_request`, `_prefix` and
`_timeout` (listed in `iceberg_lake/engine/__init__.py`, guarded in
`tests/engine/test_nats_guard.py`).

The live views and live replays (`iceberg_lake.timetravel.live`) read the messages a table has not
committed yet: everything on the table's subject after its committed watermark. They use an
*ephemeral ordered push consumer* (`js.subscribe(..., ordered_consumer=True)`): created per read,
no acks, memory storage, removed by the server once unsubscribed (inactive threshold). The
writers' durable consumers are never touched, so a reader cannot delay or reorder ingest.

`last_subject_seq` gives the stream sequence of the subject's newest message (one direct request
to the server), so a reader can decide the end of its range *before* subscribing and stop exactly
there, and skip the consumer entirely when nothing is beyond the watermark (the common case of a
query right after a commit).

`TailFollower` also accounts for every stream sequence of its range (`check_followers`): the ones
it received, the *skips* between two received ones (messages on other subjects, or messages the
stream removed before the consumer reached them), and ranges shown to hold none of its subject.
A skipped sequence that the stream no longer holds is reported as removed unread; one it still
holds is another subject's (a stored message of the subject would have been delivered in order).

A follower buffers at most `BUFFER_MSGS` messages / `BUFFER_BYTES` bytes between two `poll`s:
when full it unsubscribes (pauses) and the next `poll` resubscribes from its position. nats-py
answers a callback subscription's flow control as soon as a message is *received* (and the
server's "consumer stalled" heartbeats unconditionally), so a callback that waited for room would
only move the backlog into nats-py's queue: pausing is what bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from iceberg_lake.engine.nats import bus_errors, created_id

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = [
    "BUFFER_BYTES",
    "BUFFER_MSGS",
    "FOLLOW_HEARTBEAT_SECONDS",
    "StreamState",
    "StreamStates",
    "TailFollower",
    "TailMessage",
    "check_followers",
    "last_subject_msg",
    "last_subject_seq",
    "nats_errors",
    "next_stored_seq",
    "read_tail",
    "removed_range",
    "skipped_runs",
    "stream_first_seq",
    "stream_state",
]

#: Seconds the server keeps an ephemeral consumer after its subscriber went away.
INACTIVE_THRESHOLD_SECONDS = 5.0
#: Seconds to wait for the next message of a range known to exist before giving up.
STALL_SECONDS = 10.0
#: Messages (and bytes) nats-py may hold for a subscription's callback; 0: no limit. Beyond a
#: limit nats-py drops deliveries after its ordered consumer counted them, so they would be lost
#: without notice (and the consumer stalls waiting for flow control). The callbacks here only
#: move messages to a list, so the queue stays short unless the loop is starved.
PENDING_MSGS_LIMIT = 0
PENDING_BYTES_LIMIT = 0
#: Idle heartbeat of a `TailFollower`'s consumer: nats-py recreates an ordered consumer (from
#: the last sequence it delivered + 1) after two missed heartbeats, so a follower whose
#: consumer the server lost (restart, deletion) resumes within 2-4 s instead of 10-20 s.
FOLLOW_HEARTBEAT_SECONDS = 1.0
#: A `TailFollower` holds at most this many messages (and bytes; one larger message is taken
#: alone) between two `poll`s; when full it pauses its consumer (see the module docstring).
BUFFER_MSGS = 20_000
BUFFER_BYTES = 16 * 1024 * 1024
#: Seconds for a `STREAM.INFO` request that lists the stream's removed sequences (a list of a
#: million sequences is ~8 MB of JSON).
DETAILS_TIMEOUT_SECONDS = 30.0


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """Map nats-py's errors (timeouts, no responders, a closed connection, API errors) to a
    `TransientError` with one readable line (`engine.nats.bus_errors`: a request the server
    refuses as malformed is a plain `LakeError`); `LakeError`s and bugs pass through."""
    with bus_errors(what):
        yield


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


def _consumer_seq(reply: str) -> int:
    """The consumer sequence of a JetStream delivery (its reply subject; see `_ack_fields`)."""
    t = reply.split(".")
    return int(t[6]) if len(t) == 9 else int(t[8])


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


@dataclass(frozen=True)
class StreamState:
    """Which sequences a stream still holds, at one moment.

    Attributes:
        first_seq: its first stored sequence (everything below was removed: limits, purges).
        last_seq: its last sequence (the newest message ever stored).
        deleted: sequences between the two that were removed (message deletes, purges of one
            subject, per-subject limits), ascending (int64).
        created: the stream's creation time (`engine.nats.created_id`; "" if not reported): a
            stream deleted and created again has another one.
    """

    first_seq: int
    last_seq: int
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    created: str = ""

    def removed_runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The runs of consecutive sequences within `lo..hi` the stream no longer holds."""
        out: list[tuple[int, int]] = []
        if hi < lo:
            return out
        if self.first_seq > lo:
            out.append((lo, min(hi, self.first_seq - 1)))
        start = max(lo, self.first_seq)
        deleted = self.deleted
        i, j = int(np.searchsorted(deleted, start)), int(np.searchsorted(deleted, hi, "right"))
        if i >= j:
            return out
        seqs = deleted[i:j]
        breaks = np.flatnonzero(np.diff(seqs) != 1)
        starts = [int(seqs[0]), *(int(seqs[b + 1]) for b in breaks)]
        ends = [*(int(seqs[b]) for b in breaks), int(seqs[-1])]
        for a, b in zip(starts, ends, strict=True):
            if out and out[-1][1] == a - 1:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return out

    def removed_in(self, runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """`removed_runs` of each of `runs` (ascending, disjoint), concatenated: one vectorized
        pass (a follower of an interleaved stream has a skip per message received)."""
        if not runs or (not self.deleted.size and runs[0][0] >= self.first_seq):
            return []  # the common case: nothing removed inside the stream, none below it
        arr = np.asarray(runs, dtype=np.int64).reshape(-1, 2)
        lo, hi = arr[:, 0], arr[:, 1]
        hit = lo < self.first_seq  # (partly) below the first stored sequence
        if self.deleted.size:
            start = np.maximum(lo, self.first_seq)
            i = np.searchsorted(self.deleted, start)
            j = np.searchsorted(self.deleted, hi, "right")
            hit |= i < j
        out: list[tuple[int, int]] = []
        for k in np.flatnonzero(hit):
            out.extend(self.removed_runs(int(lo[k]), int(hi[k])))
        return out


def skipped_runs(after: int, seqs: Sequence[int] | np.ndarray, upto: int) -> list[tuple[int, int]]:
    """The runs of sequences in `after+1..upto` not in `seqs` (ascending, all in that range)."""
    points = np.concatenate(
        [np.array([after], dtype=np.int64), np.asarray(seqs, dtype=np.int64), [upto + 1]]
    )
    prev = np.maximum.accumulate(points)[:-1]  # the highest sequence seen before each point
    nxt = points[1:]
    gap = nxt > prev + 1
    lo, hi = prev[gap] + 1, np.minimum(nxt[gap], upto + 1) - 1
    return [(int(a), int(b)) for a, b in zip(lo, hi, strict=True) if a <= b]


async def _stream_info(js: JetStreamContext, stream: str, details: bool) -> dict[str, Any]:
    """The reply of `$JS.API.STREAM.INFO.<stream>` (`state`, with `deleted_details` if asked;
    `created`).

    nats-py's `stream_info` cannot ask for `deleted_details`; the request is the same one
    through the context's `_api_request`, `_prefix` and `_timeout` (guarded in
    tests/engine/test_nats_guard.py and tests/timetravel/test_live.py).
    """
    body = json.dumps({"deleted_details": True}).encode() if details else b""
    timeout = max(js._timeout, DETAILS_TIMEOUT_SECONDS) if details else js._timeout
    with nats_errors(f"reading the state of stream {stream}"):
        resp: dict[str, Any] = await js._api_request(
            f"{js._prefix}.STREAM.INFO.{stream}", body, timeout=timeout
        )
    return resp


def _state_of(resp: dict[str, Any]) -> StreamState:
    state: dict[str, Any] = resp.get("state") or {}
    deleted = np.sort(np.asarray(state.get("deleted") or (), dtype=np.int64))
    return StreamState(
        int(state.get("first_seq") or 0),
        int(state.get("last_seq") or 0),
        deleted,
        created_id(resp.get("created")),
    )


async def stream_state(js: JetStreamContext, stream: str) -> StreamState:
    """The stream's first and last sequence and the sequences removed between them (one
    request that lists them all; `StreamStates` re-lists only when they changed)."""
    return _state_of(await _stream_info(js, stream, details=True))


class StreamStates:
    """Streams' states for a reader that asks again and again (every check of a live replay,
    every live query of a `Lake`): the list of removed sequences is fetched only when it changed.

    Each `get` costs one `STREAM.INFO` without the list (first, last, `num_deleted`). The list
    known from before, less what is now below the first sequence, is still exact when its size
    is `num_deleted` (a removed sequence stays removed; new removals would add to the count);
    else, and when nothing is known, the list is fetched (`deleted_details`). A stream without
    removed sequences between first and last (the common case: limits remove from the front)
    never fetches it. A stream deleted and created again (its `created` time changed) starts
    over: the list known is the old stream's.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[str | None, StreamState]] = {}
        #: Requests that listed the removed sequences (for tests and benchmarks).
        self.detail_fetches = 0

    async def get(self, js: JetStreamContext, stream: str) -> StreamState:
        """The stream's state now."""
        resp = await _stream_info(js, stream, details=False)
        state: dict[str, Any] = resp.get("state") or {}
        created = resp.get("created")
        first, last = int(state.get("first_seq") or 0), int(state.get("last_seq") or 0)
        count = int(state.get("num_deleted") or 0)
        created_known, known = self._known.get(stream, (None, None))
        if created_known != created:
            known = None  # another stream of the same name
        got: StreamState | None = None
        if count == 0:
            got = StreamState(first, last, created=created_id(created))
        elif known is not None and first >= known.first_seq and last >= known.last_seq:
            kept = known.deleted[np.searchsorted(known.deleted, first) :]
            if kept.size == count:
                got = StreamState(first, last, kept, created_id(created))
        if got is None:
            self.detail_fetches += 1
            resp = await _stream_info(js, stream, details=True)
            got = _state_of(resp)
            created = resp.get("created")
        self._known[stream] = (created, got)
        return got


async def next_stored_seq(
    js: JetStreamContext, stream: str, subject: str, after: int
) -> int | None:
    """The sequence of the first message on `subject` (wildcards allowed) stored after `after`."""
    from nats.js.errors import NotFoundError

    try:
        msg = await js.get_msg(stream, seq=after + 1, subject=subject, next=True)
    except NotFoundError:
        return None
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
        pending_msgs_limit=PENDING_MSGS_LIMIT,
        pending_bytes_limit=PENDING_BYTES_LIMIT,
    )


async def read_tail(
    js: JetStreamContext,
    stream: str,
    subject: str,
    after_seq: int,
    upto_seq: int,
    *,
    on_chunk: Callable[[list[TailMessage]], None] | None = None,
    chunk: int = 20_000,
) -> list[TailMessage]:
    """Messages on `subject` with `after_seq < seq <= upto_seq`, in stream order.

    Args:
        js: JetStream context.
        stream: the stream that captures `subject`.
        subject: the subject (filter of the ephemeral consumer).
        after_seq: the last sequence the caller already has (a table's watermark).
        upto_seq: the last sequence to read (from `last_subject_seq`, taken before).
        on_chunk: hand the messages over `chunk` at a time, in order, instead of returning
            them: a long tail is then never held whole (its decoded rows are much smaller).
        chunk: messages per `on_chunk` call.

    Returns:
        The messages (none with `on_chunk`). Fewer than stored if the stream's limits removed
        older ones.

    Raises:
        TransientError: the range stalled (no message for `STALL_SECONDS`), or nats-py dropped
            deliveries (its pending limits: the caller was too slow).
    """
    from iceberg_lake.exceptions import TransientError

    out: list[TailMessage] = []
    if upto_seq <= after_seq:
        return out
    done = asyncio.Event()
    progress = [time.monotonic()]

    dropped = [False]
    dseq = [0]
    last = [after_seq]  # the last sequence handed to `on_chunk`
    failed: list[Exception] = []  # what `on_chunk` raised

    async def on_message(msg: Any) -> None:
        if done.is_set():
            return
        n = _consumer_seq(msg.reply)
        if n != dseq[0] + 1 and n != 1:  # nats-py dropped deliveries (a slow consumer)
            dropped[0] = True
            done.set()
            return
        dseq[0] = n
        m, pending = _message(msg)
        progress[0] = time.monotonic()
        if m.seq > upto_seq:
            done.set()
            return
        if m.seq > after_seq:
            out.append(m)
            if on_chunk is not None and len(out) >= chunk:
                try:
                    hand_over()
                except Exception as exc:  # noqa: BLE001 - raised by `read_tail`, below
                    # nats-py would only log an error raised in its callback: the read ends.
                    failed.append(exc)
                    done.set()
                    return
        if m.seq >= upto_seq or pending == 0:
            done.set()

    def hand_over() -> None:
        assert on_chunk is not None
        taken = out[:]
        out.clear()
        last[0] = taken[-1].seq
        on_chunk(taken)
        progress[0] = time.monotonic()  # a long decode is not a stalled read

    sub = await _subscribe(js, stream, subject, after_seq + 1, on_message)
    try:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)
            if not done.is_set() and time.monotonic() - progress[0] > STALL_SECONDS:
                raise TransientError(
                    f"reading {subject} from {stream} stalled after seq "
                    f"{out[-1].seq if out else last[0]} (wanted up to {upto_seq})"
                )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if failed:
        raise failed[0]
    if dropped[0]:
        raise TransientError(
            f"reading {subject} from {stream}: the client dropped messages (slow consumer)"
        )
    if on_chunk is not None:
        if out:
            hand_over()
        return []
    return out


class TailFollower:
    """Follows `subject` from a sequence on: each `poll` returns what arrived since the last one.

    `last_seq` is the last sequence received (buffered for the next `poll` or returned). If the
    server loses the consumer, nats-py recreates it from `last_seq + 1` after two missed idle
    heartbeats (`FOLLOW_HEARTBEAT_SECONDS`); messages the stream removed meanwhile are skipped
    by the server without notice, like any it removed before the consumer reached them. Should
    nats-py drop deliveries (`PENDING_MSGS_LIMIT`), the consumer sequence jumps and `poll`
    fails rather than let them pass for skips.

    So the follower accounts for every sequence after `after`: `covered` is the sequence up to
    which each one was received, is in `skips` (a run between two received messages: other
    subjects' messages, or removed ones of this subject) or was shown by `check_followers` to
    hold nothing of this subject that can still arrive. `check_followers` reports the removed
    sequences among the skips.

    Bounds: at most `max_msgs` messages / `max_bytes` bytes wait for the next `poll`; a delivery
    that does not fit pauses the follower (it unsubscribes; the delivery and any after it are
    not received) and the next `poll` resubscribes from `last_seq + 1`. Once `end_at(stop)` is
    set, messages beyond `stop` are not buffered, and the first one received ends the
    subscription (everything up to `stop` was delivered before it).

    The callback runs on the loop's thread; `reached` may be called from another thread (a
    lock keeps what it reads consistent). Everything else runs on the loop's thread.

    Args:
        js: JetStream context.
        stream: the stream.
        subject: the subject.
        after: deliver messages after this sequence.
        max_msgs: messages buffered between two `poll`s at most.
        max_bytes: bytes buffered between two `poll`s at most.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        after: int,
        *,
        max_msgs: int = BUFFER_MSGS,
        max_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.last_seq = after
        self.covered = after
        self.skips: list[tuple[int, int]] = []
        self.sub: Any = None
        self.max_msgs = max(1, max_msgs)
        self.max_bytes = max(1, max_bytes)
        #: Where a bounded read ends (None: following): see `end_at`.
        self.stop: int | None = None
        #: Times the follower paused because its buffer was full; the largest buffer held.
        self.pauses = 0
        self.peak_msgs = 0
        self.peak_bytes = 0
        self._arrived: list[TailMessage] = []
        self._bytes = 0
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        #: Subscription generation: deliveries of an earlier (paused) one are ignored.
        self._gen = 0
        #: The consumer sequence last received; set when nats-py dropped deliveries.
        self._dseq = 0
        self._dropped = False
        #: The subscription ended for good: a message beyond `stop` was received.
        self._ended = False
        self._closing: set[asyncio.Task[None]] = set()

    async def _on_message(self, gen: int, msg: Any) -> None:
        # No await in here: nats-py runs it to the end once it took the message from the
        # subscription's queue, so an empty queue means every delivery is accounted (`settled`).
        if gen != self._gen or self._dropped:
            return  # a paused or ended subscription's delivery (it is delivered again)
        dseq = _consumer_seq(msg.reply)
        if dseq != self._dseq + 1 and dseq != 1:  # (1: a consumer nats-py recreated)
            # nats-py dropped deliveries (`PENDING_MSGS_LIMIT`); they must not pass for
            # other subjects' skips: `poll` fails.
            self._dropped = True
            self._event.set()
            return
        self._dseq = dseq
        m, _ = _message(msg)
        if m.seq <= self.covered:
            return  # accounted already (an ordered consumer never repeats; belt and braces)
        stop = self.stop
        beyond = stop is not None and m.seq > stop
        size = len(m.data)
        if (
            not beyond
            and self._arrived
            and (len(self._arrived) >= self.max_msgs or self._bytes + size > self.max_bytes)
        ):
            self._pause()  # full: this delivery and the ones after it come again on resume
            return
        with self._lock:
            # Appended BEFORE `covered` moves (and under the lock `reached` reads both with):
            # a reader never sees the position past a message that is not buffered yet.
            if not beyond:
                self._arrived.append(m)
                self._bytes += size
            if m.seq > self.covered + 1:
                self.skips.append((self.covered + 1, m.seq - 1))
            self.covered = m.seq
            self.last_seq = m.seq
        if beyond:
            # Everything up to `stop` was delivered before this one: the read is over.
            self._ended = True
            self._pause()
        else:
            self.peak_msgs = max(self.peak_msgs, len(self._arrived))
            self.peak_bytes = max(self.peak_bytes, self._bytes)
        self._event.set()

    def _pause(self) -> None:
        """Stop this subscription (from the callback: the unsubscribe runs as its own task)."""
        self._gen += 1
        sub, self.sub = self.sub, None
        if not self._ended:
            self.pauses += 1
        self._event.set()
        if sub is not None:
            task = asyncio.get_running_loop().create_task(self._unsubscribe(sub))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _unsubscribe(sub: Any) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    def end_at(self, stop: int) -> None:
        """End the read at `stop` (on the loop's thread): later messages are not handed out,
        and the subscription ends once one arrives."""
        self.stop = stop
        with self._lock:
            if self._arrived and self._arrived[-1].seq > stop:
                self._arrived = [m for m in self._arrived if m.seq <= stop]
                self._bytes = sum(len(m.data) for m in self._arrived)
        if self.last_seq > stop and not self._ended:
            self._ended = True
            self._pause()  # ended: not counted as a pause

    def reached(self, stop: int) -> bool:
        """True when every message up to `stop` was handed out by `poll`/`drain` (or removed):
        received and accounted up to it, and none at or below it waits for the next `poll`
        (messages beyond it may: a busy subject keeps delivering)."""
        with self._lock:
            return self.covered >= stop and (not self._arrived or self._arrived[0].seq > stop)

    def settled(self) -> bool:
        """True when no delivered message waits in the subscription's queue."""
        return self.sub is None or self.sub.pending_msgs == 0

    async def in_flight(self) -> bool:
        """True when the server may have delivered a message beyond `last_seq` that was not
        received yet (one consumer-info request; unknown counts as yes). A paused or ended
        follower has none: what its old consumer delivered is received again or not at all."""
        if self.sub is None:
            return False
        try:
            info = await self.sub.consumer_info()
        except Exception:
            return True
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        return int(delivered or 0) > self.last_seq

    def cover(self, upto: int) -> None:
        """Mark sequences up to `upto` beyond the position as holding nothing still to come."""
        if upto <= self.covered:
            return
        with self._lock:
            self.covered = upto
            self.skips = [(max(lo, upto + 1), hi) for lo, hi in self.skips if hi > upto]

    async def _start(self) -> None:
        self._gen += 1
        gen = self._gen
        self._dseq = 0

        async def on_message(msg: Any) -> None:
            await self._on_message(gen, msg)

        with nats_errors(f"following {self.subject} from {self.stream}"):
            sub = await _subscribe(
                self.js,
                self.stream,
                self.subject,
                self.last_seq + 1,
                on_message,
                idle_heartbeat=FOLLOW_HEARTBEAT_SECONDS,
            )
        if gen != self._gen:
            # Paused (or ended) while subscribing: deliveries filled the buffer before
            # `subscribe` returned, and `_pause` found no subscription to end. End it here;
            # the next `poll` resubscribes from the position.
            await self._unsubscribe(sub)
            return
        self.sub = sub

    async def poll(self, timeout: float) -> list[TailMessage]:
        """Messages that arrived, waiting at most `timeout` seconds for the first one.

        Raises:
            TransientError: nats-py dropped deliveries (see `PENDING_MSGS_LIMIT`), or
                resubscribing failed (what arrived stays for the next `poll`).
        """
        from iceberg_lake.exceptions import TransientError

        if self._dropped:
            raise TransientError(
                f"following {self.subject} from {self.stream}: the client dropped messages "
                f"after seq {self.last_seq} (slow consumer)"
            )
        if self.sub is None and not self._ended and not self._arrived:
            await self._start()
        if not self._arrived and not self._ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        out = self.drain()
        if self.sub is None and not self._ended:
            try:
                await self._start()  # paused when full: there is room again
            except BaseException:
                # Not handed out: the batch stays for the next `poll` (its position is past it).
                with self._lock:
                    self._arrived = out + self._arrived
                    self._bytes = sum(len(m.data) for m in self._arrived)
                self._event.set()
                raise
        return out

    def drain(self) -> list[TailMessage]:
        """Messages that arrived since the last `poll`/`drain`, without waiting or subscribing."""
        with self._lock:
            out, self._arrived = self._arrived, []
            self._bytes = 0
        self._event.clear()
        return out

    async def close(self) -> None:
        """Unsubscribe (the server removes the ephemeral consumer)."""
        self._ended = True
        self._gen += 1
        if self.sub is not None:
            await self._unsubscribe(self.sub)
            self.sub = None
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task


async def check_followers(
    js: JetStreamContext,
    followers: Sequence[TailFollower],
    horizons: Sequence[int | None],
    *,
    final: bool = False,
    skips_only: bool = False,
    states: StreamStates | None = None,
) -> list[list[tuple[int, int]]]:
    """The sequences each follower's range lost: removed by the stream before it received them.

    JetStream keeps no record of what it removed, only which sequences it still holds. So, in
    this order: (a) each follower's skips so far, position and `covered` are taken; (b) each
    stream's state (first sequence and removed ones between first and last); (c) each
    follower's next stored message of its subject after `covered`; (d) each stream's state
    again. Then:

    * a skipped sequence at or below the horizon (below) that (b) no longer holds is reported
      (a run at a time); one it still holds is another subject's: a stored message of the
      subject is delivered in order, so it would not have been skipped. A message received is
      never in a skip, so never reported. Skips beyond the horizon (a bounded read ends on
      the first message beyond its end) are dropped: they are not the read's.
    * up to the next message of the subject stored at (c) (or the horizon: the stream's last
      sequence in (b), or `horizons[i]` if lower), nothing of the subject was stored. If (d)
      still holds every sequence of that range, none of it ever was the subject's: the
      follower `cover`s it. Else, once every delivered message is accounted, the sequences of
      it that (d) no longer holds are reported (whatever of the subject was there was removed
      unread), and it is covered. "Accounted" (unless `final`): (e) the follower's consumer
      has delivered nothing beyond its position (`in_flight`: a consumer-info request), and
      afterwards nothing waits in the client's queue (`settled`) and the position is still the
      one of (a). A message delivered before (e) would show in (e); one delivered after (e)
      was stored after (d), so is not among the removed. Otherwise it waits for the next check.

    Args:
        js: JetStream context.
        followers: the followers (of any streams).
        horizons: per follower, the last sequence that belongs to the read (None: the stream's
            last; a bounded read passes the stream's last sequence when its end was fixed).
        final: no message of a follower's subject at or below its horizon and beyond its
            position can still be handed out (the read's end was reached): do not wait.
        skips_only: (a), (b) and the skips only (cut at the horizon, like the full check):
            one request per stream, for a check soon after messages were received (the
            sooner, the fewer other subjects' skipped messages the stream removed meanwhile:
            those are reported too).
        states: the caller's `StreamStates` (fetches the removed list only when it changed).

    Returns:
        Per follower, the runs `(first, last)` of sequences found removed (new ones only: each
        sequence is in at most one run over all the checks of a follower).

    Raises:
        TransientError: a request failed (NATS unreachable, timeout).
    """
    states = states if states is not None else StreamStates()
    taken = []
    for f in followers:  # (a)
        taken.append((f.skips, f.last_seq, f.covered))
        f.skips = []
    streams = sorted({f.stream for f in followers})
    before = {s: await states.get(js, s) for s in streams}  # (b)
    limits = [  # a sequence beyond a follower's horizon is not its read's (nor reported)
        before[f.stream].last_seq if h is None else min(before[f.stream].last_seq, h)
        for f, h in zip(followers, horizons, strict=True)
    ]
    if skips_only:
        return [
            before[f.stream].removed_in([(lo, min(hi, limit)) for lo, hi in skips if lo <= limit])
            for f, (skips, _, _), limit in zip(followers, taken, limits, strict=True)
        ]
    with nats_errors("finding the next stored message"):
        following = [  # (c)
            await next_stored_seq(js, f.stream, f.subject, covered)
            for f, (_, _, covered) in zip(followers, taken, strict=True)
        ]
    after = {s: await states.get(js, s) for s in streams}  # (d)
    out: list[list[tuple[int, int]]] = []
    for f, (skips, position, covered), limit, nxt in zip(
        followers, taken, limits, following, strict=True
    ):
        s1, s2 = before[f.stream], after[f.stream]
        found = s1.removed_in([(lo, min(hi, limit)) for lo, hi in skips if lo <= limit])
        # Nothing of the subject was stored in (covered, reach] at (c).
        reach = limit if nxt is None else min(limit, nxt - 1)
        if reach > covered:
            removed = s2.removed_runs(covered + 1, reach)
            if not removed:
                f.cover(reach)
            elif final or (
                f.last_seq == position
                and not await f.in_flight()  # (e)
                and f.settled()
                and f.last_seq == position
            ):
                found.extend(removed)
                f.cover(reach)
        out.append(found)
    return out
