"""The incremental mark under concurrent Silver runs: a compare-and-swap on the mark read.

A run pinned to an older Bronze snapshot (`--as-of`) lowers the incremental mark so the next
incremental run catches up (docs/silver.md). When it commits while an incremental run is between
its planning and its own commit, the incremental run must not raise the mark over it (pyiceberg's
conflict retry would re-apply the property): its commit requires the mark it read, fails, and the
run plans again from the lowered mark. A real lake (SQLite catalog, local warehouse), the pinned
run injected at the incremental run's commit. Budget: ~6 s, no servers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_silver_evolution import (
    BRONZE,
    DAY,
    MIN_NS,
    SILVER,
    T0,
    TRADES,
    append,
    expected,
    silver_rows,
    trade,
)

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import CommitConflictError
from iceberg_lake.ops.maintenance import TableMaintenance
from iceberg_lake.silver import commit as silver_commit
from iceberg_lake.silver import compactor as silver_compactor
from iceberg_lake.silver.commit import advance_mark, lower_mark
from iceberg_lake.silver.compactor import SilverCompactor

pytestmark = pytest.mark.integration

DAY_NS = 86_400 * 10**9


def _mark(lake: LakeCatalog) -> str | None:
    return lake.load_table(SILVER).properties.get(P.SILVER_INCREMENTAL_SOURCE)


def _current(lake: LakeCatalog, identifier: str = BRONZE) -> int:
    snap = lake.load_table(identifier).current_snapshot()
    assert snap is not None
    return snap.snapshot_id


def _lake(tmp_path: Path) -> tuple[LakeCatalog, int, list[dict[str, Any]]]:
    """SPY and QQQ at s1, more SPY after; Silver compacted incrementally up to date."""
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.init()
    first = [trade(T0 + i * MIN_NS, seq=i, sym="SPY") for i in range(5)]
    first += [trade(T0 + i * MIN_NS, seq=100 + i, sym="QQQ") for i in range(5)]
    append(lake.load_table(BRONZE), first)
    s1 = _current(lake)
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    later = [trade(T0 + 30 * MIN_NS + i, seq=200 + i, sym="SPY") for i in range(5)]
    append(lake.load_table(BRONZE), later)
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    assert _mark(lake) == str(_current(lake))
    return lake, s1, first + later


def _pinned_run_inside(
    monkeypatch: pytest.MonkeyPatch, lake: LakeCatalog, s1: int, target: Any, name: str
) -> list[str | None]:
    """Make `target.name` first run an operator's SPY run pinned to `s1`; return the marks seen."""
    real = getattr(target, name)
    seen: list[str | None] = []
    started: list[bool] = []

    def interleaved(*args: Any, **kwargs: Any) -> Any:
        if not started:  # once (the pinned run commits through the same function)
            started.append(True)
            with SilverCompactor(lake) as other:
                res = other.compact_date(DAY, TRADES, partition_value="SPY", as_of=s1)
            assert res.status == "success"
            seen.append(_mark(lake))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, interleaved)
    return seen


def test_a_pinned_run_at_the_incremental_commit_is_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, s1, rows = _lake(tmp_path)
    more = [trade(T0 + 40 * MIN_NS + i, seq=300 + i, sym="QQQ") for i in range(5)]
    append(lake.load_table(BRONZE), more)  # the incremental run has QQQ to compact
    seen = _pinned_run_inside(monkeypatch, lake, s1, silver_commit.SilverCommit, "commit")
    with SilverCompactor(lake) as c:
        res = c.compact_incremental([TRADES])[0]
    monkeypatch.undo()
    assert seen == [str(s1)]  # the pinned run lowered the mark before the incremental commit
    # The incremental commit failed its compare-and-swap and re-planned from s1: SPY caught up.
    assert res.status == "success" and sorted(res.replaced_partitions) == [
        ["QQQ", "2025-12-16T14"],
        ["SPY", "2025-12-16T14"],
    ]
    assert _mark(lake) == str(_current(lake))
    assert silver_rows(lake) == expected(rows + more)
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "unchanged"


def test_a_pinned_run_before_the_mark_advances_is_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, s1, rows = _lake(tmp_path)
    # Only a Bronze rewrite since the mark: the incremental run just advances the mark.
    append(lake.load_table(BRONZE), [rows[0]])  # a redelivered duplicate: a second small file
    with SilverCompactor(lake) as c:
        c.compact_incremental([TRADES])
    done = TableMaintenance(lake, BRONZE).compact_files(
        older_than=timedelta(hours=1), now=datetime(2025, 12, 17, tzinfo=UTC)
    )
    assert done.snapshot_id is not None
    seen = _pinned_run_inside(monkeypatch, lake, s1, silver_compactor, "advance_mark")
    with SilverCompactor(lake) as c:
        res = c.compact_incremental([TRADES])[0]
    monkeypatch.undo()
    assert seen == [str(s1)]
    assert res.status == "success" and res.replaced_partitions == [["SPY", "2025-12-16T14"]]
    assert _mark(lake) == str(_current(lake))
    assert silver_rows(lake) == expected(rows)


