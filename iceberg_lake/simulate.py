"""Synthetic market data: a deterministic, seeded SPY + ES session published to NATS JetStream.

The session is a single simulated market, so the streams agree with each other:

* SPY follows a random walk with heavy-tailed (Student-t) steps. NBBO quotes have spreads of
  1-5 cents around it; every trade prints at or inside the last published quote, with a
  heavy-tailed (Pareto) size.
* A 0DTE SPY option chain (21 strikes around spot, calls and puts) trades near the money at
  Black-Scholes prices inside its quoted market; greeks snapshots of the whole chain come every
  `greeks_interval_s` seconds of event time.
* ES tracks SPY x 10 plus a basis. Its MBP-10 ladder is a real book on a 0.25 tick: bids strictly
  descending, asks strictly ascending, best bid < best ask. Every ES trade hits the best bid or
  lifts the best ask of the last published ladder for no more than the size shown there, and
  each trade is followed by the ladder update it caused.
* `levels.signals` payloads in the spec's shape (`ts` in ms, a `"spy"` market-context object,
  a `levels` list with nested barrier/tape/fuel/runway metrics) every `signals_interval_s`.

Every event is a canonical envelope (`schema_name`, `schema_version`, `source`, `ts_event_ns`,
`ts_recv_ns`, `key`, `seq`, `payload`); `batch` > 1 packs consecutive events of one subject into a
JSON array per message. Each message has a deterministic `Nats-Msg-Id`, so publishing the same
session twice is deduplicated by the stream. Faults can be injected on purpose: duplicates (the
same body re-published under a NEW id, so they reach Bronze and Silver has to remove them),
out-of-order events, and malformed messages (bad JSON, a missing required field, a negative
price) that the writers must dead-letter.

Same `SimulationConfig` ⇒ byte-identical messages in the same order.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from iceberg_lake.exceptions import LakeError

if TYPE_CHECKING:
    from iceberg_lake.config import Settings

__all__ = [
    "BAD_KINDS",
    "DEFAULT_START",
    "SUBJECT_TABLES",
    "SUBJECTS",
    "Message",
    "PublishReport",
    "SimEvent",
    "SimulationConfig",
    "SimulationStats",
    "black_scholes",
    "build_messages",
    "generate_events",
    "ladder_problems",
    "publish_messages",
    "simulate",
]

SOURCE = "simulator"
STOCKS_TRADES = "market.stocks.trades"
STOCKS_QUOTES = "market.stocks.quotes"
OPTIONS_TRADES = "market.options.trades"
OPTIONS_GREEKS = "market.options.greeks"
FUTURES_TRADES = "market.futures.trades"
FUTURES_MBP10 = "market.futures.mbp10"
LEVELS_SIGNALS = "levels.signals"

#: Subject → the table its events land in.
SUBJECT_TABLES: dict[str, str] = {
    STOCKS_TRADES: "bronze.stocks_trades",
    STOCKS_QUOTES: "bronze.stocks_quotes",
    OPTIONS_TRADES: "bronze.options_trades",
    OPTIONS_GREEKS: "bronze.options_greeks_snapshots",
    FUTURES_TRADES: "bronze.futures_trades",
    FUTURES_MBP10: "bronze.futures_mbp10",
    LEVELS_SIGNALS: "gold.levels_signals",
}
SUBJECTS: tuple[str, ...] = tuple(SUBJECT_TABLES)
_SCHEMA_NAMES: dict[str, str] = {
    STOCKS_TRADES: "stocks.trades.v1",
    STOCKS_QUOTES: "stocks.quotes.v1",
    OPTIONS_TRADES: "options.trades.v1",
    OPTIONS_GREEKS: "options.greeks_snapshots.v1",
    FUTURES_TRADES: "futures.trades.v1",
    FUTURES_MBP10: "futures.mbp10.v1",
    LEVELS_SIGNALS: "levels.signals.v1",
}
#: Malformed-message kinds that `bad` injects.
BAD_KINDS: tuple[str, ...] = ("bad_json", "missing_field", "negative_price")

#: A regular-session open (09:30 New York), so the default session is reproducible.
DEFAULT_START = datetime(2024, 5, 13, 13, 30, tzinfo=UTC)
SPY, ES = "SPY", "ES"
ES_TICK = 0.25
LADDER_DEPTH = 10
_NS = 1_000_000_000
_YEAR_NS = 365 * 86_400 * _NS
_RATE = 0.05
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Frozen: equal configs give byte-identical sessions.

    Attributes:
        seed: Random seed.
        start: Event time of the first event (timezone-aware).
        duration_s: Length of the session in event-time seconds.
        rate: Market events (trades, quotes, ladders) per second of event time; greeks
            snapshots and level signals come on top at their own intervals.
        duplicates: Probability that a market message is published a second time under a new
            `Nats-Msg-Id` (so the stream keeps both copies and Silver must dedup them).
        bad: Probability that a malformed message is published after a message.
        out_of_order: Probability that an event is published late (after up to 30 newer ones).
        batch: Events per message (1 = one JSON object per message, >1 = a JSON array).
        greeks_interval_s: Event-time seconds between option-chain greeks snapshots.
        signals_interval_s: Event-time seconds between `levels.signals` payloads.
        spy_price: SPY price at the start.
        es_basis: ES price minus 10 x SPY.
    """

    seed: int = 42
    start: datetime = DEFAULT_START
    duration_s: float = 60.0
    rate: float = 200.0
    duplicates: float = 0.0
    bad: float = 0.0
    out_of_order: float = 0.0
    batch: int = 1
    greeks_interval_s: float = 10.0
    signals_interval_s: float = 1.0
    spy_price: float = 545.0
    es_basis: float = 12.5

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise LakeError("simulation start must be timezone-aware (e.g. 2024-05-13T13:30Z)")
        if self.duration_s <= 0 or self.rate <= 0:
            raise LakeError("simulation duration and rate must be > 0")
        for name in ("duplicates", "bad", "out_of_order"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LakeError(f"--{name.replace('_', '-')} must be a probability in [0, 1]")
        if self.batch < 1:
            raise LakeError("--batch must be >= 1")
        if self.greeks_interval_s <= 0 or self.signals_interval_s <= 0:
            raise LakeError("greeks and signals intervals must be > 0")

    @property
    def start_ns(self) -> int:
        """`start` as Unix nanoseconds."""
        return int(self.start.timestamp()) * _NS + self.start.microsecond * 1000

    @property
    def end_ns(self) -> int:
        """Event time at which the session ends (exclusive)."""
        return self.start_ns + int(self.duration_s * _NS)

    def with_overrides(self, **changes: Any) -> SimulationConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True)
