"""The simulator speaks the writers' language: good messages decode, malformed ones are rejected."""

from __future__ import annotations

from collections import Counter

import pytest

from iceberg_lake.ingest import decode, routing
from iceberg_lake.simulate import LEVELS_SIGNALS, SUBJECT_TABLES, SimulationConfig, build_messages
from iceberg_lake.tables import registry


@pytest.mark.parametrize("batch", [1, 5])
def test_writers_decode_every_good_message_and_reject_every_bad_one(batch: int) -> None:
    config = SimulationConfig(
        seed=3, duration_s=8.0, rate=100.0, greeks_interval_s=4.0, duplicates=0.05, bad=0.1,
        batch=batch,
    )  # fmt: skip
    messages, stats = build_messages(config)
    rows: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for subject, table in SUBJECT_TABLES.items():
        definition = registry().get(table)
        codec = decode.TableCodec(table, definition.iceberg_schema(), definition.partition_key)
        decoder = (
            routing.GoldDecoder(codec)
            if subject == LEVELS_SIGNALS
            else routing.BronzeDecoder(codec)
        )
        mine = [m for m in messages if m.subject == subject]
        out = decoder.decode([m.data for m in mine], [subject] * len(mine), 0)
        rows[table] = out.tables[table].table.num_rows
        rejected[table] = len(out.rejected)
        bad_indexes = {i for i, m in enumerate(mine) if m.kind == "bad"}
        assert {i for i, _, _ in out.rejected} == bad_indexes, subject
        assert not out.unknown_fields, subject
    for table in SUBJECT_TABLES.values():
        assert rows[table] == stats.bronze_rows(table), table
        assert rejected[table] == stats.bad_by_table[table], table
    assert sum(rejected.values()) == stats.total_bad > 0
