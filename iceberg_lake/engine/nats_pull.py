"""The JetStream pull path: a lean pull consumer on nats-py's public API (engine layer).

The wire protocol of a pull (raw `CONSUMER.MSG.NEXT` requests, the 404/408/409 status replies
that end one) lives here and nowhere else; `ingest.writer` only calls `BatchPuller.fetch`.

`BatchPuller` sends `CONSUMER.MSG.NEXT` pull requests itself (nats-py 2.16's `fetch` has no
`max_bytes`) on an inbox subscription whose callback only appends to a list, so a fetch of
thousands of messages costs no timer or future per message. Every request is bounded in
messages *and* bytes, and at most one is outstanding, so the server never holds more than
`max_bytes` for this consumer on the connection (a backlog of large batched messages cannot push
the connection past the server's max_pending and get it dropped as a slow consumer).

Round 1 of a fetch is a `no_wait` request (the server sends what it has, then ends the request
with a 404/408/409 status); only when nothing was available does round 2 long-poll with
`expires` until the first message or the timeout. Deliveries that arrive after a fetch returned
stay buffered, in order, for the next fetch.

Server limits: a request beyond the server's (or the consumer's) pull limits is refused with
`409 Exceeded MaxRequestBatch of N` (also `MaxRequestMaxBytes`, `MaxRequestExpires`). The puller
then caps its requests at N for good (`PullLimits`, logged once) and asks again in the same
fetch: treated as an ordinary end of request, the refusal looked like an empty stream and the
writer stalled without a word (review14). A 409 this module does not know ends the fetch with a
`BusUnavailableError`, so the writer resets with a visible line instead of polling forever.

Errors: a failure of NATS itself (connection closed, a timeout, ...) comes out of `fetch` as a
`BusUnavailableError` (`engine.nats.bus_errors`), and so does a consumer that no longer exists
(the server ends the open request with `409 Consumer Deleted` and answers later ones with `503`
no responders): the caller recreates it. Anything else (a bug) passes unchanged.

No private nats-py members are used: the API subject comes from the configured prefix (so
JetStream domains work), acks go to each message's reply subject (`Msg.ack`). Sequences are the
ones `Msg.metadata` parses from that subject, read from its tokens directly and checked against
`Msg.metadata` on every call (`engine.nats.message_sequences`). nats-py still builds one `Msg`
per delivery (its parser does; avoiding it would mean a protocol parser of our own).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.js.api import Header

from iceberg_lake.engine.nats import bus_errors
from iceberg_lake.exceptions import BusUnavailableError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

#: Status codes that end a pull request (no messages, expired, max bytes/batch reached).
_END_OF_REQUEST = {"404", "408", "409"}
#: 409 descriptions that end a request without a problem of ours (a later request may deliver).
_ORDINARY_409 = (
    "Message Size Exceeds MaxBytes",
    "Batch Completed",
    "Exceeded MaxWaiting",
    "Exceeded MaxAckPending",
    "Leadership Change",
    "Server Shutdown",
)
#: A pull request beyond a server or consumer limit: `Exceeded MaxRequest<what> of <limit>`.
_LIMIT_409 = re.compile(r"Exceeded MaxRequest(Batch|MaxBytes|Expires) of (\S+)")
#: Go's duration text (`1s`, `500ms`, `1m30s`) as the server writes MaxRequestExpires.
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
#: The status a request to a subject nobody serves gets (the consumer is gone).
_NO_RESPONDERS = "503"
#: Inbox subscription limits: the callback drains it at once, so these are only a safety net.
_PENDING_MSGS = 1_000_000
_PENDING_BYTES = 1024 * 1024 * 1024


@dataclass
class PullLimits:
    """The server's (or consumer's) limits on one pull request, learnt from its refusals. One
    object outlives the pullers of a writer's consumer resets (a limit is learnt, and logged,
    once)."""

    batch: int | None = None
    max_bytes: int | None = None
    expires: float | None = None


class BatchPuller:
    """Pull messages from a durable consumer in large, byte-bounded batches.

    Args:
        nc: connected client.
        prefix: JetStream API prefix (`$JS.API`, or `$JS.<domain>.API`).
        stream: stream name.
        consumer: durable consumer name.
    """

    def __init__(
        self, nc: Client, prefix: str, stream: str, consumer: str, limits: PullLimits | None = None
    ) -> None:
        self.nc = nc
        self.subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self._buffer: deque[Msg] = deque()
        self._arrived = asyncio.Event()
        #: The outstanding request: messages it may still deliver, and when it expires.
        self._open_count = 0
        self._open_until = 0.0
        #: Why the consumer cannot deliver any more (it was deleted), once the server said so.
        self._gone: str | None = None
        #: The server's limits on one pull request, once it refused a request beyond them.
        self.limits = limits if limits is not None else PullLimits()
        #: A request refused for a limit (asked again, capped, in the same fetch).
        self._refused = False
        #: A 409 this module does not know (ends the fetch with an error).
        self._unknown: str | None = None
        self._consumer = f"{consumer} of {stream}"
        self._what = f"fetching from consumer {consumer} of {stream}"

    async def start(self) -> None:
        """Subscribe to the delivery inbox.

        Raises:
            BusUnavailableError: NATS did not answer.
        """
        with bus_errors(f"subscribing to the deliveries of {self.subject}"):
            self.sub = await self.nc.subscribe(
                self.inbox,
                cb=self._on_message,
                pending_msgs_limit=_PENDING_MSGS,
                pending_bytes_limit=_PENDING_BYTES,
            )

    async def close(self) -> None:
        """Unsubscribe (buffered, unacked deliveries are dropped; the server redelivers them)."""
        self._buffer.clear()
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            finally:
                self.sub = None

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            status = headers["Status"]
            if status in _END_OF_REQUEST or status == _NO_RESPONDERS:
                self._open_count = 0
            if status == _NO_RESPONDERS:
                self._gone = "no responders (the consumer no longer exists)"
            elif status == "409":
                self._on_conflict(str(headers.get(Header.DESCRIPTION, "")))
            self._arrived.set()
            return  # heartbeats and other status messages
        self._buffer.append(msg)
        self._open_count -= 1
        self._arrived.set()

    def _on_conflict(self, description: str) -> None:
        """A 409 that ended the open request: a deleted consumer, a limit, or another reason."""
        if description == "Consumer Deleted":
            self._gone = "the consumer was deleted"
        elif (limit := _LIMIT_409.search(description)) is not None:
            self._learn_limit(limit.group(1), limit.group(2), description)
        elif not description.startswith(_ORDINARY_409):
            self._unknown = description or "409 without a description"

    def _learn_limit(self, what: str, value: str, description: str) -> None:
        try:
            if what == "Expires":
                parts = _GO_DURATION.findall(value)
                seconds = sum(float(n) * _GO_UNITS[u] for n, u in parts)
                if not parts or seconds <= 0:
                    raise ValueError(value)
                self.limits.expires = seconds
            elif what == "Batch":
                self.limits.batch = max(1, int(value))
            else:
                self.limits.max_bytes = max(1, int(value))
        except ValueError:
            self._unknown = description
            return
        self._refused = True
        log.warning(
            "consumer %s: the server refused a pull request (%s); later requests ask for at "
            "most that (raise the server's or consumer's limit for larger batches)",
            self._consumer,
            description,
        )

    def _is_open(self) -> bool:
        return self._open_count > 0 and time.monotonic() < self._open_until

    async def _request(self, batch: int, max_bytes: int, expires: float | None) -> None:
        limits = self.limits
        if limits.batch is not None:
            batch = min(batch, limits.batch)
        if limits.max_bytes is not None:
            max_bytes = min(max_bytes, limits.max_bytes)
        if expires is not None and limits.expires is not None:
            # Under the limit: the server compares the nanoseconds asked with its own.
            expires = min(expires, limits.expires * 0.9)
        self._refused = False
        req: dict[str, Any] = {"batch": batch, "max_bytes": max_bytes}
        if expires is None:
            req["no_wait"] = True
            self._open_until = time.monotonic() + 5.0
        else:
            req["expires"] = int(expires * 1_000_000_000)
            self._open_until = time.monotonic() + expires + 0.5
        self._open_count = batch
        await self.nc.publish(self.subject, json.dumps(req).encode(), reply=self.inbox)

    def _take(self, batch: int) -> list[Msg]:
        buffer = self._buffer
        n = min(batch, len(buffer))
        return [buffer.popleft() for _ in range(n)]

    async def _wait(self, until: float) -> bool:
        """Wait for the next delivery or status until `until`; False on timeout."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def fetch(self, batch: int, timeout: float, max_bytes: int) -> list[Msg]:
        """Up to `batch` messages; waits at most about `timeout` seconds for the first one.

        Args:
            batch: most messages to return.
            timeout: seconds to wait when nothing is available.
            max_bytes: most bytes one pull request may deliver (at least the largest message).

        Returns:
            The messages in delivery order (possibly none).

        Raises:
            BusUnavailableError: NATS did not answer, or the consumer was deleted (recreate it;
                messages delivered before are returned first).
        """
        with bus_errors(self._what):
            msgs = await self._fetch(batch, timeout, max_bytes)
        if not msgs and self._gone is not None:
            raise BusUnavailableError(f"{self._what}: {self._gone}")
        if not msgs and self._unknown is not None:
            why, self._unknown = self._unknown, None
            raise BusUnavailableError(f"{self._what}: the server ended the pull request: {why}")
        return msgs

    async def _fetch(self, batch: int, timeout: float, max_bytes: int) -> list[Msg]:
        if self._gone is not None:
            return self._take(batch)
        deadline = time.monotonic() + max(timeout, 0.05)
        # A request refused for a limit is asked again at once, capped (each limit is learnt
        # once, so three rounds cover batch, bytes and expires).
        for _ in range(3):
            if self._buffer or self._is_open():
                break
            # Round 1: whatever is available now, up to `batch` messages / `max_bytes`.
            await self._request(batch, max_bytes, None)
            while self._is_open() and len(self._buffer) < batch:
                if not await self._wait(deadline):
                    break
            if not self._refused:
                break
        for _ in range(3):
            if self._buffer or self._is_open() or self._unknown is not None:
                break
            # Round 2: nothing was available; long-poll until the first message or the timeout.
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            await self._request(batch, max_bytes, remaining)
            while not self._buffer and self._is_open():
                if not await self._wait(deadline):
                    break
            if not self._refused:
                break
        while not self._buffer and self._is_open():  # a request still open from before
            if not await self._wait(deadline):
                break
        if self._buffer and self._is_open():
            await asyncio.sleep(0)  # let the rest of a burst land
        return self._take(batch)
