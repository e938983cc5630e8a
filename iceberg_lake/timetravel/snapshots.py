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

import bisect
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeAlias

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.update.snapshot import ManageSnapshots

from iceberg_lake import properties as P
from iceberg_lake.catalog import CatalogSource, LakeCatalog, as_catalog, catalog_errors
from iceberg_lake.engine.iceberg import require_snapshots  # (also installs the commit fixes)
from iceberg_lake.exceptions import CommitConflictError, TimeTravelError

__all__ = [
    "CHECKPOINT_PREFIX",
    "REPLAY_PIN_PREFIX",
    "SILVER_SOURCE_PREFIX",
    "AsOf",
    "RecordedSnapshotId",
    "checkpoints_due",
    "contiguous_since",
    "list_refs",
    "maintain_refs",
    "pin_snapshots",
    "protect_silver_source",
    "silver_source_tag",
    "silver_sources_to_untag",
    "replay_pin_name",
    "AsOfSpec",
    "create_tag",
    "is_lake_ref",
    "list_snapshots",
    "list_tags",
    "parse_timestamp",
    "parse_timestamp_ns",
    "check_unix_ns",
    "check_pinned_tables",
    "pin_for",
    "remove_tag",
    "resolve_as_of",
    "tagged_snapshot_ids",
]

#: One pin: snapshot id, tag name, timestamp, or None (current).
AsOf: TypeAlias = int | str | datetime | None
#: A pin for every table, or a mapping of table identifier to pin.
AsOfSpec: TypeAlias = AsOf | Mapping[str, AsOf]

#: Tags the lake makes itself (docs/time-travel.md, "Retention"):
#: `checkpoint-<table>-YYYYMMDDTHH`: the snapshot current at the end of that closed UTC hour.
CHECKPOINT_PREFIX = "checkpoint-"
#: `replay-<16 hex>`: a snapshot a replay read (named from the replay manifest's pins and window).
REPLAY_PIN_PREFIX = "replay-"
#: `silver-source-<snapshot id>`: a Bronze snapshot a Silver partition names as its source.
SILVER_SOURCE_PREFIX = "silver-source-"
_LAKE_TAG_PREFIXES = (CHECKPOINT_PREFIX, REPLAY_PIN_PREFIX, SILVER_SOURCE_PREFIX)
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
#: `--as-of` a time at most this long ago is refused: a commit stamped before it may still land.
SETTLE_MS = 5_000

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
        if re.match(r"^[+-]\d{2}(:?\d{2}){0,2}(\.\d+)?$", raw[10:]):
            # Python's fromisoformat takes any character between the date and a time, so
            # `2024-03-11+05:30` read as 05:30 UTC (desk14): a date with an offset is refused.
            raise TimeTravelError(
                f"{text!r}: a date with a UTC offset needs a time, e.g. {raw[:10]}T00:00{raw[10:]}"
            )
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


#: The fraction of seconds of an ISO time (`14:00:00.000000999`): Python's `fromisoformat`
#: keeps six digits and drops the rest without a word.
_FRACTION = re.compile(r"(?<=\d\d:\d\d:\d\d)[.,](\d+)")


def parse_timestamp_ns(text: str) -> int | None:
    """An ISO-8601 time as exact Unix nanoseconds (naive means UTC); None if not a timestamp.

    Like `parse_timestamp`, but every fractional digit up to nanoseconds counts
    (`2025-03-07T14:00:00.000000999Z` is 999 ns after the second, not 0).

    Raises:
        TimeTravelError: more than nine fractional digits (finer than the lake's nanoseconds).
    """
    raw = text.strip()
    extra_ns = 0
    match = _FRACTION.search(raw)
    if match is not None:
        digits = match.group(1)
        if len(digits) > 9:
            raise TimeTravelError(f"{text!r} has more than nine fractional digits (nanoseconds)")
        extra_ns = int(digits[6:].ljust(3, "0")) if len(digits) > 6 else 0
        raw = raw[: match.start(1)] + digits[:6] + raw[match.end(1) :]
    when = parse_timestamp(raw)
    if when is None:
        return None
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    seconds = delta.days * 86_400 + delta.seconds
    return seconds * 1_000_000_000 + delta.microseconds * 1_000 + extra_ns


#: Unix nanoseconds below this (1973-03-03) but at least one second are taken for seconds,
#: milliseconds or microseconds given by mistake: no market data has such times, and read as
#: nanoseconds they would select nothing, silently. Smaller values (0, 1, 2) stay nanoseconds.
MIN_UNIX_NS = 10**17
_UNITS = (
    (10**11, "seconds", 10**9),
    (10**14, "milliseconds", 10**6),
    (10**17, "microseconds", 10**3),
)


