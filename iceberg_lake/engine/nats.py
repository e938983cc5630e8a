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
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from iceberg_lake.config import redact, redact_url
from iceberg_lake.exceptions import LakeError, TransientError

if TYPE_CHECKING:
    from nats.aio.client import Client
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
    from nats.js.errors import NotFoundError

    created: list[str] = []
    window = settings.stream_duplicate_window_seconds
    for stream, subjects in all_stream_subjects().items():
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            config = StreamConfig(name=stream, subjects=subjects, duplicate_window=window)
            try:
                await js.add_stream(config)
                created.append(stream)
                log.info("created stream %s (%s)", stream, ", ".join(subjects))
            except Exception as exc:  # raced with another process creating it
                log.debug("add_stream %s: %s", stream, exc)
            continue
        if not info.config.duplicate_window:
            info.config.duplicate_window = window
            await js.update_stream(info.config)
    return created


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
    """
    from nats.js.errors import NotFoundError

    stream, durable, subject = consumer_target(table_identifier)
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, durable)
    return await js.add_consumer(stream, _consumer_config(durable, subject, start_seq))
