"""Readers resume at any row: `batches(skip_rows=k)` yields exactly rows k.. of a full read, with
row problems at the same file rows, for every format (budget: < 3 s, no catalog)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from iceberg_lake.load import dbn, sources
from iceberg_lake.load.sources import open_source
from tests.load_data import polygon_trades, trades_table, write_csv_gz, write_dbn, write_parquet


def _make(kind: str, tmp_path: Path) -> Path:
    if kind == "csv":
        return write_csv_gz(tmp_path / "t.csv.gz", polygon_trades(3000))
    if kind == "parquet":
        return write_parquet(tmp_path / "t.parquet", trades_table(3000), row_group_size=700)
    if kind == "dbn":
        return write_dbn(tmp_path / "t.dbn.zst", "trades", 3000, {1: "A"}, unknown={5, 2500})
    lines = [json.dumps({"seq": i, "symbol": "A", "price": 1.0 + i}) for i in range(3000)]
    lines[5] = "{not json"
    lines[2500] = "[1, 2]"
    path = tmp_path / "t.ndjson"
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path: Path, fmt: str, skip: int) -> tuple[list[dict], dict[int, str]]:
    rows: list[dict] = []
    problems: dict[int, str] = {}
    expected = skip
    for batch in open_source(path, fmt).batches(skip_rows=skip):
        assert batch.first_row == expected  # contiguous, no gaps, no repeats
        expected += batch.table.num_rows
        rows.extend(batch.table.to_pylist())
        problems.update({batch.first_row + r: p for r, p in batch.problems.items()})
    return rows, problems


@pytest.mark.parametrize("fmt", ["csv", "parquet", "dbn", "ndjson"])
def test_skip_rows_resumes_exactly_at_the_row(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "BATCH_ROWS", 1000)  # several Parquet batches per row group
    monkeypatch.setattr(sources, "BLOCK_BYTES", 16_384)  # several CSV/NDJSON blocks
    monkeypatch.setattr(dbn, "BATCH_RECORDS", 1000)  # several DBN batches per decode
    path = _make(fmt, tmp_path)
    full, full_problems = _read(path, fmt, 0)
    assert len(full) == 3000
    if fmt in ("dbn", "ndjson"):
        assert sorted(full_problems) == [5, 2500]
    for skip in (0, 1, 699, 700, 1234, 2999, 3000, 5000):
        rows, problems = _read(path, fmt, skip)
        assert rows == full[skip:], skip
        assert problems == {r: p for r, p in full_problems.items() if r >= skip}


def test_ndjson_values_keep_their_text_when_a_block_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text('{"a": 1, "b": "x"}\n{"a": "two", "b": null}\n')
    (batch,) = list(open_source(path, "ndjson").batches())
    assert batch.table.column("a").to_pylist() == ["1", "two"]
    assert batch.table.column("b").type == pa.string()
