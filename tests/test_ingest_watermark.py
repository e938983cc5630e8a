"""The watermark property rides in the append's transaction, also through a conflict retry."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from ingest_support import make_event
from pyiceberg.table import Transaction

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine.iceberg import watermarked_append
from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.tables import registry

TABLE = "bronze.stocks_trades"


def rows(n: int, start: int) -> pa.Table:
    d = registry().get(TABLE)
    c = TableCodec(TABLE, d.iceberg_schema(), d.partition_key)
    events = [make_event(TABLE, i) for i in range(start, start + n)]
    import json

    batch = c.decode([json.dumps(e).encode() for e in events], recv_ns=1)
    return batch.table.cast(c.arrow_schema)


@pytest.mark.parametrize("memo", [False, True], ids=["pyiceberg", "writer-transaction"])
def test_one_transaction_one_snapshot_and_conflict_retry_keeps_both(
    tmp_path: Path, memo: bool
) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings).init()
    a = LakeCatalog(settings).load_table(TABLE)
    b = LakeCatalog(settings).load_table(TABLE)  # will be stale after a's commit

    def commit(table, key: str, seq: str, data: pa.Table) -> None:  # noqa: ANN001
        if memo:
            summary = {properties.LAST_STREAM_SEQ: seq}
            with watermarked_append(
                table, watermark={key: seq}, snapshot_properties=summary
            ) as app:
                app.append(data)
        else:
            with Transaction(table) as tx:
                tx.set_properties({key: seq})
                tx.append(data, snapshot_properties={properties.LAST_STREAM_SEQ: seq})

    commit(a, "lake.watermark.MARKET.a", "10", rows(3, 0))
    assert len(a.metadata.snapshots) == 1

    # CommitFailed inside, retried by pyiceberg on a fresh base
    commit(b, "lake.watermark.MARKET.b", "20", rows(2, 3))

    fresh = LakeCatalog(settings).load_table(TABLE)
    assert fresh.properties["lake.watermark.MARKET.a"] == "10"
    assert fresh.properties["lake.watermark.MARKET.b"] == "20"
    snaps = fresh.metadata.snapshots
    assert len(snaps) == 2
    assert [s.summary[properties.LAST_STREAM_SEQ] for s in snaps] == ["10", "20"]
    assert fresh.scan().to_arrow().num_rows == 5
