"""`--as-of <time>` around ref moves (rollbacks, publishes) and expiry: exact, or refused, never
another snapshot (review14d's repros of the rule before f7c2d61's follow-up; budget ~10 s).

A ref move can go to an OLDER snapshot; once that one is expired it leaves no gap in the
sequence numbers above the entry before it, so neither "the next sequence number" nor "no
number missing above" proves that nothing happened between two kept entries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_retention import HOUR_MS, TRADES, _at, _commit, _expire_unprotected, _lake, _Now

from iceberg_lake.timetravel import snapshots


def test_rollback_to_older_snapshot_then_its_expiry_reads_the_rolled_back_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X, A, rollback to X, B (parent X, seq = A's + 1); pyiceberg expires X.
    Between the rollback and B, X was current -- resolve_as_of must not say A."""
    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    x = _commit(catalog, 0)
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 20 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(x).commit()
    now.ms = h0 + 30 * 60_000
    b = _commit(catalog, 2)
    monkeypatch.undo()
    t = _at(h0 + 25 * 60_000)
    assert snapshots.resolve_as_of(catalog.load_table(TRADES), t) == x  # exact before expiry
    catalog.load_table(TRADES).maintenance.expire_snapshots().by_id(x).commit()
    table = catalog.load_table(TRADES)
    assert table.snapshot_by_id(x) is None and table.snapshot_by_id(a) is not None
    try:
        got = snapshots.resolve_as_of(table, t)
    except snapshots.TimeTravelError:
        got = None
    assert got != a, f"as-of {t} answered A ({a}); X ({x}) was current then (B={b})"


def _resolve(catalog, t):  # noqa: ANN001, ANN202
    try:
        return snapshots.resolve_as_of(catalog.load_table(TRADES), t)
    except snapshots.TimeTravelError:
        return None


def test_lake_expiry_of_the_rolled_back_to_snapshot_answers_with_the_bad_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Good X, bad load A, rollback to X, B; the lake's own expiry (30 min window) drops X
    (older than the cut) and keeps A: as-of between the rollback and B reads the bad load."""
    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    x = _commit(catalog, 0)
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 20 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(x).commit()
    now.ms = h0 + 30 * 60_000
    _commit(catalog, 2)
    monkeypatch.undo()
    t = _at(h0 + 25 * 60_000)
    assert _resolve(catalog, t) == x
    _expire_unprotected(catalog, h0 + 38 * 60_000)  # cut at h0+8 min: X goes, A stays
    table = catalog.load_table(TRADES)
    assert table.snapshot_by_id(x) is None and table.snapshot_by_id(a) is not None
    assert _resolve(catalog, t) != a, "as-of answered the rolled-back bad load A"


def test_rollback_to_older_and_back_then_expiry_answers_a_through_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X, A, rollback to X, rollback to A, C; X expired: the A->A ref move passes the gap check
    (X's sequence number is below A's), so as-of while X was current answers A."""
    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    x = _commit(catalog, 0)
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 20 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(x).commit()
    now.ms = h0 + 30 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(a).commit()
    now.ms = h0 + 40 * 60_000
    _commit(catalog, 2)
    monkeypatch.undo()
    t = _at(h0 + 25 * 60_000)
    assert _resolve(catalog, t) == x
    catalog.load_table(TRADES).maintenance.expire_snapshots().by_id(x).commit()
    assert _resolve(catalog, t) != a, "as-of answered A; X was current"


def test_checkpoint_of_the_hour_tagged_on_a_snapshot_not_current_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X, A, rollback to X, then B in the next hour; X expired by pyiceberg before the lake
    tags the hour: maintain_refs tags hour h0 on A (X was current at its end)."""
    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    x = _commit(catalog, 0)
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 20 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(x).commit()
    now.ms = h0 + 90 * 60_000
    _commit(catalog, 2)
    monkeypatch.undo()
    catalog.load_table(TRADES).maintenance.expire_snapshots().by_id(x).commit()
    snapshots.maintain_refs(
        catalog.load_table(TRADES), TRADES, checkpoint_max_age_ms=30 * 86_400_000
    )
    refs = catalog.load_table(TRADES).metadata.refs
    tag = refs.get(snapshots.checkpoint_tag(TRADES, h0))
    assert tag is None or tag.snapshot_id != a, "hour h0's checkpoint names A; X was current"


def test_publish_of_an_older_staged_snapshot_then_its_expiry_answers_the_head_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAP: S staged (seq 2), main commit A (seq 3), publish S (set current), B on top of S
    (seq 4 = A's + 1); wap branch dropped, S expired: as-of after the publish answers A."""
    from test_retention import T14, to_arrow, trades  # noqa: PLC0415

    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    p = _commit(catalog, 0)
    now.ms = h0 + 8 * 60_000
    table = catalog.load_table(TRADES)
    table.manage_snapshots().create_branch(p, "wap").commit()
    table.append(to_arrow(table, trades("SPY", T14 + 10**11, 7, 10**6)), branch="wap")
    staged = catalog.load_table(TRADES).metadata.refs["wap"].snapshot_id
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 20 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(staged).commit()
    catalog.load_table(TRADES).manage_snapshots().remove_branch("wap").commit()
    now.ms = h0 + 30 * 60_000
    _commit(catalog, 2)
    monkeypatch.undo()
    t = _at(h0 + 25 * 60_000)
    assert _resolve(catalog, t) == staged
    catalog.load_table(TRADES).maintenance.expire_snapshots().by_id(staged).commit()
    assert _resolve(catalog, t) != a, "as-of answered A; the published S was current"


def test_a_tagged_bad_load_makes_the_wrong_answer_permanent_under_the_lakes_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the bad load A carries a user tag (kept for the incident) and the lake's
    expiry runs hours later: X goes, A stays, and as-of between rollback and B reads A forever."""
    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    x = _commit(catalog, 0)
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 20 * 60_000
    catalog.load_table(TRADES).manage_snapshots().set_current_snapshot(x).commit()
    catalog.load_table(TRADES).manage_snapshots().create_tag(a, "incident-bad-load").commit()
    now.ms = h0 + 30 * 60_000
    _commit(catalog, 2)
    monkeypatch.undo()
    t = _at(h0 + 25 * 60_000)
    assert _resolve(catalog, t) == x
    _expire_unprotected(catalog, h0 + 150 * 60_000)
    table = catalog.load_table(TRADES)
    assert table.snapshot_by_id(x) is None and table.snapshot_by_id(a) is not None
    assert _resolve(catalog, t) != a, "as-of answered the rolled-back bad load A"


def test_skewed_writer_clock_hides_a_snapshot_from_every_as_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer 2's clock is 3 min behind writer 1's: B (parent A) is stamped before A, and
    pyiceberg keeps the log out of order. Inside that stretch which snapshot was current cannot
    be told: refused (it answered B, whose parent A had not even been committed by its stamp)."""
    catalog, _ = _lake(tmp_path)
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 5 * 60_000)
    x = _commit(catalog, 0)
    now.ms = h0 + 10 * 60_000
    a = _commit(catalog, 1)
    now.ms = h0 + 8 * 60_000  # skewed host, really committed at ~h0+11
    b = _commit(catalog, 2)
    monkeypatch.undo()
    table = catalog.load_table(TRADES)
    assert [e.timestamp_ms - h0 for e in table.history()] == [300_000, 600_000, 480_000]
    got = {m: _resolve(catalog, _at(h0 + m * 60_000)) for m in (6, 9, 10)}
    assert got == {6: x, 9: None, 10: None}, (got, a, b)