def check_unix_ns(value: int) -> int:
    """`value` if it is plausible as Unix nanoseconds.

    Raises:
        TimeTravelError: `value` looks like Unix seconds, milliseconds or microseconds
            (10**9 <= |value| < 10**17; the message gives the value in nanoseconds and as an
            ISO time), or like a date written without dashes (`20240311`, which as nanoseconds
            selected nothing, silently). Other small values stay nanoseconds.
    """
    if 0 < value < 10**9:
        try:
            day = datetime.strptime(str(value), "%Y%m%d") if 19000101 <= value <= 29991231 else None
        except ValueError:
            day = None
        if day is not None:
            raise TimeTravelError(
                f"{value} looks like a date: give {day:%Y-%m-%d} (read as Unix nanoseconds it "
                "is in the first second of 1970)"
            )
    if not 10**9 <= abs(value) < MIN_UNIX_NS:
        return value
    unit, factor = next((u, f) for bound, u, f in _UNITS if abs(value) < bound)
    ns = value * factor
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1_000)
    raise TimeTravelError(
        f"{value} looks like Unix {unit}; give nanoseconds ({ns}) or an ISO time "
        f"({when:%Y-%m-%dT%H:%M:%S}Z)"
    )


def check_pinned_tables(as_of: AsOfSpec, tables: Sequence[str]) -> None:
    """Refuse a per-table pin for a table the read does not include.

    Such a pin pins nothing: the table it was meant for (misspelt, another layer, another case)
    would be read at its current snapshot, data committed after the pin included.

    Raises:
        TimeTravelError: a mapping key is not one of `tables`.
    """
    if not isinstance(as_of, Mapping):
        return
    stray = [name for name in as_of if name not in tables]
    if stray:
        raise TimeTravelError(
            f"a pin names {', '.join(map(str, stray))}, which this read does not include "
            f"(it reads {', '.join(tables)}): the table meant would be read unpinned"
        )


def pin_for(as_of: AsOfSpec, identifier: str) -> AsOf:
    """The pin that applies to table `identifier` (per-table mappings default to current)."""
    if isinstance(as_of, Mapping):
        return as_of.get(identifier)
    return as_of


#: A pin that starts like an ISO date (`2025-13-45…`) is meant as a time.
_LOOKS_LIKE_A_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}")


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
    if _LOOKS_LIKE_A_DATE.match(text):
        # `2025-13-45`: a mistyped time, not a tag nobody made (the message said "no tag").
        raise TimeTravelError(
            f"'{text}' is not a valid time (use an ISO date or time, e.g. 2025-12-16T14:30Z); "
            f"{name} has no tag of that name either"
        )
    user = [t for t in list_tags(table) if not t.startswith(_LAKE_TAG_PREFIXES)]
    tags = ", ".join(user[:10]) + (f" and {len(user) - 10} more" if len(user) > 10 else "")
    lake_refs = len(list_tags(table)) - len(user)
    more = f"; {lake_refs} lake refs, see lake snapshot list {name}" if lake_refs else ""
    raise TimeTravelError(f"{name} has no tag or snapshot '{text}' (tags: {tags or 'none'}{more})")


class RecordedSnapshotId(int):
    """A snapshot id read from a record (a replay manifest), never a time a user typed."""


