"""Live tail (issue 18): live queries and live replays against a real nats-server and `lake serve`.

Budget: about 60 s for the module (measured 61 s on the shared machine; the two tests with a
`lake serve` take ~20 s each, ~100 live probes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ingest_support import (
    encode,
    gold_payload,
    make_event,
    run_until_idle,
    settings_env,
    settings_for,
)
from support.wait import await_until, wait_until

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.ops import metrics
from iceberg_lake.ops.status import collect_status
from iceberg_lake.testing import NatsServer, run_nats_server
from iceberg_lake.timetravel.live import freshness
from iceberg_lake.timetravel.query import Lake
from iceberg_lake.timetravel.replay import ReplayEngine

pytestmark = pytest.mark.integration

LAKE = str(Path(sys.executable).parent / "lake")
TABLE = "bronze.stocks_trades"
SUBJECT = "market.stocks.trades"
COUNT_SQL = f"SELECT count(*) AS n, count(DISTINCT seq) AS d FROM {TABLE}"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server: the tests own the MARKET stream (fixed name, counts from seq 1)."""
    with run_nats_server(tmp_path / "nats") as server:
        yield server


def lake_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKE_")}
    env.update(settings_env(settings))
    env["LAKE_MAX_BUFFERED_EVENTS"] = str(max(200_000, settings.bronze_batch_size))
    return env


def start_serve(
    settings: Settings, log: Path, tables: list[str] | None = None, *args: str
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [LAKE, "--log-level", "INFO", "serve", "--tables", ",".join(tables or [TABLE]), *args],
            env=lake_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def watermark(settings: Settings) -> int:
    key = f"{properties.WATERMARK_PREFIX}MARKET.{bus.consumer_name(TABLE)}"
    try:
        return int(LakeCatalog(settings).load_table(TABLE).properties.get(key, 0))
    except Exception:
        return 0


def event(i: int, ts_ns: int | None = None) -> dict:
    e = make_event(TABLE, i)
    if ts_ns is not None:
        e["ts_event_ns"], e["ts_recv_ns"] = ts_ns, ts_ns + 1_000
    return e


class Publisher:
    """Acked JetStream publishes from a background loop (each call returns once stored)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(bus.connect(settings, name="test-live"))
        self.js = self.nc.jetstream()
        self.loop.run_until_complete(bus.ensure_streams(self.js, settings))

    def publish(self, events: list[dict | bytes]) -> int:
        async def go() -> int:
            seq = 0
            for e in events:
                ack = await self.js.publish(SUBJECT, e if isinstance(e, bytes) else encode(e))
                seq = ack.seq
            return seq

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        async def shut() -> None:
            await self.nc.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.loop.run_until_complete(shut())
        self.loop.close()


def wait_for(predicate, timeout: float, what: str) -> None:  # noqa: ANN001
    wait_until(predicate, timeout, what)


def _follow_on_thread(engine: ReplayEngine, pick: Any = None) -> tuple[threading.Thread, list[Any]]:
    """Run `engine.all_events()` on a thread (a following replay blocks until its window has
    passed): the thread, and the list it fills with each event's row (or `pick(row)`)."""
    got: list[Any] = []

    def replay() -> None:
        got.extend(e.as_dict() if pick is None else pick(e.as_dict()) for e in engine.all_events())

    follow = threading.Thread(target=replay)
    follow.start()
    return follow, got


async def _own_stream(url: str, label: str, **config: Any) -> tuple[Any, Any, str]:
    """A connection, its JetStream context and a stream of the test's own (`<label><ns>`,
    subjects `<label lower-cased><ns>.>`, `config` as StreamConfig fields): (nc, js, name)."""
    import nats as nats_py
    from nats.js.api import StreamConfig

    nc = await nats_py.connect(url)
    js = nc.jetstream()
    name = f"{label}{time.time_ns()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"], **config))
    return nc, js, name


