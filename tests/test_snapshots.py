"""Tags, snapshot listing and `as_of` resolution (`timetravel.snapshots`, `lake snapshot`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from timetravel_data import HOUR_NS, T14, append, trades
from typer.testing import CliRunner

from iceberg_lake.cli.app import app
from iceberg_lake.exceptions import TimeTravelError, UnknownTableError
from iceberg_lake.timetravel import snapshots

TRADES = "bronze.stocks_trades"


def test_tag_pins_current_snapshots_and_is_never_moved_silently(lake) -> None:
    settings, catalog = lake.settings, lake
    first = append(catalog.load_table(TRADES), trades("SPY", T14, 5, 10**9))

    pins = snapshots.create_tag(settings, "bt-1", [TRADES, "silver.stocks_trades"])
    assert pins == {TRADES: first, "silver.stocks_trades": None}

    second = append(catalog.load_table(TRADES), trades("SPY", T14 + HOUR_NS, 5, 10**9))
    table = catalog.load_table(TRADES)
    assert snapshots.resolve_as_of(table, "bt-1") == first
    assert snapshots.resolve_as_of(table, None) == second
    assert snapshots.list_tags(table) == {"bt-1": first}
    # A mistyped time is named as one, not as a missing tag (newuser5).
    with pytest.raises(TimeTravelError, match="'2025-13-45' is not a valid time"):
        snapshots.resolve_as_of(table, "2025-13-45")

    with pytest.raises(TimeTravelError, match="already exists"):
        snapshots.create_tag(settings, "bt-1", [TRADES])
    assert snapshots.resolve_as_of(catalog.load_table(TRADES), "bt-1") == first
    # A run stopped half-way: the refusal names the tables still to tag.
    with pytest.raises(TimeTravelError, match=r"not on bronze\.stocks_quotes \(tag those"):
        snapshots.create_tag(settings, "bt-1", [TRADES, "bronze.stocks_quotes"])
    assert "bt-1" not in snapshots.list_tags(catalog.load_table("bronze.stocks_quotes"))

    assert snapshots.create_tag(settings, "bt-1", [TRADES], replace=True) == {TRADES: second}
    assert snapshots.remove_tag(settings, "bt-1") == [TRADES, "silver.stocks_trades"]
    assert snapshots.list_tags(catalog.load_table(TRADES)) == {}


def test_tag_of_an_empty_table_reads_empty_and_survives_later_appends(lake) -> None:
    settings, catalog = lake.settings, lake
    assert snapshots.create_tag(settings, "before", [TRADES]) == {TRADES: None}
    append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    table = catalog.load_table(TRADES)
    assert snapshots.resolve_as_of(table, "before") is None
    assert snapshots.list_tags(table) == {"before": None}
    # Tagging again once data exists turns the empty marker into a real Iceberg tag.
    pins = snapshots.create_tag(settings, "before", [TRADES], replace=True)
    table = catalog.load_table(TRADES)
    assert snapshots.resolve_as_of(table, "before") == pins[TRADES] is not None
    assert table.snapshot_by_name("before") is not None


def test_resolve_snapshot_ids_timestamps_and_clear_errors(lake, monkeypatch) -> None:
    # Times a moment after these commits: the settle margin is tested in test_retention.
    monkeypatch.setattr(snapshots, "SETTLE_MS", 0)
    _settings, catalog = lake.settings, lake
    before = datetime.now(UTC) - timedelta(days=1)
    first = append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    second = append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9, seq0=10))
    table = catalog.load_table(TRADES)
    first_ms = table.snapshot_by_id(first).timestamp_ms

    assert snapshots.resolve_as_of(table, first) == first
    assert snapshots.resolve_as_of(table, str(first)) == first
    assert snapshots.resolve_as_of(table, before) is None  # before the first snapshot: empty
    at_first = datetime.fromtimestamp(first_ms / 1000, tz=UTC)
    assert snapshots.resolve_as_of(table, at_first) == first
    assert snapshots.resolve_as_of(table, datetime.now(UTC).isoformat()) == second

    with pytest.raises(TimeTravelError, match="no snapshot 123"):
        snapshots.resolve_as_of(table, 123)
    with pytest.raises(TimeTravelError, match="no tag or snapshot 'nope'"):
        snapshots.resolve_as_of(table, "nope")
    for bad in ("main", "12345", "2025-12-16", "has space"):
        with pytest.raises(TimeTravelError, match="invalid tag name"):
            snapshots.create_tag(catalog, bad, [TRADES])
    with pytest.raises(UnknownTableError):
        snapshots.create_tag(catalog, "ok", ["bronze.nope"])


def test_list_snapshots_shows_operation_rows_tags_and_lake_properties(lake) -> None:
    settings, catalog = lake.settings, lake
    table = catalog.load_table(TRADES)
    from timetravel_data import to_arrow

    table.append(
        to_arrow(table, trades("SPY", T14, 4, 10**9)),
        snapshot_properties={"lake.stream": "MARKET", "lake.last-stream-seq": "42"},
    )
    append(catalog.load_table(TRADES), trades("QQQ", T14, 2, 10**9))
    snapshots.create_tag(settings, "cite-me", [TRADES])

    rows = snapshots.list_snapshots(catalog.load_table(TRADES))
    assert [r["operation"] for r in rows] == ["append", "append"]
    assert [r["added_records"] for r in rows] == [4, 2]
    assert [r["total_records"] for r in rows] == [4, 6]
    assert rows[0]["properties"] == {"lake.stream": "MARKET", "lake.last-stream-seq": "42"}
    assert rows[1]["tags"] == ["cite-me"] and rows[1]["current"] and not rows[0]["current"]


def test_expiring_snapshots_never_removes_a_tagged_one(lake) -> None:
    settings, catalog = lake.settings, lake
    tagged = append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    snapshots.create_tag(settings, "keep", [TRADES])
    middle = append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9, seq0=5))
    last = append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9, seq0=9))

    table = catalog.load_table(TRADES)
    assert snapshots.tagged_snapshot_ids(table) == {tagged, last}  # tag + main branch head
    table.maintenance.expire_snapshots().by_ids([middle]).commit()
    table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
    table = catalog.load_table(TRADES)
    assert {s.snapshot_id for s in table.snapshots()} == {tagged, last}
    assert snapshots.resolve_as_of(table, "keep") == tagged


def test_cli_snapshot_tag_list_and_errors(lake, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, catalog = lake.settings, lake
    monkeypatch.setenv("LAKE_DATA_DIR", str(settings.data_dir))
    first = append(catalog.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    runner = CliRunner()

    tagged = runner.invoke(app, ["snapshot", "tag", "bt-cli", "--tables", TRADES, "-o", "json"])
    assert tagged.exit_code == 0, tagged.output
    assert json.loads(tagged.stdout) == [{"table": TRADES, "snapshot_id": first, "tag": "bt-cli"}]

    listed = runner.invoke(app, ["snapshot", "list", TRADES, "-o", "json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["snapshot_id"] == first and row["tags"] == ["bt-cli"]

    table = catalog.load_table(TRADES)
    with table.transaction() as tx:
        tx.set_properties({"lake.watermark.MARKET.lake_bronze_stocks_trades": "42"})
    text = runner.invoke(app, ["snapshot", "list", TRADES])
    assert text.exit_code == 0, text.output
    assert "lake.watermark.MARKET.lake_bronze_stocks_trades = 42" in text.stdout
    assert "bt-cli" in text.stdout and "append" in text.stdout

    overview = runner.invoke(app, ["snapshot", "list"])
    assert overview.exit_code == 0 and "bt-cli" in overview.stdout

    again = runner.invoke(app, ["snapshot", "tag", "bt-cli", "--tables", TRADES])
    assert again.exit_code == 1
    assert "already exists" in again.stderr and "Traceback" not in again.output
    assert len(again.stderr.strip().splitlines()) == 1


def test_untag_and_tag_refuse_a_branch_and_leave_it(lake) -> None:
    """docs19: `lake snapshot untag main` removed the main branch of every table, exit 0."""
    settings, catalog = lake.settings, lake
    first = append(catalog.load_table(TRADES), trades("SPY", T14, 5, 10**9))
    catalog.load_table(TRADES).manage_snapshots().create_branch(first, "staging").commit()
    for name in ("main", "staging"):
        with pytest.raises(TimeTravelError, match=f"'{name}' is a branch of {TRADES}, not a tag"):
            snapshots.remove_tag(settings, name)
    with pytest.raises(TimeTravelError, match="'staging' is a branch"):
        snapshots.create_tag(settings, "staging", [TRADES], replace=True)
    table = catalog.load_table(TRADES)
    assert table.current_snapshot().snapshot_id == first
    assert table.metadata.refs["staging"].snapshot_id == first
    out = CliRunner().invoke(
        app, ["snapshot", "untag", "main"], env={"LAKE_DATA_DIR": str(settings.data_dir)}
    )
    assert out.exit_code == 1 and "'main' is a branch" in out.output
    assert catalog.load_table(TRADES).scan().count() == 5
