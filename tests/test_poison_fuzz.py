"""Property-based fuzzing of the decoders: whatever the bytes, decoding never raises and every
message ends up stored, rejected, or split into stored and rejected events (budget ~15 s)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import SUBJECTS, gold_payload, make_event

from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.ingest.routing import BronzeDecoder, GoldDecoder, InferredDecoder, RoutedBatch
from iceberg_lake.tables import registry

GOLD = "gold.levels_signals"
TABLES = [*SUBJECTS, GOLD]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same inputs on every run: a CI failure reproduces locally
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decoder(table: str) -> BronzeDecoder | GoldDecoder:
    d = registry().get(table)
    codec = TableCodec(table, d.iceberg_schema(), d.partition_key)
    return GoldDecoder(codec) if table == GOLD else BronzeDecoder(codec)


DECODERS = {t: _decoder(t) for t in TABLES}
_bronze = [d for d in registry().ingest_tables() if d.namespace == "bronze"]
INFERRED = InferredDecoder(
    {d.schema_name: DECODERS[d.identifier].codec for d in _bronze},  # type: ignore[union-attr]
    set(),
)


def _valid(table: str, i: int) -> Any:
    return gold_payload(i) if table == GOLD else make_event(table, i)


def _check(out: RoutedBatch, n: int) -> None:
    """Every message accounted for; a message rejected whole has no stored rows."""
    stored = {int(m) for b in out.tables.values() for m in b.row_message.tolist()}
    whole = {i for i, _, _ in out.rejected}
    partial = {i for i, _, _, _, _ in out.rejected_events}
    assert not stored & whole
    assert stored | whole | partial | set(out.skipped) == set(range(n))
    for _, _, _, reason, raw in out.rejected_events:
        assert reason and isinstance(raw, bytes)
    for _, _, reason in out.rejected:
        assert reason


def _run(table: str, bodies: list[bytes]) -> None:
    for dec in (DECODERS[table], INFERRED):
        out = dec.decode(bodies, ["market.raw"] * len(bodies), 1)
        _check(out, len(bodies))


JSON_ODD = st.sampled_from(
    [
        2**63,
        -(2**63) - 1,
        2**64 - 1,
        10**40,
        1e300,
        float("inf"),
        float("-inf"),
        float("nan"),
        "\ud800",
        "a\x00b",
        "S" * 300,
        "",
        None,
        True,
        [],
        {},
        [1, [2, [3]]],
        -1,
        0,
        300,
        "C",
        "X",
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | JSON_ODD,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _dump(obj: Any) -> bytes:
    text = json.dumps(obj, allow_nan=True)
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def mutated_event(
    draw: st.DrawFn, table: str, fields: bool = True, damage: str | None = None
) -> bytes:
    """A valid event/payload with fields replaced, removed or added; or its bytes damaged."""
    obj = _valid(table, draw(st.integers(0, 1000)))
    target = obj
    if table == GOLD and draw(st.booleans()):
        target = obj["levels"][0]
    keys = sorted(target)
    for _ in range(draw(st.integers(0, 3)) if fields else 0):
        key = draw(st.sampled_from(keys + ["extra", "payload", "key"]))
        action = draw(st.sampled_from(["set", "del"]))
        if action == "set":
            target[key] = draw(JSON_VALUES)
        else:
            target.pop(key, None)
    body = _dump(obj)
    if damage is None:
        damage = draw(st.sampled_from(["none", "truncate", "flip", "insert", "in-string"]))
    if damage == "truncate" and body:
        body = body[: draw(st.integers(0, len(body)))]
    elif damage == "flip" and body:
        pos = draw(st.integers(0, len(body) - 1))
        body = body[:pos] + bytes([draw(st.integers(0, 255))]) + body[pos + 1 :]
    elif damage == "in-string" and b': "' in body:
        # Invalid UTF-8, a lone surrogate escape or a control escape inside a string value.
        starts = [n + 3 for n in range(len(body)) if body.startswith(b': "', n)]
        pos = draw(st.sampled_from(starts))
        junk = draw(st.sampled_from([b"\xff", b"\xc3(", b"\\ud800", b"\\udc00x", b"\\u0000"]))
        body = body[:pos] + junk + body[pos:]
    elif damage == "insert":
        pos = draw(st.integers(0, len(body)))
        body = body[:pos] + draw(st.binary(max_size=6)) + body[pos:]
    return body


@st.composite
def fetch(draw: st.DrawFn, table: str) -> list[bytes]:
    """A fetch of valid, mutated, batched (array/NDJSON) and random messages."""
    bodies: list[bytes] = []
    # Half the fetches hold single objects only: the one-call fast path is tried on them.
    kinds = ["valid", "mutated", "string-damage"]
    if draw(st.booleans()):
        kinds += ["array", "ndjson", "random"]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(kinds))
        if kind == "valid":
            bodies.append(_dump(_valid(table, draw(st.integers(0, 100)))))
        elif kind == "mutated":
            bodies.append(draw(mutated_event(table)))
        elif kind == "string-damage":
            bodies.append(draw(mutated_event(table, fields=False, damage="in-string")))
        elif kind == "random":
            bodies.append(draw(st.binary(max_size=64)))
        else:
            parts = draw(st.lists(mutated_event(table), min_size=0, max_size=4))
            if kind == "array":
                bodies.append(b"[" + b",".join(parts) + b"]")
            else:
                bodies.append(b"\n".join(parts))
    return bodies


@FUZZ
@given(table=st.sampled_from(TABLES), bodies=st.lists(st.binary(max_size=200), max_size=5))
def test_random_bytes_never_raise(table: str, bodies: list[bytes]) -> None:
    _run(table, bodies)


@FUZZ
@given(data=st.data(), table=st.sampled_from(TABLES))
def test_mutated_valid_messages_never_raise(data: st.DataObject, table: str) -> None:
    bodies = data.draw(fetch(table))
    _run(table, bodies)
    # Valid messages of the fetch are stored whatever their neighbours are.
    valid = [i for i, b in enumerate(bodies) if _ok(table, b)]
    out = DECODERS[table].decode(bodies, ["s"] * len(bodies), 1)
    stored = {int(m) for m in out.tables[table].row_message.tolist()}
    assert set(valid) <= stored


def _ok(table: str, body: bytes) -> bool:
    """True for a body that is exactly one untouched valid event/payload."""
    try:
        obj = json.loads(body)
        if body != _dump(obj):
            return False
    except (ValueError, RecursionError):
        return False
    if table == GOLD:
        return isinstance(obj, dict) and obj == gold_payload(_gold_index(obj))
    if not isinstance(obj, dict) or not isinstance(obj.get("seq"), int):
        return False
    return obj == make_event(table, obj["seq"])


def _gold_index(obj: dict) -> int:
    ts = obj.get("ts")
    base = gold_payload(0)["ts"]
    return (ts - base) // 1000 if isinstance(ts, int) else -1
