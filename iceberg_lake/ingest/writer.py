"""One writer per durable consumer: fetch → decode → micro-batch → Iceberg commit → ack.

Exactly-once: every append is ONE transaction that also sets the table property
`lake.watermark.<stream>.<consumer>` to the last stream sequence of the flush (and, on the last
commit of the flush, `lake.position.<stream>.<consumer>`). On start (and after a lost delivery or
a NATS reconnect) the writer recreates its consumer at max(position) + 1 and skips redelivered
messages at or below the table's watermark (dead letters: the quarantine table's watermark). The
properties survive snapshot expiry and other components' commits, so the position is found no
matter what happened to the table since.

Order of a flush: dead letters first, then each target table; ack (AckAll on the last message)
only after every commit succeeded. Errors are retried forever with exponential backoff and
jitter, on refreshed tables; nothing is acked meanwhile, so the bus keeps the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.config import Settings
from iceberg_lake.engine.iceberg import fast_path_applies, watermarked_append
from iceberg_lake.engine.nats import (
    INFERRED_TARGET,
    consumer_target,
    dead_letter_subject,
    reset_consumer,
)
from iceberg_lake.ingest import dead_letters
from iceberg_lake.ingest.batch import MicroBatch
from iceberg_lake.ingest.dead_letters import DeadLetter, dead_letter_table
from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.ingest.pull import BatchPuller
from iceberg_lake.ingest.routing import (
    UNROUTED,
    BronzeDecoder,
    Decoder,
    GoldDecoder,
    InferredDecoder,
    RoutedBatch,
    decode_chunked,
)
from iceberg_lake.ops import metrics
from iceberg_lake.ops.maintenance import expire_inline
from iceberg_lake.tables import DEAD_LETTERS_TABLE, GOLD

if TYPE_CHECKING:
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

#: Messages asked for per fetch (bounded by the free buffer space).
FETCH_BATCH = 5000
#: Backoff between failed commit attempts.
BACKOFF_MIN_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 10.0
#: Minimum seconds between two schema checks triggered by unknown fields.
SCHEMA_CHECK_SECONDS = 1.0


def _reply_seqs(reply: str) -> tuple[int, int]:
    """(stream sequence, delivery sequence) from a JetStream ack subject."""
    t = reply.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(t[5]), int(t[6])
    return int(t[7]), int(t[8])  # $JS.ACK.<domain>.<acc>.<stream>.<consumer>.<dlv>.<sseq>...


class ConsumerWriter:
    """The writer behind one durable consumer (one Bronze table, Gold, or schema inference).

    Args:
        settings: batch sizes/intervals, buffer bound, snapshot retention, catalog.
        target: a Bronze/Gold table identifier, or `INFERRED_TARGET`.
        js: JetStream context.
        flush_when_drained: also flush as soon as a fetch finds no more messages (used when
            running until idle, so the last partial batch does not wait for the timer).
    """

    def __init__(
        self,
        settings: Settings,
        target: str,
        js: JetStreamContext,
        *,
        flush_when_drained: bool = False,
    ) -> None:
        self.settings = settings
        self.target = target
        self.js = js
        self.stream, self.consumer, self.filter_subject = consumer_target(target)
        gold = target.startswith(GOLD + ".")
        self.batch_size = settings.gold_batch_size if gold else settings.bronze_batch_size
        self.batch_seconds = settings.gold_batch_seconds if gold else settings.bronze_batch_seconds
        self.retention = (
            settings.gold_snapshot_retention_seconds
            if gold
            else settings.bronze_snapshot_retention_seconds
        )
        self.flush_when_drained = flush_when_drained
        self.catalog = LakeCatalog(settings)
        if target == INFERRED_TARGET:
            self.target_ids = [d.identifier for d in self.catalog.registry.in_namespace("bronze")]
            self.target_ids = [t for t in self.target_ids if self.catalog.registry.get(t).subject]
        else:
            self.target_ids = [target]
        self.wm_key = f"{properties.WATERMARK_PREFIX}{self.stream}.{self.consumer}"
        self.pos_key = f"{properties.POSITION_PREFIX}{self.stream}.{self.consumer}"
        self.tables: dict[str, Table] = {}
        self.codecs: dict[str, TableCodec] = {}
        self.decoder: Decoder | None = None
        self.watermarks: dict[str, int] = {}
        self.position = 0
        self.batch = MicroBatch()
        self.psub: Any = None
        self.commit_task: asyncio.Task[None] | None = None
        self.max_sseq = 0
        self.max_dseq = 0
        self.reset_needed = False
        self.drained = False
        self.committed_events = 0
        self.commit_latencies: list[float] = []
        self._arrow_schemas: dict[tuple[str, int], pa.Schema] = {}
        self._last_expire: dict[str, float] = {}
        self._last_schema_check = 0.0
        self._unknown_logged: set[tuple[str, str]] = set()
        self._stopping = False
        self._needs_refresh = False

    # ---- start ----------------------------------------------------------------------------------

    def _load(self) -> None:
        """Load the target tables and the quarantine table, their watermarks and positions."""
        for tid in [*self.target_ids, DEAD_LETTERS_TABLE]:
            self.tables[tid] = self.catalog.load_table(tid)
        self._build_codecs()
        positions = [0]
        for tid, table in self.tables.items():
            props = table.properties
            self.watermarks[tid] = int(props.get(self.wm_key, 0))
            positions.append(int(props.get(self.pos_key, 0)))
        self.position = max(positions)

    def _build_codecs(self) -> None:
        for tid in self.target_ids:
            definition = self.catalog.registry.get(tid)
            schema = self.tables[tid].schema()
            codec = self.codecs.get(tid)
            if codec is None or codec.schema_id != schema.schema_id:
                self.codecs[tid] = TableCodec(tid, schema, definition.partition_key)
        self._rebuild_decoder()

    async def start(self) -> None:
        """Load tables and watermarks, then recreate the consumer at the committed position."""
        await asyncio.to_thread(self._load)
        await self._resubscribe()
        log.info(
            "writer %s: consumer %s on %s (%s) from stream seq %d",
            self.target,
            self.consumer,
            self.stream,
            self.filter_subject,
            self.position + 1,
        )

    async def _resubscribe(self) -> None:
        if self.psub is not None:
            with contextlib.suppress(Exception):
                await self.psub.close()
            self.psub = None
        await reset_consumer(self.js, self.target, self.position + 1)
        puller = BatchPuller(self.js._nc, self.stream, self.consumer)
        await puller.start()
        self.psub = puller
        self.max_sseq = self.position
        self.max_dseq = 0

    async def close(self) -> None:
        """Unsubscribe the pull subscription (the consumer stays)."""
        if self.psub is not None:
            with contextlib.suppress(Exception):
                await self.psub.close()
            self.psub = None

    def request_reset(self) -> None:
        """Drop the uncommitted batch and re-read from the committed position (lost delivery)."""
        self.reset_needed = True

    # ---- main loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then flush, commit and ack what is buffered."""
        limit = self.settings.max_buffered_events
        while not stop.is_set():
            if self.reset_needed:
                await self._wait_commit()
                log.warning("writer %s: lost delivery detected, re-reading", self.target)
                self.batch = MicroBatch()
                self.reset_needed = False
                try:
                    await self._resubscribe()
                except Exception as exc:  # NATS down: try again shortly
                    log.warning("writer %s: resubscribe failed: %s", self.target, exc)
                    self.reset_needed = True
                    await asyncio.sleep(1.0)
                continue
            if self.batch.events >= limit:
                # Backpressure: stop fetching until the running commit frees the buffer.
                if self.commit_task is not None:
                    await self._wait_commit()
                self._maybe_flush(force=True)
                await asyncio.sleep(0)
                continue
            timeout = 1.0
            if self.batch.messages:
                timeout = min(1.0, max(0.05, self.batch_seconds - self.batch.age()))
            want = max(1, min(FETCH_BATCH, limit - self.batch.events))
            try:
                msgs = await self.psub.fetch(want, timeout)
            except Exception as exc:  # connection closed/reconnecting, consumer deleted
                log.debug("writer %s: fetch failed: %s", self.target, exc)
                msgs = []
                await asyncio.sleep(0.2)
            self.drained = not msgs
            if msgs:
                await self._ingest(msgs)
                if self.reset_needed:
                    continue
            self._maybe_flush(force=self.drained and self.flush_when_drained)
            metrics.BUFFER_EVENTS.labels(self.consumer).set(self.batch.events)
            await asyncio.sleep(0)
        self._stopping = True
        await self._wait_commit()
        self._maybe_flush(force=True)
        await self._wait_commit()
        metrics.BUFFER_EVENTS.labels(self.consumer).set(0)

    def idle(self) -> bool:
        """True when nothing is buffered or committing and the last fetch found nothing."""
        return (
            self.batch.messages == 0
            and (self.commit_task is None or self.commit_task.done())
            and self.drained
            and not self.reset_needed
        )

    async def consumer_state(self) -> tuple[int, int]:
        """(num_pending, num_ack_pending) of the consumer; also updates the lag metric."""
        info = await self.js.consumer_info(self.stream, self.consumer)
        metrics.CONSUMER_LAG.labels(self.consumer).set(info.num_pending or 0)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    # ---- ingest ---------------------------------------------------------------------------------

    async def _ingest(self, msgs: list[Any]) -> None:
        """Decode a fetch into the micro-batch (on the event loop; I/O only for schema checks)."""
        recv_ns = time.time_ns()
        keep: list[Any] = []
        seqs: list[int] = []
        for m in msgs:
            sseq, dseq = _reply_seqs(m.reply)
            if dseq > self.max_dseq + 1:
                # A delivery never reached us (connection loss): committing past it would lose
                # it, so drop the uncommitted batch and re-read from the committed position.
                self.reset_needed = True
                return
            if dseq > self.max_dseq:
                self.max_dseq = dseq
            if sseq <= self.max_sseq:
                continue  # redelivery of a message already buffered or committed
            self.max_sseq = sseq
            keep.append(m)
            seqs.append(sseq)
        if not keep:
            return
        self.batch.add_messages(len(keep), seqs[0], seqs[-1], keep[-1])
        floor = min(
            [self.watermarks.get(DEAD_LETTERS_TABLE, 0)]
            + [self.watermarks.get(t, 0) for t in self.target_ids]
        )
        if seqs[0] <= floor:
            fresh = [i for i, s in enumerate(seqs) if s > floor]
            metrics.SKIPPED.labels(self.consumer).inc(len(seqs) - len(fresh))
            keep = [keep[i] for i in fresh]
            seqs = [seqs[i] for i in fresh]
            if not keep:
                return
        bodies = [m.data for m in keep]
        subjects = [m.subject for m in keep]
        assert self.decoder is not None
        routed: RoutedBatch = decode_chunked(self.decoder, bodies, subjects, recv_ns)
        if routed.unknown_fields and await self._schema_changed():
            # A migration added the fields: decode the same messages again with the new schema.
            routed = decode_chunked(self.decoder, bodies, subjects, recv_ns)
        seq_arr = np.asarray(seqs, dtype=np.int64)
        for tid, decoded in routed.tables.items():
            rows = decoded.table
            wm = self.watermarks.get(tid, 0)
            if rows.num_rows and wm >= seqs[0]:
                mask = seq_arr[decoded.row_message] > wm
                rows = rows.filter(pa.array(mask))
            metrics.EVENTS_CONSUMED.labels(tid).inc(rows.num_rows)
            self.batch.add_rows(tid, rows)
        dl_wm = self.watermarks.get(DEAD_LETTERS_TABLE, 0)
        for d in dead_letters.from_routed(routed, keep, seqs, self.stream, recv_ns, dl_wm):
            self.batch.dead.append(d)
            metrics.EVENTS_CONSUMED.labels(d.target_table).inc()
        for (tid, name), count in routed.unknown_fields.items():
            metrics.UNKNOWN_FIELDS.labels(tid, name).inc(count)
            if (tid, name) not in self._unknown_logged:
                self._unknown_logged.add((tid, name))
                log.warning("%s has no column '%s': the field is dropped from its rows", tid, name)

    async def _schema_changed(self) -> bool:
        """Messages carried fields the table lacks: reload the schemas (at most once a second),
        since a migration may just have added them. True if a schema changed."""
        now = time.monotonic()
        if now - self._last_schema_check < SCHEMA_CHECK_SECONDS:
            return False
        self._last_schema_check = now
        try:
            return await asyncio.to_thread(self._reload_schemas)
        except Exception as exc:
            log.debug("schema check failed: %s", exc)
            return False

    def _reload_schemas(self) -> bool:
        changed = False
        for tid in self.target_ids:
            fresh = self.catalog.load_table(tid).schema()
            if fresh.schema_id != self.codecs[tid].schema_id:
                changed = True
                log.info("%s: schema changed (id %d), writer follows", tid, fresh.schema_id)
                definition = self.catalog.registry.get(tid)
                self.codecs[tid] = TableCodec(tid, fresh, definition.partition_key)
        if changed:
            # The Table objects used by commits are refreshed before their next commit.
            self._needs_refresh = True
            self._rebuild_decoder()
        return changed

    def _rebuild_decoder(self) -> None:
        if self.target == INFERRED_TARGET:
            by_schema = {
                self.catalog.registry.get(t).schema_name: self.codecs[t] for t in self.target_ids
            }
            mapped = {self.catalog.registry.get(t).subject for t in self.target_ids}
            self.decoder = InferredDecoder(by_schema, mapped)
        elif self.target.startswith(GOLD + "."):
            self.decoder = GoldDecoder(self.codecs[self.target])
        else:
            self.decoder = BronzeDecoder(self.codecs[self.target])

    # ---- flush and commit -----------------------------------------------------------------------

    def _maybe_flush(self, force: bool = False) -> None:
        batch = self.batch
        if batch.messages == 0:
            return
        due = force or batch.events >= self.batch_size or batch.age() >= self.batch_seconds
        if not due or (self.commit_task is not None and not self.commit_task.done()):
            return
        self.batch = MicroBatch()
        self.commit_task = asyncio.create_task(self._commit(batch))

    async def _wait_commit(self) -> None:
        if self.commit_task is not None:
            await self.commit_task
            self.commit_task = None

    async def _commit(self, batch: MicroBatch) -> None:
        """Commit a micro-batch (retrying until it lands), then ack it."""
        if batch.dead:
            await self._publish_dead_letters(batch.dead)
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self._commit_sync, batch)
                break
            except Exception as exc:
                attempt += 1
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_MIN_SECONDS * 2 ** min(attempt, 10))
                delay *= random.uniform(0.5, 1.0)
                log.warning(
                    "writer %s: commit of seq %d..%d failed (attempt %d), retrying in %.1fs: %s",
                    self.target,
                    batch.first_seq,
                    batch.last_seq,
                    attempt,
                    delay,
                    (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:300],
                )
                await asyncio.sleep(delay)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._refresh_tables)
        if batch.last_msg is not None:
            try:
                await batch.last_msg.ack()
            except Exception as exc:  # redelivered later and skipped by the watermark
                log.debug("writer %s: ack failed: %s", self.target, exc)

    async def _publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        for d in letters:
            target = d.target_table if d.target_table != UNROUTED else UNROUTED
            try:
                await self.js.publish(
                    dead_letter_subject(target), d.raw, headers=d.headers(), timeout=5.0
                )
            except Exception as exc:  # the quarantine table is the durable record
                log.warning("dead letter publish to NATS failed: %s", exc)
                return

    def _refresh_tables(self) -> None:
        with catalog_errors("refreshing tables"):
            for tid in list(self.tables):
                self.tables[tid] = self.catalog.load_table(tid)
        self._needs_refresh = False

    def _arrow_schema(self, tid: str, table: Table) -> pa.Schema:
        schema = table.schema()
        key = (tid, schema.schema_id)
        if key not in self._arrow_schemas:
            self._arrow_schemas[key] = schema_to_pyarrow(schema, include_field_ids=False)
        return self._arrow_schemas[key]

    def _prepare(self, tid: str, table: Table, chunks: list[pa.Table]) -> pa.Table:
        """Align chunks to the live schema, concatenate, cast (and sort, unless the commit does)."""
        target = self._arrow_schema(tid, table)
        aligned = []
        for chunk in chunks:
            arrays = []
            for f in target:
                if f.name in chunk.column_names:
                    arrays.append(chunk.column(f.name))
                else:
                    arrays.append(pa.nulls(chunk.num_rows, f.type))
            nullable = pa.schema([f.with_nullable(True) for f in target])
            aligned.append(pa.Table.from_arrays(arrays, schema=nullable))
        rows = pa.concat_tables(aligned) if len(aligned) > 1 else aligned[0]
        rows = rows.cast(target)
        if fast_path_applies(table, rows):
            return rows  # the commit sorts once, by (partition, sort order)
        keys = [("ts_event_ns", "ascending")]
        if "level_id" in rows.column_names:
            keys.append(("level_id", "ascending"))
        return rows.sort_by(keys)

    def _commit_sync(self, batch: MicroBatch) -> None:
        """Commit the batch's tables in order; each one transaction with its watermark."""
        if self._needs_refresh:
            self._refresh_tables()
        work: list[tuple[str, Any]] = []
        if batch.dead:
            work.append((DEAD_LETTERS_TABLE, batch.dead))
        for tid in self.target_ids:
            if batch.tables.get(tid):
                work.append((tid, batch.tables[tid]))
        seq = batch.last_seq
        for i, (tid, payload) in enumerate(work):
            last = i == len(work) - 1
            table = self.tables[tid]
            props = table.properties
            if int(props.get(self.wm_key, 0)) >= seq and (
                not last or int(props.get(self.pos_key, 0)) >= seq
            ):
                self.watermarks[tid] = seq
                continue  # landed before (lost response): do not append twice
            t0 = time.perf_counter()
            with catalog_errors(f"committing to {tid}"):
                if tid == DEAD_LETTERS_TABLE:
                    rows = dead_letter_table(payload, self._arrow_schema(tid, table))
                else:
                    rows = self._prepare(tid, table, payload)
                updates = {self.wm_key: str(seq)}
                if last:
                    updates[self.pos_key] = str(seq)
                summary = {
                    properties.LAKE_OPERATION: "ingest",
                    properties.STREAM: self.stream,
                    properties.CONSUMER: self.consumer,
                    properties.FIRST_STREAM_SEQ: str(batch.first_seq),
                    properties.LAST_STREAM_SEQ: str(seq),
                    properties.EVENT_COUNT: str(rows.num_rows),
                }
                try:
                    with watermarked_append(
                        table, watermark=updates, snapshot_properties=summary
                    ) as app:
                        app.append(rows)
                except Exception:
                    metrics.COMMIT_ERRORS.labels(tid).inc()
                    raise
            elapsed = time.perf_counter() - t0
            self.watermarks[tid] = seq
            metrics.COMMIT_SECONDS.labels(tid).observe(elapsed)
            if tid == DEAD_LETTERS_TABLE:
                for d in payload:
                    metrics.DEAD_LETTERS.labels(d.target_table).inc()
            else:
                metrics.EVENTS_COMMITTED.labels(tid).inc(rows.num_rows)
                self.committed_events += rows.num_rows
                self.commit_latencies.append(elapsed)
            snapshot = table.current_snapshot()
            log.info(
                "flush %s: %d rows, snapshot %s, seq %d..%d, %.0f ms",
                tid,
                rows.num_rows,
                snapshot.snapshot_id if snapshot else "-",
                batch.first_seq,
                seq,
                elapsed * 1000,
            )
            self._maybe_expire(tid, table)
        if work:
            self.position = seq

    def _maybe_expire(self, tid: str, table: Table) -> None:
        """Apply the lake's expiry policy in-line (`ops.maintenance.expire_inline`)."""
        now = time.monotonic()
        interval = max(1.0, min(60.0, self.retention / 4))
        if now - self._last_expire.get(tid, 0.0) < interval:
            return
        self._last_expire[tid] = now
        try:
            expire_inline(self.catalog, table, tid)
        except Exception as exc:  # a concurrent commit won; next time
            log.debug("expiring snapshots of %s failed: %s", tid, exc)
            with contextlib.suppress(Exception):
                self.tables[tid] = self.catalog.load_table(tid)
