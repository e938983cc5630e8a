"""NATS JetStream: streams, subjects, durable consumers and the connection for all components.

Streams: `MARKET` captures `market.>`, `SIGNALS` captures `levels.>`, `LAKE_DLQ` keeps the dead
letters published on `lake.dlq.<table>`. Each has a duplicate window, so a publish that repeats a
`Nats-Msg-Id` is dropped by the server.

Consumers: one durable pull consumer per target table (`lake_bronze_stocks_trades`), plus
`lake_inferred` for messages on unmapped `market.*` subjects. The writers treat a consumer as
disposable: the authoritative position is the watermark committed with the data in the Iceberg
table, and `reset_consumer` recreates the consumer at that position (see `iceberg_lake.ingest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from iceberg_lake.config import redact, redact_url
from iceberg_lake.exceptions import BusUnavailableError, LakeError, TransientError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import ConsumerConfig, ConsumerInfo

    from iceberg_lake.config import Settings

log = logging.getLogger(__name__)

#: Streams and the subjects they capture.
MARKET_STREAM = "MARKET"
SIGNALS_STREAM = "SIGNALS"
DEAD_LETTER_STREAM = "LAKE_DLQ"
STREAM_SUBJECTS: dict[str, list[str]] = {
    MARKET_STREAM: ["market.>"],
    SIGNALS_STREAM: ["levels.>"],
}

#: Dead letters are published under this prefix plus the table name (`lake.dlq.stocks_trades`).
DEAD_LETTER_SUBJECT_PREFIX = "lake.dlq."
#: Pseudo target of the consumer that routes unmapped `market.*` subjects by schema inference.
INFERRED_TARGET = "inferred"
#: Subjects the inference consumer reads (everything on MARKET; mapped subjects are skipped).
INFERRED_FILTER = "market.>"

#: How long the server waits for an ack before redelivering. Generous: a writer that retries
#: through an outage keeps its buffer, and redeliveries of buffered messages are dropped anyway.
DEFAULT_ACK_WAIT_SECONDS = 120.0


#: KV bucket holding one lease per durable consumer (who may write it).
LEASE_BUCKET = "LAKE_LEASES"


def bus_error(exc: BaseException, what: str) -> LakeError | None:
    """The lake's error for an exception a NATS call raised, or None when it is not a NATS
    failure (a bug, which must reach the caller as it is).

    Retryable (`BusUnavailableError`): nats-py's own errors (connection closed, draining or
    reconnecting, timeouts, no responders, stale connection, JetStream API errors such as 503
    or 404) and the socket's (`OSError`, `ConnectionError`, `TimeoutError`). Not retryable
    (`LakeError`): a request the server or client refuses as malformed (a 400, a bad subject,
    a payload over the server's limit), which a retry sends again unchanged.

    Args:
        exc: what the call raised.
        what: what was being done, for the message (`fetching from consumer …`).
    """
    from nats.errors import BadSubjectError, MaxPayloadError, NoRespondersError
    from nats.errors import Error as NatsError
    from nats.js.errors import BadRequestError, ServiceUnavailableError

    if isinstance(exc, LakeError):
        return exc
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (BadRequestError, BadSubjectError, MaxPayloadError)):
        return LakeError(f"{what}: NATS refused the request: {reason or type(exc).__name__}")
    if isinstance(exc, TimeoutError) and not reason:
        return BusUnavailableError(f"{what}: NATS did not answer in time")
    if isinstance(exc, (ServiceUnavailableError, NoRespondersError)):
        # What a server without JetStream answers every JetStream request (newuser10: it read
        # "description='None'", or "internal error" where not translated); a cluster electing
        # a JetStream leader says so in the description.
        said = getattr(exc, "description", None) or "no responders"
        return BusUnavailableError(
            f"{what}: NATS JetStream did not answer ({said}): is nats-server running with "
            "JetStream (`-js -sd DIR`), and LAKE_NATS_DOMAIN its domain if it has one?"
        )
    if isinstance(exc, (NatsError, OSError)):  # OSError covers ConnectionError, TimeoutError
        return BusUnavailableError(f"{what}: NATS: {reason or type(exc).__name__}")
    return None


@contextlib.contextmanager
def bus_errors(what: str) -> Iterator[None]:
    """Translate NATS failures raised inside the block into the lake's errors (`bus_error`);
    anything else passes unchanged, so a bug is not mistaken for an outage and retried."""
    try:
        yield
    except LakeError:
        raise
    except Exception as exc:
        error = bus_error(exc, what)
        if error is None:
            raise
        raise error from exc


def api_prefix(settings: Settings) -> str:
    """The JetStream API subject prefix (`$JS.API`, or `$JS.<domain>.API` with a domain)."""
    return f"$JS.{settings.nats_domain}.API" if settings.nats_domain else "$JS.API"


def jetstream(nc: Client, settings: Settings, timeout: float = 10.0) -> JetStreamContext:
    """A JetStream context addressing the lake's JetStream (its domain, if one is set)."""
    return nc.jetstream(prefix=api_prefix(settings), timeout=timeout)


def stream_for_subject(subject: str) -> str:
    """The stream that captures `subject`."""
    if subject.startswith(DEAD_LETTER_SUBJECT_PREFIX):
        return DEAD_LETTER_STREAM
    return SIGNALS_STREAM if subject.startswith("levels.") else MARKET_STREAM


def consumer_name(table_identifier: str) -> str:
    """The durable pull consumer feeding a table (`bronze.x` → `lake_bronze_x`)."""
    return "lake_" + table_identifier.replace(".", "_")


def dead_letter_subject(table_identifier: str) -> str:
    """Subject a dead letter for `table_identifier` is published on (`lake.dlq.stocks_trades`)."""
    return DEAD_LETTER_SUBJECT_PREFIX + table_identifier.split(".")[-1]


def all_stream_subjects() -> dict[str, list[str]]:
    """Every stream the lake creates, with its subjects (including the dead-letter stream)."""
    return {**STREAM_SUBJECTS, DEAD_LETTER_STREAM: [DEAD_LETTER_SUBJECT_PREFIX + ">"]}


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca or settings.nats_tls_cert or settings.nats_url.startswith("tls")):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
    )
    if settings.nats_tls_cert:
        ctx.load_cert_chain(
            str(settings.nats_tls_cert),
            str(settings.nats_tls_key) if settings.nats_tls_key else None,
        )
    return ctx


