"""The NATS publisher of a replay: subjects, the batched PUB-frame path and the per-event sink.

`ReplayEngine.publish()` sends the payloads to NATS in batches (core publish, flush per batch),
paced by event time with `speed` (`publish_windows`); a live replay, whose tail arrives event by
event, publishes through `NatsSink` (one publish each).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.tables import GOLD
from iceberg_lake.timetravel.replay.events import Progress, ReplayEvent
from iceberg_lake.timetravel.replay.pacing import Pacer, paced_cut
from iceberg_lake.timetravel.replay.source import PinnedSource
from iceberg_lake.timetravel.replay.window import Window

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = [
    "NatsSink",
    "check_publishable",
    "frame_headers",
    "publish_windows",
    "replay_subject",
]


def replay_subject(subject: str, prefix: str | None) -> str:
    """The subject a replayed event is published on (`replay` + `market.x` → `replay.market.x`)."""
    if not prefix:
        return subject
    return f"{prefix.rstrip('.')}.{subject}"


def check_publishable(sources: Sequence[PinnedSource], prefix: str | None) -> None:
    """Refuse to publish Gold tables on their original subjects.

    Raises:
        TimeTravelError: Gold tables without a prefix (their rows are flattened payloads).
    """
    flat = [s.identifier for s in sources if s.definition.namespace == GOLD]
    if flat and not prefix:
        raise TimeTravelError(
            f"{', '.join(flat)} rows are flattened (one per level); the Gold writer would "
            "dead-letter them on their original subject: replay them under a prefix"
        )


def frame_headers(sources: Sequence[PinnedSource], prefix: str | None) -> pa.Array:
    """The `PUB <subject> ` header of every table's frames (indexed like `sources`)."""
    from iceberg_lake.engine import nats as bus

    return pa.array(
        [bus.pub_frame_header(replay_subject(s.subject, prefix)) for s in sources],
        pa.binary(),
    )


async def publish_windows(
    nc: Client,
    windows: AsyncIterator[Window],
    headers: pa.Array,
    *,
    speed: float | None,
    batch: int,
    progress: Progress | None,
) -> int:
    """Publish every event of `windows` as whole PUB frames, `batch` events per flush.

    With `speed`, each batch is cut where the next event is due later than now, so pacing
    follows event time (to the millisecond) while publishing stays batched.

    Args:
        nc: a connected client.
        windows: the replay's windows, with payloads (`WindowPipeline.awindows()`).
        headers: `frame_headers` of the replay's tables.
        speed: None or 0 = as fast as possible; N = N× real time.
        batch: events between flushes (bounds the client's pending buffer).
        progress: called once per batch.

    Returns:
        The number of events published.

    Raises:
        TimeTravelError: an event is larger than the server's `max_payload`.
    """
    from iceberg_lake.engine import nats as bus

    pacer = Pacer(speed)
    sent = 0
    async for window in windows:
        payloads, ts = window.payloads, window.ts
        assert payloads is not None and ts is not None
        sizes = pc.binary_length(payloads)
        if pc.max(sizes).as_py() > nc.max_payload:
            raise TimeTravelError(f"an event is larger than NATS max_payload ({nc.max_payload})")
        # Every event's whole PUB frame, built at once: header, size, CRLF, payload, CRLF.
        frames = pc.binary_join_element_wise(
            headers.take(pa.array(window.sources)),
            pc.cast(sizes, pa.string()).cast(pa.binary()),
            b"\r\n",
            payloads,
            b"\r\n",
            b"",
        )
        offsets = _offsets(frames)
        data = memoryview(frames.buffers()[2])
        size_offsets = np.concatenate([[0], np.cumsum(sizes.to_numpy())])
        i, n = 0, len(frames)
        while i < n:
            hi = min(n, i + batch)
            if speed:
                hi = await paced_cut(pacer, ts, i, hi)
            chunk = bytes(data[int(offsets[i]) : int(offsets[hi])])
            # Counted before the call: it queues the frames before its first await, and the
            # flush it then waits for is where an interrupt (a cancel) lands; the queued frames
            # still go out (drain). Counted after, they went out uncounted (review16).
            sent += hi - i
            if progress is not None:
                progress(sent, int(ts[hi - 1]))
            await bus.publish_frames(nc, chunk, hi - i, int(size_offsets[hi] - size_offsets[i]))
            i = hi
    return sent


def _offsets(array: pa.Array) -> np.ndarray:
    """The int32 value offsets of a binary array (n + 1 of them), as numpy (zero-copy)."""
    return np.frombuffer(
        array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4
    )


class NatsSink:
    """Publishes replayed events on core NATS, flushing every `flush_every` messages.

    Args:
        nc: connected client.
        prefix: subject prefix (None: original subjects).
        flush_every: messages between flushes (bounds the client's buffer).
        close_client: drain and close `nc` in `close()`.
    """

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str | None = None,
        flush_every: int = 2_000,
        close_client: bool = False,
    ) -> None:
        self.nc = nc
        self.prefix = prefix
        self.flush_every = flush_every
        self.close_client = close_client
        self.published = 0

    async def send(self, event: ReplayEvent) -> None:
        """Publish one event on its (prefixed) subject."""
        await self.nc.publish(replay_subject(event.subject, self.prefix), event.payload)
        self.published += 1
        if self.published % self.flush_every == 0:
            await self.nc.flush()

    async def close(self) -> None:
        """Flush what is pending (and close the client if we own it)."""
        await self.nc.flush()
        if self.close_client:
            await self.nc.drain()
