"""Unit tests of the Silver dedup query and the change-detection helpers (no servers)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from iceberg_lake.exceptions import CompactionError
from iceberg_lake.silver.dedup import AdjacentDedup, dedup_query, duck_type
from iceberg_lake.silver.state import fingerprint, parse_state
from iceberg_lake.tables import registry

FUTURES = registry().get("silver.futures_trades")
GREEKS = registry().get("silver.options_greeks_snapshots")


def _run(rows: list[dict], definition=FUTURES) -> list[dict]:
    """Insert `rows` (missing columns NULL) into DuckDB and run the dedup query over them."""
    schema = definition.iceberg_schema()
    names = schema.column_names
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE src ("
        + ", ".join(f"{f.name} {duck_type(f.field_type)}" for f in schema.fields)
        + ")"
    )
    con.executemany(
        f"INSERT INTO src VALUES ({', '.join('?' for _ in names)})",
        [[r.get(n) for n in names] for r in rows],
    )
    sql = dedup_query("src", schema, definition.dedup_columns, set(names))
    dedup = AdjacentDedup(schema, definition.dedup_columns)
    # Tiny batches: duplicate groups span batch boundaries.
    tables = [dedup.apply(b) for b in con.execute(sql).to_arrow_reader(2)]
    return pa.concat_tables(tables).to_pylist()


def _t(ts: int, recv: int, price: float = 1.0, aggressor: int | None = 1, seq: int | None = 1):
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": recv,
        "source": "s",
        "symbol": "ES",
        "price": price,
        "size": 1,
        "aggressor": aggressor,
        "exchange": "CME",
        "seq": seq,
    }


def test_earliest_receive_survives_and_rows_are_ordered_by_event_time() -> None:
    rows = [_t(20, 9), _t(20, 5), _t(10, 7), _t(10, 3, seq=2), _t(20, 6), _t(20, 4), _t(20, 8)]
    out = _run(rows)
    # Order: ts_event_ns, then the other dedup columns (here seq), NULLs last.
    assert [(r["ts_event_ns"], r["ts_recv_ns"], r["seq"]) for r in out] == [
        (10, 7, 1),
        (10, 3, 2),
        (20, 4, 1),
    ]
    assert list(out[0]) == FUTURES.iceberg_schema().column_names


def test_receive_time_tie_is_broken_by_content_not_input_order() -> None:
    a, b = _t(1, 5, aggressor=-1), _t(1, 5, aggressor=1)
    assert _run([a, b]) == _run([b, a])
    assert _run([a, b])[0]["aggressor"] == -1
    # A NULL non-key value sorts after any value.
    assert _run([_t(1, 5, aggressor=None), _t(1, 5, aggressor=7)])[0]["aggressor"] == 7


def test_null_keys_are_equal_and_float_keys_are_canonical() -> None:
    rows = [_t(1, 2, seq=None), _t(1, 1, seq=None), _t(2, 2, price=-0.0), _t(2, 1, price=0.0)]
    rows += [_t(3, 2, price=float("nan")), _t(3, 1, price=float("nan"))]
    out = _run(rows)
    assert [(r["ts_event_ns"], r["ts_recv_ns"]) for r in out] == [(1, 1), (2, 1), (3, 1)]
    assert str(out[1]["price"]) == "0.0", "-0.0 and 0.0 are one event, stored as 0.0"


def test_greeks_without_receive_time_keep_the_smallest_content() -> None:
    def g(delta: float | None, oi: int | None) -> dict:
        return {
            "ts_event_ns": 1,
            "source": "s",
            "underlying": "SPY",
            "option_symbol": "SPY C1",
            "delta": delta,
            "open_interest": oi,
            "snapshot_id": "snap1",
        }

    out = _run([g(0.5, 10), g(0.4, 99), g(None, 1)], GREEKS)
    assert len(out) == 1 and out[0]["delta"] == 0.4 and out[0]["open_interest"] == 99


def test_unknown_dedup_column_is_a_clear_error() -> None:
    with pytest.raises(CompactionError, match="dedup columns"):
        dedup_query("src", FUTURES.iceberg_schema(), ["nope"], set())


def test_state_round_trips_through_file_names() -> None:
    digest = fingerprint(["b", "a"])
    assert digest == fingerprint(["a", "b"]) and len(digest) == 20
    path = f"s3://b/t/data/symbol=ES/silver-123-{digest}-abc123-00000.parquet"
    state = parse_state([path, path.replace("00000", "00001")])
    assert state is not None and state.source_snapshot_id == 123 and state.fingerprint == digest
    assert parse_state([path, "s3://b/t/data/00000-0-uuid.parquet"]) is None


@pytest.mark.parametrize("batch_rows", [1, 3, 1000])
def test_streamed_dedup_equals_a_plain_python_reference(batch_rows: int) -> None:
    import random

    rng = random.Random(batch_rows)
    rows = []
    for _ in range(300):
        ts = rng.randrange(20)
        price = rng.choice([1.0, 2.0, -0.0, 0.0, float("nan")])
        seq = rng.choice([None, 1, 2])
        rows.append(_t(ts, rng.randrange(5), price=price, seq=seq, aggressor=rng.choice([None, 1])))
    schema = FUTURES.iceberg_schema()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE src ("
        + ", ".join(f"{f.name} {duck_type(f.field_type)}" for f in schema.fields)
        + ")"
    )
    con.executemany(
        f"INSERT INTO src VALUES ({', '.join('?' for _ in schema.fields)})",
        [[r.get(f.name) for f in schema.fields] for r in rows],
    )
    sql = dedup_query("src", schema, FUTURES.dedup_columns, set(schema.column_names))
    dedup = AdjacentDedup(schema, FUTURES.dedup_columns)
    got = pa.concat_tables(
        [dedup.apply(b) for b in con.execute(sql).to_arrow_reader(batch_rows)]
    ).to_pylist()

    def canon(v):
        return "nan" if isinstance(v, float) and v != v else (0.0 if v == 0.0 else v)

    seen, want = set(), []
    for r in con.execute(sql).to_arrow_table().to_pylist():  # same sort, plain Python dedup
        key = tuple(canon(r[k]) for k in FUTURES.dedup_columns)
        if key not in seen:
            seen.add(key)
            want.append(r)
    assert len(got) == len(want) < len(rows)
    assert [tuple(map(canon, r.values())) for r in got] == [
        tuple(map(canon, r.values())) for r in want
    ]
    # The survivor of each event is the earliest receive.
    for r in got:
        key = tuple(canon(r[k]) for k in FUTURES.dedup_columns)
        same = [x for x in rows if tuple(canon(x.get(k)) for k in FUTURES.dedup_columns) == key]
        assert r["ts_recv_ns"] == min(x["ts_recv_ns"] for x in same)
