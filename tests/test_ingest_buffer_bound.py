"""The writer's buffer never holds more than `LAKE_MAX_BUFFERED_EVENTS` events (issue 14.4).

Batched messages (100 events each) against a small limit: the first fetch knows nothing of the
messages' size and later ones size themselves in events, so none may overshoot. Budget: ~5 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ingest_support import (
    count_rows,
    duck_for,
    encode,
    make_event,
    publish,
    run_until_idle,
    settings_for,
    wait_stream,
)

from iceberg_lake.ingest.writer import ConsumerWriter
from iceberg_lake.testing import NatsServer

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
PER_MESSAGE = 100
MESSAGES = 100
LIMIT = 1_000


def test_buffered_events_never_exceed_the_limit_with_batched_messages(
    tmp_path: Path, nats: NatsServer, duck: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(
        tmp_path,
        nats.url,
        LAKE_MAX_BUFFERED_EVENTS=str(LIMIT),
        LAKE_BRONZE_BATCH_SIZE="500",
        LAKE_GOLD_BATCH_SIZE="500",
        LAKE_BRONZE_BATCH_SECONDS="30",
    )
    n = MESSAGES * PER_MESSAGE
    items = (
        ("market.stocks.trades", encode([make_event(TABLE, i) for i in range(j, j + PER_MESSAGE)]))
        for j in range(0, n, PER_MESSAGE)
    )
    publish(settings, ((subject, body, None) for subject, body in items))
    wait_stream(settings, "MARKET", MESSAGES)

    # Every event enters the buffer in `_ingest`: its size after each one is every peak.
    peaks: list[int] = []
    ingest = ConsumerWriter._ingest

    async def recording(self: ConsumerWriter, msgs: list[Any]) -> None:
        await ingest(self, msgs)
        peaks.append(self.batch.events)

    monkeypatch.setattr(ConsumerWriter, "_ingest", recording)
    run_until_idle(settings, [TABLE])
    assert count_rows(duck_for(duck, settings), settings, TABLE) == n
    assert peaks and max(peaks) <= LIMIT, sorted(peaks)[-5:]
    assert max(peaks) > LIMIT // 2  # the buffer did fill while commits ran
