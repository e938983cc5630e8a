"""Decoding, validation, Gold flattening and schema inference (no servers)."""

from __future__ import annotations

import json
import re

import pytest
from ingest_support import gold_payload, make_event
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, NestedField, StringType

from iceberg_lake.ingest import flatten_level_signals
from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.ingest.routing import GoldDecoder, InferredDecoder, infer_schema_name
from iceberg_lake.tables import registry


def codec(table: str, schema: Schema | None = None) -> TableCodec:
    d = registry().get(table)
    return TableCodec(table, schema or d.iceberg_schema(), d.partition_key)


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_flat_envelope_array_and_ndjson_messages_become_columns() -> None:
    c = codec("bronze.stocks_trades")
    e = [make_event("bronze.stocks_trades", i) for i in range(5)]
    envelope = {
        "schema_name": "stocks.trades.v1",
        "schema_version": 1,
        "source": "massive_ws",
        "ts_event_ns": e[0]["ts_event_ns"],
        "key": "AAPL",
        "seq": 99,
        "payload": {"price": 190.5, "size": 7},
    }
    bodies = [enc(e[0]), enc(envelope), enc(e[1:3]), enc(e[3]) + b"\n" + enc(e[4]) + b"\n"]
    batch = c.decode(bodies, recv_ns=123)
    assert batch.rejected == []
    assert batch.row_message.tolist() == [0, 1, 2, 2, 3, 3]
    rows = batch.table.to_pylist()
    assert rows[1]["symbol"] == "AAPL" and rows[1]["source"] == "massive_ws"
    assert rows[1]["price"] == 190.5 and rows[1]["seq"] == 99
    assert rows[1]["ts_recv_ns"] == 123  # missing receive time → the receive time
    assert [r["seq"] for r in rows] == [0, 99, 1, 2, 3, 4]
    ts = batch.table.column("ts_event").to_pylist()[0]
    assert int(ts.timestamp() * 1_000_000) == e[0]["ts_event_ns"] // 1000


def test_single_event_fast_path_matches_per_message_decoding() -> None:
    c = codec("bronze.futures_mbp10")
    bodies = [enc(make_event("bronze.futures_mbp10", i)) for i in range(50)]
    fast = c.decode(bodies, recv_ns=1)
    slow = c.decode([*bodies, b"[]"], recv_ns=1)  # an array disables the one-call fast path
    assert fast.table.num_rows == 50
    assert fast.table.to_pylist() == slow.table.to_pylist()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"price": "1.5"}, "Expected `float"),
        ({"price": 0.0}, "price must be a finite number > 0"),
        ({"size": -3}, "size must be >= 0"),
        ({"size": 2**31}, "<= 2147483647"),
        ({"symbol": ""}, "symbol is empty"),
        ({"symbol": None}, "missing required field 'symbol'"),
        ({"ts_event_ns": 1_765_900_000_000}, "plausible"),
    ],
)
def test_invalid_values_reject_only_the_bad_event_with_a_reason(change: dict, reason: str) -> None:
    c = codec("bronze.stocks_trades")
    good = make_event("bronze.stocks_trades", 1)
    bad = {**good, **change}
    batch = c.decode([enc(good), enc([good, bad, good]), enc(bad), enc(good)], recv_ns=1)
    # The batched message keeps its two good events; the single bad message is rejected whole.
    assert batch.table.num_rows == 4
    assert batch.row_message.tolist() == [0, 1, 1, 3]
    assert len(batch.rejected) == 1 and batch.rejected[0][0] == 2
    assert reason in batch.rejected[0][1]
    [(message, event, event_reason, raw)] = batch.rejected_events
    assert (message, event) == (1, 1) and reason in event_reason
    assert json.loads(raw) == bad


def test_nan_and_malformed_json_are_rejected_with_reasons() -> None:
    c = codec("bronze.stocks_trades")
    good = enc(make_event("bronze.stocks_trades", 1))
    nan = re.sub(rb'"price": [0-9.]+', b'"price": NaN', good)
    assert nan != good
    batch = c.decode([nan, b"{oops", b"", good], recv_ns=1)
    reasons = dict(batch.rejected)
    assert "finite" in reasons[0]
    assert reasons[1].startswith("malformed JSON")
    assert reasons[2] == "empty message"
    assert batch.table.num_rows == 1


