"""Silver dedups across loaded and live rows: the same trades arrive over NATS (the live writers,
real nats-server) and in a Polygon flat file (`lake load`), then Silver compaction keeps each
event once (budget: ~10 s, measured 3 s at load average 9, plus the shared nats-server).

Event identity is the table's dedup columns (DESIGN.md, spec): for stock trades `source,
ts_event_ns, symbol, price, size, exchange, seq`. So loaded rows dedup against live rows when
they carry the live feed's `source`; loaded with another `--source` they are a separate set,
itself stored once. Within a duplicate group the copy with the earliest `ts_recv_ns` survives,
whichever way it arrived (docs/backfill.md). Rows are counted with DuckDB's `iceberg_scan`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from ingest_support import encode, publish, run_until_idle, scan_sql, settings_env, settings_for
from ingest_support import wait_stream as wait_stream_count
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.testing import NatsServer
from tests.load_data import polygon_trades, write_csv_gz

pytestmark = pytest.mark.integration

LIVE_SOURCE = "polygon"  # what the live publisher of this feed puts in `source`
FILE_ROWS = range(0, 200)  # rows 0..199 in the flat file
LIVE_ROWS = range(100, 300)  # rows 100..299 live: 100..199 arrive both ways


def _live_event(rows: dict[str, list[str]], i: int) -> dict:
    """Trade i as the live feed sends it: the file's values, its own receive time, no
    conditions. Every 4th trade was received 1 µs *before* its SIP time (local clock behind
    the SIP's), so its live copy has the earlier `ts_recv_ns`; the others 5 µs after it."""
    ts = int(rows["sip_timestamp"][i])
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts - 1_000 if i % 4 == 0 else ts + 5_000,
        "source": LIVE_SOURCE,
        "symbol": rows["ticker"][i],
        "price": float(rows["price"][i]),
        "size": int(rows["size"][i]),
        "exchange": int(rows["exchange"][i]),
        "seq": int(rows["sequence_number"][i]),
    }


def test_silver_keeps_each_event_once_across_live_and_loaded_rows(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    every = polygon_trades(300)
    file_cols = {k: v[: FILE_ROWS.stop] for k, v in every.items()}
    day = write_csv_gz(tmp_path / "2025-12-16.csv.gz", file_cols)
    # The same rows re-exported (another gzip level): another file to the ledger.
    export = tmp_path / "2025-12-16.export.csv.gz"
    export.write_bytes(gzip.compress(gzip.decompress(day.read_bytes()), compresslevel=9))
    assert export.read_bytes() != day.read_bytes()

    # Live: rows 100..299 through NATS and the Bronze writer, as `lake serve` ingests them.
    items = [("market.stocks.trades", encode(_live_event(every, i)), None) for i in LIVE_ROWS]
    publish(settings, items)
    wait_stream_count(settings, "MARKET", len(items))
    run_until_idle(settings, ["bronze.stocks_trades"])

    # Backfill: the file with the live feed's source (detected as Polygon: source `polygon`),
    # and the re-export marked as a different source, then Silver for the touched day.
    runner = CliRunner()
    env = settings_env(settings)
    first = runner.invoke(app, ["load", str(day), "-o", "json"], env=env)
    assert first.exit_code == 0, first.output
    args = ["load", str(export), "--source", "polygon-flatfile", "--compact", "-o", "json"]
    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 0, second.output
    assert json.loads(first.output)["results"][0]["rows_stored"] == len(FILE_ROWS)
    report = json.loads(second.output)
    assert report["results"][0]["rows_stored"] == len(FILE_ROWS)
    assert [(c["table"], c["status"]) for c in report["compactions"]] == [
        ("silver.stocks_trades", "success")
    ]

    def per_source(table: str) -> dict[str, tuple[int, int]]:
        sql = (
            "SELECT source, count(*), count(DISTINCT (ts_event_ns, symbol, price, size, "
            f"exchange, seq)) FROM {scan_sql(settings, table)} GROUP BY source"
        )
        return {s: (n, d) for s, n, d in duck.sql(sql).fetchall()}

    # Bronze holds both copies of trades 100..199 under `polygon`; Silver one of each.
    assert per_source("bronze.stocks_trades") == {
        "polygon": (400, 300),
        "polygon-flatfile": (200, 200),
    }
    assert per_source("silver.stocks_trades") == {
        "polygon": (300, 300),
        "polygon-flatfile": (200, 200),
    }

    # Which copy survived: the earlier receive time, whichever path it came by.
    survivors = duck.sql(
        f"SELECT seq, ts_event_ns, ts_recv_ns, conditions FROM "
        f"{scan_sql(settings, 'silver.stocks_trades')} WHERE source = 'polygon' ORDER BY seq"
    ).fetchall()
    assert [s[0] for s in survivors] == list(range(300))
    for seq, ts, recv, conditions in survivors:
        if seq in LIVE_ROWS and (seq not in FILE_ROWS or seq % 4 == 0):
            assert (recv, conditions) == (_live_event(every, seq)["ts_recv_ns"], None), seq
        else:  # the file's copy: ts_recv_ns = SIP time, conditions from the file
            assert recv == ts, seq
            assert conditions == (every["conditions"][seq] or None), (seq, conditions)
