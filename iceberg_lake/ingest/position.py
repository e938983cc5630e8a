"""Which stream a committed watermark counts in, and resetting it to a new stream.

A writer's watermark and position (`lake.watermark.<stream>.<consumer>`,
`lake.position.<stream>.<consumer>`) are stream sequences. They mean something only in the
stream they came from: a stream deleted and created again, or a NATS server that lost its
storage, numbers its messages from 1 again. So every commit also records the stream's creation
time (`lake.stream-created.<stream>.<consumer>`, `properties.STREAM_CREATED_PREFIX`), and a
writer compares it with the live stream whenever it (re)creates its consumer and every few
seconds while it runs (`check_stream`):

* another creation time, or a stream whose last sequence is below the committed position:
  `StreamMismatchError` and `lake serve` stops with one line. Nothing is skipped on its own:
  the new stream's messages may be new events, a replay of old ones, or both, and only the
  operator can tell. After checking, `lake maintain reset-position` (`reset_positions`) records
  the new stream and sets the position to 0, so the writers read it from its first message.
* a watermark written before the creation time was recorded (no property): accepted when the
  stream's last sequence is at least the position (the writer records the stream's creation
  time with its next commit); refused like a mismatch when it is below.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from iceberg_lake import properties
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine import nats as bus
from iceberg_lake.exceptions import LakeError, StreamMismatchError
from iceberg_lake.tables import DEAD_LETTERS_TABLE

if TYPE_CHECKING:
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

#: The command that clears a mismatch (named by every mismatch message).
RESET_COMMAND = "lake maintain reset-position"


@dataclass(frozen=True)
class Committed:
    """What the tables of one consumer hold: its position and the streams it was counted in.

    Attributes:
        position: the largest committed position/watermark of the consumer in any of them.
        created: the stream creation times recorded next to it (normally one; none for a
            watermark written before they were recorded, or nothing committed yet).
    """

    position: int
    created: frozenset[str]


def keys(stream: str, consumer: str) -> tuple[str, str, str]:
    """(watermark, position, stream-created) property keys of a consumer."""
    suffix = f"{stream}.{consumer}"
    return (
        properties.WATERMARK_PREFIX + suffix,
        properties.POSITION_PREFIX + suffix,
        properties.STREAM_CREATED_PREFIX + suffix,
    )


def committed(tables: list[dict[str, str]], stream: str, consumer: str) -> Committed:
    """The consumer's committed position and recorded stream(s), from the tables' properties
    (its target tables and the dead letters table)."""
    wm_key, pos_key, created_key = keys(stream, consumer)
    position = 0
    created: set[str] = set()
    for props in tables:
        position = max(position, int(props.get(wm_key, 0)), int(props.get(pos_key, 0)))
        if props.get(created_key):
            created.add(props[created_key])
    return Committed(position, frozenset(created))


def mismatch(
    target: str, consumer: str, done: Committed, live: bus.StreamIdentity | None
) -> str | None:
    """Why `live` is not the stream `done` counts in (one line), or None when it is.

    A missing stream is no mismatch here (the writer cannot create its consumer and retries);
    a stream whose creation time is unknown is checked by its last sequence only.
    """
    if live is None:
        return None
    recorded = sorted(done.created)
    what = f"{target}: stream {live.name}"
    fix = (
        "nothing was read from it. Check its messages (new events, a replay, or both), then run "
        f"`{RESET_COMMAND}` to read it from its first message"
    )
    # Any table of the consumer recording another stream counts (a reset interrupted halfway
    # leaves one at the old position).
    if live.created and recorded and recorded != [live.created]:
        return (
            f"{what} was created at {live.created}, but the committed position {done.position} "
            f"of {consumer} counts in the stream created at "
            f"{', '.join(r for r in recorded if r != live.created)} (deleted and "
            f"created again, or NATS lost its storage); {fix}"
        )
    if live.last_seq < done.position:
        return (
            f"{what} ends at seq {live.last_seq}, below the committed position {done.position} "
            f"of {consumer} (deleted and created again, or NATS lost its storage); {fix}"
        )
    return None


def check(target: str, consumer: str, done: Committed, live: bus.StreamIdentity | None) -> None:
    """Raise `StreamMismatchError` when `live` is not the stream `done` counts in."""
    problem = mismatch(target, consumer, done, live)
    if problem is not None:
        raise StreamMismatchError(problem)


def consumer_tables(catalog: LakeCatalog, target: str) -> list[str]:
    """The tables a consumer's writer commits to: its targets, then the dead letters."""
    if target == bus.INFERRED_TARGET:
        ids = [
            d.identifier
            for d in catalog.registry.in_namespace("bronze")
            if d.subject and d.identifier != DEAD_LETTERS_TABLE
        ]
    else:
        ids = [target]
    return [*ids, DEAD_LETTERS_TABLE]


