"""Gold: flatten `levels.signals` payloads into one row per level (the spec's levels.signals.v1).

Rules (the spec's "Flattening Logic"):

* `ts` is Unix milliseconds → `ts_event_ns = ts * 1_000_000` (a payload may carry `ts_event_ns`
  instead, which is used as is).
* `underlying`: the `underlying` argument if given, else the payload's `underlying` or `symbol`
  key, else the market-context key — the top-level object holding `spot` (the spec's example
  `"spy": {...}` → `"SPY"`, upper-cased). The same object gives `spot`, `bid`, `ask` (top-level
  `spot`/`bid`/`ask` are used when there is no such object).
* each level: `id` → `level_id`, `kind` → `level_kind`, `price` → `level_price`, `direction`,
  `distance`, `break_score_raw`, `break_score_smooth`, `signal`, `confidence`, `note`; nested
  objects are flattened with `_` (`barrier.delta_liq` → `barrier_delta_liq`,
  `tape.sweep.detected` → `tape_sweep_detected`, `runway.next_level.id` →
  `runway_next_level_id`). Anything else is kept under its own name, so the writer stores it
  when the table has the column (a migration added it) or counts it as a field it does not know.
* the payload's other top-level fields (`"regime": "trend"`; objects flattened with `_`) and the
  market-context object's fields other than `spot`/`bid`/`ask` (`"spy": {"vwap": …}` → `vwap`)
  go into every level's row under their own names, the same way; evolve14: they were dropped
  before the writer saw them. A name that is a declared level column (`direction`, `signal`,
  `note`, …) is the level's, never the payload's: such a field goes under `payload_<name>` (a
  context field under `<context key>_<name>`), which the writer stores if a migration added
  it, else counts (review14b: the context's `direction` filled every level's).
* an envelope (`{"schema_name": "levels.signals.v1", "payload": {...}}`) is unwrapped; its
  `ts_event_ns` and `key` fill a payload without `ts` / `underlying`.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Any

#: Plausible `ts` values (Unix ms): 2000-01-01 .. 2100-01-01, as for `ts_event_ns`.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000
_LEVEL_RENAMES = {"id": "level_id", "kind": "level_kind", "price": "level_price"}
_CONTEXT = ("spot", "bid", "ask")
#: Top-level keys the flattening reads itself (not carried into the level rows).
_PAYLOAD_KEYS = ("levels", "payload", "ts", "ts_event_ns", "underlying", "symbol")


def _ts_ms_to_ns(ts: Any) -> int:
    """`ts` (Unix milliseconds) → nanoseconds, refusing anything a long cannot hold."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise ValueError(f"'ts' must be Unix milliseconds, got {ts!r}")
    if isinstance(ts, float) and not math.isfinite(ts):
        raise ValueError(f"'ts' must be a finite number of Unix milliseconds, got {ts!r}")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        shown = repr(ts) if len(repr(ts)) <= 40 else repr(ts)[:37] + "..."
        raise ValueError(f"'ts' is not a plausible Unix time in milliseconds, got {shown}")
    if isinstance(ts, int):
        return ts * 1_000_000
    # A fractional millisecond keeps its digits: the float's shortest decimal (what the message
    # said) scaled exactly, to the nearest nanosecond; `ts * 1e6` in floats is off by up to
    # ~100 ns at today's times, and `int(ts)` dropped the fraction.
    return int((Decimal(repr(ts)) * 1_000_000).to_integral_value(ROUND_HALF_EVEN))


def _flatten(prefix: str, obj: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value


@lru_cache(maxsize=1)
def _level_columns() -> frozenset[str]:
    """The declared Gold columns a level's fields fill (not the payload's or context's)."""
    from iceberg_lake.tables import registry

    payload_level = {"ts_event_ns", "ts_event", "underlying", *_CONTEXT}
    columns = registry().get("gold.levels_signals").column_names
    return frozenset(c for c in columns if c not in payload_level)


def _carry(prefix: str, fields: dict[str, Any], out: dict[str, Any]) -> None:
    """`fields` (flattened) into `out` under their own names, or `<prefix>_<name>` where the
    name is a level column."""
    flat: dict[str, Any] = {}
    _flatten("", fields, flat)
    levels = _level_columns()
    for name, value in flat.items():
        out[f"{prefix}_{name}" if name in levels else name] = value


def _context(payload: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The market-context key and object (`"spy": {"spot": ...}`), if any."""
    for key, value in payload.items():
        if key not in ("levels", "payload") and isinstance(value, dict) and "spot" in value:
            return key, value
    return None, payload


def unwrap(message: dict[str, Any]) -> dict[str, Any]:
    """A `levels.signals` payload from a message: envelopes are unwrapped, flat payloads kept."""
    inner = message.get("payload")
    if "levels" not in message and isinstance(inner, dict):
        payload = dict(inner)
        if "ts" not in payload and "ts_event_ns" not in payload and "ts_event_ns" in message:
            payload["ts_event_ns"] = message["ts_event_ns"]
        if "underlying" not in payload and "symbol" not in payload and message.get("key"):
            payload["underlying"] = message["key"]
        return payload
    return message


def flatten_level_signals(payload: dict[str, Any], underlying: str | None = None) -> list[dict]:
    """Flatten one `levels.signals` payload into one row per level.

    Args:
        payload: the spec's payload (`ts` in ms, a market-context object, `levels`), or an
            envelope around it.
        underlying: the underlying to store; default from the payload (see module docstring).

    Returns:
        One dict per level with the Gold column names (plus any unknown fields, unchanged).
        Values are not validated here; the writer validates them against the live schema.

    Raises:
        ValueError: the payload has no `levels` list or no usable timestamp (missing,
            not a number, not finite, or not a plausible time).
    """
    payload = unwrap(payload)
    levels = payload.get("levels")
    if not isinstance(levels, list):
        raise ValueError("levels.signals payload has no 'levels' list")
    if payload.get("ts_event_ns") is not None:
        ts_event_ns = payload["ts_event_ns"]  # range-checked with the row
    elif payload.get("ts") is not None:
        ts_event_ns = _ts_ms_to_ns(payload["ts"])
    else:
        raise ValueError("levels.signals payload has no 'ts'")
    key, context = _context(payload)
    if underlying is None:
        found = payload.get("underlying") or payload.get("symbol")
        if found is None and key is not None:
            found = key.upper()
        underlying = found
    base: dict[str, Any] = {}
    if key is not None:
        _carry(key, {k: v for k, v in context.items() if k not in _CONTEXT}, base)
        top = {k: v for k, v in payload.items() if k not in _PAYLOAD_KEYS and k != key}
    else:
        # No context object: top-level spot/bid/ask are the context.
        top = {k: v for k, v in payload.items() if k not in _PAYLOAD_KEYS + _CONTEXT}
    _carry("payload", top, base)
    base.update(
        {
            "ts_event_ns": ts_event_ns,
            "underlying": underlying,
            **{c: context.get(c) for c in _CONTEXT},
        }
    )
    rows: list[dict[str, Any]] = []
    for level in levels:
        if not isinstance(level, dict):
            raise ValueError(f"a level must be an object, got {type(level).__name__}")
        row = dict(base)
        for name, value in level.items():
            if isinstance(value, dict):
                _flatten(name, value, row)
            else:
                row[_LEVEL_RENAMES.get(str(name), str(name))] = value
        rows.append(row)
    return rows
