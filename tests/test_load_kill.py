"""`lake load --jobs 2` killed with SIGKILL half-way through two files, then run again: every
row of both files stored exactly once, on the local warehouse and on S3 + PostgreSQL (budget:
20 s for the three tests, measured 16.5 s at load average 3 and ~18 CPU-seconds, most of it the
start-up of the processes each load runs; plus the shared servers' start-up).

The whole process group is killed (the command and its two worker processes), as a crash of the
job would, or the command alone (`kill -9 PID`): its workers must end with it. Rows are counted
outside the load code: DuckDB's `iceberg_scan` locally, a pyiceberg scan to Arrow on S3.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.load import LoadOptions, load_files
from iceberg_lake.load.commit import ledger_key, parse_ledger
from tests.load_data import TRADES_MAPPING, trades_table, write_parquet
from tests.support.wait import wait_until
from tests.test_load import make_lake, rows

pytestmark = pytest.mark.integration

TABLE = "bronze.futures_trades"


def _files(tmp_path: Path, n: int) -> list[Path]:
    """Two Parquet files of `n` trades each; file b's trade ids follow file a's."""
    a = trades_table(n)
    b = trades_table(n, symbols=("NQH6",))
    b = b.set_column(4, "trade_id", pa.array(range(n, 2 * n), pa.int64()))
    return [
        write_parquet(tmp_path / "a.parquet", a, row_group_size=2_000),
        write_parquet(tmp_path / "b.parquet", b, row_group_size=2_000),
    ]


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are not zombies (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kill_half_way_then_rerun(
    tmp_path: Path,
    env: dict[str, str],
    lake: LakeCatalog,
    n: int,
    step: int,
    count: Callable[[], tuple[int, int]],
    whole_group: bool = True,
) -> None:
    """Start `lake load a b --jobs 2`, SIGKILL its process group (or the command alone) once both
    files have a commit in, wait until no process of it is left, check the table holds exactly
    the committed rows, load both files again to the end."""
    files = _files(tmp_path, n)
    mapping = tmp_path / "m.toml"
    mapping.write_text(TRADES_MAPPING)
    cmd = [sys.executable, "-c", "from iceberg_lake.cli import main; main()", "load"]
    cmd += [*map(str, files), "--mapping", str(mapping), "--jobs", "2"]
    cmd += ["--commit-rows", str(step), "-o", "json"]
    keys = [ledger_key(_sha(f)) for f in files]

    def ledgers() -> list[tuple[int, bool]]:
        props = lake.load_table(TABLE).properties
        return [parse_ledger(props.get(k)) for k in keys]

    log = (tmp_path / "load.log").open("wb")
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own process group, with its workers
    )
    try:
        wait_until(
            lambda: all(committed > 0 for committed, _ in ledgers()),
            60,
            "a committed chunk of both files",
            interval=0.02,
            alive=proc,
        )
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGKILL)  # the command only: its workers must stop too
        proc.wait(timeout=30)
        wait_until(
            lambda: not _alive_in_group(proc.pid), 30, "the worker processes to end", interval=0.05
        )
    finally:
        if _alive_in_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    state = ledgers()
    assert not all(done for _, done in state), state  # killed before the end
    assert all(committed % step == 0 for committed, _ in state), state
    committed = sum(c for c, _ in state)
    assert count() == (committed, committed)  # the committed chunks, nothing more

    # The same load again (in this process, the same two worker processes: saves a start-up).
    settings = load_settings({k: v for k, v in env.items() if k.startswith("LAKE_")})
    results = load_files(
        settings, files, LoadOptions(mapping=str(mapping), commit_rows=step), jobs=2
    )
    assert sum(r.rows_stored for r in results) == 2 * n - committed
    assert {r.status for r in results} <= {"resumed", "already-loaded"}
    assert sum(r.rows_skipped for r in results) == committed
    assert count() == (2 * n, 2 * n)
    assert all(done for _, done in ledgers())


def test_sigkill_jobs_2_half_way_then_rerun_stores_every_row_once(tmp_path: Path, duck) -> None:
    lake = make_lake(tmp_path / "data")
    env = {**os.environ, "LAKE_DATA_DIR": str(tmp_path / "data")}

    def count() -> tuple[int, int]:
        found = rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t")
        return found[0] if found else (0, 0)

    _kill_half_way_then_rerun(tmp_path, env, lake, n=24_000, step=3_000, count=count)


def test_sigkill_of_the_command_alone_stops_its_workers_too(tmp_path: Path, duck) -> None:
    """`kill -9` of the `lake load` process only: its worker processes end with it (they would
    otherwise load on and then wait for work forever); the re-run stores every row once."""
    lake = make_lake(tmp_path / "data")
    env = {**os.environ, "LAKE_DATA_DIR": str(tmp_path / "data")}

    def count() -> tuple[int, int]:
        found = rows(duck, lake, TABLE, "SELECT count(*), count(DISTINCT seq) FROM t")
        return found[0] if found else (0, 0)

    _kill_half_way_then_rerun(
        tmp_path, env, lake, n=24_000, step=3_000, count=count, whole_group=False
    )


def test_sigkill_jobs_2_on_s3_then_rerun_stores_every_row_once(
    tmp_path: Path, s3_server, postgres_server
) -> None:
    overrides = {
        "LAKE_DATA_DIR": str(tmp_path / "data"),
        "LAKE_CATALOG_URI": postgres_server.uri,
        "LAKE_CATALOG_NAME": f"c{uuid.uuid4().hex[:8]}",
        **s3_server.lake_env(f"s3://kill-{uuid.uuid4().hex[:8]}/warehouse"),
    }
    lake = LakeCatalog(load_settings(overrides))
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    for table in (TABLE, "bronze.dead_letters"):
        lake.create_table(lake.definition(table))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")} | overrides

    def count() -> tuple[int, int]:
        seq = lake.load_table(TABLE).scan(selected_fields=("seq",)).to_arrow().column("seq")
        return len(seq), len(set(seq.to_pylist()))

    _kill_half_way_then_rerun(tmp_path, env, lake, n=12_000, step=2_000, count=count)
