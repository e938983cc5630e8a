"""Micro-benchmark of the decoder alone: message bodies → validated Arrow rows (no bus, no commit).

Rows: events/s of `TableCodec.decode` (Bronze stocks trades, stocks quotes, options trades) and
`GoldDecoder` for fetches of 5,000 single-event messages and of 50 messages × 100 events, clean
input, and the same fetches with one poison message in them (the per-message/per-event fallback).
Best of 5 per row. Compare two checkouts in the same run by running it twice with a different
`PYTHONPATH` (the figures in docs/ingest.md were taken that way).

Usage: `python scripts/bench_decode.py [--json]`.
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


def _best(fn: Any, events: int) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return events / min(times)


def run() -> list[dict[str, Any]]:
    """Decode throughput rows (events/s)."""
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.ingest.routing import GoldDecoder
    from iceberg_lake.tables import registry

    rows: list[dict[str, Any]] = []
    for table, make in (
        ("bronze.stocks_trades", _trade),
        ("bronze.stocks_quotes", _quote),
        ("bronze.options_trades", _option),
    ):
        d = registry().get(table)
        codec = TableCodec(table, d.iceberg_schema(), d.partition_key)
        for per_message in (1, 100):
            for poison in (False, True):
                bodies = _bodies(make, 5000, per_message, poison)
                n = 5000
                rate = _best(lambda b=bodies, c=codec: c.decode(b, recv_ns=1), n)
                rows.append(
                    {
                        "table": table,
                        "shape": f"{per_message}/msg" + (" +1 poison" if poison else ""),
                        "events_per_s": round(rate),
                    }
                )
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
    bodies = [json.dumps(payload).encode()] * 1000
    subjects = ["levels.signals"] * len(bodies)
    rate = _best(lambda: gold.decode(bodies, subjects, 1), 4000)
    rows.append(
        {"table": d.identifier, "shape": "1 payload × 4 levels/msg", "events_per_s": round(rate)}
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        return
    for r in rows:
        print(f"{r['table']:<28} {r['shape']:<28} {r['events_per_s']:>12,} events/s")


if __name__ == "__main__":
    main()
