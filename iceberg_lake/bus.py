"""NATS JetStream: streams, subjects and durable consumer names shared by every component."""

from __future__ import annotations

#: Streams and the subjects they capture.
MARKET_STREAM = "MARKET"
SIGNALS_STREAM = "SIGNALS"
STREAM_SUBJECTS: dict[str, list[str]] = {
    MARKET_STREAM: ["market.>"],
    SIGNALS_STREAM: ["levels.>"],
}

#: Dead letters are published under this prefix plus the table name (`lake.dlq.stocks_trades`).
DEAD_LETTER_SUBJECT_PREFIX = "lake.dlq."


def stream_for_subject(subject: str) -> str:
    """The stream that captures `subject`."""
    return SIGNALS_STREAM if subject.startswith("levels.") else MARKET_STREAM


def consumer_name(table_identifier: str) -> str:
    """The durable pull consumer feeding a table (`bronze.x` → `lake_bronze_x`)."""
    return "lake_" + table_identifier.replace(".", "_")