def closed_for_good(nc: Client) -> str | None:
    """Why `nc` will not reconnect, or None while it is connected or reconnecting.

    nats-py closes a connection for good on some server errors instead of reconnecting: a
    message over the server's `max_payload` once its headers are counted (the client checks
    the body alone), an authorization violation (ingest17: `lake serve` then retried calls on
    the dead client forever).
    """
    if not nc.is_closed:
        return None
    error = nc.last_error
    return str(error).strip() or type(error).__name__ if error is not None else "closed"


def header_bytes(headers: Mapping[str, str]) -> int:
    """Bytes `headers` add to a message on the wire (`NATS/1.0` block), which the server
    counts against its `max_payload` together with the body."""
    size = len(b"NATS/1.0\r\n\r\n")
    for key, value in headers.items():
        size += len(key.encode()) + len(str(value).encode()) + 4  # ": " and CRLF
    return size


async def connect(
    settings: Settings,
    *,
    name: str = "iceberg_lake",
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
) -> Client:
    """Connect to NATS with the credentials, TLS and reconnect policy from `settings`.

    The client reconnects forever (every 2 s); a failed first connection is an error.

    Args:
        settings: `nats_url` (comma-separated for a cluster), user/password, token, creds file,
            TLS CA/cert/key.
        name: Client name shown by the server's monitoring.
        on_disconnect: Called when the connection drops (writers reset their consumers).
        connect_timeout: Seconds for the first connection.

    Returns:
        The connected client.

    Raises:
        TransientError: the server cannot be reached.
    """
    import nats
    from nats.errors import NoServersError

    holder: list[Client] = []

    async def _disconnected() -> None:
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return
        log.warning("NATS connection lost; reconnecting")
        if on_disconnect is not None:
            await on_disconnect()

    async def _reconnected() -> None:
        log.info("NATS reconnected")

    async def _error(exc: Exception) -> None:
        log.debug("NATS client error: %s", redact(str(exc), settings))

    options: dict[str, object] = {
        "servers": [u.strip() for u in settings.nats_url.split(",")],
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 2,
        "connect_timeout": connect_timeout,
        "disconnected_cb": _disconnected,
        "reconnected_cb": _reconnected,
        "error_cb": _error,
        # Big enough that a pull batch never makes the client drop messages as a slow consumer.
        "pending_size": 512 * 1024 * 1024,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password or ""
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_creds:
        options["user_credentials"] = str(settings.nats_creds)
    tls = _tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    try:
        # First connect: no reconnect loop, so a wrong URL fails fast with a clear message.
        first = dict(options, allow_reconnect=False, max_reconnect_attempts=1)
        first.pop("disconnected_cb")
        nc = await asyncio.wait_for(
            nats.connect(**first),  # type: ignore[arg-type]
            timeout=3 * connect_timeout + 5,
        )
        await nc.close()
        client = await nats.connect(**options)  # type: ignore[arg-type]
        holder.append(client)
        return client
    except (TimeoutError, NoServersError, OSError) as exc:
        raise TransientError(_connect_error(settings, exc)) from None
    except Exception as exc:  # nats raises its own error types for auth/TLS
        raise LakeError(_connect_error(settings, exc)) from None


def _connect_error(settings: Settings, exc: BaseException) -> str:
    """One line naming the server; credentials in the URL or the client's message are masked."""
    reason = redact(str(exc), settings) or type(exc).__name__
    return f"cannot connect to NATS at {redact_url(settings.nats_url)}: {reason}"


async def ensure_streams(js: JetStreamContext, settings: Settings) -> list[str]:
    """Create the `MARKET`, `SIGNALS` and `LAKE_DLQ` streams if missing. Idempotent.

    An existing stream keeps its configuration except that a missing duplicate window is set.

    Args:
        js: JetStream context.
        settings: `stream_duplicate_window_seconds`.

    Returns:
        Names of the streams created.
    """
    from nats.js.api import StreamConfig
    from nats.js.errors import APIError, NotFoundError

    created: list[str] = []
    window = settings.stream_duplicate_window_seconds
    max_age = settings.stream_max_age or None
    max_bytes = settings.stream_max_bytes or None
    for stream, subjects in all_stream_subjects().items():
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            config = StreamConfig(
                name=stream,
                subjects=subjects,
                duplicate_window=window,
                max_age=max_age,
                max_bytes=max_bytes,
            )
            try:
                await js.add_stream(config)
                created.append(stream)
                log.info("created stream %s (%s)", stream, ", ".join(subjects))
            except APIError as exc:
                # Only a race with another process creating it is fine (the same config
                # succeeds; another one is "already in use"); any other refusal is the user's.
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise LakeError(_stream_refused("create", stream, exc)) from None
                log.debug("add_stream %s: %s", stream, exc)
            continue
        config = info.config
        changed = False
        if not config.duplicate_window:
            config.duplicate_window = window
            changed = True
        # The server reports "no limit" as 0 (age) or -1 (bytes); the settings use 0.
        if (config.max_age or 0) != (max_age or 0):
            config.max_age = max_age or 0
            changed = True
        if max_age and (config.duplicate_window or 0) > max_age:
            # JetStream refuses a duplicate window longer than max_age (the setting is
            # validated not to be: `config._validate`).
            config.duplicate_window = window
            changed = True
        if max(config.max_bytes or 0, 0) != (max_bytes or 0):
            config.max_bytes = max_bytes or -1
            changed = True
        if changed:
            try:
                await js.update_stream(config)
            except APIError as exc:
                raise LakeError(_stream_refused("update", stream, exc)) from None
            log.info(
                "stream %s: max_age %s s, max_bytes %s", stream, max_age or "-", max_bytes or "-"
            )
    return created


#: JetStream error code: "stream name already in use with a different configuration".
STREAM_NAME_IN_USE = 10058


def _stream_refused(what: str, stream: str, exc: Exception) -> str:
    reason = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    return f"NATS refused to {what} stream {stream}: {reason}"


@dataclass(frozen=True)
class StreamIdentity:
    """Which stream a name denotes now, and the sequences it holds.

    Attributes:
        name: the stream's name.
        created: its creation time (`created_id`; "" when the server does not report one). A
            stream deleted and created again, or one on a server that lost its storage, gets a
            new one and numbers its messages from 1 again.
        first_seq: its first stored sequence (everything below was removed: limits, purges).
        last_seq: its last sequence (the newest message ever stored; 0: none).
        deleted: how many sequences between those two were removed (a per-subject limit, a
            purge of one subject, a deleted message): gaps in the middle, unlike `first_seq`.
    """

    name: str
    created: str
    first_seq: int
    last_seq: int
    deleted: int = 0


def created_id(value: datetime | str | None) -> str:
    """A stream's creation time as the lake records it: UTC ISO-8601 with microseconds.

    Takes nats-py's `StreamInfo.created` (a datetime) or the server's RFC 3339 string
    (nanoseconds, cut to microseconds: both forms of the same stream give the same text).
    """
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        raw = value.strip()
        match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", raw)
        if match is None:
            return raw  # not RFC 3339: compared as it is
        head, frac, zone = match.groups()
        zone = "+00:00" if zone in (None, "Z") else zone
        value = datetime.fromisoformat(f"{head}.{(frac or '')[:6].ljust(6, '0')}{zone}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def stream_identity(js: JetStreamContext, stream: str) -> StreamIdentity | None:
    """The stream's identity and sequence range now (None: no such stream).

    Raises:
        BusUnavailableError: NATS did not answer (a `TransientError`).

    Reads nats-py's public `StreamInfo.created` (guard test:
    `tests/test_stream_identity.py::test_stream_created_changes_when_recreated`).
    """
    from nats.js.errors import NotFoundError

    with bus_errors(f"reading the state of stream {stream}"):
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return None
    state = info.state
    return StreamIdentity(
        stream,
        created_id(info.created),
        int(state.first_seq or 0),
        int(state.last_seq or 0),
        int(state.num_deleted or 0),
    )


async def deleted_sequences(nc: Client, prefix: str, stream: str, above: int) -> list[int]:
    """The sequences above `above` removed from the middle of `stream` (see
    `StreamIdentity.deleted`), from JetStream's stream info with `deleted_details` (nats-py's
    `stream_info` cannot ask for them).

    Raises:
        BusUnavailableError: NATS did not answer, or the request failed.
    """
    with bus_errors(f"reading the deleted sequences of stream {stream}"):
        msg = await nc.request(
            f"{prefix}.STREAM.INFO.{stream}",
            json.dumps({"deleted_details": True}).encode(),
            timeout=10.0,
        )
    info = json.loads(msg.data or b"{}")
    if "error" in info:
        raise BusUnavailableError(
            f"reading the deleted sequences of stream {stream}: {info['error']}"
        )
    return [int(seq) for seq in (info.get("state", {}).get("deleted") or []) if int(seq) > above]


def _consumer_config(durable: str, filter_subject: str, start_seq: int | None) -> ConsumerConfig:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=filter_subject,
        # AckAll: one ack of the last message of a committed batch acks the whole batch.
        ack_policy=AckPolicy.ALL,
        ack_wait=DEFAULT_ACK_WAIT_SECONDS,
        max_ack_pending=-1,
        max_waiting=512,
        deliver_policy=DeliverPolicy.ALL,
    )
    if start_seq is not None and start_seq > 1:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start_seq
    return config


def consumer_target(table_identifier: str) -> tuple[str, str, str]:
    """`(stream, durable name, filter subject)` of the consumer feeding `table_identifier`.

    `table_identifier` is a declared Bronze/Gold table or `INFERRED_TARGET`.

    Raises:
        LakeError: the table is not fed from the bus.
    """
    if table_identifier == INFERRED_TARGET:
        return MARKET_STREAM, "lake_inferred", INFERRED_FILTER
    from iceberg_lake.tables import registry

    definition = registry().get(table_identifier)
    if not definition.subject or definition.namespace not in ("bronze", "gold"):
        raise LakeError(f"{table_identifier} is not fed from the bus")
    return (
        stream_for_subject(definition.subject),
        consumer_name(table_identifier),
        definition.subject,
    )


async def ensure_consumer(js: JetStreamContext, table_identifier: str) -> ConsumerInfo:
    """Create the durable pull consumer feeding `table_identifier` if missing. Idempotent.

    Args:
        js: JetStream context.
        table_identifier: a declared Bronze/Gold table (`bronze.stocks_trades`) or
            `INFERRED_TARGET`.

    Returns:
        The consumer's info.
    """
    from nats.js.errors import NotFoundError

    stream, durable, subject = consumer_target(table_identifier)
    try:
        return await js.consumer_info(stream, durable)
    except NotFoundError:
        return await js.add_consumer(stream, _consumer_config(durable, subject, None))


async def reset_consumer(
    js: JetStreamContext, table_identifier: str, start_seq: int
) -> ConsumerInfo:
    """Recreate the consumer of `table_identifier` so it delivers from stream sequence `start_seq`.

    The writers call this on start and after a lost delivery: messages that were delivered but
    not acked by a crashed process would otherwise come back only after the ack wait, out of
    order with newer ones. Starting from the committed watermark + 1 keeps delivery in order.

    Args:
        js: JetStream context.
        table_identifier: as for `ensure_consumer`.
        start_seq: first stream sequence to deliver (1 = everything).

    Returns:
        The new consumer's info.

    Raises:
        BusUnavailableError: NATS did not answer.
    """
    from nats.js.errors import NotFoundError

    stream, durable, subject = consumer_target(table_identifier)
    with bus_errors(f"recreating consumer {durable} of {stream}"):
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, durable)
        return await js.add_consumer(stream, _consumer_config(durable, subject, start_seq))


