"""`lake demo` end to end: the installed `lake` in a subprocess, counts checked through DuckDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.demo import DEMO_TAG, DemoOptions
from iceberg_lake.engine import duck
from iceberg_lake.exceptions import LakeError
from iceberg_lake.simulate import SUBJECT_TABLES, build_messages

pytestmark = pytest.mark.integration


def _lake_executable() -> str:
    found = shutil.which("lake", path=str(Path(sys.executable).parent)) or shutil.which("lake")
    assert found, "the `lake` console script is not installed"
    return found


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            out.append(cmdline)
    return out


def test_lake_demo_runs_the_pipeline_and_stores_every_event(tmp_path: Path) -> None:
    data_dir = tmp_path / "lk"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(TMPDIR=str(scratch), COLUMNS="120")
    began = time.monotonic()
    proc = subprocess.run(
        [_lake_executable(), "demo", "--data-dir", str(data_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    seconds = time.monotonic() - began
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for text in ("events simulated", "duplicates removed by Silver", "replay:", "LAKE_CONFIG="):
        assert text in proc.stdout, text
    # < 60 s on an idle machine (about 14 s here); generous for a loaded CI box.
    assert seconds < 120, f"lake demo took {seconds:.0f} s"

    # The server is gone and its scratch store removed; the data directory stays.
    assert not _processes_mentioning(str(scratch))
    assert list(scratch.iterdir()) == []
    assert (data_dir / "catalog.db").is_file()

    # Every stored count, through DuckDB on the tables' metadata, equals what was simulated.
    _, stats = build_messages(DemoOptions().simulation())
    settings = load_settings({}, config_file=data_dir / "lake.toml")
    catalog = LakeCatalog(settings)
    con = duck.connect()
    try:

        def count(identifier: str, where: str = "true") -> int:
            location = catalog.load_table(identifier).metadata_location
            sql = f"SELECT count(*) FROM iceberg_scan('{location}') WHERE {where}"
            return con.execute(sql).fetchone()[0]

        for table in SUBJECT_TABLES.values():
            assert count(table) == stats.bronze_rows(table), table
            if table.startswith("bronze."):
                silver = table.replace("bronze.", "silver.")
                assert count(silver) == stats.rows[table], silver
        assert stats.total_bad > 0 and stats.duplicate_messages > 0
        assert count("bronze.dead_letters") == stats.total_bad
        # Silver holds no duplicate and no malformed row.
        location = catalog.load_table("silver.stocks_trades").metadata_location
        distinct = con.execute(
            f"SELECT count(DISTINCT (source, ts_event_ns, symbol, price, size, exchange, seq)) "
            f"FROM iceberg_scan('{location}')"
        ).fetchone()[0]
        assert distinct == stats.rows["bronze.stocks_trades"]
        assert count("silver.stocks_quotes", "bid_px <= 0 OR ask_px <= bid_px") == 0
    finally:
        con.close()
    # The tag the demo printed pins every table.
    for identifier in catalog.existing_tables():
        assert DEMO_TAG in catalog.load_table(identifier).metadata.refs, identifier


def test_lake_demo_refuses_a_used_data_dir(tmp_path: Path) -> None:
    from iceberg_lake.demo import run_demo

    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    with pytest.raises(LakeError, match="not empty"):
        run_demo(DemoOptions(data_dir=used))


def test_lake_demo_refuses_bad_options_before_making_its_data_dir(tmp_path: Path) -> None:
    """`lake demo --duration 0` made the lake, then refused: a rerun into the same
    `--data-dir` was refused as not new (newuser5)."""
    from iceberg_lake.demo import run_demo

    target = tmp_path / "demo"
    with pytest.raises(LakeError, match="duration and rate must be > 0"):
        run_demo(DemoOptions(data_dir=target, duration_s=0))
    assert not target.exists()
