"""Poison messages of issue 11, per table: bodies that once stopped ingestion, with the reason
each must now be dead-lettered with. Shared by the decoder unit tests and the service test."""

from __future__ import annotations

import json

from ingest_support import gold_payload, make_event

GOLD = "gold.levels_signals"
INT64_MAX_TEXT = "<= 9223372036854775807"


def _enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _deep(n: int = 100_000) -> bytes:
    return b"[" * n + b"]" * n


def _deep_object(n: int = 100_000) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def poison_messages(table: str, i: int = 1) -> list[tuple[str, bytes, str]]:
    """`(case, body, expected reason fragment)` for `table` (a Bronze table or Gold)."""
    if table == GOLD:
        good = gold_payload(i)
        text = _enc(good)
        return [
            ("ts-infinity", text.replace(b'"ts": ', b'"ts": Infinity, "x": ', 1), "finite"),
            ("ts-1e300", _enc({**good, "ts": 1e300}), "plausible Unix time in milliseconds"),
            ("ts-huge-int", _enc({**good, "ts": 10**40}), "plausible Unix time in milliseconds"),
            ("ts-2^64", _enc({**good, "ts": 2**64 - 1}), "plausible Unix time in milliseconds"),
            ("invalid-utf8", text.replace(b'"STRIKE"', b'"STR\xffIKE"', 1), "invalid UTF-8"),
            ("lone-surrogate", text.replace(b'"STRIKE"', b'"\\ud800"', 1), "lone surrogate"),
            ("deep-array", _deep(), "nested deeper"),
            ("deep-object", _deep_object(), "nested deeper"),
            ("truncated", text[: len(text) // 2], "malformed JSON: "),
            ("empty-batch", b"[]", "empty batch"),
            ("huge-underlying", _enc({**good, "underlying": "U" * 300}), "longer than 64 bytes"),
        ]
    good = make_event(table, i)
    text = _enc(good)
    key = "underlying" if "underlying" in good else "symbol"
    return [
        ("seq-2^63", _enc({**good, "seq": 2**63}), INT64_MAX_TEXT),
        ("ts-2^64-1", _enc({**good, "ts_event_ns": 2**64 - 1}), INT64_MAX_TEXT),
        ("invalid-utf8", text.replace(b'"test"', b'"te\xffst"', 1), "invalid UTF-8"),
        ("lone-surrogate", text.replace(b'"test"', b'"\\ud800"', 1), "lone surrogate"),
        ("deep-array", _deep(), "nested deeper"),
        ("deep-object", _deep_object(), "nested deeper"),
        ("truncated", text[: len(text) // 2], "malformed JSON: "),
        ("empty-batch", b"[]", "empty batch"),
        (f"huge-{key}", _enc({**good, key: "S" * 300}), "longer than 64 bytes"),
        (f"control-{key}", _enc({**good, key: "A\nB"}), "control character"),
    ]