async def _consumer_info(js: JetStreamContext, stream: str, durable: str, what: str) -> Any:
    """A durable consumer's info, or None while it does not exist."""
    from nats.js.errors import NotFoundError

    with bus_errors(f"{what} of consumer {durable}"):
        try:
            return await js.consumer_info(stream, durable)
        except NotFoundError:
            return None


@dataclass(frozen=True)
class ConsumerState:
    """A durable consumer's counts, and how its settings differ from the lake's.

    Attributes:
        pending: messages not yet delivered.
        ack_pending: messages delivered, not yet acked.
        changed: `setting value (the lake sets X)` for each setting someone changed since the
            lake created the consumer (empty: none).
    """

    pending: int
    ack_pending: int
    changed: tuple[str, ...] = ()


def _shown(value: Any) -> str:
    value = getattr(value, "value", value)  # an enum: its wire value
    return f"{value:g}" if isinstance(value, float) else str(value)


def _changed_settings(config: Any, filter_subject: str) -> tuple[str, ...]:
    """The settings of a consumer's `config` that are not the ones `_consumer_config` sets."""
    expected = _consumer_config("x", filter_subject, None)
    out = []
    for name in ("ack_policy", "ack_wait", "max_ack_pending", "max_waiting", "filter_subject"):
        want, got = getattr(expected, name), getattr(config, name, None)
        if got is not None and got != want:
            out.append(f"{name} {_shown(got)} (the lake sets {_shown(want)})")
    for name in ("max_deliver", "rate_limit_bps"):
        got = getattr(config, name, None)
        if got not in (None, -1, 0):
            out.append(f"{name} {got} (the lake sets none)")
    return tuple(out)


