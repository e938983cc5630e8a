"""A file still being written is not loaded as it stands (audit load18 #4).

A CSV cut inside its last column (a download in progress: `600` cut to `6`) loaded with exit 0,
its last row wrong; the complete file then loaded as a new version (its own hash), and Silver
kept both trades. A file that changes while it is read is refused; one that ends without a line
end is loaded with a warning naming it.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load import LoadOptions, load_file, loader
from tests.load_data import polygon_trades
from tests.test_load import make_lake

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    return make_lake(tmp_path / "data")


def _csv(path: Path, rows: int) -> Path:
    table = pa.table({k: pa.array(v, pa.string()) for k, v in polygon_trades(rows).items()})
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    path.write_bytes(buf.getvalue())
    return path


def test_a_file_growing_while_it_is_loaded_is_refused_with_nothing_stored(
    lake: LakeCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _csv(tmp_path / "day.csv", 1_000)
    real = loader.file_sha256

    def download_goes_on(p: Path, *args: object, **kwargs: object) -> str:
        sha = real(p, *args, **kwargs)  # type: ignore[arg-type]
        with p.open("ab") as f:  # the downloader writes on meanwhile
            f.write(b"AAPL,,,4,x,1765895449999000000,104.99,1,1765895449999000000,")
        return sha

    monkeypatch.setattr(loader, "file_sha256", download_goes_on)
    with pytest.raises(LakeError, match="day.csv changed while it was being loaded"):
        load_file(lake, path, LoadOptions(table=TABLE))
    table = lake.load_table(TABLE)
    assert table.current_snapshot() is None
    assert not [k for k in table.properties if k.startswith("lake.load.")]


def test_a_file_ending_without_a_line_end_is_named_in_a_warning(
    lake: LakeCatalog, tmp_path: Path
) -> None:
    """Plain or compressed (review18b: a cut `.csv.gz` was not checked), in the result (so in
    `-o json`) and on the CLI."""
    whole = _csv(tmp_path / "whole.csv", 100)
    cut = tmp_path / "cut.csv"
    cut.write_bytes(whole.read_bytes()[:-3])
    cut_gz = tmp_path / "cut2.csv.gz"
    cut_gz.write_bytes(gzip.compress(whole.read_bytes()[:-2]))
    whole_gz = tmp_path / "whole2.csv.gz"
    whole_gz.write_bytes(gzip.compress(whole.read_bytes()))
    assert load_file(lake, whole, LoadOptions(table=TABLE)).warnings == []
    assert load_file(lake, whole_gz, LoadOptions(table=TABLE)).warnings == []
    warned = load_file(lake, cut, LoadOptions(table=TABLE)).warnings
    assert warned == [
        "cut.csv ends without a line end: cut short (a download that stopped)? Its last row "
        "is read as it stands"
    ]
    assert (
        load_file(lake, cut_gz, LoadOptions(table=TABLE))
        .warnings[0]
        .startswith("cut2.csv.gz ends without a line end")
    )
