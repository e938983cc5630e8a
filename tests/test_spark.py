"""Spark as an engine: real Spark 3.5 + Iceberg 1.10 on the SQLite and PostgreSQL catalogs.

One `local[2]` session (the `spark` fixture) serves every test; each catalog kind gets its own
small lake, attached to Spark under its catalog name. Budget: about 2 minutes on 2 cores for the
whole module, most of it JVM start and Spark's first queries (measured: 65 s with
test_spark_jars.py, serial, `--durations=0`; docs/production.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ingest_support import run_until_idle
from pyiceberg.schema import Schema
from pyiceberg.types import BinaryType, TimestampType, TimestamptzType
from support.wait import wait_until
from table_rows import make_rows
from timetravel_data import HOUR_NS, T14, append, futures, to_arrow, trades

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine.spark import aws_sdk_jar_names, jdbc_catalog
from iceberg_lake.exceptions import CompactionError
from iceberg_lake.properties import SILVER_INCREMENTAL_SOURCE
from iceberg_lake.schema.evolve import AddColumn, RenameColumn, WidenColumn, evolve_table
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.silver.spark import SparkSilverCompactor
from iceberg_lake.testing import PostgresServer, S3Server, run_nats_server
from iceberg_lake.testing_spark import TcpToUnixProxy, attach_catalog, spark_jar_paths
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.readers import BronzeReader, SilverReader

pytestmark = pytest.mark.integration

TRADES = "bronze.stocks_trades"
SILVER_TRADES = "silver.stocks_trades"
FUTURES = "bronze.futures_trades"
DAY = "2025-12-16"
INSTALL_S3 = "scripts/install_spark_s3.py"
#: Rows `_build(seed=True)` puts in every other table (`table_rows.make_rows`: 2025-12-06, a day
#: no test compacts, so Silver's seeded rows stay as they are).
SEED_ROWS = 2


def _build(settings: Settings, *, seed: bool = False) -> dict[str, Any]:
    """A small lake: SPY and QQQ trades over two hours (tagged after the first), ES futures;
    with `seed`, `SEED_ROWS` rows in every other declared table (each column by its type)."""
    catalog = LakeCatalog(settings)
    catalog.init()
    first = append(catalog.load_table(TRADES), trades("SPY", T14, 6, 10**9))
    append(catalog.load_table(TRADES), trades("QQQ", T14, 4, 10**9, seq0=50, price=500.0))
    snapshots.create_tag(catalog, "bt-1", [TRADES])
    append(catalog.load_table(TRADES), trades("SPY", T14 + HOUR_NS, 5, 10**9, seq0=100))
    append(catalog.load_table(FUTURES), futures("ES", T14, 3, 10**9))
    if seed:
        for name in catalog.existing_tables():
            if name not in (TRADES, FUTURES):
                table = catalog.load_table(name)
                table.append(make_rows(table, 41, SEED_ROWS))
    return {"settings": settings, "catalog": catalog, "first": first}


@pytest.fixture(scope="module")
def pg_proxy(postgres_server: PostgresServer) -> Iterator[TcpToUnixProxy]:
    """The session's PostgreSQL on a loopback TCP port (JDBC cannot open its Unix socket)."""
    proxy = TcpToUnixProxy(postgres_server.socket_dir / f".s.PGSQL.{postgres_server.port}")
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def lake(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, spark: Any
) -> dict[str, Any]:
    """A lake on the SQLite or PostgreSQL catalog, attached to the shared Spark session."""
    root = tmp_path_factory.mktemp(f"spark-{request.param}")
    env = {"LAKE_DATA_DIR": str(root / "lake")}
    if request.param == "postgresql":
        proxy = request.getfixturevalue("pg_proxy")
        # A catalog name of its own: the session's PostgreSQL is shared with other tests.
        env["LAKE_CATALOG_URI"] = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        env["LAKE_CATALOG_NAME"] = "lake_pg"
    built = _build(load_settings(env), seed=True)
    built["name"] = attach_catalog(spark, built["settings"])
    return built


def _spark_count(spark: Any, name: str, sql_from: str, where: str = "") -> int:
    return int(spark.sql(f"SELECT count(*) AS n FROM {name}.{sql_from} {where}").first()["n"])


def _refresh(spark: Any, name: str, table: str) -> None:
    spark.sql(f"REFRESH TABLE {name}.{table}")


def _rows_as_json_sql(schemas: dict[str, Schema], spark_catalog: str | None) -> str:
    """One query over every table: each row as a JSON object of its columns by name (timestamps
    as epoch microseconds, binary as hex), in Spark SQL (`spark_catalog` given) or DuckDB's."""
    branches = []
    for name, schema in schemas.items():
        pairs = []
        for field in schema.fields:
            col = f"`{field.name}`" if spark_catalog else f'"{field.name}"'
            if isinstance(field.field_type, TimestamptzType | TimestampType):
                col = f"unix_micros({col})" if spark_catalog else f"epoch_us({col})"
            elif isinstance(field.field_type, BinaryType):
                col = f"hex({col})"
            pairs.append(f"'{field.name}', {col}")
        if spark_catalog:
            row, source = f"to_json(named_struct({', '.join(pairs)}))", f"{spark_catalog}.{name}"
        else:
            row, source = f"json_object({', '.join(pairs)})", name
        branches.append(f"SELECT '{name}' AS t, {row} AS j FROM {source}")
    return " UNION ALL ".join(branches)


def _rows_by_table(rows: list[dict[str, Any]], schemas: dict[str, Schema]) -> dict[str, list[str]]:
    """`_rows_as_json_sql`'s result as each table's rows, canonical (Spark's JSON leaves out
    null fields) and sorted."""
    out: dict[str, list[str]] = {name: [] for name in schemas}
    for r in rows:
        values = json.loads(r["j"])
        columns = [f.name for f in schemas[r["t"]].fields]
        out[r["t"]].append(json.dumps({c: values.get(c) for c in columns}))
    return {name: sorted(found) for name, found in out.items()}