async def consumer_state(
    js: JetStreamContext, stream: str, durable: str, filter_subject: str | None = None
) -> ConsumerState | None:
    """The counts of a durable consumer, and (given its `filter_subject`) which of its
    settings were changed by hand (ingest17: `ack_wait 1`, `max_ack_pending 50` cut a writer
    to 25 messages/s with no word).

    Returns:
        None while the consumer does not exist (not created yet, or between the delete and the
        add of `reset_consumer`).

    Raises:
        BusUnavailableError: NATS did not answer.
    """
    info = await _consumer_info(js, stream, durable, "reading the state")
    if info is None:
        return None
    changed = _changed_settings(info.config, filter_subject) if filter_subject else ()
    return ConsumerState(int(info.num_pending or 0), int(info.num_ack_pending or 0), changed)


async def consumer_ack_floor(js: JetStreamContext, stream: str, durable: str) -> int | None:
    """The stream sequence a durable consumer has acked every message up to (its ack floor).

    Returns:
        None while the consumer does not exist.

    Raises:
        BusUnavailableError: NATS did not answer.
    """
    info = await _consumer_info(js, stream, durable, "reading the ack floor")
    if info is None:
        return None
    return int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0


def pub_frame_header(subject: str) -> bytes:
    """The start of a core-NATS `PUB` frame for `subject` (the payload size follows).

    A frame is `PUB <subject> <size>\\r\\n<payload>\\r\\n`; `publish_frames` sends many at once.

    Raises:
        LakeError: `subject` is empty, has whitespace (the server would reject the frame), an
            empty token or a wildcard token (`*`, `>`: not a subject one can publish on; docs19:
            `--prefix 'a.>'` was accepted).
    """
    tokens = subject.split(".")
    if not subject or any(c.isspace() for c in subject) or any(t in ("", "*", ">") for t in tokens):
        raise LakeError(
            f"invalid NATS subject {subject!r} (no spaces, empty tokens or wildcards * >)"
        )
    return b"PUB " + subject.encode() + b" "


