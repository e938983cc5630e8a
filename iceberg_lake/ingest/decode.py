"""Schema-aware decoding: JetStream message bodies → validated, column-wise Arrow.

A `TableCodec` is built from a table's LIVE Iceberg schema (so a column added by a migration is
filled as soon as messages carry it) and the table's declared rules in `catalog/` (integer
widths of the spec, enumerations, bounds, defaults). It accepts three message shapes:

* the spec's canonical envelope: `{"schema_name", "ts_event_ns", "source", "key", "seq", ...,
  "payload": {...}}` — payload fields win, envelope fields fill the gaps, `key` fills the
  partition column (`symbol`/`underlying`);
* a flat event: the table's columns at the top level;
* a batch: a JSON array of either, or NDJSON (one event per line) in one message.

Fast path: msgspec with typed structs (types, integer widths and enumerations checked in C) and,
for a fetch of single-event messages, ONE decode call for the whole fetch; then column-wise
Arrow building and validation (required fields, finite floats, bounds, plausible event times,
partition values). Only when something fails does the codec fall back, step by step, to the
smallest unit that isolates it: the fetch → each message → each event of a batched message →
each value of a column. Whatever the input, `decode` never raises: every event ends up as a row
or as a rejection with a precise reason and the bytes to dead-letter (the whole message, or the
one event of a batch, see `DecodedBatch`). Fields the table does not know are dropped from the
row and reported (`unknown_fields`).
"""

from __future__ import annotations

import json
import keyword
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import Table
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
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.tables.definitions import SPEC_INT_RANGES, ColumnDefinition

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
#: How far after its receipt an event may be stamped (clocks differ by far less): a feed with a
#: wrong clock or garbage times otherwise made one partition, and one file, per event (ops15:
#: a 100k-event commit of random times took 131 s and left 98k files).
MAX_EVENT_LEAD_NS = 86_400 * 1_000_000_000
#: Deepest JSON nesting accepted (an envelope with a batch of Gold levels needs about 6).
MAX_DEPTH = 32
#: Partition values (`symbol`, `underlying`) become a path segment of every data file: at most
#: this many UTF-8 bytes (URL-encoded ≤ 192 characters, well under a file name's 255 and S3's
#: 1,024-byte keys), and no control characters. Other characters (`/`, `..`, `%`, spaces,
#: non-ASCII) are encoded by the writer and round-trip safely.
MAX_PARTITION_VALUE_BYTES = 64
#: RE2 class of the control characters a partition value must not hold (C0, DEL, C1).
CONTROL_CHARS = r"[\x{0}-\x{1f}\x{7f}-\x{9f}]"
#: Message index ↔ event index packing for masks (events per message < 2**31).
_EVENT_BITS = 32


class MessageError(ValidationError):
    """One message (or one event of a batch) cannot be stored; `reason` goes to the dead letter."""


def rejection_reason(exc: BaseException) -> str:
    """A one-line reason for an exception that escaped the expected checks."""
    if isinstance(exc, MessageError):
        return exc.reason
    if isinstance(exc, RecursionError):
        return f"malformed JSON: nested deeper than {MAX_DEPTH} levels"
    text = " ".join(str(exc).split())[:300]
    return f"cannot decode: {type(exc).__name__}: {text}"


def _json_type(obj: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(obj), "number" if isinstance(obj, (int, float)) else "null"
    )


# ---- parsing (slow path) --------------------------------------------------------------------


def parse_json(body: bytes) -> tuple[Any, bool]:
    """Parse one JSON document: msgspec, with the stdlib as fallback for `NaN`/`Infinity`.

    Returns:
        The value and whether the stdlib parsed it (its values then need `check_values`: the
        stdlib accepts non-finite numbers and lone surrogates, msgspec refuses them).

    Raises:
        MessageError: not UTF-8, not JSON, or nested too deeply.
    """
    try:
        return msgspec.json.decode(body), False
    except UnicodeDecodeError as exc:
        raise MessageError(f"invalid UTF-8: {exc}") from None
    except RecursionError:
        raise MessageError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    except msgspec.DecodeError as exc:
        first = str(exc)
    try:
        return json.loads(body), True
    except RecursionError:
        raise MessageError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        # msgspec 0.23 reports invalid UTF-8 as a DecodeError (0.22 raised this one): the stdlib
        # tells the two apart.
        raise MessageError(f"invalid UTF-8: {exc}") from None
    except (ValueError, TypeError):
        raise MessageError(f"malformed JSON: {first}") from None


