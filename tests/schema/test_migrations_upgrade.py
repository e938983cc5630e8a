"""Upgrading a lake made by the first release (378a778) in place: its migration ledger, the
pending-migration warning of `lake status` / `lake serve`, and dead letters on a table that
migration 0002 has not reached yet.

The first release's state is built here from what it recorded (its ledger row format and the
checksum of its bytes of migration 0001); no code of that release runs.

Budget: ~6 s (SQLite catalog, file warehouse, no servers).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.types import LongType
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import MigrationError
from iceberg_lake.ingest.dead_letters import DeadLetter, dead_letter_table
from iceberg_lake.ingest.redrive import read_dead_letters, redrive
from iceberg_lake.schema.migrations import (
    EARLIER_CHECKSUMS,
    MigrationLedger,
    MigrationRunner,
    ledger_table,
    pending_warning,
)
from iceberg_lake.tables import DEAD_LETTERS_TABLE, TableRegistry, registry

#: sha256 of `git show 378a778:migrations/0001_trades_conditions.py`: the checksum every lake of
#: the first release holds for 0001 (its file imported `iceberg_lake.migrations`).
V1_CHECKSUM_0001 = "94bce44e2fe64fe815fd5a1d50034d76a036a5668204fe1d2f87d12557e1d216"
TRADES = "bronze.stocks_trades"
BASE_NS = 1_716_470_000_000_000_000


def _settings(tmp_path: Path) -> Settings:
    return load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})


def _env(tmp_path: Path) -> dict[str, str]:
    # A port nothing listens on: status reports NATS unreachable, serve stops at once.
    return {"LAKE_DATA_DIR": str(tmp_path / "lake"), "LAKE_NATS_URL": "nats://127.0.0.1:9"}


def _lake(tmp_path: Path, *args: str):
    return CliRunner().invoke(app, list(args), env=_env(tmp_path))


def _v1_lake(settings: Settings) -> LakeCatalog:
    """Every table as the first release declared it: dead letters without `event_index`."""
    current = registry()
    dl = current.get(DEAD_LETTERS_TABLE)
    v1_dl = dataclasses.replace(
        dl, columns=tuple(c for c in dl.columns if c.name != "event_index"), schema_version=1
    )
    tables = [v1_dl if d.identifier == DEAD_LETTERS_TABLE else d for d in current]
    lake = LakeCatalog(settings, tables=TableRegistry(tables))
    lake.init()
    return lake


def _record_as_v1(settings: Settings, version: int, name: str, checksum: str) -> None:
    """A ledger row exactly as the first release's `MigrationLedger.record` wrote it."""
    ledger = MigrationLedger(settings.catalog_uri, settings.catalog_name)
    try:
        ledger.ensure()
        with ledger.engine.begin() as conn:
            conn.execute(
                sa.insert(ledger_table).values(
                    catalog_name=settings.catalog_name,
                    version=version,
                    name=name,
                    checksum=checksum,
                    applied_at=datetime(2026, 11, 27, 3, tzinfo=UTC).isoformat(timespec="seconds"),
                    duration_ms=12,
                    applied_by="v1-host:4242",
                    changes="bronze.stocks_trades: skip: add column conditions string (optional)"
                    " (column already exists)",
                )
            )
    finally:
        ledger.close()


