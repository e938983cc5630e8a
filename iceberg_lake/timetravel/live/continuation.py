"""The live continuation of a replay: its pinned history, then the stream tail
(`ReplayEngine(..., live=True)` / `lake replay --live [--follow]`).

The tail is read with ephemeral ordered consumers (`engine.nats_tail`), never the writers'
durable consumers. A live replay's followers buffer a bounded amount between rounds
(`nats_tail.BUFFER_MSGS`/`BUFFER_BYTES`), and a bounded read stops at its end however busy
the subject is.

Order of live replay events: the pinned history first, in replay order; then the tail. A bounded
replay's tail is fixed when it starts, so it is read whole (up to `SORTED_TAIL_BYTES`) and
sorted once by the replay key (`ts_event_ns`, table position, row order): the same order and
hash on every run (quant13: rounds cut by how messages happened to be fetched went back in time
and changed the hash). A following replay's tail, and a bounded one beyond that size, comes in
arrival rounds, each (what arrived since the previous one) sorted by the replay key; an event
that arrives after a later-stamped one was already delivered is delivered when it arrives
(late), never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from iceberg_lake.engine.nats import stream_identity
from iceberg_lake.engine.nats_tail import (
    StreamStates,
    TailFollower,
    TailMessage,
    check_followers,
    last_subject_seq,
)
from iceberg_lake.exceptions import LakeError, TimeTravelError
from iceberg_lake.timetravel.canonical import encode_rows
from iceberg_lake.timetravel.live.gaps import GapLog, merge_runs, removed_warning
from iceberg_lake.timetravel.live.inferred import INFERRED_KEY, InferenceStart, UnmappedFollower
from iceberg_lake.timetravel.live.loop import NatsLoop
from iceberg_lake.timetravel.live.source import TailSource, is_live_table
from iceberg_lake.timetravel.nanos import seconds_ns

if TYPE_CHECKING:
    from iceberg_lake.timetravel.replay.engine import ReplayEngine
    from iceberg_lake.timetravel.replay.events import ReplayEvent

__all__ = ["REMOVAL_CHECK_SECONDS", "LiveTail"]

log = logging.getLogger(__name__)

#: A live replay checks at most this often (seconds) whether the stream removed messages its
#: followers had not received (`LiveTail._check_gaps`), and whether a table's schema changed.
REMOVAL_CHECK_SECONDS = 1.0
#: Rejected tail messages kept per table, decoded again when the table's schema changes (a
#: later schema may accept them: `LiveTail.schema_misses`); beyond, they are only counted.
MAX_KEPT_REJECTS = 100_000
#: A bounded live replay (no `--follow`) holds its whole tail, up to this many message bytes,
#: and sorts it once: its order and hash are then the same on every run. A larger tail (writers
#: down for hours) is handed out in arrival rounds like a following replay's. Held, the messages
#: take about 3× their bytes in memory, about 6× while the last round is decoded and sorted
#: (review13b measured 2.8× and 6.3×): 64 MiB keeps that near 400 MB.
SORTED_TAIL_BYTES = 64 * 1024 * 1024


class LiveTail:
    """The live continuation of a `ReplayEngine`: its pinned history, then the stream tail.

    Created by `ReplayEngine(..., live=True)` with the engine's loaded tables, so each table's
    watermark is read from the metadata its pinned snapshot came from: every event of the window
    is delivered exactly once across the history/tail boundary. A Bronze table that schema
    inference routes into (its consumer exists, or it has committed there) has a second tail:
    unmapped `market.*` messages after `inference.after(...)`, decoded by the writer's
    `InferredDecoder`, read by an `UnmappedFollower` shared by the tables.

    Args:
        engine: the replay engine (pins must be the current snapshots: no `as_of`).
        follow: keep reading as events arrive until the window's end has passed (plus
            `lateness_seconds`); without it, stop at the newest message at the start of the tail.
        lateness_seconds: how long after `end_ns` (wall clock) events stamped inside the window
            are still waited for.
        poll_seconds: how long one arrival round waits for the first message.
        inference: schema inference as read BEFORE the engine loaded its tables
            (`inference_start`; None: no inferred tails).
    """

    def __init__(
        self,
        engine: ReplayEngine,
        *,
        follow: bool = False,
        lateness_seconds: float,
        poll_seconds: float = 0.2,
        inference: InferenceStart | None = None,
    ) -> None:
        if engine.as_of is not None:
            raise TimeTravelError("a live replay starts at the current snapshots: drop --as-of")
        self.engine = engine
        self.follow = follow
        self.lateness_seconds = lateness_seconds
        self.poll_seconds = poll_seconds
        self.inference = inference
        self.sources: list[tuple[int, TailSource, Any]] = []
        #: Table → the stream sequence after which its inferred rows are read (tables with an
        #: inferred tail only).
        self.inferred_after: dict[str, int] = {}
        mapped = inference.mapped if inference is not None else None
        for index, src in enumerate(engine.pinned_sources):
            if is_live_table(src.definition):
                tail = TailSource(src.definition, src.table, mapped)
                if inference is not None and inference.applies(tail):
                    self.inferred_after[tail.identifier] = inference.after(tail)
                self.sources.append((index, tail, src))
        self.tail_events = 0
        self.tail_ranges: dict[str, list[int]] = {}
        #: Last unmapped-subject sequence read for the inferred tails (None: none read).
        self.inferred_last_seq: int | None = None
        self.rounds = 0
        #: The tail is sorted as one round (a bounded replay within `SORTED_TAIL_BYTES`).
        self.tail_sorted = not follow
        #: Table → the runs of stream sequences of its range that the stream removed (limits,
        #: purges, deletes) before the tail received them, each sequence once, none received
        #: (`_check_gaps`; a run may hold only other subjects' messages: JetStream does not
        #: record a removed message's subject). Listed up to `MAX_LISTED_GAPS`, then counted.
        self.gaps: dict[str, GapLog] = {}
        #: Table → the stream's last sequence when the end of the read was fixed (None: not
        #: fixed, following): later sequences are not the replay's.
        self._horizon: dict[str, int] | None = None
        self._checks = 0
        #: Set by `stop()` (any thread): the tail ends at its next round, incomplete.
        self._stopped = threading.Event()
        self._checked_at = 0.0
        self._loop: NatsLoop | None = None
        self._unmapped: UnmappedFollower | None = None
        #: Stream states of the removal checks (the removed list is fetched when it changed).
        self._states = StreamStates()
        #: Table → the metadata file whose schema its tail decoder follows (`_follow_schemas`).
        self._pointers = {src.identifier: src.table.metadata_location for _, src, _ in self.sources}
        #: Table → tail messages its decoder rejected (up to `MAX_KEPT_REJECTS`), and
        #: `(count, first seq, last seq)` of those beyond, not kept.
        self._rejects: dict[str, list[TailMessage]] = {}
        self._unkept_rejects: dict[str, tuple[int, int, int]] = {}
        #: Table → `[messages, first seq, last seq, schema id before, after]`: tail messages
        #: its decoder rejected that a later schema of the table accepts (their events in the
        #: window), found when the replay followed the change: the writer, deciding them after
        #: the change, stores them; this replay has not delivered them (a warning, and the
        #: replay is not complete).
        self.schema_misses: dict[str, list[int]] = {}

    @property
    def removed(self) -> dict[str, tuple[int, int]]:
        """Table → the envelope `(first, last)` of its `gaps` (listed or not)."""
        return {t: env for t, g in self.gaps.items() if (env := g.envelope) is not None}

    def manifest_extra(self) -> dict[str, Any]:
        """The manifest's `live` section: per table the watermark and tail range read."""
        return {
            "live": {
                "follow": self.follow,
                # Events stamped inside the window that arrive later than this after its end
                # are not in a following replay (a replay of the committed window has them).
                "lateness_seconds": self.lateness_seconds if self.follow else None,
                "tail_events": self.tail_events,
                "tail_rounds": self.rounds,
                "order": "history in replay order, then the tail sorted by the replay key"
                if self.tail_sorted
                else "history in replay order, then the tail in arrival rounds, each sorted "
                "by the replay key",
                "tables": {
                    src.identifier: {
                        "stream": src.stream,
                        "watermark": src.watermark,
                        "last_seq": self.tail_ranges.get(src.identifier, [src.watermark])[-1],
                        "inferred_after": self.inferred_after.get(src.identifier),
                        "removed": list(self.removed[src.identifier])
                        if src.identifier in self.removed
                        else None,
                        "gaps": [list(g) for g in self._log(src.identifier).runs],
                        "unlisted_gaps": self._log(src.identifier).more_runs,
                        "unlisted_removed": self._log(src.identifier).more_seqs,
                        "schema_id": src.schema_id,
                        "schema_misses": self.schema_misses.get(src.identifier, [0])[0],
                    }
                    for _, src, _ in self.sources
                },
                "inferred_last_seq": self.inferred_last_seq,
                "warnings": self.warnings(),
            }
        }

    def _log(self, table: str) -> GapLog:
        return self.gaps.get(table) or GapLog()

    def warnings(self) -> list[str]:
        """One line per table whose tail the stream removed sequences of before they were
        received (naming up to `WARNING_RUNS` runs, counting the rest); and one when a bounded
        replay's tail was too large to sort whole (its order is then that of arrival rounds)."""
        out = []
        if not self.follow and not self.tail_sorted:
            out.append(
                f"the tail held more than {SORTED_TAIL_BYTES >> 20} MiB: it was handed out in "
                f"{self.rounds} arrival rounds, each sorted, not sorted whole (another run over "
                "the same tail may order it differently; replay the committed window for a "
                "reproducible order)"
            )
        for _, src, _ in self.sources:
            miss = self.schema_misses.get(src.identifier)
            if miss is not None:
                out.append(_miss_warning(src.identifier, miss))
            log = self.gaps.get(src.identifier)
            if log and (envelope := log.envelope) is not None:
                out.append(
                    removed_warning(
                        src.identifier,
                        src.stream,
                        src.subject,
                        envelope,
                        inferred=src.identifier in self.inferred_after,
                        runs=log.runs,
                        more_runs=log.more_runs,
                        more_seqs=log.more_seqs,
                    )
                )
        return out

    def _note_gaps(self, src: TailSource, runs: list[tuple[int, int]]) -> None:
        """Record runs removed before the tail received them; log the new ones (one line)."""
        gaps = self.gaps.setdefault(src.identifier, GapLog())
        new = [(lo, hi) for lo, hi in merge_runs(runs) if gaps.add(lo, hi)]
        if not new:
            return
        inferred = src.identifier in self.inferred_after
        envelope = (new[0][0], new[-1][1])
        log.warning(
            "%s",
            removed_warning(
                src.identifier, src.stream, src.subject, envelope, inferred=inferred, runs=new
            ),
        )

    def _check_gaps(
        self, followers: dict[str, TailFollower], *, final: bool = False, skips_only: bool = False
    ) -> None:
        """Find messages the stream removed (limits, purges, deletes) before the tail got them.

        JetStream keeps no record of what it removed, only which sequences it still holds. Each
        follower accounts for every sequence after its start (`TailFollower`): received, skipped
        between two received ones, or shown to hold nothing of its subject still to come;
        `check_followers` reports the skipped sequences the stream no longer holds (a stored
        one is another subject's) and the removed ones after the position once nothing of the
        subject is stored beyond it. A received message is never reported, and each sequence
        at most once. The unmapped subjects' ranges are each inferred table's (after its
        inferred start).

        Args:
            followers: the tables' own-subject followers.
            final: the read's end was reached (see `check_followers`).
            skips_only: classify the skips only (after each round that had some).
        """
        assert self._loop is not None
        loop = self._loop
        unmapped = self._unmapped
        horizon = self._horizon
        idents = list(followers)

        async def read() -> tuple[list[list[tuple[int, int]]], list[tuple[int, int]]]:
            js = await loop.js()
            own = await check_followers(
                js,
                [followers[i] for i in idents],
                [None if horizon is None else horizon[i] for i in idents],
                final=final,
                skips_only=skips_only,
                states=self._states,
            )
            theirs: list[tuple[int, int]] = []
            if unmapped is not None:
                theirs = await unmapped.check(final=final, skips_only=skips_only)
            return own, theirs

        own, theirs = loop.run(read())
        found = dict(zip(idents, own, strict=True))
        for _, src, _ in self.sources:
            runs = list(found.get(src.identifier, []))
            after = self.inferred_after.get(src.identifier)
            if after is not None:
                runs += [(max(lo, after + 1), hi) for lo, hi in theirs if hi > after]
            if runs:
                self._note_gaps(src, runs)
        if not skips_only:
            self._checks += 1
            self._checked_at = time.monotonic()

    def _follow_schemas(self, only: TailSource | None = None) -> list[TailSource]:
        """Have each table's tail decoder (or `only`'s) follow the table's current schema, as
        its writer does once it sees fresh metadata (live19: a replay across `lake table
        evolve --widen` kept the decoder it pinned and silently dropped the wider values the
        writer stored). One catalog query for the pointers; a table is loaded only when its
        pointer moved. Rejected messages kept from before are decoded again with the new
        schema: the ones it accepts are `schema_misses`.

        Returns:
            The sources whose schema changed.
        """
        sources = [src for _, src, _ in self.sources if only is None or src is only]
        catalog = self.engine.catalog
        try:
            pointers = catalog.metadata_pointers([src.identifier for src in sources])
            changed: list[TailSource] = []
            for src in sources:
                ident = src.identifier
                pointer = (pointers or {}).get(ident)
                if pointer is not None and pointer == self._pointers.get(ident):
                    continue
                table = catalog.load_table(ident)
                self._pointers[ident] = table.metadata_location
                before = src.schema_id
                if src.follow_schema(table):
                    log.info(
                        "live replay: %s schema changed (id %d -> %d): the tail is decoded with it",
                        ident,
                        before,
                        src.schema_id,
                    )
                    self._recheck_rejects(src, before)
                    changed.append(src)
        except LakeError as exc:  # the catalog is down: the next check looks again
            log.warning("live replay: checking the tables' schemas: %s", exc)
            return []
        return changed

    def _keep_rejects(self, src: TailSource, msgs: list[TailMessage]) -> None:
        kept = self._rejects.setdefault(src.identifier, [])
        room = max(0, MAX_KEPT_REJECTS - len(kept))
        kept.extend(msgs[:room])
        if len(msgs) > room:
            rest = msgs[room:]
            count, lo, hi = self._unkept_rejects.get(src.identifier, (0, rest[0].seq, 0))
            self._unkept_rejects[src.identifier] = (count + len(rest), lo, rest[-1].seq)

    def _recheck_rejects(self, src: TailSource, before: int) -> None:
        """Decode the kept rejected messages of `src` again with its new schema; count those
        whose events in the window it accepts, and the ones not kept (not decoded again), as
        `schema_misses`."""
        import pyarrow.compute as pc

        ident = src.identifier
        kept = self._rejects.pop(ident, [])
        unkept = self._unkept_rejects.pop(ident, None)
        again: list[int] = []
        rows, seqs = src.decode_with_seqs(kept, rejected=again)
        self._rejects[ident] = [kept[i] for i in again]
        if rows.num_rows:
            ts = rows.column("ts_event_ns")
            inside = pc.and_(
                pc.greater_equal(ts, self.engine.start_ns), pc.less(ts, self.engine.end_ns)
            )
            seqs = seqs[inside.fill_null(False).to_numpy(zero_copy_only=False)]
        accepted = sorted(set(seqs.tolist()))
        count = len(accepted)
        if unkept is not None:
            count += unkept[0]
            accepted += [unkept[1], unkept[2]]
        if not count:
            return
        lo, hi = min(accepted), max(accepted)
        miss = self.schema_misses.get(ident)
        if miss is None:
            miss = self.schema_misses[ident] = [count, lo, hi, before, src.schema_id]
        else:
            miss[0] += count
            miss[1], miss[2], miss[4] = min(miss[1], lo), max(miss[2], hi), src.schema_id
        log.warning("%s", _miss_warning(ident, miss))

    def stop(self) -> None:
        """End the tail at its next round (within `poll_seconds`), from any thread: a replay
        interrupted while the tail waits for arrivals on another thread (`aevents`)."""
        self._stopped.set()

    def events(self, history: Iterator[ReplayEvent]) -> Iterator[ReplayEvent]:
        """`history` (the engine's events), then the tail events of the window; a `stop()`
        from now on ends it (cleared here, not at the generator's first step: a stop that came
        before that step was lost, review16b).

        Args:
            history: the engine's pinned event stream (counted and hashed by the engine).

        Returns:
            History events, then tail events (see the module docstring for their order).
        """
        self._stopped.clear()
        return self._events(history)

    def _events(self, history: Iterator[ReplayEvent]) -> Iterator[ReplayEvent]:
        yield from history
        if not self.sources:
            return
        self._loop = NatsLoop(self.engine.catalog)
        try:
            yield from self._tail()
        finally:
            self._loop.close()
            self._loop = None

    def _tail(self) -> Iterator[ReplayEvent]:
        assert self._loop is not None
        loop = self._loop
        followers: dict[str, TailFollower] = {}

        async def fix_ends(js: Any) -> dict[str, int]:
            # Each stream's last sequence first (the horizon of the gap checks), then each
            # subject's newest message (where its follower stops): a message of the subject
            # between the two was removed before the second read.
            streams = sorted({src.stream for _, src, _ in self.sources})
            last = {s: int((await js.stream_info(s)).state.last_seq or 0) for s in streams}
            ends = {
                src.identifier: await last_subject_seq(js, src.stream, src.subject)
                for _, src, _ in self.sources
            }
            self._horizon = {
                src.identifier: max(last[src.stream], ends[src.identifier])
                for _, src, _ in self.sources
            }
            for ident, end in ends.items():
                if ident in followers:
                    # Messages beyond the end are not buffered; the first one ends the
                    # follower's subscription (a busy subject would keep it delivering).
                    followers[ident].end_at(end)
            return ends

        async def setup() -> dict[str, int] | None:
            js = await loop.js()
            streams = {src.stream for _, src, _ in self.sources}
            live = {s: await stream_identity(js, s) for s in sorted(streams)}
            for _, src, _ in self.sources:
                now = live[src.stream]
                problem = (
                    src.stream_mismatch(now.created, now.first_seq, now.last_seq) if now else None
                )
                if problem is not None:
                    # Its sequences are another stream's: the tail cannot continue the history.
                    raise TimeTravelError(f"live replay: {problem}")
            for _, src, _ in self.sources:
                followers[src.identifier] = TailFollower(js, src.stream, src.subject, src.watermark)
            ends = None if self.follow else await fix_ends(js)
            if self.inferred_after and self.inference is not None:
                after = min(self.inferred_after.values())
                self._unmapped = UnmappedFollower(js, self.inference.mapped, after, self._states)
                if self.follow:
                    await self._unmapped.discover()
                else:
                    await self._unmapped.fix_end()
            return ends

        async def poll(timeout: float) -> dict[str, list[TailMessage]]:
            # (A following read finds subjects that appear meanwhile in `_check_gaps`.)
            unmapped = self._unmapped
            polls = [f.poll(timeout) for f in followers.values()]
            if unmapped is not None:
                polls.append(unmapped.poll(timeout))
            got = await asyncio.gather(*polls)
            arrived = dict(zip(followers, got[: len(followers)], strict=True))
            if unmapped is not None:
                arrived[INFERRED_KEY] = got[-1]
            return arrived

        async def ends_now() -> dict[str, int]:
            js = await loop.js()
            if self._unmapped is not None:
                await self._unmapped.fix_end()
            return await fix_ends(js)

        async def close() -> None:
            for f in followers.values():
                await f.close()
            if self._unmapped is not None:
                await self._unmapped.close()

        stop_at = loop.run(setup())
        engine = self.engine
        engine.set_complete(False)
        end_wall_ns = self.engine.end_ns + seconds_ns(self.lateness_seconds)
        held: dict[str, list[TailMessage]] = {}  # the tail read so far, while `tail_sorted`
        held_bytes = 0
        try:
            while not self._stopped.is_set():
                if self.follow and stop_at is None and time.time_ns() >= end_wall_ns:
                    # The window is over: take what is stored now, then stop.
                    stop_at = loop.run(ends_now())
                # Everything up to the end handed out (a message received in the background
                # waits for the next poll), or shown to be nothing still to come (a follower
                # whose last message the stream removed is done once a check shows it).
                done = stop_at is not None and all(
                    followers[i].reached(stop_at.get(i, 0)) for i in followers
                )
                if done and (self._unmapped is None or self._unmapped.done()):
                    self._follow_schemas()  # the last round's decoders are the tables' own
                    if held:
                        yield from self._round(held, stop_at)
                        held = {}
                    # What was removed since the last check, up to the horizon.
                    self._check_gaps(followers, final=True)
                    # Events a schema change accepts that this replay rejected are missing.
                    engine.set_complete(not self.schema_misses)
                    return
                # What was handed out is readable while this waits (a pipe, a file).
                engine.waiting()
                arrived = loop.run(poll(self.poll_seconds))
                if self.tail_sorted:
                    for key, msgs in arrived.items():
                        held.setdefault(key, []).extend(msgs)
                        held_bytes += sum(len(m.data) for m in msgs)
                    if held_bytes > SORTED_TAIL_BYTES:
                        log.warning(
                            "live replay: the tail holds more than %d MiB; it is handed out in "
                            "arrival rounds (each sorted), not sorted whole",
                            SORTED_TAIL_BYTES >> 20,
                        )
                        self.tail_sorted = False
                        arrived, held = held, {}
                if not self.tail_sorted:
                    yield from self._round(arrived, stop_at)
                if not self._checks or (
                    time.monotonic() - self._checked_at >= REMOVAL_CHECK_SECONDS
                ):
                    self._check_gaps(followers)
                    if self.follow:
                        self._follow_schemas()
                elif any(f.skips for f in followers.values()) or (
                    self._unmapped is not None and self._unmapped.has_skips()
                ):
                    # Soon after they were received: other subjects' messages between them
                    # are told apart from removed ones while the stream still holds them.
                    self._check_gaps(followers, skips_only=True)
        finally:
            loop.run(close())
            self._unmapped = None

    def _round(
        self, arrived: dict[str, list[TailMessage]], stop_at: dict[str, int] | None
    ) -> Iterator[ReplayEvent]:
        import pyarrow.compute as pc

        from iceberg_lake.timetravel.replay.events import ReplayEvent

        lo, hi = self.engine.start_ns, self.engine.end_ns
        unmapped = arrived.get(INFERRED_KEY, [])
        inferred_stop = self._unmapped.stop if self._unmapped is not None else None
        if inferred_stop is not None:
            unmapped = [m for m in unmapped if m.seq <= inferred_stop]
        if unmapped:
            self.inferred_last_seq = unmapped[-1].seq
        keyed: list[tuple[tuple[Any, ...], ReplayEvent]] = []
        for index, src, replay_src in self.sources:
            msgs = arrived.get(src.identifier, [])
            if stop_at is not None:
                msgs = [m for m in msgs if m.seq <= stop_at.get(src.identifier, 0)]
            parts: list[pa.Table] = []
            if msgs:
                rng = self.tail_ranges.setdefault(src.identifier, [msgs[0].seq, msgs[-1].seq])
                rng[1] = msgs[-1].seq
                rejected: list[int] = []
                rows = src.decode_with_seqs(msgs, rejected=rejected)[0]
                if rejected and self._follow_schemas(src):
                    # The table's schema changed (a widen): its writer decodes these with it.
                    rejected = []
                    rows = src.decode_with_seqs(msgs, rejected=rejected)[0]
                if rejected:
                    self._keep_rejects(src, [msgs[i] for i in rejected])
                parts.append(rows)
            after = self.inferred_after.get(src.identifier)
            if after is not None and unmapped:
                mine = [m for m in unmapped if m.seq > after]
                # Rows schema inference routes here (the writer's InferredDecoder; messages it
                # routes to other tables or rejects give no rows here).
                parts.append(src.decode_with_seqs(mine, decoder=src.inferred)[0])
            parts = [p for p in parts if p.num_rows]
            if not parts:
                continue
            rows = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            ts = rows.column("ts_event_ns")
            mask = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
            rows = rows.filter(mask)
            if rows.num_rows == 0:
                continue
            # The replay key (`ASC NULLS FIRST`, as the engine's reads).
            order = [(c, "ascending", "at_start") for c in replay_src.order]
            rows = rows.sort_by(order).select(list(replay_src.columns))
            # The engine's canonical encoding: tail events hash and compare like history ones.
            payloads = encode_rows(rows).cast(pa.binary()).to_pylist()
            subject = src.definition.subject or src.identifier
            for n, (payload, ts_ns) in enumerate(
                zip(payloads, rows.column("ts_event_ns").to_pylist(), strict=True)
            ):
                event = ReplayEvent(src.identifier, subject, payload, ts_ns)
                keyed.append(((ts_ns, index, n), event))
        keyed.sort(key=lambda item: item[0])
        self.rounds += 1
        engine = self.engine
        for _, event in keyed:
            self.tail_events += 1
            # The engine's manifest counts and hashes the tail like the history.
            engine.record_event(event)
            yield event


def _miss_warning(table: str, miss: list[int]) -> str:
    """The warning line of `LiveTail.schema_misses[table]`."""
    count, lo, hi, before, after = miss
    return (
        f"{table}: {count:,} tail messages (seq {lo}..{hi}) that this replay decoded with "
        f"schema {before} and rejected are accepted by schema {after}, which the table got "
        "during the replay: the writer stores their events if it decided them after the "
        "change, and this replay does not have them (replay the committed window for them)"
    )