def test_unknown_fields_are_dropped_and_counted_and_new_columns_filled() -> None:
    event = {**make_event("bronze.stocks_trades", 1), "venue": "DARK", "conditions": "@F"}
    old = codec("bronze.stocks_trades", registry().get("bronze.stocks_trades").iceberg_schema())
    base = old.schema
    batch = old.decode([enc(event)], recv_ns=1)
    assert batch.table.num_rows == 1
    unknown = batch.unknown_fields
    assert unknown.get("venue") == 1
    # the live schema gained an optional column: the writer's codec fills it
    fields = [f for f in base.fields if f.name != "venue"]
    evolved = Schema(*fields, NestedField(900, "venue", StringType(), required=False), schema_id=1)
    batch = codec("bronze.stocks_trades", evolved).decode([enc(event)], recv_ns=1)
    assert batch.unknown_fields.get("venue") is None
    assert batch.table.column("venue").to_pylist() == ["DARK"]
    without = codec("bronze.stocks_trades", evolved).decode(
        [enc(make_event("bronze.stocks_trades", 2))], recv_ns=1
    )
    assert without.table.column("venue").to_pylist() == [None]


def test_flatten_level_signals_follows_the_spec_example() -> None:
    rows = flatten_level_signals(gold_payload(0, levels=2))
    assert len(rows) == 2
    r = rows[0]
    assert r["ts_event_ns"] == gold_payload(0)["ts"] * 1_000_000
    assert (r["underlying"], r["spot"], r["bid"], r["ask"]) == ("SPY", 545.42, 545.41, 545.43)
    assert (r["level_id"], r["level_kind"], r["level_price"]) == ("STRIKE_545_0", "STRIKE", 545.0)
    assert r["barrier_delta_liq"] == -1.5 and r["barrier_filled"] == 2
    assert r["tape_sweep_detected"] is True and r["tape_sweep_notional"] == 1e6
    assert r["fuel_net_dealer_gamma"] == -2e6 and r["runway_next_level_id"] == "PUT_WALL"
    assert flatten_level_signals(gold_payload(0), underlying="QQQ")[0]["underlying"] == "QQQ"
    explicit = {**gold_payload(0), "underlying": "IWM"}
    assert flatten_level_signals(explicit)[0]["underlying"] == "IWM"
    wrapped = {"schema_name": "levels.signals.v1", "payload": gold_payload(0)}
    assert flatten_level_signals(wrapped) == rows
    with pytest.raises(ValueError, match="levels"):
        flatten_level_signals({"ts": 1})
    # A fractional millisecond keeps its digits, to the nanosecond (not truncated, no float
    # noise from `ts * 1e6`).
    fractional = {**gold_payload(0), "ts": 1741356000000.7}
    assert flatten_level_signals(fractional)[0]["ts_event_ns"] == 1741356000000700000
    fractional["ts"] = 1741356000000.0625
    assert flatten_level_signals(fractional)[0]["ts_event_ns"] == 1741356000000062500


def test_gold_decoder_validates_rows_against_the_live_schema() -> None:
    d = GoldDecoder(codec("gold.levels_signals"))
    bad_level = gold_payload(1)
    bad_level["levels"][0]["barrier"]["added"] = "many"
    out = d.decode(
        [enc(gold_payload(0, levels=3)), enc(bad_level), b"{}"], ["levels.signals"] * 3, 1
    )
    assert out.tables["gold.levels_signals"].table.num_rows == 3
    reasons = {i: r for i, _, r in out.rejected}
    assert "barrier_added" in reasons[1] and "levels" in reasons[2]


