"""The NATS side of live reads for synchronous callers: one connection on a background event
loop (`NatsLoop`), and the decoded tails a `Lake` session keeps between live queries
(`TailCache`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.nats_tail import StreamStates, TailMessage, nats_errors
from iceberg_lake.timetravel.live.gaps import GapLog

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["NatsLoop", "TailCache"]

T = TypeVar("T")


class NatsLoop:
    """An asyncio loop on a daemon thread with one NATS connection, for synchronous callers.

    `Lake.query` is synchronous and may be called many times a second; connecting (and loading
    nothing else) once and reusing the connection keeps a live query's NATS cost at a few
    round trips.
    """

    def __init__(self, catalog: LakeCatalog) -> None:
        self.settings = catalog.settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lake-live", daemon=True)
        self.thread.start()
        self.nc: Client | None = None
        #: Decoded tails kept between queries (table → cache).
        self.tails: dict[str, TailCache] = {}
        #: The schema-inference consumer was seen: its rows are read even while a writer
        #: (re)creates it (a moment without it is no sign that inference stopped).
        self.inferred_seen = False
        #: Streams' states (their removed sequences re-listed only when they changed).
        self.states = StreamStates()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result.

        Raises:
            TransientError: for nats-py's errors (timeouts, no responders, a closed
                connection): one readable line; other exceptions propagate.
        """
        with nats_errors("live tail"):
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def js(self) -> Any:
        """The JetStream context (connects on first use)."""
        from iceberg_lake.engine.nats import connect, jetstream

        if self.nc is None or self.nc.is_closed:
            self.nc = await connect(self.settings, name="iceberg_lake-live")
        # The lake's JetStream (its domain, if one is set).
        return jetstream(self.nc, self.settings)

    def close(self) -> None:
        """Close the connection and stop the loop."""

        async def _close() -> None:
            if self.nc is not None and not self.nc.is_closed:
                await self.nc.close()
            # The client's per-subscription tasks: end them before the loop goes away.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_running():
            try:
                self.run(_close())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class TailCache:
    """A table's decoded tail kept between live queries of one `Lake` session.

    Holds the rows of messages `(after, last_seq]`; the next query reads only messages after
    `last_seq` and drops rows at or below the table's new watermark. Valid while the table's
    schema is the one the rows were decoded with.
    """

    def __init__(self, after: int, schema_id: int, arrow_schema: pa.Schema) -> None:
        self.after = after
        self.last_seq = after
        self.schema_id = schema_id
        self.rows = arrow_schema.empty_table()
        self.row_seqs = np.zeros(0, dtype=np.int64)
        self.msg_seqs = np.zeros(0, dtype=np.int64)
        #: Runs of stream sequences after `after` the stream removed before they were read.
        self.log = GapLog()
        #: Set when the stream is not the one the watermark counts in (no tail is read).
        self.stream_error: str | None = None

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """The listed runs (see `GapLog`)."""
        return self.log.runs

    @property
    def removed(self) -> tuple[int, int] | None:
        """The envelope of every run (None: none)."""
        return self.log.envelope

    def note_removed(self, runs: Sequence[tuple[int, int]]) -> None:
        """Remember removed runs, merged with the ones already noted."""
        for lo, hi in runs:
            self.log.add(lo, hi)

    def advance(self, watermark: int) -> None:
        """Forget what the snapshot now holds (sequences at or below `watermark`)."""
        if watermark <= self.after:
            return
        keep = self.row_seqs > watermark
        if not keep.all():
            self.rows = self.rows.filter(pa.array(keep))
            self.row_seqs = self.row_seqs[keep]
        self.msg_seqs = self.msg_seqs[self.msg_seqs > watermark]
        # A commit beyond a removed run holds whatever of it was the table's.
        self.log.trim(watermark)
        self.after = watermark
        self.last_seq = max(self.last_seq, watermark)

    def add(self, messages: list[TailMessage], rows: pa.Table, seqs: np.ndarray) -> None:
        """Append newly read messages and their rows."""
        if not messages:
            return
        self.last_seq = messages[-1].seq
        self.msg_seqs = np.concatenate([self.msg_seqs, [m.seq for m in messages]])
        if rows.num_rows:
            self.rows = pa.concat_tables([self.rows, rows]) if self.rows.num_rows else rows
            self.row_seqs = np.concatenate([self.row_seqs, seqs])

    def view(self, upto: int) -> tuple[pa.Table, int]:
        """Rows of messages `(after, upto]` and the number of such messages."""
        messages = int((self.msg_seqs <= upto).sum())
        if self.row_seqs.size and self.row_seqs[-1] > upto:
            return self.rows.filter(pa.array(self.row_seqs <= upto)), messages
        return self.rows, messages
