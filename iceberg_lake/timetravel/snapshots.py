"""Snapshots and tags: list a table's history, tag the lake, resolve `as_of` pins.

An `as_of` pin names one snapshot of a table:

* an `int` (or a string of digits): a snapshot id;
* a `str`: a tag (or branch) name, else an ISO-8601 timestamp (`2025-12-16T14:30:00Z`; a naive
  time is UTC);
* a `datetime`: the snapshot that was current at that time (the table's snapshot log);
* `None`: the table's current snapshot.

A pin may be given for all tables at once or per table (`{"bronze.stocks_trades": "bt-1"}`);
tables missing from a per-table mapping read their current snapshot. Resolving gives a snapshot
id, or `None` when the table had no snapshot at that point (it reads as empty).

A tag is an Iceberg tag ref on every tagged table, so any Iceberg engine can read it, and
snapshot expiry never removes a tagged snapshot (pyiceberg keeps every ref head). A table that
was empty when the tag was made has no snapshot to point at: the tag is then recorded in the
table property `lake.empty-tag.<name>`, and resolving it gives `None` (empty).

Example::

    from iceberg_lake.timetravel import snapshots

    pins = snapshots.create_tag(settings, "bt-2025-12-16")   # {table: snapshot id | None}
    table = LakeCatalog(settings).load_table("bronze.stocks_trades")
    snapshots.resolve_as_of(table, "bt-2025-12-16")          # the tagged snapshot id
    snapshots.list_snapshots(table)                          # [{"snapshot_id": ..., ...}, ...]
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeAlias

from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.update.snapshot import ManageSnapshots

from iceberg_lake import properties as P
from iceberg_lake.catalog import CatalogSource, LakeCatalog, as_catalog, catalog_errors
from iceberg_lake.exceptions import TimeTravelError

__all__ = [
    "AsOf",
    "AsOfSpec",
    "create_tag",
    "list_snapshots",
    "list_tags",
    "parse_timestamp",
    "pin_for",
    "remove_tag",
    "resolve_as_of",
    "tagged_snapshot_ids",
]

#: One pin: snapshot id, tag name, timestamp, or None (current).
AsOf: TypeAlias = int | str | datetime | None
#: A pin for every table, or a mapping of table identifier to pin.
AsOfSpec: TypeAlias = AsOf | Mapping[str, AsOf]

_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")
_RESERVED_REFS = ("main",)
#: Summary keys shown by `list_snapshots` besides the `lake.*` ones.
_SUMMARY_KEYS = ("added-records", "deleted-records", "total-records", "added-data-files")


def _open(source: CatalogSource) -> LakeCatalog:
    return as_catalog(source)


def _table_name(table: Table) -> str:
    return ".".join(table.name()[-2:])


def parse_timestamp(text: str | datetime | date) -> datetime | None:
    """Parse an ISO-8601 time (naive means UTC); None if `text` is not a timestamp.

    Args:
        text: `2025-12-16`, `2025-12-16T14:30`, `2025-12-16 14:30:00+00:00`, `...Z`, or a
            datetime/date.

    Returns:
        An aware UTC datetime, or None.
    """
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime(text.year, text.month, text.day)
    else:
        raw = text.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}", raw):
            return None
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def pin_for(as_of: AsOfSpec, identifier: str) -> AsOf:
    """The pin that applies to table `identifier` (per-table mappings default to current)."""
    if isinstance(as_of, Mapping):
        return as_of.get(identifier)
    return as_of


def resolve_as_of(table: Table, as_of: AsOf) -> int | None:
    """Resolve a pin to a snapshot id of `table`.

    Args:
        table: the loaded table.
        as_of: snapshot id, tag/branch name, timestamp (datetime or ISO string), or None for
            the current snapshot.

    Returns:
        The snapshot id, or None when the table had no snapshot at that point (read it empty).

    Raises:
        TimeTravelError: no such snapshot or tag, or the snapshot at that time was expired.
    """
    name = _table_name(table)
    if as_of is None:
        current = table.current_snapshot()
        return current.snapshot_id if current else None
    if isinstance(as_of, bool):
        raise TimeTravelError(f"as_of must be a snapshot id, tag or timestamp, got {as_of!r}")
    if isinstance(as_of, int):
        return _existing_snapshot(table, as_of, name)
    if isinstance(as_of, datetime):
        return _snapshot_at(table, as_of, name)
    if not isinstance(as_of, str) or not as_of.strip():
        raise TimeTravelError(f"as_of must be a snapshot id, tag or timestamp, got {as_of!r}")
    text = as_of.strip()
    ref = table.metadata.refs.get(text)
    if ref is not None:
        return ref.snapshot_id
    if P.EMPTY_TAG_PREFIX + text in table.metadata.properties:
        return None
    if text.isdigit():
        return _existing_snapshot(table, int(text), name)
    when = parse_timestamp(text)
    if when is not None:
        return _snapshot_at(table, when, name)
    tags = ", ".join(sorted(list_tags(table))) or "none"
    raise TimeTravelError(f"{name} has no tag or snapshot '{text}' (tags: {tags})")


def _existing_snapshot(table: Table, snapshot_id: int, name: str) -> int:
    if table.snapshot_by_id(snapshot_id) is None:
        raise TimeTravelError(f"{name} has no snapshot {snapshot_id} (expired or never existed)")
    return snapshot_id


def _snapshot_at(table: Table, when: datetime, name: str) -> int | None:
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    ms = int(aware.timestamp() * 1000)
    log = table.history()
    for entry in reversed(log):
        if entry.timestamp_ms <= ms:
            if table.snapshot_by_id(entry.snapshot_id) is None:
                raise TimeTravelError(
                    f"{name}: the snapshot current at {aware.isoformat()} "
                    f"({entry.snapshot_id}) has been expired"
                )
            return entry.snapshot_id
    # Before the first logged snapshot. If older snapshots exist whose log entries were
    # dropped, we cannot tell which one was current: refuse rather than guess "empty".
    oldest = min((s.timestamp_ms for s in table.snapshots()), default=None)
    if oldest is not None and oldest <= ms:
        raise TimeTravelError(f"{name}: no snapshot log entry covers {aware.isoformat()}")
    return None


def list_tags(table: Table) -> dict[str, int | None]:
    """Tags of `table`: name → snapshot id (None for a tag made while the table was empty)."""
    tags: dict[str, int | None] = {
        name: ref.snapshot_id
        for name, ref in table.metadata.refs.items()
        if ref.snapshot_ref_type == SnapshotRefType.TAG
    }
    for key in table.metadata.properties:
        if key.startswith(P.EMPTY_TAG_PREFIX):
            tags.setdefault(key[len(P.EMPTY_TAG_PREFIX) :], None)
    return dict(sorted(tags.items()))


def tagged_snapshot_ids(table: Table) -> set[int]:
    """Snapshot ids some tag or branch points at (maintenance must never expire these)."""
    return {ref.snapshot_id for ref in table.metadata.refs.values()}


def list_snapshots(table: Table) -> list[dict[str, Any]]:
    """The snapshots of `table`, oldest first.

    Returns:
        One dict per snapshot: `snapshot_id`, `parent_id`, `timestamp_ms`, `time` (ISO UTC),
        `operation`, `added_records`, `total_records`, `current` (bool), `tags` (names pointing
        at it) and `properties` (the `lake.*` summary properties such as the stream watermark
        or the Silver source snapshot).
    """
    by_snapshot: dict[int, list[str]] = {}
    for name, ref in table.metadata.refs.items():
        if ref.snapshot_ref_type == SnapshotRefType.TAG:
            by_snapshot.setdefault(ref.snapshot_id, []).append(name)
    current = table.current_snapshot()
    rows: list[dict[str, Any]] = []
    for snap in sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number or 0)):
        summary = snap.summary.additional_properties if snap.summary else {}
        operation = snap.summary.operation.value if snap.summary else None
        rows.append(
            {
                "snapshot_id": snap.snapshot_id,
                "parent_id": snap.parent_snapshot_id,
                "timestamp_ms": snap.timestamp_ms,
                "time": datetime.fromtimestamp(snap.timestamp_ms / 1000, tz=UTC).isoformat(),
                "operation": operation,
                "added_records": _int(summary.get("added-records")),
                "total_records": _int(summary.get("total-records")),
                "current": current is not None and snap.snapshot_id == current.snapshot_id,
                "tags": sorted(by_snapshot.get(snap.snapshot_id, [])),
                "properties": {k: v for k, v in summary.items() if k.startswith("lake.")},
            }
        )
    return rows


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _check_tag_name(name: str) -> None:
    if not _TAG_NAME.match(name) or name.isdigit() or name in _RESERVED_REFS:
        raise TimeTravelError(
            f"invalid tag name {name!r}: use letters, digits and . _ : @ + -, "
            "not only digits, not 'main'"
        )
    if parse_timestamp(name) is not None:
        raise TimeTravelError(f"invalid tag name {name!r}: it reads as a timestamp")


def create_tag(
    source: CatalogSource,
    name: str,
    tables: Iterable[str] | None = None,
    *,
    replace: bool = False,
) -> dict[str, int | None]:
    """Tag the current snapshot of each table as `name`.

    Not idempotent by design: a tag is what a backtest cites, so an existing tag is never moved
    unless `replace` is set. All tables are checked before any is tagged. Makes no snapshot
    (a ref update; an empty table gets a property update instead). Tables are tagged one after
    the other, not atomically across tables: pause writers for a cross-table cut.

    Args:
        source: settings or an open catalog.
        name: tag name (not only digits, not a timestamp, not `main`).
        tables: table identifiers (default: every table in the catalog).
        replace: move an existing tag of that name.

    Returns:
        Table identifier → tagged snapshot id (None: the table was empty).

    Raises:
        TimeTravelError: bad name, or the tag exists and `replace` is not set.
        UnknownTableError: a table does not exist.
    """
    _check_tag_name(name)
    catalog = _open(source)
    identifiers = list(tables) if tables is not None else catalog.existing_tables()
    loaded = {ident: catalog.load_table(ident) for ident in identifiers}
    if not replace:
        taken = [i for i, t in loaded.items() if name in list_tags(t)]
        if taken:
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            raise TimeTravelError(
                f"tag '{name}' already exists on {', '.join(taken[:3])}{more} "
                "(use --replace to move it)"
            )
    result: dict[str, int | None] = {}
    for ident, table in loaded.items():
        with catalog_errors(f"tagging {ident}"):
            result[ident] = _tag_one(table, name)
    return result


def _tag_one(table: Table, name: str) -> int | None:
    current = table.current_snapshot()
    empty_key = P.EMPTY_TAG_PREFIX + name
    if current is None:
        with table.transaction() as tx:
            if name in table.metadata.refs:
                ManageSnapshots(tx).remove_tag(name).commit()
            tx.set_properties({empty_key: str(int(time.time() * 1000))})
        return None
    with table.transaction() as tx:
        ms = ManageSnapshots(tx)
        if name in table.metadata.refs:
            ms = ms.remove_tag(name)
        ms.create_tag(current.snapshot_id, name).commit()
        if empty_key in table.metadata.properties:
            tx.remove_properties(empty_key)
    return current.snapshot_id


def remove_tag(source: CatalogSource, name: str, tables: Iterable[str] | None = None) -> list[str]:
    """Remove tag `name` from the tables that have it (default: every table).

    Idempotent; makes no snapshot. After removal, maintenance may expire the snapshot.

    Returns:
        Identifiers of the tables the tag was removed from.
    """
    catalog = _open(source)
    identifiers = list(tables) if tables is not None else catalog.existing_tables()
    removed: list[str] = []
    for ident in identifiers:
        table = catalog.load_table(ident)
        empty_key = P.EMPTY_TAG_PREFIX + name
        has_ref = name in table.metadata.refs
        if not has_ref and empty_key not in table.metadata.properties:
            continue
        with catalog_errors(f"untagging {ident}"), table.transaction() as tx:
            if has_ref:
                ManageSnapshots(tx).remove_tag(name).commit()
            if empty_key in table.metadata.properties:
                tx.remove_properties(empty_key)
        removed.append(ident)
    return removed
