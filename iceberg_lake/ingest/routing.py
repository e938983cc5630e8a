"""Decoders for the three kinds of consumers: one Bronze table, Gold, and schema inference.

Each turns a fetch (bodies + subjects) into validated rows per target table and a list of
rejected messages, with the message index of every row so the writer can track stream sequences.

Schema inference (the spec's rules, for messages on `market.*` subjects that map to no table):
an envelope's `schema_name` (`stocks.trades.v1`) wins; otherwise by field presence, in order:
`levels` or `bid_px_1` → futures.mbp10; `bid_px` and `ask_px` → stocks.quotes; `underlying` and
`option_symbol` with any greek → options.greeks_snapshots, without → options.trades; `symbol`,
`price`, `size` with an ES symbol (`ES`, `ES.c.0`, `ESZ5`) → futures.trades, else stocks.trades.
A message that matches nothing is dead-lettered with target `unrouted`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from iceberg_lake.ingest.decode import DecodedBatch, MessageError, TableCodec
from iceberg_lake.ingest.gold import flatten_level_signals

UNROUTED = "unrouted"
_GREEKS = ("delta", "gamma", "theta", "vega", "implied_volatility")


@dataclass
class RoutedBatch:
    """The outcome of decoding one fetch.

    Attributes:
        tables: target table → validated rows (with `row_message` indexes into the fetch).
        rejected: `(message index, target table, reason)`.
        skipped: message indexes that belong to another consumer (mapped subjects).
        unknown_fields: `(table, field)` → count of events whose field was dropped.
    """

    tables: dict[str, DecodedBatch] = field(default_factory=dict)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    unknown_fields: dict[tuple[str, str], int] = field(default_factory=dict)


class Decoder(Protocol):
    """Turns message bodies into rows per table."""

    targets: list[str]

    def decode(
        self, bodies: Sequence[bytes], subjects: Sequence[str], recv_ns: int
    ) -> RoutedBatch: ...


def _parse(body: bytes) -> Any:
    """Parse JSON (msgspec; stdlib fallback so NaN literals get a precise reason later)."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise MessageError(f"malformed JSON: {exc}") from None


def _parse_items(body: bytes) -> list[Any]:
    body = body.strip()
    if not body:
        raise MessageError("empty message")
    if body[:1] == b"{" and b"\n" in body:
        return [_parse(line) for line in body.split(b"\n") if line.strip()]
    obj = _parse(body)
    return obj if isinstance(obj, list) else [obj]


class BronzeDecoder:
    """Decoder of a consumer that feeds exactly one Bronze table."""

    def __init__(self, codec: TableCodec) -> None:
        self.codec = codec
        self.targets = [codec.identifier]

    def decode(self, bodies: Sequence[bytes], subjects: Sequence[str], recv_ns: int) -> RoutedBatch:
        """Decode a fetch (see `TableCodec.decode`)."""
        batch = self.codec.decode(bodies, recv_ns)
        table = self.codec.identifier
        return RoutedBatch(
            tables={table: batch},
            rejected=[(i, table, r) for i, r in batch.rejected],
            unknown_fields={(table, k): v for k, v in batch.unknown_fields.items()},
        )


class GoldDecoder:
    """Decoder of `levels.signals`: every payload flattened into one row per level."""

    def __init__(self, codec: TableCodec) -> None:
        self.codec = codec
        self.targets = [codec.identifier]

    def decode(self, bodies: Sequence[bytes], subjects: Sequence[str], recv_ns: int) -> RoutedBatch:
        """Decode a fetch: parse, flatten, convert against the live schema, validate."""
        events: list[Any] = []
        counts: list[int] = []
        rejected: list[tuple[int, str]] = []
        unknown: dict[str, int] = {}
        for i, body in enumerate(bodies):
            try:
                rows: list[dict[str, Any]] = []
                for payload in _parse_items(body):
                    if not isinstance(payload, dict):
                        raise MessageError("a levels.signals payload must be a JSON object")
                    try:
                        rows.extend(flatten_level_signals(payload))
                    except ValueError as exc:
                        raise MessageError(str(exc)) from None
                evs, unk = self.codec.convert(rows)
            except MessageError as exc:
                rejected.append((i, exc.reason))
                counts.append(0)
                continue
            for k, v in unk.items():
                unknown[k] = unknown.get(k, 0) + v
            events.extend(evs)
            counts.append(len(evs))
        batch = self.codec.assemble(events, counts, rejected, unknown, recv_ns)
        table = self.codec.identifier
        return RoutedBatch(
            tables={table: batch},
            rejected=[(i, table, r) for i, r in batch.rejected],
            unknown_fields={(table, k): v for k, v in batch.unknown_fields.items()},
        )


