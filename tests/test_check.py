"""`lake check`: exact counts of planted defects over a window. Budget: about 15 s."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from table_rows import BASE_NS, make_rows
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import LakeError, UnknownTableError
from iceberg_lake.ops.check import check_tables
from iceberg_lake.timetravel.query import Lake

runner = CliRunner()
MS = 1_000_000
#: Rows at or after this are outside the window the test checks (`--until`).
LATE_NS = BASE_NS + 1_000 * MS


def _append(table: Table, rows: list[dict[str, Any]]) -> None:
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    table.append(pa.Table.from_pylist(rows, schema=schema))


def _micros(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1_000)


def _quotes(table: Table) -> list[dict[str, Any]]:
    """Source `a` seq 1..20 and source `b` seq 1..5, with planted defects."""
    rows = []
    for source, last in (("a", 20), ("b", 5)):
        base = make_rows(table, 0, last).to_pylist()
        for k, row in enumerate(base, start=1):
            row.update(source=source, seq=k, bid_px=100.0, ask_px=100.5, bid_sz=1, ask_sz=1)
            row["ts_event_ns"] += k * MS if source == "b" else 0
            row["ts_event"] = _micros(row["ts_event_ns"])  # as the writers derive it
            row["ts_recv_ns"] = row["ts_event_ns"] + 5
            rows.append(row)
    a = rows[:20]
    # seq gaps: a misses 15, 16 and 18 (3 numbers), b misses 3 (1 number) -> 4
    rows = [r for r in rows if not (r["source"] == "a" and r["seq"] in (15, 16, 18))]
    rows = [r for r in rows if not (r["source"] == "b" and r["seq"] == 3)]
    # received before the event: 2 rows
    a[0]["ts_recv_ns"] = a[0]["ts_event_ns"] - 1
    a[1]["ts_recv_ns"] = a[1]["ts_event_ns"] - 1_000
    # crossed: 3 rows; locked (equal) and a missing side (0) are not crossed
    for r in a[2:5]:
        r["bid_px"], r["ask_px"] = 101.0, 100.0
    a[6]["bid_px"] = a[6]["ask_px"] = 100.0
    a[7]["bid_px"], a[7]["ask_px"] = 101.0, 0.0
    # out of range: a negative size, a NaN price, an exchange code beyond the declared int16 -> 3
    a[8]["bid_sz"] = -1
    a[9]["ask_px"] = math.nan
    a[13]["bid_exch"] = 40_000
    # ts_event not ts_event_ns (an engine's write; spark13): 2 rows, a day and a microsecond off
    a[18]["ts_event"] = _micros(a[18]["ts_event_ns"] + 86_400 * 10**9)
    a[16]["ts_event"] = _micros(a[16]["ts_event_ns"] + 1_000)
    # duplicates: a[10] stored 3 times (2 extra), a[12] again with another receive time (1 extra)
    rows += [dict(a[10]), dict(a[10]), dict(a[12], ts_recv_ns=a[12]["ts_recv_ns"] + 7)]
    return rows


def _futures(table: Table) -> list[dict[str, Any]]:
    rows = make_rows(table, 0, 10, symbol="ES").to_pylist()
    for k, row in enumerate(rows, start=1):
        row.update(source="cme", seq=k, aggressor=1, price=5000.0, size=1)
    rows[0]["aggressor"] = 300  # out of range
    rows[1]["price"] = 0.0  # out of range
    rows[2].update(aggressor=-5, size=-2)  # one row, two bad columns
    late = make_rows(table, 2_000, 3, symbol="ES").to_pylist()
    for k, row in enumerate(late, start=100):  # outside the window: gap 10 -> 100 not seen
        row.update(source="cme", seq=k, aggressor=7, price=-1.0, size=1)
        row["ts_recv_ns"] = row["ts_event_ns"] - 1
    return rows + late


def _mbp10(table: Table) -> list[dict[str, Any]]:
    rows = make_rows(table, 0, 4, symbol="ES").to_pylist()
    for k, row in enumerate(rows, start=1):
        row.update(source="cme", seq=k)
        for i in range(1, 11):
            row[f"bid_px_{i}"], row[f"ask_px_{i}"] = 99.0 - i, 101.0 + i
    rows[3]["bid_px_1"] = 200.0  # crossed at the top of the book
    rows[2]["bid_px_2"] = 500.0  # a deeper level crossing is not a crossed book
    return rows


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(path)}))
    catalog.init()
    for ident, build in (
        ("bronze.stocks_quotes", _quotes),
        ("bronze.futures_trades", _futures),
        ("bronze.futures_mbp10", _mbp10),
    ):
        table = catalog.load_table(ident)
        _append(table, build(table))
    return path


def test_check_counts_planted_defects_exactly(lake_dir: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(lake_dir)})
    with Lake(settings, sandbox=True) as lake:
        report = check_tables(lake, until_ns=LATE_NS)
        q = "bronze.stocks_quotes"
        assert report.count(q, "seq_gap") == 4
        assert report.count(q, "recv_before_event") == 2
        assert report.count(q, "ts_event_mismatch") == 2
        assert report.count(q, "crossed_book") == 3
        assert report.count(q, "out_of_range") == 3
        assert report.count(q, "duplicates") == 3
        f = "bronze.futures_trades"
        assert report.count(f, "out_of_range") == 3
        assert report.count(f, "seq_gap") == 0 and report.count(f, "recv_before_event") == 0
        assert report.count("bronze.futures_mbp10", "crossed_book") == 1
        assert report.issues == 4 + 2 + 2 + 3 + 3 + 3 + 3 + 1
        detail = {(r.table, r.check): r.detail for r in report.rows}
        assert detail[(f, "out_of_range")] == "price: 1, size: 1, aggressor: 2"
        assert detail[(q, "seq_gap")] == "3 gap(s), largest 2, source(s): a, b"
        assert detail[(q, "out_of_range")] == "ask_px: 1, bid_sz: 1, bid_exch: 1"
        assert all(r.count == 0 for r in report.rows if r.table.startswith("silver."))
        assert set(report.snapshots) >= {q, f}

        # the whole table: the late rows add 3 out-of-range, 3 early receipts, a gap of 89
        everything = check_tables(lake, [f])
        assert everything.count(f, "out_of_range") == 6
        assert everything.count(f, "recv_before_event") == 3
        assert everything.count(f, "seq_gap") == 89
        only_late = check_tables(lake, [f], since_ns=LATE_NS)
        assert only_late.count(f, "out_of_range") == 3 and only_late.count(f, "seq_gap") == 0
        assert [r.rows for r in only_late.rows] == [3] * len(only_late.rows)

        with pytest.raises(UnknownTableError):
            check_tables(lake, ["bronze.nope"])
        with pytest.raises(LakeError, match="window is empty"):
            check_tables(lake, [f], since_ns=LATE_NS, until_ns=LATE_NS)


def test_cli_check_json_text_and_strict(lake_dir: Path) -> None:
    env = {"LAKE_DATA_DIR": str(lake_dir), "COLUMNS": "200"}
    out = runner.invoke(
        app,
        ["check", "--tables", "bronze.stocks_quotes,bronze.futures_trades"]
        + ["--until", str(LATE_NS), "-o", "json"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    counts = {(c["table"], c["check"]): c["count"] for c in data["checks"]}
    assert counts[("bronze.stocks_quotes", "duplicates")] == 3
    assert counts[("bronze.futures_trades", "out_of_range")] == 3
    assert {t for t, _ in counts} == {"bronze.stocks_quotes", "bronze.futures_trades"}
    assert data["issues"] == 20 and data["until_ns"] == LATE_NS

    text = runner.invoke(app, ["check", "--table", "bronze.futures_mbp10"], env=env)
    assert text.exit_code == 0, text.output
    assert "bronze.futures_mbp10" in text.stdout
    assert "1 issue(s) in 1 of 1 table(s) checked" in text.stdout
    strict = runner.invoke(app, ["check", "-t", "bronze.futures_mbp10", "--strict"], env=env)
    assert strict.exit_code == 1
    clean = runner.invoke(app, ["check", "-t", "silver.stocks_quotes", "--strict"], env=env)
    assert clean.exit_code == 0, clean.output
    assert "0 issue(s) in 0 of 1 table(s) checked" in clean.stdout
    # CSV is for scripts: stdout is the CSV alone, the line for people goes to stderr.
    as_csv = runner.invoke(app, ["check", "-t", "silver.stocks_quotes", "-o", "csv"], env=env)
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.stdout.splitlines()[0].startswith("table,rows,")
    assert "issue(s)" not in as_csv.stdout and "0 issue(s)" in as_csv.stderr
    bad = runner.invoke(app, ["check", "--since", "yesterday-ish"], env=env)
    assert bad.exit_code != 0 and "Traceback" not in bad.output
