"""The second tail of a Bronze table: rows schema inference routes into it.

Rows that the schema-inference consumer (`lake_inferred`, unmapped `market.*` subjects) routes
into a Bronze table are a second tail of that table, after its `lake.watermark.MARKET.lake_inferred`
(and after the position its writer recorded with its latest flush, read before the table is
loaded), decoded by the writer's `InferredDecoder`. Live queries, live replays and
`freshness` read it while that consumer exists (or inference has committed to the table); each
reads that position before it loads the tables (`inference_start`). Queries read it into the
session's caches (`read_inferred_tails`); a live replay follows it (`UnmappedFollower`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.nats import INFERRED_TARGET, consumer_ack_floor, consumer_target
from iceberg_lake.engine.nats_tail import (
    StreamStates,
    TailFollower,
    TailMessage,
    check_followers,
    last_subject_seq,
    read_tail,
    removed_range,
    stream_first_seq,
)
from iceberg_lake.ingest.position import recorded_position
from iceberg_lake.timetravel.live.loop import NatsLoop, TailCache
from iceberg_lake.timetravel.live.source import TailSource, receives_inferred

if TYPE_CHECKING:
    from iceberg_lake.timetravel.query import Lake

__all__ = [
    "INFERRED_KEY",
    "MAX_SUBJECT_READS",
    "InferenceStart",
    "UnmappedFollower",
    "inference_start",
    "inferred_floor",
    "inferred_mapped_subjects",
    "read_inferred_tails",
]

#: Key suffix of a table's inferred-rows cache in `NatsLoop.tails`.
INFERRED_KEY = "#inferred"
#: Up to this many unmapped subjects are read one ordered consumer each; beyond (e.g. one
#: subject per symbol), one consumer reads `market.>` and the mapped subjects are dropped here.
MAX_SUBJECT_READS = 8


def inferred_mapped_subjects(catalog: LakeCatalog) -> frozenset[str]:
    """The subjects the inference consumer skips: every Bronze table's own (as its writer)."""
    return frozenset(
        d.subject for d in catalog.registry.in_namespace("bronze") if d.subject is not None
    )


async def _inference_consumer_exists(loop: NatsLoop) -> bool:
    stream, durable, _ = consumer_target(INFERRED_TARGET)
    return await consumer_ack_floor(await loop.js(), stream, durable) is not None


def inferred_floor(
    loop: NatsLoop, catalog: LakeCatalog, timeout: float | None = None
) -> int | None:
    """Where the inferred tails start: the inference writer's recorded position (None: its
    consumer does not exist, so inference does not run).

    Read BEFORE the tables are loaded: what is at or below it is in their metadata. Read from
    the catalog, not the consumer's ack floor: a catalog restored from a backup or rebuilt holds
    less than NATS has acked, and the rows in between would be in neither view (ops5).
    """
    exists = _inference_consumer_exists(loop)
    if not loop.run(asyncio.wait_for(exists, timeout) if timeout else exists):
        return None
    return recorded_position(catalog, INFERRED_TARGET) or 0


