"""`lake status`: tables, JetStream consumer lag against a real nats-server, dead letters."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.engine.nats import (
    INFERRED_TARGET,
    connect,
    consumer_target,
    ensure_consumer,
    ensure_streams,
)
from iceberg_lake.ops.status import collect_status
from iceberg_lake.testing import free_port

TABLE = "bronze.stocks_trades"
runner = CliRunner()


def _env(tmp_path: Path, nats_url: str) -> dict[str, str]:
    return {"LAKE_DATA_DIR": str(tmp_path / "data"), "LAKE_NATS_URL": nats_url}


def _lag(tmp_path: Path, nats_url: str) -> dict[str, object]:
    out = runner.invoke(app, ["status", "--json"], env=_env(tmp_path, nats_url))
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["nats"] == "ok"
    return next(c for c in report["consumers"] if c["table"] == TABLE)


def _dead_letters(lake: LakeCatalog, targets: list[str]) -> None:
    table = lake.load_table("bronze.dead_letters")
    schema = lake.definition("bronze.dead_letters").arrow_schema()
    now = datetime.now(UTC)
    rows = [
        {
            "received_at": now,
            "target_table": t,
            "subject": "market.stocks.trades",
            "stream": "MARKET",
            "stream_seq": i,
            "reason": "bad price",
            "raw": b"{}",
        }
        for i, t in enumerate(targets)
    ]
    table.append(pa.Table.from_pylist(rows, schema=schema).select(table.schema().column_names))


@pytest.mark.integration
def test_status_consumer_lag_matches_published_not_yet_stored(tmp_path: Path, nats_server) -> None:
    settings = load_settings(_env(tmp_path, nats_server.url))
    lake = LakeCatalog(settings)
    lake.init()
    _dead_letters(lake, [TABLE, TABLE, "bronze.futures_trades"])
    stream, durable, subject = consumer_target(TABLE)

    async def setup() -> None:
        nc = await connect(settings)
        js = nc.jetstream()
        await ensure_streams(js, settings)
        await ensure_consumer(js, TABLE)
        await nc.close()

    asyncio.run(setup())
    before = _lag(tmp_path, nats_server.url)
    assert before["exists"] is True
    base = int(before["lag"])

    async def publish_and_fetch(n: int, fetch: int) -> None:
        nc = await connect(settings)
        js = nc.jetstream()
        for i in range(n):
            await js.publish(subject, json.dumps({"i": i}).encode())
        if fetch:
            sub = await js.pull_subscribe(subject, durable=durable, stream=stream)
            got = []
            while len(got) < fetch:
                got += await sub.fetch(fetch - len(got), timeout=5)
        await nc.close()

    asyncio.run(publish_and_fetch(7, 0))
    lagging = _lag(tmp_path, nats_server.url)
    assert lagging["lag"] == base + 7
    assert lagging["pending"] == base + 7

    # Delivered but not acked (a writer holding an uncommitted batch) is still lag.
    asyncio.run(publish_and_fetch(0, base + 7))
    held = _lag(tmp_path, nats_server.url)
    assert held["lag"] == base + 7
    assert held["ack_pending"] == base + 7 and held["pending"] == 0

    report = collect_status(lake)
    assert report.dead_letters == {TABLE: 2, "bronze.futures_trades": 1}
    row = next(t for t in report.tables if t.table == "bronze.dead_letters")
    assert row.rows == 3 and row.data_files >= 1 and row.mean_file_bytes > 0
    assert row.snapshots == 1 and row.last_commit_age_seconds is not None
    assert 0 <= row.last_commit_age_seconds < 600
    wide = {**_env(tmp_path, nats_server.url), "COLUMNS": "200"}
    text = runner.invoke(app, ["status"], env=wide)
    assert text.exit_code == 0, text.output
    assert "lake_bronze_stocks_trades" in text.output and "dead letters" in text.output


@pytest.mark.integration
def test_status_warns_when_writers_lag_near_the_stream_limits(
    lake: LakeCatalog, tmp_path: Path, nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lake status` (text and JSON) warns of unstored messages near max_bytes, then max_age.

    The age is read on a clock moved forward (the warning's own module's): waiting for a real
    5 s max_age failed under load, where one status took seconds and the server had dropped
    the messages by the time it looked (flaky16)."""
    from iceberg_lake.engine import nats as bus

    env = {
        **_env(tmp_path, nats.url),
        "LAKE_STREAM_MAX_AGE": "600",
        "LAKE_STREAM_MAX_BYTES": "200000",
        "LAKE_STREAM_DUPLICATE_WINDOW_SECONDS": "1",
        "COLUMNS": "250",
    }
    settings = load_settings(env)
    stream, durable, subject = consumer_target(TABLE)

    async def lag_near_max_bytes() -> None:
        nc = await connect(settings)
        try:
            js = nc.jetstream()
            await ensure_streams(js, settings)
            await ensure_consumer(js, TABLE)
            for _ in range(170):  # ~170 KB of 1 KB messages: 85% of max_bytes, none stored
                await js.publish(subject, b"x" * 1000)
        finally:
            await nc.close()

    asyncio.run(lag_near_max_bytes())
    text = runner.invoke(app, ["status"], env=env)
    assert text.exit_code == 0, text.output
    line = next(ln for ln in text.output.splitlines() if ln.startswith("warning"))
    assert durable in line and "max_bytes (200,000)" in line and "170 messages not stored" in line
    first = _lag_with(env)
    assert "max_bytes" in first["warning"] and "max_age" not in first["warning"]

    class Later:
        """The `time` module, its clock `ahead` seconds on."""

        ahead = 0.0

        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def time(self) -> float:
            return time.time() + self.ahead

        def time_ns(self) -> int:
            return time.time_ns() + int(self.ahead * 1e9)

    later = Later()
    monkeypatch.setattr(bus, "time", later)
    later.ahead = 0.75 * 600  # 75% of max_age: not yet
    assert "max_age" not in (_lag_with(env)["warning"] or "")
    later.ahead = 0.85 * 600  # past 80%
    aged = _lag_with(env)["warning"]
    assert "max_age of MARKET is 600 s" in aged and "oldest message not stored is 51" in aged
    assert "max_bytes" in aged  # nothing was dropped meanwhile


