"""`lake snapshot pin-manifest`: pin a stored replay manifest without replaying it.

The case is a manifest the first release wrote (no `pin_tag`: its pins were not tagged) on a
lake whose maintenance now expires old snapshots within hours.

Budget: ~4 s (SQLite catalog, file warehouse, no servers).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from timetravel_data import HOUR_NS, T14, append, trades
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.timetravel.replay import ReplayEngine
from iceberg_lake.timetravel.snapshots import replay_pin_name

TRADES = "bronze.stocks_trades"
runner = CliRunner()


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


def _v1_manifest(catalog: LakeCatalog, snapshot_id: int, path: Path) -> dict:
    """A manifest as the first release wrote it: the replay's pins, no `pin_tag` key."""
    engine = ReplayEngine(catalog, [TRADES], T14, T14 + HOUR_NS, {TRADES: snapshot_id}, pin=False)
    events = sum(1 for _ in engine.events())
    manifest = engine.manifest()
    del manifest["pin_tag"]
    assert events == manifest["event_count"] > 0
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _replay(manifest: Path, out: Path, env: dict[str, str]):  # noqa: ANN202
    """`lake replay --from-manifest` (a CLI result)."""
    args = ["replay", "--from-manifest", str(manifest), "--out", str(out), "--no-progress"]
    return runner.invoke(app, args, env=env)


def _three_snapshots(tmp_path: Path) -> tuple[dict[str, str], LakeCatalog, int, int]:
    """A fresh lake whose trades table has three snapshots: (env, catalog, first, second)."""
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake")}
    catalog = LakeCatalog(load_settings(env))
    catalog.init()
    table = catalog.load_table(TRADES)
    s1 = append(table, trades("SPY", T14, 5, 10**6))
    s2 = append(table, trades("SPY", T14 + 10**9, 5, 10**6, seq0=5))
    append(table, trades("SPY", T14 + 2 * 10**9, 5, 10**6, seq0=10))
    return env, catalog, s1, s2


def test_pin_manifest_keeps_an_untagged_manifest_reproducible_after_expiry(
    tmp_path: Path,
) -> None:
    env, catalog, s1, s2 = _three_snapshots(tmp_path)
    pinned, unpinned = tmp_path / "v1-a.json", tmp_path / "v1-b.json"
    recorded = _v1_manifest(catalog, s1, pinned)
    _v1_manifest(catalog, s2, unpinned)
    assert set(catalog.load_table(TRADES).metadata.refs) == {"main"}

    res = runner.invoke(app, ["snapshot", "pin-manifest", str(pinned)], env=env)
    assert res.exit_code == 0, res.output
    tag = replay_pin_name([TRADES], {TRADES: s1}, T14, T14 + HOUR_NS)
    assert f"{pinned}: pinned as {tag} for 90 days ({TRADES}@{s1})" in res.output
    refs = catalog.load_table(TRADES).metadata.refs
    assert refs[tag].snapshot_id == s1 and refs[tag].max_ref_age_ms is not None
    # Idempotent, and the same tag a replay of the manifest makes (JSON output for scripts).
    again = runner.invoke(app, ["snapshot", "pin-manifest", str(pinned), "-o", "json"], env=env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)[0]["pin_tag"] == tag

    expired = runner.invoke(app, ["maintain", "expire-snapshots", "--older-than", "0s"], env=env)
    assert expired.exit_code == 0, expired.output
    kept = {s.snapshot_id for s in catalog.load_table(TRADES).metadata.snapshots}
    assert s1 in kept and s2 not in kept  # the control: the unpinned manifest's snapshot is gone

    out = tmp_path / "m2.json"
    replayed = runner.invoke(
        app,
        ["replay", "--from-manifest", str(pinned), "--manifest", str(out),
         "--out", str(tmp_path / "e.ndjson"), "--no-progress"],
        env=env,
    )  # fmt: skip
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(out.read_text())["sequence_hash"] == recorded["sequence_hash"]

    late = runner.invoke(app, ["snapshot", "pin-manifest", str(pinned), str(unpinned)], env=env)
    assert late.exit_code == 1
    assert f"{pinned}: pinned as {tag}" in late.output
    assert late.output.splitlines()[-1].startswith(f"error: {unpinned}: ")
    assert f"no snapshot {s2}" in late.output


def test_a_rerun_never_shortens_a_pin_and_an_expired_pin_reads_as_one(tmp_path: Path) -> None:
    """A 365-day pin rerun with the default setting (a nightly "does it still reproduce" job)
    was cut back to 90 days, and the snapshot expired before the backtest was needed again;
    the refusal then asked whether the recorded snapshot id was a time (history18)."""
    env, catalog, s1, s2 = _three_snapshots(tmp_path)
    manifest, unpinned = tmp_path / "keep.json", tmp_path / "gone.json"
    _v1_manifest(catalog, s1, manifest)
    _v1_manifest(catalog, s2, unpinned)
    tag = replay_pin_name([TRADES], {TRADES: s1}, T14, T14 + HOUR_NS)

    def age_days() -> float:
        ref = catalog.load_table(TRADES).metadata.refs[tag]
        assert ref.max_ref_age_ms is not None
        return ref.max_ref_age_ms / 86_400_000

    long = {**env, "LAKE_REPLAY_PIN_MAX_AGE_DAYS": "365"}
    assert runner.invoke(app, ["snapshot", "pin-manifest", str(manifest)], env=long).exit_code == 0
    assert 365 <= age_days() < 366
    snapshots = len(catalog.load_table(TRADES).metadata.snapshots)
    rerun = _replay(manifest, tmp_path / "e.ndjson", env)
    assert rerun.exit_code == 0, rerun.output
    assert 365 <= age_days() < 366  # kept, not cut to the rerunner's 90 days
    assert len(catalog.load_table(TRADES).metadata.snapshots) == snapshots
    longer = {**env, "LAKE_REPLAY_PIN_MAX_AGE_DAYS": "400"}
    assert (
        runner.invoke(app, ["snapshot", "pin-manifest", str(manifest)], env=longer).exit_code == 0
    )
    assert 400 <= age_days() < 401  # a longer setting extends it

    expired = runner.invoke(app, ["maintain", "expire-snapshots", "--older-than", "0s"], env=env)
    assert expired.exit_code == 0, expired.output
    late = _replay(unpinned, tmp_path / "x.ndjson", env)
    assert late.exit_code == 1
    assert f"no snapshot {s2} (expired" in late.output and "is a time" not in late.output