class SimEvent:
    """One simulated event: its subject and its canonical envelope."""

    subject: str
    envelope: dict[str, Any]

    @property
    def ts_event_ns(self) -> int:
        """Event time, Unix nanoseconds."""
        return int(self.envelope["ts_event_ns"])

    @property
    def payload(self) -> dict[str, Any]:
        """The schema-specific payload."""
        return self.envelope["payload"]

    @property
    def rows(self) -> int:
        """Rows this event becomes in its table (a `levels.signals` payload: one per level)."""
        if self.subject == LEVELS_SIGNALS:
            return len(self.payload["levels"])
        return 1


@dataclass(frozen=True)
class Message:
    """One message to publish.

    Attributes:
        subject: NATS subject.
        data: Body bytes.
        msg_id: `Nats-Msg-Id` header (deterministic).
        kind: `event`, `duplicate` or `bad`.
        events: Events in the body (0 for a malformed message).
        rows: Rows the body becomes in its table if stored.
        bad_kind: For `bad` messages, one of `BAD_KINDS`.
    """

    subject: str
    data: bytes
    msg_id: str
    kind: str = "event"
    events: int = 1
    rows: int = 1
    bad_kind: str | None = None

    @property
    def table(self) -> str:
        """Target table of the subject."""
        return SUBJECT_TABLES[self.subject]


@dataclass
class SimulationStats:
    """What a session contains, so a test or the demo can check what was stored.

    Attributes:
        events: Distinct events per subject.
        rows: Distinct rows per table (Silver after dedup; Gold).
        duplicate_rows: Extra rows per table from re-published duplicates (Bronze only).
        messages: Messages to publish, all kinds.
        duplicate_messages: Re-published messages.
        bad_messages: Malformed messages per kind.
        bad_by_table: Malformed messages per target table.
        out_of_order: Events published after a newer event.
    """

    events: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)
    duplicate_rows: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    duplicate_messages: int = 0
    bad_messages: Counter[str] = field(default_factory=Counter)
    bad_by_table: Counter[str] = field(default_factory=Counter)
    out_of_order: int = 0

    @property
    def total_events(self) -> int:
        """Distinct events over all subjects."""
        return sum(self.events.values())

    @property
    def total_bad(self) -> int:
        """Malformed messages over all kinds."""
        return sum(self.bad_messages.values())

    def bronze_rows(self, table: str) -> int:
        """Rows `table` holds once everything is stored (duplicates included for Bronze)."""
        return self.rows[table] + self.duplicate_rows[table]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "events": self.total_events,
            "messages": self.messages,
            "duplicate_messages": self.duplicate_messages,
            "duplicate_rows": sum(self.duplicate_rows.values()),
            "bad_messages": self.total_bad,
            "out_of_order": self.out_of_order,
            "events_by_subject": dict(sorted(self.events.items())),
            "rows_by_table": dict(sorted(self.rows.items())),
            "bad_by_kind": dict(sorted(self.bad_messages.items())),
        }