async def publish_frames(nc: Client, frames: bytes, messages: int, payload_bytes: int) -> None:
    """Queue pre-encoded core-NATS `PUB` frames in one write and flush (PING/PONG).

    The batched counterpart of `nc.publish`: the replay builds the frames for thousands of
    events with Arrow and hands them over in one call, instead of one coroutine per message.
    The flush waits for the server, so at most one batch is in flight. Relies on nats-py's
    `Client._send_command` (guarded by `tests/test_replay_nats_batch.py`).

    Args:
        nc: a connected client.
        frames: concatenated `PUB` frames (see `pub_frame_header`).
        messages: how many frames (for the client's statistics).
        payload_bytes: their payload bytes (statistics).

    Raises:
        TransientError: the connection is closed, draining or not connected.
    """
    if nc.is_closed or nc.is_draining_pubs or not nc.is_connected:
        raise TransientError("NATS connection is not open: cannot publish the replay batch")
    if not frames:
        return
    await nc._send_command(frames)
    nc.stats["out_msgs"] += messages
    nc.stats["out_bytes"] += payload_bytes
    await nc.flush()


# ---- leases: one active writer per consumer ------------------------------------------------------


def lease_holder_id() -> str:
    """A name for this process in lease records (`host:pid:random`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseBucket:
    """The lease KV bucket, written through JetStream's public API.

    nats-py's `KeyValue` writes to `$KV.<bucket>.<key>`, which does not reach a bucket in
    another JetStream domain; like the Go client, writes here go to
    `$JS.<domain>.API.$KV.<bucket>.<key>` when a domain is set. Reads fetch the last message of
    the key's subject from the bucket's stream.

    Args:
        js: JetStream context (its domain's API prefix).
        prefix: that context's API prefix (`api_prefix(settings)`).
        ttl: the bucket's time to live in seconds: how long an entry lives after its last write.
    """

    def __init__(self, js: JetStreamContext, prefix: str, ttl: float) -> None:
        self.js = js
        self.ttl = ttl
        self.stream = f"KV_{LEASE_BUCKET}"
        self.subject_prefix = f"$KV.{LEASE_BUCKET}."
        self.write_prefix = (
            self.subject_prefix if prefix == "$JS.API" else f"{prefix}.{self.subject_prefix}"
        )

    async def current_ttl(self) -> float:
        """The bucket's TTL now, read from the server (0: none).

        Raises:
            BusUnavailableError: NATS did not answer.
        """
        from nats.js.errors import NotFoundError

        with bus_errors("reading the lease bucket"):
            try:
                info = await self.js.stream_info(self.stream)
            except NotFoundError:
                # Gone under a running lake serve (NATS lost its storage, or it was deleted):
                # made again as at start, so the writers take their leases and reach their
                # stream check instead of retrying this read for good (ops8).
                log.warning("lease bucket %s missing: creating it again", LEASE_BUCKET)
                await _create_lease_bucket(self.js, self.ttl)
                info = await self.js.stream_info(self.stream)
        return float(info.config.max_age or 0.0)

    async def write(self, key: str, value: bytes, last: int) -> int:
        """Write `key` if its last revision is `last` (0: absent). Returns the new revision.

        Raises:
            LeaseConflict: the key has another revision.
            BusUnavailableError: NATS did not answer (see `bus_error`).
        """
        from nats.js.errors import APIError

        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        with bus_errors(f"writing lease {key}"):
            try:
                ack = await self.js.publish(self.write_prefix + key, value, headers=headers)
            except APIError as exc:
                if exc.err_code in (10071, 10164):  # wrong last subject sequence
                    raise LeaseConflict(key) from None
                raise
        return int(ack.seq)

    async def delete(self, key: str, last: int) -> None:
        """Put a delete marker on `key` if its last revision is `last`."""
        headers = {"KV-Operation": "DEL", "Nats-Expected-Last-Subject-Sequence": str(last)}
        with bus_errors(f"releasing lease {key}"):
            await self.js.publish(self.write_prefix + key, b"", headers=headers)

    async def read(self, key: str) -> tuple[int, bytes | None]:
        """(last revision, value); value None when the key is absent, deleted or expired.

        Raises:
            BusUnavailableError: NATS did not answer (see `bus_error`).
        """
        from nats.js.errors import NotFoundError

        with bus_errors(f"reading lease {key}"):
            try:
                msg = await self.js.get_msg(self.stream, subject=self.subject_prefix + key)
            except NotFoundError:
                return 0, None
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            return int(msg.seq or 0), None
        return int(msg.seq or 0), msg.data or b""


class LeaseConflict(Exception):
    """Internal: a lease write found another revision than expected."""


async def _create_lease_bucket(js: JetStreamContext, ttl: float) -> None:
    """Create the lease KV bucket with `ttl` (another process creating it at once is fine)."""
    from nats.js.api import KeyValueConfig

    try:
        await js.create_key_value(KeyValueConfig(bucket=LEASE_BUCKET, ttl=ttl, history=1))
    except Exception as exc:  # raced with another process creating it
        log.debug("create lease bucket: %s", exc)


async def lease_bucket(js: JetStreamContext, settings: Settings) -> LeaseBucket:
    """The lease bucket, created with a TTL of `writer_lease_seconds` if missing.

    The bucket's TTL is one value for every process: a holder renews every third of the TTL it
    knows, so a shorter TTL set by a later process would let the entry expire between those
    renewals and a standby take the lease beside a live holder. So an existing bucket's TTL is
    only ever raised (which every running holder's schedule survives), never lowered: a process
    configured shorter uses the bucket's TTL and says so in one warning. The returned bucket's
    `ttl` is the one in effect.
    """
    from nats.js.errors import NotFoundError

    wanted = settings.writer_lease_seconds
    stream = f"KV_{LEASE_BUCKET}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await _create_lease_bucket(js, wanted)
        info = await js.stream_info(stream)
    current = info.config.max_age or 0.0
    if current + 1e-3 < wanted or current <= 0:
        info.config.max_age = wanted
        info.config.duplicate_window = min(wanted, 120.0)
        await js.update_stream(info.config)
        current = wanted
    elif current > wanted + 1e-3:
        log.warning(
            "LAKE_WRITER_LEASE_SECONDS=%g is shorter than the TTL of the lease bucket %s "
            "(%g s, set by an earlier lake serve); using %g s: a shorter TTL would let a running "
            "writer's lease expire between its renewals (to shorten it, stop every lake serve "
            "and delete the stream %s)",
            wanted,
            LEASE_BUCKET,
            current,
            current,
            stream,
        )
    return LeaseBucket(js, api_prefix(settings), current)


class Lease:
    """The right to be the one writer of a durable consumer, held in a NATS KV entry.

    The entry expires `ttl` seconds after its last write (bucket TTL), so a holder that dies
    without releasing it (SIGKILL, lost host) frees it within `ttl`. The holder renews it with a
    revision compare-and-swap every `ttl / 3`; a renewal that finds another revision means
    someone else took it. Locally, the lease counts as held only until 80% of `ttl` after the
    last successful write was *sent*, so this process stops before the server could hand the
    lease to a standby even when NATS is unreachable.

    Args:
        bucket: the lease bucket (`lease_bucket`).
        key: one key per consumer (`lease_key`).
        ttl: the bucket's time to live in seconds.
        holder: this process's name in the record.
    """

    def __init__(self, bucket: LeaseBucket, key: str, ttl: float, holder: str) -> None:
        self.bucket = bucket
        self.key = key
        self.ttl = ttl
        self.holder = holder
        self.revision = 0
        self._valid_until = 0.0

    def held(self) -> bool:
        """True while this process may write (lease taken and not possibly expired)."""
        return self.revision > 0 and time.monotonic() < self._valid_until

    def _mark(self, sent_at: float) -> None:
        # 20% margin for clock-rate differences and the server's expiry timer.
        self._valid_until = sent_at + 0.8 * self.ttl

    async def _follow_bucket_ttl(self) -> None:
        """Count the lease by the bucket's TTL if it is shorter than ours.

        `lease_bucket` only raises the TTL, but two processes raising it at once race (a stream
        update is not a compare-and-swap): the later write can leave the bucket below the TTL
        the other process was told. Read before every write, the TTL in effect bounds how long
        this process counts its lease as held (review6).
        """
        current = await self.bucket.current_ttl()
        if 0 < current < self.ttl - 1e-3:
            log.warning(
                "the lease bucket's TTL is %g s, not the %g s this writer was told (another "
                "lake serve changed it at the same moment); counting its lease by %g s",
                current,
                self.ttl,
                current,
            )
            self.ttl = current

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it. Returns True when taken."""
        await self._follow_bucket_ttl()
        sent = time.monotonic()
        try:
            self.revision = await self.bucket.write(self.key, self.holder.encode(), 0)
        except LeaseConflict:
            # A delete marker (released lease) also counts as a revision: take it over.
            last, value = await self.bucket.read(self.key)
            if value is not None or not last:
                self.revision = 0
                return False
            try:
                self.revision = await self.bucket.write(self.key, self.holder.encode(), last)
            except LeaseConflict:
                self.revision = 0
                return False
        self._mark(sent)
        return True

    async def renew(self) -> bool:
        """Extend the lease. False if another process holds it now (lost for good).

        Raises:
            BusUnavailableError: NATS unreachable (the lease may still be ours; `held()` tells
                how long).
        """
        if not self.revision:
            return False
        await self._follow_bucket_ttl()
        sent = time.monotonic()
        try:
            self.revision = await self.bucket.write(self.key, self.holder.encode(), self.revision)
        except LeaseConflict:
            self.revision = 0
            self._valid_until = 0.0
            return False
        self._mark(sent)
        return True

    async def release(self) -> None:
        """Give the lease up (a standby takes over at once). Best effort."""
        revision, self.revision, self._valid_until = self.revision, 0, 0.0
        if revision:
            with contextlib.suppress(Exception):
                await self.bucket.delete(self.key, revision)

    async def current_holder(self) -> str | None:
        """Who holds the lease now (None if nobody)."""
        _, value = await self.bucket.read(self.key)
        return value.decode() if value is not None else None


def lease_key(stream: str, durable: str) -> str:
    """The lease key of a consumer."""
    return f"{stream}.{durable}"


#: `lake status` warns when a lagging consumer's data reaches this share of a stream limit.
LIMIT_WARNING_SHARE = 0.8


async def stream_limit_warning(
    js: JetStreamContext, stream: str, consumer: ConsumerInfo, filter_subject: str
) -> str | None:
    """A warning when the stream's limits are about to discard what `consumer` has not stored.

    With `max_age`: the oldest message the consumer has not acked is older than 80% of it.
    With `max_bytes`: the stream is 80% full while the consumer lags. (The server discards the
    oldest messages at a limit whether or not a writer stored them.)

    Returns:
        One line, or None when the consumer is far from the limits (or the stream has none).
    """
    info = await js.stream_info(stream)
    config, state = info.config, info.state
    lag = int(consumer.num_pending or 0) + int(consumer.num_ack_pending or 0)
    if lag == 0:
        return None
    warnings: list[str] = []
    if config.max_bytes and config.max_bytes > 0 and state.bytes:
        share = state.bytes / config.max_bytes
        if share >= LIMIT_WARNING_SHARE:
            warnings.append(
                f"stream {stream} is {share:.0%} of max_bytes ({config.max_bytes:,}) with "
                f"{lag:,} messages not stored: the oldest are discarded at the limit"
            )
    if config.max_age and config.max_age > 0:
        floor = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
        try:
            oldest = await js.get_msg(
                stream, seq=(floor or 0) + 1, subject=filter_subject, next=True
            )
        except Exception:  # nothing left to read (purged meanwhile)
            oldest = None
        if oldest is not None and oldest.time is not None:
            age = time.time() - oldest.time.timestamp()
            if age >= LIMIT_WARNING_SHARE * config.max_age:
                warnings.append(
                    f"oldest message not stored is {age:,.0f} s old, max_age of {stream} is "
                    f"{config.max_age:,.0f} s: it is discarded at the limit"
                )
    return "; ".join(warnings) or None


# ---- sequences of delivered messages -------------------------------------------------------------


def _ack_tokens(reply: str) -> tuple[int, int] | None:
    """(stream seq, consumer seq) from an ack subject, in the token layout nats-py's
    `Msg.Metadata` reads (v1: 9 tokens; v2 with domain and account: 11 or 12)."""
    t = reply.split(".")
    try:
        if len(t) == 9:
            return int(t[5]), int(t[6])
        if len(t) >= 11:
            return int(t[7]), int(t[8])
    except ValueError:
        return None
    return None


def message_sequences(msgs: list[Msg]) -> list[tuple[int, int]]:
    """(stream sequence, consumer sequence) of each JetStream message, in order.

    `Msg.metadata` (nats-py's public parser of the ack subject, JetStream domains included)
    builds a datetime and two dataclasses per message, ~4-12 µs here: a large share of a
    single-event message's budget. So the two numbers are read from the same subject tokens
    directly, and checked against `Msg.metadata` on the first and last message of every call;
    on any disagreement (a future format) every message goes through `Msg.metadata`.
    Guard test: `tests/test_bus.py::test_message_sequences_match_nats_metadata`.
    """
    if not msgs:
        return []
    fast = [_ack_tokens(m.reply) for m in msgs]
    for i in {0, len(msgs) - 1}:
        meta = msgs[i].metadata.sequence
        if fast[i] != (meta.stream, meta.consumer):
            fast = []
            break
    if fast and all(f is not None for f in fast):
        return fast  # type: ignore[return-value]
    return [(m.metadata.sequence.stream, m.metadata.sequence.consumer) for m in msgs]
