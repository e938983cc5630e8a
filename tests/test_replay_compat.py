"""Manifest compatibility: the Arrow pipeline gives the sequence and hash the old code gave.

`replay_reference.py` is the replay module as it was on main before issue 16. Each test replays
the same pins with it and with the new engine (events and `batches()`), on data made to hit every
edge of the canonical encoding and of the tie-break: equal timestamps within and across tables,
duplicates, nulls, floats outside Arrow's plain-notation range, NaN, strings that need escaping,
a day-partitioned table beside hourly ones, Silver beside Bronze. Budget: ~10 s.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pytest
import replay_reference
from click.testing import Result
from timetravel_data import HOUR_NS, T14, append, futures, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.order import TIE_BREAKS
from iceberg_lake.timetravel.replay import (
    REPLAY_SEQ_COLUMN,
    ReplayEngine,
    compare_manifests,
    read_manifest,
)

SEC = 10**9
STOCKS, QUOTES, MBP = "bronze.stocks_trades", "bronze.stocks_quotes", "bronze.futures_mbp10"
FUTURES, GREEKS, SILVER = (
    "bronze.futures_trades",
    "bronze.options_greeks_snapshots",
    "silver.stocks_trades",
)
#: The hash `replay_reference` (the code on main before issue 16) gave for `_ALL` over
#: `_WINDOW` of this data, recorded once; the data is generated deterministically.
RECORDED_HASH = "sha256:97aa1e1d07c3065fd8ce3ec04fd167a1c750e70d2ee27b2a0863abfff96c0997"
_ALL = [MBP, STOCKS, QUOTES, FUTURES, GREEKS, SILVER]
_WINDOW = (T14 - 30 * 60 * SEC, T14 + 2 * HOUR_NS + 17 * SEC)


def _odd_prices(rng: random.Random) -> list[float]:
    return [
        1e16,
        -2.5e-7,
        123456789012.5,
        float("nan"),
        float("inf"),
        -0.0,
        0.0,
        100.0,
        rng.uniform(0, 1e-4),
        rng.uniform(1e9, 1e12),
    ]


@pytest.fixture(scope="module")
def compat_lake(module_lake: LakeCatalog) -> Settings:
    catalog, settings = module_lake, module_lake.settings
    rng = random.Random(16)
    stock = trades("SPY", T14 - 20 * 60 * SEC, 2000, 3 * SEC) + trades(
        "QQQ", T14 - 20 * 60 * SEC, 2000, 3 * SEC
    )
    for i, price in enumerate(_odd_prices(rng)):
        stock[100 + i]["price"] = price
    stock[7]["conditions"] = 'quoted "x"\\ \n\x01 é'
    stock[8]["exchange"] = None
    stock += stock[:40]  # duplicates (Bronze keeps them)
    stock += [dict(r, size=r["size"] + 1) for r in stock[200:260]]  # ties on every key but size
    rng.shuffle(stock)
    table = catalog.load_table(STOCKS)
    append(table, stock[:3000])
    append(table, stock[3000:])
    quotes = [
        {
            "ts_event_ns": T14 + rng.randrange(0, 2 * HOUR_NS // SEC) * SEC,
            "ts_recv_ns": T14,
            "source": "test",
            "symbol": rng.choice(["SPY", "QQQ"]),
            "bid_px": round(rng.uniform(90, 100), 2),
            "ask_px": round(rng.uniform(100, 110), 2),
            "bid_sz": rng.randrange(1, 900),
            "ask_sz": rng.randrange(1, 900),
            "bid_exch": rng.choice([None, 1, 2]),
            "seq": i,
        }
        for i in range(3000)
    ]
    append(catalog.load_table(QUOTES), quotes)
    mbp = []
    for i in range(1500):
        row = {
            "ts_event_ns": T14 + (i // 2) * 5 * SEC,  # pairs of equal times
            "ts_recv_ns": T14,
            "source": "test",
            "symbol": "ESZ5",
            "is_snapshot": i % 3 == 0,
            "seq": i,
        }
        for lvl in range(1, 11):
            row[f"bid_px_{lvl}"] = 6000 - lvl * 0.25 if rng.random() > 0.05 else None
            row[f"ask_px_{lvl}"] = 6000 + lvl * 0.25
            row[f"bid_sz_{lvl}"] = rng.randrange(1, 50)
            row[f"ask_sz_{lvl}"] = rng.randrange(1, 50) if lvl < 9 else None
        mbp.append(row)
    append(catalog.load_table(MBP), mbp)
    append(catalog.load_table(FUTURES), futures("ES", T14, 2400, 3 * SEC))
    greeks = [
        {
            "ts_event_ns": T14 + i * 7 * 60 * SEC,
            "source": "test",
            "underlying": "SPY",
            "option_symbol": f"SPY251216C00{600 + k}000",
            "delta": 0.5 - k / 100,
            "implied_volatility": None if k == 3 else 0.2,
            "open_interest": k * 10,
            "snapshot_id": f"g{i}",
        }
        for i in range(20)
        for k in (3, 1, 2)
    ]
    append(catalog.load_table(GREEKS), greeks)
    with SilverCompactor(settings) as compactor:
        compactor.compact_date("2025-12-16", "stocks.trades")
    snapshots.create_tag(settings, "compat", _ALL)
    return settings


def _old(settings: Settings, tables: list[str], window: tuple[int, int]) -> tuple[list, dict]:
    engine = replay_reference.ReplayEngine(settings, tables, *window, as_of="compat")
    payloads = [(e.table, e.payload) for e in engine.events()]
    return payloads, engine.manifest()


@pytest.mark.parametrize(
    "tables",
    [[STOCKS], _ALL],
    ids=["one-table", "six-tables"],
)
def test_new_pipeline_gives_the_old_sequence_and_hash(
    compat_lake: Settings, tables: list[str]
) -> None:
    old_events, old = _old(compat_lake, tables, _WINDOW)
    assert old["event_count"] > 100

    engine = ReplayEngine(compat_lake, tables, *_WINDOW, as_of="compat", tie_break=1)
    new_events = [(e.table, e.payload) for e in engine.events()]
    new = engine.manifest()
    assert new_events == old_events
    for key in ("sequence_hash", "event_count", "events_per_table", "snapshots", "complete"):
        assert new[key] == old[key], key

    # batches(): same hash, same rows in the same order.
    engine = ReplayEngine(
        compat_lake, tables, *_WINDOW, as_of="compat", batch_rows=999, tie_break=1
    )
    batches = list(engine.batches())
    assert engine.manifest()["sequence_hash"] == old["sequence_hash"]
    assert max(b.num_rows for b in batches) <= 999
    got = pa.Table.from_batches(batches)
    assert got.num_rows == old["event_count"]
    assert got.column("table").to_pylist() == [t for t, _ in old_events]
    assert got.column("ts_event_ns").to_pylist() == [
        json.loads(p)["ts_event_ns"] for _, p in old_events
    ]

    # table_batches(): per table, the same rows as batches() at the positions replay_seq names.
    engine = ReplayEngine(
        compat_lake, tables, *_WINDOW, as_of="compat", batch_rows=999, tie_break=1
    )
    per_table: dict[str, list[pa.RecordBatch]] = {}
    for table, batch in engine.table_batches():
        assert batch.num_rows <= 999
        per_table.setdefault(table, []).append(batch)
    assert engine.manifest()["sequence_hash"] == old["sequence_hash"]
    seen: list[int] = []
    for table, parts in per_table.items():
        rows = pa.Table.from_batches(parts)
        seq = rows.column(REPLAY_SEQ_COLUMN).to_pylist()
        assert seq == sorted(seq)  # replay order within the table
        seen += seq
        assert [got.column("table")[i].as_py() for i in seq] == [table] * len(seq)
        union = got.take(pa.array(seq))
        for name in rows.column_names[1:]:
            assert repr(rows.column(name).to_pylist()) == repr(
                union.column(name).cast(rows.column(name).type).to_pylist()
            ), (table, name)
    assert sorted(seen) == list(range(got.num_rows))


def test_hash_matches_the_one_recorded_with_the_old_code(compat_lake: Settings) -> None:
    engine = ReplayEngine(compat_lake, _ALL, *_WINDOW, as_of="compat", prefetch=False, tie_break=1)
    for _ in engine.events():
        pass
    assert engine.manifest()["sequence_hash"] == RECORDED_HASH


def test_a_manifest_file_written_by_the_old_code_replays_from_manifest(
    compat_lake: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`write_manifest` of the pre-issue-16 code, read back by `--from-manifest`: the same
    count and hash (exit 0); a manifest that does not match its replay fails in one line."""
    tables = [MBP, STOCKS, GREEKS]
    old = replay_reference.ReplayEngine(compat_lake, tables, *_WINDOW, as_of="compat")
    for _ in old.events():
        pass
    path = tmp_path / "old.json"
    recorded = old.write_manifest(path)
    assert recorded["complete"] and recorded["event_count"] > 1000 and "pin_tag" not in recorded

    engine = ReplayEngine.from_manifest(compat_lake, read_manifest(path), pin=False)
    for _ in engine.events():
        pass
    assert compare_manifests(recorded, engine.manifest()) is None
    assert engine.manifest()["sequence_hash"] == recorded["sequence_hash"]

    monkeypatch.setenv("LAKE_DATA_DIR", str(compat_lake.data_dir))
    monkeypatch.chdir(tmp_path)  # the CLI writes its manifests into the working directory

    def from_manifest(manifest: Path) -> Result:
        args = ["replay", "--from-manifest", str(manifest), "--no-progress", "--no-pin"]
        return CliRunner().invoke(app, [*args, "--out", str(tmp_path / "events.ndjson")])

    res = from_manifest(path)
    assert res.exit_code == 0, res.output
    assert f"replayed {recorded['event_count']} events" in res.output
    for field, value in (("event_count", 7), ("sequence_hash", "sha256:" + "0" * 64)):
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(json.dumps(recorded | {field: value}))
        res = from_manifest(bad)
        assert res.exit_code == 1 and "Traceback" not in res.output
        (line,) = [x for x in res.output.splitlines() if "does not match" in x]
        want = "recorded 7 events" if field == "event_count" else "sha256:000000000000…"
        assert want in line and f"{recorded['event_count']} events" in line
    # An interrupted run's manifest has no exact count to compare: a warning, exit 0.
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(recorded | {"event_count": 7, "complete": False}))
    res = from_manifest(partial)
    assert res.exit_code == 0 and "not compared" in res.output


