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
from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.engine.iceberg import _FastAppendTransaction
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
    # The writer commits through `engine.iceberg.watermarked_append`, i.e. this transaction.
    transaction = _FastAppendTransaction if memo else Transaction
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    LakeCatalog(settings).init()
    a = LakeCatalog(settings).load_table(TABLE)
    b = LakeCatalog(settings).load_table(TABLE)  # will be stale after a's commit

    with transaction(a) as tx:
        tx.set_properties({"lake.watermark.MARKET.a": "10"})
        tx.append(rows(3, 0), snapshot_properties={properties.LAST_STREAM_SEQ: "10"})
    assert len(a.metadata.snapshots) == 1

    with transaction(b) as tx:  # CommitFailed inside, retried by pyiceberg on a fresh base
        tx.set_properties({"lake.watermark.MARKET.b": "20"})
        tx.append(rows(2, 3), snapshot_properties={properties.LAST_STREAM_SEQ: "20"})

    fresh = LakeCatalog(settings).load_table(TABLE)
    assert fresh.properties["lake.watermark.MARKET.a"] == "10"
    assert fresh.properties["lake.watermark.MARKET.b"] == "20"
    snaps = fresh.metadata.snapshots
    assert len(snaps) == 2
    assert [s.summary[properties.LAST_STREAM_SEQ] for s in snaps] == ["10", "20"]
    assert fresh.scan().to_arrow().num_rows == 5