def _existing_snapshot(table: Table, snapshot_id: int, name: str) -> int:
    if table.snapshot_by_id(snapshot_id) is None:
        if isinstance(snapshot_id, RecordedSnapshotId):
            raise TimeTravelError(
                f"{name} has no snapshot {snapshot_id} (expired: the replay's pin tag no longer "
                f"kept it, see lake snapshot list {name})"
            )
        hint = ""
        if 10**18 <= snapshot_id < 41 * 10**17:  # 2001..2100 as Unix nanoseconds
            when = datetime.fromtimestamp(snapshot_id // 10**9, UTC)
            hint = f"; if {snapshot_id} is a time, give it as ISO ({when:%Y-%m-%dT%H:%M:%S}Z)"
        raise TimeTravelError(
            f"{name} has no snapshot {snapshot_id} (expired or never existed){hint}"
        )
    return int(snapshot_id)


class _MainLog:
    """The table's snapshot log (main's history) with what tells whether a stretch of it is
    whole: no snapshot that was current on main between two kept entries was expired."""

    def __init__(self, table: Table) -> None:
        snaps = table.metadata.snapshots
        self.by_id = {s.snapshot_id: s for s in snaps}
        self.seq = {s.snapshot_id: s.sequence_number for s in snaps}
        self.log = [e for e in table.history() if e.snapshot_id in self.by_id]
        self._last_seq = int(getattr(table.metadata, "last_sequence_number", 0) or 0)
        self._present = sorted(s.sequence_number for s in snaps if s.sequence_number is not None)
        # Snapshots by creation time, with the smallest sequence number created at or after each.
        made = sorted((s.timestamp_ms, s.sequence_number or 0) for s in snaps)
        self._made_ms = [t for t, _ in made]
        self._min_seq_from: list[int] = []
        low = self._last_seq + 1
        for _, q in reversed(made):
            low = min(low, q)
            self._min_seq_from.append(low)
        self._min_seq_from.reverse()

    def follows(self, prev: Any, nxt: Any) -> bool:
        """True when `prev` stayed current on main until `nxt`'s entry (nothing expired between).

        For `nxt` a commit (its entry is its snapshot's creation): committed on top of `prev` (a
        commit on another branch in between takes a sequence number and changes nothing:
        timetravel14). For a ref move (a rollback, a publish, a cherry-pick fast-forward: `nxt`
        existed before its entry): no sequence number assigned up to the move is missing, the
        bound being the last number assigned before the first snapshot created after the move
        (an expired snapshot, newer or older than `prev`, leaves a gap: review14c, review14d).
        Any expired snapshot before a move makes the answer a cautious no.
        """
        a, b = self.seq.get(prev.snapshot_id), self.seq.get(nxt.snapshot_id)
        if a is None or b is None:
            return True  # format v1: no sequence numbers, as before
        snap = self.by_id[nxt.snapshot_id]
        if snap.timestamp_ms == nxt.timestamp_ms:
            # A commit follows only what it was committed on (review14d: "the next sequence
            # number" also fit a commit on a rolled-back-to snapshot that was then expired).
            return snap.parent_snapshot_id == prev.snapshot_id
        # A ref move may go to an older snapshot, whose expiry leaves no gap above `prev`:
        # every sequence number assigned up to the move must still exist (review14d).
        after = bisect.bisect_right(self._made_ms, nxt.timestamp_ms)
        upto = (self._min_seq_from[after] if after < len(self._made_ms) else self._last_seq + 1) - 1
        return bisect.bisect_right(self._present, upto) == upto


def _snapshot_at(table: Table, when: datetime, name: str) -> int | None:
    """The snapshot current at `when`, exactly, or a one-line error naming the nearest pins.

    The snapshot log loses the entries of expired snapshots, so "the last logged snapshot at or
    before `when`" may be a checkpoint hours older than the snapshot that really was current.
    It is the answer only when nothing was committed between it and `when`: its successor in the
    log has the next sequence number (no snapshot in between was expired), or it is the current
    snapshot, or it is a checkpoint whose hour ends after `when` (a checkpoint is the snapshot
    current at the end of its hour).
    """
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    ms = int(aware.timestamp() * 1000)
    now_ms = int(time.time() * 1000)
    if ms > now_ms - SETTLE_MS:
        # The state at a later time is not known yet: the current snapshot would be a moving
        # answer, different on every run (timetravel14: a mistyped year read whatever was
        # current, exit 0); nor is it for the last seconds, when a commit stamped before them
        # may still land (a snapshot's time is taken before its files and catalog commit).
        raise TimeTravelError(
            f"{name}: --as-of {aware.isoformat()} is not settled yet (now {_fmt_ms(now_ms)}; "
            f"the last {SETTLE_MS // 1000} s are not): read the current snapshot (no --as-of) "
            "or a tag"
        )
    main = _MainLog(table)
    log, seq = main.log, main.seq
    for earlier, later in zip(log, log[1:], strict=False):
        skew = earlier.timestamp_ms - later.timestamp_ms
        # The later entry may have landed up to the skew after the earlier one's stamp too.
        if skew > 0 and later.timestamp_ms <= ms <= earlier.timestamp_ms + skew:
            # The log goes back in time here (a writer's clock behind another's; pyiceberg
            # accepts it): which snapshot was current at T cannot be told (review14d).
            raise TimeTravelError(
                f"{name}: cannot tell which snapshot was current at {aware.isoformat()}: the "
                f"snapshot log goes back from {_fmt_ms(earlier.timestamp_ms)} to "
                f"{_fmt_ms(later.timestamp_ms)} there (writers' clocks differ); pin a snapshot "
                "id or a tag"
            )
    idx = next((i for i in range(len(log) - 1, -1, -1) if log[i].timestamp_ms <= ms), None)
    if idx is None:
        first = log[0] if log else None
        if first is None:
            return None
        snap = main.by_id[first.snapshot_id]
        summary = snap.summary.additional_properties if snap.summary else {}
        if (
            seq.get(first.snapshot_id) == 1
            and table.metadata.format_version >= 2
            and snap.parent_snapshot_id is None
            and snap.timestamp_ms == first.timestamp_ms
            and summary.get("total-records") == summary.get("added-records")
            and ms < snap.timestamp_ms
        ):
            # Before the table's first snapshot: empty. Only a v2 table's first commit (sequence
            # number 1, nothing before its rows) is known to be one: a v1 table's are all 0, and
            # an expiry blanks the parent of the snapshot after the one it removes (review14e).
            return None
        raise TimeTravelError(_expired_message(table, name, aware, ms))
    entry = log[idx]
    nxt = log[idx + 1] if idx + 1 < len(log) else None
    current = table.current_snapshot()
    if nxt is None and current is not None and current.snapshot_id == entry.snapshot_id:
        return entry.snapshot_id
    if nxt is not None and main.follows(entry, nxt):
        return entry.snapshot_id
    # A checkpoint of the entry's snapshot whose hour ends after T vouches for T, unless the
    # next kept entry comes before that hour's end: the checkpoint may then be of a later
    # stint of the same snapshot (a rollback to it), with an expired commit in between.
    if any(
        ms < end_ms and (nxt is None or nxt.timestamp_ms >= end_ms)
        for end_ms in _checkpoint_ends(table, entry.snapshot_id)
    ):
        return entry.snapshot_id
    raise TimeTravelError(_expired_message(table, name, aware, ms, entry.timestamp_ms))


def _checkpoint_ends(table: Table, snapshot_id: int) -> list[int]:
    """End (epoch ms) of each checkpoint hour whose tag points at `snapshot_id`: only tags as
    the lake makes them (this table's name, a max-ref-age), not a user's tag named like one
    (review14e)."""
    out = []
    identifier = _table_name(table)
    for ref_name, ref in table.metadata.refs.items():
        if ref.snapshot_id != snapshot_id or ref.max_ref_age_ms is None:
            continue
        hour = _checkpoint_hour(ref_name)
        if hour is not None:
            start = int(hour.timestamp() * 1000)
            if ref_name == checkpoint_tag(identifier, start):
                out.append(start + _HOUR_MS)
    return out


def _expired_message(
    table: Table, name: str, when: datetime, ms: int, kept_before_ms: int | None = None
) -> str:
    """One line: the state at `when` is gone; the nearest retained pins before and after it.

    `kept_before_ms`: the last snapshot kept before `when` was committed then, but a commit
    after it was expired, and it may have come before `when`: the snapshot itself still reads
    (by a pin naming it), only the claim that it was current at `when` cannot be made.
    """
    pins = []
    for ref_name, ref in table.metadata.refs.items():
        snap = table.snapshot_by_id(ref.snapshot_id)
        if snap is None or ref.snapshot_ref_type != SnapshotRefType.TAG:
            continue  # main, and other branches' heads: never main's state (timetravel14)
        hour = _checkpoint_hour(ref_name)
        at = int(hour.timestamp() * 1000) + _HOUR_MS if hour is not None else snap.timestamp_ms
        pins.append((at, ref_name))
    window_start = contiguous_since(table)
    before = max((p for p in pins if p[0] <= ms), default=None)
    after = min((p for p in pins if p[0] > ms), default=None)

    def state(pin: tuple[int, str]) -> str:
        # A checkpoint is the state up to its hour's end, exclusive (a commit stamped on the
        # hour belongs to the next one); another tag, the state at its commit.
        word = "before" if pin[1].startswith(CHECKPOINT_PREFIX) else "at"
        return f"{pin[1]} (state {word} {_fmt_ms(pin[0])})"

    parts = []
    if before is not None:
        parts.append(state(before))
    if after is not None:
        label = "oldest pin " if before is None else ""
        parts.append(f"{label}{state(after)}")
    kept = f"; every snapshot kept since {_fmt_ms(window_start)}" if window_start else ""
    nearest = "; nearest retained pins: " + ", ".join(parts) if parts else "; no pins retained"
    if kept_before_ms is not None:
        return (
            f"{name}: cannot tell which snapshot was current at {when.isoformat()}: the last "
            f"one kept before it is from {_fmt_ms(kept_before_ms)}, and a commit after that "
            f"was expired (it may have come before {when.isoformat()}){kept}{nearest}"
        )
    return f"{name}: the snapshot current at {when.isoformat()} has been expired{kept}{nearest}"


def contiguous_since(table: Table) -> int | None:
    """Epoch ms from which every snapshot of the table is still kept (the retention window)."""
    main = _MainLog(table)
    log = main.log
    if not log:
        return None
    start = log[-1].timestamp_ms
    for prev, nxt in zip(reversed(log[:-1]), reversed(log[1:]), strict=True):
        if not main.follows(prev, nxt):
            break
        start = prev.timestamp_ms
    return start


def _fmt_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_lake_ref(name: str) -> bool:
    """True for the tags the lake makes itself (checkpoints, replay pins, Silver sources)."""
    return name.startswith(_LAKE_TAG_PREFIXES)


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
    if is_lake_ref(name):
        # The lake's own refs mean something (a checkpoint vouches for its hour): review14e.
        raise TimeTravelError(
            f"invalid tag name {name!r}: names starting with {', '.join(_LAKE_TAG_PREFIXES)} "
            "are the lake's own refs"
        )


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

    A concurrent commit to a table (an append, or an expiry that removed the snapshot just
    read) is retried on refreshed metadata, so the tag lands on the snapshot current at commit.

    Raises:
        TimeTravelError: bad name, or the tag exists and `replace` is not set.
        UnknownTableError: a table does not exist.
        CommitConflictError: concurrent commits to a table won every attempt.
    """
    _check_tag_name(name)
    catalog = _open(source)
    identifiers = list(tables) if tables is not None else catalog.existing_tables()
    loaded = {ident: catalog.load_table(ident) for ident in identifiers}
    _refuse_branches(loaded, name)
    if not replace:
        taken = [i for i, t in loaded.items() if name in list_tags(t)]
        if taken:
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            # A run stopped half-way (an outage) leaves some tables tagged: name the rest.
            rest = [i for i in identifiers if i not in taken]
            finish = f"; not on {','.join(rest)} (tag those with --tables)" if rest else ""
            raise TimeTravelError(
                f"tag '{name}' already exists on {', '.join(taken[:3])}{more} "
                f"(use --replace to move it){finish}"
            )
    result: dict[str, int | None] = {}
    for ident, table in loaded.items():
        with catalog_errors(f"tagging {ident}"):
            result[ident] = _tag_one(table, ident, name, replace)
    return result


_TAG_ATTEMPTS = 5


def _tag_one(table: Table, ident: str, name: str, replace: bool) -> int | None:
    """Tag the current snapshot of `table`, retried on refreshed metadata after a conflict.

    The commit requires the snapshot to still exist (`require_snapshots`): an expiry that
    removed it since the read fails the commit instead of pyiceberg's bare `ValueError`, and the
    retry tags the snapshot that is current then.
    """
    empty_key = P.EMPTY_TAG_PREFIX + name
    had = name in table.metadata.refs or empty_key in table.metadata.properties
    for attempt in range(_TAG_ATTEMPTS):
        if attempt:
            time.sleep(0.02 * 2**attempt)
            table.refresh()
            if not replace and not had and name in table.metadata.refs:
                raise TimeTravelError(
                    f"tag '{name}' was created on {ident} meanwhile (use --replace to move it)"
                )
        current = table.current_snapshot()
        try:
            if current is None:
                with table.transaction() as tx:
                    if name in table.metadata.refs:
                        ManageSnapshots(tx).remove_tag(name).commit()
                    tx.set_properties({empty_key: str(int(time.time() * 1000))})
                return None
            with table.transaction() as tx:
                require_snapshots(tx, [current.snapshot_id])
                ms = ManageSnapshots(tx)
                if name in table.metadata.refs:
                    ms = ms.remove_tag(name)
                ms.create_tag(current.snapshot_id, name).commit()
                if empty_key in table.metadata.properties:
                    tx.remove_properties(empty_key)
            return current.snapshot_id
        except CommitFailedException as exc:
            last = _first_line(exc)
    raise CommitConflictError(
        f"tagging {ident}: concurrent commits won {_TAG_ATTEMPTS} attempts ({last}); "
        "nothing was tagged there, run it again"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refuse_branches(tables: dict[str, Table], name: str) -> None:
    """Raise `TimeTravelError` when `name` is a branch (`main`, a user's) of one of `tables`:
    tag commands never touch branches."""
    branches = [
        ident
        for ident, table in tables.items()
        if (ref := table.metadata.refs.get(name)) is not None
        and ref.snapshot_ref_type == SnapshotRefType.BRANCH
    ]
    if branches:
        more = f" and {len(branches) - 1} more tables" if len(branches) > 1 else ""
        raise TimeTravelError(
            f"'{name}' is a branch of {branches[0]}{more}, not a tag: the snapshot tag commands "
            "leave branches alone"
        )


def remove_tag(source: CatalogSource, name: str, tables: Iterable[str] | None = None) -> list[str]:
    """Remove tag `name` from the tables that have it (default: every table).

    Idempotent; makes no snapshot. After removal, maintenance may expire the snapshot.

    Returns:
        Identifiers of the tables the tag was removed from.
    """
    catalog = _open(source)
    identifiers = list(tables) if tables is not None else catalog.existing_tables()
    loaded = {ident: catalog.load_table(ident) for ident in identifiers}
    # Before any is changed: pyiceberg's `remove_tag` removes any ref of the name (docs19:
    # `lake snapshot untag main` removed the main branch of every table, exit 0: every table
    # read empty and the next commit started a new history from nothing).
    _refuse_branches(loaded, name)
    removed: list[str] = []
    for ident, table in loaded.items():
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


# ---- refs the lake keeps: checkpoints, replay pins, Silver sources ------------------------------


def checkpoint_tag(identifier: str, hour_start_ms: int) -> str:
    """`checkpoint-<table>-YYYYMMDDTHH` for the UTC hour starting at `hour_start_ms`."""
    hour = datetime.fromtimestamp(hour_start_ms / 1000, tz=UTC)
    return f"{CHECKPOINT_PREFIX}{identifier}-{hour:%Y%m%dT%H}"


def _checkpoint_hour(ref_name: str) -> datetime | None:
    if not ref_name.startswith(CHECKPOINT_PREFIX):
        return None
    suffix = ref_name.rsplit("-", 1)[-1]
    try:
        return datetime.strptime(suffix, "%Y%m%dT%H").replace(tzinfo=UTC)
    except ValueError:
        return None


def ref_expires_ms(table: Table, ref_name: str) -> int | None:
    """When a ref's max-ref-age runs out (epoch ms; None: never).

    Iceberg measures a ref's age from its snapshot's commit time (what Spark's and Trino's
    expiry use to drop refs).
    """
    ref = table.metadata.refs.get(ref_name)
    if ref is None or ref.max_ref_age_ms is None:
        return None
    snap = table.snapshot_by_id(ref.snapshot_id)
    return None if snap is None else snap.timestamp_ms + ref.max_ref_age_ms


def list_refs(table: Table) -> list[dict[str, Any]]:
    """Every ref of `table`: ref, kind, snapshot_id, expires (ISO time or None: never)."""
    rows = []
    for name, ref in sorted(table.metadata.refs.items()):
        expires = ref_expires_ms(table, name)
        if name.startswith(CHECKPOINT_PREFIX):
            kind = "checkpoint"
        elif name.startswith(REPLAY_PIN_PREFIX):
            kind = "replay pin"
        elif name.startswith(SILVER_SOURCE_PREFIX):
            kind = "silver source"
        else:
            kind = ref.snapshot_ref_type.value
        rows.append(
            {
                "ref": name,
                "kind": kind,
                "snapshot_id": ref.snapshot_id,
                "expires": _fmt_ms(expires) if expires is not None else None,
            }
        )
    return rows


def checkpoints_due(
    table: Table, identifier: str, max_age_ms: int, now_ms: int, retag: bool = False
) -> dict[str, tuple[int, int]]:
    """Checkpoint tags `maintain_refs` would create now (also for dry runs).

    The checkpoint of a closed hour is the snapshot current at its end: the last one committed in
    it, or for an hour without commits the one before (timetravel14: quiet nights and weekends
    had none, so their unchanged state could not be pinned by time once the window passed). A
    tag is made only when that is certain (the snapshot stayed current until its successor on
    main, `_MainLog.follows`, or is still current). Hours closed longer ago than `max_age_ms`
    are left out. With `retag` (`lake maintain`, never the writers' in-line policy: thousands of
    tags are one long commit), an existing checkpoint tag whose max-ref-age is not what
    `max_age_ms` gives now is made again on its snapshot (the setting was changed).

    Args:
        table: the table whose history is read.
        identifier: its identifier (part of the tag name, see `checkpoint_tag`).
        max_age_ms: how long a checkpoint tag is kept after its hour closes.
        now_ms: the current time, epoch milliseconds.

    Returns:
        Tag name -> (snapshot id, the tag's max-ref-age in ms).
    """
    main = _MainLog(table)
    log = main.log
    current = table.current_snapshot()
    refs = table.metadata.refs
    due: dict[str, tuple[int, int]] = {}
    for i, entry in enumerate(log):
        nxt = log[i + 1] if i + 1 < len(log) else None
        if nxt is None:
            certain = current is not None and current.snapshot_id == entry.snapshot_id
            until = now_ms  # still current: every hour closed since is its
        else:
            certain = main.follows(entry, nxt)
            until = nxt.timestamp_ms
        if not certain:
            continue
        committed = main.by_id[entry.snapshot_id].timestamp_ms
        hour_start = entry.timestamp_ms - entry.timestamp_ms % _HOUR_MS
        # Every hour from the entry's own that closed before the next entry (and by now).
        first = max(hour_start, (now_ms - max_age_ms) - (now_ms - max_age_ms) % _HOUR_MS)
        for start in range(first, min(until, now_ms) - _HOUR_MS + 1, _HOUR_MS):
            hour_end = start + _HOUR_MS
            if hour_end + max_age_ms <= now_ms:
                continue
            name = checkpoint_tag(identifier, start)
            age = hour_end + max_age_ms - committed
            ref = refs.get(name)
            if ref is None:
                due[name] = (entry.snapshot_id, age)
            elif retag:
                # The setting changed: the same snapshot, the age it gives now (timetravel14).
                wanted = hour_end + max_age_ms - _commit_ms(table, ref.snapshot_id)
                if ref.max_ref_age_ms != wanted:
                    due[name] = (ref.snapshot_id, wanted)
    return due


def tags_to_drop(
    table: Table, identifier: str, max_age_ms: int, now_ms: int, retag: bool = False
) -> list[str]:
    """Tags `maintain_refs` drops now (also for dry runs): those whose max-ref-age ran out (as
    Spark's and Trino's expiry do; pyiceberg's doesn't), and with `retag` the checkpoints of
    hours a lowered `max_age_ms` leaves out."""
    prefix = f"{CHECKPOINT_PREFIX}{identifier}-"
    drop = []
    for name, ref in table.metadata.refs.items():
        if ref.snapshot_ref_type != SnapshotRefType.TAG:
            continue
        expires = ref_expires_ms(table, name)
        hour = _checkpoint_hour(name) if retag and name.startswith(prefix) else None
        if (expires is not None and expires < now_ms) or (
            hour is not None and int(hour.timestamp() * 1000) + _HOUR_MS + max_age_ms <= now_ms
        ):
            drop.append(name)
    return drop


def _commit_ms(table: Table, snapshot_id: int) -> int:
    snap = table.snapshot_by_id(snapshot_id)
    return snap.timestamp_ms if snap is not None else 0


def maintain_refs(
    table: Table,
    identifier: str,
    *,
    checkpoint_max_age_ms: int,
    silver_sources: set[int] | None = None,
    now_ms: int | None = None,
    retag: bool = False,
) -> dict[str, int]:
    """Bring the lake's refs of one table up to date, in one metadata commit (or none).

    * drop tags whose max-ref-age ran out (as Spark/Trino expiry does; pyiceberg's doesn't);
    * tag the checkpoint of every closed hour not yet tagged (within `checkpoint_max_age_ms`);
    * with `silver_sources` (Bronze tables): tag each snapshot Silver names as its source,
      untag those it no longer names.

    Returns:
        Counts: `dropped`, `checkpoints`, `silver_tagged`, `silver_untagged`.

    Raises:
        CommitFailedException (pyiceberg): a concurrent commit; the caller retries later.
    """
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    refs = table.metadata.refs
    drop = tags_to_drop(table, identifier, checkpoint_max_age_ms, now, retag)
    due = checkpoints_due(table, identifier, checkpoint_max_age_ms, now, retag)
    add_silver: list[int] = []
    remove_silver: list[str] = []
    if silver_sources is not None:
        existing = {s.snapshot_id for s in table.metadata.snapshots}
        wanted = {sid for sid in silver_sources if sid in existing}
        add_silver = sorted(wanted - set(_silver_source_tags(table)))
        remove_silver = silver_sources_to_untag(table, silver_sources)
    counts = {
        "dropped": len(drop),
        "checkpoints": len(due),
        "silver_tagged": len(add_silver),
        "silver_untagged": len(remove_silver),
    }
    if not (drop or due or add_silver or remove_silver):
        return counts
    with table.transaction() as tx:
        # An expiry since the read (of a checkpoint's snapshot) fails the commit, not a ValueError.
        require_snapshots(tx, [*(sid for sid, _ in due.values()), *add_silver])
        ms = ManageSnapshots(tx)
        again = [n for n in due if n in refs and n not in drop]
        for name in [*drop, *remove_silver, *again]:
            ms = ms.remove_tag(name)
        for name, (sid, age) in due.items():
            ms = ms.create_tag(sid, name, max_ref_age_ms=age)
        for sid in add_silver:
            ms = ms.create_tag(sid, silver_source_tag(sid))
        ms.commit()
    return counts


def silver_source_tag(snapshot_id: int) -> str:
    """`silver-source-<snapshot id>`: the ref that protects a Bronze snapshot Silver read."""
    return f"{SILVER_SOURCE_PREFIX}{snapshot_id}"


def _silver_source_tags(table: Table) -> dict[int, str]:
    prefix = len(SILVER_SOURCE_PREFIX)
    return {
        int(n[prefix:]): n
        for n in table.metadata.refs
        if n.startswith(SILVER_SOURCE_PREFIX) and n[prefix:].isdigit()
    }


def silver_sources_to_untag(table: Table, silver_sources: set[int]) -> list[str]:
    """Silver-source tags of `table` that Silver no longer names (the policy removes them).

    A tag on a snapshot at least as new as every source Silver names is kept: the compactor
    tags its source before its Silver commit (`protect_silver_source`), so such a tag may
    belong to a compaction whose commit is not visible yet (or that failed: the next
    compaction of a newer snapshot releases it).
    """
    seq = {s.snapshot_id: s.sequence_number or 0 for s in table.metadata.snapshots}
    named = [seq[sid] for sid in silver_sources if sid in seq]
    newest = max(named, default=None)
    return [
        name
        for sid, name in _silver_source_tags(table).items()
        if sid not in silver_sources
        and (sid not in seq or (newest is not None and seq[sid] < newest))
    ]


def protect_silver_source(bronze: Table, snapshot_id: int, *, attempts: int = 5) -> str:
    """Tag the Bronze snapshot a Silver commit is about to name as its source.

    The tag is the one the expiry policy keeps for Silver sources (`silver-source-<id>`, no
    max-ref-age: it stays until Silver no longer names the snapshot), made before the Silver
    commit so that no engine's expiry (Spark, Trino, pyiceberg's own) can remove the source in
    between. Idempotent: an existing tag is left as it is. Makes no snapshot (a ref update of
    the Bronze table, retried on a concurrent commit from refreshed metadata). `bronze` itself
    is not modified: a fresh copy is loaded from its catalog.

    Returns:
        The tag name.

    Raises:
        TimeTravelError: the snapshot no longer exists (expired before it could be protected).
        CommitFailedException (pyiceberg): concurrent commits won every attempt.
    """
    name = silver_source_tag(snapshot_id)
    table = bronze.catalog.load_table(bronze.name())
    for attempt in range(attempts):
        ref = table.metadata.refs.get(name)
        if ref is not None and ref.snapshot_id == snapshot_id:
            return name
        if table.snapshot_by_id(snapshot_id) is None:
            raise TimeTravelError(
                f"{_table_name(table)} has no snapshot {snapshot_id} to protect as Silver's "
                "source (expired during the compaction): compact again"
            )
        try:
            with table.transaction() as tx:
                # Expired since the check above: the commit fails and the retry reports it.
                require_snapshots(tx, [snapshot_id])
                ms = ManageSnapshots(tx)
                if ref is not None:
                    ms = ms.remove_tag(name)
                ms.create_tag(snapshot_id, name).commit()
            return name
        except CommitFailedException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * 2**attempt)
            table.refresh()
    return name


def replay_pin_name(
    tables: Iterable[str], pins: Mapping[str, int | None], start_ns: int, end_ns: int
) -> str:
    """`replay-<16 hex>`: a hash of what a replay reads (tables, pins, window).

    The same manifest always gives the same name, so re-running it refreshes its own pin.
    """
    body = json.dumps(
        {"tables": list(tables), "snapshots": dict(pins), "start_ns": start_ns, "end_ns": end_ns},
        sort_keys=True,
        separators=(",", ":"),
    )
    return REPLAY_PIN_PREFIX + hashlib.sha256(body.encode()).hexdigest()[:16]


def pin_snapshots(
    lake: CatalogSource,
    pins: Mapping[str, int | None],
    name: str,
    max_age_days: float,
) -> dict[str, int]:
    """Tag each pinned snapshot as `name`, kept `max_age_days` from now (max-ref-age).

    Idempotent: an existing tag of that name is moved, or refreshed when that keeps the
    snapshot longer; a pin is never shortened (no commit then). Tables pinned to None (empty)
    need no tag.

    Returns:
        Table identifier -> tagged snapshot id.

    Raises:
        TimeTravelError: a pinned snapshot no longer exists (expired, also while pinning).
        CommitConflictError: concurrent commits won every attempt (retryable).
    """
    catalog = _open(lake)
    now = int(time.time() * 1000)
    done: dict[str, int] = {}
    for ident, sid in pins.items():
        if sid is None:
            continue
        for attempt in range(3):
            table = catalog.load_table(ident)
            snap = table.snapshot_by_id(sid)
            if snap is None:
                raise TimeTravelError(f"{ident} has no snapshot {sid} to pin (expired)")
            age = max(1, now - snap.timestamp_ms + int(max_age_days * _DAY_MS))
            existing = table.metadata.refs.get(name)
            if existing is not None and existing.snapshot_id == sid:
                # A rerun never shortens a pin: one made with a longer max age (another
                # process's setting) was cut back to the rerunner's, and the snapshot expired
                # before the backtest was needed again (history18).
                if existing.max_ref_age_ms is None or existing.max_ref_age_ms >= age:
                    break
            try:
                with catalog_errors(f"pinning {ident}"), table.transaction() as tx:
                    # Expired since the read: the commit fails and the next attempt reports it.
                    require_snapshots(tx, [sid])
                    ms = ManageSnapshots(tx)
                    if name in table.metadata.refs:
                        ms = ms.remove_tag(name)
                    ms.create_tag(sid, name, max_ref_age_ms=age).commit()
                break
            except CommitFailedException as exc:
                if attempt == 2:
                    raise CommitConflictError(
                        f"pinning {ident}: concurrent commits won 3 attempts ({exc})"
                    ) from exc
        done[ident] = sid
    return done