def infer_schema_name(event: dict[str, Any]) -> str | None:
    """The schema (`stocks.trades`) of an event on an unmapped subject, by the spec's rules."""
    name = event.get("schema_name")
    if isinstance(name, str) and name:
        base = name.rsplit(".v", 1)[0] if ".v" in name else name
        return base
    fields = dict(event)
    if isinstance(event.get("payload"), dict):
        fields.update(event["payload"])
    if "levels" in fields or "bid_px_1" in fields:
        return "futures.mbp10"
    if "bid_px" in fields and "ask_px" in fields:
        return "stocks.quotes"
    if "underlying" in fields and "option_symbol" in fields:
        if any(g in fields for g in _GREEKS):
            return "options.greeks_snapshots"
        return "options.trades"
    if "symbol" in fields and "price" in fields and "size" in fields:
        symbol = str(fields.get("symbol") or "")
        return "futures.trades" if symbol.upper().startswith("ES") else "stocks.trades"
    return None


def _mbp10_levels(event: dict[str, Any]) -> None:
    """Spread an MBP-10 `levels` list (`[{bid_px, bid_sz, ask_px, ask_sz}, ...]`) into columns."""
    target = event["payload"] if isinstance(event.get("payload"), dict) else event
    levels = target.pop("levels", None)
    if isinstance(levels, list):
        for n, level in enumerate(levels[:10], start=1):
            if isinstance(level, dict):
                for k in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
                    if k in level:
                        target[f"{k}_{n}"] = level[k]


class InferredDecoder:
    """Decoder of the `market.>` inference consumer.

    Args:
        codecs: schema name (`stocks.trades`) → codec of its Bronze table.
        mapped_subjects: subjects that have their own consumer (skipped here).
    """

    def __init__(self, codecs: dict[str, TableCodec], mapped_subjects: set[str]) -> None:
        self.codecs = codecs
        self.mapped = mapped_subjects
        self.targets = [c.identifier for c in codecs.values()]

    def decode(self, bodies: Sequence[bytes], subjects: Sequence[str], recv_ns: int) -> RoutedBatch:
        """Decode a fetch: skip mapped subjects, infer each message's table, convert."""
        out = RoutedBatch()
        per: dict[str, tuple[list[Any], list[int], list[tuple[int, str]], dict[str, int]]] = {
            s: ([], [0] * len(bodies), [], {}) for s in self.codecs
        }
        for i, (body, subject) in enumerate(zip(bodies, subjects, strict=True)):
            if subject in self.mapped:
                out.skipped.append(i)
                continue
            try:
                items = _parse_items(body)
                if not items or not isinstance(items[0], dict):
                    raise MessageError("expected a JSON object")
                schema = infer_schema_name(items[0])
                if schema is None or schema not in self.codecs:
                    out.rejected.append((i, UNROUTED, "cannot infer schema from message"))
                    continue
                for item in items:
                    if isinstance(item, dict) and schema == "futures.mbp10":
                        _mbp10_levels(item)
                evs, unk = self.codecs[schema].convert(items)
            except MessageError as exc:
                out.rejected.append((i, UNROUTED, exc.reason))
                continue
            events, counts, _, unknown = per[schema]
            events.extend(evs)
            counts[i] = len(evs)
            for k, v in unk.items():
                unknown[k] = unknown.get(k, 0) + v
        for schema, (events, counts, rejected, unknown) in per.items():
            if not events:
                continue
            codec = self.codecs[schema]
            batch = codec.assemble(events, counts, rejected, unknown, recv_ns)
            out.tables[codec.identifier] = batch
            out.rejected.extend((i, codec.identifier, r) for i, r in batch.rejected)
            for k, v in batch.unknown_fields.items():
                out.unknown_fields[(codec.identifier, k)] = v
        out.rejected.sort()
        return out


DecoderFactory = Callable[[dict[str, TableCodec]], Decoder]
