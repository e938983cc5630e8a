"""Guard test: a ref commit on a snapshot expired meanwhile (`engine.iceberg.require_snapshots`).

Relies on pyiceberg's SQL catalog validating commit requirements against the *current*
metadata before it applies the updates, and on `SetSnapshotRefUpdate` refusing an unknown
snapshot with a bare `ValueError` when there is no requirement (what the lake's tag, replay pin
and Silver-source commits used to fail with). Budget: ~2 s, no servers.
"""

from __future__ import annotations

import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table.update.snapshot import ManageSnapshots
from timetravel_data import T14, append, trades

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.iceberg import expire_snapshot_ids, require_snapshots

TABLE = "bronze.stocks_trades"


def test_a_tag_on_a_snapshot_expired_meanwhile_fails_as_a_commit_conflict(
    lake: LakeCatalog,
) -> None:
    first = append(lake.load_table(TABLE), trades("SPY", T14, 3, 10**9))
    stale = lake.load_table(TABLE)  # two taggers read `first`
    stale_too = lake.load_table(TABLE)
    append(lake.load_table(TABLE), trades("SPY", T14, 3, 10**9, seq0=5))
    expire_snapshot_ids(lake.load_table(TABLE), [first])

    # Without the requirement: pyiceberg's own bare ValueError (why the requirement exists).
    with pytest.raises(ValueError, match="unknown snapshot"):
        with stale.transaction() as tx:
            ManageSnapshots(tx).create_tag(first, "t-plain").commit()

    with pytest.raises(CommitFailedException, match=f"snapshot {first} was expired"):
        with stale_too.transaction() as tx:
            require_snapshots(tx, [first])
            ManageSnapshots(tx).create_tag(first, "t-required").commit()

    table = lake.load_table(TABLE)
    assert "t-plain" not in table.metadata.refs and "t-required" not in table.metadata.refs

    # A snapshot that still exists: the requirement holds and the tag lands.
    current = table.current_snapshot()
    assert current is not None
    with table.transaction() as tx:
        require_snapshots(tx, [current.snapshot_id])
        ManageSnapshots(tx).create_tag(current.snapshot_id, "t-ok").commit()
    assert lake.load_table(TABLE).metadata.refs["t-ok"].snapshot_id == current.snapshot_id
