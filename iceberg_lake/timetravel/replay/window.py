"""The window pipeline of a replay: read windows of the pinned tables, merged in replay order,
encoded and hashed (one pipeline behind every output of `ReplayEngine`).

How it runs. The window is cut into read windows: whole UTC hours, grouped while the rows they
hold (estimated from the pinned files' statistics, all tables) stay under `window_rows` (400k),
so sparse data costs few reads and dense data is read hour by hour. For each window, every
table's rows are read and put in replay order (`PinnedSource`, one thread per table). Tables are
merged by one stable argsort of the concatenated event times (table order breaks ties, the
within-table order is kept). Each row's canonical JSON is written by a compiled kernel
(`iceberg_lake.timetravel.canonical`), every event is copied once into its frame in merged
order, and the sequence hash is one SHA-256 update over the window's frames, on a hash thread
(in window order) while the next window is read; for `batches()` and `table_batches()`, which
hand out no payloads, the framing runs on the hash thread too (its failure is raised by the
window two after it, or at the end). A background thread prepares the next window while the
current one is consumed (two threads and the next two windows when the replay does not encode:
`verify=False`). Day-partitioned tables (greeks) are read once per day and sliced by window.

Bounded memory: at most two read windows (the current and the prefetched one; three without
encoding; each about `window_rows` rows: sparse hours are grouped, dense hours split into time
slices) plus one day of a day-partitioned table (two at a day boundary without encoding) are
held, never the whole replay window; the encoding buffers (one per hour-partitioned table, two
where `batches()` frames a window while the next is encoded, and two for frames) are sized to
the largest window, reused, and released when the replay ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine.duck import connect as duck_connect
from iceberg_lake.engine.duck import set_resources
from iceberg_lake.timetravel.canonical import Scratch, encode_rows_raw, frame_rows, warm_up
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.replay.source import NS_PER_DAY, NS_PER_HOUR, PinnedSource

__all__ = ["Part", "Window", "WindowPipeline"]

#: Windows prepared ahead of the consumer when the replay does not encode (`windows`).
_AHEAD_UNENCODED = 2


@dataclass
class Part:
    """One table's rows of one window, in replay order, with their canonical JSON."""

    index: int
    #: The rows as read (not in replay order: `perm` orders them).
    rows: pa.Table
    #: Canonical JSON of every row of `rows` (`encode_rows_raw`: offsets, bytes), in `rows`
    #: order; None when the replay does not encode (`batches(verify=False)`).
    payloads: tuple[np.ndarray, np.ndarray] | None
    ts: np.ndarray
    #: Positions into `rows` of the part's events in replay order.
    perm: np.ndarray


@dataclass
class Window:
    """One merged window: the parts and the permutation that interleaves them."""

    lo: int
    hi: int
    parts: list[Part]
    #: Positions into the concatenation of the parts, in replay order (None: one part).
    order: np.ndarray | None
    #: Source index of every merged row.
    sources: np.ndarray
    count: int
    #: Canonical JSON of every row, in replay order.
    payloads: pa.Array | None = None
    #: Event time of every row, in replay order.
    ts: np.ndarray | None = None
    #: The part (index into `parts`) of every row, in replay order.
    part_of: np.ndarray | None = None
    #: The row (in its part's `rows`) of every row, in replay order.
    rowpos: np.ndarray | None = None


