"""One bus-fed table pinned at a loaded metadata version, and its tail decoded as the writer
would store it.

Every Bronze/Gold writer commits, in ONE transaction with each append, the table property
`lake.watermark.<stream>.<consumer>` = the last stream sequence the table holds. So a loaded
table's metadata says exactly which messages its current snapshot contains: everything on its
subject up to the watermark. The rest, `(watermark, newest]`, is the *tail*, decoded here with
the writer's own codec (same validation; messages the writer would dead-letter are left out).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.nats import (
    INFERRED_TARGET,
    StreamIdentity,
    consumer_target,
    stream_for_subject,
)
from iceberg_lake.engine.nats_tail import TailMessage
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.ingest import position
from iceberg_lake.ingest.decode import codec_for
from iceberg_lake.ingest.routing import BronzeDecoder, Decoder, GoldDecoder, InferredDecoder
from iceberg_lake.tables import GOLD, TableDefinition

__all__ = [
    "TailSource",
    "is_live_table",
    "newest_event_ns",
    "receives_inferred",
    "require_tails",
]


def is_live_table(definition: TableDefinition) -> bool:
    """True for tables fed from the bus (Bronze with a subject, Gold): they have a tail."""
    return bool(definition.subject) and definition.namespace in ("bronze", GOLD)


def require_tails(catalog: LakeCatalog, identifiers: Sequence[str]) -> None:
    """Refuse a live replay of a table without a tail (Silver, dead letters).

    Such a table would stop at its snapshot while the others follow, in a replay that looks
    complete; a live *query* instead reads its snapshot beside the live views (joins).

    Raises:
        TimeTravelError: one of `identifiers` is not fed from the bus (one-line message).
    """
    for ident in identifiers:
        if not is_live_table(catalog.definition(ident)):
            raise TimeTravelError(
                f"{ident} has no live tail (only Bronze/Gold tables fed from the bus have one): "
                "replay it without --live, or replay its Bronze table live"
            )


def receives_inferred(definition: TableDefinition) -> bool:
    """True for the tables the schema-inference writer routes into (its targets)."""
    return definition.namespace == "bronze" and bool(definition.subject)


class TailSource:
    """One bus-fed table pinned at a loaded metadata version: snapshot, watermark, decoder.

    The snapshot and the watermark come from the SAME `Table` object (one metadata file), which
    is what makes snapshot ∪ tail exact.

    Args:
        definition: the table's declared definition.
        table: the loaded table; its current snapshot is the one a live read unites with the tail.
        mapped_subjects: with schema inference: the subjects the inference consumer skips
            (every Bronze table's own subject), for `inferred` (None: no inferred rows).
    """

    def __init__(
        self,
        definition: TableDefinition,
        table: Table,
        mapped_subjects: frozenset[str] | None = None,
    ) -> None:
        self.definition = definition
        self.identifier = definition.identifier
        self.table = table
        current = table.metadata.current_snapshot_id
        self.snapshot_id: int | None = current if current is not None and current >= 0 else None
        self.stream, self.consumer, self.subject = consumer_target(self.identifier)
        self.stream = stream_for_subject(self.subject)
        key = f"{properties.WATERMARK_PREFIX}{self.stream}.{self.consumer}"
        self.watermark = int(table.properties.get(key, 0))
        #: The stream the watermark counts in ("" before it was recorded; `ingest.position`).
        created_key = f"{properties.STREAM_CREATED_PREFIX}{self.stream}.{self.consumer}"
        self.stream_created = table.properties.get(created_key, "")
        schema = table.schema()
        self.schema_id = schema.schema_id
        codec = codec_for(self.identifier, table, definition.partition_key)
        self.decoder: Decoder = (
            GoldDecoder(codec) if definition.namespace == GOLD else BronzeDecoder(codec)
        )
        arrow = schema_to_pyarrow(schema, include_field_ids=False)
        self.arrow_schema = pa.schema([f.with_nullable(True) for f in arrow])
        #: Column of `arrow_schema` -> the decoded column its values come from, once the
        #: decoder follows a later schema (`follow_schema`; None: a column it dropped).
        self._source_columns: dict[str, str | None] = {}
        self._mapped_subjects = mapped_subjects
        #: Rows the schema-inference consumer routes here: its decoder (the writer's entry
        #: point, with only this table's codec: messages inferred elsewhere yield no rows
        #: here) and its watermark in this table's metadata.
        self.inferred: Decoder | None = None
        self.inferred_watermark = 0
        self.inferred_committed = False
        if mapped_subjects is not None and receives_inferred(definition):
            inf_stream, inf_consumer, _ = consumer_target(INFERRED_TARGET)
            inf_key = f"{properties.WATERMARK_PREFIX}{inf_stream}.{inf_consumer}"
            self.inferred_committed = inf_key in table.properties
            self.inferred_watermark = int(table.properties.get(inf_key, 0))
            self.inferred = InferredDecoder({definition.schema_name: codec}, set(mapped_subjects))

    def follow_schema(self, table: Table) -> bool:
        """Decode with `table`'s schema (the same table, loaded later) from now on, as its writer
        does once it sees the change; rows keep this source's columns, matched by field id (a
        renamed column under its pinned name, a widened one with its wider type, an added one
        left out, a dropped one null). The snapshot and watermark stay the pinned ones.

        Returns:
            True if the schema changed (the decoder was rebuilt).
        """
        schema = table.schema()
        if schema.schema_id == self.schema_id:
            return False
        definition = self.definition
        codec = codec_for(self.identifier, table, definition.partition_key)
        self.decoder = GoldDecoder(codec) if definition.namespace == GOLD else BronzeDecoder(codec)
        if self.inferred is not None and self._mapped_subjects is not None:
            self.inferred = InferredDecoder(
                {definition.schema_name: codec}, set(self._mapped_subjects)
            )
        pinned = self.table.schema()
        by_id = {f.field_id: f.name for f in schema.fields}
        wider = schema_to_pyarrow(schema, include_field_ids=False)
        fields: list[pa.Field] = []
        for f in self.arrow_schema:
            source = by_id.get(pinned.find_field(f.name).field_id)
            self._source_columns[f.name] = source
            kind = wider.field(source).type if source is not None else f.type
            fields.append(pa.field(f.name, kind, nullable=True))
        self.arrow_schema = pa.schema(fields)
        self.schema_id = schema.schema_id
        return True

    def stream_mismatch(self, created: str, first_seq: int, last_seq: int) -> str | None:
        """Why the stream (its creation time and sequences now) is not the one the watermark
        counts in: it was deleted and created again, or NATS lost its storage (None: it is)."""
        done = position.Committed(
            self.watermark, frozenset([self.stream_created] if self.stream_created else [])
        )
        live = StreamIdentity(self.stream, created, first_seq, last_seq)
        return position.mismatch(self.identifier, self.consumer, done, live)

    def decode(self, messages: Sequence[TailMessage], recv_ns: int | None = None) -> pa.Table:
        """The rows of `messages` as the writer would store them (rejected ones left out).

        `ts_recv_ns` of events that carry none is the decode time, as in the writer.
        """
        return self.decode_with_seqs(messages, recv_ns)[0]

    def decode_with_seqs(
        self,
        messages: Sequence[TailMessage],
        recv_ns: int | None = None,
        decoder: Decoder | None = None,
        rejected: list[int] | None = None,
    ) -> tuple[pa.Table, np.ndarray]:
        """`decode` (with `decoder`, default the table's own), plus each row's stream sequence.

        `rejected`, when given, gets the index of each message rejected for this table, whole
        or some of its events (what the writer dead-letters).
        """
        empty = (self.arrow_schema.empty_table(), np.zeros(0, dtype=np.int64))
        if not messages:
            return empty
        recv = time.time_ns() if recv_ns is None else recv_ns
        bodies = [m.data for m in messages]
        routed = (decoder or self.decoder).decode(bodies, [m.subject for m in messages], recv)
        if rejected is not None:
            mine = {i for i, t, _ in routed.rejected if t == self.identifier}
            mine.update(i for i, _, t, _, _ in routed.rejected_events if t == self.identifier)
            rejected.extend(sorted(mine))
        decoded = routed.tables.get(self.identifier)
        if decoded is None or decoded.table.num_rows == 0:
            return empty
        rows = decoded.table
        names = self._source_columns
        arrays = [
            rows.column(name).cast(f.type)
            if (name := names.get(f.name, f.name)) is not None and name in rows.column_names
            else pa.nulls(rows.num_rows, f.type)
            for f in self.arrow_schema
        ]
        seqs = np.asarray([m.seq for m in messages], dtype=np.int64)[decoded.row_message]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema), seqs


def newest_event_ns(rows: pa.Table) -> int | None:
    """The largest `ts_event_ns` of decoded tail rows (None: no rows, or no such column)."""
    if rows.num_rows == 0 or "ts_event_ns" not in rows.column_names:
        return None
    import pyarrow.compute as pc

    value = pc.max(rows.column("ts_event_ns")).as_py()
    return int(value) if value is not None else None
