"""A lean JetStream pull loop: batch requests on an inbox, messages drained from its queue.

nats-py's `PullSubscription.fetch` awaits every message through `asyncio.wait_for`, which costs
tens of microseconds per message and caps a consumer at a few thousand messages per second here.
`BatchPuller` sends the same `CONSUMER.MSG.NEXT` requests (first `no_wait`, then a long poll with
`expires`) and takes whatever the client already queued without a timer per message. Deliveries
that arrive after a fetch returned stay queued, in order, for the next fetch.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client

#: Status codes the server sends on the inbox instead of messages.
_END_OF_ROUND = {"404", "408", "409"}


class BatchPuller:
    """Pull messages from a durable consumer in large batches.

    Args:
        nc: connected client.
        stream: stream name.
        consumer: durable consumer name.
    """

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self.nc = nc
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.sub: Any = None

    async def start(self) -> None:
        """Subscribe to the delivery inbox."""
        self.sub = await self.nc.subscribe(
            self.inbox, pending_msgs_limit=4_000_000, pending_bytes_limit=2 * 1024**3
        )

    async def close(self) -> None:
        """Unsubscribe (queued, unacked deliveries are dropped; the server redelivers them)."""
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            finally:
                self.sub = None

    def _drain(self, out: list[Any], limit: int) -> bool:
        """Move queued deliveries to `out`; True if an end-of-round status was seen."""
        queue = self.sub._pending_queue
        ended = False
        while len(out) < limit and not queue.empty():
            msg = queue.get_nowait()
            self.sub._pending_size -= len(msg.data)
            headers = msg.headers
            if headers and "Status" in headers:
                if headers["Status"] in _END_OF_ROUND:
                    ended = True
                continue  # heartbeats and other status messages
            out.append(msg)
        return ended

    async def _request(self, batch: int, expires: float | None) -> None:
        req: dict[str, Any] = {"batch": batch}
        if expires is None:
            req["no_wait"] = True
        else:
            req["expires"] = int(expires * 1_000_000_000)
        await self.nc.publish(self.api, json.dumps(req).encode(), reply=self.inbox)

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        """Up to `batch` messages; waits at most about `timeout` seconds for the first one.

        Returns:
            The messages in delivery order (possibly none).
        """
        out: list[Any] = []
        self._drain(out, batch)
        if len(out) >= batch:
            return out
        queue = self.sub._pending_queue
        loop = asyncio.get_running_loop()
        # Round 1: whatever is available now (the server ends the round with a 404/408).
        await self._request(batch - len(out), None)
        deadline = loop.time() + max(timeout, 0.05)
        while len(out) < batch:
            if self._drain(out, batch) or len(out) >= batch:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                return out
            try:
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                return out
            self._push_front(msg)
        if out:
            return out
        # Round 2: nothing was available; long-poll until the first message or the timeout.
        remaining = deadline - loop.time()
        if remaining <= 0.01:
            return out
        await self._request(batch, remaining)
        while not out:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
            self._push_front(msg)
            self._drain(out, batch)
        # Let the rest of a burst land, then take it.
        await asyncio.sleep(0)
        self._drain(out, batch)
        return out

    def _push_front(self, msg: Any) -> None:
        """Put a message taken with `queue.get()` back at the head of the queue."""
        queue = self.sub._pending_queue
        queue._queue.appendleft(msg)  # asyncio.Queue keeps a deque; keeps delivery order
