"""Table maintenance: small-file compaction, snapshot expiry with file cleanup, orphan removal.

Micro-batch writers make one small data file per touched partition per flush, plus a manifest,
a manifest list and a metadata file per commit. `TableMaintenance` keeps a long-running table
healthy::

    m = TableMaintenance(catalog, "bronze.stocks_trades")
    m.compact_files(older_than=timedelta(hours=1), target_size=256 * MB)
    m.expire_snapshots(older_than=timedelta(days=7))
    m.remove_orphans(older_than=timedelta(days=1))

Every operation returns a small frozen result record (also used for `--dry-run` output).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
)
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import ManifestFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Snapshot, ancestors_of
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform

from iceberg_lake import properties as P
from iceberg_lake.catalog import LakeCatalog, catalog_errors
from iceberg_lake.engine.filters import eq, ge, is_null, lt
from iceberg_lake.engine.iceberg import (
    FOLD_MIN_MANIFESTS,
    PartitionReplacement,
    delete_file,
    expire_snapshot_ids,
    file_tag,
    fold_small_manifests,
    list_files,
    listing_io,
    partition_values,
    read_scan_tasks,
    read_table_metadata,
    rewrite_manifests,
    store_clock_offset,
    tagged_write_uuid,
    write_data_files,
)
from iceberg_lake.exceptions import CommitConflictError, LakeError

log = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_TARGET_SIZE = 256 * MB
#: Files at least this fraction of the target size are left alone by `compact_files`.
MIN_INPUT_FRACTION = 0.75

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SILVER_PREFIX = "silver."
#: `expire_snapshots` recomputes and retries this often when concurrent commits invalidate it.
EXPIRE_ATTEMPTS = 5
#: `compact_files` plans and commits at most this often when concurrent commits conflict.
COMPACT_ATTEMPTS = 5
#: `rewrite_manifests` re-reads the manifests and merges them at most this often when concurrent
#: commits win.
REWRITE_MANIFESTS_ATTEMPTS = 5
#: The first attempts of `compact_files` that also conflict with late rows inside the rewritten
#: event-time range (and re-plan to fold them in); later attempts, and always the last one, only
#: require the planned files to still exist, so a steady stream of late rows cannot stall it.
COMPACT_WINDOW_ATTEMPTS = 1


# ---- argument parsing (shared with the CLI) --------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(text: str) -> timedelta:
    """Parse `90s`, `30m`, `1h`, `7d`, `1d12h` or `0` into a timedelta.

    Raises:
        LakeError: the text is not a duration.
    """
    value = text.strip().lower()
    if value == "0":
        return timedelta(0)
    parts = _DURATION_PART.findall(value)
    if not parts or _DURATION_PART.sub("", value).strip():
        raise LakeError(f"invalid duration {text!r} (use e.g. 90s, 30m, 1h, 7d, 1d12h)")
    try:
        return timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    except OverflowError:
        raise LakeError(f"duration {text!r} is too large") from None


def parse_size(text: str) -> int:
    """Parse `256MB`, `1GB`, `512KiB` or a byte count (binary multiples) into bytes.

    Raises:
        LakeError: the text is not a positive size.
    """
    m = _SIZE.match(text)
    if not m:
        raise LakeError(f"invalid size {text!r} (use e.g. 128MB, 1GB)")
    unit = (m.group(2) or "").lower()[:1]
    size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise LakeError(f"size must be positive, got {text!r}")
    return size


# ---- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionResult:
    """What `compact_files` did (or would do, with `dry_run`)."""

    table: str
    snapshot_id: int | None
    partitions: list[str]
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    dry_run: bool = False
    #: Plans made: 1, or more when a concurrent commit added rows to a partition being
    #: compacted and the compaction was re-planned on the new snapshot.
    attempts: int = 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "table": self.table,
            "snapshot_id": self.snapshot_id,
            "partitions": len(self.partitions),
            "files_before": self.files_before,
            "files_after": self.files_after,
            "rows": self.rows,
            "bytes_before": self.bytes_before,
            "dry_run": self.dry_run,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class ExpiryResult:
    """What `expire_snapshots` expired and deleted (or would, with `dry_run`)."""

    table: str
    expired: list[int]
    protected: list[int]
    deleted_files: list[str]
    dry_run: bool = False
    #: Refs updated first (`snapshots.maintain_refs`; in a dry run, checkpoints that would be):
    #: `checkpoints` tagged, aged-out tags `dropped`, Silver-source tags added and removed.
    refs: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "table": self.table,
            "expired_snapshots": len(self.expired),
            "protected_snapshots": len(self.protected),
            "deleted_files": len(self.deleted_files),
            "checkpoints_tagged": self.refs.get("checkpoints", 0),
            "tags_dropped": self.refs.get("dropped", 0),
            "dry_run": self.dry_run,
            "expired": self.expired,
            "files": self.deleted_files,
        }


@dataclass(frozen=True)
class OrphanResult:
    """Files under a table's location that no metadata references."""

    table: str
    orphans: list[str]
    bytes: int
    scanned: int
    dry_run: bool = False
    kept_recent: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "table": self.table,
            "orphans": len(self.orphans),
            "bytes": self.bytes,
            "scanned_files": self.scanned,
            "kept_recent": self.kept_recent,
            "dry_run": self.dry_run,
            "files": self.orphans,
        }


# ---- the table-level object --------------------------------------------------------------------


