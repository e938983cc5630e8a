"""Poison messages through a real nats-server and the real writers, and their re-drive.

1. Every poison case of issue 11 is published between valid messages on every subject (and on
   an unmapped subject for the inference consumer), with a batched message carrying one bad
   event: every valid event is stored exactly once, every poison message or event is in
   `bronze.dead_letters` with a precise reason and its bytes, and the service never stops.
2. A message dead-lettered for a rule that was relaxed since (a column widened from int to
   long) is re-driven by `lake dead-letters replay` exactly once.

Budget: ~25 s (one nats-server per test, SQLite catalog, file warehouse).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from ingest_support import (
    SUBJECTS,
    count_rows,
    encode,
    gold_payload,
    make_event,
    publish,
    run_until_idle,
    scan_sql,
    settings_env,
    settings_for,
    wait_stream,
)
from poison_cases import GOLD, INT64_MAX_TEXT, poison_messages
from pyiceberg.types import LongType
from typer.testing import CliRunner

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.ingest.redrive import redrive
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

ALL_SUBJECTS = {**SUBJECTS, GOLD: "levels.signals"}
UNMAPPED = "market.raw"  # the inference consumer routes it (stocks trades here)


def _good(table: str, i: int) -> dict:
    return gold_payload(i) if table == GOLD else make_event(table, i)


def test_every_poison_case_on_every_subject_is_dead_lettered_and_the_rest_stored_once(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    settings = settings_for(tmp_path, nats.url)
    items = []
    expected_rows: Counter[str] = Counter()
    expected_dead: dict[tuple[str, bytes], tuple[str, int | None]] = {}
    feeds = [*ALL_SUBJECTS.items(), ("bronze.stocks_trades", UNMAPPED)]
    for f, (table, subject) in enumerate(feeds):
        base = 1000 * (f + 1)  # distinct seq/ts per feed: the unmapped feed shares a table
        per_row = 2 if table == GOLD else 1
        cases = poison_messages(table, base)
        for n, (_, body, reason) in enumerate(cases):
            items.append((subject, encode(_good(table, base + 2 * n)), None))
            items.append((subject, body, None))
            expected_dead[(subject, body)] = (reason, None)
            expected_rows[table] += per_row
        # A batch with one bad event: the event is dead-lettered, its neighbours stored.
        bad = {**_good(table, base + 500), "ts" if table == GOLD else "seq": 2**63}
        batch = [_good(table, base + 501), bad, _good(table, base + 502)]
        items.append((subject, encode(batch), None))
        why = "plausible Unix time in milliseconds" if table == GOLD else INT64_MAX_TEXT
        expected_dead[(subject, encode(bad).replace(b" ", b""))] = (why, 1)
        expected_rows[table] += 2 * per_row
    publish(settings, items)
    wait_stream(settings, "MARKET", sum(1 for s, _, _ in items if s.startswith("market.")))

    # Any escaping exception would end run() with it: the writers must stay up throughout.
    service = run_until_idle(settings, [*ALL_SUBJECTS, "inferred"])
    assert all(w.commit_task is None or w.commit_task.done() for w in service.writers)

    for table, rows in expected_rows.items():
        assert count_rows(duck, settings, table) == rows, table
        key = "level_id" if table == GOLD else "source"  # ts_event_ns is unique per event
        dupes = duck.sql(
            f"SELECT count(*) - count(DISTINCT (ts_event_ns, {key})) "
            f"FROM {scan_sql(settings, table)}"
        ).fetchone()[0]
        assert dupes == 0, table
    dead = duck.sql(
        "SELECT subject, reason, raw, event_index, target_table "
        f"FROM {scan_sql(settings, 'bronze.dead_letters')}"
    ).fetchall()
    got = {(subject, bytes(raw)): (reason, event) for subject, reason, raw, event, _ in dead}
    assert len(dead) == len(got) == len(expected_dead)
    for key, (fragment, event) in expected_dead.items():
        assert key in got, key[0] + " " + key[1][:60].decode("utf-8", "replace")
        reason, got_event = got[key]
        assert got_event == event
        assert fragment and fragment in reason, (key[0], reason)
        assert "unknown field" not in reason


def test_a_dead_letter_for_a_since_relaxed_rule_is_redriven_exactly_once(
    tmp_path: Path, nats: NatsServer, duck
) -> None:
    table = "bronze.stocks_trades"
    settings = settings_for(tmp_path, nats.url)
    env = settings_env(settings)
    runner = CliRunner()
    big = {**make_event(table, 2), "size": 3_000_000_000}  # above the spec's int32
    items = [
        ("market.stocks.trades", encode(make_event(table, 1)), None),
        ("market.stocks.trades", encode(big), None),
        ("market.stocks.trades", encode([make_event(table, 3), {**big, "seq": 4}]), None),
        ("market.stocks.trades", b'{"truncated": ', None),
    ]
    publish(settings, items)
    wait_stream(settings, "MARKET", len(items))
    run_until_idle(settings, [table])
    assert count_rows(duck, settings, table) == 2

    listed = runner.invoke(app, ["dead-letters", "list", "-t", table, "-o", "json"], env=env)
    assert listed.exit_code == 0, listed.output
    letters = json.loads(listed.output)
    assert [(d["event_index"], d["redriven"]) for d in letters] == [
        (None, False),
        (1, False),
        (None, False),
    ]
    assert "<= 2147483647" in letters[0]["reason"] and json.loads(letters[1]["raw"])["seq"] == 4

    # Today's rules still refuse them: nothing is appended.
    report = redrive(LakeCatalog(settings), table)
    assert report.count("still-failing") == 3 and report.rows == 0

    # Relax the rule: the column is widened to long (a schema change a migration could make).
    lake = LakeCatalog(settings)
    with lake.load_table(table).update_schema() as update:
        update.update_column("size", LongType())
    dry = redrive(lake, table, dry_run=True)
    assert dry.count("would-redrive") == 2 and count_rows(duck, settings, table) == 2

    # Two replays at once (as two operators might): each dead letter is appended once.
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: redrive(LakeCatalog(settings), table), range(2)))
    assert sorted(r.count("redriven") for r in reports) == [0, 2]
    assert sorted(r.count("already-redriven") for r in reports) == [0, 2]
    rows = duck.sql(f"SELECT seq, size FROM {scan_sql(settings, table)} ORDER BY seq").fetchall()
    assert rows == [(1, 2), (2, 3_000_000_000), (3, 4), (4, 3_000_000_000)]
    stored = lake.load_table(table)
    seq = letters[0]["stream_seq"]
    assert stored.properties[f"{properties.REDRIVEN_PREFIX}MARKET"] == f"{seq},{seq + 1}.1"
    summary = stored.current_snapshot().summary
    assert summary[properties.LAKE_OPERATION] == properties.REDRIVE
    assert summary[properties.REDRIVEN_IDS] == f"MARKET:{seq},{seq + 1}.1"

    again = runner.invoke(app, ["dead-letters", "replay", "-o", "json"], env=env)
    assert again.exit_code == 0, again.output
    statuses = Counter(o["status"] for o in json.loads(again.output))
    assert statuses == {"already-redriven": 2, "still-failing": 1}
    text = runner.invoke(app, ["dead-letters", "replay", "-t", table], env=env)
    assert text.exit_code == 0, text.output
    assert "re-driven: 0 (0 rows), still failing: 1, already re-driven: 2" in text.output
    assert count_rows(duck, settings, table) == 4
    listed = runner.invoke(app, ["dead-letters", "list", "--since", "1h", "-o", "json"], env=env)
    assert [d["redriven"] for d in json.loads(listed.output)] == [True, True, False]
    bad = runner.invoke(app, ["dead-letters", "list", "--since", "yesterday-ish"], env=env)
    assert bad.exit_code == 1 and "invalid --since" in bad.output
