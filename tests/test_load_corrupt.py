"""A corrupt compressed download is refused before any commit (audit load18 #3).

gzip checks a member's CRC-32 only at its end, and zstd a frame's checksum at the frame's end:
streamed, a load committed the chunks read before the error (load18: 499,995 rows, 63 of them
with wrong prices, from a 2M-row `.csv.gz` with one bit flipped), and the advice "a re-run
resumes after them" could not work. The SHA-256 pass now decompresses the file too.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from typer.testing import CliRunner

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.app import app
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.load.sources import CorruptFileError
from tests.load_data import polygon_trades, write_csv_gz
from tests.test_load import make_lake

pytestmark = pytest.mark.integration
runner = CliRunner()

TABLE = "bronze.stocks_trades"
#: Rows of the corrupt files: enough that pyarrow's read-ahead reaches the damage only after
#: the first commits (in smaller files it hit the CRC before the first commit, load18).
N = 400_000


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    return make_lake(tmp_path / "data")


def _flipped(path: Path, at: float) -> Path:
    """`path` with one bit flipped at fraction `at` of its bytes."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def _zstd_cut(path: Path) -> Path:
    """A zstd CSV of the trades, cut short by 100 bytes (a download stopped early)."""
    table = pa.table({k: pa.array(v, pa.string()) for k, v in polygon_trades(N).items()})
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(buf.getvalue())
    path.write_bytes(path.read_bytes()[:-100])
    return path


@pytest.mark.parametrize("kind", ["gzip bit flip", "zstd cut short"])
def test_a_corrupt_compressed_file_stores_nothing(
    lake: LakeCatalog, tmp_path: Path, kind: str
) -> None:
    if kind == "gzip bit flip":
        path = _flipped(write_csv_gz(tmp_path / "day.csv.gz", polygon_trades(N)), 0.7)
    else:
        path = _zstd_cut(tmp_path / "day.csv.zst")

    with pytest.raises(CorruptFileError) as refused:
        load_file(lake, path, LoadOptions(table=TABLE, commit_rows=10_000))

    table = lake.load_table(TABLE)
    assert table.current_snapshot() is None
    assert not [k for k in table.properties if k.startswith("lake.load.")]
    assert f"{path.name}: corrupt " in str(refused.value)
    assert "nothing stored; download the file again" in str(refused.value)


def test_the_command_reports_the_corrupt_file_failed_with_nothing_stored(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    bad = _flipped(write_csv_gz(tmp_path / "bad.csv.gz", polygon_trades(N)), 0.7)
    good = write_csv_gz(tmp_path / "good.csv.gz", polygon_trades(1_000))
    env = {"LAKE_DATA_DIR": str(lake.settings.data_dir), "COLUMNS": "200"}

    res = runner.invoke(app, ["load", str(bad), str(good), "--commit-rows", "10000"], env=env)

    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.csv.gz: corrupt gzip data (" in errors[0], res.output
    assert "re-run resumes" not in res.output
    scan = lake.load_table(TABLE).scan().to_arrow()
    assert scan.num_rows == 1_000  # the good file only


def test_a_zstd_dictionary_frame_and_a_header_matching_nothing_are_one_line(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    """docs19: a `.dbn.zst` whose frame asks for a dictionary was `internal error:
    RuntimeError`; a header-only CSV whose columns match nothing was `loaded`, exit 0 (and
    marked loaded in the ledger)."""
    env = {"LAKE_DATA_DIR": str(tmp_path / "data")}
    fake = tmp_path / "fake.dbn.zst"
    fake.write_bytes(b"\x28\xb5\x2f\xfdgarbage")
    out = runner.invoke(app, ["load", str(fake)], env=env)
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "fake.dbn.zst: not a readable DBN file (Dictionary mismatch)" in out.output
    header = tmp_path / "hdr.csv"
    header.write_text("a,b\n")
    out = runner.invoke(app, ["load", str(header), "--table", TABLE], env=env)
    assert out.exit_code == 1
    assert f"hdr.csv: none of its columns (a, b) is a column of {TABLE}" in out.output
    table = lake.load_table(TABLE)
    assert not [k for k in table.properties if k.startswith("lake.load.")]
