"""Guard test for `iceberg_lake.engine.duck.duckdb_path` and Silver's `read_parquet` options.

Iceberg data files of escaped partition values live at literal paths such as
`symbol=A%2FB/…` or `symbol=X+Y/…` (pyiceberg keeps a location's characters as written, on disk
and in S3 keys). Silver hands those paths to DuckDB's `read_parquet` unchanged, with
`hive_partitioning = false`. This fails loudly if a DuckDB upgrade starts decoding `%` escapes in
local paths or S3 keys, or lets a directory name override a column despite the option.
Budget: ~2 s (plus the shared SeaweedFS start-up for the S3 case).
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io import load_file_io

from iceberg_lake.catalog import ensure_bucket
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine import duck

#: symbol → the partition directory pyiceberg writes for it (`quote_plus`, nothing kept).
DIRS = {
    "A/B": "symbol=A%2FB",
    "X Y": "symbol=X+Y",
    "ÄPFEL": "symbol=%C3%84PFEL",
    "50%": "symbol=50%25",
    "A=B": "symbol=A%3DB",
    "7203": "symbol=7203",
    "2025-03-07": "symbol=2025-03-07",
}


def _parquet(symbol: str) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"symbol": [symbol], "n": [1]}), buf)
    return buf.getvalue()


def _read_back(settings: Settings, root: str) -> None:
    """Write one file per symbol under `root` (a warehouse URI) and read them with DuckDB."""
    file_io = load_file_io(settings.catalog_properties(), root)
    uris = {}
    for symbol, directory in DIRS.items():
        uri = f"{root}/{directory}/part.parquet"
        with file_io.new_output(uri).create(overwrite=True) as out:
            out.write(_parquet(symbol))
        uris[symbol] = uri
    con = duck.connect_lake(settings)
    try:
        for symbol, uri in uris.items():
            path = duck.quote_str(duck.duckdb_path(uri))
            sql = f"SELECT symbol FROM read_parquet([{path}], hive_partitioning = false)"
            assert con.execute(sql).fetchall() == [(symbol,)], uri
    finally:
        con.close()


def test_escaped_partition_paths_read_literally_on_a_file_warehouse(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")})
    root = (tmp_path / "w h").as_uri()  # `file:///…/w%20h`: pyiceberg writes `w%20h` literally
    assert duck.duckdb_path(root + "/x") == f"{tmp_path}/w%20h/x"
    _read_back(settings, root)
    assert (tmp_path / "w%20h" / "symbol=A%2FB" / "part.parquet").is_file()


def test_escaped_partition_keys_read_literally_on_s3(tmp_path: Path, s3_server) -> None:
    bucket = f"paths-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            **s3_server.lake_env(f"s3://{bucket}/wh"),
        }
    )
    ensure_bucket(settings, bucket)
    _read_back(settings, f"s3://{bucket}/wh")
