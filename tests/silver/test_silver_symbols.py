"""Symbols that Iceberg escapes in partition paths, end to end: load → Bronze → Silver → read.

pyiceberg names a partition directory `symbol=A%2FB` (`/`), `symbol=X+Y` (space),
`symbol=%C3%84PFEL` (unicode) and keeps those characters literally in the file path; a path that
looks like Hive partitioning (`symbol=7203`, `symbol=2025-03-07`) must not override the file's
own `symbol` column. Every symbol must reach Silver unchanged and read back the same through
`Lake.query`, the pinned-file replay and a pyiceberg scan, on a file and an S3 warehouse.
Budget: ~6 s local, ~8 s on S3 (plus the shared SeaweedFS start-up).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.load import LoadOptions, load_files
from iceberg_lake.silver.compactor import SilverCompactor
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.replay import ReplayEngine

pytestmark = pytest.mark.integration

#: Each needs escaping in a path, or looks like a typed Hive partition value (7203, a date).
SYMBOLS = ["A/B", "X Y", "ÄPFEL", "A&B", "7203", "2025-03-07", "50%", "A=B", "a+b", "SPY"]
T0 = int(datetime(2025, 3, 7, 14, tzinfo=UTC).timestamp()) * 10**9
DAY = "2025-03-07"
BRONZE, SILVER = "bronze.stocks_trades", "silver.stocks_trades"


def _rows(symbols: list[str], seq0: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i, sym in enumerate(symbols):
        ts = T0 + i * 10**6
        for k in range(2):
            row = {
                "ts_event_ns": ts + k,
                "ts_recv_ns": ts + k + 1000,
                "source": "x",
                "symbol": sym,
                "price": 1.5 + i,
                "size": 1,
                "seq": seq0 + 10 * i + k,
            }
            out.append(row)
        out.append({**out[-2], "ts_recv_ns": ts + 5000})  # a redelivery Silver removes
    return out


def _load(settings: Settings, path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (result,) = load_files(settings, [path], LoadOptions(table=BRONZE))
    assert result.rows_stored == len(rows), result


def _expected(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted({(r["symbol"], r["seq"], r["ts_event_ns"]) for r in rows}, key=str)


def _check(settings: Settings, rows: list[dict[str, object]]) -> None:
    """Silver holds every distinct row with its exact symbol, on every read path."""
    want = _expected(rows)
    sql = "SELECT symbol, seq, ts_event_ns FROM {}"
    with Lake(settings) as lake:
        for table in (BRONZE, SILVER):
            got = lake.query(sql.format(table)).to_pylist()
            keys = [(r["symbol"], r["seq"], r["ts_event_ns"]) for r in got]
            if table == BRONZE:
                keys = list(set(keys))
            assert sorted(keys, key=str) == want, table
    scan = LakeCatalog(settings).load_table(SILVER).scan().to_arrow()
    assert (
        sorted(
            zip(*(scan[c].to_pylist() for c in ("symbol", "seq", "ts_event_ns")), strict=True),
            key=str,
        )
        == want
    )
    engine = ReplayEngine(settings, [SILVER, BRONZE], T0, T0 + 3600 * 10**9)
    replayed = {BRONZE: [], SILVER: []}
    for e in engine:
        replayed[e["table"]].append((e["symbol"], e["seq"], e["ts_event_ns"]))
    assert sorted(replayed[SILVER], key=str) == want
    assert len(replayed[BRONZE]) == len(rows) and sorted(set(replayed[BRONZE]), key=str) == want


def _round_trip(settings: Settings, tmp_path: Path) -> None:
    catalog = LakeCatalog(settings)
    catalog.init()
    rows = _rows(SYMBOLS, 0)
    _load(settings, tmp_path / "day.ndjson", rows)
    with SilverCompactor(settings) as compactor:
        result = compactor.compact_date(DAY, "stocks.trades")
        assert result["status"] == "success", result
        assert result["partitions"] == len(SYMBOLS)
        assert result["rows_written"] == 2 * len(SYMBOLS)
        _check(settings, rows)
        # A late row for two of the symbols: the incremental run recompacts just those.
        late = _rows(["A/B", "7203"], 1000)
        _load(settings, tmp_path / "late.ndjson", late)
        (inc,) = compactor.compact_incremental(["stocks.trades"])
        assert inc["status"] == "success" and inc["partitions"] == 2, inc
    _check(settings, rows + late)


def test_escaped_and_hive_looking_symbols_on_a_file_warehouse(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")})
    _round_trip(settings, tmp_path)


def test_escaped_and_hive_looking_symbols_on_an_s3_warehouse(tmp_path: Path, s3_server) -> None:
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            **s3_server.lake_env(f"s3://symbols-{uuid.uuid4().hex[:8]}/wh"),
        }
    )
    _round_trip(settings, tmp_path)
