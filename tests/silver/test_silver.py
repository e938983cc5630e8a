"""Silver compaction against a real SQLite catalog and warehouse (and PostgreSQL + SeaweedFS S3).

Bronze data is written with pyiceberg appends; the expected Silver content is computed here
independently (pandas, md5 of the dedup columns' text as the spec defines the event id) and
compared with Silver read back through DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pytest
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from typer.testing import CliRunner

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine.iceberg import PartitionReplacement
from iceberg_lake.exceptions import CompactionError, UnknownTableError
from iceberg_lake.silver.compactor import SilverCompactor, silver_source_snapshots
from iceberg_lake.timetravel.snapshots import silver_source_tag

pytestmark = pytest.mark.integration

HOUR_NS = 3600 * 10**9
#: 2025-12-16 14:00 UTC
T0 = int(datetime(2025, 12, 16, 14, tzinfo=UTC).timestamp()) * 10**9
DAY = date(2025, 12, 16)
BRONZE, SILVER = "bronze.futures_trades", "silver.futures_trades"


# ---- set-up helpers ------------------------------------------------------------------------------


def _make_lake(settings: Settings) -> LakeCatalog:
    lake = LakeCatalog(settings)
    lake.ensure_warehouse()
    lake.ensure_namespaces()
    for identifier in (BRONZE, SILVER):
        lake.create_table(lake.definition(identifier))
    return lake


def trade(
    ts: int,
    recv: int | None = None,
    *,
    sym: str = "ES",
    price: float = 6000.25,
    size: int = 1,
    seq: int | None = 1,
    aggressor: int | None = 1,
    exchange: str | None = "CME",
) -> dict[str, Any]:
    return {
        "ts_event_ns": ts,
        "ts_recv_ns": ts + 1000 if recv is None else recv,
        "source": "databento",
        "symbol": sym,
        "price": price,
        "size": size,
        "aggressor": aggressor,
        "exchange": exchange,
        "seq": seq,
        "ts_event": ts // 1000,
    }


def append(table: Table, rows: list[dict[str, Any]]) -> int:
    """Append rows to a Bronze table (as the writers would); return the new snapshot id."""
    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    table.append(pa.Table.from_pylist(rows, schema=schema))
    return table.current_snapshot().snapshot_id  # type: ignore[union-attr]


def base_rows() -> list[dict[str, Any]]:
    """Two symbols, two hours, with every kind of duplicate the issue names."""
    rows = []
    for i in range(40):
        sym = "ES" if i % 2 else "NQ"
        rows.append(trade(T0 + i * 60 * 10**9 + i, sym=sym, seq=i, price=6000 + i % 5))
    rows += [
        trade(T0 + 5, recv=T0 + 900, seq=100),  # redelivered later...
        trade(T0 + 5, recv=T0 + 300, seq=100),  # ...and earlier: this one survives
        trade(T0 + 7, recv=T0 + 50, seq=None, exchange=None),  # NULL keys equal NULL keys
        trade(T0 + 7, recv=T0 + 40, seq=None, exchange=None),
        trade(T0 + 9, recv=T0 + 20, seq=7, aggressor=-1),  # same receive time: content decides
        trade(T0 + 9, recv=T0 + 20, seq=7, aggressor=None),
        trade(T0 + 11, seq=8, price=-0.0),  # -0.0 and 0.0 are the same price
        trade(T0 + 11, seq=8, price=0.0, recv=T0 + 5),
        trade(T0 + HOUR_NS + 3, seq=9, sym="NQ"),  # a plain row in the second hour
    ]
    return rows


# ---- independent expectation ---------------------------------------------------------------------

KEYS = ["source", "ts_event_ns", "symbol", "price", "size", "seq"]


def _canon(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v) and False):
        return "\\N"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return repr(v + 0.0)  # -0.0 + 0.0 == 0.0
    return str(v)


def expected_silver(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Dedup as the spec defines it: md5 event id, earliest receive, content tie-break."""
    df = pd.DataFrame(rows)
    df["price"] = df["price"] + 0.0
    df["_id"] = [
        hashlib.md5("|".join(_canon(r[k]) for k in KEYS).encode()).hexdigest()
        for r in df.to_dict("records")
    ]
    others = ["ts_recv_ns", "aggressor", "exchange", "ts_event"]
    df = df.sort_values(["_id", *others], na_position="last", kind="stable")
    df = df.drop_duplicates("_id", keep="first").drop(columns="_id")
    order = ["ts_event_ns", "source", "symbol", "price", "size", "seq"]
    return df.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)