@pytest.mark.parametrize(
    ("subject", "warns"), [("market.custom.trades", True), ("market.stocks.trades", False)]
)
def test_status_warns_of_the_inference_consumer_near_a_stream_limit(
    lake: LakeCatalog, tmp_path: Path, nats, subject: str, warns: bool
) -> None:
    """Only schema inference's consumer lags: on an unmapped subject, its messages are about to
    be discarded, which status did not say, reading the declared tables' consumers only (ops5);
    on a mapped subject it only skips them (their table's writer stores them): no warning,
    which status gave once it read that consumer (ops6)."""
    env = {**_env(tmp_path, nats.url), "LAKE_STREAM_MAX_BYTES": "200000"}
    settings = load_settings(env)

    async def inferred_lag() -> None:
        nc = await connect(settings)
        try:
            js = nc.jetstream()
            await ensure_streams(js, settings)
            await ensure_consumer(js, INFERRED_TARGET)
            for _ in range(170):  # 85% of max_bytes, none read
                await js.publish(subject, b"x" * 1000)
        finally:
            await nc.close()

    asyncio.run(inferred_lag())
    out = runner.invoke(app, ["status", "--json"], env=env)
    assert out.exit_code == 0, out.output
    (inferred,) = [c for c in json.loads(out.output)["consumers"] if c["table"] == "inferred"]
    assert inferred["consumer"] == "lake_inferred" and inferred["lag"] == 170, inferred
    if warns:
        assert "max_bytes (200,000) with 170 messages not stored" in inferred["warning"]
        assert "schema inference" in inferred["warning"], inferred
    else:
        assert inferred["warning"] is None, inferred


def test_status_before_the_first_serve_lists_every_consumer_as_not_created(
    lake: LakeCatalog, tmp_path: Path, nats
) -> None:
    """No MARKET stream yet (after `lake init`, before `lake serve`): the inference consumer's
    subject count asked for a missing stream, and the whole section read "NATS unreachable"
    (review8)."""
    out = runner.invoke(app, ["status", "--json"], env=_env(tmp_path, nats.url))
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["nats"] == "ok", report["nats"]
    consumers = {c["table"]: c["exists"] for c in report["consumers"]}
    assert consumers["inferred"] is False and consumers[TABLE] is False, consumers


async def _stream_messages(settings: Any) -> int:
    nc = await connect(settings)
    try:
        info = await nc.jetstream().stream_info("MARKET")
        return int(info.state.messages)
    finally:
        await nc.close()


def _lag_with(env: dict[str, str]) -> dict[str, Any]:
    out = runner.invoke(app, ["status", "--json"], env=env)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    return next(c for c in report["consumers"] if c["table"] == TABLE)