def recorded_position(catalog: LakeCatalog, target: str) -> int | None:
    """The position a consumer's writer recorded with the last commit of its latest flush
    (`lake.position.<stream>.<consumer>`; None: never). Every message at or below it is in the
    metadata of the writer's tables loaded after this read.
    """
    stream, consumer, _ = bus.consumer_target(target)
    _, pos_key, _ = keys(stream, consumer)
    existing = set(catalog.existing_tables())
    found = [
        int(value)
        for tid in consumer_tables(catalog, target)
        if tid in existing and (value := catalog.load_table(tid).properties.get(pos_key))
    ]
    return max(found) if found else None


@dataclass(frozen=True)
class ResetResult:
    """One consumer's reset (`reset_positions`)."""

    table: str
    stream: str
    consumer: str
    #: `reset` (position set to 0 in the new stream), `ok` (no mismatch: nothing done),
    #: `no stream` (the stream does not exist: nothing done).
    action: str
    old_position: int
    old_created: str
    new_created: str
    #: Tables whose properties changed.
    tables: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def reset_positions(catalog: LakeCatalog, targets: list[str]) -> list[ResetResult]:
    """Record the live stream for each consumer whose committed position counts in another.

    For each target (a Bronze/Gold table fed from the bus, or `inferred`) whose stream does
    not match (`mismatch`): in each table of the consumer that holds a watermark or position
    for it, set both to 0 and the stream-created property to the live stream's, in one
    transaction per table that asserts the watermark is unchanged (a writer committing at the
    same time makes it fail: run it again once the writers have stopped). Consumers without a
    mismatch are left alone: resetting them would store their messages a second time.

    The writers then read the new stream from its first message; messages its limits already
    removed are logged as removed by the writer.

    Raises:
        LakeError: NATS cannot be reached, or a commit conflicted.
    """
    return asyncio.run(_reset(catalog, targets))


async def _reset(catalog: LakeCatalog, targets: list[str]) -> list[ResetResult]:
    settings = catalog.settings
    nc = await bus.connect(settings, name="lake-reset-position")
    try:
        js = bus.jetstream(nc, settings)
        live: dict[str, bus.StreamIdentity | None] = {}
        out = []
        for target in targets:
            stream, consumer, _ = bus.consumer_target(target)
            if stream not in live:
                live[stream] = await bus.stream_identity(js, stream)
            out.append(await asyncio.to_thread(_reset_one, catalog, target, live[stream]))
        return out
    finally:
        await nc.close()


def _reset_one(catalog: LakeCatalog, target: str, live: bus.StreamIdentity | None) -> ResetResult:
    from iceberg_lake.engine.iceberg import require_properties

    stream, consumer, _ = bus.consumer_target(target)
    wm_key, pos_key, created_key = keys(stream, consumer)
    tables: dict[str, Table] = {}
    with catalog_errors(f"loading the tables of {target}"):
        for tid in consumer_tables(catalog, target):
            if tid in catalog.existing_tables():
                tables[tid] = catalog.load_table(tid)
    done = committed([dict(t.properties) for t in tables.values()], stream, consumer)
    old_created = ", ".join(sorted(done.created))
    if live is None:
        return ResetResult(target, stream, consumer, "no stream", done.position, old_created, "")
    if mismatch(target, consumer, done, live) is None:
        return ResetResult(target, stream, consumer, "ok", done.position, old_created, live.created)
    changed: list[str] = []
    for tid, table in tables.items():
        props = table.properties
        if wm_key not in props and pos_key not in props:
            continue
        updates = {wm_key: "0", created_key: live.created}
        if pos_key in props:
            updates[pos_key] = "0"
        try:
            with table.transaction() as tx:
                require_properties(tx, {wm_key: props.get(wm_key)})
                tx.set_properties(updates)
        except Exception as exc:
            raise LakeError(
                f"{tid}: resetting the position of {consumer} failed ({exc}); stop the "
                f"writers (`lake serve`) and run `{RESET_COMMAND}` again"
            ) from None
        changed.append(tid)
    log.info(
        "%s: position of %s reset from %d (stream created %s) to 0 in stream %s created %s",
        target,
        consumer,
        done.position,
        old_created or "unknown",
        stream,
        live.created,
    )
    return ResetResult(
        target,
        stream,
        consumer,
        "reset",
        done.position,
        old_created,
        live.created,
        tuple(changed),
    )
