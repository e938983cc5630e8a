"""`lake load` of many files as a desk runs it (backfill15, budget ~15 s): an unreadable file
among them fails alone (the others load and are reported, exit 1); a folder is read with its
subfolders and without its README; `--compact` after an earlier run of the same files compacts
the days that run loaded too; one malformed NDJSON line leaves its block's other rows read as
a clean block's; padded text, a byte-order mark and mapping typos."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.sources import RAW_LINE_COLUMN, open_source
from tests.load_data import T14, polygon_trades, write_csv_gz
from tests.test_load import rows

pytestmark = pytest.mark.integration
runner = CliRunner()
DAY = 86_400 * 10**9
TABLE = "bronze.stocks_trades"


def _day(path: Path, n: int, day: int) -> Path:
    """A Polygon trades file of `n` rows on day `day` after T14's."""
    columns = polygon_trades(n)
    for key in ("sip_timestamp", "participant_timestamp"):
        columns[key] = [str(int(v) + day * DAY) for v in columns[key]]
    columns["sequence_number"] = [str(int(v) + day * 1_000_000) for v in columns["sequence_number"]]
    return write_csv_gz(path, columns)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    return env


def _count_by_day(duck, env: dict[str, str], table: str) -> dict[int, int]:
    lake = LakeCatalog(load_settings(env))
    found = rows(duck, lake, table, f"SELECT ts_event_ns // {DAY}, count(*) FROM t GROUP BY 1")
    return {int(d) - T14 // DAY: int(n) for d, n in found}


def test_an_unreadable_file_fails_alone_and_the_others_are_reported(
    tmp_path: Path, env: dict[str, str], duck
) -> None:
    first = _day(tmp_path / "d1.csv.gz", 500, 1)
    whole = _day(tmp_path / "whole.csv.gz", 3000, 2).read_bytes()
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(whole[: len(whole) * 6 // 10])  # a download cut short
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    polygon = gzip.decompress(_day(tmp_path / "p.csv.gz", 10, 2).read_bytes()).decode()
    header, *body = polygon.splitlines()
    twice = tmp_path / "twice.csv"  # the price column twice: which one?
    twice.write_text("\n".join([header + ',"price"'] + [r + ",1" for r in body]) + "\n")
    trailing = tmp_path / "trailing.csv"  # Excel's trailing commas: two empty names, loads
    trailing.write_text("\n".join([header + ",,"] + [r + ",," for r in body]) + "\n")
    last = _day(tmp_path / "d3.csv.gz", 500, 3)

    out = runner.invoke(
        app,
        ["-o", "json", "load", *map(str, (first, truncated, empty, twice, trailing, last))],
        env=env,
    )

    assert out.exit_code == 1, out.output
    report = json.loads(out.stdout)
    assert [r["status"] for r in report["results"]] == [
        "loaded",
        "failed",
        "failed",
        "failed",
        "loaded",
        "loaded",
    ]
    errors = [r["error"] for r in report["results"]]
    # Found while hashing, before any commit (load18: the gzip check of every member).
    assert errors[1].startswith("truncated.csv.gz: corrupt gzip data (Truncated compressed")
    assert errors[2] == "empty.csv has no header line"
    assert errors[3].startswith("twice.csv: column price appears more than once in the header")
    assert "internal error" not in out.output and "Traceback" not in out.output
    assert all(e in out.stderr for e in errors[1:4])
    assert _count_by_day(duck, env, TABLE) == {1: 500, 2: 10, 3: 500}

    # A folder: its subfolders (a vendor's YYYY/MM layout) and not its README.
    tree = tmp_path / "tree"
    (tree / "2025" / "12").mkdir(parents=True)
    (tree / "README.md").write_text("daily trades\n")
    (tree / ".sync").write_text("")
    _day(tree / "2025" / "12" / "d4.csv.gz", 200, 4)
    _day(tree / "2025" / "12" / "d5.csv.gz", 200, 5)
    res = runner.invoke(app, ["load", str(tree)], env=env)
    assert res.exit_code == 0, res.output
    assert "skipped 1 files of no format lake load reads:" in res.output
    assert "README.md" in res.output
    assert _count_by_day(duck, env, TABLE) == {1: 500, 2: 10, 3: 500, 4: 200, 5: 200}


def test_compact_after_an_earlier_run_reaches_the_days_that_run_loaded(
    tmp_path: Path, env: dict[str, str], duck
) -> None:
    """An earlier run loaded day 1 (killed before its compaction, or run without it); the
    re-run with `--compact` finds day 1 already loaded and loads day 2: both days reach
    Silver (only day 2 did)."""
    one, two = _day(tmp_path / "d1.csv.gz", 400, 1), _day(tmp_path / "d2.csv.gz", 300, 2)
    assert runner.invoke(app, ["load", str(one)], env=env).exit_code == 0

    out = runner.invoke(app, ["-o", "json", "load", str(one), str(two), "--compact"], env=env)

    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert [r["status"] for r in report["results"]] == ["already-loaded", "loaded"]
    assert _count_by_day(duck, env, "silver.stocks_trades") == {1: 400, 2: 300}
    # Without --compact the hint covers the earlier run's days too.
    again = runner.invoke(app, ["load", str(one), str(two)], env=env)
    assert again.exit_code == 0 and "next: lake compact --incremental" in again.output


def test_one_malformed_ndjson_line_leaves_the_block_read_as_a_clean_one(
    tmp_path: Path, env: dict[str, str]
) -> None:
    def line(i: int) -> str:
        return json.dumps(
            {
                "symbol": "AAPL",
                "ts_event_ns": "2025-12-16 14:30:00",  # read as a time by the JSON reader
                "price": 150.25,
                "size": 1 + i,
                "seq": i,
                "conditions": [12, 37],
            }
        )

    clean = tmp_path / "clean.ndjson"
    clean.write_text("".join(line(i) + "\n" for i in range(3_000)))
    text = [line(i) for i in range(3_000)]
    text[1_500] = text[1_500][:30]  # one line cut short
    broken = tmp_path / "broken.ndjson"
    broken.write_text("\n".join(text) + "\n")

    (good,) = list(open_source(clean, "ndjson").batches())
    (read,) = list(open_source(broken, "ndjson").batches())
    assert list(read.problems) == [1_500] and "malformed JSON line" in read.problems[1_500]
    kept = [i for i in range(3_000) if i != 1_500]
    assert read.table.drop_columns([RAW_LINE_COLUMN]).take(kept).equals(good.table.take(kept))
    assert read.table.column(RAW_LINE_COLUMN).to_pylist()[1_500] == text[1_500]

    lake = LakeCatalog(load_settings(env))
    result = load_file(lake, broken, LoadOptions(table=TABLE))
    assert (result.rows_stored, result.dead_lettered, result.unknown_columns) == (2_999, 1, [])
    stored = lake.load_table(TABLE).scan(selected_fields=("conditions",)).to_arrow()
    assert set(stored.column("conditions").to_pylist()) == {"12,37"}


def test_padded_text_a_byte_order_mark_and_mapping_typos(
    tmp_path: Path, env: dict[str, str], duck
) -> None:
    columns = polygon_trades(100)
    columns["ticker"] = [f"{t} " for t in columns["ticker"]]  # fixed-width export
    padded = write_csv_gz(tmp_path / "padded.csv.gz", columns)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(
        b"\xef\xbb\xbf" + gzip.decompress(_day(tmp_path / "x.csv.gz", 50, 2).read_bytes())
    )
    out = runner.invoke(app, ["-o", "json", "load", str(padded), str(bom)], env=env)
    assert out.exit_code == 0, out.output
    lake = LakeCatalog(load_settings(env))
    symbols = rows(duck, lake, TABLE, "SELECT DISTINCT symbol FROM t ORDER BY 1")
    assert symbols == [("AAPL",), ("MSFT",)]
    assert [r["status"] for r in json.loads(out.stdout)["results"]] == ["loaded", "loaded"]

    parquet = tmp_path / "v.parquet"
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"sym": ["A"], "t": [T14], "px": [1.0], "qty": [1], "id": [1]}), parquet
    )
    for body, said in (
        (
            'table = "bronze.stocks_trades"\n[column]\nsymbol = "sym"\n',
            "unknown key 'column' (did you mean 'columns'?)",
        ),
        (
            'table = "bronze.stocks_trades"\n[scale]\nsymbol = 2\n',
            "[scale] symbol: not a numeric column",
        ),
        (
            'table = "bronze.stocks_trades"\n[scale]\nts_event_ns = true\n',
            "[scale] ts_event_ns = True is not a number",
        ),
    ):
        mapping = tmp_path / "m.toml"
        mapping.write_text(body)
        res = runner.invoke(app, ["load", str(parquet), "--mapping", str(mapping)], env=env)
        assert res.exit_code == 1 and said in res.output, res.output
        assert "Traceback" not in res.output