def _norm(df: pd.DataFrame) -> list[tuple]:
    cols = ["ts_event_ns", "ts_recv_ns", "source", "symbol", "price", "size", "aggressor"]
    cols += ["exchange", "seq"]
    out = []
    for r in df[cols].to_dict("records"):
        out.append(
            tuple(None if (isinstance(v, float) and math.isnan(v)) else v for v in r.values())
        )
    return [tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in t) for t in out]


def silver_files_in_order(duck, table: Table, snapshot_id: int | None = None) -> pd.DataFrame:
    """Silver through DuckDB: each partition's file read in stored order, partitions by name."""
    snap = table.snapshot_by_id(snapshot_id) if snapshot_id else table.current_snapshot()
    if snap is None:
        return pd.DataFrame()
    tasks = sorted(
        table.scan(snapshot_id=snap.snapshot_id).plan_files(), key=lambda t: t.file.file_path
    )
    frames = [
        duck.execute(f"SELECT * FROM read_parquet('{t.file.file_path.removeprefix('file://')}')")
        .arrow()
        .read_all()
        .to_pandas()
        for t in tasks
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def silver_via_iceberg_scan(duck, table: Table, snapshot_id: int | None = None) -> pd.DataFrame:
    snap = f", snapshot_from_id={snapshot_id}" if snapshot_id else ""
    return (
        duck.execute(
            f"SELECT * FROM iceberg_scan('{table.metadata_location}'{snap}) "
            "ORDER BY symbol, ts_event_ns, ts_recv_ns"
        )
        .arrow()
        .read_all()
        .to_pandas()
    )


def by_partition(df: pd.DataFrame) -> dict[tuple[str, int], list[tuple]]:
    out: dict[tuple[str, int], list[tuple]] = {}
    for row in _norm(df):
        out.setdefault((row[3], row[0] // HOUR_NS), []).append(row)
    return out


def bronze_rows(duck, table: Table, snapshot_id: int) -> list[dict[str, Any]]:
    df = (
        duck.execute(
            f"SELECT * EXCLUDE (ts_event), epoch_us(ts_event) AS ts_event "
            f"FROM iceberg_scan('{table.metadata_location}', snapshot_from_id={snapshot_id})"
        )
        .arrow()
        .read_all()
        .to_pandas()
    )
    return [
        {
            k: (None if isinstance(v, float) and math.isnan(v) and k != "price" else v)
            for k, v in r.items()
        }
        for r in df.astype(object).where(df.notna(), None).to_dict("records")
    ]


def silver_snapshots(table: Table) -> list[int]:
    return [s.snapshot_id for s in table.snapshots()]


# ---- tests ---------------------------------------------------------------------------------------


def test_duplicates_are_removed_exactly_and_silver_is_sorted(lake: LakeCatalog, duck) -> None:
    bronze = lake.load_table(BRONZE)
    rows = base_rows()
    append(bronze, rows[:30])
    source = append(bronze, rows[20:])  # rows 20..29 arrive twice, in two files

    with SilverCompactor(lake) as compactor:
        result = compactor.compact_date(DAY, schema="futures.trades")

    expected = expected_silver(rows[:30] + rows[20:])
    assert result["status"] == "success"
    assert result["rows_read"] == len(rows) + 10
    assert result["rows_written"] == len(expected)
    assert result["duplicates_removed"] == len(rows) + 10 - len(expected)
    assert result["source_snapshot_id"] == source
    assert result["partitions"] == 3  # ES and NQ in hour 14, NQ in hour 15

    silver = lake.load_table(SILVER)
    got = silver_files_in_order(duck, silver)
    assert by_partition(got) == by_partition(expected), "rows or order differ per partition"
    assert _norm(
        silver_via_iceberg_scan(duck, silver).sort_values(["ts_event_ns", "ts_recv_ns", "seq"])
    ) == _norm(expected.sort_values(["ts_event_ns", "ts_recv_ns", "seq"]))
    # The survivors the issue names.
    survivors = {(r[0], r[1], r[6]) for r in _norm(got) if r[0] in (T0 + 5, T0 + 7, T0 + 9)}
    assert survivors == {(T0 + 5, T0 + 300, 1), (T0 + 7, T0 + 40, 1), (T0 + 9, T0 + 20, -1)}

    snap = silver.current_snapshot()
    assert snap is not None and len(silver.snapshots()) == 1
    props = snap.summary.additional_properties
    assert props[P.LAKE_OPERATION] == "silver-compaction"
    assert props[P.SOURCE_TABLE] == BRONZE
    assert props[P.SOURCE_SNAPSHOT_ID] == str(source)
    assert ["ES", "2025-12-16T14"] in json.loads(props[P.REPLACED_PARTITIONS])


def test_compacting_twice_gives_identical_rows_and_no_second_commit(
    lake: LakeCatalog, duck
) -> None:
    bronze = lake.load_table(BRONZE)
    append(bronze, base_rows())
    compactor = SilverCompactor(lake)
    first = compactor.compact_date(DAY, "futures_trades")
    silver = lake.load_table(SILVER)
    before = silver_files_in_order(duck, silver)
    history = silver_snapshots(silver)

    second = SilverCompactor(lake).compact_date(DAY, "bronze.futures_trades")
    assert second["status"] == "unchanged" and second["silver_snapshot_id"] is None
    assert second["partitions_unchanged"] == first["partitions"]
    silver.refresh()
    assert silver_snapshots(silver) == history, "no commit when Bronze is unchanged"

    # Forcing a recompaction of the same snapshot (new compactor, Silver emptied of state)
    # produces byte-for-byte the same rows in the same order.
    compactor.compact_all_dates("futures.trades")
    silver.refresh()
    assert silver_snapshots(silver) == history
    assert _norm(silver_files_in_order(duck, silver)) == _norm(before)
    compactor.close()


def test_every_silver_snapshot_holds_complete_partitions(lake: LakeCatalog, duck) -> None:
    bronze = lake.load_table(BRONZE)
    compactor = SilverCompactor(lake)
    rows = base_rows()
    sources: dict[int, tuple[int, set[tuple[str, int]]]] = {}

    def record(result: dict[str, Any]) -> None:
        if result["silver_snapshot_id"]:
            parts = {
                (v, int(datetime.fromisoformat(h + ":00+00:00").timestamp()) * 10**9 // HOUR_NS)
                for v, h in result["replaced_partitions"]
            }
            sources[result["silver_snapshot_id"]] = (result["source_snapshot_id"], parts)

    append(bronze, rows[:25])
    record(compactor.compact_date(DAY, "futures.trades"))
    append(bronze, rows[25:] + [trade(T0 + 2 * HOUR_NS, sym="ES", seq=500)])  # new hour too
    record(compactor.compact_incremental(["futures.trades"])[0])
    append(bronze, [trade(T0 + 30, sym="NQ", seq=600), trade(T0 + 30, sym="NQ", seq=600)])
    record(compactor.compact_date(DAY, "futures.trades", partition_value="NQ"))

    silver = lake.load_table(SILVER)
    assert len(silver.snapshots()) == 3 == len(sources)
    latest_source: dict[tuple[str, int], int] = {}
    for snap in silver.snapshots():  # oldest first
        source, parts = sources[snap.snapshot_id]
        assert snap.summary.operation.value in ("append", "overwrite")
        for p in parts:
            latest_source[p] = source
        got = by_partition(silver_via_iceberg_scan(duck, silver, snap.snapshot_id))
        assert set(got) == set(latest_source), f"snapshot {snap.snapshot_id} lost a partition"
        for part, src in latest_source.items():
            want = by_partition(expected_silver(bronze_rows(duck, bronze, src)))[part]
            assert sorted(got[part], key=str) == sorted(want, key=str), (snap.snapshot_id, part)
    compactor.close()


def test_bronze_appends_during_compaction_and_the_next_incremental_run(
    lake: LakeCatalog, duck
) -> None:
    bronze = lake.load_table(BRONZE)
    append(bronze, base_rows())
    stop = threading.Event()
    errors: list[BaseException] = []
    appended = []

    def writer() -> None:
        try:
            table = LakeCatalog(lake.settings).load_table(BRONZE)
            i = 0
            while not stop.is_set() or i < 3:
                ts = T0 + 1_000 + i
                appended.append(append(table, [trade(ts, sym="ES", seq=10_000 + i)] * 2))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = SilverCompactor(lake).compact_date(DAY, "futures.trades")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors and not thread.is_alive()
    pinned = result["source_snapshot_id"]
    silver = lake.load_table(SILVER)
    got = silver_via_iceberg_scan(duck, silver)
    want = expected_silver(bronze_rows(duck, bronze, pinned))
    assert sorted(_norm(got), key=str) == sorted(_norm(want), key=str)

    bronze.refresh()
    incremental = SilverCompactor(lake).compact_incremental(["futures.trades"])[0]
    current = bronze.current_snapshot().snapshot_id  # type: ignore[union-attr]
    assert incremental["source_snapshot_id"] == current
    if current != pinned:
        assert incremental["status"] == "success" and incremental["partitions"] == 1
    silver.refresh()
    got = silver_via_iceberg_scan(duck, silver)
    want = expected_silver(bronze_rows(duck, bronze, current))
    assert sorted(_norm(got), key=str) == sorted(_norm(want), key=str)
    assert silver.properties[P.SILVER_INCREMENTAL_SOURCE] == str(current)
    # Nothing new: the next incremental run reads no data and commits nothing.
    history = silver_snapshots(silver)
    again = SilverCompactor(lake).compact_incremental(["futures_trades"])[0]
    assert again["status"] == "unchanged" and again["rows_read"] == 0
    silver.refresh()
    assert silver_snapshots(silver) == history


def test_two_compactors_on_the_same_partition(lake: LakeCatalog, duck) -> None:
    bronze = lake.load_table(BRONZE)
    append(bronze, base_rows())
    barrier = threading.Barrier(2)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        compactor = SilverCompactor(LakeCatalog(lake.settings))
        try:
            barrier.wait(timeout=30)
            results.append(compactor.compact_date(DAY, "futures.trades", partition_value="ES"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            compactor.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(r["status"] for r in results) == ["success", "unchanged"]
    silver = lake.load_table(SILVER)
    assert len(silver.snapshots()) == 1, "exactly one compactor commits"
    want = expected_silver([r for r in base_rows() if r["symbol"] == "ES"])
    got = silver_via_iceberg_scan(duck, silver)
    assert sorted(_norm(got), key=str) == sorted(_norm(want), key=str)
    # Orphans of the losing attempt (if it wrote any) were removed again.
    live = {unquote(urlparse(t.file.file_path).path) for t in silver.scan().plan_files()}
    data_dir = Path(unquote(urlparse(silver.location()).path)) / "data"
    assert {str(p) for p in data_dir.rglob("*.parquet")} == live


def _rewrite_partition(bronze: Table, symbol: str, hour: int) -> int:
    """What maintenance's compact-files does: same rows, one new file, one overwrite snapshot."""
    lo = datetime.fromtimestamp(hour * 3600, UTC)
    hi = datetime.fromtimestamp((hour + 1) * 3600, UTC)
    pred = And(
        EqualTo("symbol", symbol),
        And(GreaterThanOrEqual("ts_event", lo.isoformat()), LessThan("ts_event", hi.isoformat())),
    )
    old = [t.file for t in bronze.scan(row_filter=pred).plan_files()]
    rows = bronze.scan(row_filter=pred).to_arrow()
    rep = PartitionReplacement(bronze, {P.LAKE_OPERATION: P.COMPACT_FILES})
    rep.replace(pred, rows.cast(schema_to_pyarrow(bronze.schema(), include_field_ids=False)), old)
    return rep.commit()  # type: ignore[return-value]


def test_file_rewrites_and_snapshot_expiry(lake: LakeCatalog, duck) -> None:
    bronze = lake.load_table(BRONZE)
    rows = base_rows()
    append(bronze, rows[:20])
    append(bronze, rows[20:])
    compactor = SilverCompactor(lake)
    first = compactor.compact_date(DAY, "futures.trades")
    silver = lake.load_table(SILVER)
    before = _norm(silver_files_in_order(duck, silver))
    history = silver_snapshots(silver)
    assert silver_source_snapshots(lake.settings)[BRONZE] == {first["source_snapshot_id"]}

    _rewrite_partition(bronze, "ES", T0 // HOUR_NS)
    again = compactor.compact_date(DAY, "futures.trades")
    assert again["status"] == "unchanged", "a rewrite with the same rows needs no recompaction"
    silver.refresh()
    assert silver_snapshots(silver) == history

    # Once the source snapshot is expired the rewrite can no longer be proven row-preserving:
    # the partition is recompacted once, to identical content. (The compaction tagged its
    # source, so no expiry removes it: drop the tag first, as if Silver no longer named it.)
    source_tag = silver_source_tag(first["source_snapshot_id"])
    bronze = lake.load_table(BRONZE)
    assert bronze.metadata.refs[source_tag].snapshot_id == first["source_snapshot_id"]
    bronze.manage_snapshots().remove_tag(source_tag).commit()
    bronze.maintenance.expire_snapshots().by_id(first["source_snapshot_id"]).commit()
    third = compactor.compact_date(DAY, "futures.trades")
    assert third["status"] == "success" and third["partitions"] == 1
    assert third["replaced_partitions"] == [["ES", "2025-12-16T14"]]
    silver.refresh()
    assert _norm(silver_files_in_order(duck, silver)) == before
    assert compactor.compact_date(DAY, "futures.trades")["status"] == "unchanged"
    compactor.close()


def test_pinned_snapshot_and_tag(lake: LakeCatalog, duck) -> None:
    bronze = lake.load_table(BRONZE)
    rows = base_rows()
    old = append(bronze, rows[:10])
    bronze.manage_snapshots().create_tag(old, "eod").commit()
    append(bronze, rows[10:])
    compactor = SilverCompactor(lake)

    result = compactor.compact_date(DAY, "futures.trades", tag="eod")
    assert result["source_snapshot_id"] == old
    silver = lake.load_table(SILVER)
    assert sorted(_norm(silver_via_iceberg_scan(duck, silver)), key=str) == sorted(
        _norm(expected_silver(rows[:10])), key=str
    )
    latest = compactor.compact_date(
        DAY, "futures.trades", snapshot_id=bronze.current_snapshot().snapshot_id
    )
    assert latest["rows_written"] == len(expected_silver(rows))

    with pytest.raises(CompactionError, match="no tag or branch 'nope'"):
        compactor.compact_date(DAY, "futures.trades", tag="nope")
    with pytest.raises(CompactionError, match="no snapshot 42"):
        compactor.compact_date(DAY, "futures.trades", snapshot_id=42)
    with pytest.raises(CompactionError, match="invalid date"):
        compactor.compact_date("2025-13-01", "futures.trades")
    with pytest.raises(UnknownTableError, match="no Silver table for 'nope.trades'"):
        compactor.compact_date(DAY, "nope.trades")
    compactor.close()


def test_a_run_pinned_to_an_older_snapshot_lowers_the_incremental_mark(
    lake: LakeCatalog, duck
) -> None:
    """`compact --as-of <older>` rewrites partitions with older content: the incremental mark
    must follow in the same commits, or the next incremental run reports "unchanged" forever."""
    bronze = lake.load_table(BRONZE)
    rows = base_rows()
    old = append(bronze, rows[:10])  # ES and NQ, 14:00
    compactor = SilverCompactor(lake, partitions_per_commit=1)
    assert compactor.compact_incremental(["futures.trades"])[0]["status"] == "success"
    new = append(bronze, rows[10:])
    assert compactor.compact_incremental(["futures.trades"])[0]["source_snapshot_id"] == new
    silver = lake.load_table(SILVER)
    assert silver.properties[P.SILVER_INCREMENTAL_SOURCE] == str(new)

    def mark() -> str | None:
        return lake.load_table(SILVER).properties.get(P.SILVER_INCREMENTAL_SOURCE)

    marks_seen: list[str | None] = []  # after the first of the two commits (one per partition)
    compactor.progress = lambda _t, done, total: marks_seen.append(mark()) if done == 2 else None
    pinned = compactor.compact_date(DAY, "futures.trades", as_of=old)
    compactor.progress = None
    assert pinned["status"] == "success" and pinned["partitions"] == 2
    assert marks_seen == [str(old)] and mark() == str(old)
    silver.refresh()
    got = silver_via_iceberg_scan(duck, silver)
    want = expected_silver(rows[:10] + [r for r in rows[10:] if r["ts_event_ns"] >= T0 + HOUR_NS])
    assert sorted(_norm(got), key=str) == sorted(_norm(want), key=str)

    caught_up = compactor.compact_incremental(["futures.trades"])[0]
    assert caught_up["status"] == "success" and caught_up["partitions"] == 2
    assert mark() == str(new)
    got = silver_via_iceberg_scan(duck, lake.load_table(SILVER))
    assert sorted(_norm(got), key=str) == sorted(_norm(expected_silver(rows)), key=str)
    assert compactor.compact_incremental(["futures.trades"])[0]["status"] == "unchanged"

    # A snapshot on a branch is neither older nor newer than the mark: the mark is cleared and
    # the next incremental run checks every partition from metadata.
    bronze.refresh()
    bronze.manage_snapshots().create_branch(old, "side").commit()
    bronze.append(
        pa.Table.from_pylist(
            [trade(T0 + 17, seq=500, sym="ES")],
            schema=schema_to_pyarrow(bronze.schema(), include_field_ids=False),
        ),
        branch="side",
    )
    assert compactor.compact_date(DAY, "futures.trades", tag="side")["status"] == "success"
    assert mark() == ""
    again = compactor.compact_incremental(["futures.trades"])[0]
    assert again["status"] == "success" and mark() == str(new)
    got = silver_via_iceberg_scan(duck, lake.load_table(SILVER))
    assert sorted(_norm(got), key=str) == sorted(_norm(expected_silver(rows)), key=str)
    compactor.close()


def test_cli_compact_prints_a_summary_and_clear_errors(lake: LakeCatalog, monkeypatch) -> None:
    append(lake.load_table(BRONZE), base_rows())
    monkeypatch.setenv("LAKE_DATA_DIR", str(lake.settings.data_dir))
    runner = CliRunner()
    res = runner.invoke(
        app, ["--output", "json", "compact", "--date", "2025-12-16", "--table", "futures.trades"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["table"] == SILVER and rows[0]["status"] == "success"
    assert rows[0]["duplicates_removed"] == len(base_rows()) - len(expected_silver(base_rows()))

    res = runner.invoke(
        app, ["compact", "--incremental", "--table", "futures_trades", "-o", "json"]
    )
    assert res.exit_code == 0, res.output
    assert [(r["table"], r["status"]) for r in json.loads(res.stdout)] == [(SILVER, "unchanged")]
    res = runner.invoke(app, ["compact", "--date", "2025-12-16"])
    assert res.exit_code == 0, res.output
    assert "Silver compaction" in res.stdout and "written" in res.stdout

    res = runner.invoke(app, ["compact", "--date", "yesterday", "--table", "futures.trades"])
    assert res.exit_code == 1
    assert "invalid date 'yesterday'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compact", "--table", "futures.trades"])
    assert res.exit_code != 0 and "--date" in res.output
    res = runner.invoke(app, ["compact", "--date", "2025-12-16", "--as-of", "1"])
    assert res.exit_code != 0 and "a snapshot id pins one table" in res.output
    res = runner.invoke(
        app, ["compact", "--date", "2025-12-16", "-t", "futures_trades", "--as-of", "1"]
    )
    assert res.exit_code == 1 and "has no snapshot 1" in res.output
    res = runner.invoke(app, ["compact", "--date", "2025-12-16", "--as-of", "nosuchtag"])
    assert res.exit_code == 1 and "no tag or snapshot 'nosuchtag'" in res.output


def test_s3_warehouse_and_postgres_catalog(
    tmp_path: Path, s3_server, postgres_server, duck
) -> None:
    settings = load_settings(
        {
            "LAKE_DATA_DIR": str(tmp_path / "data"),
            "LAKE_CATALOG_NAME": f"silver{uuid.uuid4().hex[:8]}",
            "LAKE_CATALOG_URI": postgres_server.uri,
            **s3_server.lake_env(f"s3://silver-{uuid.uuid4().hex[:8]}/wh"),
        }
    )
    lake = _make_lake(settings)
    rows = base_rows()
    append(lake.load_table(BRONZE), rows)
    with SilverCompactor(settings) as compactor:
        result = compactor.compact_date(DAY, "futures.trades")
        assert result["status"] == "success"
        assert compactor.compact_date(DAY, "futures.trades")["status"] == "unchanged"
    from iceberg_lake.engine import duck as duck_module

    duck_module.configure_s3(
        duck, s3_server.endpoint, s3_server.access_key, s3_server.secret_key, s3_server.region
    )
    got = silver_via_iceberg_scan(duck, lake.load_table(SILVER))
    assert sorted(_norm(got), key=str) == sorted(_norm(expected_silver(rows)), key=str)


def test_schema_evolution_added_and_renamed_columns(lake: LakeCatalog, duck) -> None:
    """Files from before a migration are read by field id: new columns NULL, renames followed."""
    from pyiceberg.types import StringType

    bronze = lake.load_table(BRONZE)
    old_rows = base_rows()[:10]
    append(bronze, old_rows)
    for identifier in (BRONZE, SILVER):
        with lake.load_table(identifier).update_schema() as update:
            update.add_column("venue_note", StringType())
    bronze.refresh()
    new_row = {**trade(T0 + 10**9, seq=900), "venue_note": "late"}
    append(bronze, [new_row])

    compactor = SilverCompactor(lake)
    added = compactor.compact_date(DAY, "futures.trades")  # read_parquet, union_by_name
    silver = lake.load_table(SILVER)
    got = silver_via_iceberg_scan(duck, silver)
    notes = dict(zip(got["seq"], got["venue_note"], strict=True))
    assert notes[900] == "late" and all(pd.isna(notes[r["seq"]]) for r in old_rows)
    assert added["rows_written"] == len(expected_silver([*old_rows, new_row]))

    # A rename: old Bronze files still carry the old name, so DuckDB's Iceberg reader (by field
    # id) is used; the values must follow the column, not its name.
    for identifier in (BRONZE, SILVER):
        with lake.load_table(identifier).update_schema() as update:
            update.rename_column("exchange", "venue")
    bronze.refresh()
    append(bronze, [{**trade(T0 + 2 * 10**9, seq=901, exchange=None), "venue": "ICE"}])
    renamed = compactor.compact_date(DAY, "futures.trades")
    assert renamed["status"] == "success"
    silver.refresh()
    got = silver_via_iceberg_scan(duck, silver)
    venues = dict(zip(got["seq"], got["venue"], strict=True))
    assert venues[901] == "ICE" and venues[900] == "CME"
    assert all(venues[r["seq"]] == r["exchange"] for r in old_rows)
    compactor.close()


def test_a_day_of_480_partitions_in_one_commit(lake: LakeCatalog) -> None:
    """20 symbols × 24 hours: one snapshot, and a conflict-scoping predicate that stays small."""
    bronze = lake.load_table(BRONZE)
    day0 = T0 - 14 * HOUR_NS
    rows = [
        trade(day0 + h * HOUR_NS + i, sym=f"S{i:02d}", seq=h) for h in range(24) for i in range(20)
    ]
    append(bronze, rows)
    compactor = SilverCompactor(lake)
    result = compactor.compact_date(DAY, "futures.trades")
    assert result["partitions"] == 480 and result["rows_written"] == 480
    silver = lake.load_table(SILVER)
    assert len(silver.snapshots()) == 1
    props = silver.current_snapshot().summary.additional_properties  # type: ignore[union-attr]
    assert len(json.loads(props[P.REPLACED_PARTITIONS])) == 480
    assert compactor.compact_date(DAY, "futures.trades")["partitions_unchanged"] == 480
    compactor.close()


def test_an_incremental_run_after_a_silver_rollback_catches_up(
    lake: LakeCatalog, duck, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollback of Silver (undoing a bad write, any engine) moves it back to older content and
    leaves the table properties as they were: the incremental mark went on claiming the
    rolled-back compaction, and every incremental run answered `unchanged` (silver18)."""
    bronze = lake.load_table(BRONZE)
    rows = base_rows()
    append(bronze, rows[:10])
    compactor = SilverCompactor(lake)
    assert compactor.compact_incremental(["futures.trades"])[0]["status"] == "success"
    first = lake.load_table(SILVER).current_snapshot()
    assert first is not None
    append(bronze, rows[10:])
    assert compactor.compact_incremental(["futures.trades"])[0]["status"] == "success"
    silver = lake.load_table(SILVER)
    silver.manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()

    caught_up = compactor.compact_incremental(["futures.trades"])[0]
    assert caught_up["status"] == "success"
    assert "not descend from" in caplog.text
    got = silver_via_iceberg_scan(duck, lake.load_table(SILVER))
    assert sorted(_norm(got), key=str) == sorted(_norm(expected_silver(rows)), key=str)
    # The mark is set anew on the new snapshot: the next run is a cheap `unchanged` again.
    caplog.clear()
    assert compactor.compact_incremental(["futures.trades"])[0]["status"] == "unchanged"
    assert "not descend from" not in caplog.text
    compactor.close()


def test_a_pinned_run_after_a_rollback_clears_the_mark_rather_than_lowering_it(
    lake: LakeCatalog, duck
) -> None:
    """After a rollback, a `--date D1 --as-of <older>` run lowered the stale mark and named its
    own commit as the mark's snapshot: the mark counted as usable again, and the next day, whose
    compaction the rollback undid, stayed short for good (review18)."""
    bronze = lake.load_table(BRONZE)
    day = 24 * HOUR_NS
    compactor = SilverCompactor(lake)

    def incremental() -> str:
        return compactor.compact_incremental(["futures.trades"])[0]["status"]

    rows = [trade(T0, seq=1), trade(T0 + day, seq=1)]
    append(bronze, rows)
    assert incremental() == "success"
    first = lake.load_table(SILVER).current_snapshot()
    assert first is not None
    later = [trade(T0 + 10, seq=2), trade(T0 + day + 10, seq=2)]
    older = append(bronze, later)
    assert incremental() == "success"
    append(bronze, [trade(T0 + 20, seq=3)])
    rows += later + [trade(T0 + 20, seq=3)]
    assert incremental() == "success"
    lake.load_table(SILVER).manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()

    assert compactor.compact_date(DAY, "futures.trades", as_of=older)["status"] == "success"
    assert lake.load_table(SILVER).properties[P.SILVER_INCREMENTAL_SOURCE] == ""
    assert incremental() == "success"
    got = silver_via_iceberg_scan(duck, lake.load_table(SILVER))
    assert sorted(_norm(got), key=str) == sorted(_norm(expected_silver(rows)), key=str)
    compactor.close()