# ----------------------------------------------------------------------------------------------
# Pricing
# ----------------------------------------------------------------------------------------------


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def black_scholes(
    spot: float, strike: float, years: float, vol: float, right: str, rate: float = _RATE
) -> tuple[float, float, float, float, float]:
    """Black-Scholes price and greeks of a European option.

    Args:
        spot: Underlying price.
        strike: Strike.
        years: Time to expiry in years (> 0).
        vol: Implied volatility (annualised, 0.15 = 15 %).
        right: `C` or `P`.
        rate: Risk-free rate.

    Returns:
        `(price, delta, gamma, theta per calendar day, vega per volatility point)`.
    """
    sq = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / sq
    d2 = d1 - sq
    disc = math.exp(-rate * years)
    gamma = _norm_pdf(d1) / (spot * sq)
    vega = spot * _norm_pdf(d1) * math.sqrt(years) / 100.0
    decay = -spot * _norm_pdf(d1) * vol / (2.0 * math.sqrt(years))
    if right == "C":
        price = spot * _norm_cdf(d1) - strike * disc * _norm_cdf(d2)
        delta = _norm_cdf(d1)
        theta = (decay - rate * strike * disc * _norm_cdf(d2)) / 365.0
    else:
        price = strike * disc * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
        delta = _norm_cdf(d1) - 1.0
        theta = (decay + rate * strike * disc * _norm_cdf(-d2)) / 365.0
    return price, delta, gamma, theta, vega


# ----------------------------------------------------------------------------------------------
# The market
# ----------------------------------------------------------------------------------------------


@dataclass
class _Contract:
    option_symbol: str
    strike: float
    right: str
    open_interest: int


