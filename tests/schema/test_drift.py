"""`lake migrate check`: catalog/ compared with the live tables."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.schema.drift import ERROR, WARNING, find_drift
from iceberg_lake.schema.evolve import (
    AddColumn,
    AddPartitionField,
    RenameColumn,
    WidenColumn,
    evolve_table,
)
from iceberg_lake.tables import registry


def _check(tmp_path: Path, *args: str):
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake")}
    return CliRunner().invoke(app, ["migrate", "check", *args], env=env)


def test_drift_is_detected_and_check_exits_1(tmp_path: Path) -> None:
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")}))
    lake.init()

    fresh = find_drift(lake)
    assert [d for d in fresh if d.severity == ERROR] == []
    assert {(d.kind, d.severity) for d in fresh} <= {("pending", WARNING)}
    ok = _check(tmp_path)
    assert ok.exit_code == 0, ok.output
    assert "no drift" in ok.output

    quotes = "bronze.stocks_quotes"
    evolve_table(
        lake.load_table(quotes),
        quotes,
        [
            AddColumn("venue", "string"),
            WidenColumn("bid_sz", "long"),
            RenameColumn("seq", "sequence"),
            AddPartitionField("source", "identity"),
        ],
    )
    lake.catalog.drop_table("gold.levels_signals")
    lake.catalog.create_table("silver.scratch", schema=registry().get(quotes).iceberg_schema())

    drift = {(d.table, d.kind, d.detail) for d in find_drift(lake)}
    assert (quotes, "extra-column", "venue string is live, undeclared") in drift
    assert (quotes, "type", "bid_sz is long live, declared int") in drift
    assert (quotes, "missing-column", "seq long is declared, not live") in drift
    assert (quotes, "extra-column", "sequence long is live, undeclared") in drift
    assert (
        quotes,
        "partition",
        "live [identity(symbol), hour(ts_event), identity(source)],"
        " declared [identity(symbol), hour(ts_event)]",
    ) in drift
    assert (quotes, "schema-version", "live 2, declared 1") in drift
    assert ("gold.levels_signals", "missing-table", "declared, not in the catalog") in drift
    assert ("silver.scratch", "undeclared-table", "in the catalog, not in catalog/") in drift

    res = _check(tmp_path, "-o", "json")
    assert res.exit_code == 1
    rows = json.loads(res.output)
    errors = {(r["table"], r["kind"]) for r in rows if r["severity"] == ERROR}
    assert (quotes, "type") in errors and ("gold.levels_signals", "missing-table") in errors
    assert ("silver.scratch", "undeclared-table") not in errors  # a warning only
    text = _check(tmp_path)
    assert (
        text.exit_code == 1 and "difference(s) between catalog/ and the live tables" in text.output
    )
