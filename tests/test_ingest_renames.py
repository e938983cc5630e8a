"""Renaming a column while `lake serve` writes loses no value (real nats-server, real lake).

Producers keep sending the old field names after `lake table evolve --rename`: the writer reads
them into the renamed column (by field id, from the table's schema history), places rows it
decoded before the rename by field id, and never drops a decoded column silently. The stored
values are read back with pyarrow from the data files pyiceberg lists, columns matched by their
Parquet field ids (not through the lake's code). Budget: ~8 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from ingest_support import encode, make_event, publish_async, settings_for
from support.wait import await_until

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.ingest.decode import codec_for
from iceberg_lake.ingest.service import LakeService
from iceberg_lake.ingest.writer import ConsumerWriter
from iceberg_lake.schema.evolve import DropColumn, RenameColumn, evolve_table
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
SUBJECT = "market.stocks.trades"


def event(i: int) -> dict[str, Any]:
    """A trade whose `exchange` differs from its neighbours' (so a misplaced value shows)."""
    return {**make_event(TABLE, i), "exchange": 1 + i % 97, "conditions": f"c{i}"}


def stored_by_field_id(catalog: LakeCatalog, *names: str) -> list[tuple[Any, ...]]:
    """Rows of the current snapshot: the columns that are `names` in the current schema,
    read from every data file by Parquet field id (files written before a rename carry the
    old name)."""
    table = catalog.load_table(TABLE)
    ids = [table.schema().find_field(n).field_id for n in names]
    rows: list[tuple[Any, ...]] = []
    for task in table.scan().plan_files():
        data = pq.read_table(task.file.file_path.removeprefix("file://"))
        by_id = {
            int(f.metadata[b"PARQUET:field_id"]): data.column(i)
            for i, f in enumerate(data.schema)
            if f.metadata and b"PARQUET:field_id" in f.metadata
        }
        rows += zip(*(by_id[i].to_pylist() for i in ids), strict=True)
    return rows


def test_rename_while_serving_keeps_every_value(tmp_path: Path, nats: NatsServer) -> None:
    settings = settings_for(tmp_path, nats.url, LAKE_BRONZE_BATCH_SECONDS="0.2")
    total = 1200

    async def scenario() -> None:
        service = LakeService(settings, [TABLE])
        runner = asyncio.create_task(service.run())
        items = [(SUBJECT, encode(event(i)), None) for i in range(total)]
        publisher = asyncio.create_task(publish_async(settings, items, pace=400))
        try:
            await await_until(
                lambda: service.committed_events >= 200, 60, "first commits", alive=runner
            )
            # Both renames at once, as `lake table evolve --force` makes them: `seq` is also an
            # envelope field name.
            await asyncio.to_thread(
                evolve_table,
                LakeCatalog(settings).load_table(TABLE),
                TABLE,
                [RenameColumn("exchange", "exch"), RenameColumn("seq", "sequence")],
            )
            await publisher
            await await_until(
                lambda: service.committed_events >= total, 60, "every event", alive=runner
            )
        finally:
            await service.stop()
            await asyncio.wait_for(runner, 60)

    asyncio.run(scenario())
    rows = stored_by_field_id(LakeCatalog(settings), "sequence", "exch")
    assert sorted(r[0] for r in rows) == list(range(total)), "each event stored once"
    wrong = [(s, x) for s, x in rows if x != 1 + s % 97]
    assert wrong == [], f"{len(wrong)} rows lost or misplaced their exchange: {wrong[:5]}"
    # Snapshots after the rename are written in the new schema: `lake query` sees `exch`.
    table = LakeCatalog(settings).load_table(TABLE)
    snap = table.current_snapshot()
    assert snap is not None and snap.schema_id == table.schema().schema_id


def test_rows_decoded_before_a_change_are_placed_by_field_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, "nats://127.0.0.1:1")  # no bus needed: no I/O to NATS
    catalog = LakeCatalog(settings)
    catalog.init()
    old = codec_for(TABLE, catalog.load_table(TABLE), "symbol")
    chunk = old.decode([json.dumps(event(i)).encode() for i in range(5)]).table
    changes = [RenameColumn("exchange", "exch"), DropColumn("conditions")]
    evolve_table(catalog.load_table(TABLE), TABLE, changes)
    table = catalog.load_table(TABLE)
    writer = ConsumerWriter(settings, TABLE, None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="iceberg_lake.ingest.writer"):
        rows = writer._prepare(TABLE, table, [chunk])
    assert rows.column("exch").to_pylist() == [1 + i % 97 for i in range(5)]
    assert rows.column("seq").to_pylist() == list(range(5))
    assert "conditions" not in rows.column_names
    # The dropped column's values cannot be stored: said once, loudly, not silently.
    assert any("no column 'conditions'" in r.getMessage() for r in caplog.records)

    # A codec built after the rename reads the name producers still send.
    new = codec_for(TABLE, table, "symbol")
    decoded = new.decode([json.dumps(event(7)).encode()])
    assert decoded.table.column("exch").to_pylist() == [8]
    assert decoded.unknown_fields == {"conditions": 1}  # dropped: reported like any unknown
    both = {**event(8), "exch": 50}  # the current name wins over a former one
    assert new.decode([json.dumps(both).encode()]).table.column("exch").to_pylist() == [50]