def test_every_table_reads_by_name_with_duckdb_values(spark: Any, lake: dict[str, Any]) -> None:
    """Every declared table has rows (`_build(seed=True)`), and Spark reads each one by name
    with DuckDB's values, column by column: wide tables (gold, MBP-10), binary, booleans,
    timestamps. One query per engine over every table (one Spark job)."""
    catalog = lake["catalog"]
    tables = catalog.existing_tables()
    assert TRADES in tables and "silver.stocks_trades" in tables and len(tables) >= 13
    schemas = {t: catalog.load_table(t).schema() for t in tables}
    spark_sql = _rows_as_json_sql(schemas, lake["name"])
    by_spark = _rows_by_table([r.asDict() for r in spark.sql(spark_sql).collect()], schemas)
    duck_sql = _rows_as_json_sql(schemas, None)
    by_duck = _rows_by_table(Lake(lake["settings"]).query(duck_sql).to_pylist(), schemas)
    assert by_spark == by_duck
    counts = {t: len(rows) for t, rows in by_spark.items()}
    assert counts == {t: {TRADES: 15, FUTURES: 3}.get(t, SEED_ROWS) for t in tables}
    # The columns really came through (not all null): a wide table's last column, binary.
    gold = json.loads(by_spark["gold.levels_signals"][0])
    assert len(gold) > 30 and None not in gold.values()
    assert {json.loads(r)["raw"] for r in by_spark["bronze.dead_letters"]} == {b"x".hex().upper()}


