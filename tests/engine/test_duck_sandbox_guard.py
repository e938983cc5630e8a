"""Guard tests for `iceberg_lake.engine.duck.sandbox` and `check_read_only` (issue 11).

They fail loudly when a DuckDB upgrade changes what the query sandbox relies on:
`allowed_directories` + `enable_external_access = false` confine file access, the lock holds,
and statement types come from `extract_statements`. Budget: about 2 s.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from iceberg_lake.engine import duck


def test_sandbox_confines_files_and_locks_the_configuration(tmp_path: Path) -> None:
    allowed = tmp_path / "warehouse"
    allowed.mkdir()
    (allowed / "t.csv").write_text("a\n1\n2\n")
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    con = duck.connect(extensions=("avro", "iceberg"))
    try:
        duck.sandbox(con, [str(allowed)])
        assert con.execute(f"SELECT count(*) FROM read_csv('{allowed}/t.csv')").fetchone() == (2,)
        for sql in (
            f"SELECT * FROM read_csv('{outside}')",
            f"COPY (SELECT 1) TO '{tmp_path}/copied.csv'",
            f"ATTACH '{tmp_path}/x.db'",
            f"SELECT * FROM glob('{tmp_path}/*')",
        ):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
        # Why `check_read_only` exists: writing *into* an allowed directory still works here.
        con.execute(f"COPY (SELECT 1 AS a) TO '{allowed}/written.csv'")
        assert (allowed / "written.csv").exists()
    finally:
        con.close()


def test_check_read_only_allows_reads_and_refuses_writes() -> None:
    con = duckdb.connect()
    try:
        for sql in ("SELECT 1", "EXPLAIN SELECT 1", "SHOW TABLES", "FROM range(3)", "VALUES (1)"):
            duck.check_read_only(con, sql)
        for sql in (
            "COPY (SELECT 1) TO 'x.csv'",
            "ATTACH 'x.db'",
            "CREATE TABLE t AS SELECT 1",
            "SET threads = 1",
            "EXPORT DATABASE 'x'",
            "SELECT 1; COPY (SELECT 1) TO 'x.csv'",
        ):
            with pytest.raises(duck.SandboxError, match="not allowed in sandbox mode"):
                duck.check_read_only(con, sql)
    finally:
        con.close()