def check_values(obj: Any, where: str = "$") -> None:
    """Refuse what JSON allows but a table cannot hold: deep nesting, non-finite numbers, lone
    surrogates (the stdlib parser keeps them; Arrow cannot encode them).

    Raises:
        MessageError: with the path of the first bad value.
    """
    stack: list[tuple[Any, str, int]] = [(obj, where, 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MessageError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                _check_string(k, path)
                stack.append((v, f"{path}.{k}" if depth or where != "$" else k, depth + 1))
        elif isinstance(value, list):
            for n, v in enumerate(value):
                stack.append((v, f"{path}[{n}]", depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            raise MessageError(f"{path} must be a finite number, got {value}")
        elif isinstance(value, str):
            _check_string(value, path)


def check_depth(obj: Any) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` (level by level, containers only).

    Raises:
        MessageError: too deep.
    """
    level = [obj]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH + 1:
            raise MessageError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
        nxt: list[Any] = []
        for v in level:
            children = v.values() if type(v) is dict else v
            nxt += [c for c in children if type(c) is dict or type(c) is list]
        level = nxt


def _check_string(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError(f"{path}: string is not valid UTF-8 (lone surrogate)") from None


def _checked(obj: Any, fallback: bool, body: bytes = b"") -> Any:
    if fallback:
        check_values(obj)
    elif isinstance(obj, (dict, list)) and (
        # Nesting is at most the number of openers: most messages skip the walk.
        not body or body.count(b"{") + body.count(b"[") > MAX_DEPTH
    ):
        check_depth(obj)
    return obj


def encode_event(item: Any) -> bytes:
    """JSON bytes of one parsed event of a batch (what its dead letter stores)."""
    try:
        return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \u escape
        return json.dumps(item, separators=(",", ":")).encode()


class SplitMessage:
    """A message body split into its events.

    Attributes:
        items: parsed, checked events, or a `MessageError` in place of an event that failed
            (an NDJSON line that did not parse, a value the table cannot hold).
        batch: the message is an array or NDJSON (its events are dead-lettered one by one).
    """

    def __init__(self, data: bytes, items: list[Any], batch: bool, lines: list[bytes] | None):
        self.data = data
        self.items = items
        self.batch = batch
        self._lines = lines

    def raw(self, event: int) -> bytes:
        """The bytes of one event: its NDJSON line, or the array element re-encoded as JSON
        (the whole message if it is not a batch or the element cannot be encoded)."""
        if not self.batch:
            return self.data
        if self._lines is not None:
            return self._lines[event]
        item = self.items[event]
        if isinstance(item, MessageError):
            item = getattr(item, "item", None)
        try:
            return encode_event(item)
        except Exception:  # never lose the bytes
            return self.data


def _item_or_error(obj: Any, fallback: bool, body: bytes = b"") -> Any:
    try:
        return _checked(obj, fallback, body)
    except MessageError as exc:
        exc.item = obj  # type: ignore[attr-defined]  # for the dead letter's bytes
        return exc


def decode_each(
    data: bytes,
    message: int,
    pending: Pending,
    convert: Callable[[Any, dict[str, int]], list[Any]],
) -> None:
    """Decode one message event by event: only a bad message or a bad event is rejected.

    Args:
        data: the message body (one event, a JSON array or NDJSON).
        message: its index in the fetch.
        pending: where rows, rejected messages and rejected events are collected.
        convert: one parsed event → its rows (raises for an event that cannot be stored).
    """
    try:
        split = split_message(data)
    except Exception as exc:
        pending.rejected.append((message, rejection_reason(exc)))
        return
    decode_split(split, message, pending, convert)


def decode_split(
    split: SplitMessage,
    message: int,
    pending: Pending,
    convert: Callable[[Any, dict[str, int]], list[Any]],
) -> None:
    """`decode_each` for a message already split into events (`split_message`)."""
    if not split.batch:
        try:
            rows = convert(split.items[0], pending.unknown)
        except Exception as exc:
            pending.rejected.append((message, rejection_reason(exc)))
            return
        pending.add(message, rows, None)
        return
    events: list[Any] = []
    ids: list[int] = []
    for n, item in enumerate(split.items):
        try:
            if isinstance(item, MessageError):
                raise item
            rows = convert(item, pending.unknown)
        except Exception as exc:
            pending.rejected_events.append((message, n, rejection_reason(exc), split.raw(n)))
            continue
        events.extend(rows)
        ids.extend([n] * len(rows))
    pending.add(message, events, ids)


def split_message(data: bytes) -> SplitMessage:
    """Parse a message body into events (object, array or NDJSON) and check their values.

    Raises:
        MessageError: the body as a whole is empty, not JSON, too deep, an empty batch, or a
            single event with a value no table can hold.
    """
    body = data.strip()
    if not body:
        raise MessageError("empty message")
    if body[:1] == b"{" and b"\n" in body:
        lines = [x.strip() for x in body.split(b"\n") if x.strip()]
        items: list[Any] = []
        for line in lines:
            try:
                items.append(_item_or_error(*parse_json(line), line))
            except MessageError as exc:
                if not items and len(lines) > 1:
                    # Maybe one pretty-printed object rather than NDJSON.
                    try:
                        whole = parse_json(body)
                    except MessageError:
                        pass
                    else:
                        return SplitMessage(data, [_checked(*whole, body)], False, None)
                items.append(exc)
        return SplitMessage(data, items, True, lines)
    obj, fallback = parse_json(body)
    if isinstance(obj, list):
        if not obj:
            raise MessageError("empty batch: the message is an empty JSON array")
        if not fallback and body.count(b"{") + body.count(b"[") <= MAX_DEPTH + 1:
            return SplitMessage(data, obj, True, None)  # nothing to check: shallow, msgspec
        return SplitMessage(data, [_item_or_error(x, fallback) for x in obj], True, None)
    return SplitMessage(data, [_checked(obj, fallback, body)], False, None)


class EventBytes:
    """The bytes of single events of batched messages, each message split once (lazily)."""

    def __init__(self, bodies: Sequence[bytes] | None) -> None:
        self.bodies = bodies
        self._splits: dict[int, SplitMessage | None] = {}

    def __call__(self, message: int, event: int) -> bytes:
        """Bytes of event `event` of message `message` (the whole body if unknown)."""
        if self.bodies is None:
            return b""
        if message not in self._splits:
            try:
                self._splits[message] = split_message(self.bodies[message])
            except Exception:
                self._splits[message] = None
        split = self._splits[message]
        if split is None or event >= len(split.items):
            return self.bodies[message]
        return split.raw(event)


# ---- column rules -----------------------------------------------------------------------------


def is_price_column(name: str) -> bool:
    """Columns that must hold a finite number > 0 when present (unless declared otherwise)."""
    return name in ("price", "strike", "level_price") or "_px" in name


def is_size_column(name: str) -> bool:
    """Columns that must be >= 0 when present (unless declared otherwise)."""
    return name == "size" or "_sz" in name or name in ("open_interest",)


@dataclass(frozen=True)
class ColumnRule:
    """What one column accepts: the declared rules, or defaults from its name and type."""

    name: str
    int_range: tuple[int, int] | None = None
    enum: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    default: Any = None

    def bounds_text(self) -> str:
        """The rule's numeric bounds as a rejection reason reads them.

        Returns:
            E.g. `"> 0 and <= 1e+06"` (the `gt`, `ge` and `le` bounds set, joined with
            "and"), or "" when the rule has none.
        """
        parts = []
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:g}")
        return " and ".join(parts)

    def bounds_mask(self, arr: Any) -> Any:
        """`arr > gt`, `>= ge` and `<= le` combined (nulls stay null); None without bounds.

        Args:
            arr: A numeric Arrow array.

        Returns:
            A boolean Arrow array, or None when the rule has no bounds.
        """
        ok = None
        for fn, bound in (
            (pc.greater, self.gt),
            (pc.greater_equal, self.ge),
            (pc.less_equal, self.le),
        ):
            if bound is not None:
                part = fn(arr, pa.scalar(bound))
                ok = part if ok is None else pc.and_(ok, part)
        return ok

    def float_check(self, arr: Any) -> tuple[Any, str]:
        """A float column's check: finite and within the bounds.

        Args:
            arr: A floating-point Arrow array.

        Returns:
            The boolean mask of valid values (nulls stay null) and the reason for the others.
        """
        ok = pc.is_finite(arr)
        bounded = self.bounds_mask(arr)
        if bounded is not None:
            ok = pc.and_(ok, bounded)
        bounds = self.bounds_text()
        return ok, f"{self.name} must be a finite number" + (f" {bounds}" if bounds else "")


_INT_TYPES: dict[type, str] = {IntegerType: "int32", LongType: "int64"}


def column_rule(name: str, t: IcebergType, declared: ColumnDefinition | None) -> ColumnRule:
    """The rule of one live column; the declared rules apply if the declared type still matches."""
    if declared is not None and type(declared.iceberg_type) is not type(t):
        declared = None  # widened since the declaration: fall back to the live type's range
    int_range = None
    if type(t) in _INT_TYPES:
        int_range = declared.int_range if declared else None
        int_range = int_range or SPEC_INT_RANGES[_INT_TYPES[type(t)]]
    ge = gt = le = None
    if declared is not None and (
        declared.ge is not None or declared.gt is not None or declared.le is not None
    ):
        ge, gt, le = declared.ge, declared.gt, declared.le
    elif is_price_column(name) and isinstance(t, (DoubleType, FloatType)):
        gt = 0.0
    elif is_size_column(name) and type(t) in _INT_TYPES:
        ge = 0
    return ColumnRule(
        name,
        int_range=int_range,
        enum=declared.enum if declared else None,
        ge=ge,
        gt=gt,
        le=le,
        default=declared.default if declared else None,
    )


def _python_type(t: IcebergType, rule: ColumnRule) -> Any:
    if rule.enum:
        return Literal[rule.enum]
    if type(t) in _INT_TYPES:
        lo, hi = rule.int_range or SPEC_INT_RANGES[_INT_TYPES[type(t)]]
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)]
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


_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


# ---- decoded batches --------------------------------------------------------------------------


@dataclass
class DecodedBatch:
    """Validated rows of a batch of messages and what was rejected.

    Attributes:
        table: the rows, in the live table's Arrow schema, message order kept.
        row_message: for each row, the index of its message in the input.
        rejected: `(message index, reason)` of every message rejected as a whole (its bytes
            are the message's).
        rejected_events: `(message index, event index, reason, event bytes)` of single events
            of batched messages; the other events of those messages are stored.
        unknown_fields: field name → number of events that carried it (dropped from the row).
    """

    table: pa.Table
    row_message: np.ndarray
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_events: list[tuple[int, int, str, bytes]] = field(default_factory=list)
    unknown_fields: dict[str, int] = field(default_factory=dict)


@dataclass
class Pending:
    """Events of a fetch collected for `TableCodec.assemble`, with where each came from."""

    events: list[Any] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    batches: set[int] = field(default_factory=set)
    event_ids: dict[int, list[int]] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_events: list[tuple[int, int, str, bytes]] = field(default_factory=list)
    unknown: dict[str, int] = field(default_factory=dict)

    def add(
        self,
        message: int,
        events: list[Any],
        event_ids: list[int] | None = None,
        batch: bool = False,
    ) -> None:
        """Events of message `message`.

        Args:
            message: the message index.
            events: its (next) events.
            event_ids: the position in the batch of each event, when not simply 0..n-1.
            batch: the message is a batch (array/NDJSON).
        """
        counts = self.counts
        if len(counts) <= message:
            counts.extend([0] * (message + 1 - len(counts)))
        counts[message] += len(events)
        self.events.extend(events)
        if batch or event_ids is not None:
            self.batches.add(message)
        if event_ids is not None:
            self.event_ids.setdefault(message, []).extend(event_ids)

    def row_events(self) -> np.ndarray:
        """For each row, its event's position in a batched message (-1: not a batch)."""
        out = np.full(len(self.events), -1, dtype=np.int64)
        start = 0
        for m, count in enumerate(self.counts):
            if m in self.batches and count:
                ids = self.event_ids.get(m)
                out[start : start + count] = ids if ids is not None else np.arange(count)
            start += count
        return out


def _attribute_names(columns: Sequence[str], reserved: Iterable[str]) -> list[str]:
    """A struct attribute name per column: the column's own where msgspec takes it, else
    `col<i>_`."""
    taken = set(columns) | set(reserved)
    out = []
    for i, name in enumerate(columns):
        # msgspec refuses attribute names with a leading underscore too.
        if name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_"):
            out.append(name)
            continue
        attr = f"col{i}_"
        while attr in taken:
            attr += "_"
        taken.add(attr)
        out.append(attr)
    return out


class TableCodec:
    """Decoder and validator for one table, built from its live Iceberg schema.

    Args:
        identifier: table identifier (for messages and metrics).
        schema: the live Iceberg schema of the table.
        partition_key: the identity-partition column (`symbol`/`underlying`) that an envelope's
            `key` fills.
        declared: the declared columns (rules); default: the shipped `catalog/` definition of
            `identifier`, if there is one.
        aliases: former name → current column (`codec_for` derives them from the table's
            schema history): a column renamed in the table still takes its value from messages
            that carry the old name, which producers keep sending.
    """

    def __init__(
        self,
        identifier: str,
        schema: Schema,
        partition_key: str | None,
        declared: dict[str, ColumnDefinition] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        if declared is None:
            declared = _declared_columns(identifier)
        self.identifier = identifier
        self.schema = schema
        self.schema_id = schema.schema_id
        # Field ids on the Arrow fields: rows decoded with this schema can be placed by field id
        # into a later schema of the table (a rename between decode and commit).
        self.arrow_schema = schema_to_pyarrow(schema, include_field_ids=True)
        self.columns = [f for f in schema.fields if f.name != DERIVED_TS]
        self.column_names = [f.name for f in self.columns]
        names = set(self.column_names)
        self.aliases = {
            old: new
            for old, new in (aliases or {}).items()
            if new in names and old not in names and old not in _NOT_ALIASES
        }
        if partition_key is not None and partition_key not in names:
            partition_key = self.aliases.get(partition_key, partition_key)
        self.partition_key = partition_key
        self.required = [f.name for f in self.columns if f.required]
        for old, new in self.aliases.items():
            if new not in declared and old in declared:
                declared = {**declared, new: declared[old]}  # rules follow the rename
        self.rules = {
            f.name: column_rule(f.name, f.field_type, declared.get(f.name)) for f in self.columns
        }
        self.defaults = {n: r.default for n, r in self.rules.items() if r.default is not None}
        self.has_derived_ts = any(f.name == DERIVED_TS for f in schema.fields)
        # Struct attributes must be identifiers; a column named e.g. `venue-id` gets a stand-in
        # attribute and keeps its JSON name through `rename`.
        self._attrs = _attribute_names(self.column_names, reserved=ENVELOPE_FIELDS)
        rename = {a: n for a, n in zip(self._attrs, self.column_names, strict=True) if a != n}
        col_fields = [
            (a, _python_type(f.field_type, self.rules[f.name]) | None, None)
            for a, f in zip(self._attrs, self.columns, strict=True)
        ]
        # One extra struct field per former name, same type as its column; `_columns` moves
        # its value into the column when the current name is absent.
        taken = set(self._attrs) | set(ENVELOPE_FIELDS)
        self._alias_slots: list[tuple[int, str]] = []
        for i, (old, new) in enumerate(sorted(self.aliases.items())):
            attr = f"alias{i}_"
            while attr in taken:
                attr += "_"
            taken.add(attr)
            rename[attr] = old
            c = self.column_names.index(new)
            col_fields.append((attr, col_fields[c][1], None))
            self._alias_slots.append((c, attr))
        self.row_type = msgspec.defstruct(
            f"Row_{identifier.replace('.', '_')}",
            col_fields,
            forbid_unknown_fields=True,
            rename=rename or None,
        )
        env_fields: list[tuple[str, Any, Any]] = list(col_fields)
        env_types = {
            "schema_name": str,
            "schema_version": _INT64,
            "source": str,
            "ts_event_ns": _INT64,
            "ts_recv_ns": _INT64,
            "key": str,
            "seq": _INT64,
            "payload": self.row_type,
        }
        for name in ENVELOPE_FIELDS:
            if name not in names and name not in self.aliases:
                env_fields.append((name, env_types[name] | None, None))
        self.event_type = msgspec.defstruct(
            f"Event_{identifier.replace('.', '_')}",
            env_fields,
            forbid_unknown_fields=True,
            rename=rename or None,
        )
        self.allowed = names | set(self.aliases) | set(ENVELOPE_FIELDS)
        self._column_set = names | set(self.aliases)
        self._one = msgspec.json.Decoder(self.event_type | list[self.event_type])  # type: ignore[name-defined]
        self._many = msgspec.json.Decoder(list[self.event_type])  # type: ignore[name-defined]
        self._column_getters = [attrgetter(a) for a in self._attrs]
        self._payload_attr = attrgetter("payload")
        self._key_attr = attrgetter("key")
        self._payload_getter = attrgetter(*self._attrs)
        self._alias_getters = [(c, attrgetter(a)) for c, a in self._alias_slots]
        self.partition_from_key = partition_key if partition_key in names else None

    # ---- decoding -------------------------------------------------------------------------------

    def decode_message(self, data: bytes, message: int, pending: Pending) -> None:
        """Decode one message body into `pending` (rows, or rejections of it or its events)."""
        try:
            body = data.strip()
            lines = 0
            if body[:1] == b"{" and b"\n" in body:
                parts = [x for x in body.split(b"\n") if x.strip()]
                lines, body = len(parts), b"[" + b",".join(parts) + b"]"
            decoded = self._one.decode(body)
            if lines and len(decoded) != lines:
                # Not NDJSON (one event a line): a newline inside a string, or a line break
                # where a comma is missing, which the join had turned into one valid event
                # (review20c: `"te<newline>st"` was stored as "te,st").
                raise MessageError("not one JSON event per line")
        except Exception:
            self._decode_slow(data, message, pending)
            return
        if isinstance(decoded, list):
            if not decoded:
                pending.rejected.append(
                    (message, "empty batch: the message is an empty JSON array")
                )
                return
            pending.add(message, decoded, batch=True)
        else:
            pending.add(message, [decoded], None)

    def _decode_slow(self, data: bytes, message: int, pending: Pending) -> None:
        """Unknown fields, invalid values or JSON that msgspec refuses: event by event."""
        decode_each(data, message, pending, lambda item, unknown: [self.convert_one(item, unknown)])

    def convert_one(self, item: Any, unknown: dict[str, int]) -> Any:
        """Convert one parsed event (a dict), dropping and counting unknown fields.

        The event's values must have been checked (`split_message` does it: finite numbers,
        valid strings, nesting depth); the types and declared rules are checked here.

        Raises:
            MessageError: the event is not an object or does not fit the table.
        """
        if not isinstance(item, dict):
            raise MessageError(f"expected a JSON object, got {_json_type(item)}")
        # Copies, not edits: a rejected event of a batch is dead-lettered as it was sent.
        item = self._strip_unknown(item, unknown)
        payload = item.get("payload")
        if isinstance(payload, dict):
            stripped = self._strip_unknown(payload, unknown, envelope=False)
            if stripped is not payload:
                item = {**item, "payload": stripped}
        try:
            return msgspec.convert(item, self.event_type)
        except msgspec.ValidationError as exc:
            raise MessageError(f"invalid value: {exc}") from None

    def convert(self, items: list[Any]) -> tuple[list[Any], dict[str, int]]:
        """Convert already-parsed events (dicts) of one unit that is stored or rejected whole.

        Returns:
            The events and the unknown fields that were dropped (name → count).

        Raises:
            MessageError: an event is not an object or does not fit the table.
        """
        unknown: dict[str, int] = {}
        return [self.convert_one(item, unknown) for item in items], unknown

    def _strip_unknown(
        self, item: dict[str, Any], unknown: dict[str, int], envelope: bool = True
    ) -> dict[str, Any]:
        """`item` without the fields the table does not know (a copy if any), counted."""
        allowed = self.allowed if envelope else self._column_set
        extra = [k for k in item if k not in allowed]
        if not extra:
            return item
        for key in extra:
            unknown[key] = unknown.get(key, 0) + 1
        return {k: v for k, v in item.items() if k in allowed}

    def decode(self, bodies: Sequence[bytes], recv_ns: int | None = None) -> DecodedBatch:
        """Decode and validate a batch of message bodies. Never raises.

        Args:
            bodies: raw message bodies.
            recv_ns: receive time for events without `ts_recv_ns` (default: now).

        Returns:
            The validated rows and the rejected messages and events.
        """
        recv_ns = time.time_ns() if recv_ns is None else recv_ns
        pending = Pending()
        fast = None
        if len(bodies) > 1 and all(b[:1] == b"{" and b"\n" not in b for b in bodies):
            try:
                fast = self._many.decode(b"[" + b",".join(bodies) + b"]")
            except Exception:  # one bad message: find it message by message
                fast = None
        if fast is not None and len(fast) == len(bodies):
            pending.events = fast
            pending.counts = [1] * len(bodies)
        else:
            for i, body in enumerate(bodies):
                self.decode_message(body, i, pending)
        while len(pending.counts) < len(bodies):
            pending.counts.append(0)
        return self.assemble(pending, recv_ns, bodies)

    def assemble(
        self, pending: Pending, recv_ns: int, bodies: Sequence[bytes] | None = None
    ) -> DecodedBatch:
        """Validate decoded events and build the batch.

        A row that fails validation rejects its message, or only its event when the message is
        a batch (the event's bytes are recovered from `bodies`).

        Args:
            pending: events of all messages, in message order, and the rejections so far.
            recv_ns: receive time for events without `ts_recv_ns`.
            bodies: the message bodies (for the bytes of a rejected event of a batch).

        Returns:
            The validated rows (rows of rejected messages/events removed) and the rejections.
        """
        rejected = list(pending.rejected)
        rejected_events = list(pending.rejected_events)
        counts = pending.counts
        row_message = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        try:
            table, bad_rows = self.to_arrow(pending.events, recv_ns)
        except Exception as exc:  # a failure no check foresaw: isolate it event by event
            return self._assemble_each(pending, recv_ns, bodies, exc)
        if not bad_rows:
            return DecodedBatch(table, row_message, rejected, rejected_events, pending.unknown)
        row_event = pending.row_events()
        event_raw = EventBytes(bodies)
        bad_messages: set[int] = set()
        bad_events: set[tuple[int, int]] = set()
        for row, reason in bad_rows:
            m, e = int(row_message[row]), int(row_event[row])
            if m in pending.batches and e >= 0:
                if (m, e) not in bad_events:
                    bad_events.add((m, e))
                    raw = event_raw(m, e)
                    rejected_events.append((m, e, reason, raw))
            elif m not in bad_messages:
                bad_messages.add(m)
                rejected.append((m, reason))
        keep = np.ones(len(row_message), dtype=bool)
        if bad_messages:
            keep &= ~np.isin(row_message, np.fromiter(bad_messages, dtype=np.int64))
        if bad_events:
            packed = (row_message << _EVENT_BITS) | (row_event + 1)
            bad = np.fromiter(((m << _EVENT_BITS) | (e + 1) for m, e in bad_events), np.int64)
            keep &= ~np.isin(packed, bad)
        table = table.filter(pa.array(keep))
        rejected.sort()
        rejected_events.sort(key=lambda r: (r[0], r[1]))
        return DecodedBatch(table, row_message[keep], rejected, rejected_events, pending.unknown)

    def _assemble_each(
        self, pending: Pending, recv_ns: int, bodies: Sequence[bytes] | None, exc: Exception
    ) -> DecodedBatch:
        """Column-wise building failed as a whole: build each message's/event's rows alone."""
        event_raw = EventBytes(bodies)
        row_events = pending.row_events()
        tables: list[pa.Table] = []
        messages: list[np.ndarray] = []
        rejected = list(pending.rejected)
        rejected_events = list(pending.rejected_events)
        start = 0
        for m, count in enumerate(pending.counts):
            events = pending.events[start : start + count]
            ids = row_events[start : start + count].tolist()
            start += count
            units = [[i] for i in range(count)] if m in pending.batches else [list(range(count))]
            for unit in units:
                if not unit:
                    continue
                try:
                    part, bad = self.to_arrow([events[i] for i in unit], recv_ns)
                    if bad:
                        raise MessageError(bad[0][1])
                except Exception as err:
                    e = ids[unit[0]]
                    if m in pending.batches and e >= 0:
                        raw = event_raw(m, e)
                        rejected_events.append((m, e, rejection_reason(err), raw))
                    else:
                        rejected.append((m, rejection_reason(err)))
                    continue
                tables.append(part)
                messages.append(np.full(part.num_rows, m, dtype=np.int64))
        if tables:
            table = pa.concat_tables(tables)
            row_message = np.concatenate(messages)
        else:
            table = _nullable(self.arrow_schema).empty_table()
            row_message = np.zeros(0, dtype=np.int64)
        rejected.sort()
        rejected_events.sort(key=lambda r: (r[0], r[1]))
        return DecodedBatch(table, row_message, rejected, rejected_events, pending.unknown)

    # ---- columns --------------------------------------------------------------------------------

    def _columns(self, events: list[Any]) -> list[list[Any]]:
        n = len(self.column_names)
        if not events:
            return [[] for _ in range(n)]
        # One C-level pass per column (no per-event tuples).
        columns = [list(map(g, events)) for g in self._column_getters]
        # A former name (the table renamed the column) fills the column where the current
        # name is absent.
        for c, getter in self._alias_getters:
            former = list(map(getter, events))
            if former.count(None) != len(former):
                col = columns[c]
                for i, v in enumerate(former):
                    if v is not None and col[i] is None:
                        col[i] = v
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
                for c, getter in self._alias_getters:
                    v = getter(payload)
                    if v is not None and values[c] is None:
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
        arrays: dict[str, pa.Array] = {}
        bad: dict[int, str] = {}
        for name, values in zip(self.column_names, columns, strict=True):
            target = self.arrow_schema.field(name).type
            if name == "ts_recv_ns":
                values = [recv_ns if v is None else v for v in values]
            try:
                arr = pa.array(values, type=target)
            except Exception:  # a value Arrow cannot hold: find it, reject its row
                arr = _array_isolating(name, values, target, bad)
            arrays[name] = arr
        ts = arrays.get("ts_event_ns")
        # Only against a receive time that is a time (unit tests and tools decode with 0 or 1).
        if ts is not None and pa.types.is_integer(ts.type) and recv_ns >= MIN_TS_NS:
            ahead = pc.fill_null(pc.greater(ts, recv_ns + MAX_EVENT_LEAD_NS), False)
            for row in np.flatnonzero(ahead.to_numpy(zero_copy_only=False)):
                lead = (ts[int(row)].as_py() - recv_ns) / 86_400e9
                bad.setdefault(
                    int(row),
                    f"ts_event_ns is {lead:,.1f} days after the lake received the event (at "
                    "most 1 day ahead: a wrong clock, or not Unix nanoseconds)",
                )
        return self.validate_arrays(arrays, bad)

    def validate_arrays(
        self, arrays: dict[str, pa.Array], bad: dict[int, str] | None = None
    ) -> tuple[pa.Table, list[tuple[int, str]]]:
        """Fill declared defaults, validate the columns, add the derived partition source.

        Args:
            arrays: one array per column of the table (except `ts_event`), same length,
                `ts_recv_ns` already filled.
            bad: `(row → reason)` found while building them.

        Returns:
            The table (all rows, in the live schema) and `(row, reason)` for invalid rows.
        """
        bad = {} if bad is None else bad
        for name, default in self.defaults.items():
            arr = arrays[name]
            if arr.null_count:
                arrays[name] = pc.fill_null(arr, pa.scalar(default, arr.type))
        for name in self.required:
            arr = arrays[name]
            if arr.null_count:
                for row in np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)):
                    bad.setdefault(int(row), f"missing required field '{name}'")
        for name, arr in arrays.items():
            if arr.null_count == len(arr):
                continue
            rule = self.rules[name]
            if pa.types.is_floating(arr.type):
                ok, reason = rule.float_check(arr)
                self._flag(arr, ok, bad, reason)
            elif pa.types.is_integer(arr.type) and (
                rule.gt is not None or rule.ge is not None or rule.le is not None
            ):
                self._flag(arr, rule.bounds_mask(arr), bad, f"{name} must be {rule.bounds_text()}")
        if "ts_event_ns" in arrays:
            ts = arrays["ts_event_ns"]
            ok = pc.and_(pc.greater_equal(ts, MIN_TS_NS), pc.less(ts, MAX_TS_NS))
            self._flag(ts, ok, bad, "ts_event_ns is not a plausible Unix time in nanoseconds")
        pk = self.partition_key
        pk_type = arrays[pk].type if pk is not None and pk in arrays else None
        if (
            pk is not None
            and pk_type is not None
            and (pa.types.is_string(pk_type) or pa.types.is_large_string(pk_type))
        ):
            key = arrays[pk]
            # Checked on the distinct values (a fetch holds few symbols), rows only on failure.
            distinct = pc.unique(key)
            size = pc.binary_length(distinct)
            clean = pc.and_(
                pc.and_(pc.greater(size, 0), pc.less_equal(size, MAX_PARTITION_VALUE_BYTES)),
                pc.invert(pc.match_substring_regex(distinct, CONTROL_CHARS)),
            )
            if not pc.all(pc.fill_null(clean, True)).as_py():
                name = pk
                self._flag(key, pc.greater(pc.utf8_length(key), 0), bad, f"{name} is empty")
                self._flag(
                    key,
                    pc.less_equal(pc.binary_length(key), MAX_PARTITION_VALUE_BYTES),
                    bad,
                    f"{name} is longer than {MAX_PARTITION_VALUE_BYTES} bytes "
                    "(a partition value must fit in a file path)",
                )
                self._flag(
                    key,
                    pc.invert(pc.match_substring_regex(key, CONTROL_CHARS)),
                    bad,
                    f"{name} contains a control character",
                )
        if self.has_derived_ts:
            ts_ns = arrays["ts_event_ns"]
            filled = pc.fill_null(ts_ns, MIN_TS_NS)
            micros = pc.divide(filled, pa.scalar(1000, pa.int64()))
            arrays[DERIVED_TS] = micros.cast(pa.timestamp("us", tz="UTC"))
        table = pa.Table.from_arrays(
            [arrays[f.name] for f in self.arrow_schema], schema=_nullable(self.arrow_schema)
        )
        return table, sorted(bad.items())

    @staticmethod
    def _flag(arr: pa.Array, ok: pa.Array | None, bad: dict[int, str], reason: str) -> None:
        # Nulls in `ok` come from null values: those are checked by the required-field rule.
        if ok is None:
            return
        failed = pc.invert(pc.fill_null(ok, True))
        if pc.any(failed).as_py():
            for row in np.flatnonzero(failed.to_numpy(zero_copy_only=False)):
                value = arr[int(row)].as_py()
                shown = repr(value)
                if len(shown) > 80:
                    shown = shown[:77] + "..."
                bad.setdefault(int(row), f"{reason}, got {shown}")


def _array_isolating(
    name: str, values: list[Any], target: pa.DataType, bad: dict[int, str]
) -> pa.Array:
    """Build a column value by value: values Arrow refuses become null and reject their row."""
    clean = list(values)
    for row, value in enumerate(values):
        try:
            pa.array([value], type=target)
        except Exception as exc:
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            text = " ".join(str(exc).split())[:200]
            bad.setdefault(row, f"{name}: cannot store {shown} ({type(exc).__name__}: {text})")
            clean[row] = None
    return pa.array(clean, type=target)


#: Envelope fields with a meaning of their own: never read as a renamed column's old name.
_NOT_ALIASES = frozenset({"schema_name", "schema_version", "key", "payload"})


def codec_for(identifier: str, table: Table, partition_key: str | None) -> TableCodec:
    """The codec of `table`'s live schema, reading renamed columns under their former names too.

    Args:
        identifier: the table identifier.
        table: the live table (its schema history gives the former names).
        partition_key: the declared identity-partition column.
    """
    schema = table.schema()
    aliases = NameHistory(table.schemas().values()).former_names(schema)
    return TableCodec(identifier, schema, partition_key, aliases=aliases)


def _declared_columns(identifier: str) -> dict[str, ColumnDefinition]:
    """Declared columns of a shipped table (none for a table the catalog does not declare)."""
    from iceberg_lake.tables import registry

    reg = registry()
    if identifier not in reg:
        return {}
    return {c.name: c for c in reg.get(identifier).columns}


def _nullable(schema: pa.Schema) -> pa.Schema:
    """The schema with every field nullable (rows are checked, then cast to the real schema)."""
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast validated rows to the live table's Arrow schema (required → non-nullable)."""
    return table.cast(schema)
