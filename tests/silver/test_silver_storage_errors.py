"""A storage failure while Silver's files are finished reads as one (prod17).

Closing a Silver file completes its upload (an S3 multipart upload): an S3 stall there came out
as `internal error: OSError: … CompleteMultipartUpload …`, the wording the CLI keeps for bugs,
while the same stall one step earlier read `storage unavailable`. The failure is injected into
the file writer's close (the real store is SeaweedFS in production; stalling it at exactly
that step takes minutes of timeouts).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from test_silver import BRONZE, DAY, T0, _make_lake, append, base_rows, trade

from iceberg_lake.config import load_settings
from iceberg_lake.exceptions import CatalogUnavailableError
from iceberg_lake.silver import job
from iceberg_lake.silver.compactor import SilverCompactor


def test_a_storage_failure_at_file_close_is_storage_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = _make_lake(settings)
    append(catalog.load_table(BRONZE), base_rows()[:10])
    real = job.partition_file_writer

    def failing_close(*args: Any, **kwargs: Any) -> Any:
        writer = real(*args, **kwargs)

        def close() -> Any:
            raise OSError("AWS Error NETWORK_CONNECTION during CompleteMultipartUpload operation")

        writer.close = close
        return writer

    monkeypatch.setattr(job, "partition_file_writer", failing_close)
    with SilverCompactor(catalog) as compactor, pytest.raises(CatalogUnavailableError) as failed:
        compactor.compact_date(DAY, "futures.trades")
    assert "storage unavailable" in str(failed.value)
    assert "internal error" not in str(failed.value)


def _many_partitions(catalog: Any, symbols: int) -> None:
    rows = [trade(T0 + i * 10**6, sym=f"S{i % symbols:02d}", seq=i) for i in range(symbols * 20)]
    append(catalog.load_table(BRONZE), rows)


def _silver_files(settings: Any) -> list[Path]:
    return sorted(Path(settings.data_dir).rglob("silver/futures_trades/data/**/*.parquet"))


def _failing_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partitions: int, before_query: Any
) -> tuple[Any, list[int]]:
    """A run of one partition per query, two queries at a time, each query calling
    `before_query(n)` first (`n`: the order it started in); one of them raises the injected
    error, which the run must fail with. Returns the settings and the queries started."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = _make_lake(settings)
    _many_partitions(catalog, partitions)
    started: list[int] = []
    lock = threading.Lock()
    real = job.CompactionJob.compact_group

    def compact_group(self: job.CompactionJob, group: list[Any]) -> Any:
        with lock:
            n = len(started)
            started.append(n)
        before_query(n)
        return real(self, group)

    monkeypatch.setattr(job.CompactionJob, "compact_group", compact_group)
    compactor = SilverCompactor(catalog, rows_per_query=1, workers=2)
    with compactor, pytest.raises(CatalogUnavailableError, match="injected"):
        compactor.compact_date(DAY, "futures.trades")
    return settings, started


def _injected() -> CatalogUnavailableError:
    return CatalogUnavailableError("compacting: storage unavailable (injected)")


def test_after_a_failed_query_the_queries_not_started_are_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a stalled store every query started after the run had failed waited out its own
    timeouts: a Silver run took 4 minutes to give up on 20 partitions (prod17's stall,
    reproduced). Here the second query fails at once while the first still runs; the worker
    it freed must not start a third."""
    third = threading.Event()

    def second_fails(n: int) -> None:
        if n == 1:
            raise _injected()
        if n == 2:
            third.set()
        if n == 0:  # the first waits until a third has started (or 3 s), then finishes
            third.wait(3)

    _, started = _failing_run(tmp_path, monkeypatch, 8, second_fails)
    assert started == [0, 1]


def test_files_are_finished_at_once_and_all_of_them_when_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a file is a round trip to the store; closed one after the other, a stalled
    store cost one timeout per file. Each close here waits for all the others to be
    closing (a barrier): closed in turn, the first would wait in vain."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = _make_lake(settings)
    _many_partitions(catalog, 6)
    barrier = threading.Barrier(3, timeout=20)
    closed: list[str] = []
    real = job.partition_file_writer

    def closing_together(*args: Any, **kwargs: Any) -> Any:
        writer = real(*args, **kwargs)
        own_close = writer.close

        def close() -> Any:
            barrier.wait()
            closed.append(writer._prefix)
            if len(closed) == 1:
                raise OSError("AWS Error NETWORK_CONNECTION during CompleteMultipartUpload")
            return own_close()

        writer.close = close
        return writer

    monkeypatch.setattr(job, "partition_file_writer", closing_together)
    # Two queries of three partitions (two per worker): three files open at once.
    compactor = SilverCompactor(catalog, workers=1)
    with compactor, pytest.raises(CatalogUnavailableError, match="storage unavailable"):
        compactor.compact_date(DAY, "futures.trades")
    assert len(closed) == 3


def test_a_failed_query_finishes_and_deletes_the_files_it_had_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left open, the files of a failed query were finished by their destructors one after
    the other (each a round trip to the store) and stayed behind as orphans."""
    settings = load_settings({"LAKE_DATA_DIR": str(tmp_path / "lake")})
    catalog = _make_lake(settings)
    _many_partitions(catalog, 6)
    real = job.segments

    def fails_after_two(rows: Any, key_column: Any) -> Any:
        for n, segment in enumerate(real(rows, key_column)):
            if n == 2:
                raise CatalogUnavailableError("compacting: storage unavailable (injected)")
            yield segment

    monkeypatch.setattr(job, "segments", fails_after_two)
    compactor = SilverCompactor(catalog, workers=1)
    with compactor, pytest.raises(CatalogUnavailableError, match="injected"):
        compactor.compact_date(DAY, "futures.trades")
    assert _silver_files(settings) == []


def test_the_files_of_queries_finishing_after_a_failure_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query still running when another failed finished its files, and nothing deleted them
    (review18: 6 of 8 files left on a healthy store)."""
    failed, second = threading.Event(), threading.Event()

    def first_fails(n: int) -> None:
        if n == 0:  # fails while the second runs
            second.wait(10)
            failed.set()
            raise _injected()
        second.set()
        failed.wait(10)  # the second finishes its files after the failure

    settings, started = _failing_run(tmp_path, monkeypatch, 4, first_fails)
    assert started == [0, 1]
    assert _silver_files(settings) == []
