"""The typed result of a Silver compaction, readable as the spec's dict as well.

The spec reads results as dicts (`result['rows_written']`, `result.get('rows_written', 0)`,
`results.items()` of `compact_all_schemas`); `CompactionResult` is a frozen dataclass that is
also a read-only `Mapping` with exactly those keys, so both styles work.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["CompactionResult", "CompactionStatus", "merge_results"]

#: `success` (partitions replaced), `unchanged` (nothing to do), `empty` (no Bronze data),
#: `missing` (a table is not in the catalog yet), `error` (this table failed; `error` says why;
#: only in several-table runs, which go on with the other tables).
CompactionStatus = str


@dataclass(frozen=True)
class CompactionResult(Mapping[str, Any]):
    """What one compaction call did to one Silver table (or, merged, to several).

    Attributes:
        status: `success`, `unchanged`, `empty`, `missing` or `error`.
        table: the Silver table (None for a merged result).
        date: the compacted UTC day `YYYY-MM-DD` (None: incremental or every day).
        rows_read: Bronze rows read.
        rows_written: Silver rows written.
        source_snapshot_id: the pinned Bronze snapshot.
        silver_snapshot_id: the last Silver snapshot committed (None: no commit).
        partitions: partitions replaced.
        partitions_unchanged: partitions skipped because their Bronze content is unchanged.
        replaced_partitions: `[partition value, hour or day]` of each replaced partition.
        bytes_read: Bronze bytes read.
        seconds: wall time.
        tables: the per-table results of a merged result (empty otherwise).
        error: why this table failed (status `error`; None otherwise), one line.
    """

    status: CompactionStatus
    table: str | None = None
    date: str | None = None
    rows_read: int = 0
    rows_written: int = 0
    source_snapshot_id: int | None = None
    silver_snapshot_id: int | None = None
    partitions: int = 0
    partitions_unchanged: int = 0
    replaced_partitions: list[list[Any]] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    tables: list[CompactionResult] = field(default_factory=list)
    error: str | None = None

    @property
    def duplicates_removed(self) -> int:
        """Bronze rows dropped as duplicates."""
        return self.rows_read - self.rows_written

    def with_date(self, day: str | None) -> CompactionResult:
        """The same result for `day`."""
        return replace(self, date=day)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (the spec's result dict; `tables` only when merged, `error` only
        when set)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "tables":
                if value:
                    out["tables"] = [r.as_dict() for r in value]
                continue
            if f.name == "error":
                if value is not None:
                    out["error"] = value
                continue
            out[f.name] = value
            if f.name == "rows_written":
                out["duplicates_removed"] = self.duplicates_removed
        return out

    # ---- Mapping: the spec's dict view ------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        try:
            return self.as_dict()[key]
        except KeyError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


_SUMMED = ("rows_read", "rows_written", "partitions", "partitions_unchanged", "bytes_read")


def merge_results(results: Mapping[str, CompactionResult], day: str) -> CompactionResult:
    """One result for a day of several tables: counts summed, the tables kept in `tables`.

    Its status is `error` when any table failed (`error` names them), else the best of the
    others: `success`, `unchanged`, `empty`.
    """
    values = list(results.values())
    statuses = {r.status for r in values}
    failed = [r.table or "?" for r in values if r.status == "error"]
    status = (
        "error"
        if failed
        else "success"
        if "success" in statuses
        else "unchanged"
        if "unchanged" in statuses
        else "empty"
    )
    summed: dict[str, Any] = {k: sum(getattr(r, k) for r in values) for k in _SUMMED}
    return CompactionResult(
        status=status,
        date=day,
        seconds=round(sum(r.seconds for r in values), 3),
        replaced_partitions=[p for r in values for p in r.replaced_partitions],
        tables=values,
        error=f"{len(failed)} of {len(values)} tables failed: {', '.join(failed)}"
        if failed
        else None,
        **summed,
    )
