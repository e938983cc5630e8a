"""Chunked decoding (`routing.decode_chunked`) gives exactly one call's result. Budget: ~2 s."""

from __future__ import annotations

import json

from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.ingest.routing import BronzeDecoder, InferredDecoder, decode_chunked
from iceberg_lake.tables import registry

TABLE = "bronze.stocks_trades"
BASE_NS = 1_765_900_000 * 1_000_000_000


def _event(i: int) -> dict[str, object]:
    return {"ts_event_ns": BASE_NS + i, "source": "t", "symbol": "SPY", "price": 1.0 + i, "size": 1}


def _bodies() -> list[bytes]:
    out: list[bytes] = []
    for i in range(60):
        if i % 7 == 3:
            out.append(b"{not json")  # rejected message
        elif i % 5 == 0:
            batch = [_event(i * 10 + k) for k in range(4)]
            batch[2]["price"] = -1.0  # rejected event of a batch
            batch[1]["extra_field"] = 1  # unknown field
            out.append(json.dumps(batch).encode())
        else:
            out.append(json.dumps(_event(i * 10)).encode())
    return out


def _same(a: object, b: object) -> None:
    assert a.tables.keys() == b.tables.keys()  # type: ignore[attr-defined]
    for t in a.tables:  # type: ignore[attr-defined]
        x, y = a.tables[t], b.tables[t]  # type: ignore[attr-defined]
        assert x.table.equals(y.table)
        assert x.row_message.tolist() == y.row_message.tolist()
        assert x.rejected == y.rejected and x.rejected_events == y.rejected_events
        assert x.unknown_fields == y.unknown_fields
    for attr in ("rejected", "rejected_events", "skipped", "unknown_fields"):
        assert getattr(a, attr) == getattr(b, attr), attr


def test_chunked_equals_one_call() -> None:
    d = registry().get(TABLE)
    decoder = BronzeDecoder(TableCodec(TABLE, d.iceberg_schema(), d.partition_key))
    bodies = _bodies()
    subjects = ["market.stocks.trades"] * len(bodies)
    whole = decoder.decode(bodies, subjects, 1)
    chunked = decode_chunked(decoder, bodies, subjects, 1, chunk_bytes=300)
    assert whole.rejected and whole.rejected_events and whole.unknown_fields
    assert whole.tables[TABLE].table.num_rows > 50
    _same(chunked, whole)


def test_chunked_inferred_with_skipped_messages() -> None:
    reg = registry()
    codecs = {}
    for tid in ("bronze.stocks_trades", "bronze.stocks_quotes"):
        d = reg.get(tid)
        codecs[d.schema_name] = TableCodec(tid, d.iceberg_schema(), d.partition_key)
    decoder = InferredDecoder(codecs, {"market.stocks.trades"})
    bodies = _bodies()
    subjects = [("market.stocks.trades", "market.other.feed")[i % 2] for i in range(len(bodies))]
    whole = decoder.decode(bodies, subjects, 1)
    assert whole.skipped
    _same(decode_chunked(decoder, bodies, subjects, 1, chunk_bytes=200), whole)
