"""Replay to a real nats-server, and the backtest round trip through the Gold writer.

Each test owns a private nats-server (the MARKET/SIGNALS stream names are fixed, so a shared
server would mix these messages with other tests').
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from support.wait import await_until
from timetravel_data import T14, append, futures, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.ingest.service import LakeService
from iceberg_lake.testing import run_nats_server
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.readers import GoldReader
from iceberg_lake.timetravel.replay import ReplayEngine

pytestmark = pytest.mark.integration

STOCKS = "bronze.stocks_trades"
FUTURES = "bronze.futures_trades"
SEC = 10**9
WINDOW = (T14, T14 + 20 * 60 * SEC)


@pytest.fixture(scope="module")
def source(module_lake: LakeCatalog) -> Settings:
    """Bronze SPY trades every 2 s and ES futures every 3 s for 30 min, tagged `bt`, then more
    SPY trades in the same window (after the tag: a backtest from `bt` must not see them)."""
    catalog, settings = module_lake, module_lake.settings
    append(catalog.load_table(STOCKS), trades("SPY", T14, 900, 2 * SEC))
    append(catalog.load_table(FUTURES), futures("ES", T14, 600, 3 * SEC))
    snapshots.create_tag(settings, "bt", [STOCKS, FUTURES])
    append(catalog.load_table(STOCKS), trades("SPY", T14 + SEC, 300, 2 * SEC, seq0=5_000))
    return settings


async def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    await await_until(condition, timeout, what, interval=0.02)


def test_publish_on_original_subjects_and_under_a_prefix(source: Settings, tmp_path: Path) -> None:
    with run_nats_server(tmp_path / "nats") as server:
        settings = source.with_overrides(nats_url=server.url)

        async def scenario() -> tuple[dict, dict, list[tuple[str, bytes]], int]:
            nc = await bus.connect(settings, name="test-replay")
            js = nc.jetstream()
            await bus.ensure_streams(js, settings)
            got: list[tuple[str, bytes]] = []

            async def on_msg(msg: Any) -> None:
                got.append((msg.subject, msg.data))

            await nc.subscribe("replay.>", cb=on_msg)
            engine = ReplayEngine(settings, [FUTURES, STOCKS], *WINDOW, as_of="bt")
            prefixed = await engine.publish(nc, prefix="replay")
            await _until(lambda: len(got) == prefixed["event_count"], "prefixed events")
            # Without a prefix the events go to the original subjects, which MARKET captures.
            original = await ReplayEngine(settings, [STOCKS], *WINDOW, as_of="bt").publish()

            async def market_stored() -> int:
                return int((await js.stream_info("MARKET")).state.messages)

            async def all_stored() -> bool:
                return await market_stored() >= original["event_count"]

            await await_until(all_stored, 30, "MARKET to store the replayed events")
            stored = await market_stored()
            await nc.close()
            return prefixed, original, got, stored

        prefixed, original, got, stored = asyncio.run(scenario())

        # The CLI path: `lake replay --to-nats` onto the original subjects (MARKET stores them).
        env = {"LAKE_DATA_DIR": str(source.data_dir), "LAKE_NATS_URL": server.url}
        res = CliRunner().invoke(
            app,
            ["replay", "--tables", STOCKS, "--start", str(WINDOW[0]), "--end", str(WINDOW[1])]
            + ["--as-of", "bt", "--to-nats", "--no-progress"]
            + ["--manifest", str(tmp_path / "m.json")],
            env=env,
        )
        assert res.exit_code == 0, res.output
        assert "replayed 600 events" in res.stderr

        async def market_messages() -> int:
            nc = await bus.connect(settings, name="test-count")
            try:
                js = nc.jetstream()

                async def stored() -> int:
                    return int((await js.stream_info("MARKET")).state.messages)

                async def all_stored() -> bool:
                    return await stored() >= 1200

                await await_until(all_stored, 30, "MARKET to store the CLI's replay too")
                return await stored()
            finally:
                await nc.close()

        assert asyncio.run(market_messages()) == 1200

    expected = list(ReplayEngine(source, [FUTURES, STOCKS], *WINDOW, as_of="bt"))
    assert prefixed["event_count"] == len(expected) == 600 + 400
    subjects = {FUTURES: "replay.market.futures.trades", STOCKS: "replay.market.stocks.trades"}
    assert [s for s, _ in got] == [subjects[e["table"]] for e in expected]
    assert [json.loads(body) for _, body in got] == [
        {k: v for k, v in e.items() if k != "table"} for e in expected
    ]
    assert original["event_count"] == 600 and stored == 600

    gold = ReplayEngine(source, ["gold.levels_signals"], *WINDOW)
    with pytest.raises(TimeTravelError, match="under a prefix"):
        asyncio.run(gold.publish())


# ---- the backtest round trip --------------------------------------------------------------------


def core_standin(events: list[tuple[str, dict]]) -> list[dict]:
    """A small deterministic stand-in for the core engine: `levels.signals` payloads from the
    replayed tape (every 25th SPY trade, two levels, scores from running state)."""
    payloads: list[dict] = []
    spy_last, es_last, spy_volume, es_count, n_spy = 0.0, 0.0, 0, 0, 0
    for subject, row in events:
        if subject.endswith("futures.trades"):
            es_last, es_count = row["price"], es_count + 1
            continue
        spy_last, spy_volume, n_spy = row["price"], spy_volume + row["size"], n_spy + 1
        if n_spy % 25:
            continue
        levels = []
        for level in (100.0, 110.0):
            distance = round(level - spy_last, 6)
            raw = round((spy_volume % 97) / 97 + es_last / 10_000, 9)
            levels.append(
                {
                    "id": f"STRIKE_{int(level)}",
                    "kind": "STRIKE",
                    "price": level,
                    "direction": "UP" if distance > 0 else "DOWN",
                    "distance": distance,
                    "break_score_raw": raw,
                    "signal": "BREAK" if raw > 0.5 else "REJECT",
                    "tape": {"buy_vol": spy_volume, "sell_vol": es_count, "velocity": raw},
                }
            )
        payloads.append(
            {
                "ts": row["ts_event_ns"] // 1_000_000,
                "spy": {"spot": spy_last, "bid": spy_last - 0.01, "ask": spy_last + 0.01},
                "levels": levels,
            }
        )
    return payloads


async def _backtest(source: Settings, gold: Settings, tag: str) -> tuple[dict, int]:
    """Replay Bronze from `tag` to NATS → stand-in core → `levels.signals` → Gold writer."""
    nc = await bus.connect(gold, name="test-backtest")
    js = nc.jetstream()
    await bus.ensure_streams(js, gold)
    received: list[tuple[str, dict]] = []

    async def on_msg(msg: Any) -> None:
        received.append((msg.subject, json.loads(msg.data)))

    await nc.subscribe("bt.market.>", cb=on_msg)
    manifest = await ReplayEngine(source, [FUTURES, STOCKS], *WINDOW, as_of=tag).publish(
        nc, prefix="bt"
    )
    await _until(lambda: len(received) == manifest["event_count"], "replayed events")
    payloads = core_standin(received)
    for payload in payloads:
        await js.publish("levels.signals", json.dumps(payload).encode())
    await nc.close()
    await LakeService(gold, tables=["gold.levels_signals"]).run(
        stop_when_idle=True, idle_seconds=0.5
    )
    return manifest, len(payloads)


def _run_backtest(source: Settings, workdir: Path, tag: str) -> tuple[dict, int, pd.DataFrame]:
    with run_nats_server(workdir / "nats") as server:
        gold = load_settings(
            {"LAKE_DATA_DIR": str(workdir / "gold-lake"), "LAKE_NATS_URL": server.url}
        ).with_overrides(gold_batch_seconds=0.2)
        manifest, payloads = asyncio.run(_backtest(source, gold, tag))
    return manifest, payloads, GoldReader(gold).read_level_signals(date="2025-12-16")


def test_backtest_round_trip_from_a_tag_gives_identical_gold(
    source: Settings, tmp_path: Path
) -> None:
    first_manifest, payloads, first = _run_backtest(source, tmp_path / "run1", "bt")
    second_manifest, _, second = _run_backtest(source, tmp_path / "run2", "bt")

    assert first_manifest["sequence_hash"] == second_manifest["sequence_hash"]
    assert first_manifest["snapshots"] == second_manifest["snapshots"]
    assert payloads == 600 // 25 and len(first) == 2 * payloads
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    # The Gold rows are what the stand-in computes from the direct (in-process) replay.
    direct = [
        (f"bt.{e.subject}", e.row)
        for e in ReplayEngine(source, [FUTURES, STOCKS], *WINDOW, as_of="bt").events()
    ]
    expected = core_standin(direct)
    assert first["break_score_raw"].tolist() == [
        lv["break_score_raw"] for p in expected for lv in sorted(p["levels"], key=lambda x: x["id"])
    ]
    assert first["tape_buy_vol"].tolist()[-1] == expected[-1]["levels"][0]["tape"]["buy_vol"]
