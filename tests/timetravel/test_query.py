"""Queries by table name (`iceberg_lake.timetravel.query.Lake`, `lake query`), current and AS OF."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from timetravel_data import HOUR_NS, T14, append, futures, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import LakeError, TimeTravelError
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.query import Lake

TRADES = "bronze.stocks_trades"
FUTURES = "bronze.futures_trades"


@pytest.fixture(scope="module")
def tagged_lake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A lake with 5 SPY + 2 ES trades tagged `bt-1`, then 3 more SPY trades appended."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path_factory.mktemp("query") / "lake")})
    catalog = LakeCatalog(settings)
    catalog.init()
    first = append(catalog.load_table(TRADES), trades("SPY", T14, 5, 10**9))
    append(catalog.load_table(FUTURES), futures("ES", T14, 2, 10**9))
    snapshots.create_tag(settings, "bt-1")
    second = append(catalog.load_table(TRADES), trades("SPY", T14 + HOUR_NS, 3, 10**9, seq0=100))
    return {"settings": settings, "first": first, "second": second}


def _env(settings: Settings) -> dict[str, str]:
    return {"LAKE_DATA_DIR": str(settings.data_dir)}


def test_query_at_a_tag_returns_the_rows_as_tagged_while_the_table_has_more(tagged_lake) -> None:
    lake = Lake(tagged_lake["settings"])
    sql = "SELECT count(*) AS n, max(seq) AS max_seq FROM bronze.stocks_trades"
    assert lake.query(sql, as_of="bt-1").to_pylist() == [{"n": 5, "max_seq": 4}]
    assert lake.query(sql).to_pylist() == [{"n": 8, "max_seq": 102}]
    assert lake.last_pins == {TRADES: tagged_lake["second"]}
    assert lake.query(sql, as_of=tagged_lake["first"]).to_pylist() == [{"n": 5, "max_seq": 4}]
    df = lake.df("SELECT symbol, price FROM bronze.stocks_trades ORDER BY seq", as_of="bt-1")
    assert list(df.columns) == ["symbol", "price"] and len(df) == 5


def test_installed_lake_executable_runs_a_time_travel_query(tagged_lake) -> None:
    exe = shutil.which("lake") or str(Path(sys.executable).with_name("lake"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(_env(tagged_lake["settings"]))
    sql = "SELECT count(*) AS n FROM bronze.stocks_trades"
    proc = subprocess.run(
        [exe, "query", sql, "--as-of", "bt-1", "-o", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert list(csv.DictReader(io.StringIO(proc.stdout))) == [{"n": "5"}]


def test_every_catalog_table_is_a_view_and_empty_tables_keep_their_columns(tagged_lake) -> None:
    settings = tagged_lake["settings"]
    catalog = LakeCatalog(settings)
    con = Lake(settings).duckdb(as_of="bt-1")
    try:
        views = {
            f"{s}.{n}"
            for s, n in con.execute(
                "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
        }
        assert views == set(catalog.existing_tables())
        cols = [r[0] for r in con.execute("DESCRIBE silver.futures_mbp10").fetchall()]
        assert cols == catalog.load_table("silver.futures_mbp10").schema().column_names
        assert con.execute("SELECT count(*) FROM gold.levels_signals").fetchone() == (0,)
        joined = con.execute(
            "SELECT count(*) FROM bronze.stocks_trades t JOIN bronze.futures_trades f "
            "ON t.ts_event_ns = f.ts_event_ns"
        ).fetchone()
        assert joined == (2,)
    finally:
        con.close()


def test_per_table_pins_and_timestamps(tagged_lake, monkeypatch) -> None:
    # Times a moment after these commits: the settle margin is tested in test_retention.
    monkeypatch.setattr(snapshots, "SETTLE_MS", 0)
    lake = Lake(tagged_lake["settings"])
    sql = (
        "SELECT (SELECT count(*) FROM bronze.stocks_trades) AS trades, "
        "(SELECT count(*) FROM bronze.futures_trades) AS futures"
    )
    assert lake.query(sql, as_of={TRADES: "bt-1"}).to_pylist() == [{"trades": 5, "futures": 2}]
    yesterday = datetime.now(UTC) - timedelta(days=1)
    assert lake.query(sql, as_of=yesterday).to_pylist() == [{"trades": 0, "futures": 0}]
    assert lake.query(sql, as_of=datetime.now(UTC).isoformat()).to_pylist() == [
        {"trades": 8, "futures": 2}
    ]
    with pytest.raises(TimeTravelError, match="no tag or snapshot 'nope'"):
        lake.query(sql, as_of="nope")
    with pytest.raises(LakeError, match="no table 'bronze.nope'"):
        lake.query(sql, as_of={"bronze.nope": "bt-1"})
    # A pin of a table the SQL does not read is checked all the same (newuser5: a typo there
    # was ignored silently).
    with pytest.raises(TimeTravelError, match="no tag or snapshot 'bt-typo'"):
        lake.query(sql, as_of={TRADES: "bt-1", "bronze.stocks_quotes": "bt-typo"})


#: Spellings DuckDB resolves to bronze.stocks_trades (the audit's stale-view cases among them).
TRADES_SPELLINGS = [
    '"bronze"."stocks_trades"',
    '"bronze".stocks_trades',
    'bronze."stocks_trades"',
    "BRONZE.STOCKS_TRADES",
    '"Bronze"."Stocks_Trades"',
    "bronze . stocks_trades",
    "memory.bronze.stocks_trades",
    '"memory" . "bronze" . "stocks_trades"',
]


def _views(lake: Lake) -> set[str]:
    assert lake._session is not None
    rows = lake._session.execute(
        "SELECT schema_name || '.' || view_name FROM duckdb_views() "
        "WHERE NOT internal AND NOT temporary"
    ).fetchall()
    return {r[0] for r in rows}


def test_every_spelling_reads_its_own_pin_after_an_older_pin_in_the_same_session(
    tagged_lake,
) -> None:
    """Audit 2 finding 1: a spelling the table lookup missed kept the view (and pin) of an
    earlier call. Each spelling, after both tables were pinned to the tag, reads the current
    snapshot, and `last_pins` lists exactly the tables read. Budget: ~3 s."""
    first, second = tagged_lake["first"], tagged_lake["second"]
    pin = (
        "SELECT (SELECT count(*) FROM bronze.stocks_trades), "
        "(SELECT count(*) FROM bronze.futures_trades)"
    )
    with Lake(tagged_lake["settings"]) as lake:
        lake.query(pin, as_of="bt-1")
        futures_pin = lake.last_pins[FUTURES]
        for spelling in TRADES_SPELLINGS:
            lake.query(pin, as_of="bt-1")
            assert lake.last_pins == {TRADES: first, FUTURES: futures_pin}
            sql = (
                f"SELECT (SELECT count(*) FROM {spelling}) AS trades, "
                "(SELECT count(*) FROM bronze.futures_trades) AS futures"
            )
            assert lake.query(sql).to_pylist() == [{"trades": 8, "futures": 2}], spelling
            assert lake.last_pins == {TRADES: second, FUTURES: futures_pin}, spelling
            # ... and at an explicit pin, per table by its catalog name
            pinned = lake.query(sql, as_of={TRADES: "bt-1"}).to_pylist()
            assert pinned == [{"trades": 5, "futures": 2}], spelling

        # A table the SQL does not name has no view left over from an earlier call.
        lake.query(pin, as_of="bt-1")
        only_futures = lake.query("SELECT count(*) AS n FROM bronze.futures_trades")
        assert only_futures.to_pylist() == [{"n": 2}]
        assert lake.last_pins == {FUTURES: futures_pin}
        assert _views(lake) == {FUTURES}
        # A failed call leaves no view and no pins behind either.
        with pytest.raises(LakeError, match="no table 'gold.nope'"):
            lake.query('SELECT * FROM "GOLD"."NOPE", bronze.stocks_trades')
        assert _views(lake) == set() and lake.last_pins == {}

        # Names in literals, comments and CTEs are not tables; EXPLAIN (which DuckDB's parser
        # cannot serialize) falls back to the tokenizer and still finds the quoted name.
        text = lake.query(
            "WITH gold AS (SELECT 'bronze.nope' AS s) SELECT gold.s, "
            '(SELECT count(*) FROM "BRONZE"."STOCKS_TRADES") AS n FROM gold -- silver.nope'
        )
        assert text.to_pylist() == [{"s": "bronze.nope", "n": 8}]
        assert lake.last_pins == {TRADES: second}
        lake.query(pin, as_of="bt-1")
        plan = lake.query('EXPLAIN SELECT * FROM "bronze"."stocks_trades" /* gold.nope */')
        assert plan.num_rows >= 1 and lake.last_pins == {TRADES: second}
        assert _views(lake) == {TRADES}

        with pytest.raises(LakeError, match="query failed: Parser Error"):
            lake.query("SELECT * FROM")


def test_sandboxed_session_reads_each_spelling_at_its_own_pin(tagged_lake) -> None:
    """Dropping and recreating views works on a locked-down connection. Budget: ~1 s."""
    with Lake(tagged_lake["settings"], sandbox=True) as lake:
        sql = 'SELECT count(*) AS n FROM "bronze"."stocks_trades"'
        assert lake.query(sql, as_of="bt-1").to_pylist() == [{"n": 5}]
        assert lake.query(sql.replace('"bronze"', "BRONZE")).to_pylist() == [{"n": 8}]
        assert lake.last_pins == {TRADES: tagged_lake["second"]}
        with pytest.raises(LakeError, match="query refused"):
            lake.query('CREATE VIEW bronze.x AS SELECT * FROM "bronze".stocks_trades')


def test_lake_query_cli_as_of_and_output_formats(tagged_lake, tmp_path: Path, monkeypatch) -> None:
    for k, v in _env(tagged_lake["settings"]).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    count = "SELECT count(*) AS n FROM bronze.stocks_trades"
    at_tag = runner.invoke(app, ["query", count, "--as-of", "bt-1", "-o", "json"])
    assert at_tag.exit_code == 0, at_tag.output
    assert json.loads(at_tag.stdout) == [{"n": 5}]
    per_table = runner.invoke(app, ["query", count, "--as-of", f"{TRADES}=bt-1", "-o", "json"])
    assert json.loads(per_table.stdout) == [{"n": 5}]

    sql = "SELECT seq, price FROM bronze.stocks_trades ORDER BY seq"
    res = runner.invoke(app, ["query", sql, "--as-of", "bt-1", "-o", "csv"])
    assert res.exit_code == 0, res.output
    assert [r["seq"] for r in csv.DictReader(io.StringIO(res.stdout))] == list("01234")

    out = tmp_path / "r.parquet"
    res = runner.invoke(app, ["query", sql, "-o", "parquet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).column("seq").to_pylist() == [0, 1, 2, 3, 4, 100, 101, 102]

    res = runner.invoke(app, ["query", sql, "--as-of", "bt-1"])
    assert res.exit_code == 0 and "100.04" in res.stdout and "5 rows" in res.stderr

    # Quoted and upper-case names (audit 2: "Table with name ... does not exist!").
    both = (
        'SELECT (SELECT count(*) FROM "bronze"."stocks_trades") AS trades, '
        "(SELECT count(*) FROM BRONZE.FUTURES_TRADES) AS futures"
    )
    for as_of, trades_n in (([], 8), (["--as-of", "bt-1"], 5)):
        res = runner.invoke(app, ["query", both, *as_of, "-o", "json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout) == [{"trades": trades_n, "futures": 2}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["SELECT * FROM bronze.nope"], "no table 'bronze.nope'"),
        (["SELECT nope FROM bronze.stocks_trades"], "query failed: Binder Error"),
        (["SELECT 1 FROM bronze.stocks_trades", "--as-of", "nope"], "no tag or snapshot"),
        (["SELECT 1", "-o", "parquet"], "--out"),
    ],
)
def test_query_errors_are_one_line(tagged_lake, monkeypatch, args, message) -> None:
    for k, v in _env(tagged_lake["settings"]).items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(app, ["query", *args])
    assert res.exit_code != 0
    assert message in res.output + res.stderr
    assert "Traceback" not in res.output + res.stderr


@pytest.mark.integration
def test_query_as_of_on_s3_warehouse_and_postgres_catalog(
    tmp_path: Path, s3_server, postgres_server
) -> None:
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            "LAKE_CATALOG_NAME": f"tt{uuid.uuid4().hex[:8]}",
            "LAKE_CATALOG_URI": postgres_server.uri,
            **s3_server.lake_env(f"s3://timetravel-{uuid.uuid4().hex[:8]}/wh"),
        }
    )
    catalog = LakeCatalog(settings)
    catalog.init()
    append(catalog.load_table(TRADES), trades("SPY", T14, 4, 10**9))
    snapshots.create_tag(catalog, "s3-tag", [TRADES])
    append(catalog.load_table(TRADES), trades("SPY", T14, 2, 10**9, seq0=50))
    lake = Lake(catalog)
    sql = "SELECT count(*) AS n FROM bronze.stocks_trades"
    assert lake.query(sql, as_of="s3-tag").to_pylist() == [{"n": 4}]
    assert lake.query(sql).to_pylist() == [{"n": 6}]