def test_live_query_sees_each_event_and_counts_exactly(tmp_path: Path, nats: NatsServer) -> None:
    """Each published event is visible to a live query with 60 s flushes (its p50/p99 printed,
    not asserted: the time depends on the machine's load, docs/live.md has the figures); the
    live count equals the distinct published events at every probe across a size-forced commit,
    a SIGKILL and a restart."""
    settings = settings_for(tmp_path, nats.url).with_overrides(
        bronze_batch_seconds=60.0, bronze_batch_size=60, max_buffered_events=200_000
    )
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    serve = start_serve(settings, tmp_path / "serve.log")
    lake = Lake(settings)
    published = 0

    def probe() -> tuple[int, int]:
        row = lake.query(COUNT_SQL, live=True).to_pylist()[0]
        # Every probe: each published event exactly once, whatever the writer is doing.
        assert row["n"] == row["d"] == published, (row, published, lake.last_live)
        return row["n"], lake.last_live[TABLE].watermark

    try:
        # 0. Messages the writer rejects (dead letters) are not in the live view either.
        pub.publish([b'{"symbol": "SPY", "price": "x"}', b"not json"])
        probe()
        assert lake.last_live[TABLE].tail_messages == 2
        # 1. 50 probes, one event each, none committed yet (60 s flush, batch of 60).
        latencies = []
        for i in range(50):
            t0 = time.perf_counter()
            pub.publish([event(i)])
            published += 1
            # Probing without a pause: the time until it is visible is what is measured.
            wait_until(lambda n=published: probe()[0] >= n, 5, f"event {i} visible", interval=0)
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        print(f"visibility p50 {latencies[25]:.3f} s, p99 {p99:.3f} s, t={time.perf_counter()}")
        assert lake.last_live[TABLE].snapshot_id is None  # nothing committed: all from the tail

        # 2. Cross the batch size: the writer commits while we keep probing.
        pub.publish([event(i) for i in range(50, 80)])
        published = 80
        wait_until(
            lambda: probe()[1] > 0, 60, "the writer to commit by size", interval=0, alive=serve
        )
        rng = lake.last_live[TABLE]
        assert rng.snapshot_id is not None and rng.watermark >= 60
        assert rng.tail_rows == rng.last_seq - rng.watermark  # stream seq = event + 2

        # 3. More events, then kill the writer mid-batch: nothing lost, nothing doubled.
        pub.publish([event(i) for i in range(80, 90)])
        published = 90
        stop(serve, signal.SIGKILL)
        for _ in range(5):
            probe()

        # 4. Restart with short flushes: the writer commits the rest while we probe.
        quick = settings.with_overrides(bronze_batch_seconds=0.3)
        serve = start_serve(quick, tmp_path / "serve2.log")
        wait_until(
            lambda: probe()[1] >= 90,
            60,
            "the restarted writer to catch up",
            interval=0,
            alive=serve,
        )
        assert lake.last_live[TABLE].tail_rows == 0

        # 5. The CLI says what it read.
        out = subprocess.run(
            [LAKE, "query", "--live", "-o", "json", COUNT_SQL],
            env=lake_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["n"] == 90
        assert f"{TABLE}@" in out.stderr and "MARKET seq" in out.stderr
    finally:
        lake.close()
        pub.close()
        stop(serve)


QUOTES = "bronze.stocks_quotes"
GOLD = "gold.levels_signals"
FOLLOWED = [TABLE, QUOTES, GOLD]


def stamped(table: str, i: int, ts_ns: int) -> dict:
    """Event `i` of `table` at `ts_ns` (a Gold payload: `ts` in ms, two levels)."""
    if table == GOLD:
        return {**gold_payload(i), "ts": ts_ns // 1_000_000}
    e = make_event(table, i)
    e["ts_event_ns"], e["ts_recv_ns"] = ts_ns, ts_ns + 1_000
    return e


def publish_to(pub: Publisher, table: str, bodies: list[Any]) -> int:
    """Publish each body (an event, or a list of events: one batched message) on `table`'s
    subject; the stream sequence of the last."""
    subject = LakeCatalog(pub.settings).definition(table).subject

    async def go() -> int:
        seq = 0
        for body in bodies:
            seq = (await pub.js.publish(subject, encode(body))).seq
        return seq

    return pub.loop.run_until_complete(go())


def table_watermark(settings: Settings, table: str) -> int:
    catalog = LakeCatalog(settings)
    stream = bus.stream_for_subject(catalog.definition(table).subject)
    key = f"{properties.WATERMARK_PREFIX}{stream}.{bus.consumer_name(table)}"
    return int(catalog.load_table(table).properties.get(key, 0))


def scrape(port: int) -> dict[tuple[str, str], float]:
    """`lake_table_newest_event_timestamp_seconds` of a `lake serve --metrics-port`:
    (table, view) → value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.labels["table"], s.labels["view"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "lake_table_newest_event_timestamp_seconds"
        for s in family.samples
    }


def durable_consumers(pub: Publisher) -> dict[str, tuple[Any, ...]]:
    """Durable consumers of MARKET and SIGNALS: name → what a reader could have moved."""

    async def go() -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for stream in (bus.MARKET_STREAM, bus.SIGNALS_STREAM):
            for c in await pub.js.consumers_info(stream):
                if c.config.durable_name:
                    out[c.name] = (
                        c.delivered.stream_seq,
                        c.delivered.consumer_seq,
                        c.ack_floor.stream_seq,
                        c.num_ack_pending,
                        c.num_redelivered,
                        c.num_pending,
                    )
        return out

    return pub.loop.run_until_complete(go())


def ephemeral_consumers(pub: Publisher) -> list[str]:
    async def go() -> list[str]:
        return [
            c.name
            for stream in (bus.MARKET_STREAM, bus.SIGNALS_STREAM)
            for c in await pub.js.consumers_info(stream)
            if not c.config.durable_name
        ]

    return pub.loop.run_until_complete(go())


def test_live_follow_replay_of_three_tables_is_exactly_once_in_rounds_and_leaves_writers_alone(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A following live replay of trades, quotes and a Gold table while `lake serve` commits
    across it: every window event exactly once across the history/tail boundary, each arrival
    round in event-time order, the same set as the committed replay later; the writers' metrics
    report committed and decoded freshness; `lake status -o json` and a CLI live replay with a
    tail present; the writers' durable consumers untouched by live reads, whose ephemeral
    consumers are gone after.

    Budget: ~20 s (one `lake serve` of three tables, a ~4 s follow, one in-process flush)."""
    from typer.testing import CliRunner

    from iceberg_lake.cli.app import app
    from iceberg_lake.testing import free_port

    settings = settings_for(tmp_path, nats.url).with_overrides(
        bronze_batch_seconds=60.0,
        bronze_batch_size=20,
        gold_batch_seconds=60.0,
        gold_batch_size=8,
        max_buffered_events=200_000,
    )
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    port = free_port()
    serve = start_serve(settings, tmp_path / "serve.log", FOLLOWED, "--metrics-port", str(port))
    now = time.time_ns()
    start_ns = now - 10 * 10**9
    at = lambda k: start_ns + k * 10**8  # noqa: E731  (0.1 s steps)
    published: dict[str, list[int]] = {t: [] for t in FOLLOWED}  # event times per table
    last_seq: dict[str, int] = {}  # stream sequence of each table's last message

    def send(table: str, bodies: list[Any]) -> None:
        last_seq[table] = publish_to(pub, table, bodies)
        for b in bodies:
            events = b if isinstance(b, list) else [b]
            published[table] += [
                e["ts"] * 1_000_000 if table == GOLD else e["ts_event_ns"] for e in events
            ]

    try:
        # History, committed by size: 20 trades and quotes (event times reversed), 4 Gold
        # payloads (8 rows).
        send(TABLE, [stamped(TABLE, i, at(40 - i)) for i in range(20)])
        send(QUOTES, [stamped(QUOTES, i, at(40 - i) + 1) for i in range(20)])
        send(GOLD, [stamped(GOLD, i, at(10 + i) + 2_000_000) for i in range(4)])
        pinned = dict(last_seq)  # the watermarks the replay will start from
        for t, wm in pinned.items():
            wait_for(lambda t=t, wm=wm: table_watermark(settings, t) == wm, 20, f"{t} commit")
        # The tail at the pin, decoded by the writers but not committed (60 s flush).
        send(TABLE, [stamped(TABLE, i, at(50 + i)) for i in range(20, 25)])
        send(QUOTES, [stamped(QUOTES, i, at(50 + i) + 1) for i in range(20, 25)])
        send(GOLD, [stamped(GOLD, i, at(20 + i) + 2_000_000) for i in range(4, 6)])

        # A real writer run updates the freshness metrics: committed rows, and decoded ones.
        def metrics_caught_up() -> bool:
            got = scrape(port)
            return all(got.get((t, "live")) == max(published[t]) / 1e9 for t in FOLLOWED)

        wait_for(metrics_caught_up, 10, "the writers' live freshness metric")
        got = scrape(port)
        assert got[(TABLE, "committed")] == max(published[TABLE][:20]) / 1e9
        assert got[(GOLD, "committed")] == max(published[GOLD][:4]) / 1e9
        assert got[(TABLE, "live")] > got[(TABLE, "committed")]

        # Follow the window (ends in the future) on a thread; each event with its round.
        end_ns = time.time_ns() + 4 * 10**9
        engine = ReplayEngine(
            settings, FOLLOWED, start_ns, end_ns, pin=False, live=True, follow=True
        )
        assert engine._live is not None
        delivered: list[tuple[int, dict[str, Any]]] = []

        def run() -> None:
            for e in engine.all_events():
                delivered.append((engine._live.rounds, e.as_dict()))

        follow = threading.Thread(target=run)
        follow.start()
        # Six rounds while it follows, crossing each writer's batch size (a commit lands
        # meanwhile): trades and quotes as one batched message each, event times descending.
        for r in range(6):
            base = 60 + 10 * r
            i0 = 25 + 3 * r
            send(TABLE, [[stamped(TABLE, i0 + k, at(base + 3 - k)) for k in range(3)]])
            send(QUOTES, [[stamped(QUOTES, i0 + k, at(base + 3 - k) + 1) for k in range(3)]])
            send(GOLD, [stamped(GOLD, 6 + r, at(base + 1) + 2_000_000)])
            time.sleep(0.3)  # pacing the publisher over the follow phase
        send(TABLE, [stamped(TABLE, 999, end_ns + 10**9)])  # after the window: not delivered
        follow.join(timeout=20)
        assert not follow.is_alive()
        assert all(table_watermark(settings, t) > pinned[t] for t in FOLLOWED), "no commit"

        key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
        rows = [e for _, e in delivered]
        counts = {t: sum(e["table"] == t for e in rows) for t in FOLLOWED}
        assert counts == {TABLE: 43, QUOTES: 43, GOLD: 24}, counts
        assert len({key(e) for e in rows}) == len(rows) == 110, "each window event once"
        manifest = engine.manifest()
        assert manifest["complete"] and manifest["event_count"] == 110
        tail = manifest["live"]["tail_events"]
        assert tail == 110 - 48  # history: what the pins held (20 + 20 + 8 rows)
        for t in FOLLOWED:
            assert manifest["live"]["tables"][t]["watermark"] == pinned[t]
        # Order: history in replay order; then each arrival round sorted by event time (the
        # batched messages arrived in descending event time, so a round re-sorted them).
        rounds: dict[int, list[dict[str, Any]]] = {}
        for r, e in delivered:
            rounds.setdefault(r, []).append(e)
        assert len(rounds[0]) == 48
        for r, events in rounds.items():
            ts = [e["ts_event_ns"] for e in events]
            assert ts == sorted(ts), f"round {r} not in event-time order"
        resorted = [
            r
            for r, events in rounds.items()
            if r
            and [e["seq"] for e in events if e["table"] == TABLE]
            != sorted(e["seq"] for e in events if e["table"] == TABLE)
        ]
        assert resorted, "no round held a batched message out of event-time order"

        # Kill the writers: their batches stay in the tail, their consumers sit still.
        stop(serve, signal.SIGKILL)
        before = durable_consumers(pub)
        assert sorted(before) == sorted(bus.consumer_name(t) for t in FOLLOWED)

        # `lake status -o json`: committed and live freshness with a tail present.
        env = settings_env(settings)
        t0 = time.time_ns()
        res = CliRunner().invoke(app, ["status", "--output", "json"], env=env)
        t1 = time.time_ns()
        assert res.exit_code == 0, res.output
        status = {t["table"]: t for t in json.loads(res.stdout)["tables"]}
        with Lake(settings) as lake:
            for t in FOLLOWED:
                committed = lake.query(f"SELECT max(ts_event_ns) AS m FROM {t}").column("m")[0]
                for field, newest in (
                    ("committed_freshness_seconds", committed.as_py()),
                    ("live_freshness_seconds", max(published[t])),
                ):
                    lo, hi = (t0 - newest) / 1e9 - 0.01, (t1 - newest) / 1e9 + 0.01
                    assert lo <= status[t][field] <= hi, (t, field, status[t][field], lo, hi)

        # The CLI's live replay (--follow of a window that has passed: it takes what is
        # stored and stops) delivers the same events from the new history and the tail.
        out = tmp_path / "live.ndjson"
        args = ["replay", "--tables", ",".join(FOLLOWED), "--start", str(start_ns)]
        args += ["--end", str(end_ns), "--live", "--follow", "--no-progress", "--out", str(out)]
        args += ["--manifest", str(tmp_path / "m.json")]
        res = CliRunner().invoke(app, args, env=env)
        assert res.exit_code == 0, res.output
        again = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(map(key, again)) == sorted(map(key, rows))
        assert durable_consumers(pub) == before, "a live read moved a writer's consumer"
        # Its manifest's pins do not hold the tail: --from-manifest refuses it in one line,
        # naming the command that replays the window from the snapshots committed since.
        assert json.loads((tmp_path / "m.json").read_text())["live"]["tail_events"] > 0
        replay_again = ["replay", "--from-manifest", str(tmp_path / "m.json"), "--no-progress"]
        replay_again += ["--out", str(tmp_path / "again.ndjson")]
        refused = CliRunner().invoke(
            app, [*replay_again, "--manifest", str(tmp_path / "m2.json")], env=env
        )
        assert refused.exit_code == 1 and "Traceback" not in refused.output
        assert "recorded by a live replay" in refused.output and "--tables" in refused.output
        # The suggested window is the exact one, in ns (ISO times stop at microseconds).
        assert f"--start {start_ns} --end {end_ns}" in " ".join(refused.output.split())
        assert not (tmp_path / "m2.json").exists()

        # Everything committed (the writers, in-process, until idle): the committed replay of
        # the window holds exactly the events the live replay delivered.
        run_until_idle(settings, FOLLOWED)
        committed = ReplayEngine(settings, FOLLOWED, start_ns, end_ns, pin=False)
        assert sorted(key(e.as_dict()) for e in committed.events()) == sorted(map(key, rows))
        # The live reads' ephemeral consumers are gone (inactive threshold: 5 s).
        wait_for(lambda: not ephemeral_consumers(pub), 10, "the ephemeral consumers to go")
    finally:
        pub.close()
        stop(serve)


def test_freshness_metrics_follow_the_newest_event() -> None:
    """The writer's hooks: committed rows count for both views, decoded rows for the live one;
    freshness is now − newest, computed at scrape time, and never moves backwards."""
    import pyarrow as pa

    now = time.time()
    metrics.note_events("bronze.t_live", "live", pa.table({"ts_event_ns": [int(now * 1e9)]}))
    old = pa.table({"ts_event_ns": [int((now - 30) * 1e9)]})
    metrics.note_events("bronze.t_live", "committed", old)
    metrics.note_events("bronze.t_live", "live", old)  # older: ignored

    def value(view: str) -> float:
        got = metrics.REGISTRY.get_sample_value(
            "lake_table_freshness_seconds", {"table": "bronze.t_live", "view": view}
        )
        assert got is not None
        return got

    assert 29 <= value("committed") <= 40
    assert 0 <= value("live") <= 10


def test_guard_ack_subject_fields_match_nats_py_metadata(nats_server: NatsServer) -> None:
    """Guard: `engine.nats_tail` reads sequence, time, pending and the consumer sequence from
    the delivery's reply subject; they must equal what nats-py's `msg.metadata` parses."""

    from iceberg_lake.engine.nats_tail import _ack_fields, _consumer_seq

    async def go() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        nc, js, name = await _own_stream(nats_server.url, "LIVEGUARD")
        for i in range(3):
            await js.publish(f"{name.lower()}.x", str(i).encode())
        got: list[tuple[tuple[int, int, int], tuple[int, int, int]]] = []
        done = asyncio.Event()

        async def cb(msg) -> None:  # noqa: ANN001
            meta = msg.metadata
            want = (
                meta.sequence.stream,
                int(meta.timestamp.timestamp() * 1000),
                meta.num_pending,
            )
            seq, ts_ns, pending = _ack_fields(msg.reply)
            assert _consumer_seq(msg.reply) == meta.sequence.consumer
            got.append(((seq, ts_ns // 1_000_000, pending), want))
            if len(got) == 3:
                done.set()

        sub = await js.subscribe(f"{name.lower()}.x", stream=name, cb=cb, ordered_consumer=True)
        await asyncio.wait_for(done.wait(), 10)
        await sub.unsubscribe()
        await js.delete_stream(name)
        await nc.close()
        return got

    pairs = asyncio.run(go())
    assert [p[0][0] for p in pairs] == [1, 2, 3]
    for ours, theirs in pairs:
        assert ours[0] == theirs[0] and ours[2] == theirs[2]
        assert abs(ours[1] - theirs[1]) <= 1  # ms (nats-py's datetime has µs precision)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--tables", TABLE, "--start", "1", "--end", "2", "--follow"], "--follow needs"),
        (
            ["replay", "--tables", TABLE, "--start", "1", "--end", "2", "--lateness", "3"],
            "--lateness needs --live --follow",
        ),
        (
            ["replay", "--tables", TABLE, "--start", "1", "--end", "2", "--live", "--as-of", "x"],
            "live",
        ),
        (["query", "--live", "--as-of", "x", "SELECT 1"], "--live"),
    ],
)
def test_live_cli_argument_errors_are_one_line(args: list[str], message: str) -> None:
    """Bad combinations end with one readable message and a non-zero exit."""
    from typer.testing import CliRunner

    from iceberg_lake.cli.app import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output


def test_live_replay_of_a_table_without_a_tail_is_one_line_error(tmp_path: Path) -> None:
    """`--live` on a Silver table (alone or beside a Bronze one) would silently stop at its
    snapshot: refused with one line, before anything is pinned. No NATS needed."""
    from typer.testing import CliRunner

    from iceberg_lake.cli.app import app
    from iceberg_lake.exceptions import TimeTravelError

    settings = settings_for(tmp_path, "nats://127.0.0.1:1")
    LakeCatalog(settings).init()
    with pytest.raises(TimeTravelError, match="silver.stocks_trades has no live tail"):
        ReplayEngine(settings, [TABLE, "silver.stocks_trades"], 0, 10**9, pin=False, live=True)
    args = ["replay", "--tables", "silver.stocks_trades", "--start", "1", "--end", "2", "--live"]
    res = CliRunner().invoke(app, args, env=settings_env(settings))
    assert res.exit_code == 1, res.output
    assert "silver.stocks_trades has no live tail" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert LakeCatalog(settings).load_table("silver.stocks_trades").metadata.refs == {}


def test_live_replay_without_follow_publishes_history_and_tail_to_nats(
    tmp_path: Path, nats: NatsServer
) -> None:
    """No writer running: the table is empty and the whole window is in the tail; a live replay
    (no --follow) publishes it once under a prefix and stops at the newest message."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    try:
        pub.publish([event(i, now + i) for i in range(12)] + [b"not json"])
        engine = ReplayEngine(settings, [TABLE], now, now + 10**9, pin=False, live=True)

        async def go() -> tuple[dict, list[int]]:
            nc = await bus.connect(settings, name="test-live-sub")
            got: list[int] = []

            async def on_msg(msg) -> None:  # noqa: ANN001
                got.append(json.loads(msg.data)["seq"])

            sub = await nc.subscribe(f"replay.{SUBJECT}", cb=on_msg)
            await nc.flush()  # the server has the subscription before the replay's connection sends
            manifest = await engine.publish(prefix="replay")
            await nc.flush()
            await await_until(lambda: len(got) >= 12, 5, "12 replayed events")
            await sub.unsubscribe()
            await nc.close()
            return manifest, got

        manifest, got = asyncio.run(go())
        assert sorted(got) == list(range(12)), "each event once; the rejected message left out"
        assert manifest["event_count"] == 12 and manifest["complete"]
        assert manifest["live"]["tail_events"] == 12
    finally:
        pub.close()


def test_live_views_report_messages_the_stream_limits_removed(
    tmp_path: Path, nats: NatsServer
) -> None:
    """No writer, MARKET capped at 5 messages: what the stream removed after the watermark is
    reported with its sequence range (query metadata, CLI stderr, status, replay manifest);
    a tail within the limit reports nothing."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    lake = Lake(settings)
    now = time.time_ns()
    try:
        _cap_market(pub, 5)

        pub.publish([event(i, now + i) for i in range(3)])
        result = lake.query(COUNT_SQL, live=True)
        assert result.column("n").to_pylist() == [3]
        assert json.loads(result.schema.metadata[b"lake.live.warnings"]) == []
        assert lake.last_live[TABLE].removed is None

        # 12 published, 5 kept: seq 1..7 are gone. This Lake read 1..3 before (cached), so
        # its view lacks 4..7; a new reader lacks 1..7.
        pub.publish([event(i, now + i) for i in range(3, 12)])
        result = lake.query(COUNT_SQL, live=True)
        assert result.column("n").to_pylist() == [8]
        assert lake.last_live[TABLE].removed == (4, 7)
        warnings = json.loads(result.schema.metadata[b"lake.live.warnings"])
        assert len(warnings) == 1 and "seq 4..7" in warnings[0] and TABLE in warnings[0]

        # `lake query --live` (in-process: the command's code without the start-up cost).
        from typer.testing import CliRunner

        from iceberg_lake.cli.app import app

        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LAKE_")}
        env.update(settings_env(settings))
        out = CliRunner().invoke(app, ["query", "--live", "-o", "json", COUNT_SQL], env=env)
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)[0]["n"] == 5
        assert "warning:" in out.stderr and "seq 1..7" in out.stderr, out.stderr

        status = {t.table: t for t in collect_status(LakeCatalog(settings)).tables}
        assert status[TABLE].live_warning is not None and "seq 1..7" in status[TABLE].live_warning
        # JetStream keeps no record of the subjects it removed: every table of the stream
        # whose watermark is below the removed range is warned about ("any ... among them").
        quotes = status["bronze.stocks_quotes"].live_warning
        assert quotes is not None and "any market.stocks.quotes messages" in quotes

        engine = ReplayEngine(settings, [TABLE], now, now + 10**9, pin=False, live=True)
        assert len(list(engine.all_events())) == 5
        manifest = engine.manifest()
        assert manifest["live"]["tables"][TABLE]["removed"] == [1, 7]
        assert "seq 1..7" in manifest["live"]["warnings"][0]
    finally:
        lake.close()
        pub.close()


def test_live_view_includes_rows_routed_by_schema_inference(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unmapped `market.*` messages are in the live view of the table schema inference routes
    them to (once its consumer exists), decoded as its writer stores them, exactly once across
    the inference writer's commit."""
    settings = settings_for(tmp_path, nats.url).with_overrides(bronze_batch_seconds=0.3)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    lake = Lake(settings)
    quotes = "bronze.stocks_quotes"
    columns = "symbol, price, size, exchange, seq, ts_event_ns, ts_recv_ns, source"
    inferred_sql = f"SELECT {columns} FROM {TABLE} WHERE seq >= 100 ORDER BY seq"

    def publish_raw(bodies: list[bytes]) -> None:
        async def go() -> None:
            for body in bodies:
                await pub.js.publish("market.misc.prints", body)

        pub.loop.run_until_complete(go())

    def live_count(table: str) -> int:
        return lake.query(f"SELECT count(*) AS n FROM {table}", live=True).column("n")[0].as_py()

    try:
        pub.publish([event(i) for i in range(3)])
        publish_raw(
            [encode(make_event(TABLE, 100)), encode(make_event(TABLE, 101))]
            + [encode(make_event(quotes, 7)), b"not json", encode({"x": 1})]
        )
        # No inference consumer: nothing would store the unmapped messages.
        assert live_count(TABLE) == 3
        assert lake.last_live[TABLE].inferred_after is None

        pub.loop.run_until_complete(bus.ensure_consumer(pub.js, bus.INFERRED_TARGET))
        assert live_count(TABLE) == 5
        rng = lake.last_live[TABLE]
        assert (rng.inferred_rows, rng.tail_rows, rng.inferred_after) == (2, 5, 0)
        assert "inferred seq 1..8 (2 rows)" in rng.describe()
        assert live_count(quotes) == 1
        live_rows = lake.query(inferred_sql, live=True).to_pylist()
        assert [r["seq"] for r in live_rows] == [100, 101]
        # Many unmapped subjects: one consumer on market.> instead of one per subject.
        from iceberg_lake.timetravel.live import inferred

        monkeypatch.setattr(inferred, "MAX_SUBJECT_READS", 0)
        with Lake(settings) as wide:
            assert wide.query(inferred_sql, live=True).to_pylist() == live_rows
        monkeypatch.undo()

        # The inference writer commits them (in-process, until idle) while we probe: still
        # each once, then from the snapshot.
        writer = threading.Thread(target=run_until_idle, args=(settings, [bus.INFERRED_TARGET]))
        writer.start()
        while writer.is_alive():
            assert live_count(TABLE) == 5 and live_count(quotes) == 1
        writer.join()
        key = f"{properties.WATERMARK_PREFIX}MARKET.lake_inferred"
        assert int(LakeCatalog(settings).load_table(TABLE).properties[key]) == 8
        assert live_count(TABLE) == 5 and lake.last_live[TABLE].inferred_rows == 0
        assert lake.query(inferred_sql).to_pylist() == live_rows  # as the writer stored them
    finally:
        lake.close()
        pub.close()


def test_live_replay_and_freshness_include_rows_routed_by_schema_inference(
    tmp_path: Path, nats: NatsServer
) -> None:
    """Unmapped `market.*` messages schema inference routes into the table: a live replay
    (following, and bounded) delivers each exactly once across the inference writer's commits,
    including one on a subject that appears while it follows; freshness counts them.

    Budget: ~10 s (two in-process inference runs, a ~4 s follow)."""
    settings = settings_for(tmp_path, nats.url).with_overrides(bronze_batch_seconds=0.3)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    start_ns = now - 60 * 10**9

    def at(i: int, ts_ns: int) -> bytes:
        return encode(event(i, ts_ns))

    def publish_on(subject: str, bodies: list[bytes]) -> None:
        async def go() -> None:
            for body in bodies:
                await pub.js.publish(subject, body)

        pub.loop.run_until_complete(go())

    def run_inference() -> None:
        run_until_idle(settings, [bus.INFERRED_TARGET])

    try:
        pub.loop.run_until_complete(bus.ensure_consumer(pub.js, bus.INFERRED_TARGET))
        # Committed by the inference writer before the replay: its history.
        quote = encode(make_event("bronze.stocks_quotes", 7))
        publish_on("market.misc.prints", [at(100 + i, now - 50 * 10**9 + i) for i in range(3)])
        publish_on("market.misc.prints", [quote, b"not json"])
        run_inference()
        # Tail at the pin: two on the table's own subject (no writer), two inferred.
        pub.publish([event(i, now - 40 * 10**9 + i) for i in range(2)])
        publish_on("market.misc.prints", [at(103, now - 30 * 10**9), at(104, now - 29 * 10**9)])

        end_ns = time.time_ns() + 4 * 10**9
        engine = ReplayEngine(
            settings, [TABLE], start_ns, end_ns, pin=False, live=True, follow=True
        )
        # The inference writer commits 103 and 104 after the pins were read: the replay must
        # still take them from the stream (once), not from the snapshot.
        run_inference()
        key = f"{properties.WATERMARK_PREFIX}MARKET.lake_inferred"
        assert int(LakeCatalog(settings).load_table(TABLE).properties[key]) >= 7

        follow, got = _follow_on_thread(engine, None)
        wait_for(lambda: engine._live.tail_events >= 4, 10, "the tail at the pin")
        # While it follows: one on the table's subject, one on a subject that did not exist.
        # Stamped inside the window whenever they are sent (flaky16: stamped "now" after the
        # in-process inference run, they fell past the end on a loaded machine).
        newest = end_ns - 10**9
        pub.publish([event(2, newest - 10**9)])
        publish_on("market.misc.late", [at(105, newest)])
        follow.join(timeout=20)
        assert not follow.is_alive()

        seqs = [e["seq"] for e in got]
        assert sorted(seqs) == [0, 1, 2, 100, 101, 102, 103, 104, 105], "each event once"
        assert seqs[:3] == [100, 101, 102], "history: what the pinned snapshot holds"
        manifest = engine.manifest()
        assert manifest["complete"] and manifest["event_count"] == 9
        assert manifest["live"]["tail_events"] == 6 and manifest["live"]["warnings"] == []
        assert manifest["live"]["tables"][TABLE]["inferred_after"] == 5

        # A bounded live replay now (103, 104 committed; 0..2 and 105 in the tails): same events.
        bounded = ReplayEngine(settings, [TABLE], start_ns, end_ns, pin=False, live=True)
        again = [e.as_dict() for e in bounded.all_events()]
        as_set = lambda events: sorted(json.dumps(e, sort_keys=True) for e in events)  # noqa: E731
        assert as_set(again) == as_set(got)
        assert bounded.manifest()["live"]["tail_events"] == 4

        # Freshness: the live view's newest event is the uncommitted inferred one.
        fresh = freshness(LakeCatalog(settings), [TABLE])[TABLE]
        assert fresh.live_newest_ns == newest and fresh.live_warning is None
        assert fresh.committed_newest_ns == now - 29 * 10**9
    finally:
        pub.close()


def test_following_replay_warns_when_the_stream_removes_messages_it_has_not_read(
    tmp_path: Path, nats: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A `--follow` replay whose consumer the server lost (deleted here) while MARKET, capped at
    5 messages, took 8 more: the 3 pushed out before the follower resumed are reported while it
    follows (log) and in the manifest, and the rest is delivered once. Also a guard: nats-py
    recreates a lost ordered consumer after missed idle heartbeats (else the follow never ends).

    Budget: ~7 s (window 4 s; the follower resumes after two missed 1 s heartbeats)."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    try:
        _cap_market(pub, 5)
        pub.publish([event(i, now + i) for i in range(2)])  # seq 1, 2

        end_ns = time.time_ns() + 4 * 10**9
        engine = ReplayEngine(
            settings, [TABLE], now - 10**9, end_ns, pin=False, live=True, follow=True
        )
        follow, got = _follow_on_thread(engine, lambda row: row["seq"])
        wait_for(lambda: engine._live.tail_events >= 2, 10, "the tail's first round")

        async def lose_consumer() -> None:
            # The follower's ephemeral consumer (no durable name) on the table's subject.
            for c in await pub.js.consumers_info("MARKET"):
                if c.config.durable_name is None and c.config.filter_subject == SUBJECT:
                    await pub.js.delete_consumer("MARKET", c.name)

        pub.loop.run_until_complete(lose_consumer())
        # seq 3..10: the stream keeps 6..10; 3..5 are removed before anyone read them.
        pub.publish([event(i, now + i) for i in range(2, 10)])
        wait_for(lambda: engine._live.gaps, 5, "the gap noticed while following")
        assert follow.is_alive(), "noticed while following, not at the end"
        follow.join(timeout=20)
        assert not follow.is_alive()

        assert sorted(got) == [0, 1, 5, 6, 7, 8, 9], "what the stream still held, once"
        manifest = engine.manifest()
        assert manifest["complete"]
        assert manifest["live"]["tables"][TABLE]["gaps"] == [[3, 5]]
        assert manifest["live"]["tables"][TABLE]["removed"] == [3, 5]
        (warning,) = manifest["live"]["warnings"]
        assert "seq 3..5" in warning and TABLE in warning
        assert any("seq 3..5" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    finally:
        pub.close()


def test_following_replay_follows_a_widen_and_names_what_it_rejected_before_it(
    tmp_path: Path, nats: NatsServer
) -> None:
    """live19 #2: a `--follow` replay across `lake table evolve --widen exchange:long` kept the
    decoder of the schema it pinned and silently dropped every wider value the writer stored,
    with `complete: true` and no warning. Now its decoder follows the table's schema: values
    sent after the widen are delivered, and a wide message it had rejected before the widen
    (which the writer, deciding it after the widen, stores) is named in a warning, counted in
    the manifest, and the replay is not complete. What it delivered plus what it names is what
    the writer commits.

    Budget: ~20 s (a 15 s window: with 6 s, the steps before the last publish left too little
    of it on a loaded machine, a failure in one CI run; one in-process writer run)."""
    from ingest_support import run_until_idle

    from iceberg_lake.schema.evolve import WidenColumn, evolve_table

    settings = settings_for(tmp_path, nats.url)
    catalog = LakeCatalog(settings)
    catalog.init()
    pub = Publisher(settings)
    now = time.time_ns()

    def wide(i: int) -> dict:
        return {**event(i, time.time_ns()), "exchange": 70_000}

    try:
        pub.publish([event(i, now + i) for i in range(3)])  # seq 1..3
        engine = ReplayEngine(
            settings,
            [TABLE],
            now - 10**9,
            time.time_ns() + 15 * 10**9,
            pin=False,
            live=True,
            follow=True,
            lateness_seconds=0.5,
        )
        follow, got = _follow_on_thread(engine, lambda row: (row["seq"], row["exchange"]))
        live = engine._live
        assert live is not None
        wait_for(lambda: live.tail_events >= 3, 10, "the tail's first round")
        pub.publish([wide(3)])  # seq 4: rejected by the pinned schema's decoder
        wait_for(lambda: live.tail_ranges[TABLE][1] >= 4, 10, "the wide message's round")
        # What `lake table evolve bronze.stocks_trades --widen exchange:long` runs.
        table = catalog.load_table(TABLE)
        assert evolve_table(table, TABLE, [WidenColumn("exchange", "long")], fresh=True).committed
        pub.publish([wide(i) for i in range(4, 7)])  # seq 5..7
        follow.join(timeout=30)
        assert not follow.is_alive()

        assert sorted(got) == [(0, 4), (1, 4), (2, 4), (4, 70_000), (5, 70_000), (6, 70_000)]
        manifest = engine.manifest()
        assert not manifest["complete"]
        assert manifest["live"]["tables"][TABLE]["schema_misses"] == 1
        (warning,) = manifest["live"]["warnings"]
        assert f"{TABLE}: 1 tail messages (seq 4..4)" in warning and "schema 1" in warning

        run_until_idle(settings, [TABLE])  # the writer decides every message after the widen
        rows = catalog.load_table(TABLE).scan().to_arrow()
        stored = sorted(
            zip(*(rows.column(c).to_pylist() for c in ("seq", "exchange")), strict=True)
        )
        assert stored == sorted([*got, (3, 70_000)])
    finally:
        pub.close()


def _cap_market(pub: Publisher, max_msgs: int) -> None:
    """Limit the MARKET stream to `max_msgs` messages (it then removes the oldest)."""
    from nats.js.api import StreamConfig

    info = pub.loop.run_until_complete(pub.js.stream_info("MARKET"))
    config = StreamConfig.from_response(info.config.as_dict())
    config.max_msgs = max_msgs
    pub.loop.run_until_complete(pub.js.update_stream(config))


def test_guard_stream_state_and_follower_skips(nats_server: NatsServer) -> None:
    """Guard: `engine.nats_tail.stream_state` asks STREAM.INFO for `deleted_details` through
    nats-py's private `_api_request`/`_prefix`; the server lists interior removals there and
    finds the next message of a (wildcard) subject; a follower's skips hold exactly the
    sequences it did not receive, and `check_followers` reports only the removed ones."""

    from iceberg_lake.engine.nats_tail import (
        TailFollower,
        check_followers,
        next_stored_seq,
        stream_state,
    )

    async def go() -> None:
        nc, js, name = await _own_stream(nats_server.url, "GAPGUARD")
        x, y = f"{name.lower()}.x", f"{name.lower()}.y"
        for subject in (x, x, x, x, x, y, x):  # seq 1..7; 6 is on another subject
            await js.publish(subject, b"m")
        await js.delete_msg(name, 3)
        state = await stream_state(js, name)
        assert (state.first_seq, state.last_seq, state.deleted.tolist()) == (1, 7, [3])
        assert state.removed_runs(1, 7) == [(3, 3)] and state.removed_runs(4, 7) == []
        assert await next_stored_seq(js, name, x, 5) == 7
        assert await next_stored_seq(js, name, f"{name.lower()}.>", 5) == 6
        assert await next_stored_seq(js, name, x, 7) is None

        follower = TailFollower(js, name, x, 0)
        got: list[int] = []
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            got += [m.seq for m in await follower.poll(0.5)]
        assert got == [1, 2, 4, 5, 7] and follower.skips == [(3, 3), (6, 6)]
        # `settled` reads nats-py's count of delivered messages not yet given to the callback.
        assert follower.sub.pending_msgs == follower.sub._sub._pending_queue.qsize() == 0
        assert follower.settled()
        # 3 was removed; 6, still stored, is another subject's.
        assert await check_followers(js, [follower], [None]) == [[(3, 3)]]
        assert follower.skips == [] and follower.covered == 7
        await js.purge_stream(name)  # everything received is gone: nothing to report
        assert await check_followers(js, [follower], [None]) == [[]]
        await js.publish(y, b"m")  # 8, another subject's: covered while stored
        assert await check_followers(js, [follower], [None]) == [[]]
        assert follower.covered == 8
        await follower.close()
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def _publish_on(pub: Publisher, subject: str, bodies: list[bytes]) -> None:
    async def go() -> None:
        for body in bodies:
            await pub.js.publish(subject, body)

    pub.loop.run_until_complete(go())


def test_following_replay_reports_removals_inside_its_first_round(
    tmp_path: Path, nats: NatsServer
) -> None:
    """Messages deleted after the replay started but before its tail reached them, in the
    middle of the first round's backlog and at its end, are reported with their exact
    sequences; the other subject's messages between them (skipped, still stored) are not.

    Budget: ~4 s (a window ending 1 s after the start)."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    try:
        pub.publish([event(i, now + i) for i in range(4)])  # seq 1..4
        quote = make_event("bronze.stocks_quotes", 0)
        _publish_on(pub, "market.stocks.quotes", [encode(quote), encode(quote)])  # seq 5, 6
        pub.publish([event(i, now + i) for i in range(4, 8)])  # seq 7..10
        end_ns = time.time_ns() + 10**9
        engine = ReplayEngine(
            settings, [TABLE], now - 10**9, end_ns, pin=False, live=True, follow=True
        )
        for seq in (3, 8, 10):  # after the pin, before the tail reads them
            pub.loop.run_until_complete(pub.js.delete_msg("MARKET", seq))

        got = sorted(e.as_dict()["seq"] for e in engine.all_events())
        assert got == [0, 1, 3, 4, 6], "what the stream still held, once"
        live = engine.manifest()["live"]
        assert live["tables"][TABLE]["gaps"] == [[3, 3], [8, 8], [10, 10]]
        assert live["tables"][TABLE]["removed"] == [3, 10]
        assert live["tables"][TABLE]["unlisted_gaps"] == 0
        (warning,) = live["warnings"]  # one line per table
        assert "seq 3..3, 8..8, 10..10 " in warning
    finally:
        pub.close()


def test_following_replay_does_not_report_a_purge_of_what_it_read(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A purge right after the follower received everything (well within the 1 s between two
    removal checks) is not reported: every purged message was read. A message published
    after the purge is delivered and reported nothing either.

    Budget: ~4 s (a window ending 2 s after the start)."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    try:
        pub.publish([event(i, now + i) for i in range(3)])  # seq 1..3
        end_ns = time.time_ns() + 2 * 10**9
        engine = ReplayEngine(
            settings, [TABLE], now - 10**9, end_ns, pin=False, live=True, follow=True
        )
        follow, got = _follow_on_thread(engine, lambda row: row["seq"])
        wait_for(lambda: engine._live.tail_events >= 3, 10, "the tail's first round")
        pub.publish([event(i, now + i) for i in range(3, 6)])  # seq 4..6
        wait_for(lambda: engine._live.tail_events >= 6, 5, "the second round")
        pub.loop.run_until_complete(pub.js.purge_stream("MARKET"))
        pub.publish([event(6, now + 6)])  # seq 7, after the purge
        follow.join(timeout=20)
        assert not follow.is_alive()

        assert sorted(got) == list(range(7))
        live = engine.manifest()["live"]
        assert live["tables"][TABLE]["gaps"] == [] and live["warnings"] == []
        assert live["tables"][TABLE]["removed"] is None
    finally:
        pub.close()


def test_bounded_live_replay_sorts_a_tail_that_arrives_over_several_polls(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A live replay without --follow whose tail arrives over several polls delivers all of it
    (it ends when every message up to its end was handed out, not when the follower received
    the last one in the background), sorted by event time as one round, with the same hash
    on every run (quant13: rounds cut by how messages were fetched went back in time, and
    three runs over a tail at rest gave three hashes).

    Budget: ~4 s (3,000 acked publishes, two replays)."""
    import random

    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    stamps = list(range(3000))
    random.Random(5).shuffle(stamps)  # published out of event-time order
    try:

        async def publish() -> None:
            for start in range(0, 3000, 500):
                await asyncio.gather(
                    *(
                        pub.js.publish(SUBJECT, encode(event(i, now + stamps[i])))
                        for i in range(start, start + 500)
                    )
                )

        pub.loop.run_until_complete(publish())
        hashes = []
        for _ in range(2):
            engine = ReplayEngine(settings, [TABLE], now - 10**9, now + 10**9, pin=False, live=True)
            events = list(engine.all_events())
            got = [e.as_dict()["seq"] for e in events]
            assert sorted(got) == list(range(3000)), "each event once"
            times = [e.ts_event_ns for e in events]
            assert times == sorted(times), "the tail in event-time order"
            manifest = engine.manifest()
            live = manifest["live"]
            assert live["tail_events"] == 3000 and live["tables"][TABLE]["gaps"] == []
            assert live["tail_rounds"] == 1 and "arrival rounds" not in live["order"]
            hashes.append(manifest["sequence_hash"])
        assert hashes[0] == hashes[1]
    finally:
        pub.close()


def test_guard_followers_subscribe_without_pending_limits(nats_server: NatsServer) -> None:
    """Guard: nats-py drops deliveries beyond a subscription's pending limits after its ordered
    consumer counted them (they would pass for other subjects' skips), so followers subscribe
    with none: limit 0 must still mean unbounded (an unbounded asyncio queue, no byte check).
    A 2,000-message backlog arrives whole, each consumer sequence once.

    Budget: ~1 s."""

    from iceberg_lake.engine import nats_tail

    assert nats_tail.PENDING_MSGS_LIMIT == 0 and nats_tail.PENDING_BYTES_LIMIT == 0

    async def go() -> tuple[list[int], int, int, bool]:
        nc, js, name = await _own_stream(nats_server.url, "DROPGUARD")
        for start in range(0, 2000, 500):
            await asyncio.gather(
                *(js.publish(f"{name.lower()}.x", b"m" * 100) for _ in range(start, start + 500))
            )
        follower = nats_tail.TailFollower(js, name, f"{name.lower()}.x", 0)
        got: list[int] = []
        deadline = time.monotonic() + 10
        while len(got) < 2000 and time.monotonic() < deadline:
            got += [m.seq for m in await follower.poll(0.2)]
        queue = follower.sub._sub._pending_queue
        limits = queue.maxsize, follower.sub._sub._pending_bytes_limit
        dropped = follower._dropped
        await follower.close()
        await js.delete_stream(name)
        await nc.close()
        return got, *limits, dropped

    got, max_msgs, max_bytes, dropped = asyncio.run(go())
    assert (max_msgs, max_bytes) == (0, 0), "nats-py no longer takes 0 for no limit"
    assert got == list(range(1, 2001)) and not dropped


def test_live_query_reports_deleted_messages_exactly(tmp_path: Path, nats: NatsServer) -> None:
    """A live query reports the runs of sequences the stream removed from the middle of its
    tail (message deletes), not the messages it read between them; a later query of the same
    `Lake` reads only what is new and keeps the runs.

    Budget: ~1 s."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    lake = Lake(settings)
    now = time.time_ns()
    try:
        pub.publish([event(i, now + i) for i in range(6)])  # seq 1..6
        for seq in (3, 5):
            pub.loop.run_until_complete(pub.js.delete_msg("MARKET", seq))
        result = lake.query(COUNT_SQL, live=True)
        assert result.column("n").to_pylist() == [4]
        live = lake.last_live[TABLE]
        assert live.gaps == ((3, 3), (5, 5)) and live.removed == (3, 5)
        (warning,) = json.loads(result.schema.metadata[b"lake.live.warnings"])
        assert "seq 3..3, 5..5 " in warning

        pub.publish([event(6, now + 6)])  # seq 7
        result = lake.query(COUNT_SQL, live=True)
        assert result.column("n").to_pylist() == [5]
        assert lake.last_live[TABLE].gaps == ((3, 3), (5, 5))
    finally:
        lake.close()
        pub.close()


def test_a_warm_lake_keeps_the_rows_it_read_once_the_subjects_newest_message_is_removed(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A long-lived `Lake` (a dashboard) keeps the tail rows it read when the subject's newest
    message is removed, and its range still says what it read: the count never drops without
    a warning and never comes back up (live19 #3: 3 → 2 silently, then 4 with the next
    message). A message removed before the `Lake` read it is reported as a gap.

    Budget: ~1 s."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    warm = Lake(settings)
    now = time.time_ns()

    def count(lake: Lake) -> int:
        return int(lake.query(COUNT_SQL, live=True).column("n")[0].as_py())

    try:
        pub.publish([event(i, now + i) for i in range(3)])  # seq 1..3
        assert count(warm) == 3
        pub.loop.run_until_complete(pub.js.delete_msg("MARKET", 3))  # the subject's newest
        assert count(warm) == 3
        got = warm.last_live[TABLE]
        assert (got.last_seq, got.tail_rows, got.gaps, got.warning) == (3, 3, (), None)
        cold = Lake(settings)
        try:
            assert count(cold) == 2 and cold.last_live[TABLE].gaps == ((3, 3),)
        finally:
            cold.close()

        pub.publish([event(i, now + i) for i in range(3, 5)])  # seq 4, 5
        pub.loop.run_until_complete(pub.js.delete_msg("MARKET", 4))  # never read: a gap
        assert count(warm) == 4
        got = warm.last_live[TABLE]
        assert (got.last_seq, got.tail_rows, got.gaps) == (5, 4, ((4, 4),))
        assert got.warning is not None and "seq 4..4 " in got.warning
    finally:
        warm.close()
        pub.close()


def test_a_live_query_says_the_dead_letters_have_no_live_tail(
    tmp_path: Path, nats: NatsServer
) -> None:
    """live19 #4: `bronze.dead_letters` in a live query is its snapshot only (the tails' rejects
    are dead letters once a writer commits them), and nothing said so: a desk reconciling
    `published = stored + dead letters` live came up short. The read line and the result's
    `lake.live.no_tail` say it; a bus-fed table's range is unchanged.

    Budget: ~2 s."""
    from typer.testing import CliRunner

    from iceberg_lake.cli.app import app

    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    sql = (
        f"SELECT (SELECT count(*) FROM {TABLE}) AS stored, "
        "(SELECT count(*) FROM bronze.dead_letters) AS dead"
    )
    try:
        pub.publish([event(0), b"not json"])  # seq 1, 2: the writer is down
        lake = Lake(settings)
        try:
            result = lake.query(sql, live=True)
            assert result.to_pylist() == [{"stored": 1, "dead": 0}]
            notes = json.loads(result.schema.metadata[b"lake.live.no_tail"])
            assert list(notes) == ["bronze.dead_letters"]
            assert notes["bronze.dead_letters"].startswith("no live tail")
        finally:
            lake.close()

        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("LAKE_")}
        env.update(settings_env(settings))
        out = CliRunner().invoke(app, ["query", "--live", "-o", "json", sql], env=env)
        assert out.exit_code == 0, out.output
        read = next(line for line in out.stderr.splitlines() if line.startswith("read "))
        assert (
            "bronze.dead_letters@empty (no live tail: the tails' rejects are dead letters once "
            "a writer commits)" in read
        ), read
        assert f"{TABLE}@empty + MARKET seq 1..2 (1 rows)" in read, read
    finally:
        pub.close()


def test_live_views_take_any_spelling_and_never_serve_a_later_plain_query(
    tmp_path: Path, nats: NatsServer
) -> None:
    """Quoted / upper-case names get live views too, and a later non-live query (here naming
    the table in a spelling the old lookup missed, beside another table) reads the committed
    snapshot, not the earlier call's live view (audit 2 finding 1). Budget: ~2 s."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    now = time.time_ns()
    both = (
        'SELECT (SELECT count(*) FROM "bronze".stocks_trades) AS n, '
        "(SELECT count(*) FROM silver.stocks_trades) AS s"
    )
    try:
        pub.publish([event(i, now + i) for i in range(3)])  # nothing commits them: no writer
        with Lake(settings) as lake:
            live = lake.query('SELECT count(*) AS n FROM "BRONZE"."STOCKS_TRADES"', live=True)
            assert live.to_pylist() == [{"n": 3}]
            assert set(lake.last_live) == {TABLE} and lake.last_pins == {TABLE: None}
            assert lake.query(both).to_pylist() == [{"n": 0, "s": 0}]
            assert lake.last_live == {} and set(lake.last_pins) == {TABLE, "silver.stocks_trades"}
            assert lake.query(both, live=True).to_pylist() == [{"n": 3, "s": 0}]
    finally:
        pub.close()


def test_follower_buffer_is_bounded_and_a_larger_backlog_arrives_whole(
    nats_server: NatsServer,
) -> None:
    """A follower holds at most its bound between two polls (messages, and bytes): a backlog
    6x larger arrives whole, in order, each message once; it pauses when full and resumes
    from its position.

    Budget: ~2 s."""

    from iceberg_lake.engine.nats_tail import TailFollower

    async def go() -> None:
        nc, js, name = await _own_stream(nats_server.url, "BOUND")
        x = f"{name.lower()}.x"
        await asyncio.gather(*(js.publish(x, b"m" * 100) for _ in range(600)))
        for bound in ({"max_msgs": 100}, {"max_bytes": 5_000}):  # 100 messages; 50 messages
            follower = TailFollower(js, name, x, 0, **bound)
            got: list[int] = []
            deadline = time.monotonic() + 10
            while len(got) < 600 and time.monotonic() < deadline:
                got += [m.seq for m in await follower.poll(0.2)]
                # Let the buffer fill up (it pauses) before the next poll.
                await await_until(
                    lambda f=follower: f.sub is None or f.last_seq == 600, 5, "a full buffer"
                )
            await follower.close()
            assert got == list(range(1, 601)), bound
            assert follower.peak_msgs <= 100 and follower.peak_bytes <= 10_000, bound
            assert follower.pauses >= 5, (bound, follower.pauses)
            if "max_bytes" in bound:
                assert follower.peak_bytes <= 5_000 and follower.peak_msgs == 50
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def test_bounded_live_replay_ends_while_the_subject_keeps_publishing(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A live replay without --follow ends at its end even while the subject keeps receiving
    messages beyond it (its follower stops at the end instead of buffering them forever), and
    delivers exactly the subject's messages up to its end (fixed after it started), each once.

    Budget: ~3 s."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    busy = Publisher(settings)
    now = time.time_ns()
    stop = threading.Event()
    published = [0]

    def keep_publishing() -> None:
        async def go() -> None:
            deadline = time.monotonic() + 40  # until the replay has ended (`stop`)
            i = 0
            while not stop.is_set() and time.monotonic() < deadline:
                await asyncio.gather(
                    *(
                        busy.js.publish(SUBJECT, encode(event(1000 + i + k, now + 1000 + i + k)))
                        for k in range(20)
                    )
                )
                i += 20
                published[0] = i

        busy.loop.run_until_complete(go())

    publisher = threading.Thread(target=keep_publishing)
    try:
        pub.publish([event(i, now + i) for i in range(200)])  # seq 1..200
        engine = ReplayEngine(settings, [TABLE], now - 10**9, now + 10**9, pin=False, live=True)
        publisher.start()
        wait_for(lambda: published[0] >= 200, 5, "the busy publisher")
        at_start = pub.loop.run_until_complete(pub.js.stream_info("MARKET")).state.last_seq
        got: list[int] = []
        replay = threading.Thread(
            target=lambda: got.extend(e.as_dict()["seq"] for e in engine.all_events())
        )
        replay.start()
        replay.join(timeout=25)  # ~1 s normally; generous for a loaded CI machine
        assert not replay.is_alive(), "the replay did not end while the subject kept publishing"
        assert publisher.is_alive(), "the publisher stopped first: nothing was shown"
        assert len(set(got)) == len(got), "each event once"
        # Exactly the subject's messages up to the replay's end, an end fixed after it started.
        manifest = engine.manifest()
        end = manifest["live"]["tables"][TABLE]["last_seq"]
        assert end >= at_start >= 400
        from iceberg_lake.engine.nats_tail import read_tail

        stored = pub.loop.run_until_complete(read_tail(pub.js, "MARKET", SUBJECT, 0, end))
        assert [m.seq for m in stored] == list(range(1, end + 1))
        assert sorted(got) == sorted(json.loads(m.data)["seq"] for m in stored)
        assert manifest["live"]["tail_events"] == len(got) and manifest["complete"]
    finally:
        stop.set()
        publisher.join(timeout=10)
        busy.close()
        pub.close()


def test_a_message_delivered_but_not_yet_received_is_never_reported(
    nats_server: NatsServer,
) -> None:
    """A message the server delivered that the follower has not received yet (in flight) and
    that the stream then removes is not reported as removed: the check waits until the
    consumer shows nothing delivered beyond the follower's position. Received later, it is
    handed out, and nothing is reported.

    Budget: ~1 s."""

    from iceberg_lake.engine.nats_tail import TailFollower, _ack_fields, check_followers

    class Holding(TailFollower):
        """Holds back deliveries from seq 2 on: as if still on the wire."""

        held: list[tuple[Any, ...]]

        async def _on_message(self, *args: Any) -> None:  # (generation,) message
            if getattr(self, "hold", True) and _ack_fields(args[-1].reply)[0] >= 2:
                self.__dict__.setdefault("held", []).append(args)
                return
            await super()._on_message(*args)

    async def go() -> None:
        nc, js, name = await _own_stream(nats_server.url, "FLIGHT", max_msgs=3)
        x, y = f"{name.lower()}.x", f"{name.lower()}.y"
        await js.publish(x, b"m")
        await js.publish(x, b"m")  # seq 2: delivered, held
        follower = Holding(js, name, x, 0)
        got = [m.seq for m in await follower.poll(1.0)]
        await await_until(lambda: follower.__dict__.get("held"), 5, "seq 2 delivered")
        for _ in range(3):
            await js.publish(y, b"m")  # seq 3..5: the stream drops 1 and 2
        assert await check_followers(js, [follower], [None]) == [[]], "2 is in flight"
        assert follower.covered == 1
        follower.hold = False  # type: ignore[attr-defined]
        for args in follower.held:
            await TailFollower._on_message(follower, *args)
        got += [m.seq for m in await follower.poll(1.0)]
        assert got == [1, 2]
        assert await check_followers(js, [follower], [None]) == [[]]
        assert follower.covered == 5
        await follower.close()
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def test_gap_log_merges_and_caps_and_warnings_stay_one_short_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs found removed merge as they come (overlapping, adjacent, out of order; a run seen
    before is not new); past `MAX_LISTED_GAPS` they are counted, not listed; a warning names
    at most `WARNING_RUNS` runs and sums up the rest.

    Budget: < 0.1 s."""
    from iceberg_lake.timetravel import live
    from iceberg_lake.timetravel.live import gaps

    monkeypatch.setattr(gaps, "MAX_LISTED_GAPS", 4)
    log = live.GapLog()
    assert not log and log.envelope is None
    assert [log.add(*r) for r in [(10, 10), (3, 4), (5, 5), (12, 13), (11, 11)]] == [True] * 5
    assert log.runs == [(3, 5), (10, 13)]
    assert not log.add(4, 5) and not log.add(11, 12)
    assert log.add(20, 20) and log.add(30, 31)
    assert log.add(7, 7) and log.add(40, 42)  # listed full: counted
    assert log.add(9, 9)  # adjacent to a listed run: merged
    assert log.runs == [(3, 5), (9, 13), (20, 20), (30, 31)]
    assert (log.more_runs, log.more_seqs, log.envelope) == (2, 4, (3, 42))
    log.trim(9)
    assert log.runs == [(10, 13), (20, 20), (30, 31)] and log.more_runs == 2
    log.trim(50)
    assert not log and log.envelope is None

    runs = [(i, i) for i in range(1, 40, 2)]  # 20 single-sequence runs
    line = live.removed_warning(
        TABLE, "MARKET", SUBJECT, (1, 41), runs=runs, more_runs=1, more_seqs=3
    )
    assert "seq 1..1, 3..3, 5..5, 7..7, 9..9 and 16 more runs (18 sequences) (" in line
    assert "\n" not in line and len(line) < 400
    assert "seq 1..9 (" in live.removed_warning(TABLE, "MARKET", SUBJECT, (1, 9), runs=[(1, 9)])

    # Skips classified in one vectorized pass, as one run at a time would.
    import numpy as np

    from iceberg_lake.engine.nats_tail import StreamState

    state = StreamState(5, 20, np.array([7, 8, 12, 14], dtype=np.int64))
    skips = [(1, 2), (4, 6), (7, 9), (10, 10), (11, 13), (14, 14), (16, 20)]
    want = [r for lo, hi in skips for r in state.removed_runs(lo, hi)]
    assert state.removed_in(skips) == want == [(1, 2), (4, 4), (7, 8), (12, 12), (14, 14)]
    assert StreamState(5, 20).removed_in([(6, 9)]) == StreamState(5, 20).removed_in([]) == []


def test_stream_states_fetch_the_removed_list_only_when_it_changed(
    nats_server: NatsServer,
) -> None:
    """Guard and cost: `StreamStates` lists the removed sequences (`deleted_details`, through
    nats-py's private `_api_request`) only when `num_deleted` says they changed, and never for
    a stream without interior removals, and again for a stream deleted and created again; the
    state it returns is the server's.

    Budget: ~0.5 s."""

    from iceberg_lake.engine.nats_tail import StreamStates, stream_state

    async def go() -> None:
        nc, js, name = await _own_stream(nats_server.url, "STATES")
        x = f"{name.lower()}.x"
        for _ in range(10):
            await js.publish(x, b"m")
        states = StreamStates()

        async def same() -> list[int]:
            got, fresh = await states.get(js, name), await stream_state(js, name)
            assert (got.first_seq, got.last_seq) == (fresh.first_seq, fresh.last_seq)
            assert got.deleted.tolist() == fresh.deleted.tolist()
            return got.deleted.tolist()

        assert await same() == [] and states.detail_fetches == 0
        await js.delete_msg(name, 1)  # from the front: the first sequence moves
        assert await same() == [] and states.detail_fetches == 0
        await js.delete_msg(name, 4)
        await js.delete_msg(name, 6)
        assert await same() == [4, 6] and states.detail_fetches == 1
        await js.publish(x, b"m")  # 11
        assert await same() == [4, 6] and states.detail_fetches == 1
        for seq in (2, 3):
            await js.delete_msg(name, seq)  # the front moves past 4: [6] is still exact
        assert await same() == [6] and states.detail_fetches == 1
        await js.delete_msg(name, 8)
        assert await same() == [6, 8] and states.detail_fetches == 2
        # Deleted and created again: as many removed, first and last no lower, yet another
        # stream (`created` differs): its own list, not the old one's.
        info = await js.stream_info(name)
        await js.delete_stream(name)
        await js.add_stream(info.config)
        for _ in range(12):
            await js.publish(x, b"m")
        for seq in (1, 2, 3, 4, 7, 9):  # first 5, last 12, two removed between
            await js.delete_msg(name, seq)
        assert await same() == [7, 9] and states.detail_fetches == 3
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def test_nats_errors_become_one_line_transient_errors(tmp_path: Path) -> None:
    """A NATS timeout (or any nats-py error) in a live read is a `TransientError` with one
    readable line (the CLI prints it without a traceback), not nats-py's exception.

    Budget: < 0.5 s."""
    import nats.errors

    from iceberg_lake.exceptions import TransientError
    from iceberg_lake.timetravel.live import NatsLoop

    async def times_out() -> None:
        raise nats.errors.TimeoutError

    loop = NatsLoop(LakeCatalog(settings_for(tmp_path, "nats://127.0.0.1:1")))
    try:
        with pytest.raises(TransientError) as err:
            loop.run(times_out())
    finally:
        loop.close()
    assert "live tail: NATS:" in str(err.value) and "\n" not in str(err.value)


def test_bounded_check_reports_no_skip_beyond_its_horizon(nats_server: NatsServer) -> None:
    """A bounded read ends on the first message beyond its end; its skip up to that message
    lies past the horizon: a removed sequence there is not the read's, and neither check
    (skips only, full) reports it.

    Budget: ~0.3 s."""

    from iceberg_lake.engine.nats_tail import TailFollower, check_followers

    async def go() -> None:
        nc, js, name = await _own_stream(nats_server.url, "HORIZON")
        x, y = f"{name.lower()}.x", f"{name.lower()}.y"
        await js.publish(x, b"m")  # 1
        follower = TailFollower(js, name, x, 0)
        assert [m.seq for m in await follower.poll(5.0)] == [1]
        follower.end_at(1)
        for subject in (y, y, y, x):  # 2..4 another subject's, 5 beyond the end
            await js.publish(subject, b"m")
        await await_until(lambda: follower._ended, 5, "the message beyond the end")
        assert follower.skips == [(2, 4)] and follower.drain() == []
        await js.delete_msg(name, 3)
        assert await check_followers(js, [follower], [1], skips_only=True) == [[]]
        follower.skips = [(2, 4)]  # the same skip, through the full check
        assert await check_followers(js, [follower], [1], final=True) == [[]]
        await follower.close()
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def test_follower_paused_while_subscribing_keeps_no_stale_subscription(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower paused (buffer full) while `subscribe` had not returned yet ends that new
    subscription instead of keeping it (it would deliver to a generation that is ignored: the
    follower would stall); the next `poll` resubscribes and everything arrives once, in order.
    If resubscribing fails, the batch drained for that `poll` stays for the next one.

    Budget: ~0.5 s."""

    from iceberg_lake.engine import nats_tail
    from iceberg_lake.exceptions import TransientError

    real = nats_tail._subscribe
    made: list[Any] = []
    follower: nats_tail.TailFollower

    async def paused_meanwhile(*args: Any, **kwargs: Any) -> Any:
        sub = await real(*args, **kwargs)
        made.append(sub)
        if len(made) == 1:
            follower._pause()  # as if deliveries had filled the buffer before it returned
        return sub

    async def go() -> None:
        nonlocal follower
        nc, js, name = await _own_stream(nats_server.url, "STALE")
        x = f"{name.lower()}.x"
        for _ in range(10):
            await js.publish(x, b"m")
        follower = nats_tail.TailFollower(js, name, x, 0, max_msgs=3)
        monkeypatch.setattr(nats_tail, "_subscribe", paused_meanwhile)
        await follower._start()
        assert follower.sub is None and len(made) == 1, "the stale subscription was kept"
        assert made[0]._closed, "the subscription made meanwhile was not ended"
        got: list[int] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = [m.seq for m in await follower.poll(1.0)]
        assert got and got == list(range(1, len(got) + 1))
        # Full again (3 buffered, the next delivery paused it): resubscribing fails.
        await await_until(lambda: follower.sub is None, 5, "a full buffer")
        batch = list(range(got[-1] + 1, got[-1] + 4))
        assert [m.seq for m in follower._arrived] == batch

        async def fails(*args: Any, **kwargs: Any) -> Any:
            raise TransientError("no NATS")

        monkeypatch.setattr(nats_tail, "_subscribe", fails)
        with pytest.raises(TransientError):
            await follower.poll(1.0)
        assert [m.seq for m in follower._arrived] == batch and follower.last_seq == batch[-1]
        monkeypatch.setattr(nats_tail, "_subscribe", real)
        deadline = time.monotonic() + 5
        while len(got) < 10 and time.monotonic() < deadline:
            got += [m.seq for m in await follower.poll(0.5)]
        assert got == list(range(1, 11))
        await follower.close()
        await js.delete_stream(name)
        await nc.close()

    asyncio.run(go())


def test_gap_log_counts_no_run_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the cap, a run counted before is not counted again (listed or not), a run that
    continues the last one counted adds its new sequences only, a run apart counts as one.

    Budget: < 0.1 s."""
    from iceberg_lake.timetravel import live
    from iceberg_lake.timetravel.live import gaps

    monkeypatch.setattr(gaps, "MAX_LISTED_GAPS", 2)
    log = live.GapLog()
    runs = [(1, 1), (3, 3), (5, 5), (7, 8)]
    assert [log.add(*r) for r in runs] == [True] * 4
    for _ in range(3):
        assert [log.add(*r) for r in runs] == [False] * 4
    assert log.runs == [(1, 1), (3, 3)]
    assert (log.more_runs, log.more_seqs, log.envelope) == (2, 3, (1, 8))
    assert log.add(7, 10)  # (7, 8) grew: 2 more sequences, the same run
    assert log.add(12, 12) and not log.add(12, 12)
    assert (log.more_runs, log.more_seqs, log.envelope) == (3, 6, (1, 12))


def test_live_queries_report_removals_after_the_subjects_newest_message_once(
    tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removed message of the table's subject newer than its newest stored one is reported
    (the live view lacks it), and a second query of the same `Lake`, which looks at those
    runs again, reports the same gaps and counts (not growing ones).

    Budget: ~1 s."""
    from iceberg_lake.timetravel.live import gaps

    monkeypatch.setattr(gaps, "MAX_LISTED_GAPS", 1)
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    lake = Lake(settings)
    now = time.time_ns()
    quote = encode(make_event("bronze.stocks_quotes", 0))
    try:
        pub.publish([event(0, now)])  # seq 1
        _publish_on(pub, "market.stocks.quotes", [quote])  # 2
        pub.publish([event(1, now + 1)])  # 3
        _publish_on(pub, "market.stocks.quotes", [quote, quote, quote])  # 4..6
        pub.publish([event(2, now + 2)])  # 7: the subject's newest
        for seq in (3, 5, 7):
            pub.loop.run_until_complete(pub.js.delete_msg("MARKET", seq))
        for _ in range(2):
            result = lake.query(COUNT_SQL, live=True)
            assert result.column("n").to_pylist() == [1]
            got = lake.last_live[TABLE]
            assert got.gaps == ((3, 3),) and got.removed == (3, 7)
            assert (got.unlisted_gaps, got.unlisted_removed) == (2, 2)
    finally:
        lake.close()
        pub.close()


def test_live_freshness_is_measured_after_its_reads_never_negative(
    tmp_path: Path, nats: NatsServer
) -> None:
    """Events stamped with the publisher's clock at publish time, published while freshness
    reads the tail: their age is never negative. It was, when "now" was taken before the
    reads (`lake status` then warned of a publisher's clock ahead by the seconds its own reads
    took, soak2)."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    catalog = LakeCatalog(settings)
    stop = threading.Event()
    sent = [0]

    def publish_now() -> None:
        pub = Publisher(settings)
        try:
            while not stop.is_set():
                publish_to(pub, TABLE, [stamped(TABLE, sent[0], time.time_ns())])
                sent[0] += 1
        finally:
            pub.close()

    publisher = threading.Thread(target=publish_now)
    publisher.start()
    try:
        wait_until(lambda: sent[0] > 0, 10, "a first publish")
        ages = [freshness(catalog, [TABLE], live=True)[TABLE].live_seconds for _ in range(15)]
    finally:
        stop.set()
        publisher.join()
    assert all(age is not None and age >= 0 for age in ages), ages


@pytest.mark.parametrize("out_file", [False, True], ids=["pipe", "file"])
def test_follow_output_is_readable_as_it_arrives_and_sigterm_ends_it_cleanly(
    tmp_path: Path, nats: NatsServer, out_file: bool
) -> None:
    """A paper-trading reader of `lake replay --live --follow` got tail events only once 8 KB
    had piled up, or at exit; and SIGTERM (docker stop, systemd) killed the replay with its
    buffer and without a manifest (live16). Each event is readable while the replay waits for
    the next; SIGTERM ends it as Ctrl-C does: exit 0, everything delivered in the output and
    counted in the manifest."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    out, manifest = tmp_path / "follow.ndjson", tmp_path / "m.json"
    now = time.time_ns()
    args = ["replay", "--tables", TABLE, "--start", str(now - 60 * 10**9)]
    args += ["--end", str(now + 600 * 10**9), "--live", "--follow", "--no-progress"]
    args += ["--manifest", str(manifest), *(["--out", str(out)] if out_file else [])]
    env = {k: v for k, v in lake_env(settings).items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([LAKE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))
    reader.start()

    def delivered() -> int:
        return len(out.read_bytes().splitlines()) if out_file and out.exists() else len(lines)

    try:
        for i in range(3):
            pub.publish([event(i, time.time_ns())])
            # Readable while the replay waits for the next event (not at 8 KB, not at exit).
            wait_until(lambda n=i + 1: delivered() == n, 20, f"event {i} in the output")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        pub.close()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM before --end: replayed 3 events" in stderr, stderr
    recorded = json.loads(manifest.read_text())
    assert recorded["complete"] is False and recorded["events_written"] == 3 == delivered()
    assert recorded["sequence_hash"] in stderr and recorded["live"]["lateness_seconds"] == 5.0


def test_sigterm_while_a_follower_loads_ends_it_with_a_manifest(
    tmp_path: Path, nats: NatsServer
) -> None:
    """live19 #5: SIGTERM in a follower's first seconds, while the CLI was still loading (its
    handler came only once the replay started), killed it by the signal (rc -15) with no
    manifest. Now `lake replay --follow` holds SIGTERM from its entry point: one sent before
    pyarrow is even loaded ends the replay as a later one does (exit 0, a manifest saying
    complete: false with nothing delivered)."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    manifest = tmp_path / "m.json"
    now = time.time_ns()
    args = ["replay", "--tables", TABLE, "--start", str(now - 60 * 10**9)]
    args += ["--end", str(now + 600 * 10**9), "--live", "--follow", "--no-progress"]
    args += ["--manifest", str(manifest), "--out", str(tmp_path / "follow.ndjson")]
    proc = subprocess.Popen(
        [LAKE, *args], env=lake_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    status, maps = Path(f"/proc/{proc.pid}/status"), Path(f"/proc/{proc.pid}/maps")

    def catches_sigterm() -> bool:
        caught = next(x for x in status.read_text().splitlines() if x.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)

    try:
        wait_until(catches_sigterm, 60, "a SIGTERM handler", interval=0.001)
        loading = "pyarrow" not in maps.read_text()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode()
    assert loading, "the handler is installed while the CLI loads, not once the replay runs"
    assert proc.returncode == 0, stderr
    assert "stopped by SIGTERM before --end: replayed 0 events" in stderr, stderr
    recorded = json.loads(manifest.read_text())
    assert recorded["complete"] is False and recorded["events_written"] == 0


def test_follow_waits_lateness_seconds_past_the_end_for_in_window_events(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A feed with 3 s of publish lag lost its last in-window event to the fixed 1 s wait,
    and the manifest said complete (live16). The wait is `lateness_seconds` (default 5 s,
    `--lateness`), recorded in the manifest."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    try:
        end = time.time_ns() + 2 * 10**9
        engine = ReplayEngine(settings, [TABLE], end - 60 * 10**9, end, live=True, follow=True)
        assert engine.manifest()["live"]["lateness_seconds"] == 5.0
        follow, got = _follow_on_thread(engine, pick=lambda row: row["seq"])
        wait_until(lambda: time.time_ns() > end + 2 * 10**9, 10, "2 s past the end")
        pub.publish([event(7, end - 1_000_000)])  # stamped 1 ms before the end, 2 s late
        follow.join(timeout=30)
        assert not follow.is_alive() and got == [7]
        assert engine.manifest()["complete"] is True
    finally:
        pub.close()
    with pytest.raises(TimeTravelError, match="lateness must be 0-3600 seconds"):
        ReplayEngine(settings, [TABLE], 1, 2, lateness_seconds=-1, pin=False)


def test_live_freshness_is_the_newest_event_of_the_recent_tail_not_its_last_message(
    tmp_path: Path, nats: NatsServer
) -> None:
    """`lake status` decoded only the newest message: a rejected one made the live figure the
    committed one (619 s where a live query said 28 s), a late one made it its own age (live16).
    It is the newest event among the tail's most recent messages."""
    settings = settings_for(tmp_path, nats.url)
    catalog = LakeCatalog(settings)
    catalog.init()
    pub = Publisher(settings)
    try:
        now = time.time_ns()
        on_time = now - 5 * 10**9
        pub.publish([event(i, on_time - i) for i in range(10)])
        for last, label in (
            (b'{"not": "a trade"}', "rejected"),
            (event(99, now - 300 * 10**9), "late"),
        ):
            pub.publish([last])
            fresh = freshness(catalog, [TABLE], live=True, now_ns=now)[TABLE]
            assert fresh.live_newest_ns == on_time, label
            assert fresh.live_seconds == 5.0, label
    finally:
        pub.close()


def test_read_tail_hands_a_long_tail_over_in_order_chunks(tmp_path: Path, nats: NatsServer) -> None:
    """A live query decodes its tail chunk by chunk (live16: a 1M-message tail held whole took
    1.4 GB): the chunks together are exactly the plain read, in order; an error of the chunk
    handler ends the read (it is not lost in a nats-py callback)."""
    from iceberg_lake.engine.nats_tail import read_tail

    settings = settings_for(tmp_path, nats.url)
    pub = Publisher(settings)
    try:
        for i in range(60):
            pub.publish([event(i)])
            if i % 3 == 0:  # another subject's messages between them
                pub.loop.run_until_complete(pub.js.publish("market.stocks.quotes", b"{}"))
        end = pub.loop.run_until_complete(pub.js.stream_info("MARKET")).state.last_seq
        plain = pub.loop.run_until_complete(read_tail(pub.js, "MARKET", SUBJECT, 5, end))
        chunks: list[list[int]] = []
        got = pub.loop.run_until_complete(
            read_tail(
                pub.js, "MARKET", SUBJECT, 5, end,
                on_chunk=lambda msgs: chunks.append([m.seq for m in msgs]), chunk=7,
            )
        )  # fmt: skip
        assert got == [] and len(chunks) > 3 and all(chunks)
        assert [s for c in chunks for s in c] == [m.seq for m in plain] and len(plain) > 50

        def fail(_msgs: list[Any]) -> None:
            raise ValueError("decode failed")

        with pytest.raises(ValueError, match="decode failed"):
            pub.loop.run_until_complete(
                read_tail(pub.js, "MARKET", SUBJECT, 0, end, on_chunk=fail, chunk=7)
            )
    finally:
        pub.close()


def _replay_listener(pub: Publisher, url: str) -> tuple[Any, list[bytes], Any]:
    """A second connection, on the publisher's loop, subscribed to `replay.>`: (the connection,
    the bodies received, `heard(n)`: at least `n` received, after letting it deliver)."""
    import nats as nats_py

    received: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        received.append(msg.data)

    nc = pub.loop.run_until_complete(nats_py.connect(url))
    pub.loop.run_until_complete(nc.subscribe("replay.>", cb=on_msg))
    pub.loop.run_until_complete(nc.flush())

    def heard(n: int) -> bool:
        pub.loop.run_until_complete(asyncio.sleep(0.05))
        return len(received) >= n

    return nc, received, heard


def _end(proc: subprocess.Popen[bytes], pub: Publisher, nc: Any) -> None:
    """Kill the replay if it still runs, close the listener and the publisher."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    pub.loop.run_until_complete(nc.close())
    pub.close()


def test_sigterm_ends_a_following_replay_to_nats_at_once_and_counts_what_it_sent(
    tmp_path: Path, nats: NatsServer
) -> None:
    """`lake replay --live --follow --to-nats` ignored SIGTERM and Ctrl-C until --end: the
    runner waited for the thread whose tail waited for arrivals, then the close failed
    ("generator already executing") and the run said complete, exit 0; an interrupted replay
    to NATS said it had sent 0 events (review16). It stops within a poll, exit 0, and counts
    the events its subscriber received."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    nc, received, heard = _replay_listener(pub, nats.url)
    manifest = tmp_path / "m.json"
    now = time.time_ns()
    args = ["replay", "--tables", TABLE, "--start", str(now - 60 * 10**9)]
    args += ["--end", str(now + 600 * 10**9), "--live", "--follow", "--no-progress"]
    args += ["--to-nats", "--prefix", "replay", "--manifest", str(manifest)]
    proc = subprocess.Popen(
        [LAKE, *args], env=lake_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        for i in range(3):
            pub.publish([event(i, time.time_ns())])
        wait_until(lambda: heard(3), 30, "3 events replayed to NATS")
        assert len(received) == 3
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        _end(proc, pub, nc)
    stderr = err.decode()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert took < 15, took  # not at --end, ten minutes away
    assert "stopped by SIGTERM before --end: replayed 3 events" in stderr, stderr
    recorded = json.loads(manifest.read_text())
    assert recorded["complete"] is False and recorded["events_written"] == 3


def test_an_interrupted_replay_to_nats_counts_the_events_it_published(
    tmp_path: Path, nats: NatsServer
) -> None:
    """A paced replay to NATS stopped by SIGTERM said "the output holds the first 0 events"
    while its subscriber had received 87 (review16): the count was of whole windows. It is the
    events published, so a desk resuming after them sends none twice."""

    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    pub = Publisher(settings)
    t0 = time.time_ns() - 3600 * 10**9
    pub.publish([event(i, t0 + i * 20_000_000) for i in range(500)])  # 10 s of event time
    run_until_idle(settings, [TABLE])
    nc, received, heard = _replay_listener(pub, nats.url)
    manifest = tmp_path / "m.json"
    args = ["replay", "--tables", TABLE, "--to-nats", "--prefix", "replay", "--speed", "1"]
    proc = subprocess.Popen(
        [LAKE, *args, "--no-progress", "--no-pin", "--manifest", str(manifest)],
        env=lake_env(settings),
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: heard(20), 60, "20 events replayed to NATS")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        recorded = json.loads(manifest.read_text())
        sent = recorded["events_written"]
        wait_until(lambda: heard(sent), 10, f"the {sent} events published")
        assert heard(sent) and len(received) == sent
    finally:
        _end(proc, pub, nc)
    assert proc.returncode == 143, err.decode()
    assert 20 <= sent < 500 and recorded["complete"] is False
    assert f"the output holds the first {sent:,} events" in err.decode()


def test_a_following_replay_cancelled_before_its_worker_starts_ends_at_once(
    tmp_path: Path, nats: NatsServer
) -> None:
    """`aevents` of a following replay, cancelled before its worker thread had started `next`
    (the executor busy with an app's other work): the stop was cleared by the worker's first
    step and the replay ran to its end (review16b). It ends within a poll, cancelled."""
    settings = settings_for(tmp_path, nats.url)
    LakeCatalog(settings).init()
    now = time.time_ns()
    engine = ReplayEngine(
        settings, [TABLE], now, now + 15 * 10**9, live=True, follow=True, pin=False
    )

    async def main() -> float:
        from concurrent.futures import ThreadPoolExecutor

        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))

        async def consume() -> None:
            async for _ in engine.aevents():
                pass

        # The default executor's thread busy for a second (an app's other work): the worker's
        # `next` waits behind it.
        busy = [loop.run_in_executor(None, time.sleep, 1.0)]
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.monotonic() - began
        await asyncio.gather(*busy)
        return took

    took = asyncio.run(main())
    assert took < 8, took  # not at the window's end, 15 s away (+ 5 s lateness)
    assert engine.manifest()["complete"] is False
