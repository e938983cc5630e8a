"""Synthetic market data: determinism, market consistency, injected faults, and what the writers
make of the messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from iceberg_lake.exceptions import LakeError
from iceberg_lake.simulate import (
    FUTURES_MBP10,
    FUTURES_TRADES,
    LEVELS_SIGNALS,
    OPTIONS_GREEKS,
    OPTIONS_TRADES,
    STOCKS_QUOTES,
    STOCKS_TRADES,
    SUBJECTS,
    SimulationConfig,
    black_scholes,
    build_messages,
    generate_events,
    ladder_problems,
)

SMALL = SimulationConfig(seed=7, duration_s=20.0, rate=150.0, greeks_interval_s=5.0)


@pytest.fixture(scope="module")
def events() -> list:
    return list(generate_events(SMALL))


def test_same_seed_gives_identical_messages() -> None:
    config = SMALL.with_overrides(duplicates=0.05, bad=0.02, out_of_order=0.05, batch=3)
    first, stats1 = build_messages(config)
    second, stats2 = build_messages(config)
    assert [(m.subject, m.msg_id, m.data) for m in first] == [
        (m.subject, m.msg_id, m.data) for m in second
    ]
    assert stats1.as_dict() == stats2.as_dict()
    other, _ = build_messages(config.with_overrides(seed=8))
    assert [m.data for m in other] != [m.data for m in first]


def test_every_subject_is_simulated_in_time_order(events: list) -> None:
    assert {e.subject for e in events} == set(SUBJECTS)
    times = [e.ts_event_ns for e in events]
    assert times == sorted(times)
    assert times[0] == SMALL.start_ns and times[-1] < SMALL.end_ns
    # Market events at roughly the configured rate (Poisson; ladder updates after trades on top).
    market = [e for e in events if e.subject not in (OPTIONS_GREEKS, LEVELS_SIGNALS)]
    assert 0.8 * SMALL.rate * SMALL.duration_s < len(market) < 1.6 * SMALL.rate * SMALL.duration_s


def test_envelopes_have_the_canonical_shape(events: list) -> None:
    for e in events:
        env = e.envelope
        assert list(env) == [
            "schema_name",
            "schema_version",
            "source",
            "ts_event_ns",
            "ts_recv_ns",
            "key",
            "seq",
            "payload",
        ]
        assert env["ts_recv_ns"] >= env["ts_event_ns"]
        assert env["key"] in ("SPY", "ES")
    seqs: dict[str, list[int]] = {}
    for e in events:
        seqs.setdefault(e.subject, []).append(e.envelope["seq"])
    for subject, values in seqs.items():
        assert values == list(range(1, len(values) + 1)), subject


def test_mbp10_ladders_are_consistent(events: list) -> None:
    ladders = [e.payload for e in events if e.subject == FUTURES_MBP10]
    assert len(ladders) > 100
    for payload in ladders:
        assert ladder_problems(payload) == []
    assert ladders[0]["is_snapshot"] is True
    assert not any(p["is_snapshot"] for p in ladders[1:])


def test_ladder_check_catches_bad_books() -> None:
    good = next(e.payload for e in generate_events(SMALL) if e.subject == FUTURES_MBP10)
    crossed = dict(good, bid_px_1=good["ask_px_1"] + 0.25)
    assert any("crossed" in p or "descending" in p for p in ladder_problems(crossed))
    unordered = dict(good, ask_px_3=good["ask_px_2"])
    assert any("ascending" in p for p in ladder_problems(unordered))
    assert ladder_problems({"bid_px_1": 1.0}) == ["incomplete ladder: 'bid_px_2'"]


def test_es_trades_hit_the_published_book(events: list) -> None:
    book = None
    trades = 0
    for e in events:
        if e.subject == FUTURES_MBP10:
            book = e.payload
        elif e.subject == FUTURES_TRADES:
            assert book is not None
            p = e.payload
            side = "ask" if p["aggressor"] == 1 else "bid"
            assert p["price"] == book[f"{side}_px_1"]
            assert 0 < p["size"] <= book[f"{side}_sz_1"]
            trades += 1
    assert trades > 50


def test_spy_trades_print_inside_the_nbbo(events: list) -> None:
    quote = None
    spreads = []
    for e in events:
        if e.subject == STOCKS_QUOTES:
            quote = e.payload
            assert quote["bid_px"] < quote["ask_px"]
            spreads.append(round(quote["ask_px"] - quote["bid_px"], 2))
        elif e.subject == STOCKS_TRADES:
            assert quote is not None
            assert quote["bid_px"] <= e.payload["price"] <= quote["ask_px"]
            assert e.payload["size"] > 0
    assert min(spreads) == 0.01 and max(spreads) <= 0.05
    sizes = [e.payload["size"] for e in events if e.subject == STOCKS_TRADES]
    # Heavy tail: the largest prints dwarf the median one.
    assert max(sizes) > 20 * sorted(sizes)[len(sizes) // 2]


def test_option_trades_and_greeks_are_priced(events: list) -> None:
    trades = [e.payload for e in events if e.subject == OPTIONS_TRADES]
    assert trades
    for p in trades:
        assert p["opt_bid"] <= p["price"] <= p["opt_ask"]
        assert p["option_symbol"].startswith("SPY240513" + p["right"])
    snapshots: dict[str, list[dict]] = {}
    for e in events:
        if e.subject == OPTIONS_GREEKS:
            snapshots.setdefault(e.payload["snapshot_id"], []).append(e.payload)
    assert len(snapshots) == 4  # every 5 s of a 20 s session
    for rows in snapshots.values():
        assert len(rows) == 42  # 21 strikes x call/put
        for row in rows:
            is_call = row["option_symbol"][9] == "C"
            assert (0 <= row["delta"] <= 1) if is_call else (-1 <= row["delta"] <= 0)
            assert row["gamma"] >= 0 and row["implied_volatility"] > 0
    price, delta, *_ = black_scholes(100.0, 100.0, 0.25, 0.2, "C")
    put, pdelta, *_ = black_scholes(100.0, 100.0, 0.25, 0.2, "P")
    assert price == pytest.approx(4.615, abs=0.01)
    assert price - put == pytest.approx(100 - 100 * 2.718281828 ** (-0.05 * 0.25), abs=1e-6)
    assert delta - pdelta == pytest.approx(1.0)


def test_level_signals_have_the_spec_shape(events: list) -> None:
    signals = [e for e in events if e.subject == LEVELS_SIGNALS]
    assert len(signals) == 19  # every second of a 20 s session, after the first
    for e in signals:
        payload = e.payload
        assert e.ts_event_ns == payload["ts"] * 1_000_000
        assert set(payload["spy"]) == {"spot", "bid", "ask"}
        for level in payload["levels"]:
            assert {"id", "price", "kind", "direction", "distance", "signal", "confidence"} <= set(
                level
            )
            assert set(level["barrier"]) >= {"state", "delta_liq", "added", "canceled", "filled"}
            assert set(level["tape"]["sweep"]) == {"detected", "direction", "notional"}
            assert set(level["runway"]["next_level"]) == {"id", "price"}
            assert level["direction"] == (
                "SUPPORT" if level["price"] <= payload["spy"]["spot"] else "RESISTANCE"
            )


def test_injected_faults_are_counted() -> None:
    clean, clean_stats = build_messages(SMALL)
    config = SMALL.with_overrides(duplicates=0.1, bad=0.05, out_of_order=0.1)
    messages, stats = build_messages(config)
    # Faults do not change the market itself.
    assert stats.events == clean_stats.events and stats.rows == clean_stats.rows
    dups = [m for m in messages if m.kind == "duplicate"]
    bad = [m for m in messages if m.kind == "bad"]
    assert len(dups) == stats.duplicate_messages > 0
    assert sum(m.rows for m in dups) == sum(stats.duplicate_rows.values())
    assert len(bad) == stats.total_bad > 0
    assert {m.bad_kind for m in bad} == {"bad_json", "missing_field", "negative_price"}
    assert stats.out_of_order > 0
    assert len(messages) == len(clean) + len(dups) + len(bad) == stats.messages
    assert not any(m.subject == LEVELS_SIGNALS for m in dups)
    # Every message id is unique; a duplicate carries the body of its original.
    assert len({m.msg_id for m in messages}) == len(messages)
    by_id = {m.msg_id: m for m in messages}
    for d in dups:
        assert d.data == by_id[d.msg_id.removesuffix("-dup")].data
    # Out of order: publish order is no longer event-time order.
    times = [json.loads(m.data)["ts_event_ns"] for m in messages if m.kind == "event"]
    assert times != sorted(times)
    for m in bad:
        if m.bad_kind == "bad_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(m.data)


def test_batches_pack_events_of_one_subject() -> None:
    messages, stats = build_messages(SMALL.with_overrides(batch=10))
    arrays = [json.loads(m.data) for m in messages]
    assert all(isinstance(a, list) and 1 <= len(a) <= 10 for a in arrays)
    assert sum(len(a) for a in arrays) == stats.total_events
    for m, a in zip(messages, arrays, strict=True):
        assert {e["schema_name"] for e in a} == {a[0]["schema_name"]}
        assert m.events == len(a)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(LakeError, match="--duplicates"):
        SimulationConfig(duplicates=1.5)
    with pytest.raises(LakeError, match="--batch"):
        SimulationConfig(batch=0)
    with pytest.raises(LakeError, match="timezone"):
        SimulationConfig(start=datetime(2024, 5, 13, 13, 30))
    assert SimulationConfig(start=datetime(2024, 5, 13, 13, 30, tzinfo=UTC)).start_ns == (
        1_715_607_000_000_000_000
    )
