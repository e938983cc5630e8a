"""Messages the stream removed before a live read got them: the runs, merged and counted, and
the one-line warning that names them.

Messages the stream removed (limits, purges, deletes) after a watermark before anyone read them
are reported (`LiveRange.removed`, the replay manifest, `Freshness.live_warning`), never dropped
silently. A live replay accounts for every stream sequence of its range (received, skipped
between two received ones, or after the last one) and reports exactly the sequences removed
before it received them, while it reads (`LiveTail._check_gaps`, `nats_tail.check_followers`).
The runs are listed up to `MAX_LISTED_GAPS` per table and counted beyond; a warning names at
most `WARNING_RUNS` of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = [
    "MAX_LISTED_GAPS",
    "WARNING_RUNS",
    "GapLog",
    "merge_envelopes",
    "merge_runs",
    "removed_warning",
]

#: Runs of removed sequences listed per table (`LiveRange.gaps`, the replay manifest); the
#: ones beyond are counted (`unlisted_gaps`, `unlisted_removed`), their envelope in `removed`.
MAX_LISTED_GAPS = 1_000
#: Runs a warning line names; the others are summed up ("and N more runs (M sequences)").
WARNING_RUNS = 5


def removed_warning(
    table: str,
    stream: str,
    subject: str,
    removed: tuple[int, int],
    *,
    inferred: bool = False,
    runs: Sequence[tuple[int, int]] = (),
    more_runs: int = 0,
    more_seqs: int = 0,
) -> str:
    """The one-line warning for stream sequences removed before `table` committed them.

    `removed` is their envelope; `runs`, when given, the runs of removed sequences in it (the
    sequences between them were read); `more_runs`/`more_seqs` runs (sequences) not in `runs`.
    At most `WARNING_RUNS` runs are named; the rest are counted.
    """
    lo, hi = removed
    which = f"{subject} messages" + (" (or ones schema inference routes here)" if inferred else "")
    extra_runs = more_runs + max(0, len(runs) - WARNING_RUNS)
    extra_seqs = more_seqs + sum(b - a + 1 for a, b in runs[WARNING_RUNS:])
    if len(runs) > 1 or (runs and extra_runs):
        seqs = ", ".join(f"{a}..{b}" for a, b in runs[:WARNING_RUNS])
        if extra_runs:
            seqs += f" and {extra_runs:,} more runs ({extra_seqs:,} sequences)"
    else:
        seqs = f"{lo}..{hi}"
    return (
        f"{table}: stream {stream} no longer holds seq {seqs} (removed by its limits "
        f"max_age/max_bytes/max_msgs, a purge or a delete, before the table committed them): any "
        f"{which} among them are missing from the live view"
    )


class GapLog:
    """The runs of stream sequences one table's tail found removed: merged as they come (one
    bisect each, no re-sort), the first `MAX_LISTED_GAPS` listed, the ones beyond counted.

    A run that touches or overlaps a listed one widens it; a run contained in a listed one is
    not new. Unlisted runs are counted by their envelope: a run inside it is not new (counted
    before: a live query looks again at the removed runs after the subject's newest message,
    up to the stream's last sequence, every time), one that overlaps or touches it adds only
    its sequences outside it (the run it continues was counted), any other counts as a new
    run. A run repeated is never counted again; a new run found inside the envelope (out of
    order, from a second follower of the table) is not counted, but `envelope` covers it.
    """

    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []
        self.more_runs = 0
        self.more_seqs = 0
        self._more: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return bool(self.runs) or self._more is not None

    @property
    def envelope(self) -> tuple[int, int] | None:
        """`(first, last)` over every run, listed or not (None: none)."""
        listed = (self.runs[0][0], self.runs[-1][1]) if self.runs else None
        return merge_envelopes(listed, self._more)

    def add(self, lo: int, hi: int) -> bool:
        """Record `lo..hi`; True when it held sequences not recorded before."""
        if hi < lo:
            return False
        runs = self.runs
        i = bisect.bisect_left(runs, (lo, lo))  # the first run starting at or after lo
        k = i
        if i > 0 and runs[i - 1][1] >= lo - 1:
            i -= 1  # the one before touches it
        while k < len(runs) and runs[k][0] <= hi + 1:
            k += 1
        if i < k:
            a, b = runs[i][0], runs[k - 1][1]
            if k - i == 1 and a <= lo and hi <= b:
                return False
            runs[i:k] = [(min(a, lo), max(b, hi))]
            return True
        if len(runs) < MAX_LISTED_GAPS:
            runs.insert(i, (lo, hi))
            return True
        more = self._more
        if more is None:
            self.more_runs += 1
            self.more_seqs += hi - lo + 1
        elif more[0] <= lo and hi <= more[1]:
            return False  # counted before
        else:
            inside = max(0, min(hi, more[1]) - max(lo, more[0]) + 1)
            self.more_seqs += hi - lo + 1 - inside
            if hi < more[0] - 1 or lo > more[1] + 1:
                self.more_runs += 1  # apart from every run counted
        self._more = merge_envelopes(more, (lo, hi))
        return True

    def trim(self, upto: int) -> None:
        """Forget sequences at or below `upto` (a commit now holds whatever of them was the
        table's). Unlisted counts are kept while their envelope reaches beyond (at most)."""
        runs = self.runs
        i = bisect.bisect_left(runs, (upto + 1, upto + 1))
        if i > 0 and runs[i - 1][1] > upto:
            i -= 1
        self.runs = [(max(lo, upto + 1), hi) for lo, hi in runs[i:]]
        if self._more is not None:
            if self._more[1] <= upto:
                self._more, self.more_runs, self.more_seqs = None, 0, 0
            else:
                self._more = (max(self._more[0], upto + 1), self._more[1])


def merge_runs(runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """`runs` sorted, overlapping or adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(runs):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def merge_envelopes(a: tuple[int, int] | None, b: tuple[int, int] | None) -> tuple[int, int] | None:
    """The envelope `(first, last)` of two ranges (None: neither)."""
    if a is None or b is None:
        return a or b
    return (min(a[0], b[0]), max(a[1], b[1]))
