"""`lake status`: table health, JetStream consumer lag and dead-letter counts in one report.

Tables come from catalog metadata only (snapshot summaries), so the report is cheap. Consumer lag
is read from JetStream (`pending + ack pending` of each table's durable consumer). Each consumer's
committed position is checked against its stream (`ingest.position`): a stream deleted and
created again, or one on a server that lost its storage, is flagged (`stream_error`), and its lag
is then every message on the table's subject in that stream (none of them is stored). If NATS
cannot be reached the report still lists the tables and says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.config import Settings, redact, redact_url
from iceberg_lake.engine.nats import (
    INFERRED_TARGET,
    StreamIdentity,
    connect,
    consumer_target,
    jetstream,
    stream_identity,
    stream_limit_warning,
)
from iceberg_lake.engine.nats_tail import last_subject_seq
from iceberg_lake.exceptions import LakeError
from iceberg_lake.ingest import position
from iceberg_lake.schema.migrations import pending_warning

DEAD_LETTERS_TABLE = "bronze.dead_letters"
#: `lake status` warns when a table's newest event time is this far ahead of now; less is
#: ordinary skew between the publishers' clocks and this machine's.
AHEAD_WARNING_SECONDS = 1.0


@dataclass(frozen=True)
class TableStatus:
    """One table's size and freshness, from its current snapshot summary."""

    table: str
    rows: int
    data_files: int
    mean_file_bytes: int
    snapshots: int
    last_commit: str | None
    last_commit_age_seconds: float | None
    #: Total size of the current data files.
    bytes: int = 0
    #: Event-time freshness: now − newest `ts_event_ns` of the current snapshot, and of the
    #: live view (snapshot ∪ JetStream tail; None when NATS was not read or no tail applies).
    #: Never negative: an event time ahead of now counts as fresh (0) and is reported in
    #: `events_ahead_seconds` and `live_warning` instead.
    committed_freshness_seconds: float | None = None
    live_freshness_seconds: float | None = None
    #: Warnings `lake status` prints under the tables: the stream removed messages after the
    #: committed watermark (its limits, before the table committed them), so the live view, and
    #: the table, may lack them; or the newest event is ahead of now (a clock is off).
    live_warning: str | None = None
    #: How far the table's newest event time (committed or live) is ahead of now; None when
    #: it is not. Above zero, a publisher's clock or a feed's `ts_event` is wrong (or this
    #: machine's clock is behind).
    events_ahead_seconds: float | None = None
    #: A declared table the catalog has no row for (never created, or lost by a restore or a
    #: failover): its counts are 0 and `error` says what to do.
    missing: bool = False
    error: str | None = None


def missing_table_error(identifier: str) -> str:
    """The line `lake status` and `lake tables` print for a declared table the catalog lacks."""
    return (
        f"{identifier}: declared but not in the catalog: run `lake init`; if its location "
        'already holds metadata files, see docs/production.md ("A table missing from the '
        'catalog")'
    )


def missing_table_status(identifier: str) -> TableStatus:
    """The report of a declared table the catalog has no row for."""
    return TableStatus(
        table=identifier,
        rows=0,
        data_files=0,
        mean_file_bytes=0,
        snapshots=0,
        last_commit=None,
        last_commit_age_seconds=None,
        missing=True,
        error=missing_table_error(identifier),
    )


#: The counts a missing table has none of (null in JSON, not 0: review19c).
_COUNTS = ("rows", "data_files", "mean_file_bytes", "snapshots", "bytes")


def _table_json(status: TableStatus) -> dict[str, Any]:
    """A table's report as JSON: a missing table's counts are null."""
    out = asdict(status)
    if status.missing:
        out.update(dict.fromkeys(_COUNTS))
    return out


def missing_table_errors(tables: list[TableStatus]) -> list[str]:
    """The error lines for the missing tables of a report: one per table, or one for all when
    no table is in the catalog yet (a lake before `lake init`)."""
    missing = [t for t in tables if t.missing]
    if len(missing) > 1 and len(missing) == len(tables):
        return [f"none of the {len(missing)} declared tables is in the catalog: run `lake init`"]
    return [t.error for t in missing if t.error]


def lake_table_status(catalog: LakeCatalog, now: datetime) -> list[TableStatus]:
    """Every table of the catalog's lake namespaces and every declared one, sorted by name.

    A declared table without a catalog row is listed as missing (`missing_table_status`) rather
    than left out, so a lost row shows in the report meant to show problems.
    """
    existing = catalog.existing_tables()
    declared = set(catalog.registry.identifiers)
    return [
        table_status(catalog, t, now) if t in existing else missing_table_status(t)
        for t in sorted(declared | set(existing))
    ]


