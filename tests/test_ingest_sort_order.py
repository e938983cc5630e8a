"""The writer and the dead-letter re-drive store rows in the table's DECLARED sort order.

`bronze.stocks_trades` is declared here (in place of `catalog/stocks_trades.toml`) sorted by
`seq`, which event time does not follow, with one column whose name Parquet needs sanitized
(`venue·id`: a Python identifier, not an Avro name). That takes the writer off its own fast
path onto pyiceberg's, where the order once was hard-coded to `ts_event_ns`.
Budget: ~10 s (shared nats-server, SQLite, file warehouse).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from ingest_support import (
    SUBJECTS,
    data_files_sorted,
    encode,
    make_event,
    publish,
    run_until_idle,
    settings_for,
    wait_stream,
)

from iceberg_lake import catalog as catalog_module
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.engine.iceberg import fast_path_applies, table_arrow_schema
from iceberg_lake.ingest.dead_letters import DeadLetter, dead_letter_table
from iceberg_lake.ingest.redrive import redrive
from iceberg_lake.tables import DEAD_LETTERS_TABLE, TableRegistry, registry
from iceberg_lake.tables.definitions import ColumnDefinition
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


@pytest.fixture
def seq_declared(monkeypatch: pytest.MonkeyPatch) -> TableRegistry:
    """The shipped declarations, with `bronze.stocks_trades` sorted by `seq` (every catalog the
    test opens, the writers' included, reads this registry)."""
    shipped = registry()
    d = shipped.get(TABLE)
    venue = ColumnDefinition(name="venue·id", type="string", required=False)
    declared = replace(d, sort_order=("seq",), columns=(*d.columns, venue))
    custom = TableRegistry([declared if x.identifier == TABLE else x for x in shipped])
    monkeypatch.setattr(catalog_module, "registry", lambda: custom)
    return custom


def test_writer_and_redrive_store_rows_in_the_declared_order(
    tmp_path: Path, nats: NatsServer, seq_declared: TableRegistry
) -> None:
    settings = settings_for(tmp_path, nats.url)
    catalog = LakeCatalog(settings)
    catalog.init()
    table = catalog.load_table(TABLE)
    # The writer cannot take its own path for this table: pyiceberg's writes (and sorts) nothing.
    assert not fast_path_applies(table, table_arrow_schema(table).empty_table())

    events = [make_event(TABLE, i, symbol="SPY") for i in range(60)]
    publish(settings, [(SUBJECTS[TABLE], encode(e), None) for e in events])
    wait_stream(settings, "MARKET", len(events))
    run_until_idle(settings, [TABLE])
    files, by_seq = data_files_sorted(settings, TABLE, ("seq",))
    assert files >= 3 and by_seq
    assert not data_files_sorted(settings, TABLE, ("ts_event_ns",))[1]  # the orders differ

    # Dead letters of the same table, re-driven: appended in the declared order too.
    late = [make_event(TABLE, i, symbol="SPY") for i in range(100, 160)]
    now_ns = time.time_ns()
    letters = [
        DeadLetter(now_ns, TABLE, SUBJECTS[TABLE], "MARKET", 10_000 + n, "test", encode(e))
        for n, e in enumerate(late)
    ]
    dead = catalog.load_table(DEAD_LETTERS_TABLE)
    dead.append(dead_letter_table(letters, dead.schema().as_arrow()))
    report = redrive(LakeCatalog(settings), TABLE)
    assert report.count("redriven") == len(late)
    files_after, by_seq = data_files_sorted(settings, TABLE, ("seq",))
    assert files_after > files and by_seq
    rows = catalog.load_table(TABLE).scan().to_arrow()
    assert rows.num_rows == 120 and pa.compute.count_distinct(rows["seq"]).as_py() == 120