def test_hidden_partitions_prune_in_spark(spark: Any, lake: dict[str, Any]) -> None:
    name = lake["name"]
    hour = datetime.fromtimestamp((T14 + HOUR_NS) / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
    where = f"WHERE symbol = 'SPY' AND ts_event >= TIMESTAMP '{hour}'"
    df = spark.sql(f"SELECT * FROM {name}.{TRADES} {where}")
    plan = df._jdf.queryExecution().executedPlan().toString()  # noqa: SLF001 - plan text only
    # The filters reach Iceberg's scan (that is what prunes) ...
    assert "BatchScan" in plan and "symbol" in plan and "ts_event" in plan
    # ... and only the file of (SPY, 15:00) is read, out of the table's three (`_file` is
    # Iceberg's metadata column naming each row's data file).
    files = "SELECT count(DISTINCT _file) AS n FROM {}.{} {}"
    assert int(spark.sql(files.format(name, TRADES, where)).first()["n"]) == 1
    assert int(spark.sql(files.format(name, TRADES, "")).first()["n"]) == 3
    assert df.count() == 5


def test_version_as_of_a_snapshot_id_and_a_tag(spark: Any, lake: dict[str, Any]) -> None:
    name = lake["name"]
    assert _spark_count(spark, name, f"{TRADES} VERSION AS OF {lake['first']}") == 6
    assert _spark_count(spark, name, f"{TRADES} VERSION AS OF 'bt-1'") == 10
    refs = spark.sql(f"SELECT name, type FROM {name}.{TRADES}.refs").collect()
    assert ("bt-1", "TAG") in {(r["name"], r["type"]) for r in refs}


def test_evolved_columns_read_right(spark: Any, lake: dict[str, Any]) -> None:
    catalog, name = lake["catalog"], lake["name"]
    table = catalog.load_table(FUTURES)
    result = evolve_table(
        table,
        FUTURES,
        [
            AddColumn("venue", "string"),
            WidenColumn("size", "long"),
            RenameColumn("exchange", "exchange_code"),
        ],
    )
    assert result.committed
    table = catalog.load_table(FUTURES)
    new = [
        {**r, "venue": "GLBX", "exchange_code": "CME2"}
        for r in futures("ES", T14, 2, 10**9, seq0=10)
    ]
    new[1]["size"] = 3_000_000_000  # only fits the widened column
    table.append(to_arrow(table, new))
    _refresh(spark, name, FUTURES)
    sql = f"SELECT seq, size, venue, exchange_code FROM {FUTURES} ORDER BY seq"
    got = [tuple(r) for r in spark.sql(sql.replace("FROM ", f"FROM {name}.")).collect()]
    assert got == [
        (0, 1, None, "CME"),
        (1, 2, None, "CME"),
        (2, 3, None, "CME"),
        (10, 1, "GLBX", "CME2"),
        (11, 3_000_000_000, "GLBX", "CME2"),
    ]
    duck = Lake(lake["settings"]).query(sql)
    assert [tuple(r.values()) for r in duck.to_pylist()] == got


def _insert_sql(spark: Any, name: str, rows: list[dict[str, Any]]) -> str:
    """`INSERT INTO` with every column of the table in order (`ts_event` derived by Spark)."""
    columns = spark.table(f"{name}.{TRADES}").columns
    values = []
    for row in rows:
        exprs = []
        for col in columns:
            if col == "ts_event":
                exprs.append(f"timestamp_micros({row['ts_event_ns'] // 1000})")
            elif row.get(col) is None:
                exprs.append("NULL")
            elif isinstance(row[col], str):
                exprs.append(f"'{row[col]}'")
            else:
                exprs.append(repr(row[col]))
        values.append("(" + ", ".join(exprs) + ")")
    return f"INSERT INTO {name}.{TRADES} VALUES " + ", ".join(values)


def test_spark_insert_is_read_by_the_lake_and_compacted_into_silver(
    spark: Any, lake: dict[str, Any]
) -> None:
    name, settings = lake["name"], lake["settings"]
    new = trades("SPY", T14 + 2 * HOUR_NS, 2, 10**9, seq0=200)
    # An exact duplicate (received later) of a Bronze row: Silver must keep the earlier one.
    duplicate = {**trades("SPY", T14, 1, 10**9)[0], "ts_recv_ns": T14 + 9_999}
    spark.sql(_insert_sql(spark, name, [*new, duplicate]))
    catalog = LakeCatalog(settings)
    snap = catalog.load_table(TRADES).current_snapshot()
    assert snap is not None and snap.summary is not None
    assert snap.summary["added-records"] == "3"
    bronze = BronzeReader(catalog).read_stock_trades("SPY", DAY)
    assert len(bronze) == 14 and {r["seq"] for r in new} <= set(bronze["seq"])
    result = SilverCompactor(catalog).compact_date(DAY, TRADES)
    assert result["status"] == "success" and result["duplicates_removed"] == 1
    silver = SilverReader(catalog).read_stock_trades("SPY", DAY)
    assert len(silver) == 13
    kept = silver[(silver["seq"] == 0)]
    assert kept["ts_recv_ns"].tolist() == [T14 + 1_000]
    _refresh(spark, name, "silver.stocks_trades")
    assert _spark_count(spark, name, "silver.stocks_trades") == 13 + 4 + SEED_ROWS


def test_spark_maintenance_then_the_lake_reads_and_compacts_without_loss(
    spark: Any, lake: dict[str, Any]
) -> None:
    name, settings = lake["name"], lake["settings"]
    catalog = LakeCatalog(settings)
    # A second file in (SPY, 14:00), so rewrite_data_files has something to combine.
    append(catalog.load_table(TRADES), trades("SPY", T14 + 30 * 10**9, 2, 10**9, seq0=300))
    count_sql = f"SELECT count(*) AS n FROM {TRADES}"
    distinct_sql = (
        "SELECT count(*) AS n FROM (SELECT DISTINCT source, ts_event_ns, symbol, price, size, "
        f"exchange, seq FROM {TRADES})"
    )
    total = Lake(settings).query(count_sql).to_pylist()[0]["n"]
    events = Lake(settings).query(distinct_sql).to_pylist()[0]["n"]
    before = BronzeReader(catalog).read_stock_trades("SPY", DAY)
    files_before = len(catalog.load_table(TRADES).inspect.files())
    rewritten = spark.sql(
        f"CALL {name}.system.rewrite_data_files(table => '{TRADES}', "
        "options => map('min-input-files', '2'))"
    ).first()
    assert rewritten["rewritten_data_files_count"] >= 2
    # Spark keeps the current snapshot and every ref's: the tag bt-1 and, once Silver has
    # compacted this table (the test above), the `silver-source-…` tag of the Bronze snapshot
    # Silver read. Every other snapshot goes, and with them the files only they reference.
    table = LakeCatalog(settings).load_table(TRADES)
    assert table.current_snapshot() is not None
    kept = {table.current_snapshot().snapshot_id} | {r.snapshot_id for r in table.refs().values()}
    kept_files = {
        path for sid in kept for path in table.inspect.files(sid).column("file_path").to_pylist()
    }
    all_files = {
        path
        for snap in table.snapshots()
        for path in table.inspect.files(snap.snapshot_id).column("file_path").to_pylist()
    }
    # A minute ahead: every snapshot is older (a literal in seconds would spare those of the
    # current second); refs and the current snapshot are kept regardless.
    cutoff = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    expired = spark.sql(
        f"CALL {name}.system.expire_snapshots(table => '{TRADES}', "
        f"older_than => TIMESTAMP '{cutoff}', retain_last => 1)"
    ).first()
    # Exactly the files no kept snapshot references (none when the Silver source's tag holds
    # every file the rewrite replaced, as after the test above; more when run alone).
    assert expired["deleted_data_files_count"] == len(all_files - kept_files)
    table = LakeCatalog(settings).load_table(TRADES)
    assert len(table.inspect.files()) < files_before
    assert {s.snapshot_id for s in table.snapshots()} == kept
    assert _spark_count(spark, name, f"{TRADES} VERSION AS OF 'bt-1'") == 10
    for ref in table.refs():
        if ref.startswith("silver-source-"):  # Silver's source is still readable by tag
            assert _spark_count(spark, name, f"{TRADES} VERSION AS OF '{ref}'") >= 10

    after = BronzeReader(catalog).read_stock_trades("SPY", DAY)
    cols = ["ts_event_ns", "ts_recv_ns", "seq", "price", "size"]
    assert (
        after[cols].sort_values(cols).values.tolist()
        == before[cols].sort_values(cols).values.tolist()
    )
    assert Lake(settings).query(count_sql).to_pylist()[0]["n"] == total
    result = SilverCompactor(catalog).compact_date(DAY, TRADES)
    assert result["status"] == "success"
    # Silver: the day's distinct events, and the seeded rows of another day, untouched.
    assert Lake(settings).query("SELECT count(*) AS n FROM silver.stocks_trades").to_pylist() == [
        {"n": events + SEED_ROWS}
    ]


def test_spark_reads_while_the_lake_service_commits_on_sqlite(spark: Any, tmp_path: Path) -> None:
    """Spark holds the embedded catalog open while the writers of `lake serve` commit batches:
    no "database is locked" (WAL), and Spark sees each commit (no pinned read transaction)."""
    from ingest_support import SUBJECTS, encode, make_event, publish, settings_for, wait_stream

    with run_nats_server(tmp_path / "nats") as nats:
        settings = settings_for(
            tmp_path, nats.url, LAKE_BRONZE_BATCH_SIZE="200", LAKE_BRONZE_BATCH_SECONDS="0.2"
        )
        catalog = LakeCatalog(settings)
        catalog.init()
        name = attach_catalog(spark, settings)
        assert _spark_count(spark, name, TRADES) == 0  # Spark now holds the catalog open
        events = [(SUBJECTS[TRADES], encode(make_event(TRADES, i)), None) for i in range(1000)]
        publish(settings, events[:200])  # a first batch waits; the rest arrives while it runs
        wait_stream(settings, "MARKET", 200)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                run_until_idle(settings, [TRADES])
            except BaseException as exc:  # reported below
                errors.append(exc)

        def trickle() -> None:  # pauses (0.1 s) shorter than the service's idle stop (0.3 s)
            try:
                publish(settings, events[200:], pace=500)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=serve), threading.Thread(target=trickle)]
        for t in threads:
            t.start()
        writer = threads[0]
        seen: set[int] = set()  # counts read wholly while the service ran
        reads = 0
        while writer.is_alive() or reads == 0:  # Spark keeps reading during the commits
            _refresh(spark, name, TRADES)
            count = _spark_count(spark, name, TRADES)
            assert count <= len(events)
            if writer.is_alive():
                seen.add(count)
            reads += 1
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        # The same session saw the table change while the service committed (a pinned read
        # transaction would show one count throughout).
        assert len(seen) >= 2, seen
        # On a loaded machine the trickle can pause longer than the idle stop: whatever came
        # after the service stopped is in the stream, and a second run stores it.
        run_until_idle(settings, [TRADES])
        _refresh(spark, name, TRADES)
        assert _spark_count(spark, name, TRADES) == len(events)
        commits = len(catalog.load_table(TRADES).snapshots())
        assert commits >= 3, commits  # batches of 200 events or 0.2 s
        with catalog.catalog.engine.connect() as con:
            assert con.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_lake_on_s3_reads_by_name_and_a_spark_insert_reads_back(
    spark: Any, s3_server: S3Server, tmp_path: Path
) -> None:
    """An s3:// warehouse (SeaweedFS) through Iceberg's S3FileIO, configured from the lake's
    settings (endpoint, path style, keys, region); then Silver compacted there by Spark equals
    the DuckDB engine's, row for row, in ONE overwrite snapshot, on this session and through
    the `lake` executable (`--all-dates` over two days). Budget: about 10 s on the shared
    session, plus about 12 s for `lake compact --engine spark` in its own JVM."""
    jars = {p.name for p in spark_jar_paths(spark)}
    missing = set(aws_sdk_jar_names()) - jars
    assert not missing, f"AWS SDK jars not on Spark's classpath: python {INSTALL_S3}"
    env = {
        "LAKE_DATA_DIR": str(tmp_path / "lake"),
        # Spark keeps a catalog per name for the JVM's life: a name (and bucket) of its own.
        "LAKE_CATALOG_NAME": "lake_s3",
        **s3_server.lake_env(f"s3://spark-{uuid.uuid4().hex[:8]}/warehouse"),
    }
    built = _build(load_settings(env))
    settings, catalog = built["settings"], built["catalog"]
    name = attach_catalog(spark, settings)
    assert spark.conf.get(f"spark.sql.catalog.{name}.s3.endpoint") == s3_server.endpoint
    tables = [TRADES, FUTURES, "silver.stocks_trades"]
    union = " UNION ALL ".join(f"SELECT '{t}' AS t, count(*) AS n FROM {{}}{t}" for t in tables)
    by_spark = {r["t"]: r["n"] for r in spark.sql(union.format(*[f"{name}."] * 3)).collect()}
    by_duck = {r["t"]: r["n"] for r in Lake(settings).query(union.format(*[""] * 3)).to_pylist()}
    assert by_spark == by_duck == {TRADES: 15, FUTURES: 3, "silver.stocks_trades": 0}

    new = trades("SPY", T14 + 2 * HOUR_NS, 2, 10**9, seq0=200)
    spark.sql(_insert_sql(spark, name, new))
    table = catalog.load_table(TRADES)
    assert table.current_snapshot().summary["added-records"] == "2"  # type: ignore[union-attr]
    assert all(f.startswith("s3://") for f in table.inspect.files()["file_path"].to_pylist())
    bronze = BronzeReader(catalog).read_stock_trades("SPY", DAY)
    assert len(bronze) == 13 and {r["seq"] for r in new} <= set(bronze["seq"])
    assert Lake(settings).query(f"SELECT count(*) AS n FROM {TRADES}").to_pylist() == [{"n": 17}]

    # Silver on Spark on the s3:// warehouse (`lake compact --engine spark`'s compactor, on this
    # session): redeliveries of three SPY trades, the first received EARLIER than the original
    # and with other content (it survives), two later (dropped). Both engines compact the same
    # pinned snapshot; rows appended after the pin must not reach Silver.
    first = trades("SPY", T14, 3, 10**9)
    redelivered = [{**first[0], "ts_recv_ns": first[0]["ts_recv_ns"] - 500, "conditions": "R"}]
    redelivered += [{**r, "ts_recv_ns": r["ts_recv_ns"] + 5_000} for r in first[1:]]
    pinned = append(table, redelivered)
    append(table, trades("QQQ", T14 + HOUR_NS, 2, 10**9, seq0=60, price=500.0))
    with SilverCompactor(catalog) as compactor:
        by_duck = compactor.compact_date(DAY, TRADES, snapshot_id=pinned)
    assert by_duck["rows_read"] == 20 and by_duck["duplicates_removed"] == 3
    silver = catalog.load_table(SILVER_TRADES)
    duck_rows = _silver_by_file(silver)
    assert len(duck_rows) == by_duck["partitions"] == 4  # SPY hours 14-16, QQQ hour 14
    before = {s.snapshot_id for s in silver.snapshots()}

    by_spark = SparkSilverCompactor(spark, catalog).compact_date(DAY, TRADES, snapshot_id=pinned)
    silver = catalog.load_table(SILVER_TRADES)
    props = _one_overwrite(silver, before, by_spark["silver_snapshot_id"], pinned)
    assert int(props["deleted-data-files"]) == len(duck_rows)  # every DuckDB file replaced
    for key in ("rows_read", "rows_written", "duplicates_removed", "partitions"):
        assert by_spark[key] == by_duck[key], key
    assert by_spark["replaced_partitions"] == sorted(by_duck["replaced_partitions"], key=str)
    spark_rows = _silver_by_file(silver)
    assert spark_rows == duck_rows, "rows or order differ per partition"
    # Read back by name: the lake's Silver reader and DuckDB, and Spark itself.
    spy = SilverReader(catalog).read_stock_trades("SPY", DAY)
    assert len(spy) == 13 and spy["ts_recv_ns"].tolist()[0] == first[0]["ts_recv_ns"] - 500
    assert spy["conditions"].tolist()[0] == "R"
    query = f"SELECT count(*) AS n FROM {SILVER_TRADES}"
    assert Lake(settings).query(query).to_pylist() == [{"n": 17}]
    _refresh(spark, name, SILVER_TRADES)
    assert _spark_count(spark, name, SILVER_TRADES) == 17

    # As an operator runs it (about 10 s: its own local JVM, whose session gets the AWS SDK jars
    # and the S3 settings from `spark_session`): `lake compact --engine spark --all-dates` on a
    # pin that also holds the next day takes both days, in ONE more overwrite snapshot, with the
    # rows the DuckDB engine's --all-dates gives for the same pin.
    latest = append(table, trades("SPY", T14 + 24 * HOUR_NS, 3, 10**9, seq0=900))
    with SilverCompactor(catalog) as compactor:
        duck_days = compactor.compact_all_dates(TRADES, snapshot_id=latest)
    silver = catalog.load_table(SILVER_TRADES)
    duck_all = _silver_by_file(silver)
    # + the QQQ hour appended after the first pin, + the next day's SPY hour.
    assert len(duck_all) == len(duck_rows) + 2
    before = {s.snapshot_id for s in silver.snapshots()}
    args = ["--all-dates", "--table", "stocks.trades", "--snapshot", str(latest)]
    # The S3 secret reaches Spark's catalog, not a command line (`ps` shows those to any user).
    (by_cli,) = _lake_compact_on_spark(env, args, secrets=(s3_server.secret_key,))
    assert by_cli["dates"] == [r["date"] for r in duck_days] == [DAY, "2025-12-17"]
    assert by_cli["rows_written"] == sum(r["rows_written"] for r in duck_days) == 17 + 2 + 3
    silver = catalog.load_table(SILVER_TRADES)
    added = [s for s in silver.snapshots() if s.snapshot_id not in before]
    assert len(added) == 1 and added[0].snapshot_id == by_cli["silver_snapshot_id"]
    assert added[0].summary is not None and added[0].summary.operation.value == "overwrite"
    assert _silver_by_file(silver) == duck_all