@dataclass
class TableMaintenance:
    """Maintenance operations of one lake table.

    Args:
        catalog: the lake catalog.
        table_id: `namespace.table`.
        protected_snapshots: extra snapshot ids `expire_snapshots` must keep (default: for a
            Bronze table, the snapshots Silver names as its sources).
    """

    catalog: LakeCatalog
    table_id: str
    protected_snapshots: set[int] | None = None
    _table: Table | None = field(default=None, repr=False)
    #: The store's clock minus this machine's (`_expiry_now`), probed once.
    _store_offset: timedelta | None = field(default=None, repr=False)

    @property
    def table(self) -> Table:
        """The table, loaded once (refreshed by each operation)."""
        if self._table is None:
            self._table = self.catalog.load_table(self.table_id)
        return self._table

    def _refresh(self) -> Table:
        with catalog_errors(f"refreshing {self.table_id}"):
            self.table.refresh()
        return self.table

    # ---- compact-files ----------------------------------------------------------------------

    def compact_files(
        self,
        older_than: timedelta = timedelta(hours=1),
        target_size: int = DEFAULT_TARGET_SIZE,
        *,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> CompactionResult:
        """Bin-pack the small data files of closed time partitions into files near `target_size`.

        A partition is closed when its whole time range (hour or day of `ts_event`) ended at least
        `older_than` before `now`. In each closed partition, the files smaller than 75% of the
        target are read, sorted by the table's sort order (`ts_event_ns`), cut into
        `ceil(bytes / target_size)` files of contiguous event time, and swapped in.

        Produces ONE `overwrite` snapshot for the whole table (summary `lake.operation` =
        `compact-files`, `lake.replaced-partitions`), or none when nothing needs compacting. The
        rows a reader sees are unchanged; table properties (writer watermarks) are kept.
        Idempotent: a second run finds nothing to do. Silver tables are skipped: the Silver
        compactor already writes sorted, target-sized files and keeps its state in their names.

        Args:
            older_than: only partitions that closed at least this long ago.
            target_size: desired data file size in bytes (estimated from the input files'
                bytes per row).
            now: the reference time (default: the current time).
            dry_run: only report what would be compacted.

        Late rows: only the replaced files are ever deleted, by name, so files a concurrent
        commit adds to a partition being compacted (a writer catching up on old events, a
        `lake load`) are never lost, and no row is written twice: every attempt requires the
        planned files to still exist at commit (a concurrent compaction of them conflicts).

        * The first attempt (`COMPACT_WINDOW_ATTEMPTS`) also conflicts with late rows inside the
          rewritten event-time range (newer ones never conflict): it deletes what it wrote and
          re-plans on the new snapshot, which includes the late files, so a one-off late
          commit is folded into the same compaction.
        * The later attempts replace exactly the planned files and check nothing else: files
          that landed meanwhile stay as they are (not deleted, not rewritten) and the next run
          picks them up. So a steady stream of late rows into a closed hour (a backfill
          committing every few seconds) cannot stall compaction: the second attempt lands.

        Trade-off: the window check is not needed for correctness. Each compacted file is
        still sorted by event time; only its time range may then overlap a late file of the
        same partition until the next run, as the writers' own files already do (readers prune
        by per-file bounds, never assume disjoint files). What the check buys is fewer files
        left behind by a one-off late commit, at the cost of one rewrite of the planned data.

        Returns:
            What was compacted (`attempts` says how many plans it took).

        Raises:
            CommitConflictError: concurrent commits conflicted `COMPACT_ATTEMPTS` times (e.g.
                other compactions kept replacing the planned files); nothing was changed.
        """
        last: CommitConflictError | None = None
        for attempt in range(COMPACT_ATTEMPTS):
            if attempt:
                # Back off with jitter: the late writer's commits come in bursts.
                time.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
            window = attempt < min(COMPACT_WINDOW_ATTEMPTS, COMPACT_ATTEMPTS - 1)
            try:
                # Reads, writes and the commit: an outage is one line naming the store or the
                # catalog database, like every other command's.
                with catalog_errors(f"compacting the files of {self.table_id}"):
                    result = self._compact_files_once(older_than, target_size, now, dry_run, window)
            except CommitConflictError as exc:
                last = exc
                log.info("compact-files %s: %s; re-planning", self.table_id, _first_line(exc))
                continue
            return dataclasses.replace(result, attempts=attempt + 1)
        # The catalog's or pyiceberg's own reason, without the table name said twice.
        cause = last.__cause__ if last is not None and last.__cause__ is not None else last
        raise CommitConflictError(
            f"{self.table_id}: concurrent commits kept conflicting with the compaction "
            f"({COMPACT_ATTEMPTS} attempts, last: {_first_line(cause)}); nothing was changed, "
            "run it again"
        )

    def _compact_files_once(
        self,
        older_than: timedelta,
        target_size: int,
        now: datetime | None,
        dry_run: bool,
        window: bool = True,
    ) -> CompactionResult:
        """One plan-write-commit of `compact_files` on freshly refreshed metadata.

        Args:
            window: also conflict with files added inside the rewritten event-time range;
                False: only with the planned files being gone (`validation="files"`).

        Raises:
            CommitConflictError: a concurrent commit conflicted; the files this attempt wrote
                are deleted again.
        """
        if target_size <= 0:
            raise LakeError("target size must be positive")
        if self.table_id.startswith(SILVER_PREFIX):
            # The Silver compactor writes target-sized, sorted files whose names carry its
            # change-detection state (`iceberg_lake.silver.state`); rewriting them would
            # only force a recompaction.
            return CompactionResult(self.table_id, None, [], 0, 0, 0, 0, dry_run)
        table = self._refresh()
        cutoff_us = _to_us(now or datetime.now(UTC)) - int(older_than.total_seconds() * 1e6)
        groups = self._closed_partition_groups(table, cutoff_us, target_size)
        files_before = sum(len(tasks) for _, _, tasks, _ in groups)
        bytes_before = sum(t.file.file_size_in_bytes for _, _, ts, _ in groups for t in ts)
        rows = sum(t.file.record_count for _, _, ts, _ in groups for t in ts)
        labels = list(dict.fromkeys(label for label, _, _, _ in groups))
        if dry_run or not groups:
            estimate = sum(
                max(1, math.ceil(sum(t.file.file_size_in_bytes for t in ts) / target_size))
                for _, _, ts, _ in groups
            )
            return CompactionResult(
                self.table_id, None, labels, files_before, estimate, rows, bytes_before, dry_run
            )

        props = {
            P.LAKE_OPERATION: P.COMPACT_FILES,
            P.REPLACED_PARTITIONS: json.dumps([label.split("/") for label in labels]),
        }
        rep = PartitionReplacement(table, props, validation="predicate" if window else "files")
        out_schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
        sort_keys = _sort_columns(table)
        files_after = 0
        for label, predicate, tasks, tag in groups:
            data = read_scan_tasks(table, tasks)
            data = data.select(out_schema.names).cast(out_schema)
            if sort_keys:
                data = data.sort_by([(c, "ascending") for c in sort_keys])
            size = sum(t.file.file_size_in_bytes for t in tasks)
            n_files = max(1, math.ceil(size / target_size))
            per_file = max(1, math.ceil(data.num_rows / n_files))
            old = [t.file for t in tasks]
            before = len(rep.new_files)
            written = []
            for start in range(0, max(data.num_rows, 1), per_file):
                # A copy, not a zero-copy slice: pyiceberg's partitioning of a sliced table
                # reads the wrong rows (it ignores the slice offset).
                chunk = data.take(pa.array(range(start, min(start + per_file, data.num_rows))))
                # A fresh write id per file (names would collide), with the inputs' tag.
                write_id = tagged_write_uuid(tag) if tag else uuid.uuid4()
                written.extend(write_data_files(table, chunk, write_id))
            rep.replace_files(_event_window(predicate, data), written, old)
            files_after += len(rep.new_files) - before
            log.info(
                "compact-files %s %s: %d files -> %d", self.table_id, label, len(tasks), n_files
            )
        try:
            snapshot_id = rep.commit()
        except CommitConflictError:
            # Never committed: delete them now rather than leave orphans for every retry.
            rep.discard_new_files()
            raise
        return CompactionResult(
            self.table_id, snapshot_id, labels, files_before, files_after, rows, bytes_before
        )

    def _closed_partition_groups(
        self, table: Table, cutoff_us: int, target_size: int
    ) -> list[tuple[str, BooleanExpression, list[FileScanTask], str | None]]:
        """Closed partitions with at least two small files of one tag: (label, predicate,
        tasks, the tag in their names: `engine.iceberg.file_tag`)."""
        if table.current_snapshot() is None:
            return []
        with catalog_errors(f"planning {self.table_id}"):
            tasks = list(table.scan().plan_files())
        by_partition: dict[tuple[int, tuple[Any, ...], str | None], list[FileScanTask]] = {}
        for task in tasks:
            if task.file.file_size_in_bytes >= target_size * MIN_INPUT_FRACTION:
                continue
            # Files of one loaded file (tagged in their names) are merged only with each other,
            # and the result keeps the tag: `lake load --undo` finds a file's rows by it.
            key = (
                task.file.spec_id,
                partition_values(task.file.partition),
                file_tag(task.file.file_path),
            )
            by_partition.setdefault(key, []).append(task)
        schema = table.schema()
        groups = []
        for (spec_id, values, tag), group in sorted(
            by_partition.items(), key=lambda kv: str(kv[0])
        ):
            if len(group) < 2:
                continue
            bounds = _partition_bounds(table.specs()[spec_id], schema, values)
            if bounds is None:
                continue
            label, predicate, end_us = bounds
            if end_us is None or end_us > cutoff_us:
                continue
            groups.append((label, predicate, group, tag))
        return groups

    # ---- expire-snapshots -------------------------------------------------------------------

    def expire_snapshots(
        self,
        older_than: timedelta | None = None,
        *,
        retain_last: int = 1,
        now: datetime | None = None,
        dry_run: bool = False,
    ) -> ExpiryResult:
        """Apply the lake's expiry policy (`ExpiryPolicy`) and delete the files only expired
        snapshots needed.

        First the table's refs are brought up to date (`snapshots.maintain_refs`: aged-out tags
        dropped, hourly checkpoints tagged, Bronze snapshots Silver names as sources tagged).
        Then it never expires: the current snapshot, the `retain_last` newest snapshots of the
        main branch, any snapshot a tag or branch points at (checkpoints, replay pins, Silver
        sources, user tags), and the snapshots inside the retention window; beyond the window
        everything else is expired, and inside it the oldest unprotected snapshots go when the
        table keeps more than `LAKE_SNAPSHOT_MAX_COUNT`.
        Files deleted are the manifest lists, manifests, data/delete files and statistics files
        reachable from an expired snapshot and from no remaining one.

        Produces no snapshot: one metadata commit for the refs (if any changed) and one that
        removes the expired snapshots. Idempotent: a second run expires nothing.

        Args:
            older_than: the retention window (default: the table's `LAKE_*_SNAPSHOT_RETENTION_
                SECONDS`).
            retain_last: always keep this many newest snapshots (at least 1).
            now: the reference time (default: the current time).
            dry_run: only list what would be expired and deleted (refs are not changed).

        Returns:
            The expired snapshot ids, the protected ones, and the deleted files.

        Raises:
            CommitConflictError: concurrent commits kept invalidating the expiry (a snapshot
                expired or tagged meanwhile) for `EXPIRE_ATTEMPTS` attempts, each recomputed
                from refreshed metadata; nothing was deleted.
        """
        last: CommitConflictError | None = None
        for attempt in range(EXPIRE_ATTEMPTS):
            if attempt:
                # Back off with jitter: the concurrent committer (usually a writer expiring its
                # own retention window) is done within milliseconds.
                time.sleep(min(1.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            try:
                with catalog_errors(f"expiring snapshots of {self.table_id}"):
                    return self._expire_snapshots_once(older_than, retain_last, now, dry_run)
            except CommitConflictError as exc:
                last = exc
                log.info("expire-snapshots %s: %s; retrying", self.table_id, exc)
        raise CommitConflictError(
            f"{self.table_id}: concurrent commits kept changing the snapshots while expiring "
            f"({EXPIRE_ATTEMPTS} attempts, last: {last}); nothing was deleted, run it again"
        )

    def _expiry_now(self, table: Table, dry_run: bool) -> datetime:
        """The time the retention window ends at: this machine's clock, or the store's when that
        is behind it (ops19: a maintenance host 7 h fast expired 168 snapshots and deleted 426
        files inside the 6 h window, exit 0). The store holds the files and stamps them; the
        writers' clocks, which stamp the snapshots, are checked against it the same way by
        `remove-orphans`. A clock behind the store's only keeps more."""
        local = _local_now()
        if self._store_offset is None:
            try:
                offset = store_clock_offset(listing_io(table), table.location(), _local_now)
            except LakeError as exc:
                if not dry_run:
                    raise
                log.warning("expire-snapshots: %s; the window uses this machine's clock", exc)
                offset = timedelta(0)
            self._store_offset = offset if offset is not None else timedelta(0)
            if self._store_offset < -CLOCK_WARNING:
                log.warning(
                    "expire-snapshots %s: this machine's clock is %.0f s ahead of the store's "
                    "(%s); the retention window is measured on the store's clock",
                    self.table_id,
                    -self._store_offset.total_seconds(),
                    table.location(),
                )
        # Within CLOCK_WARNING the two clocks agree (the probe under-estimates by up to a second:
        # S3 truncates to it); beyond, the store's "now" is taken.
        return local + self._store_offset if self._store_offset < -CLOCK_WARNING else local

    def _expire_snapshots_once(
        self, older_than: timedelta | None, retain_last: int, now: datetime | None, dry_run: bool
    ) -> ExpiryResult:
        """One attempt of `expire_snapshots` on freshly refreshed metadata."""
        table = self._refresh()
        policy = ExpiryPolicy.for_table(
            self.catalog.settings, self.table_id, window=older_than, retain_last=retain_last
        )
        moment = now or self._expiry_now(table, dry_run)
        sources = self._silver_sources()
        extra = set(sources or ())
        refs: dict[str, int] = {}
        if dry_run:
            # What the real run below would do (`lake maintain` re-tags: retag=True).
            due = policy.refs_due(table, self.table_id, moment)
            extra |= {sid for sid, _age in due.values()}
            refs["checkpoints"] = len(due)
            refs["dropped"] = len(policy.tags_to_drop(table, self.table_id, moment))
        else:
            with catalog_errors(f"updating refs of {self.table_id}"):
                try:
                    # `lake maintain` also re-tags checkpoints for a changed max age (one
                    # long commit for thousands of tags: never in the writers' in-line runs).
                    refs = policy.maintain_refs(table, self.table_id, sources, moment, retag=True)
                except CommitFailedException as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "conflict"
                    raise CommitConflictError(f"updating refs: {first}") from None
        expired, kept_old = policy.select(table, extra, moment)
        if not expired:
            return ExpiryResult(self.table_id, [], kept_old, [], dry_run, refs)
        reach = _Reachability(table)
        expired_set = set(expired)
        expired_files = reach.files_of(
            s for s in table.metadata.snapshots if s.snapshot_id in expired_set
        )
        expired_files |= reach.statistics_of(table, expired_set)
        if dry_run:
            remaining = [s for s in table.metadata.snapshots if s.snapshot_id not in expired_set]
            still = reach.files_of(remaining) | reach.statistics_of(
                table, {s.snapshot_id for s in remaining}
            )
            doomed = sorted(expired_files - still)
            return ExpiryResult(self.table_id, sorted(expired), kept_old, doomed, True, refs)

        with catalog_errors(f"expiring snapshots of {self.table_id}"):
            try:
                expire_snapshot_ids(table, expired)
            except CommitFailedException as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "conflict"
                raise CommitConflictError(reason) from None
        # Compute what is still needed from the committed metadata, so snapshots that a
        # concurrent writer added meanwhile are accounted for.
        table = self._refresh()
        still = reach.files_of(table.metadata.snapshots) | reach.statistics_of(
            table, {s.snapshot_id for s in table.metadata.snapshots}
        )
        doomed = sorted(expired_files - still)
        io = listing_io(table)
        for path in doomed:
            delete_file(io, path)
        log.info(
            "expire-snapshots %s: %d snapshots, %d files", self.table_id, len(expired), len(doomed)
        )
        return ExpiryResult(self.table_id, sorted(expired), kept_old, doomed, refs=refs)

    def _silver_sources(self) -> set[int] | None:
        """Snapshots Silver names as sources (Bronze tables only; None for others)."""
        if self.protected_snapshots is not None:
            return set(self.protected_snapshots)
        if self.table_id.startswith("bronze."):
            return silver_sources(self.catalog).get(self.table_id, set())
        return None

    # ---- rewrite-manifests ------------------------------------------------------------------

    def rewrite_manifests(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Merge the current snapshot's manifests into few large ones.

        Writers fast-append (one manifest per commit, folded 32 at a time by their policy run
        into manifests of up to 1,000 files), so manifests pile up between maintenance runs;
        this merges them all (`engine.iceberg.rewrite_manifests`)
        so planning reads few manifests. One `append` snapshot that adds no rows
        (`lake.operation` = `rewrite-manifests`), or none with fewer than 2 manifests.
        Idempotent: a second run finds at most one manifest per spec.

        A concurrent commit (a writer's append, a compaction) makes the commit lose; the
        manifests are then read again from the new snapshot and merged again, after a short
        backoff, at most `REWRITE_MANIFESTS_ATTEMPTS` times.

        Returns:
            `{"table", "manifests_before", "manifests_after", "snapshot_id", "dry_run",
            "attempts"}`.

        Raises:
            CommitConflictError: concurrent commits won every attempt; nothing was changed.
        """
        last: CommitConflictError | None = None
        for attempt in range(REWRITE_MANIFESTS_ATTEMPTS):
            if attempt:
                # Back off with jitter: writers commit in bursts every few seconds.
                time.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
            try:
                with catalog_errors(f"rewriting manifests of {self.table_id}"):
                    result = self._rewrite_manifests_once(dry_run)
            except CommitConflictError as exc:
                last = exc
                log.info("rewrite-manifests %s: %s; retrying", self.table_id, _first_line(exc))
                continue
            return result | {"attempts": attempt + 1}
        cause = last.__cause__ if last is not None and last.__cause__ is not None else last
        raise CommitConflictError(
            f"{self.table_id}: concurrent commits kept winning over the manifest rewrite "
            f"({REWRITE_MANIFESTS_ATTEMPTS} attempts, last: {_first_line(cause)}); nothing was "
            "changed, run it again"
        )

    def _rewrite_manifests_once(self, dry_run: bool) -> dict[str, Any]:
        """One attempt of `rewrite_manifests` on freshly refreshed metadata."""
        table = self._refresh()
        current = table.current_snapshot()
        before = len(current.manifests(table.io)) if current is not None else 0
        snapshot_id = None
        after = before
        if not dry_run and before >= 2:
            snapshot_id = rewrite_manifests(table, {P.LAKE_OPERATION: "rewrite-manifests"})
            current = table.current_snapshot()
            after = len(current.manifests(table.io)) if current is not None else 0
        return {
            "table": self.table_id,
            "manifests_before": before,
            "manifests_after": after,
            "snapshot_id": snapshot_id,
            "dry_run": dry_run,
        }

    # ---- remove-orphans ---------------------------------------------------------------------

    def remove_orphans(
        self,
        older_than: timedelta = timedelta(days=1),
        *,
        now: datetime | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> OrphanResult:
        """Delete files under the table's location that no retained metadata references.

        See `remove_orphans` (the module function) for the rules; this runs it for one table.
        Produces no snapshot and no metadata change. Idempotent.

        Args:
            older_than: only delete orphans last modified at least this long ago.
            now: the reference time (default: the current time).
            dry_run: only list the orphans.
            force: allow `older_than` below `MIN_ORPHAN_AGE`.

        Returns:
            The orphans deleted (or found, with `dry_run`).

        Raises:
            LakeError: `older_than` is below one hour without `force`, or a table's current
                metadata cannot be read (nothing is deleted then).
        """
        (result,) = remove_orphans(
            self.catalog, [self.table_id], older_than, now=now, dry_run=dry_run, force=force
        )
        return result


# ---- remove-orphans ----------------------------------------------------------------------------

#: Below this age `remove_orphans` needs `force`: a writer may have written a file and not yet
#: committed it (Iceberg's own procedure refuses anything under a day).
MIN_ORPHAN_AGE = timedelta(hours=1)
#: Files written this shortly before the final re-check are always kept, whatever `older_than`
#: says: an ordinary commit in flight at that moment (files written, catalog swap pending) lands
#: well within it. Commits that keep retrying for longer are what `MIN_ORPHAN_AGE` protects.
COMMIT_GRACE = timedelta(seconds=30)
_METADATA_VERSION = re.compile(r"^(\d+)-.*\.metadata\.json$")


def remove_orphans(
    catalog: LakeCatalog,
    tables: Iterable[str],
    older_than: timedelta = timedelta(days=1),
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> list[OrphanResult]:
    """Delete files under the tables' locations that no retained metadata of any table references.

    Safe while writers commit (DESIGN.md guarantee 7):

    1. The age cutoff (`now - older_than`) is fixed before any metadata is read, and moved
       onto the store's clock (`store_clock_offset`: file ages are the store's timestamps).
    2. Each table's location is listed.
    3. The referenced set is computed afterwards, from freshly refreshed metadata of *every*
       table in the catalog database, any namespace (a location may hold another table's
       files): every retained metadata file (current and metadata log), and everything each of
       them reaches — manifest lists, manifests, data and delete files (live or deleted
       entries), statistics files.
    4. Right before deleting, every table is refreshed again and the candidates are re-checked
       against that metadata; files written within `COMMIT_GRACE` of that moment and metadata
       files newer than the table's current version (a commit in flight) are kept.

    Produces no snapshot and no metadata change. Idempotent.

    Args:
        catalog: the lake catalog.
        tables: the tables whose locations are cleaned.
        older_than: only delete orphans last modified at least this long ago.
        now: the reference time (default: the current time).
        dry_run: only list the orphans.
        force: allow `older_than` below `MIN_ORPHAN_AGE` (for deletion; a dry run needs none).

    Returns:
        One result per table, in the order given.

    Raises:
        LakeError: `older_than` is below `MIN_ORPHAN_AGE` without `force`, a listing or delete
            failed, or some table's current snapshot cannot be read (then nothing is deleted).
    """
    if older_than < MIN_ORPHAN_AGE and not force and not dry_run:
        raise LakeError(
            f"--older-than {_duration_text(older_than)} is below 1h: files of commits in flight "
            "could be deleted; pass --force to remove them anyway"
        )
    real_start = _local_now()
    start = now or real_start
    clock_offset = start - real_start  # `now` shifts the grace check as well (tests, dry runs)
    ids = list(tables)
    refs = _CatalogReferences(catalog)
    listings: dict[str, list[tuple[str, datetime | None, int]]] = {}
    tables = {ident: refs.table(ident) for ident in ids}
    ios: dict[str, FileIO] = {ident: listing_io(table) for ident, table in tables.items()}
    # Another lake's tables under these locations would look like orphans here.
    catalog.refuse_shared_location([t.location() for t in tables.values()], "remove-orphans")
    # Ages are the store's modification times, so they are measured on the store's clock: the
    # cutoff is `start` (fixed before any listing or metadata read) moved onto that clock.
    offsets = _store_clock_offsets(tables, ios, dry_run)
    cutoffs = {ident: start + offsets[ident] - older_than for ident in ids}
    for ident, table in tables.items():
        listings[ident] = list_files(ios[ident], table.location())
    referenced, _ = refs.collect()
    candidates: dict[str, list[tuple[str, int]]] = {}
    kept: dict[str, int] = {}
    for ident in ids:
        candidates[ident], kept[ident] = [], 0
        for path, mtime, nbytes in listings[ident]:
            if _norm(path) in referenced:
                continue
            # Without a modification time a file's age is unknown: keep it.
            if mtime is None or mtime > cutoffs[ident]:
                kept[ident] += 1
                continue
            candidates[ident].append((path, nbytes))

    # Re-check right before deleting, against metadata refreshed now.
    mtimes = {p: m for ident in ids for p, m, _ in listings[ident]}
    referenced, versions = refs.collect()
    now_again = _local_now() + clock_offset
    results = []
    for ident in ids:
        settled = now_again + offsets[ident] - COMMIT_GRACE
        orphans, size = [], 0
        for path, nbytes in candidates[ident]:
            mtime = mtimes[path]
            if _norm(path) in referenced:
                continue
            if mtime is None or mtime > settled or _in_flight_metadata(path, versions):
                kept[ident] += 1
                continue
            orphans.append(path)
            size += nbytes
        if not dry_run:
            for path in orphans:
                delete_file(ios[ident], path)
            if orphans:
                log.info("remove-orphans %s: %d files", ident, len(orphans))
        results.append(
            OrphanResult(ident, sorted(orphans), size, len(listings[ident]), dry_run, kept[ident])
        )
    return results


def _local_now() -> datetime:
    """This machine's clock (one function, so a test can set it off the store's)."""
    return datetime.now(UTC)


#: A store clock this far off this machine's gets a warning from `remove_orphans`.
CLOCK_WARNING = timedelta(seconds=5)


def _store_clock_offsets(
    tables: dict[str, Table], ios: dict[str, FileIO], dry_run: bool
) -> dict[str, timedelta]:
    """Each table's store clock minus this machine's, probed once per store (scheme and bucket).

    A dry run that cannot write the probe (read-only credentials) uses this machine's clock and
    says so; a real run stops, since it could not delete anything there either. A store where
    no table location exists yet (local directories) holds no files to age: offset 0.
    """
    stores = {ident: urlparse(t.location())[:2] for ident, t in tables.items()}
    by_store: dict[tuple[str, str], timedelta | None] = {}
    for ident, table in tables.items():
        store = stores[ident]
        if by_store.get(store) is None:
            try:
                offset = store_clock_offset(ios[ident], table.location(), _local_now)
            except LakeError as exc:
                if not dry_run:
                    raise
                log.warning("remove-orphans: %s; ages use this machine's clock", exc)
                offset = timedelta(0)
            by_store[store] = offset
            if offset is not None and abs(offset) > CLOCK_WARNING:
                log.warning(
                    "remove-orphans: the clock of %s is %.0f s %s this machine's; file ages "
                    "are measured on the store's clock",
                    "://".join(store),
                    abs(offset.total_seconds()),
                    "behind" if offset < timedelta(0) else "ahead of",
                )
    return {ident: by_store[store] or timedelta(0) for ident, store in stores.items()}


def _duration_text(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    return f"{seconds:g}s" if seconds < 60 else f"{seconds / 60:g}m"


def _in_flight_metadata(path: str, versions: dict[str, int]) -> bool:
    """A `NNNNN-….metadata.json` newer than its table's current version: a commit in flight."""
    directory, _, name = _norm(path).rpartition("/")
    match = _METADATA_VERSION.match(name)
    if match is None:
        return False
    current = versions.get(directory)
    return current is None or int(match.group(1)) > current


class _CatalogReferences:
    """Everything any retained metadata of any catalog table references (normalised paths).

    Metadata files, manifest lists and manifests are immutable, so what was read once is cached
    across `collect()` calls; each call refreshes every table first.
    """

    def __init__(self, catalog: LakeCatalog) -> None:
        self.catalog = catalog
        self._tables: dict[str, Table] = {}
        self._reach: dict[str, _Reachability] = {}
        self._metadata: dict[str, TableMetadata | None] = {}
        self._seen: set[str] = set()  # manifest lists and manifests counted by this `collect()`

    def table(self, ident: str) -> Table:
        """The table, loaded once."""
        if ident not in self._tables:
            self._tables[ident] = self.catalog.load_table(ident)
        return self._tables[ident]

    def _all_tables(self) -> list[str]:
        """Every table of the catalog database, in the lake's namespaces or not: a table outside
        them may still keep files under a lake table's location."""
        sql = self.catalog.catalog
        with catalog_errors("listing tables"):
            return sorted(".".join(t) for ns in sql.list_namespaces() for t in sql.list_tables(ns))

    def collect(self) -> tuple[set[str], dict[str, int]]:
        """Refresh every table; return (referenced paths, metadata directory → current version).

        Raises:
            LakeError: a file of some table's current snapshot cannot be read.
        """
        out: set[str] = set()
        versions: dict[str, int] = {}
        self._seen = set()
        for ident in self._all_tables():
            table = self.table(ident)
            with catalog_errors(f"refreshing {ident}"):
                table.refresh()
            reach = self._reach.setdefault(ident, _Reachability(table))
            current = table.metadata_location
            if current:
                directory, _, name = _norm(current).rpartition("/")
                match = _METADATA_VERSION.match(name)
                if match:
                    versions[directory] = int(match.group(1))
            out |= self._metadata_refs(ident, table, reach, table.metadata, current=True)
            for entry in table.metadata.metadata_log:
                md = self._read_metadata(table, entry.metadata_file)
                if md is not None:
                    out |= self._metadata_refs(ident, table, reach, md, current=False)
            if current:
                out.add(_norm(current))
        return out, versions

    def _read_metadata(self, table: Table, location: str) -> TableMetadata | None:
        if location not in self._metadata:
            try:
                self._metadata[location] = read_table_metadata(table, location)
            except FileNotFoundError:
                self._metadata[location] = None  # no longer retained
            except Exception as exc:
                if _gone(table, location):
                    # Deleted by a writer's commit between the object store's HEAD and GET,
                    # which S3 reports as a plain error (ops13: one run in 27 failed).
                    self._metadata[location] = None
                else:  # unreadable or corrupt: delete nothing
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    raise LakeError(f"cannot read metadata file {location}: {reason}") from None
        return self._metadata[location]

    def _expired_since(self, ident: str, snapshot_id: int) -> bool:
        """Whether the table's newest metadata no longer holds the snapshot (expired while this
        run read it: no reader can reach it, as if its files were already gone)."""
        try:
            fresh = self.catalog.load_table(ident)
        except Exception:  # noqa: BLE001 - cannot tell: treat it as still held
            return False
        return all(s.snapshot_id != snapshot_id for s in fresh.metadata.snapshots)

    def _metadata_refs(
        self, ident: str, table: Table, reach: _Reachability, md: TableMetadata, *, current: bool
    ) -> set[str]:
        out = {_norm(e.metadata_file) for e in md.metadata_log}
        stats = [*md.statistics, *md.partition_statistics]
        out |= {_norm(s.statistics_path) for s in stats}
        head = md.current_snapshot_id
        for snap in md.snapshots:
            # Retained metadata files share most snapshots: count each manifest list once.
            if snap.manifest_list in self._seen:
                continue
            self._seen.add(snap.manifest_list)
            try:
                out.add(_norm(snap.manifest_list))
                for manifest in reach._manifests(snap):
                    if manifest.manifest_path not in self._seen:
                        entries = reach._entries(manifest, live_only=False)
                        # Seen once read: a manifest an expired snapshot shares with a live one
                        # that fails to read here is read again for the live one (review13b:
                        # marked first, its live data files were left out of the references).
                        self._seen.add(manifest.manifest_path)
                        out.add(_norm(manifest.manifest_path))
                        out |= entries
            except FileNotFoundError as exc:
                if current and snap.snapshot_id == head:
                    # Its data files would all look like orphans: delete nothing.
                    raise LakeError(
                        f"{ident}: current snapshot {head} cannot be read (missing "
                        f"{getattr(exc, 'filename', None) or exc}); remove-orphans deletes "
                        "nothing while a table is unreadable"
                    ) from None
                # A snapshot whose manifest list or a manifest is gone can be read by no one;
                # what only it reached is unreachable. Keep the manifest list path itself.
                out.add(_norm(snap.manifest_list))
            except Exception as exc:
                if not (current and snap.snapshot_id == head) and self._expired_since(
                    ident, snap.snapshot_id
                ):
                    # Expired (its files deleted) between the object store's HEAD and GET: as
                    # a missing file above.
                    out.add(_norm(snap.manifest_list))
                    continue
                # Unreadable or corrupt: delete nothing.
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise LakeError(f"{ident}: cannot read {snap.manifest_list}: {reason}") from None
        return out


def _gone(table: Table, location: str) -> bool:
    """Whether `location` no longer exists (False when that cannot be told either)."""
    try:
        return not table.io.new_input(location).exists()
    except Exception:  # noqa: BLE001 - the store is failing: not known to be gone
        return False


# ---- the expiry policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpiryPolicy:
    """The one snapshot-expiry policy: writers' in-line expiry and `lake maintain expire-snapshots`.

    Kept (never expired): the current snapshot and its `retain_last - 1` ancestors; every ref
    head (user tags; `checkpoint-*` hourly checkpoints for `checkpoint_max_age`; `replay-*` pins
    for `LAKE_REPLAY_PIN_MAX_AGE_DAYS`; `silver-source-*` while Silver names them); every
    snapshot younger than `window`, unless the table keeps more than `max_snapshots` (then the
    oldest unprotected ones go first). Everything else is expired.
    """

    window: timedelta
    max_snapshots: int
    checkpoint_max_age: timedelta
    retain_last: int = 1

    @classmethod
    def for_table(
        cls,
        settings: Any,
        table_id: str,
        *,
        window: timedelta | None = None,
        retain_last: int = 1,
    ) -> ExpiryPolicy:
        """The policy of `table_id` from the settings (`window` overrides the retention)."""
        if window is None:
            ns = table_id.split(".", 1)[0]
            seconds = {
                "gold": settings.gold_snapshot_retention_seconds,
                "silver": settings.silver_snapshot_retention_seconds,
            }.get(ns, settings.bronze_snapshot_retention_seconds)
            window = timedelta(seconds=seconds)
        return cls(
            window=window,
            max_snapshots=settings.snapshot_max_count,
            checkpoint_max_age=timedelta(days=settings.checkpoint_max_age_days),
            retain_last=max(1, retain_last),
        )

    @property
    def checkpoint_max_age_ms(self) -> int:
        """`checkpoint_max_age` in milliseconds (what the snapshot refs record)."""
        return int(self.checkpoint_max_age.total_seconds() * 1000)

    def maintain_refs(
        self,
        table: Table,
        table_id: str,
        silver: set[int] | None,
        now: datetime,
        retag: bool = False,
    ) -> dict[str, int]:
        """Update the table's lake refs (`snapshots.maintain_refs`) before expiring."""
        from iceberg_lake.timetravel import snapshots

        return snapshots.maintain_refs(
            table,
            table_id,
            checkpoint_max_age_ms=self.checkpoint_max_age_ms,
            silver_sources=silver,
            now_ms=int(now.timestamp() * 1000),
            retag=retag,
        )

    def tags_to_drop(self, table: Table, table_id: str, now: datetime) -> list[str]:
        """Tags `lake maintain`'s `maintain_refs` would drop now (for dry runs)."""
        from iceberg_lake.timetravel import snapshots

        return snapshots.tags_to_drop(
            table,
            table_id,
            self.checkpoint_max_age_ms,
            int(now.timestamp() * 1000),
            retag=True,
        )

    def refs_due(self, table: Table, table_id: str, now: datetime) -> dict[str, tuple[int, int]]:
        """Checkpoint tags `lake maintain`'s `maintain_refs` would make now, new or re-made
        (for dry runs): tag name → (snapshot id, max-ref-age ms)."""
        from iceberg_lake.timetravel import snapshots

        return snapshots.checkpoints_due(
            table,
            table_id,
            self.checkpoint_max_age_ms,
            int(now.timestamp() * 1000),
            retag=True,
        )

    def select(
        self, table: Table, protected: set[int], now: datetime
    ) -> tuple[list[int], list[int]]:
        """(snapshot ids to expire, protected ids older than the window), by the policy."""
        from iceberg_lake.timetravel.snapshots import ref_expires_ms

        now_ms = int(now.timestamp() * 1000)
        keep = set(protected)
        for name, ref in table.metadata.refs.items():
            expires = ref_expires_ms(table, name)
            # Branch heads always stay (pyiceberg refuses to expire them); an aged-out tag was
            # dropped by `maintain_refs` (or, in a dry run, would be).
            if ref.snapshot_ref_type != SnapshotRefType.TAG or expires is None or expires >= now_ms:
                keep.add(ref.snapshot_id)
        current = table.current_snapshot()
        if current is not None:
            keep.add(current.snapshot_id)
            for i, snap in enumerate(ancestors_of(current, table.metadata)):
                if i >= self.retain_last:
                    break
                keep.add(snap.snapshot_id)
        cutoff_ms = int((now - self.window).timestamp() * 1000)
        snaps = sorted(
            table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0)
        )
        expired = [
            s.snapshot_id for s in snaps if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep
        ]
        excess = len(snaps) - len(expired) - self.max_snapshots
        if excess > 0:
            gone = set(expired)
            for s in snaps:
                if excess <= 0:
                    break
                if s.snapshot_id not in keep and s.snapshot_id not in gone:
                    expired.append(s.snapshot_id)
                    excess -= 1
        kept_old = sorted(
            s.snapshot_id for s in snaps if s.timestamp_ms < cutoff_ms and s.snapshot_id in keep
        )
        return expired, kept_old


#: Silver's sources per catalog, cached for in-line expiry: (monotonic time, sources).
_SILVER_CACHE: dict[int, tuple[float, dict[str, set[int]]]] = {}
SILVER_SOURCES_TTL_SECONDS = 300.0
#: A cache this young may decide to untag Silver sources; an older one is refreshed first (a
#: stale cache lacks the sources of Silver commits made since it was read).
SILVER_SOURCES_UNTAG_MAX_AGE_SECONDS = 30.0
#: Writers fold manifests (`fold_inline`) after this many commits even before their policy
#: interval is up, so the manifest list (one manifest per commit until folded) stays short:
#: `engine.iceberg.FOLD_MIN_MANIFESTS`, so each such run finds enough to fold.
POLICY_EVERY_COMMITS = FOLD_MIN_MANIFESTS
#: `lake.operation` of the policy run's manifest fold (a snapshot that adds no rows).
FOLD_MANIFESTS_OPERATION = "fold-manifests"


#: Seconds a store clock probe of the writers' in-line expiry is reused for (per store), and
#: after a failed probe, before the next try.
INLINE_CLOCK_PROBE_SECONDS = 600.0
INLINE_CLOCK_RETRY_SECONDS = 60.0
#: store → (monotonic time, this machine's time, offset; None: the probe failed).
_INLINE_OFFSETS: dict[tuple[str, str], tuple[float, datetime, timedelta | None]] = {}


def _inline_now(table: Table) -> datetime | None:
    """The time a writer's in-line expiry measures the window to: this machine's clock, or the
    store's when this one is more than `CLOCK_WARNING` ahead of it (review19b: a writer host 7 h
    fast dropped 5 of 6 snapshots inside the window). The store is probed at most every
    `INLINE_CLOCK_PROBE_SECONDS`, and again at once when this machine's clock moved otherwise
    than the monotonic one since (a step). None when the probe failed: the run expires
    nothing (a warning; it tries again a minute later), since a host clock it cannot check
    could expire inside the window (review19d)."""
    import time as _time

    local = _local_now()
    mono = _time.monotonic()
    store = urlparse(table.location())[:2]
    cached = _INLINE_OFFSETS.get(store)
    stale = cached is None or mono - cached[0] > (
        INLINE_CLOCK_PROBE_SECONDS if cached[2] is not None else INLINE_CLOCK_RETRY_SECONDS
    )
    if cached is not None and not stale:
        stepped = (local - cached[1]).total_seconds() - (mono - cached[0])
        stale = abs(stepped) > CLOCK_WARNING.total_seconds()
    if stale:
        offset: timedelta | None
        try:
            offset = store_clock_offset(listing_io(table), table.location(), _local_now)
            offset = offset if offset is not None else timedelta(0)
        except LakeError as exc:
            log.warning(
                "in-line expiry of %s skipped: %s (the host's clock cannot be checked against "
                "the store's; trying again in %.0f s)",
                table.name(),
                exc,
                INLINE_CLOCK_RETRY_SECONDS,
            )
            offset = None
        cached = (mono, local, offset)
        _INLINE_OFFSETS[store] = cached
        if offset is not None and offset < -CLOCK_WARNING:
            log.warning(
                "in-line expiry: this machine's clock is %.0f s ahead of the store's (%s); the "
                "retention window is measured on the store's clock",
                -offset.total_seconds(),
                "://".join(store),
            )
    assert cached is not None
    offset = cached[2]
    if offset is None:
        return None
    return local + offset if offset < -CLOCK_WARNING else local


def expire_inline(catalog: LakeCatalog, table: Table, table_id: str) -> int:
    """A writer's in-line policy run: the same `ExpiryPolicy`, without deleting files.

    Refs are updated first (checkpoints; Silver sources read at most every 5 minutes, and
    untagged only on a fresh read), then the policy's snapshots are removed from the metadata;
    their files become orphans for `lake maintain remove-orphans` (reading every manifest to
    find them costs too much in-line). Last, the small manifests the writer's fast appends left
    are folded into one (`engine.iceberg.fold_small_manifests`, once there are
    `FOLD_MIN_MANIFESTS`): a snapshot of its own that adds no rows, so the writers' commits
    never pay for it (docs/time-travel.md, "Manifests").

    Returns:
        The number of snapshots expired.

    Raises:
        CommitFailedException, CommitConflictError: a concurrent commit; the writer tries
            again next time.
    """
    import time as _time

    policy = ExpiryPolicy.for_table(catalog.settings, table_id)
    now = _inline_now(table)
    if now is None:
        # The clock could not be checked: no expiry and no tag upkeep this time (review19e: the
        # upkeep on a 7 h fast clock dropped a 3-hour tag 7 h early and tagged future hours).
        fold_inline(table)
        return 0
    silver: set[int] | None = None
    if table_id.startswith("bronze."):
        cached = _SILVER_CACHE.get(id(catalog))
        if cached is None or _time.monotonic() - cached[0] > SILVER_SOURCES_TTL_SECONDS:
            cached = (_time.monotonic(), silver_sources(catalog))
            _SILVER_CACHE[id(catalog)] = cached
        silver = cached[1].get(table_id, set())
        age = _time.monotonic() - cached[0]
        if age > SILVER_SOURCES_UNTAG_MAX_AGE_SECONDS and _silver_untag_due(table, silver):
            cached = (_time.monotonic(), silver_sources(catalog))
            _SILVER_CACHE[id(catalog)] = cached
            silver = cached[1].get(table_id, set())
    policy.maintain_refs(table, table_id, silver, now)
    expired, _ = policy.select(table, silver or set(), now)
    if expired:
        # With a precondition: a tag created meanwhile on one of them is never dropped.
        expire_snapshot_ids(table, expired)
    fold_inline(table)
    return len(expired)


def fold_inline(table: Table) -> int | None:
    """Fold the small manifests the writer's fast appends left (a snapshot of its own).

    The policy run's last step alone (`engine.iceberg.fold_small_manifests`, once there are
    `FOLD_MIN_MANIFESTS`), for writers that commit faster than their policy interval.
    Idempotent; adds no rows.

    Returns:
        The fold's snapshot id, or None when there was nothing to fold.

    Raises:
        CommitConflictError: a concurrent commit; the writer tries again next time.
    """
    return fold_small_manifests(table, {P.LAKE_OPERATION: FOLD_MANIFESTS_OPERATION})


def _silver_untag_due(table: Table, silver: set[int]) -> bool:
    """Whether `maintain_refs` would untag a Silver source given these sources."""
    from iceberg_lake.timetravel import snapshots

    return bool(snapshots.silver_sources_to_untag(table, silver))


# ---- Silver sources ------------------------------------------------------------------------------


def silver_sources(catalog: LakeCatalog) -> dict[str, set[int]]:
    """Bronze snapshot ids that Silver still names as sources, by Bronze table id.

    Uses the Silver compactor's `silver_source_snapshots`, plus any Silver snapshot summary that
    records `lake.source-table` / `lake.source-snapshot-id`.
    """
    out: dict[str, set[int]] = {}
    try:
        from iceberg_lake.silver.compactor import silver_source_snapshots

        for table_id, ids in silver_source_snapshots(catalog).items():
            out.setdefault(table_id, set()).update(ids)
    except ImportError:  # pragma: no cover - the Silver module ships with the package
        pass
    for table_id in catalog.existing_tables():
        if not table_id.startswith("silver."):
            continue
        silver = catalog.load_table(table_id)
        for snap in silver.metadata.snapshots:
            summary = snap.summary.additional_properties if snap.summary else {}
            source, sid = summary.get(P.SOURCE_TABLE), summary.get(P.SOURCE_SNAPSHOT_ID)
            if source and sid and sid.isdigit():
                out.setdefault(source, set()).add(int(sid))
    return out


# ---- reachability --------------------------------------------------------------------------------


class _Reachability:
    """Files referenced by snapshots; each manifest is read once."""

    def __init__(self, table: Table) -> None:
        self.io = table.io
        self._manifest_files: dict[str, set[str]] = {}
        self._all_entries: dict[str, set[str]] = {}
        self._lists: dict[str, list[ManifestFile]] = {}

    def _manifests(self, snapshot: Snapshot) -> list[ManifestFile]:
        if snapshot.manifest_list not in self._lists:
            self._lists[snapshot.manifest_list] = snapshot.manifests(self.io)
        return self._lists[snapshot.manifest_list]

    def _entries(self, manifest: ManifestFile, live_only: bool) -> set[str]:
        cache = self._manifest_files if live_only else self._all_entries
        if manifest.manifest_path not in cache:
            entries = manifest.fetch_manifest_entry(self.io, discard_deleted=live_only)
            cache[manifest.manifest_path] = {_norm(e.data_file.file_path) for e in entries}
        return cache[manifest.manifest_path]

    def files_of(self, snapshots: Iterable[Snapshot], live_only: bool = True) -> set[str]:
        """Manifest lists, manifests and data files the snapshots need (normalised paths)."""
        out: set[str] = set()
        for snap in snapshots:
            out.add(_norm(snap.manifest_list))
            for manifest in self._manifests(snap):
                out.add(_norm(manifest.manifest_path))
                out |= self._entries(manifest, live_only)
        return out

    @staticmethod
    def statistics_of(table: Table, snapshot_ids: set[int]) -> set[str]:
        """Statistics files recorded for the given snapshots."""
        stats = [*table.metadata.statistics, *table.metadata.partition_statistics]
        return {_norm(s.statistics_path) for s in stats if s.snapshot_id in snapshot_ids}


# ---- storage helpers -----------------------------------------------------------------------------


def _norm(location: str) -> str:
    """A location without scheme: `/abs/path` for files, `bucket/key` for object stores."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return parsed.path
    return f"{parsed.netloc}{parsed.path}"


# ---- partitions ----------------------------------------------------------------------------------


def _first_line(exc: BaseException | None, limit: int = 200) -> str:
    """The first line of an error, cut at `limit` characters (pyiceberg lists whole file paths)."""
    text = str(exc).strip() if exc is not None else ""
    line = text.splitlines()[0] if text else "conflict"
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def _to_us(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def _partition_bounds(
    spec: PartitionSpec, schema: Schema, values: tuple[Any, ...]
) -> tuple[str, BooleanExpression, int | None] | None:
    """(label, row predicate, end of time range in µs) of a partition; None if unsupported."""
    predicate: BooleanExpression = AlwaysTrue()
    labels: list[str] = []
    end_us: int | None = None
    for pfield, value in zip(spec.fields, values, strict=True):
        column = schema.find_column_name(pfield.source_id)
        if column is None:
            return None
        transform = pfield.transform
        if isinstance(transform, IdentityTransform):
            term = is_null(column) if value is None else eq(column, value)
            labels.append(str(value))
        elif isinstance(transform, HourTransform | DayTransform) and value is not None:
            unit = _US_PER_HOUR if isinstance(transform, HourTransform) else _US_PER_DAY
            ordinal = (value - date(1970, 1, 1)).days if isinstance(value, date) else int(value)
            lo, hi = ordinal * unit, (ordinal + 1) * unit
            term = And(ge(column, _iso(lo)), lt(column, _iso(hi)))
            text = _iso(lo)
            labels.append(text[:13] if unit == _US_PER_HOUR else text[:10])
            end_us = hi if end_us is None else max(end_us, hi)
        else:
            return None
        predicate = term if isinstance(predicate, AlwaysTrue) else And(predicate, term)
    return "/".join(labels), predicate, end_us


def _event_window(partition: BooleanExpression, rows: pa.Table) -> BooleanExpression:
    """The window attempt's conflict scope: the partition, narrowed to the event times rewritten.

    Only the replaced files are deleted (by name; a concurrent delete of one of them is still a
    conflict), so a file appended meanwhile is never lost whatever this scope is. Narrowing it
    lets a writer keep appending newer events to a closed hour while it is compacted; late rows
    inside the rewritten time range conflict, and the compaction is re-planned (the attempts
    after that one do not use this scope: `compact_files`).
    """
    if "ts_event_ns" not in rows.column_names or rows.num_rows == 0:
        return partition
    bounds = pc.min_max(rows.column("ts_event_ns"))
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    if lo is None or hi is None:
        return partition
    return And(partition, And(ge("ts_event_ns", lo), lt("ts_event_ns", hi + 1)))


def _sort_columns(table: Table) -> list[str]:
    names = []
    for f in table.sort_order().fields:
        name = table.schema().find_column_name(f.source_id)
        if name:
            names.append(name)
    if not names and "ts_event_ns" in table.schema().column_names:
        names = ["ts_event_ns"]
    return names


def maintained_tables(catalog: LakeCatalog, table: str | None = None) -> list[str]:
    """The tables an operation applies to: `table`, or every existing lake table.

    Raises:
        UnknownTableError: `table` is not in the catalog.
    """
    if table is not None:
        catalog.load_table(table)
        return [table]
    return catalog.existing_tables()


def rows_fingerprint(table: Table, snapshot_id: int | None = None) -> pa.Table:
    """All rows of a snapshot sorted by every column (tests and checks compare these)."""
    data = table.scan(snapshot_id=snapshot_id).to_arrow()
    return data.sort_by([(c, "ascending") for c in data.column_names])


__all__ = [
    "DEFAULT_TARGET_SIZE",
    "COMMIT_GRACE",
    "COMPACT_ATTEMPTS",
    "COMPACT_WINDOW_ATTEMPTS",
    "MB",
    "MIN_ORPHAN_AGE",
    "CompactionResult",
    "ExpiryPolicy",
    "ExpiryResult",
    "OrphanResult",
    "TableMaintenance",
    "maintained_tables",
    "parse_duration",
    "parse_size",
    "remove_orphans",
    "expire_inline",
    "fold_inline",
    "FOLD_MANIFESTS_OPERATION",
    "POLICY_EVERY_COMMITS",
    "rows_fingerprint",
    "silver_sources",
]