@dataclass(frozen=True)
class ConsumerStatus:
    """One durable JetStream consumer feeding a table."""

    table: str
    stream: str
    consumer: str
    exists: bool
    pending: int = 0
    ack_pending: int = 0
    redelivered: int = 0
    #: Set when the stream's max_age/max_bytes is about to discard messages not yet stored.
    warning: str | None = None
    #: The committed position (watermark) of the consumer, and the stream's last sequence.
    position: int = 0
    stream_last_seq: int = 0
    #: Set when the stream is not the one the position counts in (recreated, storage lost):
    #: the writers refuse to start until `lake maintain reset-position`.
    stream_error: str | None = None
    #: With `stream_error`: the messages on the table's subject in the stream (none stored).
    unstored: int | None = None

    @property
    def lag(self) -> int:
        """Messages published and not yet stored: not delivered plus delivered but unacked
        (with `stream_error`: every message on the subject in the stream)."""
        if self.unstored is not None:
            return max(self.unstored, self.pending + self.ack_pending)
        return self.pending + self.ack_pending


@dataclass
class LakeStatus:
    """The whole report."""

    tables: list[TableStatus]
    consumers: list[ConsumerStatus] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    nats: str = "ok"
    #: One line when shipped migrations are pending (`lake migrate up`), else None.
    migrations_warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (consumers carry their `lag`)."""
        return {
            "tables": [_table_json(t) for t in self.tables],
            "consumers": [{**asdict(c), "lag": c.lag} for c in self.consumers],
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "nats": self.nats,
            "migrations_warning": self.migrations_warning,
        }

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)


def table_status(catalog: LakeCatalog, identifier: str, now: datetime) -> TableStatus:
    """Rows, data files, mean file size, snapshots and last-commit age of one table."""
    table = catalog.load_table(identifier)
    snap = table.current_snapshot()
    summary = snap.summary if snap is not None else None
    rows = int(summary.get("total-records") or 0) if summary else 0
    files = int(summary.get("total-data-files") or 0) if summary else 0
    size = int(summary.get("total-files-size") or 0) if summary else 0
    when = datetime.fromtimestamp(snap.timestamp_ms / 1000, tz=UTC) if snap else None
    return TableStatus(
        table=identifier,
        rows=rows,
        data_files=files,
        mean_file_bytes=size // files if files else 0,
        snapshots=len(table.metadata.snapshots),
        last_commit=when.isoformat(timespec="seconds") if when else None,
        last_commit_age_seconds=round((now - when).total_seconds(), 1) if when else None,
        bytes=size,
    )


def dead_letter_counts(catalog: LakeCatalog) -> dict[str, int]:
    """Rows of `bronze.dead_letters` per target table (empty if the table does not exist)."""
    if DEAD_LETTERS_TABLE not in catalog.existing_tables():
        return {}
    table = catalog.load_table(DEAD_LETTERS_TABLE)
    if table.current_snapshot() is None:
        return {}
    with catalog_errors("reading dead letters"):
        data = table.scan(selected_fields=("target_table",)).to_arrow()
    counts = data.group_by("target_table").aggregate([("target_table", "count")])
    return {
        str(t): int(n)
        for t, n in zip(
            counts.column("target_table").to_pylist(),
            counts.column("target_table_count").to_pylist(),
            strict=True,
        )
    }


def fed_tables(catalog: LakeCatalog) -> list[str]:
    """Declared tables fed by a JetStream consumer (Bronze market tables and Gold)."""
    out = []
    for definition in catalog.registry:
        try:
            consumer_target(definition.identifier)
        except LakeError:
            continue
        out.append(definition.identifier)
    return sorted(out)


#: At most this many unmapped subjects are asked for their last message (one request each)
#: to tell whether schema inference has unmapped messages waiting; past it, it is assumed.
UNMAPPED_SUBJECT_CHECKS = 32


async def _unmapped_subjects(js: Any, stream: str, mapped: frozenset[str]) -> dict[str, int]:
    """Messages per subject of `market.>` that no Bronze table maps (schema inference's)."""
    from nats.js.errors import NotFoundError

    _, _, wildcard = consumer_target(INFERRED_TARGET)
    try:
        info = await js.stream_info(stream, subjects_filter=wildcard)
    except NotFoundError:  # deleted since it was looked up
        return {}
    return {s: int(n) for s, n in (info.state.subjects or {}).items() if s not in mapped}


async def _unmapped_waiting(js: Any, stream: str, unmapped: dict[str, int], floor: int) -> bool:
    """True when some unmapped subject has a message after schema inference's ack floor."""
    subjects = sorted(unmapped)
    for subject in subjects[:UNMAPPED_SUBJECT_CHECKS]:
        # 0: removed since the subjects were listed, none waits there. A timeout is not
        # "nothing waiting": it propagates and the report says NATS did not answer (review9).
        if await last_subject_seq(js, stream, subject) > floor:
            return True
    return len(subjects) > UNMAPPED_SUBJECT_CHECKS


async def _consumers(
    settings: Settings,
    tables: list[str],
    timeout: float,
    committed: dict[str, position.Committed],
    mapped: frozenset[str] = frozenset(),
) -> list[ConsumerStatus]:
    from nats.js.errors import NotFoundError

    nc = await connect(settings, name="lake-status", connect_timeout=timeout)
    try:
        js = jetstream(nc, settings, timeout=timeout)
        out = []
        streams: dict[str, StreamIdentity | None] = {}
        for identifier in tables:
            stream, durable, subject = consumer_target(identifier)
            if stream not in streams:
                streams[stream] = await stream_identity(js, stream)
            live = streams[stream]
            done = committed.get(identifier, position.Committed(0, frozenset()))
            problem = position.mismatch(identifier, durable, done, live)
            unstored: int | None = None
            inferred = identifier == INFERRED_TARGET
            unmapped = (
                await _unmapped_subjects(js, stream, mapped)
                if inferred and live is not None
                else {}
            )
            if problem is not None and inferred:
                unstored = sum(unmapped.values())
            elif problem is not None:
                info_s = await js.stream_info(stream, subjects_filter=subject)
                unstored = int((info_s.state.subjects or {}).get(subject, 0))
            try:
                info = await js.consumer_info(stream, durable)
            except NotFoundError:
                found = ConsumerStatus(identifier, stream, durable, exists=False)
            else:
                found = ConsumerStatus(
                    identifier,
                    stream,
                    durable,
                    exists=True,
                    pending=int(info.num_pending or 0),
                    ack_pending=int(info.num_ack_pending or 0),
                    redelivered=int(info.num_redelivered or 0),
                    warning=await stream_limit_warning(js, stream, info, subject),
                )
                if inferred and found.warning:
                    # Its lag counts the mapped messages it only skips (their tables' writers
                    # store them): warn only while unmapped ones wait (ops6).
                    floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
                    waiting = await _unmapped_waiting(js, stream, unmapped, floor)
                    found = dataclasses.replace(
                        found,
                        warning=(
                            f"{found.warning} (schema inference; its lag counts the mapped "
                            "subjects it skips too)"
                            if waiting
                            else None
                        ),
                    )
            out.append(
                dataclasses.replace(
                    found,
                    position=done.position,
                    stream_last_seq=live.last_seq if live is not None else 0,
                    stream_error=problem,
                    unstored=unstored,
                )
            )
        return out
    finally:
        await nc.close()


def committed_positions(catalog: LakeCatalog, tables: list[str]) -> dict[str, position.Committed]:
    """Each fed table's consumer's committed position and recorded stream (`ingest.position`)."""
    existing = set(catalog.existing_tables())
    dead = (
        dict(catalog.load_table(DEAD_LETTERS_TABLE).properties)
        if DEAD_LETTERS_TABLE in existing
        else {}
    )
    out: dict[str, position.Committed] = {}
    for identifier in tables:
        if identifier == INFERRED_TARGET:
            stream, durable, _ = consumer_target(identifier)
            of_tables = [
                dict(catalog.load_table(t).properties)
                for t in position.consumer_tables(catalog, identifier)
                if t in existing
            ]
            out[identifier] = position.committed(of_tables, stream, durable)
            continue
        if identifier not in existing:
            continue
        stream, durable, _ = consumer_target(identifier)
        props = dict(catalog.load_table(identifier).properties)
        out[identifier] = position.committed([props, dead], stream, durable)
    return out


def consumer_status(
    settings: Settings,
    tables: list[str],
    timeout: float = 3.0,
    committed: dict[str, position.Committed] | None = None,
    mapped: frozenset[str] = frozenset(),
) -> tuple[list[ConsumerStatus], str]:
    """Lag of each table's durable consumer, and `ok` or why NATS could not be read.

    `committed` (`committed_positions`): each table's committed position, checked against its
    stream (`ConsumerStatus.stream_error`); without it only the lag is read. `mapped`: the
    subjects Bronze tables map, which schema inference (`inferred`) skips.

    Never raises for an unreachable or misbehaving NATS: the reason is returned instead.
    """
    try:
        consumers = asyncio.run(
            asyncio.wait_for(
                _consumers(settings, tables, timeout, committed or {}, mapped),
                timeout=timeout * 4,
            )
        )
    except (LakeError, OSError, TimeoutError) as exc:
        reason = redact(str(exc), settings) or (
            f"no answer from {redact_url(settings.nats_url)} within {timeout * 4:g}s"
        )
        return [], f"unreachable ({reason})"
    except Exception as exc:  # nats-py raises its own types (auth, JetStream disabled, ...)
        return [], f"unreachable ({type(exc).__name__}: {redact(str(exc), settings)})"
    return consumers, "ok"


def collect_status(
    catalog: LakeCatalog, *, nats_timeout: float = 3.0, now: datetime | None = None
) -> LakeStatus:
    """Build the status report.

    Args:
        catalog: the lake catalog (its settings name the NATS server).
        nats_timeout: seconds to wait for NATS.
        now: reference time for commit ages (default: now).

    Returns:
        Tables, consumers, dead-letter counts, the NATS state and whether migrations are
        pending.

    Raises:
        CatalogUnavailableError: the catalog cannot be read.
    """
    fixed_now = now is not None
    now = now or datetime.now(UTC)
    tables = lake_table_status(catalog, now)
    # The schema-inference consumer too: its unmapped messages are as mortal under a stream
    # limit as any table's (ops5: no warning before 2,414 of them were discarded).
    fed = [*fed_tables(catalog), INFERRED_TARGET]
    from iceberg_lake.timetravel.live.inferred import inferred_mapped_subjects

    consumers, nats_state = consumer_status(
        catalog.settings,
        fed,
        nats_timeout,
        committed_positions(catalog, fed),
        inferred_mapped_subjects(catalog),
    )
    # Freshness is measured against the end of its own reads unless a time was given.
    tables = _with_freshness(
        catalog, tables, now if fixed_now else None, live=nats_state == "ok", timeout=nats_timeout
    )
    return LakeStatus(
        tables, consumers, dead_letter_counts(catalog), nats_state, pending_warning(catalog)
    )


def _with_freshness(
    catalog: LakeCatalog,
    tables: list[TableStatus],
    now: datetime | None,
    *,
    live: bool,
    timeout: float,
) -> list[TableStatus]:
    """Add event-time freshness (committed, and live when NATS answers) to each table."""
    import dataclasses

    from iceberg_lake.timetravel.live import freshness

    names = [t.table for t in tables if t.table != DEAD_LETTERS_TABLE and not t.missing]
    now_ns = None if now is None else int(now.timestamp() * 1e9)
    try:
        fresh = freshness(catalog, names, live=live, now_ns=now_ns, timeout=timeout)
    except Exception:  # NATS went away between the two reads: report committed only
        fresh = freshness(catalog, names, live=False, now_ns=now_ns)
    out = []
    for t in tables:
        if t.table not in fresh:
            out.append(t)
            continue
        f = fresh[t.table]
        ages = [a for a in (f.committed_seconds, f.live_seconds) if a is not None]
        ahead = -min(ages) if ages and min(ages) < 0 else None
        warnings = [w for w in (f.live_warning, _ahead_warning(t.table, f, ahead)) if w]
        out.append(
            dataclasses.replace(
                t,
                committed_freshness_seconds=_not_negative(f.committed_seconds),
                live_freshness_seconds=_not_negative(f.live_seconds),
                live_warning="; ".join(warnings) or None,
                events_ahead_seconds=ahead,
            )
        )
    return out


def _not_negative(seconds: float | None) -> float | None:
    # An event ahead of now is as fresh as it gets: a negative age reads as nonsense
    # (`-2306493605s`); how far ahead it is goes into `events_ahead_seconds`.
    return None if seconds is None else max(0.0, seconds)


def _ahead_warning(table: str, fresh: Any, ahead: float | None) -> str | None:
    """One line saying a table's newest event time is ahead of now, or None."""
    if ahead is None or ahead < AHEAD_WARNING_SECONDS:
        return None
    newest = max(v for v in (fresh.committed_newest_ns, fresh.live_newest_ns) if v is not None)
    where = "committed" if fresh.committed_newest_ns == newest else "in the stream"
    return (
        f"{table}: newest event time {_ns_iso(newest)} ({where}) is {_span(ahead)} ahead of "
        "now: a publisher's clock or the feed's ts_event is off (freshness shown as 0)"
    )


def _ns_iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        when = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rest // 1000)
    except (OverflowError, OSError, ValueError):  # beyond year 9999
        return f"ts_event_ns={ns}"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f}{unit}"
    return f"{seconds:.1f}s"