def test_status_text_says_nats_is_unreachable(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    lake = LakeCatalog(load_settings(_env(tmp_path, url)))
    lake.init()
    wide = {**_env(tmp_path, url), "COLUMNS": "200"}
    text = runner.invoke(app, ["status", "--nats-timeout", "1"], env=wide)
    assert text.exit_code == 0, text.output
    assert "NATS unreachable" in text.output and "stocks_trades" in text.output


def test_status_lists_a_declared_table_missing_from_the_catalog_as_an_error(
    tmp_path: Path,
) -> None:
    """ops19 #3: a declared table whose catalog row is gone (a restore or failover without it)
    is listed, marked `missing` in JSON and named in an error line, not left out. No servers
    (NATS unreachable); the exit code stays 0 as for every other problem status reports."""
    url = f"nats://127.0.0.1:{free_port()}"
    lake = LakeCatalog(load_settings(_env(tmp_path, url)))
    lake.init()
    lake.catalog.drop_table("bronze.options_trades")  # the row only: its files stay

    as_json = runner.invoke(
        app, ["status", "-o", "json", "--nats-timeout", "1"], env=_env(tmp_path, url)
    )
    assert as_json.exit_code == 0, as_json.output
    tables = {t["table"]: t for t in json.loads(as_json.stdout)["tables"]}
    assert set(tables) == set(lake.registry.identifiers)
    assert tables["bronze.options_trades"]["missing"] is True
    assert "declared but not in the catalog" in tables["bronze.options_trades"]["error"]
    assert tables["bronze.options_trades"]["rows"] is None  # no counts, not 0 (review19c)
    assert [t for t, v in tables.items() if v["missing"]] == ["bronze.options_trades"]

    wide = {**_env(tmp_path, url), "COLUMNS": "200"}
    text = runner.invoke(app, ["status", "--nats-timeout", "1"], env=wide)
    assert text.exit_code == 0, text.output
    errors = [line for line in text.output.splitlines() if line.startswith("error")]
    assert errors == [
        "error bronze.options_trades: declared but not in the catalog: run `lake init`; if "
        'its location already holds metadata files, see docs/production.md ("A table missing '
        'from the catalog")'
    ], text.output
    assert "not in the catalog" in next(
        line for line in text.output.splitlines() if "bronze.options_trades" in line
    )


def test_status_text_never_cuts_table_names_or_freshness() -> None:
    """At 80 columns (a terminal, or any pipe) the tables table does not fit: one line per
    table instead, names and figures whole; a wide console keeps the table. No servers."""
    from rich.console import Console

    from iceberg_lake.cli.output import print_status
    from iceberg_lake.ops.status import LakeStatus, TableStatus

    report = LakeStatus(
        tables=[
            TableStatus(
                table="bronze.options_greeks_snapshots",
                rows=1_234_567,
                data_files=1_234,
                mean_file_bytes=12_345_678,
                snapshots=123,
                last_commit="2026-11-29T09:00:00+00:00",
                last_commit_age_seconds=3700,
                committed_freshness_seconds=31.2,
                live_freshness_seconds=0.4,
            )
        ],
        nats="unreachable",
    )
    for width in (80, 200):
        console = Console(width=width, record=True, force_terminal=False)
        print_status(report, console)
        text = console.export_text()
        assert "bronze.options_greeks_snapshots" in text and "1,234,567" in text, text
        assert "31.2s" in text and "0.4s" in text and "…" not in text, text
        assert ("fresh (committed)" in text) == (width == 200), text


def test_status_groups_the_removal_warnings_of_tables_nothing_ever_fed() -> None:
    """Once the stream removed anything, `lake status` warned once per never-used table, on
    every run: a stocks-only desk got five lines to learn to skip beside the one that matters
    (live16). Tables with no commit, no writer and no message share one line; a fed table
    keeps its own. No servers."""
    from rich.console import Console

    from iceberg_lake.cli.output import print_status
    from iceberg_lake.ops.status import ConsumerStatus, LakeStatus, TableStatus

    def table(name: str, snapshots: int, live: float | None) -> TableStatus:
        warning = f"{name}: stream MARKET no longer holds seq 1..18 (…)"
        return TableStatus(name, 0, 0, 0, snapshots, None, None, live_freshness_seconds=live,
                           live_warning=warning)  # fmt: skip

    unfed = ["bronze.futures_mbp10", "bronze.futures_trades", "bronze.options_trades"]
    report = LakeStatus(
        tables=[
            table("bronze.stocks_trades", 3, 1.0),  # fed: committed, its own line
            table("bronze.stocks_quotes", 0, None),  # its writer runs: its own line
            *(table(name, 0, None) for name in unfed),
        ],
        consumers=[ConsumerStatus("bronze.stocks_quotes", "MARKET", "lake_x", exists=True)],
        nats="unreachable",
    )
    console = Console(width=300, record=True, force_terminal=False)
    print_status(report, console)
    lines = [line for line in console.export_text().splitlines() if "warning" in line]
    assert len(lines) == 3, lines
    assert "bronze.stocks_trades: stream MARKET" in lines[1] and "stocks_quotes: str" in lines[2]
    assert lines[0].startswith("warning 3 tables have no commit, no writer and no message")
    assert lines[0].endswith(", ".join(unfed)), lines[0]


def test_status_consumer_names_are_whole_at_80_columns() -> None:
    """The consumers table at 80 columns (the compose log, cron): names were cut to
    `bronze.fu…` and `lake_bron…`, so the lagging consumer could not be told (newuser5)."""
    from rich.console import Console

    from iceberg_lake.cli.output import print_status
    from iceberg_lake.ops.status import ConsumerStatus, LakeStatus

    names = [("bronze.futures_mbp10", "lake_bronze_futures_mbp10"),
             ("bronze.futures_trades", "lake_bronze_futures_trades")]  # fmt: skip
    report = LakeStatus(
        tables=[],
        consumers=[
            ConsumerStatus(table, "MARKET", consumer, True, pending=12_345 * i)
            for i, (table, consumer) in enumerate(names)
        ],
        nats="ok",
    )
    console = Console(width=80, record=True, force_terminal=False)
    print_status(report, console)
    text = console.export_text()
    assert "…" not in text, text
    for table, consumer in names:
        assert f"{table}: consumer {consumer} on MARKET" in text, text
    assert "lag 12345, pending 12345" in text, text


def test_installed_lake_status_executable_reports_json(tmp_path: Path) -> None:
    exe = shutil.which("lake") or str(Path(sys.executable).parent / "lake")
    url = f"nats://127.0.0.1:{free_port()}"
    env = {**os.environ, **_env(tmp_path, url)}
    LakeCatalog(load_settings(_env(tmp_path, url))).init()
    done = subprocess.run(
        [exe, "status", "--json", "--nats-timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["nats"].startswith("unreachable")
    assert report["consumers"] == []
    assert {t["table"] for t in report["tables"]} >= {TABLE, "silver.stocks_trades"}
    assert any(t["table"] == TABLE and t["rows"] == 0 for t in report["tables"])


def test_status_events_ahead_of_now_show_fresh_0_and_a_clock_warning(tmp_path: Path) -> None:
    """Budget: about 5 s, no NATS. A table whose newest event is in 2200 (a wrong clock): its
    freshness is 0, never negative; how far ahead goes into `events_ahead_seconds` and a
    warning line. A table of past events gets neither."""
    from table_rows import make_rows

    url = f"nats://127.0.0.1:{free_port()}"
    env = {**_env(tmp_path, url), "COLUMNS": "250"}
    lake = LakeCatalog(load_settings(env))
    lake.init()
    future_ns = 7_258_118_400_000_000_000  # 2200-01-01T00:00:00Z
    table = lake.load_table(TABLE)
    rows = make_rows(table, 0, 3)
    ts = [future_ns + k for k in range(3)]
    rows = rows.set_column(
        rows.schema.get_field_index("ts_event_ns"),
        rows.schema.field("ts_event_ns"),
        pa.array(ts, pa.int64()),
    )
    event = rows.schema.field("ts_event")
    rows = rows.set_column(
        rows.schema.get_field_index("ts_event"),
        event,
        pa.array([t // 1000 for t in ts], pa.timestamp("us")).cast(event.type),
    )
    table.append(rows)
    past = lake.load_table("bronze.futures_trades")
    past.append(make_rows(past, 0, 3, "ESZ5"))

    report = collect_status(lake, nats_timeout=1)
    by_table = {t.table: t for t in report.tables}
    ahead = by_table[TABLE]
    assert ahead.committed_freshness_seconds == 0.0
    assert ahead.events_ahead_seconds is not None and ahead.events_ahead_seconds > 5e9
    assert ahead.live_warning is not None
    assert "2200-01-01T00:00:00.000Z" in ahead.live_warning
    assert "ahead of now" in ahead.live_warning and "clock" in ahead.live_warning
    behind = by_table["bronze.futures_trades"]
    assert behind.committed_freshness_seconds is not None
    assert behind.committed_freshness_seconds > 0
    assert behind.events_ahead_seconds is None and behind.live_warning is None

    tables = {t["table"]: t for t in json.loads(report.to_json())["tables"]}
    assert tables[TABLE]["committed_freshness_seconds"] == 0.0
    assert tables[TABLE]["events_ahead_seconds"] > 5e9
    assert all((t["committed_freshness_seconds"] or 0) >= 0 for t in tables.values())
    text = runner.invoke(app, ["status", "--nats-timeout", "1"], env=env)
    assert text.exit_code == 0, text.output
    assert "warning" in text.output and "ahead of now" in text.output, text.output
    assert "-2" not in text.output.replace("2200-01-01", ""), text.output
