"""NATS failures become the lake's errors by kind (`engine.nats.bus_error`), and the pull path
raises them: a retry loop catches `TransientError` and nothing else, so a bug is never retried
in silence. The consumer-gone cases guard what the pull path reads from nats-py (the `409
Consumer Deleted` description under `Header.DESCRIPTION`, the `503` no-responders status).

Budget: < 3 s (the session's nats-server).
"""

from __future__ import annotations

import asyncio
import uuid

import nats as nats_py
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from iceberg_lake.engine import nats as bus
from iceberg_lake.engine.nats_pull import BatchPuller
from iceberg_lake.exceptions import BusUnavailableError, LakeError, TransientError
from iceberg_lake.testing import NatsServer


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.NoRespondersError(),
        nats.errors.ConnectionClosedError(),
        nats.errors.ConnectionReconnectingError(),
        nats.errors.TimeoutError(),
        nats.errors.OutboundBufferLimitError(),
        nats.js.errors.ServiceUnavailableError(code=503, description="JetStream not ready"),
        nats.js.errors.NotFoundError(code=404, description="consumer not found"),
        TimeoutError(),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=type,
)
def test_nats_failures_are_retryable(exc: Exception) -> None:
    error = bus.bus_error(exc, "fetching")
    assert isinstance(error, BusUnavailableError) and isinstance(error, TransientError)
    assert str(error).startswith("fetching: NATS") and "\n" not in str(error)


def test_refused_requests_are_not_retryable_and_bugs_are_not_nats_errors() -> None:
    refused = bus.bus_error(nats.js.errors.BadRequestError(code=400, description="bad"), "x")
    assert isinstance(refused, LakeError) and not isinstance(refused, TransientError)
    assert bus.bus_error(TypeError("bug"), "x") is None
    assert bus.bus_error(KeyError("bug"), "x") is None
    with pytest.raises(TypeError), bus.bus_errors("x"):
        raise TypeError("bug")  # passes unchanged
    with pytest.raises(BusUnavailableError) as err, bus.bus_errors("reading"):
        raise nats.errors.TimeoutError
    assert str(err.value) == "reading: NATS: nats: timeout"
    assert isinstance(err.value.__cause__, nats.errors.TimeoutError)


def test_fetch_raises_bus_unavailable_when_the_consumer_is_gone_or_the_connection_closed(
    nats_server: NatsServer,
) -> None:
    stream = f"FETCHERR_{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        nc = await nats_py.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        try:
            config = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.ALL)
            await js.add_consumer(stream, config)
            puller = BatchPuller(nc, "$JS.API", stream, "c")
            await puller.start()
            closed = BatchPuller(nc, "$JS.API", stream, "c")
            await closed.start()
            await js.publish(f"{stream}.a", b"x")
            assert len(await puller.fetch(10, 1.0, 1 << 20)) == 1
            # Deleted while a fetch long-polls: the server ends the request with 409.
            waiting = asyncio.create_task(puller.fetch(10, 5.0, 1 << 20))
            await asyncio.sleep(0.2)
            await js.delete_consumer(stream, "c")
            with pytest.raises(BusUnavailableError, match="the consumer was deleted"):
                await asyncio.wait_for(waiting, 3.0)
            # A request to a consumer that does not exist: 503, no responders.
            other = BatchPuller(nc, "$JS.API", stream, "never_created")
            await other.start()
            with pytest.raises(BusUnavailableError, match="no responders"):
                await asyncio.wait_for(other.fetch(10, 5.0, 1 << 20), 3.0)
        finally:
            await js.delete_stream(stream)
            await nc.close()
        with pytest.raises(BusUnavailableError, match="connection closed"):
            await closed.fetch(10, 0.1, 1 << 20)

    asyncio.run(go())


def test_a_server_without_jetstream_is_named_with_how_to_start_one() -> None:
    """A nats-server started without `-js` answers every JetStream request with 503 / no
    responders; the error read `description='None'`, and `lake simulate` reported it as an
    internal error (newuser10)."""
    for exc in (
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(code=503, description=None),
    ):
        error = bus.bus_error(exc, "creating the streams")
        assert isinstance(error, BusUnavailableError)
        assert "JetStream" in str(error) and "-js" in str(error), str(error)
