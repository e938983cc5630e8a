"""Tags against a concurrent expiry: `lake snapshot tag`, the replay pin, Silver's source tag.

Each reads a table, then (injected right after that read, as in the concurrency audit) a writer
appends and an expiry removes the snapshot just read, then the tag commits. The commit requires
the snapshot to still exist (`engine.iceberg.require_snapshots`), so instead of pyiceberg's bare
`ValueError: Cannot set ... to unknown snapshot` a tag of the current snapshot is retried on the
new current one, and a pin or a Silver-source tag raises its documented `TimeTravelError`.
A real lake (SQLite catalog, local warehouse). Budget: ~4 s, no servers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pyiceberg.exceptions import CommitFailedException
from timetravel_data import T14, append, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.engine.iceberg import expire_snapshot_ids
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel import snapshots

TRADES = "bronze.stocks_trades"


def _current(lake: LakeCatalog) -> int:
    snap = lake.load_table(TRADES).current_snapshot()
    assert snap is not None
    return snap.snapshot_id


def _append_and_expire(lake: LakeCatalog, seq0: int) -> tuple[int, int]:
    """A writer commits, then an expiry removes the snapshot that was current before."""
    old = _current(lake)
    new = append(lake.load_table(TRADES), trades("SPY", T14, 2, 10**9, seq0=seq0))
    expire_snapshot_ids(lake.load_table(TRADES), [old])
    assert lake.load_table(TRADES).snapshot_by_id(old) is None
    return old, new


def _after_first_load(
    monkeypatch: pytest.MonkeyPatch, target: Any, lake: LakeCatalog, seen: list[tuple[int, int]]
) -> None:
    """Make `target.load_table` run `_append_and_expire` right after its first load of TRADES."""
    real: Callable[..., Any] = target.load_table
    started: list[bool] = []

    def load_table(*args: Any, **kwargs: Any) -> Any:
        table = real(*args, **kwargs)
        ident = args[-1] if args else kwargs.get("identifier")
        name = ".".join(ident) if isinstance(ident, tuple) else str(ident)
        if not started and name == TRADES:
            started.append(True)  # once (the interleaving loads the table too)
            seen.append(_append_and_expire(lake, seq0=100))
        return table

    if isinstance(target, type):
        monkeypatch.setattr(target, "load_table", lambda self, *a, **k: load_table(self, *a, **k))
    else:
        monkeypatch.setattr(target, "load_table", load_table)


def test_cli_tag_of_the_current_snapshot_retries_on_the_new_current(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_DATA_DIR", str(lake.settings.data_dir))
    append(lake.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    seen: list[tuple[int, int]] = []
    _after_first_load(monkeypatch, LakeCatalog, lake, seen)
    result = CliRunner().invoke(app, ["snapshot", "tag", "bt-1", "--tables", TRADES, "-o", "json"])
    monkeypatch.undo()
    assert seen, "the interleaving did not run"
    (old, new) = seen[0]
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"table": TRADES, "snapshot_id": new, "tag": "bt-1"}]
    table = lake.load_table(TRADES)
    assert table.metadata.refs["bt-1"].snapshot_id == new != old
    assert snapshots.resolve_as_of(table, "bt-1") == new


def test_replay_pin_of_a_snapshot_expired_meanwhile_is_a_time_travel_error(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(lake.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    sid = _current(lake)  # the replay resolved it
    seen: list[tuple[int, int]] = []
    _after_first_load(monkeypatch, LakeCatalog, lake, seen)
    with pytest.raises(TimeTravelError, match=f"no snapshot {sid} to pin \\(expired\\)"):
        snapshots.pin_snapshots(lake, {TRADES: sid}, "replay-x", 1)
    monkeypatch.undo()
    assert seen and seen[0][0] == sid
    assert "replay-x" not in lake.load_table(TRADES).metadata.refs


def test_silver_source_tag_of_a_snapshot_expired_meanwhile_says_compact_again(
    lake: LakeCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(lake.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    bronze = lake.load_table(TRADES)
    sid = _current(lake)  # the compaction read it
    seen: list[tuple[int, int]] = []
    _after_first_load(monkeypatch, bronze.catalog, lake, seen)
    with pytest.raises(TimeTravelError, match=f"no snapshot {sid} .* compact again"):
        snapshots.protect_silver_source(bronze, sid)
    monkeypatch.undo()
    assert seen and seen[0][0] == sid
    assert snapshots.silver_source_tag(sid) not in lake.load_table(TRADES).metadata.refs


def test_refs_update_on_a_snapshot_expired_meanwhile_is_a_commit_conflict(
    lake: LakeCatalog,
) -> None:
    """The policy's refs commit (`maintain_refs`) tagging a Silver source another expiry removed
    since its read fails as a conflict its callers retry (not a bare `ValueError`)."""
    append(lake.load_table(TRADES), trades("SPY", T14, 3, 10**9))
    stale = lake.load_table(TRADES)
    old, _new = _append_and_expire(lake, seq0=100)
    with pytest.raises(CommitFailedException, match=f"snapshot {old} was expired"):
        snapshots.maintain_refs(stale, TRADES, checkpoint_max_age_ms=0, silver_sources={old})
    assert snapshots.silver_source_tag(old) not in lake.load_table(TRADES).metadata.refs
