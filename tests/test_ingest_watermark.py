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


def test_the_rejects_recorded_with_a_watermark_read_back_exactly_and_compact() -> None:
    """review19e #2: the messages a flush rejected for a table ride with its watermark
    (`properties.REJECTED_PREFIX`): listed (ranges, `<seq>.<event>`), or past
    `REJECTED_TEXT_PLAIN_MAX` compressed, never shortened (review20: a span standing for a long
    list dead-lettered stored messages); an empty list reads back as none."""
    import random

    from iceberg_lake.ingest.writer import REJECTED_TEXT_PLAIN_MAX, _parse_rejects, _rejects_value

    ids: set[tuple[int, int | None]] = {(5, None), (6, None), (7, None), (9, 2)}
    assert _rejects_value(9, ids) == "9:5-7,9.2"
    assert _parse_rejects("9:5-7,9.2") == (9, ids)
    assert _parse_rejects(_rejects_value(12, set())) == (12, set())
    rng = random.Random(20)
    base = 10**9  # a long-lived stream's sequence numbers
    many: set[tuple[int, int | None]] = {
        (s, None if rng.random() < 0.8 else rng.randrange(100))
        for s in range(base, base + 50_000)
        if rng.random() < 0.5
    }
    value = _rejects_value(base + 50_000, many)
    assert value.startswith(f"{base + 50_000}:z")
    assert REJECTED_TEXT_PLAIN_MAX < len(value) < 40_000  # ~25,000 scattered ids
    assert _parse_rejects(value) == (base + 50_000, many)
    assert _parse_rejects("garbage") is None
    assert _parse_rejects("5:z!!") is None


def test_a_reread_dead_letters_again_what_the_committed_flush_rejected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review19e #2: messages re-read between the quarantine's watermark and a table's get
    the letters that table's committed flush recorded for it, unless made again anyway; a
    value recorded with another watermark (a later flush's table) is never applied, nor one
    naming a message past its watermark (not a writer's); a compressed list names exactly what
    it listed; a whole-message id of a batch (a row the store refused) is not made a letter of
    the whole batch, whose other events are stored (review20b)."""
    from types import SimpleNamespace

    from iceberg_lake.ingest import writer as writer_module
    from iceberg_lake.ingest.dead_letters import DeadLetter
    from iceberg_lake.ingest.writer import ConsumerWriter

    other = "bronze.stocks_quotes"
    key = "lake.rejected.MARKET.lake_inferred"

    def reread(
        values: dict[str, str], dl_wm: int, made: list[DeadLetter]
    ) -> list[tuple[str, int, int | None, bytes]]:
        w = ConsumerWriter.__new__(ConsumerWriter)
        w.target, w.stream, w.rejected_key, w._rejected_parsed = "t", "MARKET", key, {}
        w.target_ids = [TABLE, other]
        w.watermarks = {TABLE: 6, other: 3, "bronze.dead_letters": dl_wm}
        w.tables = {t: SimpleNamespace(properties={key: v}) for t, v in values.items()}
        bodies = {2: b'[{"n": 2}]', 3: b'{"n": 3}'}  # a batch of one event; one event
        msgs = [  # the others are batches of two
            SimpleNamespace(
                subject="s", data=bodies.get(s, f'[{{"n": {s}}}, {{"n": -{s}}}]'.encode())
            )
            for s in range(1, 9)
        ]
        letters = w._letters_not_committed(msgs, list(range(1, 9)), 7, made, dl_wm)
        return [(d.target_table, d.stream_seq, d.event_index, d.raw) for d in letters]

    made = [DeadLetter(7, TABLE, "s", "MARKET", 5, "still too wide", b"", None)]
    assert reread({TABLE: "6:2,5-6,4.1", other: "3:3"}, 2, made) == [
        (TABLE, 4, 1, b'{"n":-4}'),  # 2: under the quarantine's watermark; 5: made again
        (other, 3, None, b'{"n": 3}'),  # 6: a whole batch, stored but for its refused row
    ]
    assert reread({TABLE: "5:4", other: "2:3"}, 2, []) == []  # recorded by other flushes
    # A whole-message id of a batch of one event: that event (review20c: it was lost).
    assert reread({TABLE: "6:2"}, 1, []) == [(TABLE, 2, 0, b'{"n":2}')]
    assert reread({TABLE: "6:4,9"}, 2, []) == []  # names seq 9, past the watermark: ignored
    assert "is not a list this writer can read" in caplog.text  # and said
    monkeypatch.setattr(writer_module, "REJECTED_TEXT_PLAIN_MAX", 0)
    value = writer_module._rejects_value(6, {(4, 1)})
    assert value.startswith("6:z")
    assert [r[:3] for r in reread({TABLE: value}, 3, [])] == [(TABLE, 4, 1)]


def test_a_damaged_or_hand_edited_rejects_value_is_ignored_whole() -> None:
    """review20b: a value no writer writes is ignored, not applied in part (a cut list named
    seq 1), and cannot make the writer build millions of ids (`1-20000000`: 2.5 GB)."""
    import base64
    import zlib

    from iceberg_lake.ingest.writer import _parse_rejects

    bomb = base64.b64encode(zlib.compress(b"1," * 20_000_000 + b"1")).decode()
    for value in (
        "100:2,4,6,8,1",  # "…8,10" cut short
        "100:2,x,6",
        "100:1-20000000",
        "100:1-9999999999",
        "100:-5",
        "100:9.2,5-7",
        "100:5.1,5.0",
        "5:9",  # past its watermark
        "x:1",
        "5:z!!",
        f"100:z{bomb}",
    ):
        assert _parse_rejects(value) is None, value
    assert _parse_rejects("9:5-7,9.2,9.3") == (9, {(5, None), (6, None), (7, None), (9, 2), (9, 3)})
