"""How Spark write errors read (no JVM: the texts are py4j's, as review17b captured them)."""

from __future__ import annotations

from iceberg_lake.engine.spark import is_write_conflict, spark_error_line

ROLLED_BACK = (
    "An error occurred while calling o136.overwrite.\n"
    ": org.apache.iceberg.exceptions.ValidationException: Cannot determine history between "
    "starting snapshot 1880213748498978202 and the last known ancestor 5900904570502567480\n"
    "\tat org.apache.iceberg.exceptions.ValidationException.check(ValidationException.java:49)\n"
)
CONFLICT = (
    "An error occurred while calling o98.overwritePartitions.\n"
    ": org.apache.iceberg.exceptions.ValidationException: Found conflicting files that can "
    "contain records matching partitions [symbol=SPY, ts_event_hour=489470]: [a.parquet]\n"
)


def test_the_line_shown_is_the_java_cause_not_the_py4j_call() -> None:
    """review17b: the one line said only "An error occurred while calling o136.overwrite."."""
    line = spark_error_line(Exception(ROLLED_BACK))
    assert line.startswith("ValidationException: Cannot determine history between")
    assert spark_error_line(Exception("[INCOMPATIBLE_DATA_FOR_TABLE] x\nmore")) == (
        "[INCOMPATIBLE_DATA_FOR_TABLE] x"
    )


def test_conflicts_and_rollbacks_are_planned_again_other_errors_are_not() -> None:
    assert is_write_conflict(Exception(CONFLICT))
    assert is_write_conflict(Exception(ROLLED_BACK))
    assert not is_write_conflict(Exception("An error occurred\n: java.io.IOException: disk full"))
