"""The lake's exception hierarchy.

Every error a user can cause or an operator must act on is a `LakeError`; the CLI turns one into a
single line on stderr and exit code 1. Errors that a retry can fix (an unreachable object store, a
commit conflict) are `TransientError`s, so retry loops ask the type, never the message.
"""

from __future__ import annotations


class LakeError(Exception):
    """Root of every error iceberg_lake raises on purpose."""


class TransientError(LakeError):
    """An error that may succeed when retried (outage, conflict, timeout)."""


class BusUnavailableError(TransientError):
    """NATS did not do what was asked, for a reason a retry may fix: the connection is down,
    reconnecting or closed, a request timed out, nothing answered (JetStream restarting), or the
    consumer being read was deleted. Raised by `iceberg_lake.engine.nats` (`bus_errors`)."""


class BusClosedError(LakeError):
    """The NATS client closed its connection for good and will not reconnect (the server
    refused something the client sent, e.g. a message over its `max_payload`): the process
    must start again to read on."""


class OrphanedTableError(LakeError):
    """A declared table missing from the catalog whose location still holds its metadata files
    (a catalog restored or failed over without it): it must be registered back, not created."""


class ConfigError(LakeError):
    """Invalid or incomplete configuration; the message names the variable to fix."""


class CatalogUnavailableError(TransientError):
    """The catalog database or the warehouse storage cannot be reached."""


class CommitConflictError(TransientError):
    """A concurrent commit won the compare-and-swap on the table metadata."""


class WriterFencedError(LakeError):
    """Another writer took over this consumer (its lease, or the table's watermark moved).

    Not retryable by the writer that gets it: it drops its uncommitted batch unacked and waits
    as a standby (or re-reads from the new watermark while it still holds the lease).
    """


class ForeignWriterError(LakeError):
    """A writer that takes no lease committed for a consumer while this writer held its lease.

    Its ingest snapshot names no lease (`properties.WRITER_LEASE`): an iceberg_lake before
    leases (0.1, during a rolling upgrade) or another tool. Its commits skip messages this
    writer fetched, so both together lose and duplicate events. Not retryable: the writer
    stops and `lake serve` ends with one line; the operator stops the other writer first.
    """


class OtherLakeError(LakeError):
    """A consumer's lease is held by a writer of another lake on the same NATS account.

    Consumer names and leases depend only on the table, so two lakes (their own catalogs and
    warehouses, e.g. production and staging) on one NATS account share them: the one that
    holds a lease keeps the other standing by for good. Not retryable: `lake serve` ends with
    one line naming the other lake's writer; each lake needs its own NATS account (review14).
    """


class StreamMismatchError(LakeError):
    """The JetStream stream is not the one a table's committed watermark counts in: it was
    deleted and created again, or the NATS server lost its storage (its sequences start over).

    Not retryable: reading on would skip or misplace messages. The writer stops; the operator
    checks what happened and runs `lake maintain reset-position` (docs/production.md).
    """


class DataRejectedError(LakeError):
    """The store refused values of a batch for a reason a retry cannot fix (a partition path
    too long for the file system, a cast that can never succeed). The writer dead-letters the
    affected rows with this reason and moves on."""


class ShutdownTimeoutError(LakeError):
    """A stop was asked while a commit kept failing; the grace period ran out and nothing was
    acked (the bus redelivers it to the next writer)."""


class CorruptMetadataError(LakeError):
    """A table's metadata file cannot be parsed (truncated, edited by hand, not Iceberg JSON).

    Not retryable: a retry reads the same file. The message names the table and the file.
    """


class UnknownTableError(LakeError):
    """A table name that the lake does not declare or the catalog does not hold."""


class SchemaChangeError(LakeError):
    """A schema or partition change that Iceberg cannot make safely."""


class ValidationError(LakeError):
    """A message that cannot be stored; `reason` is what goes to the dead-letter record.

    Raised by the decoder (its `iceberg_lake.ingest.decode.MessageError` is a subclass).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MigrationError(LakeError):
    """A migration that failed, was edited after being applied, or is otherwise invalid."""


class CompactionError(LakeError):
    """Silver compaction cannot run as asked (bad date, unknown snapshot or tag, bad layout)."""


class TimeTravelError(LakeError):
    """An `as_of` pin that names no snapshot, tag or usable timestamp, or a bad replay range."""


class LoadRejectedError(LakeError):
    """A file `lake load` refused whole: its first commit's worth of rows held no valid row
    (a wrong `--format` or `--mapping`, or a file for another table). Nothing of it was stored
    or dead-lettered and its ledger entry was not set, so a corrected run loads it.

    Attributes:
        file: the file's path; table: the target table; sha256: the file's content hash.
    """

    def __init__(self, message: str, file: str = "", table: str = "", sha256: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.table = table
        self.sha256 = sha256
