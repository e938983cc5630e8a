"""`engine.duck.connect_lake`: the one DuckDB set-up for the warehouse (budget ~3 s).

A local warehouse gets only the extensions asked for; an object store also httpfs and the S3
secret from the settings (path-style, SSL from the endpoint's scheme).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iceberg_lake.config import load_settings
from iceberg_lake.engine import duck
from iceberg_lake.exceptions import ConfigError


def _loaded(con) -> set[str]:  # noqa: ANN001
    rows = con.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
    return {r[0] for r in rows}


def test_local_warehouse_loads_no_httpfs_and_creates_no_secret(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")})
    assert not duck.uses_object_store(settings)
    con = duck.connect_lake(settings, extensions=("avro", "iceberg"))
    try:
        assert {"avro", "iceberg"} <= _loaded(con) and "httpfs" not in _loaded(con)
        assert con.sql("SELECT count(*) FROM duckdb_secrets()").fetchone() == (0,)
    finally:
        con.close()


def test_object_store_gets_httpfs_and_the_s3_secret(tmp_path: Path) -> None:
    env = {
        "LAKE_DATA_DIR": str(tmp_path / "data"),
        "LAKE_WAREHOUSE": "s3://bucket/warehouse",
        "LAKE_S3_ENDPOINT": "http://127.0.0.1:8333",
        "LAKE_S3_ACCESS_KEY": "AK",
        "LAKE_S3_SECRET_KEY": "SK",
        "LAKE_S3_REGION": "eu-west-1",
    }
    settings = load_settings(env)
    assert duck.uses_object_store(settings)
    con = duck.connect_lake(settings)
    try:
        assert "httpfs" in _loaded(con)
        (name, kind, secret) = con.sql(
            "SELECT name, type, secret_string FROM duckdb_secrets()"
        ).fetchone()
        assert (name, kind) == ("lake_s3", "s3")
        for part in ("endpoint=127.0.0.1:8333", "region=eu-west-1", "url_style=path"):
            assert part in secret
        assert "use_ssl=false" in secret or "use_ssl=0" in secret
        # A stalled store gives up in ~22 s, not DuckDB's 2 minutes (30 s over 4 tries).
        assert con.sql("SELECT current_setting('http_timeout')").fetchone() == (5,)
    finally:
        con.close()
    slow = load_settings({**env, "LAKE_S3_READ_TIMEOUT_SECONDS": "12"})
    con = duck.connect_lake(slow)
    try:
        assert con.sql("SELECT current_setting('http_timeout')").fetchone() == (12,)
    finally:
        con.close()


def test_memory_limit_and_spill_directory_from_the_settings(tmp_path: Path) -> None:
    """`LAKE_DUCKDB_MEMORY_LIMIT` / `LAKE_DUCKDB_TEMP_DIRECTORY` reach every lake connection,
    and a sort larger than the limit spills into the directory instead of failing."""
    default = duck.connect_lake(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    try:  # unset: DuckDB's own (spilling into `.tmp` under the working directory)
        assert default.sql("SELECT current_setting('temp_directory')").fetchone() == (".tmp",)
    finally:
        default.close()
    spill = tmp_path / "spill" / "duckdb"
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            "LAKE_DUCKDB_MEMORY_LIMIT": "100 mib",
            "LAKE_DUCKDB_TEMP_DIRECTORY": str(spill),
        }
    )
    assert settings.duckdb_memory_limit == "100MiB"
    session = duck.DuckSession(settings)
    try:
        cur = session.cursor()
        assert cur.sql("SELECT current_setting('memory_limit')").fetchone() == ("100.0 MiB",)
        assert cur.sql("SELECT current_setting('temp_directory')").fetchone() == (str(spill),)
        # ~320 MB of rows sorted under a 100 MiB limit: only possible by spilling.
        rows = cur.sql(
            "SELECT count(*), count(DISTINCT k) FROM (SELECT hash(i) AS k, repeat('x', 24) AS pad"
            " FROM range(8000000) t(i) ORDER BY k)"
        ).fetchone()
        assert rows == (8_000_000, 8_000_000)
        cur.close()
    finally:
        session.close()


def test_a_spill_directory_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            "LAKE_DUCKDB_TEMP_DIRECTORY": str(tmp_path / "file" / "spill"),
        }
    )
    with pytest.raises(ConfigError, match="LAKE_DUCKDB_TEMP_DIRECTORY .*file/spill cannot be"):
        duck.connect_lake(settings)


def test_time_zone_and_the_shared_session_set_up_in_the_engine(tmp_path: Path) -> None:
    """`connect_lake(time_zone=)` (the query session) and `DuckSession` (Silver's workers): the
    Iceberg reader is loaded only when a cursor asks for it, UTC only when asked."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")})
    con = duck.connect_lake(settings, time_zone="UTC")
    try:
        assert con.sql("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
    finally:
        con.close()
    session = duck.DuckSession(settings)
    try:
        plain = session.cursor()
        assert "iceberg" not in _loaded(plain)
        plain.close()
        cur = session.cursor(iceberg=True, utc=True)
        assert "iceberg" in _loaded(cur)
        # Silver reads each Bronze file once: no cache of file blocks growing with the run.
        assert cur.sql("SELECT current_setting('enable_external_file_cache')").fetchone() == (
            False,
        )
        assert cur.sql("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        cur.close()
    finally:
        session.close()
