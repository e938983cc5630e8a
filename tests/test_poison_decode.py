"""Bad input never stops the decoders: every poison case of issue 11 and every validation rule
is a rejection with a precise reason, and the neighbours are stored (no servers, ~3 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ingest_support import SUBJECTS, gold_payload, make_event
from poison_cases import GOLD, poison_messages

from iceberg_lake.exceptions import LakeError
from iceberg_lake.ingest.decode import TableCodec
from iceberg_lake.ingest.routing import BronzeDecoder, GoldDecoder, InferredDecoder
from iceberg_lake.tables import registry
from iceberg_lake.tables.definitions import load_definition_file

TABLES = [*SUBJECTS, GOLD]


def codec(table: str) -> TableCodec:
    d = registry().get(table)
    return TableCodec(table, d.iceberg_schema(), d.partition_key)


def decoder(table: str) -> BronzeDecoder | GoldDecoder:
    return GoldDecoder(codec(table)) if table == GOLD else BronzeDecoder(codec(table))


def good_body(table: str, i: int) -> bytes:
    obj = gold_payload(i) if table == GOLD else make_event(table, i)
    return json.dumps(obj).encode()


def rows_per_good(table: str) -> int:
    return 2 if table == GOLD else 1  # gold_payload has two levels


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("table", "case", "body", "reason"),
    [(t, name, body, reason) for t in TABLES for name, body, reason in poison_messages(t)],
)
def test_each_poison_message_is_rejected_alone_with_a_precise_reason(
    table: str, case: str, body: bytes, reason: str
) -> None:
    bodies = [good_body(table, 1), body, good_body(table, 2)]
    out = decoder(table).decode(bodies, ["s"] * 3, 1)
    assert [(i, t) for i, t, _ in out.rejected] == [(1, table)], out.rejected
    assert reason in out.rejected[0][2], out.rejected[0][2]
    assert "unknown field" not in out.rejected[0][2]
    batch = out.tables[table]
    assert batch.table.num_rows == 2 * rows_per_good(table)
    assert sorted(set(batch.row_message.tolist())) == [0, 2]


@pytest.mark.parametrize("table", TABLES)
def test_one_bad_event_of_a_batched_message_rejects_only_that_event(table: str) -> None:
    # Every poison case that is an object, as event 1 of a three-event batch.
    for case, body, reason in poison_messages(table):
        try:
            bad = json.loads(body)
        except (ValueError, RecursionError):
            continue  # not an object: only meaningful as a whole message
        if not isinstance(bad, dict):
            continue
        batch = b"[" + good_body(table, 1) + b"," + body + b"," + good_body(table, 2) + b"]"
        out = decoder(table).decode([good_body(table, 3), batch], ["s"] * 2, 1)
        assert out.rejected == [], (case, out.rejected)
        [(message, event, target, why, raw)] = out.rejected_events
        assert (message, event, target) == (1, 1, table), case
        assert reason in why, (case, why)
        assert json.loads(raw) == bad, case
        assert out.tables[table].table.num_rows == 3 * rows_per_good(table), case


def test_a_rejected_event_keeps_the_fields_the_table_does_not_know() -> None:
    good = make_event("bronze.futures_mbp10", 1)
    book = {k: v for k, v in good.items() if "_px_" not in k and "_sz_" not in k}
    cases = [
        (decoder("bronze.futures_mbp10"), {**good, "venue": "X", "bid_px_1": -1.0}),
        # Inference spreads `levels` into columns: on a copy, the dead letter keeps the list.
        (_inferred(), {**book, "venue": "X", "levels": [{"bid_px": -1.0, "bid_sz": 1}]}),
    ]
    for dec, bad in cases:
        out = dec.decode([enc([good, bad])], ["market.raw"], 1)
        [(_, event, _, why, raw)] = out.rejected_events
        assert event == 1 and "bid_px_1" in why and json.loads(raw) == bad, why


def _inferred() -> InferredDecoder:
    tables = [d for d in registry().ingest_tables() if d.namespace == "bronze"]
    return InferredDecoder({d.schema_name: codec(d.identifier) for d in tables}, set())


def test_ndjson_lines_are_isolated_and_keep_their_own_bytes() -> None:
    good = [enc(make_event("bronze.stocks_trades", i)) for i in range(3)]
    body = good[0] + b"\n" + b'{"price": oops}' + b"\n" + good[1] + b"\n" + good[2][:-5] + b"\n"
    out = decoder("bronze.stocks_trades").decode([body], ["s"], 1)
    assert out.tables["bronze.stocks_trades"].table.num_rows == 2
    got = [(e, raw) for _, e, _, _, raw in out.rejected_events]
    assert got == [(1, b'{"price": oops}'), (3, good[2][:-5])]


def test_a_batch_where_arrow_itself_fails_falls_back_to_per_event_rows() -> None:
    # A value no earlier check refuses but Arrow cannot hold: the column-wise build fails and
    # the codec isolates the event (defence in depth behind the typed checks).
    c = codec("bronze.stocks_trades")
    events = [c.convert_one(make_event("bronze.stocks_trades", i), {}) for i in range(3)]
    events[1].source = "bad\ud800"  # only reachable by bypassing the parser
    from iceberg_lake.ingest.decode import Pending

    pending = Pending()
    pending.add(0, events, [0, 1, 2])
    body = enc([make_event("bronze.stocks_trades", i) for i in range(3)])
    out = c.assemble(pending, 1, [body])
    assert out.table.num_rows == 2
    [(m, e, why, raw)] = out.rejected_events
    assert (m, e) == (0, 1) and "source" in why and "cannot store" in why
    assert json.loads(raw)["seq"] == 1


@pytest.mark.parametrize(
    ("table", "change", "reason"),
    [
        ("bronze.options_trades", {"aggressor": 300}, "Invalid enum value 300"),
        ("bronze.options_trades", {"aggressor": 2}, "Invalid enum value 2"),
        ("bronze.options_trades", {"right": "X"}, "Invalid enum value 'X'"),
        ("bronze.options_trades", {"right": "c"}, "Invalid enum value 'c'"),
        ("bronze.futures_trades", {"aggressor": -2}, "Invalid enum value -2"),
        ("bronze.stocks_trades", {"exchange": 40_000}, "<= 32767"),
        ("bronze.stocks_trades", {"exchange": -40_000}, ">= -32768"),
        ("bronze.stocks_quotes", {"bid_exch": 2**15}, "<= 32767"),
        ("bronze.stocks_trades", {"size": 2**31}, "<= 2147483647"),
        ("bronze.options_greeks_snapshots", {"open_interest": 2**31}, "<= 2147483647"),
        ("bronze.stocks_trades", {"seq": -(2**63) - 1}, ">= -9223372036854775808"),
        ("bronze.stocks_quotes", {"bid_px": -0.01}, "bid_px must be a finite number >= 0"),
        ("bronze.stocks_quotes", {"ask_sz": -1}, "ask_sz must be >= 0"),
        ("bronze.futures_mbp10", {"bid_px_3": -1.0}, "bid_px_3 must be a finite number >= 0"),
        ("bronze.stocks_trades", {"price": 0.0}, "price must be a finite number > 0"),
        ("bronze.options_greeks_snapshots", {"delta": 1e400}, "finite"),
        ("bronze.stocks_trades", {"symbol": "ünïcødé✓" * 10}, "longer than 64 bytes"),
        ("bronze.stocks_trades", {"symbol": "A\x00"}, "control character"),
        ("bronze.stocks_trades", {"symbol": "A\x85"}, "control character"),
    ],
)
def test_declared_rules_reject_out_of_range_values(table: str, change: dict, reason: str) -> None:
    good = make_event(table, 1)
    out = codec(table).decode([enc(good), enc({**good, **change})], recv_ns=1)
    assert out.table.num_rows == 1
    assert [i for i, _ in out.rejected] == [1]
    assert reason in out.rejected[0][1], out.rejected[0][1]


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("bronze.options_trades", {"aggressor": -1, "right": "P"}),
        ("bronze.options_trades", {"aggressor": 0, "right": "C"}),
        ("bronze.futures_trades", {"aggressor": 1}),
        ("bronze.stocks_trades", {"exchange": 32767, "size": 2**31 - 1, "seq": 2**63 - 1}),
        ("bronze.stocks_trades", {"symbol": "BRK.B"}),
        ("bronze.stocks_trades", {"symbol": "a/b"}),  # path-like values are encoded, see docs
        ("bronze.stocks_trades", {"symbol": "S" * 64}),
        ("bronze.futures_mbp10", {"bid_px_10": 0.0, "bid_sz_10": 0}),
    ],
)
def test_values_inside_the_rules_are_stored(table: str, change: dict) -> None:
    out = codec(table).decode([enc({**make_event(table, 1), **change})], recv_ns=1)
    assert out.rejected == [] and out.table.num_rows == 1


def test_quotes_accept_zero_and_absent_sides_and_keep_crossed_books() -> None:
    q = make_event("bronze.stocks_quotes", 1)
    no_ask = {k: v for k, v in q.items() if k not in ("ask_px", "ask_sz")}
    bodies = [
        enc({**q, "bid_px": 0.0, "bid_sz": 0}),  # zero bid side
        enc(no_ask),  # one side absent
        enc({**q, "bid_px": None, "bid_sz": None}),  # one side null
        enc({**q, "bid_px": 500.02, "ask_px": 500.01}),  # crossed: stored, not dropped
        enc({**q, "bid_px": 500.01, "ask_px": 500.01}),  # locked
    ]
    out = codec("bronze.stocks_quotes").decode(bodies, recv_ns=1)
    assert out.rejected == []
    sides = out.table.select(["bid_px", "bid_sz", "ask_px", "ask_sz"]).to_pylist()
    assert sides[0] == {"bid_px": 0.0, "bid_sz": 0, "ask_px": 500.01, "ask_sz": 4}
    assert sides[1] == {"bid_px": 500.0, "bid_sz": 3, "ask_px": 0.0, "ask_sz": 0}
    assert sides[2]["bid_px"] == 0.0 and sides[2]["bid_sz"] == 0
    assert sides[3]["bid_px"] > sides[3]["ask_px"]


def test_truncated_options_json_reports_malformed_json_not_an_unknown_field() -> None:
    body = enc(make_event("bronze.options_trades", 1))
    out = codec("bronze.options_trades").decode([body[:40], body], recv_ns=1)
    assert out.rejected == [(0, "malformed JSON: Input data was truncated")]


@pytest.mark.parametrize("body", [b"[]", b" [ ] ", b"\n"])
def test_empty_messages_and_batches_are_dead_lettered_not_acked_silently(body: bytes) -> None:
    out = codec("bronze.stocks_trades").decode([body], recv_ns=1)
    assert len(out.rejected) == 1 and out.rejected[0][1].startswith(
        ("empty batch", "empty message")
    )


def test_inferred_decoder_isolates_poison_and_bad_events() -> None:
    tables = [d for d in registry().ingest_tables() if d.namespace == "bronze"]
    codecs = {d.schema_name: codec(d.identifier) for d in tables}
    dec = InferredDecoder(codecs, set())
    trade = make_event("bronze.stocks_trades", 1)
    bodies = [
        *(b for _, b, _ in poison_messages("bronze.stocks_trades")),
        enc([trade, {**trade, "size": -1}]),
        enc(trade),
    ]
    out = dec.decode(bodies, ["market.raw"] * len(bodies), 1)
    assert sorted(i for i, _, _ in out.rejected) == list(range(len(bodies) - 2))
    assert [(i, e) for i, e, _, _, _ in out.rejected_events] == [(len(bodies) - 2, 1)]
    assert out.tables["bronze.stocks_trades"].table.num_rows == 2


def test_gold_batch_rejects_only_the_bad_payload() -> None:
    bad = gold_payload(2)
    bad["levels"][1]["price"] = -1.0
    body = enc([gold_payload(1), bad, gold_payload(3)])
    out = decoder(GOLD).decode([body], ["levels.signals"], 1)
    assert out.tables[GOLD].table.num_rows == 4  # two payloads × two levels
    [(m, e, _, why, raw)] = out.rejected_events
    assert (m, e) == (0, 1) and "level_price must be a finite number > 0" in why
    assert json.loads(raw) == bad


def test_catalog_declares_enumerations_and_refuses_rules_that_do_not_fit(tmp_path: Path) -> None:
    options = registry().get("bronze.options_trades")
    assert options.column("right").enum == ("C", "P")
    assert options.column("aggressor").enum == (-1, 0, 1)
    assert options.column("aggressor").int_range == (-128, 127)
    quotes = registry().get("bronze.stocks_quotes")
    assert quotes.column("bid_px").default == 0.0 and quotes.column("bid_px").ge == 0.0
    path = tmp_path / "bad.toml"
    path.write_text(
        'schema_name = "x"\nschema_version = 1\ntables = ["bronze.x"]\n'
        'columns = [{ name = "a", type = "string", required = false, ge = 1 }]\n'
    )
    with pytest.raises(LakeError, match="not numeric but declares bounds"):
        load_definition_file(path)
    path.write_text(
        'schema_name = "x"\nschema_version = 1\ntables = ["bronze.x"]\n'
        'columns = [{ name = "a", type = "int", required = false, enum = ["C"] }]\n'
    )
    with pytest.raises(LakeError, match="does not fit int"):
        load_definition_file(path)