def test_rows_decode_to_what_the_old_iterator_gave(compat_lake: Settings) -> None:
    window = (T14, T14 + 10 * 60 * SEC)
    old = list(replay_reference.ReplayEngine(compat_lake, [STOCKS, MBP], *window, as_of="compat"))
    new = list(ReplayEngine(compat_lake, [STOCKS, MBP], *window, as_of="compat", tie_break=1))

    def same(a: object, b: object) -> bool:  # NaN/inf read back as None from canonical JSON
        if isinstance(a, float) and not math.isfinite(a):
            return b is None
        return a == b

    assert len(new) == len(old)
    for o, n in zip(old, new, strict=True):
        assert o.keys() == n.keys() and all(same(o[k], n[k]) for k in o)


def test_reference_copy_is_untouched() -> None:
    text = Path(replay_reference.__file__).read_text()
    assert "heapq.merge(*streams" in text and "batch.to_pylist()" in text


def test_batches_without_verify_are_the_same_rows_and_no_hash(compat_lake: Settings) -> None:
    engine = ReplayEngine(compat_lake, _ALL, *_WINDOW, as_of="compat", pin=False, tie_break=1)
    verified = pa.Table.from_batches(list(engine.batches()))
    assert engine.manifest()["sequence_hash"] == RECORDED_HASH
    fast = pa.Table.from_batches(list(engine.batches(verify=False)))
    assert fast.schema == verified.schema
    assert repr(fast.to_pylist()) == repr(verified.to_pylist())  # NaN-safe
    assert engine.manifest()["sequence_hash"] is None
    assert engine.manifest()["event_count"] == verified.num_rows

    # Small windows: without verification, windows are prepared two ahead (several at once,
    # the day-partitioned greeks sliced from one cached day); same rows, same order.
    small = ReplayEngine(
        compat_lake, _ALL, *_WINDOW, as_of="compat", pin=False, window_rows=40, tie_break=1
    )
    fast = pa.Table.from_batches(list(small.batches(verify=False)))
    assert small.partition_reads > 3 * len(_ALL)
    assert repr(fast.to_pylist()) == repr(verified.to_pylist())
    seqs = [
        (table, batch.column(REPLAY_SEQ_COLUMN).to_pylist())
        for table, batch in small.table_batches(verify=False)
    ]
    positions = sorted(p for _, seq in seqs for p in seq)
    assert positions == list(range(verified.num_rows))
    tables = verified.column("table").to_pylist()
    assert all(tables[p] == table for table, seq in seqs for p in seq)


