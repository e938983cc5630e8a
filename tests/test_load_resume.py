"""`lake load` in a real process: exactly once across SIGKILL and re-run, bounded memory
(budget: ~25 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.commit import FileCommitter, ledger_key, parse_ledger
from tests.load_data import TRADES_MAPPING, trades_table, write_parquet
from tests.test_load import make_lake, rows

pytestmark = pytest.mark.integration

TABLE = "bronze.futures_trades"


def _snapshots(lake: LakeCatalog) -> int:
    return len(lake.load_table(TABLE).metadata.snapshots)


def test_sigkill_half_way_then_rerun_stores_every_row_once(tmp_path: Path, duck) -> None:
    lake = make_lake(tmp_path / "data")
    n, step = 120_000, 5_000
    path = write_parquet(tmp_path / "big.parquet", trades_table(n), row_group_size=10_000)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    env = {**os.environ, "LAKE_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "load", str(path)]
    cmd += ["--mapping", str(mapping), "--commit-rows", str(step), "-o", "json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _snapshots(lake) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no commit within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    table = lake.load_table(TABLE)
    sha = next(k for k in table.properties if k.startswith("lake.load."))[len("lake.load.") :]
    committed, done = parse_ledger(table.properties[ledger_key(sha)])
    assert not done and committed % step == 0 and step * 3 <= committed < n
    assert rows(duck, lake, TABLE, "SELECT count(*) FROM t") == [(committed,)]

    result = load_file(lake, path, LoadOptions(mapping=str(mapping), commit_rows=step))

    assert (result.status, result.rows_skipped, result.rows_stored) == (
        "resumed",
        committed,
        n - committed,
    )
    assert rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t") == [(n, n)]
    assert load_file(lake, path, LoadOptions(mapping=str(mapping))).status == "already-loaded"


def test_crash_between_dead_letters_and_rows_does_not_repeat_dead_letters(
    tmp_path: Path, duck, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = make_lake(tmp_path / "data")
    data = trades_table(3_000)
    px = data.column("px").to_pylist()
    for i in (100, 1_100, 2_100):
        px[i] = -1.0
    data = data.set_column(2, "px", pa.array(px))
    path = write_parquet(tmp_path / "t.parquet", data, row_group_size=1_000)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    options = LoadOptions(mapping=str(mapping), commit_rows=1_000)
    real = FileCommitter.commit_rows
    calls = {"n": 0}

    def crash_on_second(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed after the dead letters of rows 1000..2000 committed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FileCommitter, "commit_rows", crash_on_second)
    with pytest.raises(RuntimeError):
        load_file(lake, path, options)
    monkeypatch.setattr(FileCommitter, "commit_rows", real)

    result = load_file(lake, path, options)

    assert (result.status, result.rows_skipped) == ("resumed", 1_000)
    assert result.dead_lettered == 1  # row 1100's letter was already in; 2100 is new
    dead = rows(duck, lake, "bronze.dead_letters", "SELECT stream_seq FROM t ORDER BY 1")
    assert dead == [(100,), (1_100,), (2_100,)]
    assert rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t") == [
        (2_997, 2_997)
    ]


def test_peak_memory_is_bounded_by_the_commit_size_not_the_file(tmp_path: Path) -> None:
    """A 600k-row file at --commit-rows 100,000 in a process of its own: peak RSS well under 1 GB
    (the 5M-row measurement is in scripts/bench_load.py)."""
    make_lake(tmp_path / "data")
    path = write_parquet(tmp_path / "big.parquet", trades_table(600_000), row_group_size=50_000)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    helper = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'rss_mb': rss, 'out': p.stdout.decode()}))\n"
    )
    load = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "load", str(path)]
    load += ["--mapping", str(mapping), "--commit-rows", "100000", "-o", "json"]
    env = {**os.environ, "LAKE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", helper, *load], env=env, capture_output=True)
    info = json.loads(done.stdout)
    assert info["rc"] == 0
    assert json.loads(info["out"])["results"][0]["rows_stored"] == 600_000
    assert info["rss_mb"] < 700, info["rss_mb"]


def test_two_copies_of_a_file_loading_at_once_store_every_row_once(tmp_path: Path, duck) -> None:
    """Two processes load the same content (two names) into the same table at the same time:
    whichever commits a chunk first stores it, the other skips it or stops; never twice."""
    from iceberg_lake.config import load_settings
    from iceberg_lake.load import load_files

    lake = make_lake(tmp_path / "data")
    data = trades_table(12_000)
    px = data.column("px").to_pylist()
    for i in (10, 6_010):
        px[i] = -1.0
    data = data.set_column(2, "px", pa.array(px))
    a = write_parquet(tmp_path / "a.parquet", data, row_group_size=1_000)
    b = tmp_path / "copy-of-a.parquet"
    b.write_bytes(a.read_bytes())
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")})

    results = load_files(
        settings, [a, b], LoadOptions(mapping=str(mapping), commit_rows=500), jobs=2
    )

    statuses = {"loaded", "resumed", "loading-elsewhere", "already-loaded"}
    assert {r.status for r in results} <= statuses
    assert sum(r.rows_stored for r in results) == 11_998
    assert rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t") == [
        (11_998, 11_998)
    ]
    dead = rows(duck, lake, "bronze.dead_letters", "SELECT stream_seq FROM t ORDER BY 1")
    assert dead == [(10,), (6_010,)]