class _Market:
    """State of the simulated market; each method emits the events of one market action."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.spot = config.spy_price
        self.seq: Counter[str] = Counter()
        # SPY NBBO in cents.
        self.bid_c = 0
        self.ask_c = 0
        self.bid_sz = 0
        self.ask_sz = 0
        self.quoted = False
        # ES book: best bid/ask in ticks, sizes per level (index 0 = best).
        self.es_bid = 0
        self.es_ask = 0
        self.es_bid_sz: list[int] = []
        self.es_ask_sz: list[int] = []
        self.book_published = False
        # Session statistics the signals use.
        self.vwap_num = 0.0
        self.vwap_den = 0
        self.buy_vol = 0
        self.sell_vol = 0
        self.last_signal_spot = self.spot
        self.smooth: dict[str, float] = {}
        day = config.start.astimezone(UTC).date()
        self.expiry = day.isoformat()
        close = datetime(day.year, day.month, day.day, 20, 0, tzinfo=UTC)
        if close <= config.start:
            close = config.start + timedelta(hours=6, minutes=30)
        self.close_ns = int(close.timestamp()) * _NS
        center = round(self.spot)
        self.contracts: list[_Contract] = []
        for strike in range(center - 10, center + 11):
            for right in ("C", "P"):
                symbol = f"SPY{day:%y%m%d}{right}{strike * 1000:08d}"
                oi = int(200 + 20_000 * math.exp(-abs(strike - center) / 4) * self.rng.random())
                self.contracts.append(_Contract(symbol, float(strike), right, oi))

    # ---- helpers --------------------------------------------------------------------------------

    def _event(self, subject: str, ts: int, key: str, payload: dict[str, Any]) -> SimEvent:
        self.seq[subject] += 1
        latency = int(self.rng.lognormvariate(13.0, 0.8))  # ~0.4 ms median, heavy tail
        envelope = {
            "schema_name": _SCHEMA_NAMES[subject],
            "schema_version": 1,
            "source": SOURCE,
            "ts_event_ns": ts,
            "ts_recv_ns": ts + latency,
            "key": key,
            "seq": self.seq[subject],
            "payload": payload,
        }
        return SimEvent(subject, envelope)

    def _heavy_size(self, lot: int, alpha: float, cap: int) -> int:
        return min(cap, lot * max(1, int(self.rng.paretovariate(alpha))))

    def _student_t(self, df: float = 3.0) -> float:
        chi2 = self.rng.gammavariate(df / 2.0, 2.0)
        return self.rng.gauss(0.0, 1.0) / math.sqrt(chi2 / df) * math.sqrt((df - 2.0) / df)

    def step(self, dt_s: float) -> None:
        """Move SPY by a heavy-tailed random step for `dt_s` seconds (about 15 % annual vol)."""
        sigma = self.spot * 0.15 / math.sqrt(252 * 6.5 * 3600)
        self.spot = max(1.0, self.spot + sigma * math.sqrt(max(dt_s, 1e-6)) * self._student_t())

    def years_left(self, ts: int) -> float:
        return max(self.close_ns - ts, 60 * _NS) / _YEAR_NS

    def vol(self, strike: float, right: str) -> float:
        moneyness = (strike - self.spot) / self.spot
        skew = -0.8 * moneyness if right == "P" else -0.4 * moneyness
        return max(0.05, 0.14 + 6.0 * moneyness * moneyness + skew)

    # ---- SPY ------------------------------------------------------------------------------------

    def quote(self, ts: int) -> SimEvent:
        rng = self.rng
        spread = rng.choices((1, 2, 3, 4, 5), cum_weights=(70, 88, 94, 98, 100))[0]
        mid_c = self.spot * 100.0
        self.bid_c = int(math.floor(mid_c - spread / 2.0))
        self.ask_c = self.bid_c + spread
        self.bid_sz = self._heavy_size(100, 1.6, 50_000)
        self.ask_sz = self._heavy_size(100, 1.6, 50_000)
        self.quoted = True
        payload = {
            "symbol": SPY,
            "bid_px": self.bid_c / 100,
            "ask_px": self.ask_c / 100,
            "bid_sz": self.bid_sz,
            "ask_sz": self.ask_sz,
            "bid_exch": rng.randint(1, 21),
            "ask_exch": rng.randint(1, 21),
        }
        return self._event(STOCKS_QUOTES, ts, SPY, payload)

    def stock_trade(self, ts: int) -> SimEvent:
        rng = self.rng
        side = rng.choices((1, -1, 0), cum_weights=(45, 90, 100))[0]
        if side == 1:
            price_c = self.ask_c
        elif side == -1:
            price_c = self.bid_c
        else:
            price_c = rng.randint(self.bid_c, self.ask_c)
        size = (
            self._heavy_size(1, 1.2, 100_000)
            if rng.random() < 0.4
            else (self._heavy_size(100, 1.8, 200_000))
        )
        if side == 1:
            self.buy_vol += size
        elif side == -1:
            self.sell_vol += size
        self.vwap_num += price_c / 100 * size
        self.vwap_den += size
        payload = {
            "symbol": SPY,
            "price": price_c / 100,
            "size": size,
            "exchange": rng.randint(1, 21),
        }
        return self._event(STOCKS_TRADES, ts, SPY, payload)

    # ---- options --------------------------------------------------------------------------------

    def option_trade(self, ts: int) -> SimEvent:
        rng = self.rng
        # Near-the-money contracts trade most.
        offset = max(-10, min(10, round(rng.gauss(0.0, 3.0))))
        strike = float(
            max(self.contracts[0].strike, min(self.contracts[-1].strike, round(self.spot) + offset))
        )
        right = "C" if rng.random() < 0.5 else "P"
        contract = next(c for c in self.contracts if c.strike == strike and c.right == right)
        theo = black_scholes(
            self.spot, strike, self.years_left(ts), self.vol(strike, right), right
        )[0]
        spread_c = max(1, round(theo * 3))  # ~3 % wide, at least a cent
        bid_c = max(1, round(theo * 100 - spread_c / 2))
        ask_c = bid_c + spread_c
        aggressor = rng.choices((1, -1, 0), cum_weights=(45, 85, 100))[0]
        price_c = {1: ask_c, -1: bid_c, 0: (bid_c + ask_c) // 2}[aggressor]
        payload = {
            "underlying": SPY,
            "option_symbol": contract.option_symbol,
            "exp_date": self.expiry,
            "strike": strike,
            "right": right,
            "price": price_c / 100,
            "size": self._heavy_size(1, 1.3, 5_000),
            "opt_bid": bid_c / 100,
            "opt_ask": ask_c / 100,
            "aggressor": aggressor,
        }
        return self._event(OPTIONS_TRADES, ts, SPY, payload)

    def greeks_snapshot(self, ts: int) -> list[SimEvent]:
        years = self.years_left(ts)
        snapshot_id = f"SPY-{ts // 1_000_000}"
        events = []
        for c in self.contracts:
            iv = self.vol(c.strike, c.right)
            _, delta, gamma, theta, vega = black_scholes(self.spot, c.strike, years, iv, c.right)
            c.open_interest += self.rng.randint(0, 25)
            payload = {
                "underlying": SPY,
                "option_symbol": c.option_symbol,
                "delta": round(delta, 6),
                "gamma": round(gamma, 6),
                "theta": round(theta, 6),
                "vega": round(vega, 6),
                "implied_volatility": round(iv, 6),
                "open_interest": c.open_interest,
                "snapshot_id": snapshot_id,
            }
            events.append(self._event(OPTIONS_GREEKS, ts, SPY, payload))
        return events

    # ---- ES -------------------------------------------------------------------------------------

    def _level_size(self, depth: int) -> int:
        return self._heavy_size(1, 1.5, 2_000) + 5 * depth

    def _reprice_book(self) -> None:
        """Move the ladder to ES's fair value, keeping the sizes of levels that stay."""
        fair = self.spot * 10.0 + self.config.es_basis
        target_bid = math.floor((fair - ES_TICK / 2) / ES_TICK)
        target_ask = target_bid + (1 if self.rng.random() < 0.9 else 2)
        if not self.es_bid_sz:
            self.es_bid, self.es_ask = target_bid, target_ask
            self.es_bid_sz = [self._level_size(d) for d in range(LADDER_DEPTH)]
            self.es_ask_sz = [self._level_size(d) for d in range(LADDER_DEPTH)]
            return
        self.es_bid_sz = self._shift(self.es_bid_sz, target_bid - self.es_bid, rising_is_new=True)
        self.es_ask_sz = self._shift(self.es_ask_sz, target_ask - self.es_ask, rising_is_new=False)
        self.es_bid, self.es_ask = target_bid, target_ask
        # Resting size changes a little at a few levels.
        for sizes in (self.es_bid_sz, self.es_ask_sz):
            for _ in range(2):
                d = self.rng.randrange(LADDER_DEPTH)
                sizes[d] = max(1, sizes[d] + self.rng.randint(-20, 40))

    def _shift(self, sizes: list[int], ticks: int, rising_is_new: bool) -> list[int]:
        """Sizes after the best price moved by `ticks` (bids: up = new levels on top)."""
        if ticks == 0:
            return sizes
        if abs(ticks) >= LADDER_DEPTH:
            return [self._level_size(d) for d in range(LADDER_DEPTH)]
        new_on_top = (ticks > 0) == rising_is_new
        n = abs(ticks)
        if new_on_top:
            return [self._level_size(d) for d in range(n)] + sizes[: LADDER_DEPTH - n]
        return sizes[n:] + [self._level_size(LADDER_DEPTH - n + d) for d in range(n)]

    def mbp10(self, ts: int, reprice: bool = True) -> SimEvent:
        if reprice or not self.es_bid_sz:
            self._reprice_book()
        payload: dict[str, Any] = {"symbol": ES, "is_snapshot": not self.book_published}
        for d in range(LADDER_DEPTH):
            payload[f"bid_px_{d + 1}"] = (self.es_bid - d) * ES_TICK
        for d in range(LADDER_DEPTH):
            payload[f"bid_sz_{d + 1}"] = self.es_bid_sz[d]
        for d in range(LADDER_DEPTH):
            payload[f"ask_px_{d + 1}"] = (self.es_ask + d) * ES_TICK
        for d in range(LADDER_DEPTH):
            payload[f"ask_sz_{d + 1}"] = self.es_ask_sz[d]
        self.book_published = True
        return self._event(FUTURES_MBP10, ts, ES, payload)

    def futures_trade(self, ts: int) -> list[SimEvent]:
        """A trade against the published book, then the ladder update it caused."""
        events = []
        if not self.book_published:
            events.append(self.mbp10(ts))
        rng = self.rng
        fair = self.spot * 10.0 + self.config.es_basis
        mid = (self.es_bid + self.es_ask) / 2 * ES_TICK
        buy_p = 0.5 + max(-0.3, min(0.3, (fair - mid) * 0.6))
        aggressor = 1 if rng.random() < buy_p else -1
        sizes = self.es_ask_sz if aggressor == 1 else self.es_bid_sz
        tick = self.es_ask if aggressor == 1 else self.es_bid
        size = min(sizes[0], self._heavy_size(1, 1.4, 500))
        payload = {
            "symbol": ES,
            "price": tick * ES_TICK,
            "size": size,
            "aggressor": aggressor,
            "exchange": "CME",
        }
        events.append(self._event(FUTURES_TRADES, ts, ES, payload))
        sizes[0] -= size
        if sizes[0] == 0:  # level consumed: the next one becomes the best
            sizes.pop(0)
            sizes.append(self._level_size(LADDER_DEPTH - 1))
            if aggressor == 1:
                self.es_ask += 1
            else:
                self.es_bid -= 1
        events.append(self.mbp10(ts + 1, reprice=False))
        return events

    # ---- levels.signals -------------------------------------------------------------------------

    def signals(self, ts_ms: int) -> SimEvent:
        rng = self.rng
        spot = round(self.spot, 2)
        bid = self.bid_c / 100 if self.quoted else round(spot - 0.01, 2)
        ask = self.ask_c / 100 if self.quoted else round(spot + 0.01, 2)
        below, above = float(math.floor(spot)), float(math.ceil(spot))
        if above == below:
            above += 1.0
        vwap = round(self.vwap_num / self.vwap_den, 2) if self.vwap_den else spot
        calls = [c for c in self.contracts if c.right == "C"]
        puts = [c for c in self.contracts if c.right == "P"]
        call_wall = max(calls, key=lambda c: c.open_interest).strike
        put_wall = max(puts, key=lambda c: c.open_interest).strike
        total = self.buy_vol + self.sell_vol
        imbalance = (self.buy_vol - self.sell_vol) / total if total else 0.0
        velocity = (spot - self.last_signal_spot) / self.config.signals_interval_s
        candidates = [
            (f"STRIKE_{int(below)}", "STRIKE", below),
            (f"STRIKE_{int(above)}", "STRIKE", above),
            ("VWAP", "VWAP", vwap),
        ]
        levels = []
        for i, (level_id, kind, price) in enumerate(candidates):
            direction = "SUPPORT" if price <= spot else "RESISTANCE"
            distance = round(abs(spot - price), 4)
            raw = max(0.0, min(100.0, 100.0 - distance * 60.0 + rng.gauss(0.0, 12.0)))
            smooth = 0.7 * self.smooth.get(level_id, raw) + 0.3 * raw
            self.smooth[level_id] = smooth
            signal = "BREAK" if smooth >= 70 else "REJECT" if smooth <= 30 else "CONTESTED"
            confidence = (
                "HIGH" if abs(smooth - 50) > 30 else "MEDIUM" if abs(smooth - 50) > 12 else "LOW"
            )
            sweep = rng.random() < 0.08
            nxt = candidates[(i + 1) % len(candidates)]
            levels.append(
                {
                    "id": level_id,
                    "price": price,
                    "kind": kind,
                    "direction": direction,
                    "distance": distance,
                    "break_score_raw": round(raw, 2),
                    "break_score_smooth": round(smooth, 2),
                    "signal": signal,
                    "confidence": confidence,
                    "barrier": {
                        "state": rng.choice(("VACUUM", "WALL", "ABSORPTION", "NEUTRAL")),
                        "delta_liq": round(rng.gauss(0.0, 5_000.0), 2),
                        "replenishment_ratio": round(rng.uniform(0.0, 2.0), 4),
                        "added": rng.randint(0, 5_000),
                        "canceled": rng.randint(0, 5_000),
                        "filled": rng.randint(0, 2_000),
                    },
                    "tape": {
                        "imbalance": round(imbalance, 4),
                        "buy_vol": self.buy_vol,
                        "sell_vol": self.sell_vol,
                        "velocity": round(velocity, 4),
                        "sweep": {
                            "detected": sweep,
                            "direction": ("UP" if velocity >= 0 else "DOWN") if sweep else None,
                            "notional": round(rng.uniform(1e5, 5e6), 2) if sweep else 0.0,
                        },
                    },
                    "fuel": {
                        "effect": rng.choice(("AMPLIFY", "DAMPEN", "NEUTRAL")),
                        "net_dealer_gamma": round(rng.gauss(0.0, 2e8), 2),
                        "call_wall": call_wall,
                        "put_wall": put_wall,
                        "hvl": float(round(spot)),
                    },
                    "runway": {
                        "direction": "UP" if direction == "RESISTANCE" else "DOWN",
                        "next_level": {"id": nxt[0], "price": nxt[2]},
                        "distance": round(abs(nxt[2] - price), 4),
                        "quality": "CLEAR" if rng.random() < 0.6 else "OBSTRUCTED",
                    },
                    "note": f"simulated {kind.lower()} level",
                }
            )
        self.last_signal_spot = spot
        payload = {"ts": ts_ms, "spy": {"spot": spot, "bid": bid, "ask": ask}, "levels": levels}
        return self._event(LEVELS_SIGNALS, ts_ms * 1_000_000, SPY, payload)


