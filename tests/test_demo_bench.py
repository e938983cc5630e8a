"""`scripts/bench.py`: runs every benchmark, tolerates missing/failing ones, one table + JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"

GOOD = """
def run(quick=False):
    n = 10 if quick else 1000
    return [{"benchmark": "ingest", "metric": f"{n} rows", "value": 50.0, "unit": "MB/s",
             "baseline": "raw pyarrow write", "baseline_value": 200.0}]
"""
BROKEN = """
def run(quick=False):
    raise RuntimeError("boom")
"""


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("bench_aggregator", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_found_benchmarks_and_notes_missing_and_failing_ones(bench, tmp_path: Path) -> None:
    (tmp_path / "bench_ingest.py").write_text(GOOD)
    (tmp_path / "bench_silver.py").write_text(BROKEN)
    (tmp_path / "bench_extra.py").write_text(GOOD.replace('"ingest"', '"extra"'))
    assert bench.discover(scripts=tmp_path) == ["ingest", "silver", "replay", "commits", "extra"]

    result = bench.run(quick=True, scripts=tmp_path)

    assert [r["benchmark"] for r in result["rows"]] == ["ingest", "extra"]
    row = result["rows"][0]
    assert row["metric"] == "10 rows"  # quick was passed through
    assert row["ratio"] == pytest.approx(0.25)
    status = {t: info["status"] for t, info in result["topics"].items()}
    assert status == {
        "ingest": "ok",
        "silver": "failed",
        "replay": "missing",
        "commits": "missing",
        "extra": "ok",
    }
    assert any("bench_silver.py failed: RuntimeError: boom" in n for n in result["notes"])
    assert any("bench_replay.py is missing" in n for n in result["notes"])
    assert bench.run(only=["extra"], scripts=tmp_path)["topics"].keys() == {"extra"}


def test_ratio_needs_two_numbers(bench) -> None:
    assert bench.ratio({"value": 3, "baseline_value": 2}) == 1.5
    assert bench.ratio({"value": 3, "baseline_value": 0}) is None
    assert bench.ratio({"value": "n/a", "baseline_value": 2}) is None


def test_command_line_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "nonexistent", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "iceberg_lake benchmarks (quick)" in proc.stdout
    assert "bench_nonexistent.py is missing" in proc.stdout
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["topics"]["nonexistent"]["status"] == "missing"
