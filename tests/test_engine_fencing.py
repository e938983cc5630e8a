"""Guard test: the watermark compare-and-swap requirement (`engine.iceberg.require_properties`).

Relies on pyiceberg validating commit requirements in-process (SQL catalog) on every attempt,
including its own conflict retry, and not retrying a `ValidationException`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.exceptions import ValidationException
from test_ingest_watermark import rows

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import require_properties

TABLE = "bronze.stocks_trades"
KEY = "lake.watermark.MARKET.lake_bronze_stocks_trades"


def test_stale_writer_cannot_move_the_watermark(tmp_path: Path) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings).init()
    a = LakeCatalog(settings).load_table(TABLE)
    b = LakeCatalog(settings).load_table(TABLE)  # stale after a's commit

    with a.transaction() as tx:
        require_properties(tx, {KEY: None})
        tx.set_properties({KEY: "10"})
        tx.append(rows(3, 0))

    # b still believes the watermark is absent: pyiceberg's conflict retry refreshes the base
    # and re-applies b's property update; the requirement must stop it there.
    with pytest.raises(ValidationException, match="this writer expected"):
        with b.transaction() as tx:
            require_properties(tx, {KEY: None})
            tx.set_properties({KEY: "20"})
            tx.append(rows(2, 3))

    fresh = LakeCatalog(settings).load_table(TABLE)
    assert fresh.properties[KEY] == "10"
    assert fresh.scan().to_arrow().num_rows == 3
    assert len(fresh.metadata.snapshots) == 1

    # A writer that saw "10" commits.
    with fresh.transaction() as tx:
        require_properties(tx, {KEY: "10"})
        tx.set_properties({KEY: "20"})
        tx.append(rows(2, 3))
    assert LakeCatalog(settings).load_table(TABLE).properties[KEY] == "20"


def test_watermarked_append_with_expected_fences_a_stale_writer(tmp_path: Path) -> None:
    from iceberg_lake.engine.iceberg import watermarked_append

    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings).init()
    a = LakeCatalog(settings).load_table(TABLE)
    b = LakeCatalog(settings).load_table(TABLE)
    with watermarked_append(a, watermark={KEY: "10"}, expected={KEY: None}) as app:
        app.append(rows(3, 0))
    with pytest.raises(ValidationException, match="this writer expected"):
        with watermarked_append(b, watermark={KEY: "20"}, expected={KEY: None}) as app:
            app.append(rows(2, 3))
    fresh = LakeCatalog(settings).load_table(TABLE)
    assert fresh.properties[KEY] == "10"
    assert fresh.scan().to_arrow().num_rows == 3


def test_partition_replacement_with_expected_properties_is_a_compare_and_swap(
    tmp_path: Path,
) -> None:
    """Silver's overwrite commit (`PartitionReplacement`) takes the same requirement: a stale
    writer's commit fails on pyiceberg's conflict retry (its base is re-read) and adds nothing."""
    from pyiceberg.expressions import AlwaysTrue

    from iceberg_lake.engine.iceberg import PartitionReplacement
    from iceberg_lake.exceptions import CommitConflictError

    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings).init()
    a = LakeCatalog(settings).load_table(TABLE)
    b = LakeCatalog(settings).load_table(TABLE)  # stale after a's commit
    with a.transaction() as tx:
        tx.set_properties({KEY: "10"})

    stale = PartitionReplacement(b, {}, table_properties={KEY: "20"})
    stale.expected_properties = {KEY: None}
    stale.replace(AlwaysTrue(), rows(2, 0), [])
    with pytest.raises(CommitConflictError, match="this writer expected"):
        stale.commit()
    fresh = LakeCatalog(settings).load_table(TABLE)
    assert fresh.properties[KEY] == "10" and fresh.current_snapshot() is None

    current = PartitionReplacement(fresh, {}, table_properties={KEY: "20"})
    current.expected_properties = {KEY: "10"}
    current.replace(AlwaysTrue(), rows(2, 0), [])
    assert current.commit() is not None
    assert LakeCatalog(settings).load_table(TABLE).properties[KEY] == "20"
