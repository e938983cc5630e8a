"""A storage failure while Silver's files are finished reads as one (prod17).

Closing a Silver file completes its upload (an S3 multipart upload): an S3 stall there came out
as `internal error: OSError: … CompleteMultipartUpload …`, the wording the CLI keeps for bugs,
while the same stall one step earlier read `storage unavailable`. The failure is injected into
the file writer's close (the real store is SeaweedFS in production; stalling it at exactly
that step takes minutes of timeouts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_silver import BRONZE, DAY, _make_lake, append, base_rows

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
