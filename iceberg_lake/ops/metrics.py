"""Prometheus metrics of the writers (`lake serve --metrics-port P` serves them on /metrics).

Series (label `table` is a table identifier, `consumer` a durable consumer name):

* `lake_ingest_events_consumed_total{table}` — events decoded for a table (stored or rejected)
* `lake_ingest_events_committed_total{table}` — rows committed to Iceberg
* `lake_ingest_dead_letters_total{table}` — messages dead-lettered (table or `unrouted`)
* `lake_ingest_commit_seconds{table}` — histogram of commit latency (write files + catalog swap)
* `lake_ingest_commit_errors_total{table}` — failed commit attempts (retried)
* `lake_ingest_buffer_events{consumer}` — events buffered and not yet committed
* `lake_ingest_consumer_lag{consumer}` — messages in the stream not yet delivered (num_pending)
* `lake_ingest_unknown_fields_total{table,field}` — events carrying a field the table lacks
* `lake_ingest_skipped_total{consumer}` — redelivered messages skipped (already committed)
* `lake_ingest_removed_before_commit_total{consumer}` — stream sequences the stream's limits (or a
  purge) removed after the consumer's committed position before its writer read them: lost
  unless another copy exists. Counted when a writer (re)starts; an upper bound on the
  consumer's lost messages (some of the sequences may have been other subjects')
* `lake_table_newest_event_timestamp_seconds{table,view}` — newest `ts_event_ns` (as Unix
  seconds) committed (`view="committed"`) and fetched and decoded by the writer (`view="live"`:
  the live view's newest while the writer keeps up; older when it lags, see consumer_lag)
* `lake_table_freshness_seconds{table,view}` — now − that, computed at scrape time
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter(
    "lake_ingest_events_consumed",
    "Events decoded for a table (stored or rejected).",
    ["table"],
    registry=REGISTRY,
)
EVENTS_COMMITTED = Counter(
    "lake_ingest_events_committed",
    "Rows committed to the Iceberg table.",
    ["table"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "lake_ingest_dead_letters",
    "Messages dead-lettered (target table or 'unrouted').",
    ["table"],
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "lake_ingest_commit_seconds",
    "Latency of one Iceberg append commit (data files + catalog swap).",
    ["table"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
COMMIT_ERRORS = Counter(
    "lake_ingest_commit_errors",
    "Failed commit attempts (retried with backoff).",
    ["table"],
    registry=REGISTRY,
)
BUFFER_EVENTS = Gauge(
    "lake_ingest_buffer_events",
    "Events buffered by a consumer and not yet committed.",
    ["consumer"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "lake_ingest_consumer_lag",
    "Messages in the stream not yet delivered to the consumer (JetStream num_pending).",
    ["consumer"],
    registry=REGISTRY,
)
UNKNOWN_FIELDS = Counter(
    "lake_ingest_unknown_fields",
    "Events carrying a field the table does not have (dropped from the row).",
    ["table", "field"],
    registry=REGISTRY,
)
SKIPPED = Counter(
    "lake_ingest_skipped",
    "Redelivered messages skipped because they were already committed.",
    ["consumer"],
    registry=REGISTRY,
)
REMOVED_BEFORE_COMMIT = Counter(
    "lake_ingest_removed_before_commit",
    "Stream sequences removed by the stream's limits or a purge after the consumer's committed "
    "position, before its writer read them (some may have been other subjects').",
    ["consumer"],
    registry=REGISTRY,
)


NEWEST_EVENT = Gauge(
    "lake_table_newest_event_timestamp_seconds",
    "Newest event time (ts_event_ns, Unix seconds) committed / decoded by the writer.",
    ["table", "view"],
    registry=REGISTRY,
)
FRESHNESS = Gauge(
    "lake_table_freshness_seconds",
    "Event-time freshness: now minus the newest event committed / decoded by the writer "
    "(negative: that event is stamped ahead of this clock).",
    ["table", "view"],
    registry=REGISTRY,
)
_newest: dict[tuple[str, str], float] = {}


def note_events(table: str, view: str, rows: pa.Table) -> None:
    """Record the newest `ts_event_ns` of `rows` for `table` (`view`: committed or live).

    The writer calls this for the rows it decodes (its buffer: the live tail as far as it has
    fetched; messages it has not fetched yet are not counted) and for the rows each commit
    stores. Freshness is computed when the metrics are scraped.
    """
    if rows.num_rows == 0 or "ts_event_ns" not in rows.column_names:
        return
    value = pc.max(rows.column("ts_event_ns")).as_py()
    if value is None:
        return
    key = (table, view)
    seconds = value / 1e9
    if seconds <= _newest.get(key, float("-inf")):
        return
    first = key not in _newest
    _newest[key] = seconds
    NEWEST_EVENT.labels(table, view).set(seconds)
    if first:
        FRESHNESS.labels(table, view).set_function(lambda: time.time() - _newest[key])
    if view == "committed":
        # Whatever is committed is in the live view too.
        note_events(table, "live", rows)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> object:
    """Serve the metrics over HTTP on `port` (`/metrics`) from a background thread.

    Returns:
        The server object (has `shutdown()`).
    """
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