async def _read_inferred(
    loop: NatsLoop, sources: list[TailSource], floor: int, mapped: frozenset[str]
) -> int:
    """Bring each source's inferred-rows cache up to the stream's newest message; return it.

    A table holds the inferred rows of messages up to its inference watermark, and of messages
    up to `floor` (acked, so committed): its inferred tail starts after the larger of the two.
    Only unmapped subjects are read (the stream lists its subjects), one ordered consumer each
    (or one for all, past `MAX_SUBJECT_READS`), once for all `sources`; each table decodes them
    with its own inference decoder.
    """
    js = await loop.js()
    stream, _, filter_subject = consumer_target(INFERRED_TARGET)
    info = await js.stream_info(stream, subjects_filter=filter_subject)
    upto = int(info.state.last_seq or 0)
    unmapped = sorted(set(info.state.subjects or {}) - mapped)
    caches: list[tuple[TailSource, TailCache]] = []
    for src in sources:
        after = max(src.inferred_watermark, floor)
        key = src.identifier + INFERRED_KEY
        cache = loop.tails.get(key)
        if cache is None or cache.schema_id != src.schema_id or cache.after > after:
            cache = TailCache(after, src.schema_id, src.arrow_schema)
            loop.tails[key] = cache
        cache.advance(after)
        caches.append((src, cache))
    lo = min(cache.last_seq for _, cache in caches)
    messages: list[TailMessage] = []
    if len(unmapped) > MAX_SUBJECT_READS:
        if upto > lo:
            every = await read_tail(js, stream, filter_subject, lo, upto)
            messages = [m for m in every if m.subject not in mapped]
    else:
        for subject in unmapped:
            last = await last_subject_seq(js, stream, subject)
            if last > lo:
                messages.extend(await read_tail(js, stream, subject, lo, min(last, upto)))
        messages.sort(key=lambda m: m.seq)
    first = await stream_first_seq(js, stream)
    for src, cache in caches:
        before = cache.last_seq
        mine = [m for m in messages if m.seq > before]
        removed = removed_range(before, first)
        cache.note_removed([removed] if removed is not None else [])
        rows, seqs = src.decode_with_seqs(mine, decoder=src.inferred)
        cache.add(mine, rows, seqs)
        cache.last_seq = max(cache.last_seq, upto)
    return upto


def read_inferred_tails(
    lake: Lake,
    sources: list[TailSource],
    floor: int | None,
    mapped: frozenset[str] | None,
) -> tuple[int, set[str]]:
    """Read the inferred tails of `sources` when inference runs; (last seq, tables read).

    Inference runs if its consumer exists (or existed in this session: a writer recreates it on
    start), or has committed to the table; then the table's inferred rows after its inference
    watermark (and the floor, if known) are read.
    """
    if mapped is None:
        return 0, set()
    loop = lake.live_loop()  # made when the floor was read
    seen = floor is not None or loop.inferred_seen
    inferred = [s for s in sources if s.inferred is not None and (seen or s.inferred_committed)]
    if not inferred:
        return 0, set()
    loop.inferred_seen = True
    end = loop.run(_read_inferred(loop, inferred, floor or 0, mapped))
    return end, {s.identifier for s in inferred}


@dataclass(frozen=True)
class InferenceStart:
    """What a reader needs to know about schema inference BEFORE it loads the tables.

    Attributes:
        floor: the inference writer's recorded position, read before the tables were loaded
            (None: its consumer does not exist).
        mapped: the subjects the inference consumer skips (every Bronze table's own).
    """

    floor: int | None
    mapped: frozenset[str]

    def applies(self, src: TailSource) -> bool:
        """True when `src` has an inferred tail: inference routes into it and runs (its
        consumer exists) or has committed to it."""
        return src.inferred is not None and (self.floor is not None or src.inferred_committed)

    def after(self, src: TailSource) -> int:
        """The stream sequence after which `src`'s inferred rows are not in its snapshot."""
        return max(src.inferred_watermark, self.floor or 0)


def inference_start(catalog: LakeCatalog, identifiers: Sequence[str]) -> InferenceStart | None:
    """Read where the inferred tails start, for a reader about to load `identifiers`.

    Call BEFORE loading the tables: the writer records its position with a flush's last commit,
    so whatever is at or below the position read now is in the metadata loaded afterwards.

    Returns:
        None when no table of `identifiers` receives inferred rows (nothing read).

    Raises:
        TransientError/LakeError: NATS cannot be reached.
    """
    if not any(receives_inferred(catalog.definition(i)) for i in identifiers):
        return None
    loop = NatsLoop(catalog)
    try:
        floor = inferred_floor(loop, catalog)
    finally:
        loop.close()
    return InferenceStart(floor, inferred_mapped_subjects(catalog))