def test_review15b_partial_failures_compaction_errors_and_odd_ndjson(
    tmp_path: Path, env: dict[str, str], duck, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review15b: a file that fails after committing chunks says what it stored; a failed
    compaction fails `lake load --compact`; a block the JSON reader will not type (a quoted
    number), invalid UTF-8 and a line longer than the reader's block lose only their own
    lines; a symlinked subfolder is read and skipped files are in the JSON."""
    from iceberg_lake.load import sources

    monkeypatch.setattr(sources, "BLOCK_BYTES", 64 << 10)  # chunks commit before the cut
    whole = gzip.decompress(_day(tmp_path / "big.csv.gz", 60_000, 1).read_bytes())
    # A plain CSV cut mid-row (a cut-short .csv.gz now fails before any commit: load18).
    cut = tmp_path / "cut.csv"
    cut.write_bytes(whole[: whole.index(b"\n", len(whole) // 2) + 5])
    out = runner.invoke(app, ["-o", "json", "load", str(cut), "--commit-rows", "5000"], env=env)
    assert out.exit_code == 1
    (result,) = json.loads(out.stdout)["results"]
    stored = _count_by_day(duck, env, TABLE)[1]
    assert result["status"] == "failed" and result["rows_stored"] == stored > 0
    assert result["table"] == TABLE and result["sha256"] and result["partitions"]
    assert f"{stored:,} rows and 0 dead letters committed before it stay in Bronze" in out.stderr

    # A compaction that fails (here: its Silver table is gone) fails the load's --compact.
    one = _day(tmp_path / "d2.csv.gz", 100, 2)
    assert runner.invoke(app, ["load", str(one)], env=env).exit_code == 0
    LakeCatalog(load_settings(env)).catalog.drop_table("silver.stocks_trades")
    res = runner.invoke(app, ["-o", "json", "load", str(one), "--compact"], env=env)
    assert res.exit_code == 1, res.output
    (compaction,) = json.loads(res.stdout)["compactions"]
    assert compaction["status"] == "error" and "silver.stocks_trades" in compaction["error"]
    assert "error: silver compaction of silver.stocks_trades:" in res.stderr

    def line(i: int, **changes: object) -> bytes:
        row = {"symbol": "AAPL", "ts_event_ns": "2025-12-16 14:30:00", "price": 150.25}
        return json.dumps({**row, "size": 1, "seq": 100_000 + i, **changes}).encode()

    lines = [line(i) for i in range(3_000)]
    lines[10] = line(10, size="1")  # a quoted number: the reader will not type the block
    lines[20] = line(20, symbol="A\udcff").replace(b"\\udcff", b"\xff")  # not UTF-8
    lines[30] = line(30, note="x" * 1_500_000)  # longer than the reader's 1 MB block
    odd = tmp_path / "odd.ndjson"
    odd.write_bytes(b"\n".join(lines) + b"\n")
    lake = LakeCatalog(load_settings(env))
    loaded = load_file(lake, odd, LoadOptions(table=TABLE))
    assert (loaded.rows_stored, loaded.dead_lettered) == (2_999, 1)
    got = rows(duck, lake, TABLE, "SELECT count(*) FROM t WHERE seq BETWEEN 100000 AND 102999")
    assert got == [(2_999,)]

    tree, elsewhere = tmp_path / "tree", tmp_path / "nas" / "2024"
    tree.mkdir()
    elsewhere.mkdir(parents=True)
    _day(elsewhere / "d7.csv.gz", 70, 7)
    (tree / "2024").symlink_to(elsewhere)
    (tree / "d8.csv.gz.part").write_bytes(b"")
    res = runner.invoke(app, ["-o", "json", "load", str(tree)], env=env)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [Path(r["file"]).name for r in report["results"]] == ["d7.csv.gz"]
    assert report["skipped"] == [str(tree / "d8.csv.gz.part")]


def test_review15c_impossible_times_wide_headers_and_tsv_gz(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """review15c: one impossible ISO time (24:00, Feb 30) dead-lettered every time of its
    block; a header past 64 KiB was cut short; `.tsv.gz` was read as comma-separated; a
    renamed repeat could collide with a column of the header."""
    header = "symbol,ts_event_ns,price,size,seq"
    body = [f"AAPL,2025-12-16T14:{i % 60:02d}:00Z,150.5,1,{i}" for i in range(2_000)]
    body[1_000] = "AAPL,2025-12-16T24:00:00Z,150.5,1,1000"
    body[1_500] = "AAPL,2025-02-30 10:00:00,150.5,1,1500"
    times = tmp_path / "times.csv"
    times.write_text("\n".join([header, *body]) + "\n")
    lake = LakeCatalog(load_settings(env))
    result = load_file(lake, times, LoadOptions(table=TABLE))
    assert (result.rows_stored, result.dead_lettered) == (1_998, 2)
    letters = lake.load_table("bronze.dead_letters").scan().to_arrow().column("reason")
    assert sorted(letters.to_pylist()) == [
        "ts_event_ns: invalid value '2025-02-30 10:00:00' for type int64",
        "ts_event_ns: invalid value '2025-12-16T24:00:00Z' for type int64",
    ]

    wide = tmp_path / "wide.csv"  # 5,000 more columns: a header of ~70 KiB
    extra = ",".join(f"unused_column_{i:05d}" for i in range(5_000))
    row = ",".join("" for _ in range(5_000))
    wide.write_text(f"{header},{extra}\nMSFT,2025-12-16T15:00:00Z,400.5,2,7,{row}\n")
    assert load_file(lake, wide, LoadOptions(table=TABLE)).rows_stored == 1

    tsv = tmp_path / "t.tsv.gz"
    tsv.write_bytes(
        gzip.compress(
            f"{header}\nNVDA\t2025-12-16T16:00:00Z\t90.5\t3\t8\n".replace(",", "\t").encode()
        )
    )
    assert load_file(lake, tsv, LoadOptions(table=TABLE)).rows_stored == 1

    from iceberg_lake.load.sources import CsvSource, _unique

    assert _unique(["x", "x", "x.2", "", ""]) == ["x", "x.3", "x.2", "", ".2"]
    many = _unique([""] * 16_384)  # Excel's trailing commas (review15d: cubic before)
    assert len(set(many)) == 16_384 and many[:3] == ["", ".2", ".3"]

    # review15d: a header cell past the csv module's limit is one line; \r line endings end
    # the header line.
    huge = tmp_path / "huge.csv"
    huge.write_text("a" * 200_000 + ",b\n1,2\n")
    with pytest.raises(LakeError, match="huge.csv: unreadable header line"):
        CsvSource(huge)
    old_mac = tmp_path / "cr.csv"
    old_mac.write_bytes(header.encode() + b"\r" + b"AMD,2025-12-16T17:00:00Z,100.5,4,9\r")
    assert CsvSource(old_mac).columns == header.split(",")


def test_review15e_padded_export_rows_dictionary_times_and_parquet_text(
    tmp_path: Path, env: dict[str, str], duck
) -> None:
    """review15e: a CSV replay export's padded `table` value was counted as another table's
    row (not stored, not dead-lettered); ISO times in a dictionary-encoded Parquet column were
    dead-lettered; Parquet text is stored as written (only CSV cells are trimmed)."""
    import pyarrow.parquet as pq

    export = tmp_path / "export.csv"
    export.write_text(
        "table,symbol,ts_event_ns,price,size,seq\n"
        "bronze.stocks_trades ,MSFT,1765895400000000000,400.5,1,1\n"
        "bronze.stocks_trades,MSFT,1765895400000000001,400.5,1,2\n"
    )
    lake = LakeCatalog(load_settings(env))
    result = load_file(lake, export, LoadOptions(table=TABLE))
    assert (result.rows_stored, result.rows_other_tables) == (2, 0)

    times = pa.array(["2025-12-16T14:30:00Z", "2025-12-16 14:31:00"] * 50).dictionary_encode()
    table = pa.table(
        {
            "symbol": [" PAD "] * 100,
            "ts_event_ns": times,
            "price": [1.5] * 100,
            "size": [1] * 100,
            "seq": list(range(10, 110)),
        }
    )
    parquet = tmp_path / "dict.parquet"
    pq.write_table(table, parquet)
    loaded = load_file(lake, parquet, LoadOptions(table=TABLE))
    assert (loaded.rows_stored, loaded.dead_lettered) == (100, 0)
    got = rows(duck, lake, TABLE, "SELECT DISTINCT symbol FROM t WHERE seq >= 10 ORDER BY 1")
    assert got == [(" PAD ",)]


def test_a_folder_holding_the_lake_itself_loads_only_the_vendor_files(tmp_path: Path) -> None:
    """docs19: `lake load .` beside the default `./lake-data` loaded the lake's own Parquet
    files (and tried its metadata as NDJSON): every re-run doubled Bronze. The lake's folders,
    and any Iceberg table's, are left out; a device is not a file."""
    env = {"LAKE_DATA_DIR": str(tmp_path / "lake-data")}
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    (tmp_path / "downloads").mkdir()
    _day(tmp_path / "downloads" / "d0.csv.gz", 300, 0)
    for _ in range(2):
        out = runner.invoke(app, ["-o", "json", "load", str(tmp_path), "--table", TABLE], env=env)
        assert out.exit_code == 0, out.output
        payload = json.loads(out.stdout)
        assert [Path(r["file"]).name for r in payload["results"]] == ["d0.csv.gz"]
        assert payload["skipped_lake_folders"] == [str(tmp_path / "lake-data" / "warehouse")]
    assert LakeCatalog(load_settings(env)).load_table(TABLE).scan().count() == 300
    # Another lake's table folder copied in among the downloads is not read either.
    table_dir = Path(
        LakeCatalog(load_settings(env)).load_table(TABLE).location().removeprefix("file://")
    )
    shutil.copytree(table_dir, tmp_path / "downloads" / "copy_of_a_table")
    out = runner.invoke(app, ["-o", "json", "load", str(tmp_path / "downloads")], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["skipped_lake_folders"] == [
        str(tmp_path / "downloads" / "copy_of_a_table")
    ]
    # Nor a folder inside the lake (review19b: a table's data folder loaded back, 300 → 600).
    inside = runner.invoke(app, ["load", str(table_dir / "data"), "--table", TABLE], env=env)
    assert inside.exit_code == 1 and "is inside the lake's own folder" in inside.output
    own = runner.invoke(
        app, ["load", str(tmp_path / "lake-data" / "warehouse"), "--table", TABLE], env=env
    )
    assert own.exit_code == 1 and "warehouse is the lake's own folder" in own.output
    assert LakeCatalog(load_settings(env)).load_table(TABLE).scan().count() == 300
    device = runner.invoke(app, ["load", "/dev/null"], env=env)
    assert device.exit_code == 1 and "/dev/null is not a regular file" in device.output