def test_rule_2_orders_one_feeds_ties_by_its_own_sequence(compat_lake: Settings) -> None:
    """Quotes of one feed stamped in the same nanosecond and received together (as flat files
    stamp them) come out in the feed's `seq` order under rule 2, by price under rule 1; a
    manifest names its rule and replays in it; an unknown rule is one clear error."""
    engine = ReplayEngine(compat_lake, [QUOTES], *_WINDOW, as_of="compat", pin=False)
    rows = pa.Table.from_batches(list(engine.batches())).to_pylist()
    manifest = engine.manifest()
    assert manifest["tie_break"] == TIE_BREAKS[2]
    tied = [
        (a["seq"], b["seq"])
        for a, b in zip(rows, rows[1:], strict=False)
        if (a["ts_event_ns"], a["symbol"]) == (b["ts_event_ns"], b["symbol"])
    ]
    assert len(tied) > 100 and all(x < y for x, y in tied)

    old = ReplayEngine(compat_lake, [QUOTES], *_WINDOW, as_of="compat", pin=False, tie_break=1)
    old_rows = pa.Table.from_batches(list(old.batches())).to_pylist()
    assert old.manifest()["tie_break"] == TIE_BREAKS[1]
    assert [r["seq"] for r in old_rows] != [r["seq"] for r in rows]  # the rule matters here
    assert old.manifest()["sequence_hash"] != manifest["sequence_hash"]

    for recorded in (manifest, old.manifest()):
        again = ReplayEngine.from_manifest(compat_lake, recorded, pin=False)
        for _ in again.batches():
            pass
        assert compare_manifests(recorded, again.manifest()) is None
    with pytest.raises(TimeTravelError, match="tie-break rule is not one this version knows"):
        ReplayEngine.from_manifest(compat_lake, manifest | {"tie_break": "by mood"}, pin=False)


