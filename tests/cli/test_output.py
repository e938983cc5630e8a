"""The CLI's one output layer: the format chosen at the root, read-only commands, one-line errors.

Budget: ~8 s (SQLite lakes, no servers; bars/asof start DuckDB once).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from timetravel_data import T14, append, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    return {"LAKE_DATA_DIR": str(tmp_path / "data")}


def test_the_root_output_applies_to_every_command(tmp_path: Path, lake: LakeCatalog) -> None:
    env = _env(tmp_path)
    as_json = runner.invoke(app, ["--output", "json", "tables"], env=env)
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert {"table", "rows", "data_files", "bytes", "snapshots", "last_commit"} <= set(rows[0])

    as_csv = runner.invoke(app, ["-o", "csv", "tables"], env=env)
    assert as_csv.exit_code == 0, as_csv.output
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["table"] for r in parsed] == [r["table"] for r in rows]

    # Any command, and a command's own -o overrides the root's choice.
    described = runner.invoke(app, ["-o", "json", "describe", "bronze.stocks_trades"], env=env)
    assert json.loads(described.stdout)[0]["schema_name"] == "stocks.trades"
    override = runner.invoke(app, ["--output", "json", "tables", "-o", "csv"], env=env)
    assert override.stdout.startswith("table,rows,")

    status = runner.invoke(app, ["--output", "json", "status", "--nats-timeout", "0.2"], env=env)
    assert status.exit_code == 0, status.output
    assert {t["table"] for t in json.loads(status.stdout)["tables"]} == set(lake.existing_tables())

    # The backtest commands: the root's format, their own -o over it, --out the file flag.
    append(lake.load_table("bronze.stocks_trades"), trades("SPY", T14, 3, 60 * 10**9))
    window = ["--start", "2025-12-16"]
    bars = runner.invoke(app, ["-o", "json", "bars", "bronze.stocks_trades", *window], env=env)
    assert bars.exit_code == 0, bars.output
    assert [b["trades"] for b in json.loads(bars.stdout)] == [1, 1, 1]
    quotes = ["asof", "bronze.stocks_trades", "bronze.stocks_quotes", *window]
    joined = runner.invoke(app, ["-o", "csv", *quotes], env=env)
    assert joined.exit_code == 0, joined.output
    assert len(list(csv.DictReader(io.StringIO(joined.stdout)))) == 3
    own = runner.invoke(app, ["-o", "json", *quotes, "-o", "csv"], env=env)
    assert own.exit_code == 0 and not own.stdout.startswith("["), own.output
    out = tmp_path / "bars.json"
    written = runner.invoke(
        app, ["-o", "json", "bars", "bronze.stocks_trades", *window, "--out", str(out)], env=env
    )
    assert written.exit_code == 0, written.output
    assert len(json.loads(out.read_text())) == 3

    # The engine settings: an object for json, key,value rows for csv.
    spark = runner.invoke(app, ["-o", "json", "engines", "spark"], env=env)
    assert spark.exit_code == 0, spark.output
    assert json.loads(spark.stdout)["conf"]["spark.sql.catalog.lake.type"] == "jdbc"
    spark_csv = runner.invoke(app, ["-o", "csv", "engines", "spark"], env=env)
    rows = {r["key"]: r["value"] for r in csv.DictReader(io.StringIO(spark_csv.stdout))}
    assert rows["spark.sql.catalog.lake.type"] == "jdbc" and "spark.jars.packages" in rows
    trino = runner.invoke(app, ["-o", "json", "engines", "trino"], env=env)
    assert trino.exit_code == 0, trino.output
    assert json.loads(trino.stdout)["connector.name"] == "iceberg"
    trino_csv = runner.invoke(app, ["engines", "trino", "-o", "csv"], env=env)
    assert trino_csv.stdout.startswith("key,value\n"), trino_csv.output


@pytest.mark.parametrize(
    "args",
    [
        ["tables"],
        ["describe", "bronze.stocks_trades"],
        ["status"],
        ["query", "SELECT 1"],
        ["snapshot", "list"],
        ["check", "--strict"],
        ["dead-letters", "list"],
        ["bars", "bronze.stocks_trades", "--start", "2025-12-16"],
        ["asof", "bronze.stocks_trades", "bronze.stocks_quotes", "--start", "2025-12-16"],
        ["replay", "--tables", "bronze.stocks_trades"],
        ["migrate", "status"],
        ["migrate", "check"],
        # Commands that change an existing lake's tables never make one either.
        ["maintain", "compact-files"],
        ["maintain", "expire-snapshots", "--dry-run"],
        ["maintain", "rewrite-manifests"],
        ["maintain", "remove-orphans"],
        ["snapshot", "tag", "bt-1"],
        ["snapshot", "untag", "bt-1"],
        ["dead-letters", "replay", "--dry-run"],
        ["table", "evolve", "bronze.stocks_trades", "--add-column", "venue:string"],
    ],
    ids=" ".join,
)
def test_read_only_commands_create_nothing(tmp_path: Path, args: list[str]) -> None:
    """No lake here: a command that reads (or maintains) one fails in one line and creates
    nothing (a `check --strict` that made an empty lake would pass with nothing checked)."""
    res = runner.invoke(app, args)  # cwd is tmp_path: the default ./lake-data
    assert res.exit_code == 1, res.output
    assert "no lake at" in res.output and "lake init" in res.output
    assert res.output.strip().count("\n") == 0, res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [["check", "--strict"], ["tables"], ["maintain", "expire-snapshots", "--dry-run"]],
    ids=" ".join,
)
def test_a_catalog_name_without_a_lake_fails_like_no_lake(
    tmp_path: Path, lake: LakeCatalog, args: list[str]
) -> None:
    """The database exists but holds no lake under this LAKE_CATALOG_NAME (a typo, or a fresh
    PostgreSQL database): `check --strict` passed with "0 issue(s) in 0 table(s)" (newuser5)."""
    env = {**_env(tmp_path), "LAKE_CATALOG_NAME": "lake_typo"}
    res = runner.invoke(app, args, env=env)
    assert res.exit_code == 1, res.output
    assert res.output.startswith("error: no lake in catalog 'lake_typo' at sqlite:///"), res.output
    assert res.output.strip().count("\n") == 0, res.output


@pytest.mark.integration
def test_an_empty_postgres_catalog_fails_check_strict(tmp_path: Path, postgres_server) -> None:
    env = {"LAKE_CATALOG_URI": postgres_server.uri, "LAKE_CATALOG_NAME": "never_initialised"}
    res = runner.invoke(app, ["check", "--strict"], env={**_env(tmp_path), **env})
    assert res.exit_code == 1, res.output
    assert "no lake in catalog 'never_initialised'" in res.output and "lake init" in res.output


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["maintain", "expire-snapshots", "--dry-run"], "nothing to do in"),
        (["dead-letters", "list"], "no dead letters"),
        (["dead-letters", "replay"], "re-driven: 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_csv_stdout_holds_no_lines_for_people(
    tmp_path: Path, lake: LakeCatalog, args: list[str], line: str
) -> None:
    """`-o csv` is for scripts: a sentence among (or instead of) the CSV broke them
    (newuser5). The sentence goes to stderr; stdout has the CSV or nothing."""
    res = runner.invoke(app, [*args, "-o", "csv"], env=_env(tmp_path))
    assert res.exit_code == 0, res.output
    assert line not in res.stdout and line in res.stderr


def test_replay_refuses_a_root_output_it_would_ignore(tmp_path: Path, lake: LakeCatalog) -> None:
    res = runner.invoke(app, ["-o", "json", "replay"], env=_env(tmp_path))
    assert res.exit_code == 1, res.output
    assert "replay writes events, not a result table" in res.output and "--format" in res.output


def test_one_flag_vocabulary(tmp_path: Path) -> None:
    for command in (["serve"], ["replay"], ["snapshot", "tag", "x"]):
        res = runner.invoke(app, [*command, "-t", "bronze.stocks_trades"], env=_env(tmp_path))
        assert res.exit_code == 1 and "No such option: -t" in res.output, command
    res = runner.invoke(app, ["query", "--help"])
    assert "--out" in res.output
    # `-f` is `--format` wherever it exists, never a file.
    res = runner.invoke(app, ["query", "-f", "x.csv", "SELECT 1"], env=_env(tmp_path))
    assert res.exit_code == 1 and "No such option: -f" in res.output
    for command in (["replay"], ["load"], ["engines", "spark"]):
        res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
        lines = [line for line in res.output.splitlines() if " -f " in line]
        assert len(lines) == 1 and "--format" in lines[0], (command, res.output)
