"""The replay manifest: its format, reading one back, and comparing a re-run with it.

Reproducibility. `ReplayEngine.manifest()` records the tables, the snapshot ids, the range, the
event count and a SHA-256 over the canonical encoding of every event in order (`table`,
`\\x1f`, the row as JSON with sorted keys, `\\n`). `ReplayEngine.from_manifest()` replays exactly
the same pins; the same hash proves the same sequence, whichever output produced it (the
encoding and hash are the same as in every earlier version: `tests/test_replay_compat.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from iceberg_lake.exceptions import TimeTravelError
from iceberg_lake.timetravel.nanos import iso_utc
from iceberg_lake.timetravel.order import TIE_BREAK_RULE, TIE_BREAKS
from iceberg_lake.timetravel.snapshots import AsOfSpec

__all__ = [
    "MANIFEST_FORMAT",
    "TIE_BREAK",
    "compare_manifests",
    "describe_as_of",
    "iso_utc",
    "read_manifest",
]

MANIFEST_FORMAT = "iceberg-lake-replay/1"
#: The tie-break new manifests record (`order.TIE_BREAKS`).
TIE_BREAK = TIE_BREAKS[TIE_BREAK_RULE]


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load a manifest written by `ReplayEngine.write_manifest`.

    Raises:
        TimeTravelError: not a readable replay manifest.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TimeTravelError(f"cannot read replay manifest {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise TimeTravelError(f"{path} is not a replay manifest ({MANIFEST_FORMAT})")
    return data


def _short(sequence_hash: str | None) -> str:
    return "no hash" if sequence_hash is None else sequence_hash[:19] + "…"


def compare_manifests(recorded: Mapping[str, Any], replayed: Mapping[str, Any]) -> str | None:
    """Why a replay of `recorded` (`from_manifest`) did not reproduce it, or None if it did.

    The event count is compared when both runs are complete (an interrupted run's count covers
    only the windows it read), the sequence hash when both manifests also have one
    (`--no-verify` runs have none).

    Returns:
        None, or one line: `<count> events, <hash> where the manifest recorded <count>, <hash>`.
    """
    if not (recorded.get("complete", True) and replayed.get("complete", True)):
        return None
    count, want_count = replayed.get("event_count"), recorded.get("event_count")
    got_hash, want_hash = replayed.get("sequence_hash"), recorded.get("sequence_hash")
    count_differs = want_count is not None and count != want_count
    hash_differs = want_hash is not None and got_hash is not None and got_hash != want_hash
    if not (count_differs or hash_differs):
        return None
    return (
        f"{count} events, {_short(got_hash)} where the manifest recorded {want_count} events, "
        f"{_short(want_hash)}"
    )


def describe_as_of(as_of: AsOfSpec) -> Any:
    """`as_of` as the manifest records it (JSON-ready: datetimes as ISO 8601 strings)."""
    if isinstance(as_of, Mapping):
        return {k: describe_as_of(v) for k, v in as_of.items()}
    if isinstance(as_of, datetime):
        return as_of.isoformat()
    return as_of
