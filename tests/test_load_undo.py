"""`lake load --undo`: every row a file's loads stored comes back out of Bronze, and Silver
follows (load18, review18b: a load under wrong options could only be loaded again beside
itself; 300,000 trades at 100x price stayed in Silver).

The rows are found by the file's tag in their data files' names and counted against the
ledger; compact-files keeps the tag; a rewrite that loses it is refused with nothing changed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.expressions import AlwaysTrue
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.engine.iceberg import PartitionReplacement, current_data_files, file_tag
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.commit import FileCommitter, ledger_key
from iceberg_lake.load.loader import LoadFailedError
from iceberg_lake.load.undo import UndoRefusedError, UndoResult, undo_file
from iceberg_lake.ops.maintenance import TableMaintenance
from iceberg_lake.silver import SilverCompactor
from tests.load_data import at_commit, polygon_trades, write_csv_gz
from tests.test_load import make_lake

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"
DAY = "2025-12-16"


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    lake = make_lake(tmp_path / "data")
    lake.create_table(lake.definition("silver.stocks_trades"))
    return lake


def _trades(path: Path, n: int, first_id: int = 0, bad: int = 0, bad_every: int = 0) -> Path:
    """Polygon trades with ids from `first_id`; the first `bad` rows, and every `bad_every`-th,
    priced -1 (dead letters)."""
    rows = polygon_trades(n)
    rows["sequence_number"] = [str(first_id + i) for i in range(n)]
    rows["price"] = [
        "-1" if i < bad or bad_every and i % bad_every == 0 else p
        for i, p in enumerate(rows["price"])
    ]
    return write_csv_gz(path, rows)


def _rows(lake: LakeCatalog, table: str, snapshot_id: int | None = None) -> pa.Table:
    t = lake.load_table(table)
    return t.scan(snapshot_id=snapshot_id, selected_fields=("source", "seq")).to_arrow()


def _dead_letters(lake: LakeCatalog) -> list[str]:
    rows = lake.load_table("bronze.dead_letters").scan(selected_fields=("stream",)).to_arrow()
    return sorted(rows.column("stream").to_pylist())


def test_an_undo_takes_a_wrong_load_out_of_bronze_and_silver_and_it_loads_again(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    keep = _trades(tmp_path / "keep.csv.gz", 600, first_id=10_000, bad=2)
    wrong = _trades(tmp_path / "day.csv.gz", 900, bad=3)
    load_file(lake, keep, LoadOptions(table=TABLE, source="sip"))
    # The wrong options, in two commits and a reload, beside the good rows in the same partitions.
    options = LoadOptions(table=TABLE, source="wrong", commit_rows=400)
    assert load_file(lake, wrong, options).rows_stored == 897
    reloaded = load_file(lake, wrong, LoadOptions(table=TABLE, source="wrong2", reload=True))
    assert reloaded.status == "reloaded"
    # compact-files merges the small files of each closed hour, each load's apart.
    merged = TableMaintenance(lake, TABLE).compact_files(older_than=timedelta(0))
    assert merged.files_after < merged.files_before
    SilverCompactor(lake).compact_incremental([TABLE])
    before = lake.load_table(TABLE).current_snapshot()
    assert before is not None
    sources = pc.value_counts(_rows(lake, "silver.stocks_trades").column("source")).to_pylist()
    assert {d["values"]: d["counts"] for d in sources} == {"sip": 598, "wrong": 897, "wrong2": 897}

    (result,) = undo_file(lake, wrong)
    assert (result.status, result.table, result.rows_removed) == ("undone", TABLE, 2 * 897)
    assert result.dead_letters_removed == 6 and result.days == [DAY]
    bronze = _rows(lake, TABLE)
    assert set(bronze.column("source").to_pylist()) == {"sip"} and bronze.num_rows == 598
    assert f"file:{result.sha256}" not in _dead_letters(lake)
    assert len(_dead_letters(lake)) == 2  # keep.csv.gz's own
    # History stays: the snapshot before the undo still reads the wrong rows.
    assert _rows(lake, TABLE, before.snapshot_id).num_rows == 598 + 2 * 897
    SilverCompactor(lake).compact_incremental([TABLE])
    assert set(_rows(lake, "silver.stocks_trades").column("source").to_pylist()) == {"sip"}

    # Undone twice: nothing to do. Loaded again with the right options: whole, exactly once.
    assert [r.status for r in undo_file(lake, wrong)] == ["not-loaded"]
    again = load_file(lake, wrong, LoadOptions(table=TABLE, source="sip"))
    assert (again.status, again.rows_stored, again.dead_lettered) == ("loaded", 897, 3)
    assert load_file(lake, wrong, LoadOptions(table=TABLE, source="sip")).status == (
        "already-loaded"
    )
    bronze = _rows(lake, TABLE)
    assert bronze.num_rows == 598 + 897 and len(set(bronze.column("seq").to_pylist())) == 1_495
    assert len(_dead_letters(lake)) == 5


def test_rows_rewritten_out_of_the_files_of_a_load_refuse_the_undo(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    """Another engine's compaction names its files its own way: the undo cannot find every
    row, says so, and changes nothing."""
    path = _trades(tmp_path / "day.csv.gz", 300)
    load_file(lake, path, LoadOptions(table=TABLE))
    table = lake.load_table(TABLE)
    files = current_data_files(table)
    assert files and all(file_tag(f.file_path) for f in files)
    rows = table.scan().to_arrow().sort_by("ts_event_ns")
    other = PartitionReplacement(table, {"lake.operation": "rewrite"}, validation="files")
    other.replace(AlwaysTrue(), rows, files)  # random write ids: the tag is gone
    other.commit()
    assert not any(file_tag(f.file_path) for f in current_data_files(lake.load_table(TABLE)))
    ledger = lake.load_table(TABLE).properties[ledger_key(_sha(lake))]
    with pytest.raises(UndoRefusedError, match=r"holds \d+ rows in data files of its loads"):
        undo_file(lake, path)
    after = lake.load_table(TABLE)
    assert after.properties[ledger_key(_sha(lake))] == ledger
    assert _rows(lake, TABLE).num_rows == 300


def _sha(lake: LakeCatalog) -> str:
    keys = [k for k in lake.load_table(TABLE).properties if k.startswith("lake.load.")]
    assert len(keys) == 1
    return keys[0].removeprefix("lake.load.")


def test_a_load_from_before_the_row_count_is_refused(lake: LakeCatalog, tmp_path: Path) -> None:
    path = _trades(tmp_path / "day.csv.gz", 100)
    load_file(lake, path, LoadOptions(table=TABLE))
    table = lake.load_table(TABLE)
    key = ledger_key(_sha(lake))
    with table.transaction() as tx:  # the entry an older lake load wrote
        tx.set_properties({key: "100:done"})
    with pytest.raises(UndoRefusedError, match="did not count the rows it stored"):
        undo_file(lake, path)
    assert _rows(lake, TABLE).num_rows == 100


@pytest.mark.parametrize("before", ["rows", "dead letters"])
def test_a_load_running_while_its_file_is_undone_stops_and_loads_whole_later(
    lake: LakeCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    """Dead letters in every chunk (review19: the undo's removal of them kept conflicting with
    the load's, gave up, and the load finished; a chunk's letters committed just before the
    undo were left behind and duplicated by the next load)."""
    path = _trades(tmp_path / "day.csv.gz", 1_000, bad_every=100)
    undone: list[UndoResult] = []
    if before == "rows":  # after chunk 2's dead letters, before its rows
        at_commit(monkeypatch, 2, lambda: undone.extend(undo_file(lake, path)))
    else:  # after chunk 1's rows, before chunk 2's dead letters
        real = FileCommitter.commit_dead_letters
        calls = []

        def letters_then_undo(self: FileCommitter, *args: object) -> int:
            calls.append(1)
            if len(calls) == 2:
                undone.extend(undo_file(lake, path))
            return real(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(FileCommitter, "commit_dead_letters", letters_then_undo)
    with pytest.raises(LoadFailedError, match="was undone") as failed:
        load_file(lake, path, LoadOptions(table=TABLE, commit_rows=400))
    assert failed.value.result.status == "failed" and failed.value.result.rows_stored == 0
    letters = 8 if before == "rows" else 4
    assert [(r.rows_removed, r.dead_letters_removed) for r in undone] == [(396, letters)]
    assert _rows(lake, TABLE).num_rows == 0 and _dead_letters(lake) == []
    monkeypatch.undo()
    again = load_file(lake, path, LoadOptions(table=TABLE, commit_rows=400))
    assert (again.status, again.rows_stored, again.dead_lettered) == ("loaded", 990, 10)
    assert len(set(_rows(lake, TABLE).column("seq").to_pylist())) == 990
    assert len(_dead_letters(lake)) == 10


def test_a_rollback_past_an_undo_is_seen_and_the_undo_runs_again(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    """review19: a rollback brought 995 wrong rows back while the ledger said undone: the undo
    answered `not-loaded`, a load stored the file beside them, and nothing could take them out."""
    path = _trades(tmp_path / "day.csv.gz", 300, bad=3)
    load_file(lake, path, LoadOptions(table=TABLE, source="wrong"))
    loaded = lake.load_table(TABLE).current_snapshot()
    assert loaded is not None
    assert undo_file(lake, path)[0].rows_removed == 297
    lake.load_table(TABLE).manage_snapshots().rollback_to_snapshot(loaded.snapshot_id).commit()
    assert _rows(lake, TABLE).num_rows == 297  # the wrong rows are back
    with pytest.raises(LakeError, match="rolled back past the undo of its load"):
        load_file(lake, path, LoadOptions(table=TABLE, source="sip"))
    (again,) = undo_file(lake, path)
    assert (again.status, again.rows_removed) == ("undone", 297)
    assert _rows(lake, TABLE).num_rows == 0
    assert [r.status for r in undo_file(lake, path)] == ["not-loaded"]
    right = load_file(lake, path, LoadOptions(table=TABLE, source="sip"))
    assert (right.status, right.rows_stored, right.dead_lettered) == ("loaded", 297, 3)
    assert set(_rows(lake, TABLE).column("source").to_pylist()) == {"sip"}
    assert len(_dead_letters(lake)) == 3


def test_lake_load_undo_on_the_command_line(lake: LakeCatalog, tmp_path: Path) -> None:
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    path = _trades(tmp_path / "day.csv.gz", 200)
    never = _trades(tmp_path / "never.csv.gz", 10, first_id=500)
    runner = CliRunner()
    loaded = runner.invoke(app, ["load", str(path), "--table", TABLE], env=env)
    assert loaded.exit_code == 0, loaded.output
    out = runner.invoke(app, ["load", "--undo", str(path), str(never), "-o", "json"], env=env)
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert [(r["file"], r["status"], r["rows_removed"]) for r in payload["results"]] == [
        ("day.csv.gz", "undone", 200),
        ("never.csv.gz", "not-loaded", 0),
    ]
    text = runner.invoke(app, ["load", "--undo", str(path), "--compact"], env=env)
    assert text.exit_code == 0 and "not-loaded" in text.output
    bad = runner.invoke(app, ["load", "--undo", str(path), "--source", "x"], env=env)
    assert bad.exit_code == 1
    assert "--undo takes files, --table, --compact and -o only, not --source" in bad.output
    assert "Traceback" not in bad.output


def test_an_undo_killed_between_its_two_commits_is_finished_by_running_it_again(
    lake: LakeCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _trades(tmp_path / "day.csv.gz", 300, bad=4)
    load_file(lake, path, LoadOptions(table=TABLE))
    ledger = lake.load_table(TABLE).properties[ledger_key(_sha(lake))]

    def killed(self: PartitionReplacement) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(PartitionReplacement, "commit", killed)
    with pytest.raises(RuntimeError, match="killed"):
        undo_file(lake, path)
    monkeypatch.undo()
    # The fence and the dead letters went first; the rows are as they were, and a load of the
    # file is refused until the undo is run again.
    assert _dead_letters(lake) == []
    assert lake.load_table(TABLE).properties[ledger_key(_sha(lake))] == "0:undoing@1;k=296"
    assert ledger.endswith(",k=296")
    assert _rows(lake, TABLE).num_rows == 296
    with pytest.raises(LakeError, match="an undo of its load into .* was interrupted"):
        load_file(lake, path, LoadOptions(table=TABLE))
    (result,) = undo_file(lake, path)
    assert (result.status, result.rows_removed, result.dead_letters_removed) == ("undone", 296, 0)
    assert _rows(lake, TABLE).num_rows == 0
    again = load_file(lake, path, LoadOptions(table=TABLE))
    assert (again.rows_stored, again.dead_lettered) == (296, 4)


def test_a_rollback_to_before_the_load_after_an_undo_leaves_the_file_loadable(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    """review19b: rolled back to before the load (nothing of it back), the undo was refused (0
    of 300 rows) and a load refused as "rows are back": the file could go neither way. Rolled
    back to between two generations, the rows present are taken out."""
    good = _trades(tmp_path / "good.csv.gz", 100, first_id=10_000)
    wrong = _trades(tmp_path / "wrong.csv.gz", 300)
    load_file(lake, good, LoadOptions(table=TABLE))
    before = lake.load_table(TABLE).current_snapshot()
    load_file(lake, wrong, LoadOptions(table=TABLE, source="wrong"))
    first = lake.load_table(TABLE).current_snapshot()
    load_file(lake, wrong, LoadOptions(table=TABLE, source="wrong2", reload=True))
    assert before is not None and first is not None
    assert undo_file(lake, wrong)[0].rows_removed == 600

    lake.load_table(TABLE).manage_snapshots().rollback_to_snapshot(first.snapshot_id).commit()
    (again,) = undo_file(lake, wrong)  # the first generation is back: it goes
    assert (again.status, again.rows_removed) == ("undone", 300)
    assert _rows(lake, TABLE).num_rows == 100

    lake.load_table(TABLE).manage_snapshots().rollback_to_snapshot(before.snapshot_id).commit()
    assert [r.status for r in undo_file(lake, wrong)] == ["not-loaded"]
    right = load_file(lake, wrong, LoadOptions(table=TABLE, source="sip"))
    assert (right.status, right.rows_stored) == ("loaded", 300)
    assert _rows(lake, TABLE).num_rows == 400
