"""Micro-benchmark of the decoder alone: message bodies → validated Arrow rows (no bus, no commit).

Rows (`decode-<table>`): events/s of `TableCodec.decode` (Bronze stocks trades, stocks quotes,
options trades) for fetches of 5,000 single-event messages and of 50 messages × 100 events,
clean, and the same fetches with one bad message in them (a negative price; as a batch, 100 bad
events), plus `GoldDecoder` on 1,000 payloads of 4 levels; baseline: msgspec parsing the same
bodies into Python objects (no types, no validation, no Arrow). Best of 7 per row, in CPU time
of the process (the machine's cores are shared). To compare two checkouts, alternate runs with a
different `PYTHONPATH` (docs/ingest.md's figures: best of 3 alternating runs each).

Usage: `python scripts/bench_decode.py [--quick] [--json]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

BASE_NS = 1_765_900_000 * 1_000_000_000


def _trade(i: int) -> dict[str, Any]:
    ts = BASE_NS + i * 1000
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1000,
        "source": "bench",
        "symbol": ("SPY", "QQQ", "IWM", "AAPL")[i % 4],
        "price": 500.0 + (i % 100) / 100,
        "size": 1 + i % 300,
        "exchange": 4,
        "seq": i,
    }


def _quote(i: int) -> dict[str, Any]:
    ts = BASE_NS + i * 1000
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1000,
        "source": "bench",
        "symbol": "SPY",
        "bid_px": 500.0,
        "ask_px": 500.01,
        "bid_sz": 3,
        "ask_sz": 4,
        "bid_exch": 1,
        "ask_exch": 2,
        "seq": i,
    }


def _option(i: int) -> dict[str, Any]:
    ts = BASE_NS + i * 1000
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1000,
        "source": "bench",
        "underlying": "SPY",
        "option_symbol": "SPY251219C00500000",
        "exp_date": "2025-12-19",
        "strike": 500.0,
        "right": "C",
        "price": 1.25,
        "size": 10,
        "aggressor": 1,
        "seq": i,
    }


def _bodies(make: Any, events: int, per_message: int, poison: bool) -> list[bytes]:
    if per_message == 1:
        out = [json.dumps(make(i)).encode() for i in range(events)]
    else:
        out = [
            json.dumps([make(i) for i in range(j, j + per_message)]).encode()
            for j in range(0, events, per_message)
        ]
    if poison:
        # A value both old and new decoders reject (a negative price), so runs compare.
        bad = make(0)
        bad["price" if "price" in bad else "bid_px"] = -1.0
        out[len(out) // 2] = json.dumps(bad if per_message == 1 else [bad] * per_message).encode()
    return out


def _best(fn: Any, events: int, repeats: int) -> float:
    # CPU time of this process (all threads): the 2 cores are shared, wall time is not stable.
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return events / max(min(times), 1e-9)


def _parse_only(bodies: list[bytes]) -> None:
    import msgspec

    decode = msgspec.json.decode
    for b in bodies:
        decode(b)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Decode throughput rows (events/s), each beside msgspec parsing the same bodies."""
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.ingest.routing import GoldDecoder
    from iceberg_lake.tables import registry

    events = 1000 if quick else 5000
    repeats = 3 if quick else 7
    rows: list[dict[str, Any]] = []

    def row(table: str, shape: str, rate: float, base: float, n: int) -> dict[str, Any]:
        return {
            "benchmark": f"decode-{table.split('.', 1)[1]}",
            "metric": f"events/s ({n:,} events, {shape})",
            "value": round(rate),
            "unit": "events/s",
            "baseline": "msgspec.json.decode of the same bodies (parse only)",
            "baseline_value": round(base),
        }

    for table, make in (
        ("bronze.stocks_trades", _trade),
        ("bronze.stocks_quotes", _quote),
        ("bronze.options_trades", _option),
    ):
        d = registry().get(table)
        codec = TableCodec(table, d.iceberg_schema(), d.partition_key)
        for per_message in (1, 100):
            for poison in (False, True):
                bodies = _bodies(make, events, per_message, poison)
                rate = _best(lambda b=bodies, c=codec: c.decode(b, recv_ns=1), events, repeats)
                base = _best(lambda b=bodies: _parse_only(b), events, repeats)
                shape = f"{per_message}/msg" + (" +1 bad msg" if poison else "")
                rows.append(row(table, shape, rate, base, events))
    d = registry().get("gold.levels_signals")
    gold = GoldDecoder(TableCodec(d.identifier, d.iceberg_schema(), d.partition_key))
    payload = {
        "ts": BASE_NS // 1_000_000,
        "spy": {"spot": 545.4, "bid": 545.41, "ask": 545.43},
        "levels": [
            {
                "id": f"L{k}",
                "price": 545.0 + k,
                "kind": "STRIKE",
                "barrier": {"state": "WALL", "added": 3},
                "tape": {"sweep": {"detected": True}},
            }
            for k in range(4)
        ],
    }
    bodies = [json.dumps(payload).encode()] * (events // 5)
    subjects = ["levels.signals"] * len(bodies)
    n = 4 * len(bodies)
    rate = _best(lambda: gold.decode(bodies, subjects, 1), n, repeats)
    base = _best(lambda: _parse_only(bodies), n, repeats)
    rows.append(row(d.identifier, "1 payload × 4 levels/msg", rate, base, n))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 events, best of 3")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        return
    for r in rows:
        print(
            f"{r['benchmark']:<24} {r['metric']:<44} {r['value']:>10,} events/s"
            f"   parse-only {r['baseline_value']:>10,}"
        )


if __name__ == "__main__":
    main()