def _lake_compact_on_spark(
    env: dict[str, str], args: list[str], *, secrets: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """`lake compact --engine spark … -o json` in the installed `lake` executable, with the
    lake's settings from `env` only (the JVM is its own, as an operator's run). With `secrets`:
    the argv of every process it starts (spark-submit's launcher and the JVM itself, read from
    /proc while they run, as `ps` shows them to any local user) holds none of them."""
    exe = shutil.which("lake") or str(Path(sys.executable).with_name("lake"))
    full = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    full.update(env)
    full["SPARK_LOCAL_IP"] = "127.0.0.1"
    # Less JIT and GC work for a short-lived JVM on 2 shared cores (as the `spark` fixture).
    full["JAVA_TOOL_OPTIONS"] = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    cmd = [exe, "compact", "--engine", "spark", "--spark-master", "local[2]", *args, "-o", "json"]
    proc = subprocess.Popen(
        cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen: set[bytes] = set()  # every argv seen (bash exec()s into java: a pid's argv changes)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_argv, args=(proc.pid, seen, stop), daemon=True)
    if secrets:
        watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    if secrets:
        watcher.join(timeout=10)
        argvs = [a.replace(b"\0", b" ") for a in seen]
        # The watcher saw the JVM and its `--conf` arguments (else the check below proves nothing).
        assert any(b"SparkSubmit" in a and b"spark.sql.extensions=" in a for a in argvs), argvs
        # (a bool, so that a failure does not print the secret)
        leaked = any(secret.encode() in a for secret in secrets for a in argvs)
        assert not leaked, "a secret is on a command line"
    results: list[dict[str, Any]] = json.loads(stdout)
    return results


def _watch_argv(root: int, seen: set[bytes], stop: threading.Event) -> None:
    """Record the argv of every descendant of `root` (from /proc) until `stop`, every 50 ms."""
    while not stop.wait(0.05):
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # "pid (comm) state ppid …": comm may hold spaces, so split after its ")".
                fields = stat.read_bytes().rsplit(b")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
        family = {root}
        grew = True
        while grew:
            kids = {pid for pid, ppid in parents.items() if ppid in family} - family
            family |= kids
            grew = bool(kids)
        for pid in family - {root}:
            try:
                seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue


def _silver_by_file(table: Any) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Each Silver data file's rows in stored order (through the table's own FileIO, so s3://
    too), keyed by its one partition (symbol, hour); fails if a partition spans two files."""
    import pyarrow.parquet as pq

    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for task in table.scan().plan_files():
        path = task.file.file_path
        assert path.startswith(table.location()), path
        with table.io.new_input(path).open() as f:
            rows = pq.read_table(f).to_pylist()
        keys = {(r["symbol"], r["ts_event_ns"] // HOUR_NS) for r in rows}
        assert len(keys) == 1 and not keys & out.keys(), (path, keys)
        out[keys.pop()] = rows
    return out


# ---- Silver on Spark -------------------------------------------------------------------------


def test_lake_compact_engine_spark_equals_duckdb_silver_row_for_row(
    tmp_path: Path, duck: Any, spark: Any
) -> None:
    """Same pinned Bronze snapshot (by id for DuckDB, by the time it was current for Spark),
    both engines: identical rows in identical order per partition, each run ONE `overwrite`
    snapshot. Spark runs in the installed `lake` executable (its own local JVM), as an operator
    would run it; then every date at once (`--all-dates`) on the shared session."""
    # tests/silver is on sys.path only once pytest has collected it: run alone, this file adds it.
    silver_tests = str(Path(__file__).resolve().parent / "silver")
    if silver_tests not in sys.path:
        sys.path.insert(0, silver_tests)
    from test_silver import (
        BRONZE,
        DAY,
        SILVER,
        _make_lake,
        base_rows,
        by_partition,
        silver_files_in_order,
    )
    from test_silver import append as bronze_append

    # A catalog name of its own: the shared Spark session keeps one catalog per name.
    settings = load_settings(
        {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": "lake_rows"}
    )
    catalog = _make_lake(settings)
    bronze = catalog.load_table(BRONZE)
    rows = base_rows()
    earlier = bronze_append(bronze, rows[:30])
    pinned = bronze_append(bronze, rows[20:])  # rows 20..29 twice, in two files
    bronze_append(bronze, rows[:5])  # after the pin: neither engine may see these
    # Spark gets the pin as a time (`--as-of <time>`), resolved as the DuckDB engine does.
    stamps = {s.snapshot_id: s.timestamp_ms for s in bronze.snapshots()}
    assert max(stamps.values()) > stamps[pinned]  # that time names exactly `pinned`
    pinned_at = datetime.fromtimestamp(stamps[pinned] / 1000, UTC).isoformat(
        timespec="milliseconds"
    )
    # `--as-of` refuses the last seconds (a commit stamped before them may still land).
    settled = stamps[pinned] + snapshots.SETTLE_MS
    wait_until(lambda: time.time() * 1000 > settled, 30, "the pinned time to settle")

    with SilverCompactor(catalog) as compactor:
        # Silver first holds an earlier state, so both runs below replace partitions.
        compactor.compact_date(DAY, "futures.trades", snapshot_id=earlier)
        by_duck = compactor.compact_date(DAY, "futures.trades", snapshot_id=pinned)
    silver = catalog.load_table(SILVER)
    duck_rows = by_partition(silver_files_in_order(duck, silver))
    duck_snap = silver.current_snapshot()
    assert duck_snap is not None and duck_snap.summary is not None
    assert duck_snap.summary.operation.value == "overwrite"
    before = {s.snapshot_id for s in silver.snapshots()}

    env = {"LAKE_DATA_DIR": str(settings.data_dir), "LAKE_CATALOG_NAME": settings.catalog_name}
    args = ["--date", str(DAY), "--table", "futures.trades", "--as-of", pinned_at]
    (by_spark,) = _lake_compact_on_spark(env, args)
    assert by_spark["source_snapshot_id"] == pinned

    silver = catalog.load_table(SILVER)
    props = _one_overwrite(silver, before, by_spark["silver_snapshot_id"], pinned)
    assert props["lake.operation"] == "silver-compaction"
    assert json.loads(props["lake.replaced-partitions"]) == sorted(
        by_duck["replaced_partitions"], key=str
    )
    for key in ("rows_read", "rows_written", "duplicates_removed", "partitions"):
        assert by_spark[key] == by_duck[key], key
    # Every partition replaced, none kept: Spark's files are all Silver has now.
    duck_files = silver.inspect.files(snapshot_id=duck_snap.snapshot_id)
    assert int(props["deleted-data-files"]) == len(duck_files) > 0
    spark_rows = by_partition(silver_files_in_order(duck, silver))
    assert spark_rows == duck_rows, "rows or order differ per partition"
    # Back on DuckDB: Spark's files carry no source state, so the partitions are recompacted
    # once, to the same rows; after that the DuckDB engine finds them unchanged.
    with SilverCompactor(catalog) as compactor:
        again = compactor.compact_date(DAY, "futures.trades", snapshot_id=pinned)
        assert again["status"] == "success" and again["partitions"] == by_duck["partitions"]
        assert compactor.compact_date(DAY, "futures.trades", snapshot_id=pinned)["status"] == (
            "unchanged"
        )
    assert by_partition(silver_files_in_order(duck, catalog.load_table(SILVER))) == duck_rows

    # Every date (`--all-dates`, about 5 s): a second day in Bronze. Spark takes the days the
    # DuckDB engine's --all-dates takes, in ONE overwrite snapshot, with the same rows.
    day_ns = 86_400 * 10**9
    next_day = [
        {**r, "ts_event_ns": r["ts_event_ns"] + day_ns, "ts_recv_ns": r["ts_recv_ns"] + day_ns}
        for r in rows[:12]
    ]
    latest = bronze_append(bronze, [{**r, "ts_event": r["ts_event_ns"] // 1000} for r in next_day])
    with SilverCompactor(catalog) as compactor:
        duck_days = compactor.compact_all_dates("futures.trades", snapshot_id=latest)
    all_rows = by_partition(silver_files_in_order(duck, catalog.load_table(SILVER)))
    before = {s.snapshot_id for s in catalog.load_table(SILVER).snapshots()}
    attach_catalog(spark, settings)
    every = SparkSilverCompactor(spark, catalog).compact_all_dates(
        "futures.trades", snapshot_id=latest
    )
    days = [str(DAY), str(DAY + timedelta(days=1))]
    assert every["dates"] == [r["date"] for r in duck_days] == days and every["date"] is None
    silver = catalog.load_table(SILVER)
    new = [s for s in silver.snapshots() if s.snapshot_id not in before]
    assert len(new) == 1 and new[0].snapshot_id == every["silver_snapshot_id"]
    assert new[0].summary is not None and new[0].summary.operation.value == "overwrite"
    # All of Bronze: rows[:30], rows[20:], rows[:5], the next day.
    assert every["rows_read"] == 30 + (len(rows) - 20) + 5 + len(next_day)
    assert by_partition(silver_files_in_order(duck, silver)) == all_rows


def test_spark_compaction_of_an_older_snapshot_lowers_the_incremental_mark(
    spark: Any, tmp_path: Path
) -> None:
    """`lake compact --engine spark --as-of <older>` rewrites partitions with older content:
    the DuckDB engine's incremental mark is lowered, so the next incremental run catches up
    (budget: ~6 s on the shared session)."""
    settings = load_settings(
        {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": "lake_mark"}
    )
    catalog = LakeCatalog(settings)
    catalog.init()
    bronze = catalog.load_table(TRADES)
    old = append(bronze, trades("SPY", T14, 4, 10**9))
    new = append(bronze, trades("SPY", T14 + 10 * 10**9, 2, 10**9, seq0=50))
    attach_catalog(spark, settings)

    def mark() -> str | None:
        return catalog.load_table(SILVER_TRADES).properties.get(SILVER_INCREMENTAL_SOURCE)

    with SilverCompactor(catalog) as compactor:
        assert compactor.compact_incremental([TRADES])[0]["source_snapshot_id"] == new
        assert mark() == str(new)
        pinned = SparkSilverCompactor(spark, catalog).compact_date(DAY, TRADES, as_of=old)
        assert pinned["status"] == "success" and pinned["rows_written"] == 4
        assert mark() == str(old)
        caught_up = compactor.compact_incremental([TRADES])[0]
        assert caught_up["status"] == "success" and caught_up["rows_written"] == 6
    assert mark() == str(new)


def test_spark_compaction_pinned_before_a_bronze_rename_equals_duckdb(
    spark: Any, tmp_path: Path
) -> None:
    """A pin older than a Bronze rename: Iceberg's Spark reader reads the snapshot with the
    table's current column names, so Silver is fed from the renamed column, as on DuckDB (it
    failed with UNRESOLVED_COLUMN; found by the Spark/evolution audit). Budget: ~5 s."""
    settings = load_settings(
        {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": "lake_rename"}
    )
    catalog = LakeCatalog(settings)
    catalog.init()
    old = append(catalog.load_table(TRADES), trades("SPY", T14, 6, 10**9))
    evolve_table(catalog.load_table(TRADES), TRADES, [RenameColumn("exchange", "exch")])
    later = trades("SPY", T14 + 10 * 10**9, 2, 10**9, seq0=50)
    append(catalog.load_table(TRADES), [{**r, "exch": r.pop("exchange")} for r in later])
    attach_catalog(spark, settings)
    with SilverCompactor(catalog) as compactor:
        by_duck = compactor.compact_date(DAY, TRADES, snapshot_id=old)
    duck_rows = SilverReader(settings).read_stock_trades("SPY", DAY)
    by_spark = SparkSilverCompactor(spark, catalog).compact_date(DAY, TRADES, snapshot_id=old)
    assert by_spark["status"] == "success", by_spark
    assert by_spark["rows_written"] == by_duck["rows_written"] == 6
    spark_rows = SilverReader(settings).read_stock_trades("SPY", DAY)
    assert spark_rows.to_dict("records") == duck_rows.to_dict("records")
    assert spark_rows["exchange"].notna().all()


def _five_trades_lake(spark: Any, tmp_path: Path, name: str) -> tuple[Settings, LakeCatalog]:
    """A lake (catalog `name`) with five Bronze trades, attached to the Spark session."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": name})
    catalog = LakeCatalog(settings)
    catalog.init()
    append(catalog.load_table(TRADES), trades("SPY", T14, 5, 10**9))
    attach_catalog(spark, settings)
    return settings, catalog


