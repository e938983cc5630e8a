"""`lake load` refuses what is wrong with the command, not the data (budget: ~8 s).

A wrong mapping or format makes every row invalid: the file is refused before anything is
committed (no rows, no dead letters, no ledger entry), so the run with the right mapping loads
it. `--reload` loads a loaded file again as a new generation of its ledger entry (resumable like
any load). Bad arguments and mapping typos are one line, exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import LakeError, LoadRejectedError
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.commit import ledger_key, parse_ledger
from tests.load_data import TRADES_MAPPING, killed_at_commit, trades_table, write_parquet
from tests.test_load import make_lake, rows

pytestmark = pytest.mark.integration
runner = CliRunner()

TABLE = "bronze.futures_trades"


def _ledgers(lake: LakeCatalog) -> dict[str, str]:
    props = {
        **lake.load_table(TABLE).properties,
        **lake.load_table("bronze.dead_letters").properties,
    }
    return {k: v for k, v in props.items() if k.startswith("lake.load.")}


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output and "Usage" not in output, output
    return lines[0]


def test_wrong_mapping_is_refused_whole_then_the_right_one_loads(tmp_path: Path, duck) -> None:
    lake = make_lake(tmp_path / "data")
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    # Vendor column names (instrument, t_ns, px, ...) loaded as if named like the table.
    vendor = write_parquet(tmp_path / "vendor.parquet", trades_table(3_000))
    named = trades_table(1_000).rename_columns(["symbol", "ts_event_ns", "price", "size", "seq"])
    good = write_parquet(tmp_path / "named.parquet", named)

    out = runner.invoke(
        app, ["load", str(vendor), "--table", TABLE, "--commit-rows", "1000"], env=env
    )

    assert out.exit_code == 1
    line = _one_error_line(out.output)
    assert "vendor.parquet" in line and "check --format/--mapping" in line
    assert "none of its columns (instrument, t_ns, px, qty, trade_id) is a column of" in line
    assert _ledgers(lake) == {}  # not marked loaded, no dead-letter entry
    assert lake.load_table(TABLE).current_snapshot() is None
    assert rows(duck, lake, "bronze.dead_letters", "SELECT count(*) FROM t") == []

    # Several files: the refused one is one line on stderr, the others load; exit 1.
    out = runner.invoke(
        app, ["load", str(good), str(vendor), "--table", TABLE, "-o", "json"], env=env
    )
    assert out.exit_code == 1
    report = json.loads(out.stdout)
    assert [r["status"] for r in report["results"]] == ["loaded", "rejected"]
    assert report["results"][1]["error"] in out.stderr

    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    result = load_file(lake, vendor, LoadOptions(mapping=str(mapping), commit_rows=1_000))
    assert (result.status, result.rows_stored, result.dead_lettered) == ("loaded", 3_000, 0)
    with pytest.raises(LoadRejectedError, match="vendor.parquet"):  # the API raises
        load_file(lake, vendor, LoadOptions(table="bronze.stocks_trades"))


def test_reload_loads_again_as_a_new_generation_and_resumes_after_a_crash(
    tmp_path: Path, duck, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = make_lake(tmp_path / "data")
    data = trades_table(3_000)
    data = data.set_column(
        2,
        "px",
        pa.array([-1.0 if i == 1_500 else p for i, p in enumerate(data.column("px").to_pylist())]),
    )
    path = write_parquet(tmp_path / "t.parquet", data, row_group_size=500)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    options = LoadOptions(mapping=str(mapping), commit_rows=1_000)
    first = load_file(lake, path, options)
    assert (first.status, first.rows_stored) == ("loaded", 2_999)
    assert load_file(lake, path, options).status == "already-loaded"
    key = ledger_key(first.sha256)

    reload = LoadOptions(mapping=str(mapping), commit_rows=1_000, reload=True)
    killed_at_commit(monkeypatch, 3, lambda: load_file(lake, path, reload))
    assert lake.load_table(TABLE).properties[key].startswith("2000@1;m=")  # + the options

    resumed = load_file(lake, path, options)  # no --reload needed to finish it
    assert (resumed.status, resumed.rows_skipped, resumed.rows_stored) == ("resumed", 2_000, 1_000)
    assert parse_ledger(lake.load_table(TABLE).properties[key]) == (3_000, True)
    assert load_file(lake, path, options).status == "already-loaded"
    # Bronze holds both copies, each once; the bad row is dead-lettered once per generation.
    got = rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t")
    assert got == [(2 * 2_999, 2_999)]
    dead = rows(duck, lake, "bronze.dead_letters", "SELECT stream_seq FROM t")
    assert dead == [(1_500,), (1_500,)]

    again = load_file(lake, path, reload)
    assert (again.status, again.rows_stored) == ("reloaded", 2_999)
    assert lake.load_table(TABLE).properties[key].startswith("3000:done@2;m=")


def test_bad_arguments_and_mapping_typos_are_one_line(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "data")
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    path = write_parquet(tmp_path / "t.parquet", trades_table(10))
    (tmp_path / "empty").mkdir()
    typo = tmp_path / "typo.toml"
    typo.write_text(TRADES_MAPPING.replace('price = "px"', 'prcie = "px"') + "[scale]\nsizee = 1\n")
    cases = [
        (["load", str(tmp_path / "missing.csv.gz")], "no such file or folder"),
        (
            ["load", str(path), "--format", "xml"],
            "--format xml: not a format lake load reads (one of dbn, csv",
        ),
        (["load", str(tmp_path / "empty")], "no files to load in folder"),
        (["load", str(path), "--mapping", str(typo)], "prcie, sizee are not columns"),
    ]
    for args, expect in cases:
        out = runner.invoke(app, args, env=env)
        assert out.exit_code == 1, (args, out.output)
        assert expect in _one_error_line(out.output), (args, out.output)
    assert (
        "of bronze.futures_trades (columns: ts_event_ns, ts_recv_ns, source, symbol" in out.output
    )
    typo1 = tmp_path / "typo1.toml"
    typo1.write_text(TRADES_MAPPING.replace('price = "px"', 'prcie = "px"'))
    with pytest.raises(LakeError, match="prcie is not a column"):
        load_file(lake, path, LoadOptions(mapping=str(typo1)))


def test_a_bad_leading_row_with_a_small_commit_size_is_dead_lettered_not_a_refusal(
    tmp_path: Path, duck
) -> None:
    lake = make_lake(tmp_path / "data")
    named = trades_table(100).rename_columns(["symbol", "ts_event_ns", "price", "size", "seq"])
    price = named.column("price").to_pylist()
    price[0] = -1.0  # one bad row: the file's first commit (commit_rows=1) holds nothing else
    named = named.set_column(2, "price", pa.array(price))
    path = write_parquet(tmp_path / "named.parquet", named)

    result = load_file(lake, path, LoadOptions(table=TABLE, commit_rows=1))

    assert (result.status, result.rows_stored, result.dead_lettered) == ("loaded", 99, 1)
    assert rows(duck, lake, TABLE, "SELECT count(DISTINCT seq) FROM t") == [(99,)]
    assert rows(duck, lake, "bronze.dead_letters", "SELECT count(*) FROM t") == [(1,)]


def test_a_file_without_a_defaulted_required_column_is_refused(tmp_path: Path, duck) -> None:
    """A trades file loaded with `--table bronze.stocks_quotes` was stored as 0/0 quotes, exit 0
    (quant13): the quote columns are required with default 0 (one-sided books), and the default
    filled the absent columns. A file that lacks such a column altogether is refused; a null in
    a column the file has still takes the default."""
    lake = make_lake(tmp_path / "data")
    quotes = "bronze.stocks_quotes"
    t0 = 1_765_893_600_000_000_000  # 2025-12-16 14:00 UTC
    trades = pa.table(
        {
            "symbol": ["AMD"] * 3,
            "ts_event_ns": [t0, t0 + 1, t0 + 2],
            "price": [150.1, 150.2, 150.3],
            "size": [100, 200, 300],
        }
    )
    path = write_parquet(tmp_path / "amd.parquet", trades)
    with pytest.raises(LoadRejectedError) as err:
        load_file(lake, path, LoadOptions(table=quotes))
    message = str(err.value)
    assert "amd.parquet has no column for bid_px, ask_px, bid_sz, ask_sz" in message
    assert quotes in message and "check --format/--mapping/--table" in message
    assert lake.load_table(quotes).current_snapshot() is None
    assert _ledgers_of(lake, quotes) == {}

    # A quotes file without one of them is refused by name.
    book = {"symbol": ["AMD"] * 2, "ts_event_ns": [t0, t0 + 1], "bid_px": [1.0, 1.1]}
    book |= {"ask_px": [1.2, 1.3], "ask_sz": [5, 6]}
    partial = write_parquet(tmp_path / "partial.parquet", pa.table(book))
    with pytest.raises(LoadRejectedError, match=r"no column for bid_sz, required"):
        load_file(lake, partial, LoadOptions(table=quotes))

    # The column present with a null (a one-sided book): the default fills that row.
    book["bid_sz"] = pa.array([None, 7], pa.int32())
    sided = write_parquet(tmp_path / "sided.parquet", pa.table(book))
    result = load_file(lake, sided, LoadOptions(table=quotes))
    assert (result.status, result.rows_stored, result.dead_lettered) == ("loaded", 2, 0)
    got = rows(duck, lake, quotes, "SELECT bid_sz FROM t ORDER BY ts_event_ns")
    assert got == [(0,), (7,)]


def _ledgers_of(lake: LakeCatalog, table: str) -> dict[str, str]:
    props = lake.load_table(table).properties
    return {k: v for k, v in props.items() if k.startswith("lake.load.")}


def test_ndjson_decides_a_missing_defaulted_column_by_its_rows(tmp_path: Path, duck) -> None:
    """newuser13: NDJSON writers leave out null keys, so 100 one-sided quotes (no ask keys)
    before two-sided ones made the file look as if it had no ask columns, and it was refused.
    The rows of the first commit decide: a key that no row has refuses the file."""
    lake = make_lake(tmp_path / "data")
    quotes = "bronze.stocks_quotes"
    t0 = 1_765_893_600_000_000_000
    one = {"symbol": "AMD", "bid_px": 1.0, "bid_sz": 5}
    two = one | {"ask_px": 1.1, "ask_sz": 6}
    mixed = tmp_path / "mixed.ndjson"
    body = [json.dumps(one | {"ts_event_ns": t0 + i, "seq": i}) for i in range(100)]
    body += [json.dumps(two | {"ts_event_ns": t0 + i, "seq": i}) for i in range(100, 1100)]
    mixed.write_text("\n".join(body) + "\n")
    result = load_file(lake, mixed, LoadOptions(table=quotes))
    assert (result.status, result.rows_stored, result.dead_lettered) == ("loaded", 1100, 0)
    got = rows(duck, lake, quotes, "SELECT count(*) FROM t WHERE ask_sz = 0")
    assert got == [(100,)]  # the one-sided ones take the default

    bid_only = tmp_path / "bid-only.ndjson"
    lines = [json.dumps(one | {"ts_event_ns": t0 + i, "seq": i}) for i in range(50)]
    bid_only.write_text("\n".join(lines) + "\n")
    with pytest.raises(LoadRejectedError, match="no column for ask_px, ask_sz, required") as err:
        load_file(lake, bid_only, LoadOptions(table=quotes))
    assert "no key for it in the table's first 50 rows" in str(err.value)

    # review13b: a one-sided quote written with `"bid_px": null` has the key; a small
    # --commit-rows still judges at least the first 1,000 rows (or the file).
    nulls = tmp_path / "nulls.ndjson"
    ask = {"symbol": "AMD", "bid_px": None, "bid_sz": None, "ask_px": 1.1, "ask_sz": 6}
    lines = [json.dumps(ask | {"ts_event_ns": t0 + i, "seq": i}) for i in range(3)]
    lines += [json.dumps(two | {"ts_event_ns": t0 + i, "seq": i}) for i in range(3, 6)]
    nulls.write_text("\n".join(lines) + "\n")
    loaded = load_file(lake, nulls, LoadOptions(table=quotes, commit_rows=3))
    assert (loaded.status, loaded.rows_stored) == ("loaded", 6)


def test_a_refused_ndjson_export_commits_no_ledger_entry_so_a_rerun_is_refused_too(
    tmp_path: Path, duck
) -> None:
    """review13b: an export whose first commit held only another table's rows committed a
    ledger entry before its quotes were judged; the refusal came one commit later, and the
    re-run then resumed (a resumed load is never refused) and stored trades as 0/0 quotes."""
    lake = make_lake(tmp_path / "data")
    quotes = "bronze.stocks_quotes"
    t0 = 1_765_893_600_000_000_000
    trade = {"symbol": "AMD", "price": 150.0, "size": 1}
    lines = [
        json.dumps(trade | {"table": "bronze.stocks_trades", "ts_event_ns": t0 + i, "seq": i})
        for i in range(3)
    ]
    lines += [
        json.dumps(trade | {"table": quotes, "ts_event_ns": t0 + i, "seq": i}) for i in range(3, 6)
    ]
    export = tmp_path / "export.ndjson"
    export.write_text("\n".join(lines) + "\n")
    for _ in range(2):
        with pytest.raises(LoadRejectedError, match="no column for bid_px, ask_px, bid_sz, ask_sz"):
            load_file(lake, export, LoadOptions(table=quotes, commit_rows=3))
        assert _ledgers_of(lake, quotes) == {}
    assert lake.load_table(quotes).current_snapshot() is None
