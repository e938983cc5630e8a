"""The inference writer (`lake serve --tables inferred`, subject `market.>`) skips every mapped
subject, so its table position never moves while only mapped subjects flow. It restarts after
its consumer's ack floor (everything at or below it is committed: acks follow commits), not at
the stream's first message: it re-read the whole stream at every start (found by the soak
audit: 285k messages, 1.6 GB, 10 s of a worker's CPU per start). Budget: ~8 s.
"""

from __future__ import annotations

import re
from pathlib import Path

from ingest_support import encode, make_event, publish, settings_for, start_serve

from iceberg_lake.testing import NatsServer

TRADES = "bronze.stocks_trades"


def test_the_inference_writer_restarts_after_what_it_acked(
    tmp_path: Path, nats: NatsServer
) -> None:
    settings = settings_for(tmp_path, nats.url)
    n = 300
    publish(
        settings, [("market.stocks.trades", encode(make_event(TRADES, i)), None) for i in range(n)]
    )
    log = tmp_path / "serve.log"
    for _ in range(2):
        proc = start_serve(settings, log, "--tables", "inferred", "--until-idle")
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    starts = re.findall(
        r"writer inferred: active on consumer \S+ of MARKET \S+ from stream seq (\d+)", text
    )
    assert starts == ["1", str(n + 1)], text[-3000:]
    assert f"acked up to seq {n}, past the committed position 0" in text
