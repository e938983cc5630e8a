"""Change detection for Silver compaction, from Iceberg metadata only (no data is read).

**Where the state lives.** Each Silver data file's *name* records what it was compacted from:
`silver-<bronze snapshot id>-<fingerprint>-<uuid>-<n>.parquet`, where the fingerprint is a hash of
the sorted paths of the Bronze data and delete files that land in that Silver partition in that
snapshot (from every Bronze partition, of any Bronze partition spec, placed in it). File
names live in Silver's manifests, so the state survives the expiry of Silver snapshots (a snapshot
summary would not) and costs nothing to read: planning the Silver partition lists them.

**When a partition is unchanged** (no recompaction, no commit):

1. the fingerprint of its Bronze file set equals the recorded one (exact, history-free); or
2. the file sets differ, but every Bronze snapshot between the recorded source snapshot and the
   pinned one that added or removed files placed in this partition is a file rewrite
   (`lake.operation=compact-files` or Iceberg operation `replace`), which keeps rows as they are.
   This needs the recorded source snapshot to still be in Bronze's history; when it was expired
   the partition is recompacted once (correct, only slower), after which (1) applies again.

`silver_source_snapshots` lists those recorded snapshot ids so maintenance can keep them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyiceberg.manifest import DataFile, ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Snapshot, ancestors_of

from iceberg_lake import properties as P

#: What a Bronze file's partition is called in change detection: the Silver partition tuple
#: it lands in (`silver.plan.PartitionMap.of_file`), the same whatever Bronze spec wrote it.
PartitionId = tuple[object, ...]

FILE_PREFIX = "silver"
_NAME = re.compile(r"(?:^|/)silver-(\d+)-([0-9a-f]{20})-[0-9a-f]+-\d+\.parquet$")


def fingerprint(paths: Iterable[str]) -> str:
    """A 20-hex-digit digest of a set of file paths (order-independent)."""
    h = hashlib.blake2b(digest_size=10)
    for p in sorted(paths):
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


def file_prefix(source_snapshot_id: int, digest: str, write_id: str) -> str:
    """The name prefix of Silver files compacted from `source_snapshot_id` with `digest`."""
    return f"{FILE_PREFIX}-{source_snapshot_id}-{digest}-{write_id}"


@dataclass(frozen=True)
class SilverState:
    """What a Silver partition's files say they were compacted from."""

    source_snapshot_id: int
    fingerprint: str


def parse_state(paths: Iterable[str]) -> SilverState | None:
    """The common compaction state recorded in Silver file names, or None if absent/mixed."""
    states = set()
    for p in paths:
        m = _NAME.search(p)
        if m is None:
            return None
        states.add(SilverState(int(m.group(1)), m.group(2)))
    return states.pop() if len(states) == 1 else None


def is_rewrite(snapshot: Snapshot) -> bool:
    """True when the snapshot only rewrote files without changing rows."""
    summary = snapshot.summary
    if summary is None:
        return False
    if summary.operation == Operation.REPLACE:
        return True
    return summary.additional_properties.get(P.LAKE_OPERATION) == P.COMPACT_FILES


def is_ancestor(table: Table, older: int, newer: int) -> bool:
    """True if snapshot `older` is a strict ancestor of `newer` (both still in `table`)."""
    start = table.metadata.snapshot_by_id(newer)
    if older == newer or start is None:
        return False
    return any(s.snapshot_id == older for s in ancestors_of(start, table.metadata))


@dataclass
class BronzeHistory:
    """Cached per-snapshot partition changes of one Bronze table (reads each manifest once).

    Args:
        table: the Bronze table.
        partition_of: the partition a Bronze data or delete file counts for; Silver passes
            the Silver partition it lands in, so a Bronze partition-spec change (files of two
            specs for one Silver partition) is followed.
    """

    table: Table
    partition_of: Callable[[DataFile], PartitionId]
    _touched: dict[int, set[PartitionId]] = field(default_factory=dict)

    def touched(self, snapshot: Snapshot) -> set[PartitionId]:
        """Partitions in which `snapshot` itself added or removed data or delete files."""
        sid = snapshot.snapshot_id
        if sid not in self._touched:
            parts: set[PartitionId] = set()
            for manifest in snapshot.manifests(self.table.io):
                if manifest.added_snapshot_id != sid:
                    continue  # written by an older snapshot: holds none of this one's changes
                for entry in manifest.fetch_manifest_entry(self.table.io, discard_deleted=False):
                    if entry.snapshot_id == sid and entry.status in (
                        ManifestEntryStatus.ADDED,
                        ManifestEntryStatus.DELETED,
                    ):
                        parts.add(self.partition_of(entry.data_file))
            self._touched[sid] = parts
        return self._touched[sid]

    def _path(self, newer: int, older: int) -> list[Snapshot] | None:
        """Snapshots after `older` up to and including `newer`, if `older` is an ancestor."""
        start = self.table.metadata.snapshot_by_id(newer)
        if start is None:
            return None
        path: list[Snapshot] = []
        for snap in ancestors_of(start, self.table.metadata):
            if snap.snapshot_id == older:
                return path
            path.append(snap)
        return None

    def rows_unchanged(self, a: int, b: int, partition: PartitionId) -> bool:
        """True if only rewrites touched `partition` between snapshots `a` and `b` (any order).

        False when neither is an ancestor of the other (e.g. one was expired).
        """
        if a == b:
            return True
        path = self._path(b, a)
        if path is None:
            path = self._path(a, b)
        if path is None:
            return False
        return all(is_rewrite(s) or partition not in self.touched(s) for s in path)

    def changed_since(self, older: int, newer: int) -> set[PartitionId] | None:
        """Partitions whose rows may differ between `older` and `newer` (None: not an ancestor)."""
        path = self._path(newer, older)
        if path is None:
            return None
        changed: set[PartitionId] = set()
        for snap in path:
            if not is_rewrite(snap):
                changed |= self.touched(snap)
        return changed
