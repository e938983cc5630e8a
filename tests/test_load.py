"""`lake load`: vendor files into Bronze, counted back through DuckDB (budget: ~40 s).

Files are made here: DBN with databento-dbn's own encoder, Polygon CSV.gz and Parquet with
pyarrow. Each load is checked row for row where it matters (prices from fixed point, symbols from
the file's symbology), loaded twice (nothing added), and bad rows are found in
`bronze.dead_letters` with their reason while their neighbours are stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load import LoadOptions, declared_mappings, load_file
from iceberg_lake.load.commit import ledger_key, parse_ledger
from iceberg_lake.tables import registry
from tests.load_data import (
    HOUR_NS,
    T14,
    TRADES_MAPPING,
    polygon_quotes,
    polygon_trades,
    trades_table,
    write_csv_gz,
    write_dbn,
    write_parquet,
)

pytestmark = pytest.mark.integration
runner = CliRunner()


def make_lake(data_dir: Path) -> LakeCatalog:
    """A lake with the namespaces, the Bronze market tables, the quarantine and one Silver table."""
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    for d in lake.registry.in_namespace("bronze"):
        lake.create_table(d)
    lake.create_table(lake.definition("silver.futures_trades"))
    return lake


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    return make_lake(tmp_path / "data")


def rows(duck: duckdb.DuckDBPyConnection, lake: LakeCatalog, table: str, sql: str) -> list:
    """Run `sql` with `t` bound to the table's current snapshot (DuckDB iceberg_scan)."""
    t = lake.load_table(table)
    if t.current_snapshot() is None:
        return []
    scan = f"iceberg_scan('{t.metadata_location}')"
    return duck.sql(sql.replace("FROM t", f"FROM {scan} t")).fetchall()