def test_a_silver_column_added_during_a_spark_run_is_planned_again(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lake table evolve` adds a Silver column between Spark's read and its write: the write
    fails before writing anything (INCOMPATIBLE_DATA_FOR_TABLE) and the run plans again on the
    new schema, instead of failing (found by the Spark/evolution audit). Budget: ~6 s."""
    from iceberg_lake.silver import spark as silver_spark

    settings, catalog = _five_trades_lake(spark, tmp_path, "lake_evolving")
    real, writes = silver_spark.replace_partitions, []

    def evolve_first(*args: Any, **kwargs: Any) -> Any:
        if not writes:
            evolve_table(
                catalog.load_table(SILVER_TRADES), SILVER_TRADES, [AddColumn("venue", "string")]
            )
        writes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(silver_spark, "replace_partitions", evolve_first)
    done = SparkSilverCompactor(spark, catalog).compact_date(DAY, TRADES)
    assert done["status"] == "success" and done["rows_written"] == 5, done
    assert len(writes) == 2
    rows = SilverReader(settings).read_stock_trades("SPY", DAY)
    assert len(rows) == 5 and rows["venue"].isna().all()


def test_an_incompatible_write_without_a_schema_change_fails_at_once(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spark refusing the write (INCOMPATIBLE_DATA_FOR_TABLE) while Silver's schema stayed the
    same is not retried: one attempt, one line, no "schema changed" warning (found by review5).
    Budget: ~4 s."""
    from iceberg_lake.silver import spark as silver_spark

    settings, catalog = _five_trades_lake(spark, tmp_path, "lake_incompatible")
    real, writes = silver_spark.replace_partitions, []

    def without_a_column(df: Any, *args: Any, **kwargs: Any) -> Any:
        writes.append(1)
        return real(df.drop("exchange"), *args, **kwargs)

    monkeypatch.setattr(silver_spark, "replace_partitions", without_a_column)
    with pytest.raises(CompactionError, match="INCOMPATIBLE_DATA_FOR_TABLE") as failed:
        SparkSilverCompactor(spark, catalog).compact_date(DAY, TRADES)
    assert "\n" not in str(failed.value)
    assert writes == [1]
    assert len(catalog.load_table(SILVER_TRADES).snapshots()) == 0


def test_a_duckdb_compaction_landing_during_a_spark_run_is_not_overwritten(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More Bronze rows and a DuckDB compaction of them land between Spark's read and its
    write: Spark's commit replaced Silver's newer rows with its older ones (8 -> 5 rows,
    `success`: spark17). Now the write is validated against Silver's snapshot at planning,
    fails without writing, and the run plans again on the new state. Budget: ~8 s."""
    from iceberg_lake.silver import spark as silver_spark

    settings, catalog = _five_trades_lake(spark, tmp_path, "lake_racing")
    real, writes = silver_spark.replace_partitions, []

    def compacted_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not writes:
            append(catalog.load_table(TRADES), trades("SPY", T14 + 10**8, 3, 10**9, seq0=100))
            with SilverCompactor(catalog) as compactor:
                assert compactor.compact_date(DAY, "stocks.trades")["rows_written"] == 8
        writes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(silver_spark, "replace_partitions", compacted_meanwhile)
    done = SparkSilverCompactor(spark, catalog).compact_date(DAY, TRADES)
    assert len(writes) == 2, "the conflicting write was not planned again"
    assert done["status"] == "success" and done["rows_written"] == 8, done
    assert len(SilverReader(settings).read_stock_trades("SPY", DAY)) == 8


def test_partitions_purged_from_bronze_are_emptied_by_spark_as_by_duckdb(
    spark: Any, tmp_path: Path
) -> None:
    """A feed purged from Bronze by Spark `DELETE`s (merge-on-read: position deletes leave its
    data file), compacted at an older pin and then at the current snapshot, then the whole day
    deleted: the Spark engine kept the purged rows in Silver and named the emptied partition as
    replaced (spark17, review17b). Now they are emptied, as the DuckDB engine empties them.
    Budget: ~20 s."""
    settings, catalog = _five_trades_lake(spark, tmp_path, "lake_purged")
    append(catalog.load_table(TRADES), trades("QQQ", T14, 2, 10**9, seq0=50))
    with SilverCompactor(catalog) as compactor:
        assert compactor.compact_date(DAY, "stocks.trades")["partitions"] == 2
    bronze = f"{settings.catalog_name}.{TRADES}"
    spark.sql(f"ALTER TABLE {bronze} SET TBLPROPERTIES ('write.delete.mode'='merge-on-read')")
    for seq in (50, 51):  # row by row: position deletes, the data file stays
        spark.sql(f"DELETE FROM {bronze} WHERE symbol = 'QQQ' AND seq = {seq}")
    files = catalog.load_table(TRADES).scan(row_filter="symbol == 'QQQ'").plan_files()
    assert any(task.delete_files for task in files), "expected position deletes"
    pin = catalog.load_table(TRADES).current_snapshot().snapshot_id
    append(catalog.load_table(TRADES), trades("SPY", T14 + 10**8, 1, 10**9, seq0=90))

    def silver_symbols() -> list[str]:
        rows = catalog.load_table(SILVER_TRADES).scan().to_arrow()
        return sorted(rows.column("symbol").to_pylist())

    compactor = SparkSilverCompactor(spark, catalog)
    done = compactor.compact_date(DAY, TRADES, snapshot_id=pin)  # an older pin
    assert done["status"] == "success" and done["rows_written"] == 5, done
    assert [label[0] for label in done["replaced_partitions"]] == ["QQQ", "SPY"]
    assert silver_symbols() == ["SPY"] * 5

    done = compactor.compact_date(DAY, TRADES)  # the current snapshot
    assert done["status"] == "success" and done["rows_written"] == 6, done
    assert silver_symbols() == ["SPY"] * 6

    spark.sql(f"DELETE FROM {bronze} WHERE symbol = 'SPY'")
    done = compactor.compact_date(DAY, TRADES)
    assert done["status"] == "success" and done["rows_read"] == 0, done
    assert silver_symbols() == []


def test_negative_zero_is_stored_alike_by_both_engines(spark: Any, tmp_path: Path) -> None:
    """A `-0.0` in a float column outside the dedup key: DuckDB's sort stored `0.0`, Spark
    `-0.0`, so the engines' Silver differed bit-wise (spark17). Both store `0.0` now."""
    import math

    settings = load_settings(
        {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_CATALOG_NAME": "lake_zero"}
    )
    catalog = LakeCatalog(settings)
    catalog.init()
    rows = [
        {
            "ts_event_ns": T14 + i,
            "ts_recv_ns": T14 + i + 5,
            "source": "t",
            "symbol": "ESZ5",
            "seq": i,
            "bid_px_1": -0.0 if i == 0 else 1.5,
        }
        for i in range(3)
    ]
    append(catalog.load_table("bronze.futures_mbp10"), rows)
    attach_catalog(spark, settings)
    signs = {}
    for engine in ("duckdb", "spark"):
        if engine == "duckdb":
            with SilverCompactor(catalog) as compactor:
                compactor.compact_date(DAY, "futures.mbp10")
        else:
            SparkSilverCompactor(spark, catalog).compact_date(DAY, "futures.mbp10")
        got = catalog.load_table("silver.futures_mbp10").scan().to_arrow().sort_by("seq")
        signs[engine] = [math.copysign(1.0, v) for v in got.column("bid_px_1").to_pylist()]
    assert signs == {"duckdb": [1.0, 1.0, 1.0], "spark": [1.0, 1.0, 1.0]}


def test_guard_pyspark_keeps_the_jvm_launcher_where_stop_spark_looks(spark: Any) -> None:
    """`stop_spark` ends the JVM through `SparkContext._gateway.proc` (pyspark internals)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway  # noqa: SLF001 - the internal this guard is about
    assert gateway is not None and gateway.proc.poll() is None
    assert spark.sparkContext._gateway is gateway  # noqa: SLF001


def test_guard_iceberg_write_option_that_keeps_silver_order(spark: Any) -> None:
    """`replace_partitions` turns off Iceberg's re-sort with this write option (Iceberg 1.10)."""
    from iceberg_lake.engine.spark import USE_TABLE_DISTRIBUTION_AND_ORDERING

    options = spark._jvm.org.apache.iceberg.spark.SparkWriteOptions  # noqa: SLF001
    assert options.USE_TABLE_DISTRIBUTION_AND_ORDERING == USE_TABLE_DISTRIBUTION_AND_ORDERING


def _one_overwrite(silver: Any, before: set[int], snapshot_id: int, pinned: int) -> dict[str, str]:
    """Silver gained exactly one snapshot since `before`: `snapshot_id`, an overwrite recording
    `pinned` as its source. Returns its summary properties."""
    added = [s for s in silver.snapshots() if s.snapshot_id not in before]
    assert len(added) == 1 and added[0].snapshot_id == snapshot_id
    assert added[0].summary is not None and added[0].summary.operation.value == "overwrite"
    props = added[0].summary.additional_properties
    assert props["lake.source-snapshot-id"] == str(pinned)
    return props


def test_a_postgresql_lake_in_a_schema_of_its_own_is_the_lake_spark_reads(
    spark: Any, pg_proxy: TcpToUnixProxy, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """spark13: two lakes in one PostgreSQL database, one in its own schema
    (`?options=-csearch_path%3Ddesk13`); the Spark settings kept only `sslmode` of the URI, so
    Spark, configured from that lake's own settings, read the other lake's table (1,669 rows
    for 3,338), with no error: its inserts and expiries would have hit the other lake too."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_server.uri)
    with engine.begin() as con:
        con.execute(sqlalchemy.text("CREATE SCHEMA IF NOT EXISTS desk13"))
    engine.dispose()
    base = f"postgresql://postgres@127.0.0.1:{pg_proxy.port}/postgres"
    counts = {}
    for name, uri, n in (
        ("public", base, 3),
        ("desk13", base + "?options=-csearch_path%3Ddesk13", 7),
    ):
        env = {"LAKE_DATA_DIR": str(tmp_path / name), "LAKE_CATALOG_URI": uri}
        settings = load_settings(env | {"LAKE_CATALOG_NAME": "lake_schemas"})
        catalog = LakeCatalog(settings)
        catalog.init()
        append(catalog.load_table(TRADES), trades("SPY", T14, n, 10**9))
        counts[name] = settings
    name = attach_catalog(spark, counts["desk13"])
    assert _spark_count(spark, name, TRADES) == 7  # not the public schema's 3
    assert jdbc_catalog(counts["desk13"]).url.endswith("?options=-csearch_path%3Ddesk13")