_MARKET_KINDS = ("quote", "stock_trade", "option_trade", "futures_trade", "mbp10")
_MARKET_CUM_WEIGHTS = (30, 54, 66, 78, 88)  # futures trades add a ladder update each


def generate_events(config: SimulationConfig) -> Iterator[SimEvent]:
    """The session's events in event-time order, without injected faults.

    Market events arrive as a Poisson process at `config.rate`; greeks snapshots of the whole
    chain and `levels.signals` payloads come at their fixed intervals.

    Args:
        config: What to simulate.

    Yields:
        Events, ordered by `ts_event_ns` (ties keep generation order).
    """
    market = _Market(config)
    rng = market.rng
    start, end = config.start_ns, config.end_ns
    greeks_every = int(config.greeks_interval_s * _NS)
    signals_every = int(config.signals_interval_s * _NS)
    next_greeks = start
    next_signals = start + signals_every
    yield market.quote(start)
    yield market.mbp10(start)
    t = start
    while True:
        dt = rng.expovariate(config.rate)
        t_next = t + max(1, int(dt * _NS))
        while next_greeks < min(t_next, end) or next_signals < min(t_next, end):
            if next_greeks <= next_signals:
                yield from market.greeks_snapshot(next_greeks)
                next_greeks += greeks_every
            else:
                yield market.signals(next_signals // 1_000_000)
                next_signals += signals_every
        if t_next >= end:
            return
        market.step((t_next - t) / _NS)
        t = t_next
        kind = rng.choices(_MARKET_KINDS, cum_weights=_MARKET_CUM_WEIGHTS)[0]
        if kind == "quote":
            yield market.quote(t)
        elif kind == "stock_trade":
            yield market.stock_trade(t)
        elif kind == "option_trade":
            yield market.option_trade(t)
        elif kind == "futures_trade":
            yield from market.futures_trade(t)
        else:
            yield market.mbp10(t)


# ----------------------------------------------------------------------------------------------
# Messages and injected faults
# ----------------------------------------------------------------------------------------------

#: Required field each subject's "missing field" fault removes: (in payload?, field).
_REQUIRED_FIELD: dict[str, tuple[bool, str]] = {
    STOCKS_TRADES: (True, "price"),
    STOCKS_QUOTES: (False, "ts_event_ns"),  # an absent bid/ask side is valid (stored as 0)
    OPTIONS_TRADES: (True, "price"),
    OPTIONS_GREEKS: (True, "option_symbol"),
    FUTURES_TRADES: (True, "price"),
    FUTURES_MBP10: (False, "ts_event_ns"),
}
#: Field each subject's "negative price" fault negates (greeks: open interest).
_PRICE_FIELD: dict[str, str] = {
    STOCKS_TRADES: "price",
    STOCKS_QUOTES: "bid_px",
    OPTIONS_TRADES: "price",
    OPTIONS_GREEKS: "open_interest",
    FUTURES_TRADES: "price",
    FUTURES_MBP10: "bid_px_1",
}


def _malformed(event: SimEvent, kind: str) -> bytes:
    body = msgspec.json.decode(_encode(event.envelope))  # deep copy
    payload = body["payload"]
    if kind == "bad_json":
        text = _encode(body)
        return text[: max(1, len(text) // 2)]
    if event.subject == LEVELS_SIGNALS:
        level = payload["levels"][0]
        if kind == "missing_field":
            del level["id"]
        else:
            level["price"] = -abs(level["price"])
        return _encode(body)
    if kind == "missing_field":
        in_payload, name = _REQUIRED_FIELD[event.subject]
        (payload if in_payload else body).pop(name, None)
    else:
        name = _PRICE_FIELD[event.subject]
        payload[name] = -abs(payload[name]) or -1
    return _encode(body)


def build_messages(config: SimulationConfig) -> tuple[list[Message], SimulationStats]:
    """The session as the ordered messages to publish, with the configured faults injected.

    Fault injection uses its own random stream (seeded from `config.seed`), so enabling faults
    does not change the market itself.

    Args:
        config: What to simulate.

    Returns:
        The messages in publish order and what they contain.
    """
    stats = SimulationStats()
    events = list(generate_events(config))
    for ev in events:
        stats.events[ev.subject] += 1
        stats.rows[SUBJECT_TABLES[ev.subject]] += ev.rows
    faults = random.Random(config.seed * 7_919 + 1)

    # Out of order: some events are published after up to 30 newer ones.
    if config.out_of_order > 0:
        keyed = []
        for i, ev in enumerate(events):
            delay = 0.0
            if faults.random() < config.out_of_order:
                delay = faults.randint(1, 30) + 0.5
                stats.out_of_order += 1
            keyed.append((i + delay, ev))
        keyed.sort(key=lambda k: k[0])
        events = [ev for _, ev in keyed]

    # Batching: consecutive events of a subject share a message (a JSON array).
    prefix = f"sim-{config.seed}-{config.start_ns}"
    messages: list[Message] = []
    buffers: dict[str, list[SimEvent]] = {}

    def flush(subject: str) -> None:
        group = buffers.pop(subject)
        envs = [e.envelope for e in group]
        data = _encode(envs[0] if config.batch == 1 else envs)
        messages.append(
            Message(
                subject=subject,
                data=data,
                msg_id=f"{prefix}-{len(messages)}",
                events=len(group),
                rows=sum(e.rows for e in group),
            )
        )

    firsts: dict[int, SimEvent] = {}
    for ev in events:
        buffers.setdefault(ev.subject, []).append(ev)
        if len(buffers[ev.subject]) >= config.batch:
            firsts[len(messages)] = buffers[ev.subject][0]
            flush(ev.subject)
    for subject in list(buffers):
        firsts[len(messages)] = buffers[subject][0]
        flush(subject)

    # Duplicates (market subjects only: Gold has no dedup tier) and malformed messages.
    out: list[tuple[float, Message]] = []
    for i, msg in enumerate(messages):
        out.append((i, msg))
        if msg.subject != LEVELS_SIGNALS and faults.random() < config.duplicates:
            dup = replace(msg, msg_id=f"{msg.msg_id}-dup", kind="duplicate")
            out.append((i + faults.randint(1, 50) + 0.5, dup))
            stats.duplicate_messages += 1
            stats.duplicate_rows[msg.table] += msg.rows
        if faults.random() < config.bad:
            kind = faults.choice(BAD_KINDS)
            bad = Message(
                subject=msg.subject,
                data=_malformed(firsts[i], kind),
                msg_id=f"{msg.msg_id}-bad",
                kind="bad",
                events=0,
                rows=0,
                bad_kind=kind,
            )
            out.append((i + 0.25, bad))
            stats.bad_messages[kind] += 1
            stats.bad_by_table[msg.table] += 1
    out.sort(key=lambda k: k[0])
    final = [m for _, m in out]
    stats.messages = len(final)
    return final, stats


def ladder_problems(payload: dict[str, Any]) -> list[str]:
    """Consistency problems of one MBP-10 payload (empty when the ladder is sound).

    Checks: all 10 levels present, prices on the tick, sizes > 0, bids strictly descending,
    asks strictly ascending, best bid < best ask.

    Args:
        payload: an MBP-10 payload (`bid_px_1..10`, `bid_sz_1..10`, `ask_px_1..10`,
            `ask_sz_1..10`).

    Returns:
        One message per problem.
    """
    problems = []
    try:
        bids = [float(payload[f"bid_px_{d}"]) for d in range(1, LADDER_DEPTH + 1)]
        asks = [float(payload[f"ask_px_{d}"]) for d in range(1, LADDER_DEPTH + 1)]
        sizes = [int(payload[f"{s}_sz_{d}"]) for s in ("bid", "ask") for d in range(1, 11)]
    except (KeyError, TypeError, ValueError) as exc:
        return [f"incomplete ladder: {exc}"]
    if any(abs(p / ES_TICK - round(p / ES_TICK)) > 1e-9 for p in bids + asks):
        problems.append("price off the 0.25 tick")
    if any(s <= 0 for s in sizes):
        problems.append("non-positive size")
    if any(a <= b for a, b in zip(bids, bids[1:], strict=False)):
        problems.append(f"bids not strictly descending: {bids}")
    if any(b <= a for a, b in zip(asks, asks[1:], strict=False)):
        problems.append(f"asks not strictly ascending: {asks}")
    if bids[0] >= asks[0]:
        problems.append(f"crossed or locked book: bid {bids[0]} >= ask {asks[0]}")
    return problems


# ----------------------------------------------------------------------------------------------
# Publishing
# ----------------------------------------------------------------------------------------------


@dataclass
class PublishReport:
    """Outcome of publishing a session.

    Attributes:
        messages: Messages the server acknowledged as stored.
        server_duplicates: Messages the server dropped as repeats of a `Nats-Msg-Id`.
        events: Events in stored messages.
        seconds: Wall time of the publish.
        by_kind: Stored messages per kind (`event`, `duplicate`, `bad`).
    """

    messages: int = 0
    server_duplicates: int = 0
    events: int = 0
    seconds: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def messages_per_second(self) -> float:
        """Publish throughput."""
        return self.messages / self.seconds if self.seconds else 0.0


async def _ensure_streams(js: Any, settings: Settings) -> None:
    from iceberg_lake.engine import nats as bus

    with bus.bus_errors("creating the streams"):
        await bus.ensure_streams(js, settings)


async def publish_messages(
    messages: list[Message],
    settings: Settings,
    *,
    speed: float | None = None,
    start_ns: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_pending: int = 2_000,
) -> PublishReport:
    """Publish messages to JetStream with `Nats-Msg-Id` headers, paced or as fast as possible.

    Creates the lake's streams if missing. Publishing is asynchronous with up to `max_pending`
    unacknowledged messages; every acknowledgement is checked.

    Args:
        messages: What to publish, in order (`build_messages`).
        settings: NATS connection settings (`nats_url`, credentials, TLS).
        speed: Event-time seconds per wall second (1.0 = real time); None = no pacing.
        start_ns: Event time of the session start (for pacing; default: the first message's).
        progress: Called with `(messages done, total)` now and then.
        max_pending: Unacknowledged publishes in flight.

    Returns:
        What the server stored.

    Raises:
        TransientError: NATS is unreachable.
        LakeError: the server refused a publish.
    """
    from iceberg_lake.engine import nats as bus

    nc = await bus.connect(settings, name="lake-simulate")
    report = PublishReport()
    began = time.monotonic()
    try:
        js = nc.jetstream(publish_async_max_pending=max_pending)
        await _ensure_streams(js, settings)
        futures: list[tuple[Message, asyncio.Future[Any]]] = []
        horizon = start_ns
        for n, msg in enumerate(messages):
            if speed is not None and msg.kind == "event":
                ts = _first_ts(msg.data)
                if ts is not None:
                    horizon = ts if horizon is None else horizon
                    due = began + (ts - horizon) / _NS / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing to event time, not a wait guess
            fut = await js.publish_async(
                msg.subject, msg.data, headers={"Nats-Msg-Id": msg.msg_id}, wait_stall=30.0
            )
            futures.append((msg, fut))
            if progress is not None and n % 500 == 0:
                progress(n, len(messages))
        for msg, fut in futures:
            try:
                ack = await asyncio.wait_for(fut, timeout=30.0)
            except Exception as exc:
                raise LakeError(f"publish to {msg.subject} failed: {exc}") from None
            if ack.duplicate:
                report.server_duplicates += 1
                continue
            report.messages += 1
            report.events += msg.events
            report.by_kind[msg.kind] += 1
        if progress is not None:
            progress(len(messages), len(messages))
    finally:
        report.seconds = time.monotonic() - began
        await nc.close()
    return report


def _first_ts(data: bytes) -> int | None:
    """Event time of the first event of a body (for pacing)."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(obj, list):
        obj = obj[0] if obj else None
    return obj.get("ts_event_ns") if isinstance(obj, dict) else None


def simulate(
    settings: Settings,
    config: SimulationConfig,
    *,
    speed: float | None = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[SimulationStats, PublishReport]:
    """Build a session and publish it (blocking).

    Idempotent per config: republishing the same session within the stream's duplicate window
    stores nothing new (the server drops every repeated `Nats-Msg-Id`).

    Args:
        settings: NATS connection settings.
        config: What to simulate.
        speed: Event-time seconds per wall second (None = as fast as possible).
        progress: Called with `(messages done, total)`.

    Returns:
        What the session contains and what the server stored.
    """
    messages, stats = build_messages(config)
    report = asyncio.run(
        publish_messages(
            messages, settings, speed=speed, start_ns=config.start_ns, progress=progress
        )
    )
    return stats, report
