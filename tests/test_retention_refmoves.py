"""`--as-of <time>` around ref moves (rollbacks, publishes) and expiry: exact, or refused, never
another snapshot (review14d's repros of the rule before f7c2d61's follow-up; budget ~10 s).

A ref move can go to an OLDER snapshot; once that one is expired it leaves no gap in the
sequence numbers above the entry before it, so neither "the next sequence number" nor "no
number missing above" proves that nothing happened between two kept entries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_retention import (
    HOUR_MS,
    TRADES,
    _at,
    _commit,
    _expire,
    _expire_unprotected,
    _lake,
    _Now,
    _play,
    _resolve,
)

from iceberg_lake.timetravel import snapshots

ROLLED_BACK = [(5, "x"), (10, "a"), (20, "->x"), (30, "b")]  # a: a bad load, rolled back


def test_a_rolled_back_to_snapshot_expired_by_pyiceberg_is_not_read_as_the_bad_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the rollback and b, x was current: after x's expiry, never a."""
    catalog, _ = _lake(tmp_path)
    h0, ids = _play(catalog, monkeypatch, ROLLED_BACK)
    t = _at(h0 + 25 * 60_000)
    assert _resolve(catalog, t) == ids["x"]  # exact before expiry
    _expire(catalog, ids["x"])
    assert _resolve(catalog, t) != ids["a"]


def test_a_rolled_back_to_snapshot_expired_by_the_lake_is_not_read_as_the_bad_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lake's own expiry (30 min window, cut at +8 min) drops x and keeps a; with a user tag
    on a (kept for the incident) and a later expiry, the same (a wrong answer would last)."""
    for cut, tag in ((38, False), (150, True)):
        catalog, _ = _lake(tmp_path / f"{cut}")
        h0, ids = _play(catalog, monkeypatch, ROLLED_BACK)
        if tag:
            catalog.load_table(TRADES).manage_snapshots().create_tag(ids["a"], "incident").commit()
        t = _at(h0 + 25 * 60_000)
        assert _resolve(catalog, t) == ids["x"]
        _expire_unprotected(catalog, h0 + cut * 60_000)
        table = catalog.load_table(TRADES)
        assert table.snapshot_by_id(ids["x"]) is None and table.snapshot_by_id(ids["a"])
        assert _resolve(catalog, t) != ids["a"]


def test_a_rollback_away_and_back_then_expiry_is_not_read_through_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x, a, back to x, forth to a, c; x expired: while x was current, never a."""
    catalog, _ = _lake(tmp_path)
    steps = [(5, "x"), (10, "a"), (20, "->x"), (30, "->a"), (40, "c")]
    h0, ids = _play(catalog, monkeypatch, steps)
    t = _at(h0 + 25 * 60_000)
    assert _resolve(catalog, t) == ids["x"]
    _expire(catalog, ids["x"])
    assert _resolve(catalog, t) != ids["a"]


def test_no_checkpoint_names_a_snapshot_not_current_at_its_hours_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x, a, back to x, b in the next hour; x expired before the lake tags the hour: hour h0's
    checkpoint must not name a (x was current at its end)."""
    catalog, _ = _lake(tmp_path)
    h0, ids = _play(catalog, monkeypatch, [(5, "x"), (10, "a"), (20, "->x"), (90, "b")])
    _expire(catalog, ids["x"])
    snapshots.maintain_refs(
        catalog.load_table(TRADES), TRADES, checkpoint_max_age_ms=30 * 86_400_000
    )
    tag = catalog.load_table(TRADES).metadata.refs.get(snapshots.checkpoint_tag(TRADES, h0))
    assert tag is None or tag.snapshot_id != ids["a"]


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


def test_a_log_that_goes_back_in_time_is_refused_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writer 2's clock is 3 min behind writer 1's: b (parent a) is stamped before a, and
    pyiceberg keeps the log out of order. Inside that stretch which snapshot was current cannot
    be told: refused (it answered b, whose parent a had not even been committed by its stamp)."""
    catalog, _ = _lake(tmp_path)
    h0, ids = _play(catalog, monkeypatch, [(5, "x"), (10, "a"), (8, "b")])
    table = catalog.load_table(TRADES)
    assert [e.timestamp_ms - h0 for e in table.history()] == [300_000, 600_000, 480_000]
    got = {m: _resolve(catalog, _at(h0 + m * 60_000)) for m in (6, 9, 10)}
    assert got == {6: ids["x"], 9: None, 10: None}, got