def test_guard_duckdb_types_without_the_iceberg_extension(compat_lake: Settings) -> None:
    """The direct file reads are cast to the types `iceberg_scan` gives; for simple types they
    are taken from a DuckDB round trip of `schema_to_pyarrow` (no extension): same types."""
    import duckdb

    from iceberg_lake.timetravel.query import Lake

    engine = ReplayEngine(compat_lake, _ALL, *_WINDOW, as_of="compat", pin=False)
    plain, con = duckdb.connect(), Lake(compat_lake).connect()
    try:
        checked = 0
        for source in engine._sources:
            simple = source.simple_arrow_schema(plain)
            sql = source.read_sql(_WINDOW[0], _WINDOW[0] + 1) + " LIMIT 0"
            if simple is not None:
                assert simple == con.execute(sql).arrow().schema, source.identifier
                checked += 1
        assert checked >= 4
    finally:
        plain.close()
        con.close()


def test_direct_file_reads_follow_schema_evolution(tmp_path: Path) -> None:
    """Files written before a column was renamed and another added: the direct Parquet reads
    match columns by field id (renamed: by id; added: nulls), as DuckDB's `iceberg_scan` (the
    pre-issue-16 engine) does. Budget: ~4 s."""
    from pyiceberg.types import StringType

    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    table = catalog.load_table(STOCKS)
    old_rows = trades("SPY", T14, 300, SEC)
    for i, row in enumerate(old_rows):
        row["conditions"] = f"c{i % 4}"
    append(table, old_rows)
    with table.update_schema() as update:
        update.rename_column("conditions", "trade_conditions")
    with table.update_schema() as update:
        update.add_column("conditions", StringType())  # an old name, a new column
    table = catalog.load_table(STOCKS)
    new_rows = trades("QQQ", T14, 300, SEC)
    for row in new_rows:
        row["trade_conditions"] = "n"
        row["conditions"] = "new"
    append(table, new_rows)
    window = (T14, T14 + HOUR_NS)
    old = replay_reference.ReplayEngine(settings, [STOCKS], *window)
    expected = [e.payload for e in old.events()]
    engine = ReplayEngine(settings, [STOCKS], *window, pin=False)
    got = [e.payload for e in engine.events()]
    assert got == expected
    rows = [json.loads(p) for p in got]
    assert {r["trade_conditions"] for r in rows} == {"c0", "c1", "c2", "c3", "n"}
    assert {r["conditions"] for r in rows} == {None, "new"}
    assert engine.manifest()["sequence_hash"] == old.manifest()["sequence_hash"]