def test_two_pinned_runs_keep_the_lower_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pinned run of QQQ at s2 commits after an SPY run pinned to s1 lowered the mark to s1.

    Without a compare-and-swap on the lowering, the QQQ run set the mark to s2 over it, and
    the SPY rows Bronze gained between s1 and s2 were never compacted: the next incremental run
    looked only after s2.
    """
    lake, s1, rows = _lake(tmp_path)
    s2 = _current(lake)  # SPY's later rows are in
    more = [trade(T0 + 40 * MIN_NS + i, seq=300 + i, sym="QQQ") for i in range(5)]
    append(lake.load_table(BRONZE), more)
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    assert _mark(lake) == str(_current(lake))
    seen = _pinned_run_inside(monkeypatch, lake, s1, silver_commit.SilverCommit, "commit")
    with SilverCompactor(lake) as c:
        res = c.compact_date(DAY, TRADES, partition_value="QQQ", as_of=s2)
    monkeypatch.undo()
    assert seen == [str(s1)] and res.status == "success"
    assert _mark(lake) == str(s1)  # the QQQ run re-planned and left the lower mark alone
    with SilverCompactor(lake) as c:
        res = c.compact_incremental([TRADES])[0]
    assert res.status == "success" and sorted(res.replaced_partitions) == [
        ["QQQ", "2025-12-16T14"],
        ["SPY", "2025-12-16T14"],
    ]
    assert silver_rows(lake) == expected(rows + more)


def test_a_pinned_all_dates_run_whose_first_day_is_unchanged_lowers_the_mark(
    tmp_path: Path,
) -> None:
    """The mark's compare-and-swap follows the run's own commits only: a first day with every
    partition unchanged commits nothing, so the next day's commit still expects the mark as
    read (found by review: the run failed every attempt on a mark nobody had set)."""
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.init()
    day1 = [trade(T0 + i * MIN_NS, seq=i) for i in range(5)]
    day2 = [trade(T0 + DAY_NS + i * MIN_NS, seq=100 + i) for i in range(5)]
    append(lake.load_table(BRONZE), day1 + day2)
    s1 = _current(lake)
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    late = [trade(T0 + DAY_NS + 30 * MIN_NS + i, seq=200 + i) for i in range(5)]
    append(lake.load_table(BRONZE), late)  # only day 2 changes after s1
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    assert _mark(lake) == str(_current(lake))
    with SilverCompactor(lake) as c:
        res = c.compact_all_dates(TRADES, snapshot_id=s1)
    assert [r.status for r in res] == ["unchanged", "success"]
    assert _mark(lake) == str(s1)
    with SilverCompactor(lake) as c:  # and the next incremental run catches day 2 up
        assert c.compact_incremental([TRADES])[0].status == "success"
    assert silver_rows(lake) == expected(day1 + day2 + late)


def test_advance_and_lower_mark_are_compare_and_swap(tmp_path: Path) -> None:
    """A stale table object (the mark read before another run's commit) cannot move the mark."""
    lake, s1, _rows = _lake(tmp_path)
    current = str(_current(lake))
    stale = lake.load_table(SILVER)
    advance_mark(
        lake.load_table(SILVER),
        {P.SILVER_INCREMENTAL_SOURCE: str(s1)},
        {P.SILVER_INCREMENTAL_SOURCE: current},
    )
    with pytest.raises(CommitConflictError, match="incremental mark changed"):
        advance_mark(
            stale, {P.SILVER_INCREMENTAL_SOURCE: current}, {P.SILVER_INCREMENTAL_SOURCE: current}
        )
    assert _mark(lake) == str(s1)

    # Spark's metadata-only lowering (`lower_mark`) never raises a mark lowered meanwhile.
    append(lake.load_table(BRONZE), [trade(T0 + 50 * MIN_NS, seq=400)])
    s3 = str(_current(lake))
    advance_mark(
        lake.load_table(SILVER),
        {P.SILVER_INCREMENTAL_SOURCE: s3},
        {P.SILVER_INCREMENTAL_SOURCE: str(s1)},
    )
    stale = lake.load_table(SILVER)  # reads s3
    advance_mark(
        lake.load_table(SILVER),
        {P.SILVER_INCREMENTAL_SOURCE: str(s1)},
        {P.SILVER_INCREMENTAL_SOURCE: s3},
    )
    bronze = lake.load_table(BRONZE)
    s2 = bronze.snapshot_by_id(int(current))
    assert s2 is not None
    lower_mark(bronze, stale, s2)  # s2 is older than s3 (what `stale` read), newer than s1
    assert _mark(lake) == str(s1)