# ---- DBN -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "table", "name"),
    [
        ("trades", "bronze.futures_trades", "trades.dbn.zst"),
        ("mbp-1", "bronze.stocks_quotes", "mbp1.dbn"),
        ("mbp-10", "bronze.futures_mbp10", "mbp10.dbn.zst"),
    ],
)
def test_dbn_files_load_once_with_symbols_and_prices(
    lake: LakeCatalog, duck, tmp_path: Path, schema: str, table: str, name: str
) -> None:
    n = 3000
    unknown = {5, 1700}
    path = write_dbn(tmp_path / name, schema, n, {1: "ESH6", 2: "ESM6"}, unknown=unknown)

    result = load_file(lake, path, LoadOptions(commit_rows=1000))

    assert result.table == table
    assert (result.status, result.rows_read) == ("loaded", n)
    assert (result.rows_stored, result.dead_lettered) == (n - 2, 2)
    assert len(result.snapshots) == 3  # 1,000 rows per commit
    got = rows(duck, lake, table, "SELECT count(*), count(DISTINCT seq), min(source) FROM t")
    assert got == [(n - 2, n - 2, "databento")]
    by_symbol = dict(rows(duck, lake, table, "SELECT symbol, count(*) FROM t GROUP BY 1"))
    assert by_symbol == {"ESH6": n // 2 - 1, "ESM6": n // 2 - 1}
    # Row 7: instrument 2, price 100.07 from fixed point 1e-9, event time as encoded.
    price_col = {"trades": "price", "mbp-1": "bid_px", "mbp-10": "ask_px_10"}[schema]
    expect = {"trades": 100.07, "mbp-1": 100.06, "mbp-10": 100.07 + 2.5}[schema]
    seq7 = 7 * 1_000_000 if schema == "trades" else 7  # trades: `record_seq` (one per event)
    sql7 = f"SELECT symbol, {price_col}, ts_event_ns FROM t WHERE seq = {seq7}"
    got7 = rows(duck, lake, table, sql7)
    assert got7[0][0] == "ESM6"
    assert got7[0][1] == pytest.approx(expect)
    assert got7[0][2] == T14 + (7 * 2 * HOUR_NS) // n
    if schema == "mbp-1":  # each side's venue (a multi-venue dataset quotes per venue; quant10)
        venues = "SELECT min(bid_exch), max(ask_exch), count(ask_exch) FROM t"
        assert rows(duck, lake, table, venues) == [(1, 1, n - 2)]
    dead = rows(
        duck,
        lake,
        "bronze.dead_letters",
        "SELECT stream_seq, reason, raw FROM t ORDER BY stream_seq",
    )
    assert [d[0] for d in dead] == sorted(unknown)
    assert "unknown instrument_id 999" in dead[0][1]
    assert json.loads(dead[0][2])["sequence"] == 5

    again = load_file(lake, path, LoadOptions(commit_rows=1000))
    assert (again.status, again.rows_stored, again.rows_skipped) == ("already-loaded", 0, n)
    assert len(rows(duck, lake, "bronze.dead_letters", "SELECT 1 FROM t")) == 2
    assert rows(duck, lake, table, "SELECT count(*) FROM t") == [(n - 2,)]


def test_dbn_trades_default_to_stocks_outside_globex(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    path = write_dbn(
        tmp_path / "x.dbn",
        "trades",
        50,
        {7: "AAPL"},
        bad_price={3},
        dataset="XNAS.ITCH",
        ts_out=True,  # records carry 8 more bytes
    )
    result = load_file(lake, path)
    assert result.table == "bronze.stocks_trades"
    assert (result.rows_stored, result.dead_lettered) == (49, 1)
    got = rows(duck, lake, result.table, "SELECT max(seq), max(price), min(symbol) FROM t")
    assert got == [(49_000_000, 100.49, "AAPL")]  # `record_seq`: sequence 49, first of its event


# ---- Polygon flat files ------------------------------------------------------------------------


def test_polygon_csv_gz_trades_dead_letters_bad_rows_and_keeps_neighbours(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    n = 5000
    cols = polygon_trades(n)
    cols["price"][10] = "abc"  # bad price (not a number)
    cols["price"][11] = "-1.5"  # bad price (<= 0)
    cols["size"][12] = ""  # missing field
    cols["ticker"][13] = ""  # unknown instrument (no symbol)
    cols["sip_timestamp"][14] = "1734357600000"  # milliseconds, not nanoseconds
    path = write_csv_gz(tmp_path / "2025-12-16.csv.gz", cols)

    result = load_file(lake, path)

    assert result.table == "bronze.stocks_trades"  # detected from the columns
    assert (result.rows_stored, result.dead_lettered) == (n - 5, 5)
    got = rows(duck, lake, "bronze.stocks_trades", "SELECT count(*), min(source) FROM t")
    assert got == [(n - 5, "polygon")]
    neighbours = rows(
        duck,
        lake,
        "bronze.stocks_trades",
        "SELECT seq, price, size, conditions FROM t WHERE seq IN (9, 16) ORDER BY seq",
    )
    assert neighbours == [(9, 150.09, 10, "12,37"), (16, 150.16, 17, None)]
    dead = dict(
        rows(duck, lake, "bronze.dead_letters", "SELECT stream_seq, reason FROM t ORDER BY 1")
    )
    assert sorted(dead) == [10, 11, 12, 13, 14]
    assert "price" in dead[10] and "'abc'" in dead[10]
    assert dead[11].startswith("price must be a finite number > 0")
    assert dead[12] == "missing required field 'size'"
    assert dead[13].startswith("missing required field 'symbol'") or "symbol" in dead[13]
    assert "plausible Unix time" in dead[14]
    raw = rows(duck, lake, "bronze.dead_letters", "SELECT raw FROM t WHERE stream_seq = 10")
    assert json.loads(raw[0][0])["price"] == "abc"

    assert load_file(lake, path).status == "already-loaded"
    assert rows(duck, lake, "bronze.stocks_trades", "SELECT count(*) FROM t") == [(n - 5,)]


def test_polygon_quotes_csv_gz(lake: LakeCatalog, duck, tmp_path: Path) -> None:
    path = write_csv_gz(tmp_path / "q.csv.gz", polygon_quotes(2000))
    result = load_file(lake, path, LoadOptions(source="polygon-flat"))
    assert (result.table, result.rows_stored, result.dead_lettered) == (
        "bronze.stocks_quotes",
        2000,
        0,
    )
    got = rows(
        duck,
        lake,
        "bronze.stocks_quotes",
        "SELECT count(*), min(source), min(bid_px), max(ask_px), min(ask_exch) FROM t",
    )
    assert got == [(2000, "polygon-flat", 150.0, 150.11, 11)]


# ---- Parquet / NDJSON with a user mapping, CLI -------------------------------------------------


def test_cli_parquet_with_mapping_and_compact(lake: LakeCatalog, duck, tmp_path: Path) -> None:
    mapping = tmp_path / "vendor.toml"
    mapping.write_text(TRADES_MAPPING)
    (tmp_path / "files").mkdir()
    a = write_parquet(tmp_path / "files" / "a.parquet", trades_table(3000))
    b = write_parquet(
        tmp_path / "files" / "b.parquet",
        trades_table(2000, symbols=("ESU6",), start=T14 + 3 * HOUR_NS),
    )
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    args = ["load", str(a), str(b), "--mapping", str(mapping), "--compact"]

    out = runner.invoke(app, [*args, "-o", "json"], env=env)

    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert [r["rows_stored"] for r in report["results"]] == [3000, 2000]
    assert {c["status"] for c in report["compactions"]} == {"success"}
    got = rows(duck, lake, "bronze.futures_trades", "SELECT count(*), min(source) FROM t")
    assert got == [(5000, "vendor")]
    assert rows(duck, lake, "silver.futures_trades", "SELECT count(*) FROM t") == [(5000,)]

    again = runner.invoke(
        app, ["load", str(tmp_path / "files"), "--mapping", str(mapping)], env=env
    )
    assert again.exit_code == 0, again.output
    assert "0 rows stored" in again.output
    folder = runner.invoke(
        app, ["load", str(tmp_path / "files"), "--mapping", str(mapping), "-o", "json"], env=env
    )
    assert [r["status"] for r in json.loads(folder.output)["results"]] == ["already-loaded"] * 2
    assert rows(duck, lake, "bronze.futures_trades", "SELECT count(*) FROM t") == [(5000,)]


def test_cli_load_of_a_file_spanning_three_days_suggests_compacting_every_day(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    """Budget: about 5 s. The `next:` line covers all three days the file touched (not only
    the first), and running the suggested command compacts every one of them into Silver."""
    mapping = tmp_path / "vendor.toml"
    mapping.write_text(TRADES_MAPPING)
    days = [trades_table(200, start=T14 + k * 24 * HOUR_NS) for k in range(3)]
    data = pa.concat_tables(days)
    data = data.set_column(4, "trade_id", pa.array(range(data.num_rows), pa.int64()))
    path = write_parquet(tmp_path / "three-days.parquet", data)
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}

    out = runner.invoke(app, ["load", str(path), "--mapping", str(mapping)], env=env)

    assert out.exit_code == 0, out.output
    (hint,) = [line for line in out.output.splitlines() if line.startswith("next:")]
    assert "lake compact --incremental" in hint, hint
    for day in ("2025-12-16", "2025-12-17", "2025-12-18"):
        assert day in hint, hint
    compact = runner.invoke(app, ["compact", "--incremental"], env=env)
    assert compact.exit_code == 0, compact.output
    got = rows(
        duck,
        lake,
        "silver.futures_trades",
        "SELECT count(DISTINCT ts_event::DATE), count(*) FROM t",
    )
    assert got == [(3, 600)]


def test_compact_hint_names_one_day_each_day_or_a_range() -> None:
    from iceberg_lake.cli.load import compact_hint

    assert compact_hint([]) is None
    one = compact_hint(["2025-12-16"])
    assert one is not None and "lake compact --date 2025-12-16" in one
    week = [f"2025-12-{d:02d}" for d in range(10, 17)]
    many = compact_hint(week)
    assert many is not None and "--incremental" in many
    assert "2025-12-10 .. 2025-12-16, 7 days" in many, many


def test_ndjson_identity_mapping_with_malformed_lines(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    lines = []
    for i in range(300):
        ts = T14 + i * 10**6
        lines.append(
            json.dumps(
                {"ts_event_ns": ts, "symbol": "SPY", "price": 600 + i / 100, "size": 5, "seq": i}
            )
        )
    lines[20] = '{"ts_event_ns": 1, "symbol": '  # not JSON
    lines[21] = lines[21].replace('"size": 5', '"size": "lots"')  # type changes mid-file
    path = tmp_path / "spy.ndjson"
    path.write_text("\n".join(lines) + "\n")

    # A bare table name, as `serve --tables` and `compact --table` take it.
    result = load_file(lake, path, LoadOptions(table="stocks_trades", source="ws-archive"))

    assert result.table == "bronze.stocks_trades"
    assert (result.rows_stored, result.dead_lettered) == (298, 2)
    dead = dict(rows(duck, lake, "bronze.dead_letters", "SELECT stream_seq, reason FROM t"))
    assert dead[20].startswith("malformed JSON line")
    assert "size" in dead[21]
    got = rows(duck, lake, "bronze.stocks_trades", "SELECT count(*), min(ts_recv_ns) FROM t")
    assert got == [(298, T14)]  # ts_recv_ns defaults to ts_event_ns


def test_dbn_trades_of_one_event_stay_apart_and_in_the_venues_order(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    """A venue numbers packets, not messages: the trades of a sweep and repeats at one price
    share the event's time, receive time and sequence. With `seq` = sequence they sorted by
    price in a replay (a sell sweep 6000.00, 5999.75, 5999.50 replayed upwards) and three
    trades of 6000 x 2 merged into one in Silver (volume 7 in Bronze, 3 in Silver; quant9).
    `seq` is now `record_seq`: sequence x 1e6 + the record's position within its event."""
    import databento_dbn as d

    from tests.load_data import PX, dbn_metadata

    out = bytearray(dbn_metadata(d.Schema.TRADES, {1: "ESH6"}).encode())
    events = [
        (T14, 10, [6000.00, 5999.75, 5999.50], [1, 1, 1]),  # a sell sweep
        (T14 + 10**9, 11, [6000.00, 6000.00, 6000.00, 6000.25], [2, 2, 2, 1]),  # repeats
    ]
    for ts, sequence, prices, sizes in events:
        for k, (price, size) in enumerate(zip(prices, sizes, strict=True)):
            last = k == len(prices) - 1
            out += bytes(
                d.TradeMsg(
                    publisher_id=1, instrument_id=1, ts_event=ts, ts_recv=ts + 500,
                    price=round(price * 100) * PX // 100, size=size, action=d.Action.TRADE,
                    side=d.Side.ASK, depth=0, flags=d.F_LAST if last else 0, sequence=sequence,
                )
            )  # fmt: skip
    path = tmp_path / "sweep.trades.dbn"
    path.write_bytes(bytes(out))
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}

    loaded = runner.invoke(app, ["load", str(path), "--compact"], env=env)

    assert loaded.exit_code == 0, loaded.output
    volume = "SELECT count(*), sum(size) FROM t"
    assert rows(duck, lake, "bronze.futures_trades", volume) == [(7, 10)]
    assert rows(duck, lake, "silver.futures_trades", volume) == [(7, 10)]
    from iceberg_lake.timetravel.replay import ReplayEngine

    engine = ReplayEngine(lake.settings, ["silver.futures_trades"], T14, T14 + 2 * 10**9)
    prices = [event["price"] for event in engine]
    assert prices == [6000.0, 5999.75, 5999.5, 6000.0, 6000.0, 6000.0, 6000.25]
    seqs = rows(duck, lake, "silver.futures_trades", "SELECT seq FROM t ORDER BY seq")
    assert [s for (s,) in seqs] == [10_000_000, 10_000_001, 10_000_002] + [
        11_000_000,
        11_000_001,
        11_000_002,
        11_000_003,
    ]


def test_a_files_own_source_column_is_kept_unless_source_is_given(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    # An export of two sources (`lake replay --format parquet`) reloaded without --source: the
    # same three events under two sources stay six rows in Silver (source is a dedup column);
    # rows without a value get the default. Replacing the column merged them into three.
    source = ["polygon", "massive_ws"] * 3 + [None, " "]
    ts = [T14 + i // 2 for i in range(6)] + [T14 + 10, T14 + 11]
    export = pa.table(
        {
            "ts_event_ns": pa.array(ts, pa.int64()),
            "symbol": ["ESH6"] * 8,
            "price": [6000.0] * 8,
            "size": pa.array([1] * 8, pa.int32()),
            "seq": pa.array([i // 2 for i in range(8)], pa.int64()),
            "source": source,
        }
    )
    path = write_parquet(tmp_path / "export.parquet", export)
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}

    out = runner.invoke(
        app, ["load", str(path), "-t", "bronze.futures_trades", "--compact"], env=env
    )

    assert out.exit_code == 0, out.output
    by_source = "SELECT source, count(*) FROM t GROUP BY 1 ORDER BY 1"
    expected = [("file", 2), ("massive_ws", 3), ("polygon", 3)]
    assert rows(duck, lake, "bronze.futures_trades", by_source) == expected
    assert rows(duck, lake, "silver.futures_trades", by_source) == expected

    # An explicit --source still wins over the file's column.
    other = write_parquet(tmp_path / "other.parquet", export.slice(0, 2))
    result = load_file(lake, other, LoadOptions(table="bronze.futures_trades", source="archive"))
    assert result.rows_stored == 2
    got = rows(duck, lake, "bronze.futures_trades", by_source)
    assert got == [("archive", 2), *expected]


def test_cli_errors_are_one_line(lake: LakeCatalog, tmp_path: Path) -> None:
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    odd = write_parquet(tmp_path / "odd.parquet", pa.table({"x": [1, 2]}))
    out = runner.invoke(app, ["load", str(odd)], env=env)
    assert out.exit_code == 1
    assert "cannot tell which table odd.parquet belongs to" in out.output
    assert "Traceback" not in out.output
    out = runner.invoke(app, ["load", str(odd), "--table", "gold.levels_signals"], env=env)
    assert out.exit_code == 1
    assert "not gold.levels_signals" in out.output


# ---- declared mappings -------------------------------------------------------------------------


def test_declared_mappings_target_declared_columns_and_are_not_tables() -> None:
    mappings = {m.name: m for m in declared_mappings()}
    assert {"polygon_trades", "polygon_quotes", "databento_futures_mbp10"} <= set(mappings)
    reg = registry()
    for m in mappings.values():
        definition = reg.get(m.table)
        for target in [*m.columns, *m.scale]:
            assert target in definition.column_names, (m.name, target)
    # catalog/mappings/*.toml are not table definitions.
    assert not any(d.source_file.startswith("polygon") for d in reg)
    assert "bronze.dead_letters" in reg.identifiers


def test_ledger_records_rows_in_the_append_transaction(lake: LakeCatalog, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", trades_table(2500), row_group_size=500)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    seen: list[tuple[int, float]] = []
    result = load_file(
        lake,
        path,
        LoadOptions(mapping=str(mapping), commit_rows=1000),
        progress=lambda _name, rows, fraction, _s: seen.append((rows, fraction)),
    )
    assert seen[0] == (0, 0.0) and seen[-1] == (2500, 1.0)
    assert [r for r, _ in seen] == sorted(r for r, _ in seen)
    table = lake.load_table("bronze.futures_trades")
    assert parse_ledger(table.properties[ledger_key(result.sha256)]) == (2500, True)
    summaries = [
        table.snapshot_by_id(s).summary.additional_properties  # type: ignore[union-attr]
        for s in result.snapshots
    ]
    assert [s["lake.load-end-row"] for s in summaries] == ["1000", "2000", "2500"]
    assert {s["lake.load-sha256"] for s in summaries} == {result.sha256}
    with pytest.raises(LakeError, match="no such file"):
        load_file(lake, tmp_path / "missing.parquet")


def test_dead_letters_replay_leaves_rows_of_loaded_files_alone(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    """A loaded file's row dead-lettered for an int32 size, then `size` widened (the typical
    re-drive use): `dead-letters replay` decodes live messages only, and would store the file's
    row without the load's [scale] (a price in cents, 100× too high; newuser5)."""
    from pyiceberg.types import LongType

    from iceberg_lake.ingest.redrive import redrive

    mapping = tmp_path / "cents.toml"
    mapping.write_text(
        'name = "cents"\ntable = "bronze.stocks_trades"\nsource = "cents"\n'
        '[columns]\nsymbol = "symbol"\nts_event_ns = "ts_event_ns"\nprice = "price"\n'
        'size = "size"\nseq = "seq"\n[scale]\nprice = 0.01\n'
    )
    lines = [
        {
            "symbol": "SPY",
            "ts_event_ns": T14 + i,
            "price": 54499,
            "size": 100,
            "seq": i,
            "source": "cents",
        }
        for i in range(3)
    ]
    lines[1]["size"] = 3_000_000_000
    path = tmp_path / "cents.ndjson"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    loaded = load_file(lake, path, LoadOptions(mapping=str(mapping)))
    assert (loaded.rows_stored, loaded.dead_lettered) == (2, 1)
    with lake.load_table("bronze.stocks_trades").update_schema() as update:
        update.update_column("size", LongType())

    report = redrive(lake)

    assert [o.status for o in report.outcomes] == ["from-file"]
    assert "lake load" in report.outcomes[0].reason
    got = rows(duck, lake, "bronze.stocks_trades", "SELECT seq, price FROM t ORDER BY seq")
    assert got == [(0, 544.99), (2, 544.99)]


def test_a_renamed_columns_old_name_is_loaded_and_an_unknown_column_is_named(
    lake: LakeCatalog, duck, tmp_path: Path
) -> None:
    """evolve14: after `lake table evolve --rename`, a file with the column's old name loaded
    its rows with the renamed column empty, and a column the table does not have vanished;
    the live writers fill the renamed column and count unknown fields. The load reads a
    column under its former names and names the columns it could not store."""
    from iceberg_lake.schema.evolve import RenameColumn, evolve_table

    table = lake.load_table("bronze.stocks_trades")
    evolve_table(table, "bronze.stocks_trades", [RenameColumn("conditions", "conds")])
    lines = [
        json.dumps(
            {"ts_event_ns": T14 + i, "symbol": "SPY", "price": 600.0, "size": 5, "seq": i}
            | {"conditions": "@", "venue": "XNAS"}
        )
        for i in range(10)
    ]
    path = tmp_path / "old-names.ndjson"
    path.write_text("\n".join(lines) + "\n")

    res = runner.invoke(
        app,
        ["load", str(path), "--table", "bronze.stocks_trades"],
        env={"LAKE_DATA_DIR": str(lake.settings.data_dir), "COLUMNS": "200"},
    )

    assert res.exit_code == 0, res.output
    got = rows(duck, lake, "bronze.stocks_trades", "SELECT count(*), count(conds) FROM t")
    assert got == [(10, 10)]
    assert "bronze.stocks_trades has no column venue: not stored" in res.output
    again = load_file(lake, path, LoadOptions(table="bronze.stocks_trades", reload=True))
    assert again.unknown_columns == ["venue"] and again.rows_stored == 10
