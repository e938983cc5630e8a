"""`lake init`, `tables`, `describe`, `--version` through Typer and the real executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from iceberg_lake import __version__
from iceberg_lake.cli.app import app

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    return {"LAKE_DATA_DIR": str(tmp_path / "data")}


def test_init_is_idempotent_and_reports_what_it_created(tmp_path: Path) -> None:
    first = runner.invoke(app, ["init"], env=_env(tmp_path))
    assert first.exit_code == 0, first.output
    assert "created bronze.stocks_trades" in first.output
    assert "created gold.levels_signals" in first.output
    second = runner.invoke(app, ["init"], env=_env(tmp_path))
    assert second.exit_code == 0
    assert "created" not in second.output.replace("nothing to create", "")


def test_tables_lists_every_table_as_json(tmp_path: Path) -> None:
    runner.invoke(app, ["init"], env=_env(tmp_path))
    result = runner.invoke(app, ["tables", "--output", "json"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    rows = {r["table"]: r for r in json.loads(result.output)}
    assert rows["silver.futures_mbp10"]["rows"] == 0
    assert rows["bronze.stocks_trades"]["snapshots"] == 0
    assert len(rows) >= 13


def test_tables_lists_a_declared_table_missing_from_the_catalog(tmp_path: Path) -> None:
    """ops19 #3: a declared table without a catalog row is listed (`missing` in JSON, "not in
    the catalog" for people) with an error line on stderr, not left out."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.config import load_settings

    runner.invoke(app, ["init"], env=_env(tmp_path))
    lake = LakeCatalog(load_settings(_env(tmp_path)))
    lake.catalog.drop_table("bronze.options_trades")  # the row only: its files stay

    result = runner.invoke(app, ["tables", "-o", "json"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    rows = {r["table"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(lake.registry.identifiers)
    assert rows["bronze.options_trades"]["missing"] is True
    # No counts (null, not 0) and why (review19c).
    assert rows["bronze.options_trades"]["rows"] is None
    assert "declared but not in the catalog" in rows["bronze.options_trades"]["error"]
    assert not rows["bronze.stocks_trades"]["missing"]
    as_csv = runner.invoke(app, ["tables", "-o", "csv"], env=_env(tmp_path))
    assert as_csv.exit_code == 0, as_csv.output
    # `lake check` says it did not check it (review19d: skipped without a word, exit 0).
    checked = runner.invoke(app, ["check", "--strict"], env=_env(tmp_path))
    assert checked.exit_code == 1
    assert "bronze.options_trades: declared but not in the catalog" in checked.stderr
    assert "(not checked)" in checked.stderr
    assert "bronze.options_trades: declared but not in the catalog" in result.stderr

    wide = {**_env(tmp_path), "COLUMNS": "200"}
    text = runner.invoke(app, ["tables"], env=wide)
    assert text.exit_code == 0, text.output
    (line,) = [x for x in text.stdout.splitlines() if "bronze.options_trades" in x]
    assert "not in the catalog" in line
    assert "error: bronze.options_trades: declared but not in the catalog" in text.stderr


def test_describe_shows_schema_and_hidden_partitioning(tmp_path: Path) -> None:
    runner.invoke(app, ["init"], env=_env(tmp_path))
    result = runner.invoke(
        app, ["describe", "bronze.options_trades", "-o", "json"], env=_env(tmp_path)
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)[0]
    assert [p["transform"] for p in info["partition_spec"]] == ["identity", "hour"]
    assert info["partition_spec"][0]["source"] == "underlying"
    assert info["schema_name"] == "options.trades"


def test_unknown_table_is_one_line_and_non_zero(tmp_path: Path) -> None:
    runner.invoke(app, ["init"], env=_env(tmp_path))
    result = runner.invoke(app, ["describe", "nosuch.table"], env=_env(tmp_path))
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "nosuch.table" in result.output
    assert "Traceback" not in result.output


def test_bad_config_is_one_line_and_non_zero(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "LAKE_BRONZE_BATCH_SIZE": "0"}
    result = runner.invoke(app, ["tables"], env=env)
    assert result.exit_code == 1
    assert "LAKE_BRONZE_BATCH_SIZE" in result.output
    assert "Traceback" not in result.output


def test_unreachable_catalog_is_one_line(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "LAKE_CATALOG_URI": "postgresql://u:p@127.0.0.1:1/nodb"}
    result = runner.invoke(app, ["tables"], env=env)
    assert result.exit_code == 1
    assert "catalog database unavailable" in result.output
    assert "Traceback" not in result.output


def test_installed_lake_executable_runs(tmp_path: Path) -> None:
    exe = shutil.which("lake", path=os.path.dirname(sys.executable)) or shutil.which("lake")
    assert exe, "the `lake` console script must be installed"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"lake {__version__}"
    env = {**os.environ, **_env(tmp_path)}
    init = subprocess.run([exe, "init"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    bad = subprocess.run(
        [exe, "describe", "bronze.nope"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def test_version_tells_this_release_from_the_first() -> None:
    """`lake --version` must tell an upgraded install from the first release (0.1.0, 378a778);
    the wheel's version is read from the same line (hatch `[tool.hatch.version]`)."""
    assert __version__ == "0.2.0"
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "iceberg_lake/__init__.py"
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == "lake 0.2.0"