def test_a_first_release_ledger_upgrades_in_place(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _v1_lake(settings)
    _record_as_v1(settings, 1, "trades_conditions", V1_CHECKSUM_0001)
    assert V1_CHECKSUM_0001 in EARLIER_CHECKSUMS["0001_trades_conditions"]

    status = json.loads(_lake(tmp_path, "migrate", "status", "-o", "json").output)
    assert [(r["name"], r["state"]) for r in status] == [
        ("trades_conditions", "applied"),
        ("dead_letters_event_index", "pending"),
    ]
    warning = "1 migration(s) pending (0002_dead_letters_event_index): run `lake migrate up`"
    lake_status = _lake(tmp_path, "status", "--nats-timeout", "0.2")
    assert lake_status.exit_code == 0, lake_status.output
    assert lake_status.output.splitlines()[0] == f"warning {warning}"
    as_json = _lake(tmp_path, "status", "--nats-timeout", "0.2", "-o", "json")
    assert json.loads(as_json.output)["migrations_warning"] == warning
    serve = _lake(tmp_path, "serve", "--until-idle")
    assert serve.exit_code == 1  # NATS unreachable; the warning came first
    assert serve.output.splitlines()[0] == f"warning: {warning}"

    up = _lake(tmp_path, "migrate", "up")
    assert up.exit_code == 0, up.output
    assert "applied 0002_dead_letters_event_index" in up.output
    assert "0001" not in up.output
    lake = LakeCatalog(settings)
    assert "event_index" in lake.load_table(DEAD_LETTERS_TABLE).schema().column_names
    check = _lake(tmp_path, "migrate", "check")
    assert check.exit_code == 0, check.output
    assert "no drift" in check.output
    assert pending_warning(lake) is None
    again = _lake(tmp_path, "status", "--nats-timeout", "0.2")
    assert "migrat" not in again.output
    assert _lake(tmp_path, "migrate", "up").output.startswith("nothing to apply")


def test_no_warning_for_pending_steps_that_change_nothing(tmp_path: Path) -> None:
    """A lake `lake init` made is in the newest shape: its pending steps are recorded no-ops."""
    lake = LakeCatalog(_settings(tmp_path))
    lake.init()
    runner = MigrationRunner(lake)
    try:
        assert {s.state for s in runner.status()} == {"pending"}
    finally:
        runner.close()
    assert pending_warning(lake) is None
    assert "migrat" not in _lake(tmp_path, "status", "--nats-timeout", "0.2").output


@pytest.mark.parametrize(
    ("version", "name", "checksum"),
    [
        # 0001 as the first release shipped it, then edited: not a checksum any release wrote.
        (1, "trades_conditions", "0" * 64),
        # An earlier checksum belongs to its own migration only.
        (2, "dead_letters_event_index", V1_CHECKSUM_0001),
    ],
)
def test_an_edited_migration_is_still_refused(
    tmp_path: Path, version: int, name: str, checksum: str
) -> None:
    settings = _settings(tmp_path)
    _v1_lake(settings)
    if version == 2:
        _record_as_v1(settings, 1, "trades_conditions", V1_CHECKSUM_0001)
    _record_as_v1(settings, version, name, checksum)
    runner = MigrationRunner(LakeCatalog(settings))
    try:
        assert [s.state for s in runner.status()][version - 1] == "edited"
        with pytest.raises(MigrationError, match=f"{version:04d}_{name} was edited"):
            runner.up()
    finally:
        runner.close()
    up = _lake(tmp_path, "migrate", "up")
    assert up.exit_code == 1 and "was edited after it was applied" in up.output
    assert _lake(tmp_path, "migrate", "check").exit_code == 1
    warning = pending_warning(LakeCatalog(settings))
    assert warning is not None and f"{version:04d}_{name} edited" in warning


def _letter(seq: int, event: int | None, raw: bytes = b"{}") -> DeadLetter:
    return DeadLetter(BASE_NS, TRADES, "market.stocks.trades", "MARKET", seq, "bad", raw, event)


def test_rejected_events_need_the_event_index_column(tmp_path: Path) -> None:
    lake = _v1_lake(_settings(tmp_path))
    table = lake.load_table(DEAD_LETTERS_TABLE)
    v1_schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    # Whole messages are named by (stream, seq) alone: still stored.
    assert dead_letter_table([_letter(5, None)], v1_schema).num_rows == 1
    with pytest.raises(MigrationError, match="run `lake migrate up`") as caught:
        dead_letter_table([_letter(5, None), _letter(6, 1), _letter(6, 3)], v1_schema)
    assert "2 rejected event(s)" in str(caught.value) and "MARKET.6.1" in str(caught.value)
    new_schema = v1_schema.append(pa.field("event_index", pa.int32()))
    rows = dead_letter_table([_letter(6, 1), _letter(6, 3)], new_schema)
    assert rows.column("event_index").to_pylist() == [1, 3]


def _event(i: int, size: int) -> bytes:
    ts = BASE_NS + i
    return json.dumps(
        {
            "ts_event_ns": ts,
            "ts_recv_ns": ts + 1000,
            "source": "idx",
            "symbol": "SPY",
            "price": 500.0,
            "size": size,
            "exchange": 4,
            "seq": i,
        }  # fmt: skip
    ).encode()


def test_dead_letters_sharing_an_id_are_redriven_together(tmp_path: Path) -> None:
    """Events of one message stored before migration 0002 (no `event_index`) share an id: a
    replay re-drives them all once every one passes, never some of them (the id is recorded
    once, so the rest would count as re-driven without being stored)."""
    settings = _settings(tmp_path)
    lake = _v1_lake(settings)
    quarantine = lake.load_table(DEAD_LETTERS_TABLE)
    schema = schema_to_pyarrow(quarantine.schema(), include_field_ids=False)
    # As main's writer stored them on the upgraded lake before this fix: event_index dropped.
    letters = [
        _letter(7, None, _event(1, 70_000)),  # passes today
        _letter(7, None, _event(3, 3_000_000_000)),  # above int32 until `size` is widened
        _letter(8, None, _event(5, 10)),  # a whole message of its own: passes
    ]
    quarantine.append(dead_letter_table(letters, schema))
    stored = read_dead_letters(lake, TRADES)
    assert [d.label for d in stored] == ["MARKET.7", "MARKET.7", "MARKET.8"]

    first = redrive(lake, TRADES)
    by_seq = [(o.letter.stream_seq, o.status) for o in first.outcomes]
    assert sorted(by_seq) == [(7, "still-failing"), (7, "still-failing"), (8, "redriven")]
    held = [o for o in first.outcomes if o.letter.raw == letters[0].raw][0]
    assert "shares its id MARKET.7" in held.reason
    assert lake.load_table(TRADES).scan().to_arrow().column("seq").to_pylist() == [5]

    with lake.load_table(TRADES).update_schema() as update:
        update.update_column("size", LongType())
    second = redrive(LakeCatalog(settings), TRADES)
    assert second.count("redriven") == 2 and second.count("already-redriven") == 1
    rows = LakeCatalog(settings).load_table(TRADES).scan().to_arrow()
    assert sorted(rows.column("seq").to_pylist()) == [1, 3, 5]
    assert redrive(LakeCatalog(settings), TRADES).count("already-redriven") == 3