def test_gold_stores_payload_and_context_fields_once_a_migration_adds_their_columns() -> None:
    """evolve14: a new top-level payload field (`regime`) or market-context field (`spy.vwap`)
    never reached the codec, so Gold stored NULL after a migration added the column and did not
    count the field as unknown before."""
    payload = gold_payload(0, levels=2)
    payload["regime"] = "trend"
    payload["spy"]["vwap"] = 529.5
    base = registry().get("gold.levels_signals").iceberg_schema()
    top = max(f.field_id for f in base.fields)
    evolved = Schema(
        *base.fields,
        NestedField(top + 1, "regime", StringType(), required=False),
        NestedField(top + 2, "vwap", DoubleType(), required=False),
    )
    stored = GoldDecoder(codec("gold.levels_signals", evolved)).decode(
        [enc(payload)], ["levels.signals"], 1
    )
    rows = stored.tables["gold.levels_signals"].table
    assert rows.column("regime").to_pylist() == ["trend", "trend"]
    assert rows.column("vwap").to_pylist() == [529.5, 529.5]
    assert rows.column("spot").to_pylist() == [545.42, 545.42]
    counted = GoldDecoder(codec("gold.levels_signals")).decode(
        [enc(payload)], ["levels.signals"], 1
    )
    assert counted.unknown_fields == {
        ("gold.levels_signals", "regime"): 2,
        ("gold.levels_signals", "vwap"): 2,
    }
    # A payload or context field named like a level column never fills the level's column
    # (review14b: the context's `direction` became every level's direction).
    payload["spy"]["direction"] = "UP"
    payload["note"] = "halt"
    del payload["levels"][1]["note"]
    rows = flatten_level_signals(payload)
    assert [r.get("direction") for r in rows] == ["SUPPORT", "SUPPORT"]
    assert [r.get("note") for r in rows] == ["test", None]
    assert rows[1]["spy_direction"] == "UP" and rows[1]["payload_note"] == "halt"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("bronze.stocks_trades", "stocks.trades"),
        ("bronze.stocks_quotes", "stocks.quotes"),
        ("bronze.options_trades", "options.trades"),
        ("bronze.options_greeks_snapshots", "options.greeks_snapshots"),
        ("bronze.futures_trades", "futures.trades"),
        ("bronze.futures_mbp10", "futures.mbp10"),
    ],
)
def test_schema_inference_rules(table: str, expected: str) -> None:
    assert infer_schema_name(make_event(table, 1)) == expected


def test_inferred_decoder_routes_skips_mapped_and_spreads_mbp10_levels() -> None:
    tables = [d for d in registry().ingest_tables() if d.namespace == "bronze"]
    codecs = {d.schema_name: codec(d.identifier) for d in tables}
    dec = InferredDecoder(codecs, {d.subject for d in tables})
    book = {
        k: v
        for k, v in make_event("bronze.futures_mbp10", 1).items()
        if "_px_" not in k and "_sz_" not in k
    }
    book["levels"] = [{"bid_px": 6000.0, "bid_sz": 5, "ask_px": 6000.25, "ask_sz": 6}]
    bodies = [enc(book), enc(make_event("bronze.stocks_trades", 2)), enc({"x": 1})]
    out = dec.decode(bodies, ["market.raw", "market.stocks.trades", "market.raw"], 1)
    assert out.skipped == [1]
    mbp = out.tables["bronze.futures_mbp10"].table.to_pylist()[0]
    assert (mbp["bid_px_1"], mbp["ask_sz_1"], mbp["bid_px_2"]) == (6000.0, 6, None)
    assert out.rejected == [(2, "unrouted", "cannot infer schema from message")]


@pytest.mark.parametrize("name", ["venue-id", "venue id", "class", "2nd_venue", "__venue", "_v"])
def test_a_column_whose_name_is_not_a_python_identifier_decodes(name: str) -> None:
    # Iceberg allows any column name (a migration can add one); the decoder's structs may not.
    base = registry().get("bronze.stocks_trades").iceberg_schema()
    evolved = Schema(
        *base.fields, NestedField(900, name, StringType(), required=False), schema_id=1
    )
    flat = {**make_event("bronze.stocks_trades", 1), name: "DARK"}
    payload = make_event("bronze.stocks_trades", 2)
    envelope = {
        "schema_name": "stocks.trades",
        "ts_event_ns": payload["ts_event_ns"],
        "payload": {**payload, name: "LIT"},
    }
    batch = codec("bronze.stocks_trades", evolved).decode([enc(flat), enc(envelope)], recv_ns=1)
    assert batch.rejected == [] and batch.table.num_rows == 2
    assert batch.table.column(name).to_pylist() == ["DARK", "LIT"]
    assert batch.unknown_fields == {}


def test_a_message_that_is_not_one_event_a_line_is_not_read_as_ndjson() -> None:
    """review20c: a newline inside a JSON string, or a line break where a comma is missing,
    made an invalid message that the NDJSON join turned into one valid event, stored (`source`
    came out as "te,st"). Such a message is rejected; real NDJSON still gives one row a line."""
    c = codec("bronze.stocks_trades")
    good = enc(make_event("bronze.stocks_trades", 1))
    newline_in_string = good.replace(b'"source": "', b'"source": "te\nst', 1)
    missing_comma = good.replace(b', "symbol"', b'\n"symbol"', 1)
    for body in (newline_in_string, missing_comma):
        assert b"\n" in body
        batch = c.decode([body], recv_ns=1)
        assert batch.table.num_rows == 0
        assert batch.rejected or batch.rejected_events
    ndjson = c.decode([good + b"\n" + good + b"\n"], recv_ns=1)
    assert ndjson.table.num_rows == 2 and ndjson.table.column("source").to_pylist() == ["test"] * 2