class WindowPipeline:
    """The read windows of a replay's pinned tables, merged in replay order, with the count,
    per-table counts and sequence hash of what was handed out (for the manifest).

    Each `windows()` iteration starts from the beginning and recomputes the count and hash.

    Args:
        catalog: the lake catalog (DuckDB reads through `iceberg_scan` use its settings).
        sources: the tables in tie-break order, each with its pinned snapshot (shared with the
            engine: `from_manifest` clears a pin on them).
        start_ns: inclusive start of the event-time window (Unix ns).
        end_ns: exclusive end of the window.
        window_rows: rows (estimated from file statistics, all tables) per read window.
        prefetch: prepare the next window on a background thread.
    """

    def __init__(
        self,
        catalog: LakeCatalog,
        sources: list[PinnedSource],
        start_ns: int,
        end_ns: int,
        *,
        window_rows: int,
        prefetch: bool,
    ) -> None:
        self.catalog = catalog
        self.sources = sources
        self.tables = [s.identifier for s in sources]
        self.start_ns, self.end_ns = start_ns, end_ns
        self.window_rows = window_rows
        self.prefetch = prefetch
        self._stats_lock = threading.Lock()
        self.reset()

    def record(self, table: str, payload: bytes) -> None:
        """Count and hash one event delivered after the windows (the live tail), exactly as
        the windows' own events are counted and hashed."""
        self.count += 1
        self.per_table[table] += 1
        self.digest.update(table.encode() + b"\x1f" + payload + b"\n")

    def sequence_hash(self) -> str | None:
        """`sha256:<hex>` over every event handed out so far (None: the iteration does not
        encode)."""
        return "sha256:" + self.digest.hexdigest() if self.encoding else None

    def reset(self) -> None:
        """Start an iteration afresh: no events counted, a new hash, new buffers."""
        self.count = 0
        self.complete = False
        #: Every window handed out: from here the hash covers exactly what was delivered
        #: (before, the hash thread runs windows ahead of the consumer).
        self.windows_done = False
        self.per_table: dict[str, int] = dict.fromkeys(self.tables, 0)
        self.digest = hashlib.sha256()
        #: Whether the current iteration encodes and hashes (`batches(verify=False)` does not).
        self.encoding = True
        #: Whether windows carry each event's payload (`batches()` needs only the hash).
        self._bare = True
        #: The frames of the windows being hashed: two buffers used in turn, so one window is
        #: framed while the previous one is hashed on `_hasher` (frames are hashed, then dropped).
        self._frame_scratch = (Scratch(), Scratch())
        self._frame_turn = 0
        self._hashing: list[Future[None] | None] = [None, None]
        #: One thread that updates the sequence hash in window order (None: in `_prepare`).
        self._hasher: ThreadPoolExecutor | None = None
        #: DuckDB reads (one per table and time partition) and the largest (rows): evidence of
        #: bounded memory.
        self.partition_reads = 0
        self.max_partition_rows = 0

    def _plan(self) -> tuple[list[tuple[int, int]], list[set[int]]]:
        """The read windows, and each source's partitions that hold data.

        Windows are whole UTC hours, grouped while their estimated rows (all tables) stay under
        `window_rows`, so sparse data is read in few queries and dense data hour by hour; an hour
        holding more is split into equal time slices. A window never crosses midnight when a
        day-partitioned table takes part (its day is read once and sliced).
        """
        planned = [s.buckets(self.start_ns, self.end_ns) for s in self.sources]
        per_hour: dict[int, float] = {}
        for source, found in zip(self.sources, planned, strict=True):
            for b, rows in found.items():
                lo = max(self.start_ns, b)
                hi = min(self.end_ns, b + source.bucket_ns)
                hours = range(lo - lo % NS_PER_HOUR, hi, NS_PER_HOUR)
                for h in hours:
                    per_hour[h] = per_hour.get(h, 0.0) + rows / len(hours)
        by_day = any(s.bucket_ns == NS_PER_DAY for s in self.sources)
        windows: list[tuple[int, int]] = []
        rows_in = 0.0
        for h in sorted(per_hour):
            same_day = not by_day or (windows and windows[-1][0] // NS_PER_DAY == h // NS_PER_DAY)
            if windows and same_day and rows_in + per_hour[h] <= self.window_rows:
                windows[-1] = (windows[-1][0], h + NS_PER_HOUR)
                rows_in += per_hour[h]
            else:
                windows.append((h, h + NS_PER_HOUR))
                rows_in = per_hour[h]
        spans: list[tuple[int, int]] = []
        for lo, hi in windows:
            lo, hi = max(self.start_ns, lo), min(self.end_ns, hi)
            rows = sum(per_hour.get(h, 0.0) for h in range(lo - lo % NS_PER_HOUR, hi, NS_PER_HOUR))
            # An hour denser than window_rows is read in equal slices of event time (the
            # `ts_event_ns` filter is exact; row-group statistics keep the reads narrow).
            pieces = max(1, min(60, -(-int(rows) // self.window_rows)))
            edges = [lo + (hi - lo) * k // pieces for k in range(pieces + 1)]
            spans.extend(zip(edges[:-1], edges[1:], strict=True))
        return spans, [set(found) for found in planned]

    def _read(
        self, con: duckdb.DuckDBPyConnection, source: PinnedSource, lo: int, hi: int, turn: int
    ) -> Part:
        with catalog_errors(f"replaying {source.identifier}"):
            if source.files is not None and source.arrow_schema is not None:
                rows = source.read_files(lo, hi)
            else:
                rows = con.execute(source.read_sql(lo, hi)).arrow().read_all()
        with self._stats_lock:
            self.partition_reads += 1
            self.max_partition_rows = max(self.max_partition_rows, rows.num_rows)
        rows = rows.combine_chunks()
        order = source.replay_order(con, rows)
        ts = rows.column("ts_event_ns").to_numpy()
        perm = np.arange(len(ts)) if order is None else order
        # Encoded as read; the merge copies each payload once, in replay order (`frame_rows`).
        # An hour-partitioned table's payloads are needed only until this window is framed, so
        # its buffers are reused (this window's turn); a day's are cached.
        # Only `batches()` frames a window after the next one is encoded (on the hash thread):
        # the other outputs frame it at once and need one buffer.
        deferred = self._hasher is not None and not self._bare
        buffer = source.scratches[turn if deferred else 0]
        scratch = buffer if source.bucket_ns == NS_PER_HOUR else None
        payloads = encode_rows_raw(rows, scratch=scratch) if self.encoding else None
        if order is not None:
            ts = ts[order]
        return Part(self.sources.index(source), rows, payloads, ts, perm)

    def _part(
        self,
        con: duckdb.DuckDBPyConnection,
        index: int,
        buckets: set[int],
        lo: int,
        hi: int,
        turn: int,
    ) -> Part | None:
        source = self.sources[index]
        if source.bucket_ns == NS_PER_HOUR:
            first = lo - lo % NS_PER_HOUR
            if not any(b in buckets for b in range(first, hi, NS_PER_HOUR)):
                return None
            return self._read(con, source, lo, hi, turn)
        bucket = lo - lo % source.bucket_ns
        if bucket not in buckets:
            return None
        # Coarser partitions (day): read the partition once, hand out hour slices.
        with source.cache_lock:
            if source.day_cache is None or source.day_cache[0] != bucket:
                source.day_cache = None  # release the previous day before reading the next
                whole = self._read(
                    con,
                    source,
                    max(self.start_ns, bucket),
                    min(self.end_ns, bucket + source.bucket_ns),
                    turn,
                )
                source.day_cache = (bucket, whole)
            whole = source.day_cache[1]
        a, b = np.searchsorted(whole.ts, [lo, hi], side="left")
        if a == b:
            return None
        return Part(index, whole.rows, whole.payloads, whole.ts[a:b], whole.perm[a:b])

    def _prepare(
        self,
        cursors: list[duckdb.DuckDBPyConnection],
        buckets: list[set[int]],
        lo: int,
        hi: int,
        pool: ThreadPoolExecutor | None,
    ) -> Window:
        indexes = range(len(self.sources))
        # Windows use the encoding and frame buffers in turn; the turn's previous window must be
        # framed and hashed before its buffers are written again.
        turn, self._frame_turn = self._frame_turn, self._frame_turn ^ 1
        earlier = self._hashing[turn]
        if earlier is not None:
            earlier.result()
        if pool is None:
            found = [self._part(cursors[i], i, buckets[i], lo, hi, turn) for i in indexes]
        else:
            # Tables are read, ordered and encoded in parallel (DuckDB and Arrow release the GIL).
            futures = [
                pool.submit(self._part, cursors[i], i, buckets[i], lo, hi, turn) for i in indexes
            ]
            found = [f.result() for f in futures]
        parts = [p for p in found if p is not None and len(p.ts)]
        if not parts:
            return Window(lo, hi, [], None, np.empty(0, np.int8), 0)
        if len(parts) == 1:
            # Single table: already in order, no merge.
            order = None
            sources = np.full(len(parts[0].ts), parts[0].index, dtype=np.int8)
            ts = parts[0].ts
            part_of = np.zeros(len(ts), dtype=np.int64)
            rowpos = parts[0].perm
        else:
            lengths = [len(p.ts) for p in parts]
            ts = np.concatenate([p.ts for p in parts])
            # Stable: equal times keep the concatenation order = table order, then row order.
            order = np.argsort(ts, kind="stable")
            ts = ts[order]
            part_of = np.repeat(np.arange(len(parts)), lengths)[order]
            sources = np.array([p.index for p in parts], dtype=np.int8)[part_of]
            rowpos = np.concatenate([p.perm for p in parts])[order]
        if not self.encoding:
            return Window(lo, hi, parts, order, sources, len(sources), None, ts, part_of, rowpos)

        # One copy of every event's bytes, in replay order, and one hash update over them, on
        # the hash thread (in window order) while the next window is read. Without payloads to
        # hand out (`batches()`), the copy is made there too.
        def frame() -> tuple[np.ndarray, pa.Array | None]:
            return frame_rows(
                [p.payloads for p in parts if p.payloads is not None],
                [self.sources[p.index].prefix for p in parts],
                part_of,
                rowpos,
                bare=self._bare,
                scratch=self._frame_scratch[turn],
            )

        def frame_and_hash() -> None:
            self.digest.update(frame()[0].data)

        payloads = None
        if self._hasher is None:
            framed, payloads = frame()
            self.digest.update(framed.data)
        elif self._bare:
            framed, payloads = frame()
            self._hashing[turn] = self._hasher.submit(self.digest.update, framed.data)
        else:
            self._hashing[turn] = self._hasher.submit(frame_and_hash)
        return Window(lo, hi, parts, order, sources, len(sources), payloads, ts, part_of, rowpos)

    def windows(self, encode: bool = True, bare: bool = True) -> Generator[Window, None, None]:
        """Every read window in order, the next one prepared while the current is consumed.

        Args:
            encode: build each event's canonical JSON and the sequence hash (False: rows only,
                the manifest then has no hash).
            bare: give each window its events' payloads (`Window.payloads`); False: the hash
                only.
        """
        self.reset()
        self.encoding = encode
        self._bare = encode and bare
        for source in self.sources:
            source.day_cache = None
        if encode:
            # Here, not at the first window: a build that is missing and cannot be made is
            # one error before any read.
            warm_up()
        windows, buckets = self._plan()
        pinned = [s for s in self.sources if s.snapshot_id is not None]
        con = duck_connect(extensions=())
        set_resources(con, self.catalog.settings)
        for source in pinned:
            if source.files is not None and source.arrow_schema is None:
                source.arrow_schema = source.simple_arrow_schema(con)
        if any(s.files is None or s.arrow_schema is None for s in pinned):
            # Some table is read (or typed) through `iceberg_scan`. Otherwise DuckDB only orders
            # equal event times, which needs no Iceberg extension (~0.3 CPU-s to load).
            con.close()
            con = Lake(self.catalog).connect()
        for source in pinned:
            if source.files is not None and source.arrow_schema is None:
                # DuckDB's types for this table's rows (one metadata read per replay).
                sql = source.read_sql(self.start_ns, self.start_ns + 1) + " LIMIT 0"
                with catalog_errors(f"replaying {source.identifier}"):
                    source.arrow_schema = con.execute(sql).arrow().schema
        # Windows prepared ahead of the consumer. Without encoding, two: the next window's
        # reads fill the cores while the one before it waits for its slowest table and merges
        # (a window's rows are all that is held). Encoding keeps one, since a window's encoding
        # and frame buffers are reused two windows later.
        depth = 1 if encode else _AHEAD_UNENCODED
        # One set of DuckDB cursors (one per table) per window being prepared, checked out for
        # the whole preparation: a cursor holds one result, so two windows must never share one
        # (with two threads, the windows running at once are not always neighbours).
        cursors = [[con.cursor() for _ in self.sources] for _ in range(depth)]
        free: queue.SimpleQueue[list[duckdb.DuckDBPyConnection]] = queue.SimpleQueue()
        for per_window in cursors:
            free.put(per_window)
        pool = ThreadPoolExecutor(depth, thread_name_prefix="replay") if self.prefetch else None
        parts_pool = (
            ThreadPoolExecutor(min(3, len(self.sources)), thread_name_prefix="replay-table")
            if self.prefetch and len(self.sources) > 1
            else None
        )
        if self.prefetch and encode:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="replay-hash")
        pending: deque[Future[Window]] = deque()
        try:

            def prepare(i: int) -> Window:
                lo, hi = windows[i]
                mine = free.get()  # one of `depth` sets; at most `depth` windows run at once
                try:
                    return self._prepare(mine, buckets, lo, hi, parts_pool)
                finally:
                    free.put(mine)

            for i in range(len(windows)):
                if pool is None:
                    window = prepare(i)
                else:
                    ahead = range(i + len(pending), min(len(windows), i + depth + 1))
                    pending.extend(pool.submit(prepare, k) for k in ahead)
                    window = pending.popleft().result()
                if window.count:
                    yield window
                    self.count += window.count
                    for part in window.parts:
                        self.per_table[self.tables[part.index]] += len(part.ts)
            for hashing in self._hashing:
                if hashing is not None:
                    hashing.result()
            self.complete = self.windows_done = True
        finally:
            for future in pending:
                future.cancel()
            for executor in (pool, parts_pool, self._hasher):
                if executor is not None:
                    executor.shutdown(wait=True)
            self._hasher = None
            for source in self.sources:
                source.day_cache = None
                source.scratches = (Scratch(), Scratch())  # release the encoding buffers
            self._frame_scratch = (Scratch(), Scratch())
            for cursor in (c for per_window in cursors for c in per_window):
                cursor.close()
            con.close()

    async def awindows(self) -> AsyncIterator[Window]:
        """`windows()` for asyncio code: each window is prepared on a worker thread."""
        windows = self.windows()
        done = object()
        try:
            while True:
                window = await asyncio.to_thread(next, windows, done)
                if window is done:
                    return
                assert isinstance(window, Window)
                yield window
        finally:
            await asyncio.to_thread(windows.close)
