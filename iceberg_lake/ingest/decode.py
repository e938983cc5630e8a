"""Schema-aware decoding: JetStream message bodies → validated, column-wise Arrow.

A `TableCodec` is built from a table's LIVE Iceberg schema (so a column added by a migration is
filled as soon as messages carry it). It accepts three message shapes:

* the spec's canonical envelope: `{"schema_name", "ts_event_ns", "source", "key", "seq", ...,
  "payload": {...}}` — payload fields win, envelope fields fill the gaps, `key` fills the
  partition column (`symbol`/`underlying`);
* a flat event: the table's columns at the top level;
* a batch: a JSON array of either, or NDJSON (one event per line) in one message.

Decoding uses msgspec with typed structs (types, int32 ranges) and, for a fetch of single-event
messages, ONE decode call for the whole fetch. Values are then validated column-wise (required
fields, finite prices > 0, sizes >= 0, plausible event times) and a message with any bad event is
rejected as a whole with the first reason (its raw bytes go to the dead letters, nothing is lost).
Fields the table does not know are dropped from the row and reported (`unknown_fields`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    StringType,
    TimestamptzType,
)

from iceberg_lake.exceptions import ValidationError

#: The derived partition-source column (microseconds from `ts_event_ns`), never read from messages.
DERIVED_TS = "ts_event"
ENVELOPE_FIELDS = (
    "schema_name",
    "schema_version",
    "source",
    "ts_event_ns",
    "ts_recv_ns",
    "key",
    "seq",
    "payload",
)
#: Plausible event times: 2000-01-01 .. 2100-01-01 (catches ms/us sent as ns and garbage).
MIN_TS_NS = 946_684_800 * 1_000_000_000
MAX_TS_NS = 4_102_444_800 * 1_000_000_000

_INT32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


def _python_type(t: IcebergType) -> Any:
    if isinstance(t, IntegerType):
        return _INT32
    if isinstance(t, LongType):
        return int
    if isinstance(t, (DoubleType, FloatType)):
        return float
    if isinstance(t, StringType):
        return str
    if isinstance(t, BooleanType):
        return bool
    if isinstance(t, BinaryType):
        return bytes
    if isinstance(t, DecimalType):
        return Decimal
    if isinstance(t, TimestamptzType):
        return int
    return Any


def is_price_column(name: str) -> bool:
    """Columns that must hold a finite number > 0 when present."""
    return name in ("price", "strike", "level_price") or "_px" in name


def is_size_column(name: str) -> bool:
    """Columns that must be >= 0 when present."""
    return name == "size" or "_sz" in name or name in ("open_interest",)


class MessageError(ValidationError):
    """One message cannot be stored; `reason` goes to the dead letter."""


@dataclass
class DecodedBatch:
    """Validated rows of a batch of messages and the messages that were rejected.

    Attributes:
        table: the rows, in the live table's Arrow schema, message order kept.
        row_message: for each row, the index of its message in the input.
        rejected: `(message index, reason)` of every rejected message.
        unknown_fields: field name → number of events that carried it (dropped from the row).
    """

    table: pa.Table
    row_message: np.ndarray
    rejected: list[tuple[int, str]] = field(default_factory=list)
    unknown_fields: dict[str, int] = field(default_factory=dict)


def _reason_from_decode_error(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return f"malformed JSON: {text}"
    return f"invalid value: {text}"


class TableCodec:
    """Decoder and validator for one table, built from its live Iceberg schema.

    Args:
        identifier: table identifier (for messages and metrics).
        schema: the live Iceberg schema of the table.
        partition_key: the identity-partition column (`symbol`/`underlying`) that an envelope's
            `key` fills.
    """

    def __init__(self, identifier: str, schema: Schema, partition_key: str | None) -> None:
        self.identifier = identifier
        self.schema = schema
        self.schema_id = schema.schema_id
        self.partition_key = partition_key
        self.arrow_schema = schema_to_pyarrow(schema, include_field_ids=False)
        self.columns = [f for f in schema.fields if f.name != DERIVED_TS]
        self.column_names = [f.name for f in self.columns]
        self.required = [f.name for f in self.columns if f.required]
        self.has_recv = "ts_recv_ns" in self.column_names
        self.has_derived_ts = schema._name_to_id.get(DERIVED_TS) is not None
        col_fields = [(f.name, _python_type(f.field_type) | None, None) for f in self.columns]
        self.row_type = msgspec.defstruct(
            f"Row_{identifier.replace('.', '_')}",
            col_fields,
            forbid_unknown_fields=True,
        )
        names = set(self.column_names)
        env_fields: list[tuple[str, Any, Any]] = list(col_fields)
        env_types = {
            "schema_name": str,
            "schema_version": int,
            "source": str,
            "ts_event_ns": int,
            "ts_recv_ns": int,
            "key": str,
            "seq": int,
            "payload": self.row_type,
        }
        for name in ENVELOPE_FIELDS:
            if name not in names:
                env_fields.append((name, env_types[name] | None, None))
        self.event_type = msgspec.defstruct(
            f"Event_{identifier.replace('.', '_')}", env_fields, forbid_unknown_fields=True
        )
        self.allowed = names | set(ENVELOPE_FIELDS)
        self._one = msgspec.json.Decoder(self.event_type | list[self.event_type])  # type: ignore[name-defined]
        self._many = msgspec.json.Decoder(list[self.event_type])  # type: ignore[name-defined]
        self._getter = attrgetter(*self.column_names)
        self._column_getters = [attrgetter(n) for n in self.column_names]
        self._payload_attr = attrgetter("payload")
        self._key_attr = attrgetter("key")
        self._payload_getter = attrgetter(*self.column_names)
        self.partition_from_key = partition_key if partition_key in names else None

    # ---- decoding -------------------------------------------------------------------------------

    def decode_message(self, data: bytes) -> tuple[list[Any], dict[str, int]]:
        """Decode one message body into events.

        Returns:
            The events and the unknown fields that were dropped (name → count).

        Raises:
            MessageError: the body is not valid JSON or does not fit the table.
        """
        body = data.strip()
        if not body:
            raise MessageError("empty message")
        if body[:1] == b"{" and b"\n" in body:
            body = b"[" + b",".join(x for x in body.split(b"\n") if x.strip()) + b"]"
        try:
            decoded = self._one.decode(body)
            return (decoded if isinstance(decoded, list) else [decoded]), {}
        except msgspec.DecodeError as exc:
            return self._decode_slow(body, exc)

    def _decode_slow(self, body: bytes, first: Exception) -> tuple[list[Any], dict[str, int]]:
        """Unknown fields or JSON that msgspec refuses (NaN literals): strip and convert."""
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise MessageError(_reason_from_decode_error(first)) from None
        return self.convert(obj if isinstance(obj, list) else [obj])

    def convert(self, items: list[Any]) -> tuple[list[Any], dict[str, int]]:
        """Convert already-parsed events (dicts) of one message, dropping unknown fields.

        Returns:
            The events and the unknown fields that were dropped (name → count).

        Raises:
            MessageError: an event is not an object or does not fit the table.
        """
        unknown: dict[str, int] = {}
        for item in items:
            if not isinstance(item, dict):
                raise MessageError(f"expected a JSON object, got {type(item).__name__}")
            self._strip_unknown(item, unknown)
            payload = item.get("payload")
            if isinstance(payload, dict):
                self._strip_unknown(payload, unknown, envelope=False)
        for item in items:
            pairs = list(item.items())
            if isinstance(item.get("payload"), dict):
                pairs += list(item["payload"].items())
            for name, value in pairs:
                if isinstance(value, float) and not math.isfinite(value):
                    raise MessageError(f"{name} must be a finite number, got {value}")
        try:
            events = msgspec.convert(items, list[self.event_type])  # type: ignore[name-defined]
        except msgspec.ValidationError as exc:
            raise MessageError(f"invalid value: {exc}") from None
        return events, unknown

    def _strip_unknown(
        self, item: dict[str, Any], unknown: dict[str, int], envelope: bool = True
    ) -> None:
        allowed = self.allowed if envelope else set(self.column_names)
        for key in [k for k in item if k not in allowed]:
            del item[key]
            unknown[key] = unknown.get(key, 0) + 1

    def decode(self, bodies: Sequence[bytes], recv_ns: int | None = None) -> DecodedBatch:
        """Decode and validate a batch of message bodies.

        Args:
            bodies: raw message bodies.
            recv_ns: receive time for events without `ts_recv_ns` (default: now).

        Returns:
            The validated rows and the rejected messages.
        """
        recv_ns = time.time_ns() if recv_ns is None else recv_ns
        events: list[Any] = []
        counts: list[int] = []
        rejected: list[tuple[int, str]] = []
        unknown: dict[str, int] = {}
        fast = None
        if len(bodies) > 1 and all(b[:1] == b"{" and b"\n" not in b for b in bodies):
            try:
                fast = self._many.decode(b"[" + b",".join(bodies) + b"]")
            except msgspec.DecodeError:
                fast = None
        if fast is not None and len(fast) == len(bodies):
            events = fast
            counts = [1] * len(bodies)
        else:
            for i, body in enumerate(bodies):
                try:
                    evs, unk = self.decode_message(body)
                except MessageError as exc:
                    rejected.append((i, exc.reason))
                    counts.append(0)
                    continue
                for k, v in unk.items():
                    unknown[k] = unknown.get(k, 0) + v
                events.extend(evs)
                counts.append(len(evs))
        return self.assemble(events, counts, rejected, unknown, recv_ns)

    def assemble(
        self,
        events: list[Any],
        counts: list[int],
        rejected: list[tuple[int, str]],
        unknown: dict[str, int],
        recv_ns: int,
    ) -> DecodedBatch:
        """Validate decoded events and build the batch.

        Args:
            events: events of all messages, in message order.
            counts: number of events of each message (0 for rejected or skipped ones).
            rejected: messages already rejected while decoding.
            unknown: unknown fields dropped while decoding.
            recv_ns: receive time for events without `ts_recv_ns`.

        Returns:
            The validated rows (rows of any rejected message removed) and the rejections.
        """
        rejected = list(rejected)
        row_message = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        table, bad_rows = self.to_arrow(events, recv_ns)
        if bad_rows:
            seen = {i for i, _ in rejected}
            for row, reason in bad_rows:
                m = int(row_message[row])
                if m not in seen:
                    seen.add(m)
                    rejected.append((m, reason))
        if rejected:
            bad = np.array(sorted({i for i, _ in rejected}), dtype=np.int64)
            keep = ~np.isin(row_message, bad)
            if not keep.all():
                table = table.filter(pa.array(keep))
                row_message = row_message[keep]
        rejected.sort()
        return DecodedBatch(table, row_message, rejected, unknown)

    # ---- columns --------------------------------------------------------------------------------

    def _columns(self, events: list[Any]) -> list[list[Any]]:
        n = len(self.column_names)
        if not events:
            return [[] for _ in range(n)]
        # One C-level pass per column (no per-event tuples).
        columns = [list(map(g, events)) for g in self._column_getters]
        # Envelopes: payload fields win over envelope fields; the envelope's `key` fills the
        # partition column. Checked with C-level `count` first: flat events skip all of it.
        payloads = list(map(self._payload_attr, events))
        if payloads.count(None) != len(payloads):
            for i, payload in enumerate(payloads):
                if payload is None:
                    continue
                values = self._payload_getter(payload)
                if n == 1:
                    values = (values,)
                for c, v in enumerate(values):
                    if v is not None:
                        columns[c][i] = v
        if self.partition_from_key is not None:
            col = columns[self.column_names.index(self.partition_from_key)]
            if col.count(None):
                keys = list(map(self._key_attr, events))
                for i, value in enumerate(col):
                    if value is None and keys[i] is not None:
                        col[i] = keys[i]
        return columns

    def to_arrow(self, events: list[Any], recv_ns: int) -> tuple[pa.Table, list[tuple[int, str]]]:
        """Build the Arrow table of `events` column-wise and validate it.

        Returns:
            The table (all rows, in the live schema) and `(row, reason)` for invalid rows.
        """
        columns = self._columns(events)
        nrows = len(events)
        arrays: dict[str, pa.Array] = {}
        bad: dict[int, str] = {}
        for name, values in zip(self.column_names, columns, strict=True):
            target = self.arrow_schema.field(name).type
            if name == "ts_recv_ns":
                values = [recv_ns if v is None else v for v in values]
            arrays[name] = pa.array(values, type=target)
        for name in self.required:
            arr = arrays[name]
            if arr.null_count:
                for row in np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)):
                    bad.setdefault(int(row), f"missing required field '{name}'")
        for name, arr in arrays.items():
            if is_price_column(name) and pa.types.is_floating(arr.type):
                ok = pc.and_(pc.is_finite(arr), pc.greater(arr, 0.0))
                self._flag(arr, ok, bad, f"{name} must be a finite number > 0")
            elif is_size_column(name) and pa.types.is_integer(arr.type):
                self._flag(arr, pc.greater_equal(arr, 0), bad, f"{name} must be >= 0")
            elif pa.types.is_floating(arr.type) and arr.null_count < len(arr):
                self._flag(arr, pc.is_finite(arr), bad, f"{name} must be a finite number")
        if "ts_event_ns" in arrays:
            ts = arrays["ts_event_ns"]
            ok = pc.and_(pc.greater_equal(ts, MIN_TS_NS), pc.less(ts, MAX_TS_NS))
            self._flag(ts, ok, bad, "ts_event_ns is not a plausible Unix time in nanoseconds")
        pk = self.partition_key or ""
        pk_type = arrays[pk].type if pk in arrays else None
        if pk_type is not None and (
            pa.types.is_string(pk_type) or pa.types.is_large_string(pk_type)
        ):
            ok = pc.greater(pc.utf8_length(arrays[pk]), 0)
            self._flag(arrays[pk], ok, bad, f"{pk} is empty")
        if self.has_derived_ts:
            ts_ns = arrays["ts_event_ns"]
            filled = pc.fill_null(ts_ns, MIN_TS_NS)
            micros = pc.divide(filled, pa.scalar(1000, pa.int64()))
            arrays[DERIVED_TS] = micros.cast(pa.timestamp("us", tz="UTC"))
        table = pa.Table.from_arrays(
            [arrays[f.name] for f in self.arrow_schema], schema=_nullable(self.arrow_schema)
        )
        _ = nrows
        return table, sorted(bad.items())

    @staticmethod
    def _flag(arr: pa.Array, ok: pa.Array, bad: dict[int, str], reason: str) -> None:
        # Nulls in `ok` come from null values: those are checked by the required-field rule.
        failed = pc.invert(pc.fill_null(ok, True))
        if pc.any(failed).as_py():
            for row in np.flatnonzero(failed.to_numpy(zero_copy_only=False)):
                value = arr[int(row)].as_py()
                bad.setdefault(int(row), f"{reason}, got {value!r}")


def _nullable(schema: pa.Schema) -> pa.Schema:
    """The schema with every field nullable (rows are checked, then cast to the real schema)."""
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast validated rows to the live table's Arrow schema (required → non-nullable)."""
    return table.cast(schema)
