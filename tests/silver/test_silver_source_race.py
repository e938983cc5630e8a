"""Silver's source tag against a concurrent expiry (`snapshots.protect_silver_source`).

A compaction reads a Bronze snapshot; just before its Silver commit tags that snapshot, a
writer appends and an expiry removes it (injected there, as in the concurrency audit). The
compaction fails with one line that says to compact again (docs/time-travel.md), commits
nothing to Silver and leaves no new file behind; compacting again catches up. A real lake
(SQLite catalog, local warehouse). Budget: ~4 s, no servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_silver_evolution import BRONZE, MIN_NS, SILVER, T0, TRADES, append, expected, trade
from test_silver_evolution import silver_rows as _silver_rows

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import expire_snapshot_ids
from iceberg_lake.silver import commit as silver_commit
from iceberg_lake.silver.compactor import SilverCompactor

pytestmark = pytest.mark.integration


def _current(lake: LakeCatalog, identifier: str) -> int | None:
    snap = lake.load_table(identifier).current_snapshot()
    return snap.snapshot_id if snap else None


def _files(lake: LakeCatalog) -> set[str]:
    root = Path(lake.load_table(SILVER).location().removeprefix("file://"))
    return {str(p) for p in root.rglob("*") if p.is_file()}


def test_source_expired_before_the_silver_commit_fails_cleanly_and_compacting_again_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(tmp_path / "data")}))
    lake.init()
    rows = [trade(T0 + i * MIN_NS, seq=i) for i in range(5)]
    append(lake.load_table(BRONZE), rows)
    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    more = [trade(T0 + 20 * MIN_NS + i, seq=100 + i, sym="QQQ") for i in range(5)]
    append(lake.load_table(BRONZE), more)
    source = _current(lake, BRONZE)
    silver_before, files_before = _current(lake, SILVER), _files(lake)

    real = silver_commit.protect_silver_source
    late = [trade(T0 + 30 * MIN_NS + i, seq=200 + i) for i in range(3)]
    injected: list[int] = []

    def protect(bronze: Any, snapshot_id: int, **kwargs: Any) -> str:
        """The real protection, with the writer and the expiry right after its own read."""
        catalog = bronze.catalog
        load = catalog.load_table

        def load_then_expire(*args: Any, **kw: Any) -> Any:
            table = load(*args, **kw)
            if not injected:
                injected.append(snapshot_id)  # once (the interleaving loads Bronze too)
                append(lake.load_table(BRONZE), late)
                expire_snapshot_ids(lake.load_table(BRONZE), [snapshot_id])
            return table

        monkeypatch.setattr(catalog, "load_table", load_then_expire)
        return real(bronze, snapshot_id, **kwargs)

    monkeypatch.setattr(silver_commit, "protect_silver_source", protect)
    with SilverCompactor(lake) as c:
        (res,) = c.compact_incremental([TRADES])
    monkeypatch.undo()
    assert injected == [source]
    assert res.status == "error" and res.error is not None
    assert f"no snapshot {source}" in res.error and res.error.endswith("compact again")
    assert _current(lake, SILVER) == silver_before  # nothing committed half-way
    assert _files(lake) == files_before  # the run's new files were deleted

    with SilverCompactor(lake) as c:
        assert c.compact_incremental([TRADES])[0].status == "success"
    assert _silver_rows(lake) == expected(rows + more + late)