class UnmappedFollower:
    """Follows the unmapped `market.*` subjects after a sequence: the messages schema inference
    routes into Bronze tables, for a live replay.

    One ordered consumer per unmapped subject while there are at most `MAX_SUBJECT_READS` of
    them; the stream's subjects are listed again by `discover` (a follow finds subjects that
    appear meanwhile; a new subject is read from `after`, nothing of it was seen before). Past
    that many, one consumer on `market.>` instead (from `after`, mapped subjects dropped).
    Every message is delivered once: per subject, only sequences beyond the last delivered.
    """

    def __init__(
        self, js: Any, mapped: frozenset[str], after: int, states: StreamStates | None = None
    ) -> None:
        self.js = js
        self.states = states if states is not None else StreamStates()
        self.stream, _, self.wildcard = consumer_target(INFERRED_TARGET)
        self.mapped = mapped
        self.after = after
        self.followers: dict[str, TailFollower] = {}
        self.wide: TailFollower | None = None
        self.delivered: dict[str, int] = {}
        self._carry: list[TailMessage] = []
        #: Where a bounded read stops: the stream's last sequence, and per follower the last
        #: sequence to wait for (set by `fix_end`).
        self.stop: int | None = None
        self.ends: dict[str, int] = {}

    async def discover(self) -> int:
        """List the stream's subjects and follow unmapped ones not followed yet; return the
        stream's last sequence at the listing (no subject unlisted then has a message up to it).
        """
        info = await self.js.stream_info(self.stream, subjects_filter=self.wildcard)
        last = int(info.state.last_seq or 0)
        if self.wide is not None:
            return last
        unmapped = set(info.state.subjects or {}) - self.mapped
        if len(unmapped) > MAX_SUBJECT_READS:
            # Many subjects (one per symbol): one consumer for all; what the per-subject ones
            # received is kept, and `delivered` drops what the wide one delivers again.
            for f in self.followers.values():
                self._carry.extend(f.drain())
                await f.close()
            self.followers = {}
            self.wide = TailFollower(self.js, self.stream, self.wildcard, self.after)
            return last
        for subject in sorted(unmapped - set(self.followers)):
            self.followers[subject] = TailFollower(self.js, self.stream, subject, self.after)
        return last

    async def check(
        self, *, final: bool = False, skips_only: bool = False
    ) -> list[tuple[int, int]]:
        """Sequences the stream removed before a follower received them (`check_followers`),
        over all unmapped subjects; while following (no end fixed), first follow subjects that
        appeared (`discover`)."""
        if self.stop is None and not skips_only:
            await self.discover()
        followers = self._all()
        found = await check_followers(
            self.js,
            followers,
            [self.stop] * len(followers),
            final=final,
            skips_only=skips_only,
            states=self.states,
        )
        return sorted(run for runs in found for run in runs)

    def has_skips(self) -> bool:
        """True when a follower has skipped sequences not yet checked."""
        return any(f.skips for f in self._all())

    def _all(self) -> list[TailFollower]:
        return [self.wide] if self.wide is not None else list(self.followers.values())

    async def fix_end(self) -> None:
        """Stop at what is stored now: the stream's last sequence and each subject's newest."""
        self.stop = await self.discover()
        if self.wide is not None:
            self.ends = {self.wildcard: self.stop}
            self.wide.end_at(self.stop)
            return
        self.ends = {
            s: min(await last_subject_seq(self.js, self.stream, s), self.stop)
            for s in self.followers
        }
        for s, end in self.ends.items():
            self.followers[s].end_at(end)

    def done(self) -> bool:
        """Every follower reached its end (only after `fix_end`)."""
        if self.stop is None:
            return False
        if self._carry:
            return False
        if self.wide is not None:
            return self.wide.reached(self.stop)
        return all(self.followers[s].reached(end) for s, end in self.ends.items())

    async def poll(self, timeout: float) -> list[TailMessage]:
        """Unmapped messages that arrived since the last poll, in stream order."""
        followers = self._all()
        got = await asyncio.gather(*(f.poll(timeout) for f in followers))
        out: list[TailMessage] = []
        for batch in [self._carry, *got]:
            for m in batch:
                if m.subject in self.mapped or m.seq <= self.delivered.get(m.subject, self.after):
                    continue
                self.delivered[m.subject] = m.seq
                out.append(m)
        self._carry = []
        out.sort(key=lambda m: m.seq)
        return out

    async def close(self) -> None:
        """Unsubscribe every follower."""
        for f in self._all():
            await f.close()
