"""Guard test: the pyiceberg log records the CLI treats as retry chatter
(`engine.iceberg.RETRY_CHATTER_PREFIXES`, `is_retry_chatter`).

Fails loudly when a pyiceberg upgrade rewords them (the CLI would show them again at the default
log level) or when the test of what is chatter drifts. Budget: <1 s.
"""

from __future__ import annotations

import inspect
import logging

import pyiceberg.catalog
from pyiceberg.table import Transaction

from iceberg_lake.engine.iceberg import is_retry_chatter


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_pyiceberg_still_logs_the_messages_the_cli_treats_as_chatter() -> None:
    assert "Commit failed due to a concurrent update, retrying" in inspect.getsource(
        Transaction.commit_transaction
    )
    assert 'f"Failed to delete {file_type} file {file}"' in inspect.getsource(pyiceberg.catalog)


def test_only_pyiceberg_warnings_about_retries_and_cleanups_are_chatter() -> None:
    retry = "Commit failed due to a concurrent update, retrying (%s/%s) in %s ms"
    assert is_retry_chatter(_record("pyiceberg.table", logging.WARNING, retry))
    assert is_retry_chatter(
        _record("pyiceberg.catalog", logging.WARNING, "Failed to delete metadata file s3://b/m")
    )
    assert not is_retry_chatter(_record("pyiceberg.table", logging.ERROR, retry))  # an error
    assert not is_retry_chatter(_record("iceberg_lake.load", logging.WARNING, retry))
    assert not is_retry_chatter(_record("pyiceberg.io", logging.WARNING, "Could not read x"))


def test_a_missing_metadata_file_is_noted_once_per_table_location() -> None:
    from iceberg_lake.engine.iceberg import is_repeated_metadata_delete_note

    def note(path: str, level: int = logging.WARNING) -> logging.LogRecord:
        return _record("pyiceberg.catalog", level, f"Failed to delete metadata file {path}")

    a, b = "s3://guard-bucket/w/bronze/a/metadata", "s3://guard-bucket/w/bronze/b/metadata"
    assert not is_repeated_metadata_delete_note(note(f"{a}/00001-x.metadata.json"))
    assert is_repeated_metadata_delete_note(note(f"{a}/00002-y.metadata.json"))
    assert not is_repeated_metadata_delete_note(note(f"{b}/00001-x.metadata.json"))
    assert not is_repeated_metadata_delete_note(note(f"{a}/00003-z.metadata.json", logging.ERROR))
    data = _record(
        "pyiceberg.catalog", logging.WARNING, f"Failed to delete data file {a}/d.parquet"
    )
    assert not is_repeated_metadata_delete_note(data) and not is_repeated_metadata_delete_note(data)
