"""`lake maintain expire-snapshots` measures the retention window on the store's clock when this
machine's is ahead of it (ops19: a maintenance host 7 h fast expired 168 snapshots and deleted
426 files inside the 6 h window, exit 0; `--as-of` six minutes back then failed).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.exceptions import LakeError
from iceberg_lake.load import LoadOptions, load_file
from iceberg_lake.ops import maintenance
from iceberg_lake.ops.maintenance import TableMaintenance
from tests.load_data import polygon_trades, write_csv_gz
from tests.test_load import make_lake

pytestmark = pytest.mark.integration

TABLE = "bronze.stocks_trades"


class _SevenHoursFast(datetime):
    """This machine's clock, 7 h ahead of the store's (and of the writers')."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN206
        return datetime.now(tz) + timedelta(hours=7)


def test_a_fast_local_clock_does_not_expire_snapshots_inside_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lake: LakeCatalog = make_lake(tmp_path / "data")
    for i in range(3):  # three snapshots made just now (default window: 6 h)
        path = write_csv_gz(tmp_path / f"f{i}.csv.gz", polygon_trades(10 + i))
        load_file(lake, path, LoadOptions(table=TABLE))
    snapshots = len(lake.load_table(TABLE).snapshots())
    assert snapshots == 3
    monkeypatch.setattr(maintenance, "datetime", _SevenHoursFast)
    with caplog.at_level(logging.WARNING, logger=maintenance.log.name):
        result = TableMaintenance(lake, TABLE).expire_snapshots()
    assert result.expired == [] and result.deleted_files == []
    assert len(lake.load_table(TABLE).snapshots()) == snapshots
    assert "this machine's clock is 2520" in caplog.text and "ahead of the store's" in caplog.text
    # The same run at a time 7 h on would expire them: the window is what kept them.
    later = datetime.now(UTC) + timedelta(hours=7)
    dry = TableMaintenance(lake, TABLE).expire_snapshots(now=later, dry_run=True)
    assert len(dry.expired) == snapshots - 1


def test_a_writer_on_a_fast_host_does_not_expire_snapshots_inside_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review19b: the writers' in-line expiry (`lake serve`) still took this machine's clock: a
    host 7 h fast dropped 5 of 6 snapshots inside the 6 h window."""
    lake: LakeCatalog = make_lake(tmp_path / "data")
    for i in range(3):
        path = write_csv_gz(tmp_path / f"f{i}.csv.gz", polygon_trades(10 + i))
        load_file(lake, path, LoadOptions(table=TABLE))
    monkeypatch.setattr(maintenance, "_INLINE_OFFSETS", {}, raising=False)  # its probe only
    monkeypatch.setattr(maintenance, "datetime", _SevenHoursFast)
    with caplog.at_level(logging.WARNING, logger=maintenance.log.name):
        expired = maintenance.expire_inline(lake, lake.load_table(TABLE), TABLE)
    assert expired == 0 and len(lake.load_table(TABLE).snapshots()) == 3
    assert "in-line expiry: this machine's clock is 2520" in caplog.text


def test_a_clock_step_is_seen_and_an_unchecked_clock_expires_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """review19d: a host clock that jumped ahead after a good probe was trusted for up to 10
    minutes, and a probe that failed (an S3 503, a bucket policy) left the host's clock, said
    at DEBUG: 2 of 3 snapshots inside the window were dropped each way."""
    lake: LakeCatalog = make_lake(tmp_path / "data")
    for i in range(3):
        path = write_csv_gz(tmp_path / f"f{i}.csv.gz", polygon_trades(10 + i))
        load_file(lake, path, LoadOptions(table=TABLE))
    monkeypatch.setattr(maintenance, "_INLINE_OFFSETS", {}, raising=False)
    assert maintenance.expire_inline(lake, lake.load_table(TABLE), TABLE) == 0  # probed: agree
    monkeypatch.setattr(maintenance, "datetime", _SevenHoursFast)  # the host's clock steps
    with caplog.at_level(logging.WARNING, logger=maintenance.log.name):
        assert maintenance.expire_inline(lake, lake.load_table(TABLE), TABLE) == 0
    assert "this machine's clock is 2520" in caplog.text

    def unreachable(*args: object) -> None:
        raise LakeError("cannot write a clock probe under the table: 503 SlowDown")

    monkeypatch.setattr(maintenance, "_INLINE_OFFSETS", {}, raising=False)
    monkeypatch.setattr(maintenance, "store_clock_offset", unreachable)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=maintenance.log.name):
        assert maintenance.expire_inline(lake, lake.load_table(TABLE), TABLE) == 0
    assert "in-line expiry of" in caplog.text and "skipped" in caplog.text
    assert len(lake.load_table(TABLE).snapshots()) == 3


@pytest.mark.parametrize("probe", ["fails", "works"])
def test_a_fast_host_keeps_a_desks_tag_whether_or_not_the_probe_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: str
) -> None:
    """review19e: with the probe failing, expiry was skipped but the tag upkeep still ran on the
    host's clock 7 h fast: a desk's 3-hour tag was dropped 7 h early and checkpoint tags made
    for hours still to come."""
    lake: LakeCatalog = make_lake(tmp_path / "data")
    for i in range(3):
        path = write_csv_gz(tmp_path / f"f{i}.csv.gz", polygon_trades(10 + i))
        load_file(lake, path, LoadOptions(table=TABLE))
    table = lake.load_table(TABLE)
    first = table.snapshots()[0].snapshot_id
    table.manage_snapshots().create_tag(first, "eod-keep", max_ref_age_ms=3 * 3600 * 1000).commit()
    monkeypatch.setattr(maintenance, "_INLINE_OFFSETS", {}, raising=False)
    monkeypatch.setattr(maintenance, "datetime", _SevenHoursFast)
    if probe == "fails":

        def unreachable(*args: object) -> None:
            raise LakeError("cannot write a clock probe under the table: 503 SlowDown")

        monkeypatch.setattr(maintenance, "store_clock_offset", unreachable)
    maintenance.expire_inline(lake, lake.load_table(TABLE), TABLE)
    assert "eod-keep" in lake.load_table(TABLE).metadata.refs
