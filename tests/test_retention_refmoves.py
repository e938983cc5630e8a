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
from timetravel_data import T14, to_arrow, trades

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
    got = {m: _resolve(catalog, _at(h0 + int(m * 60_000))) for m in (6, 9, 10, 10.5, 12.5)}
    # Refused from b's stamp to a's stamp plus the skew they show (b landed after a's stamp;
    # review14e: at 10.5 it answered b, which had not landed yet).
    assert got == {6: ids["x"], 9: None, 10: None, 10.5: None, 12.5: ids["b"]}, got


def test_v1_table_after_pyiceberg_expiry_reads_empty_at_a_time_it_had_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review14e: a format-v1 table (every sequence number 0): pyiceberg's expiry of a blanks
    b's parent, and the 'before the first snapshot: empty' rule read a time when a was current
    as an empty table."""
    catalog, _ = _lake(tmp_path)
    base = catalog.load_table(TRADES)
    cat = catalog.catalog
    cat.create_table(
        "bronze.v1_trades",
        schema=base.schema(),
        partition_spec=base.spec(),
        properties={"format-version": "1"},
    )
    h0 = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
    now = _Now(monkeypatch, h0 + 10 * 60_000)
    ids = []
    for i, minute in enumerate((10, 20, 30)):
        now.ms = h0 + minute * 60_000
        t = cat.load_table("bronze.v1_trades")
        t.append(to_arrow(t, trades("SPY", T14 + i * 10**10, 2, 10**6)))
        ids.append(t.current_snapshot().snapshot_id)
    monkeypatch.undo()
    a = ids[0]
    t = cat.load_table("bronze.v1_trades")
    assert t.metadata.format_version == 1
    at15 = _at(h0 + 15 * 60_000)
    assert snapshots.resolve_as_of(t, at15) == a
    t.maintenance.expire_snapshots().by_id(a).commit()
    t = cat.load_table("bronze.v1_trades")
    with pytest.raises(snapshots.TimeTravelError):  # not "empty": a had 2 rows then
        snapshots.resolve_as_of(t, at15)


def test_only_the_lakes_own_checkpoints_vouch_for_their_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review14e: a user's tag named like a checkpoint (`lake snapshot tag` accepted it) was
    trusted as "current at that hour's end". The lake's prefixes are refused for user tags,
    and a ref named like a checkpoint that the lake did not make (no max-ref-age) vouches for
    nothing."""
    catalog, _ = _lake(tmp_path)
    h0, ids = _play(catalog, monkeypatch, [(10, "a"), (20, "b"), (180, "c")])
    hour = time.strftime("%Y%m%dT%H", time.gmtime((h0 + HOUR_MS) / 1000))
    with pytest.raises(snapshots.TimeTravelError, match="the lake's own refs"):
        snapshots.create_tag(catalog, f"checkpoint-desk-eod-{hour}")
    own = snapshots.checkpoint_tag(TRADES, h0)  # as a Spark user could make it, no max age
    catalog.load_table(TRADES).manage_snapshots().create_tag(ids["a"], own).commit()
    _expire(catalog, ids["b"])
    assert _resolve(catalog, _at(h0 + 30 * 60_000)) != ids["a"]


def test_ordinary_writer_flow_with_inline_expiry_keeps_hourly_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stricter rules must not refuse the ordinary flow (review14e, checked): writer commits
    every 5 min for 6 h with the writers' in-line policy (expire + fold) after each and a 1 h
    window: every closed hour gets a checkpoint, every as-of in the window answers."""
    import iceberg_lake.ops.maintenance as m
    from iceberg_lake.ops.maintenance import expire_inline

    catalog, _ = _lake(tmp_path, LAKE_BRONZE_SNAPSHOT_RETENTION_SECONDS="3600")
    h0 = (int(time.time() * 1000) // HOUR_MS - 8) * HOUR_MS
    now = _Now(monkeypatch, h0)

    class _MDT(m.datetime):  # type: ignore[misc, valid-type]
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return m.datetime.fromtimestamp(now.ms / 1000, tz)

    monkeypatch.setattr(m, "datetime", _MDT)
    heads = {}
    for i in range(72):
        now.ms = h0 + i * 5 * 60_000 + 7_000
        _commit(catalog, i)
        table = catalog.load_table(TRADES)
        expire_inline(catalog, table, TRADES)
        heads[i] = catalog.load_table(TRADES).current_snapshot().snapshot_id
    end = now.ms
    table = catalog.load_table(TRADES)
    ops = [s.summary.additional_properties.get("lake.operation") for s in table.metadata.snapshots]
    assert "fold-manifests" in ops
    tags = sorted(n for n in table.metadata.refs if n.startswith("checkpoint-"))
    assert len(tags) >= 5
    hours = [snapshots.checkpoint_tag(TRADES, h0 + k * HOUR_MS) for k in range(5)]
    missing = [h for h in hours if h not in table.metadata.refs]
    monkeypatch.undo()
    refused = []
    for k in range(5, 0, -1):  # the last 50 min, one per 10 min
        t = end - k * 10 * 60_000
        try:
            snapshots.resolve_as_of(table, _at(t))
        except snapshots.TimeTravelError as exc:
            refused.append((k, str(exc)))
    assert not missing and not refused, (missing, refused)
