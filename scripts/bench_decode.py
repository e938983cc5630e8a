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


#: The measured tables and their event makers.
_TABLES = (
    ("bronze.stocks_trades", _trade),
    ("bronze.stocks_quotes", _quote),
    ("bronze.options_trades", _option),
)


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


def _arrow_json_decode(codec: Any, bodies: list[bytes], recv_ns: int, block_size: int) -> Any:
    """The candidate: `pyarrow.json.read_json` over the bodies joined as NDJSON, or None.

    None means "use today's path" (the result must then be identical to `codec.decode`): a body
    that is not one or more one-line objects, anything pyarrow refuses (unknown field, type
    mismatch, int64/int32 overflow, lone surrogate, duplicate key), invalid UTF-8, a value
    outside a declared integer range or enumeration, or any row the table's checks reject
    (NaN, bounds, ...) — so every rejection keeps today's reason and bytes.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    from iceberg_lake.ingest.decode import DERIVED_TS, DecodedBatch

    # Every line boundary of the joined bodies must be `}\n{` (no empty body, no blank line):
    # each line is then >= 1 whole object, and the row count check below proves each line is
    # exactly one (as msgspec requires). Checked on the joined buffer: no loop per body.
    buf = b"\n".join(bodies)
    lines = buf.count(b"\n") + 1
    if buf[:1] != b"{" or buf[-1:] != b"}" or buf.count(b"}\n{") != lines - 1:
        return None
    counts = [1] * len(bodies) if lines == len(bodies) else [b.count(b"\n") + 1 for b in bodies]
    schema = pa.schema([f.with_nullable(True) for f in codec.arrow_schema if f.name != DERIVED_TS])
    try:
        table = pj.read_json(
            pa.BufferReader(buf),
            read_options=pj.ReadOptions(block_size=block_size, use_threads=False),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
    except Exception:
        return None
    n = lines
    if table.num_rows != n:
        return None
    arrays: dict[str, Any] = {}
    for f in schema:
        if f.name in table.column_names:
            arr = table.column(f.name).combine_chunks()
        else:
            arr = pa.nulls(n, f.type)
        rule = codec.rules[f.name]
        if pa.types.is_string(f.type):
            try:
                arr.validate(full=True)  # pyarrow does not check UTF-8; msgspec does
            except Exception:
                return None
        if rule.enum is not None and arr.null_count != n:
            if not pc.all(pc.is_in(arr.drop_null(), value_set=pa.array(rule.enum, f.type))).as_py():
                return None
        elif rule.int_range is not None and arr.null_count != n:
            lo, hi = rule.int_range
            mm = pc.min_max(arr)
            if mm["min"].as_py() < lo or mm["max"].as_py() > hi:
                return None
        if f.name == "ts_recv_ns" and arr.null_count:
            arr = pc.fill_null(arr, pa.scalar(recv_ns, f.type))
        arrays[f.name] = arr
    out, bad = codec.validate_arrays(arrays)
    if bad:
        return None
    return DecodedBatch(out, np.repeat(np.arange(len(bodies), dtype=np.int64), counts))


def _parse_only(bodies: list[bytes]) -> None:
    import msgspec

    decode = msgspec.json.decode
    for b in bodies:
        decode(b)


def _ndjson(make: Any, events: int, per_message: int, poison: bool = False) -> list[bytes]:
    """Bodies of `per_message` events each; several events as NDJSON (one object a line)."""
    out = [
        b"\n".join(json.dumps(make(i)).encode() for i in range(j, j + per_message))
        for j in range(0, events, per_message)
    ]
    if poison:
        bad = make(0)
        bad["price" if "price" in bad else "bid_px"] = -1.0
        out[len(out) // 2] = b"\n".join([json.dumps(bad).encode()] * per_message)
    return out


def run_arrow_json(quick: bool = False) -> list[dict[str, Any]]:
    """`pyarrow.json` candidate vs `TableCodec.decode` on the same NDJSON bodies (same run).

    Chunks of 5k/10k/20k events (the writer decodes ~1.5 MB, ~10k events, per call), single-event
    and 100-event messages, several block sizes; "+1 bad msg" measures the candidate's attempt
    plus today's path as the fallback, i.e. what wiring it in would cost on a chunk that fails.
    """
    from iceberg_lake.ingest.decode import TableCodec
    from iceberg_lake.tables import registry

    repeats = 3 if quick else 7
    chunks = (5000,) if quick else (5000, 10000, 20000)
    blocks = (1 << 20, 16 << 20) if quick else (1 << 20, 4 << 20, 16 << 20)
    rows: list[dict[str, Any]] = []
    for table, make in _TABLES:
        d = registry().get(table)
        codec = TableCodec(table, d.iceberg_schema(), d.partition_key)
        for per_message in (1, 100):
            for events in chunks:
                for poison in (False, True):
                    bodies = _ndjson(make, events, per_message, poison)
                    want = codec.decode(bodies, recv_ns=1)
                    base = _best(lambda b=bodies, c=codec: c.decode(b, recv_ns=1), events, repeats)
                    for block in blocks:
                        got = _arrow_json_decode(codec, bodies, 1, block)
                        if poison:
                            assert got is None, "a bad row must fall back to today's path"
                        else:
                            # Same rows, same message of each row, as today's decoder.
                            assert got is not None and got.table.equals(want.table), table
                            assert (got.row_message == want.row_message).all()
                            assert not want.rejected and not want.rejected_events

                        def attempt(
                            b: list[bytes] = bodies, bs: int = block, c: Any = codec
                        ) -> Any:
                            got = _arrow_json_decode(c, b, 1, bs)
                            return got if got is not None else c.decode(b, recv_ns=1)

                        rate = _best(attempt, events, repeats)
                        shape = f"{per_message}/msg NDJSON" + (" +1 bad msg" if poison else "")
                        rows.append(
                            {
                                "benchmark": f"arrow-json-{table.split('.', 1)[1]}",
                                "metric": (
                                    f"events/s ({events:,} events, {shape}, "
                                    f"block {block >> 20} MiB)"
                                ),
                                "value": round(rate),
                                "unit": "events/s",
                                "baseline": "TableCodec.decode of the same bodies (today's path)",
                                "baseline_value": round(base),
                                "ratio": round(rate / base, 2),
                            }
                        )
    return rows


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

    for table, make in _TABLES:
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
    parser.add_argument(
        "--arrow-json",
        action="store_true",
        help="measure the pyarrow.json candidate against today's decode (same bodies, same run)",
    )
    args = parser.parse_args()
    rows = run_arrow_json(args.quick) if args.arrow_json else run(args.quick)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        return
    for r in rows:
        print(
            f"{r['benchmark']:<24} {r['metric']:<58} {r['value']:>10,} events/s"
            + (
                f"   today's decode {r['baseline_value']:>10,}  x{r['ratio']:.2f}"
                if "ratio" in r
                else f"   parse-only {r['baseline_value']:>10,}"
            )
        )


if __name__ == "__main__":
    main()
