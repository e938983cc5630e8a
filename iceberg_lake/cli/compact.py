"""`lake compact`: Bronze → Silver compaction (dedup + sort, atomic partition replacement)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, emit, err_console, settings
from iceberg_lake.config import redact

SUMMARY_COLUMNS = [
    "table",
    "date",
    "status",
    "rows_read",
    "rows_written",
    "duplicates_removed",
    "partitions",
    "partitions_unchanged",
    "source_snapshot_id",
    "silver_snapshot_id",
    "seconds",
]


class Engine(StrEnum):
    """Which engine runs the compaction."""

    duckdb = "duckdb"
    spark = "spark"


ENGINE_OPTION = typer.Option(
    Engine.duckdb,
    "--engine",
    help="duckdb (default, incremental) or spark (scale-out; --date or --all-dates).",
)

#: Text output: column title → result key (narrow enough for an 80-column terminal).
TEXT_COLUMNS = {
    "table": "table",
    "date": "date",
    "status": "status",
    "read": "rows_read",
    "written": "rows_written",
    "dups": "duplicates_removed",
    "parts": "partitions",
    "same": "partitions_unchanged",
    "s": "seconds",
}


def compact(
    date: str | None = typer.Option(None, "--date", help="UTC day to compact, YYYY-MM-DD."),
    all_dates: bool = typer.Option(False, "--all-dates", help="Compact every day (needs --table)."),
    incremental: bool = typer.Option(
        False, "--incremental", help="Compact only what Bronze changed since the last run."
    ),
    table: str | None = typer.Option(
        None, "--table", "-t", help="Schema or table: futures.trades, futures_trades, ..."
    ),
    symbol: str | None = typer.Option(
        None, "--symbol", "-s", help="Only this partition value (symbol or underlying)."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="Pin Bronze: tag, snapshot id or ISO time (default: current)."
    ),
    snapshot: int | None = typer.Option(
        None, "--snapshot", hidden=True, help="Same as --as-of SNAPSHOT_ID."
    ),
    tag: str | None = typer.Option(None, "--tag", hidden=True, help="Same as --as-of TAG."),
    engine: Engine = ENGINE_OPTION,
    spark_master: str = typer.Option(
        "local[*]", "--spark-master", envvar="SPARK_MASTER", help="Spark master (--engine spark)."
    ),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Deduplicate and sort Bronze into Silver; one atomic snapshot per table and 500 partitions.

    Idempotent.

    `--engine spark` runs the same rule on Spark (for a day that outgrows one machine): with
    --date, or --all-dates (every day in one snapshot); every partition of those days is
    rewritten (no change detection).
    """
    from iceberg_lake.silver.compactor import SilverCompactor

    modes = [
        m
        for m, on in (("--date", date), ("--all-dates", all_dates), ("--incremental", incremental))
        if on
    ]
    if len(modes) != 1:
        raise typer.BadParameter(
            "give exactly one of --date D, --all-dates or --incremental", param_hint="--date"
        )
    if all_dates and not table:
        raise typer.BadParameter("--all-dates needs --table", param_hint="--table")
    # A tag or a time, for either engine to resolve as `as_of` (silver.plan.pin_snapshot).
    pin: str | None = tag
    if as_of is not None:
        if snapshot is not None or tag:
            raise typer.BadParameter("give --as-of alone", param_hint="--as-of")
        if as_of.strip().isdigit():
            snapshot = int(as_of)
        else:
            pin = as_of
    if incremental and (snapshot is not None or pin or symbol):
        raise typer.BadParameter(
            "--incremental always uses the current Bronze snapshot and every partition",
            param_hint="--incremental",
        )
    if snapshot is not None and not table:
        raise typer.BadParameter("a snapshot id pins one table: add --table", param_hint="--as-of")
    if snapshot is not None and pin:
        raise typer.BadParameter("give --snapshot or --tag, not both", param_hint="--snapshot")

    if engine == Engine.spark:
        if incremental:
            raise typer.BadParameter(
                "--engine spark compacts --date D or --all-dates (no change detection)",
                param_hint="--engine",
            )
        on_spark = _compact_on_spark(date, table, symbol, snapshot, pin, spark_master)
        _print(on_spark, output)
        _fail_on_errors(on_spark)
        return

    show_progress = output == OutputFormat.text and err_console.is_terminal
    with Progress(
        TextColumn("{task.description}", markup=False),  # a file or table name, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show_progress,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        results: Sequence[Mapping[str, Any]]
        with SilverCompactor(settings(), progress=progress) as compactor:
            if incremental:
                results = compactor.compact_incremental([table] if table else None)
            elif all_dates:
                assert table is not None
                results = compactor.compact_all_dates(table, symbol, snapshot, as_of=pin)
            elif table:
                assert date is not None
                results = [compactor.compact_date(date, table, symbol, snapshot, as_of=pin)]
            else:
                assert date is not None
                by_schema = compactor.compact_all_schemas(date, symbol, snapshot, as_of=pin)
                results = list(by_schema.values())

    _print(results, output)
    _fail_on_errors(results)


def _fail_on_errors(results: Sequence[Mapping[str, Any]]) -> None:
    """One line on stderr per table that failed (after the summary); then exit 1.

    A several-table run compacts every other table first (`SilverCompactor` records a failure
    as the table's `error` result), so one broken table costs only its own freshness.
    """
    failed = [r for r in results if r.get("status") == "error"]
    if not failed:
        return
    missing = {
        m.group(1)
        for r in failed
        if (m := re.search(r"has no tag or snapshot ('[^']*')", str(r.get("error"))))
    }
    if len(failed) > 1 and len(failed) == len(results) and len(missing) == 1:
        # The same --as-of on every table (docs19: six lines saying one thing).
        err_console.print(
            Text.assemble(
                ("error:", "red"),
                f" no tag or snapshot {missing.pop()} in any Bronze table (lake snapshot list)",
            ),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    for r in failed:
        table, error = str(r.get("table")), str(r.get("error"))
        # Most reasons name their table already ("committing silver.x: …"): not twice.
        line = error if table in error else f"{table}: {error}"
        # Text, not markup: the reason may contain brackets; credentials are masked.
        err_console.print(
            Text.assemble(("error:", "red"), " ", redact(line, settings())),
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(1)


def _compact_on_spark(
    date: str | None,
    table: str | None,
    symbol: str | None,
    snapshot: int | None,
    as_of: str | None,
    master: str,
) -> list[dict[str, Any]]:
    """Compact on Spark; `as_of` (a tag or a time) is resolved by the DuckDB path's resolver."""
    from iceberg_lake.catalog import LakeCatalog
    from iceberg_lake.engine.spark import spark_session, stop_spark
    from iceberg_lake.silver.spark import SparkSilverCompactor

    lake = LakeCatalog(settings())
    spark = spark_session(lake.settings, master=master)
    try:
        compactor = SparkSilverCompactor(spark, lake)
        if date is None:  # --all-dates (it needs --table): every day, one snapshot
            assert table is not None
            return [compactor.compact_all_dates(table, symbol, snapshot, as_of=as_of)]
        if table:
            return [compactor.compact_date(date, table, symbol, snapshot, as_of=as_of)]
        return compactor.compact_all_schemas(date, symbol, as_of=as_of)
    finally:
        stop_spark(spark)


def _print(results: Sequence[Mapping[str, Any]], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        keys = [*SUMMARY_COLUMNS, "replaced_partitions", "dates", "error"]
        # `dates` only where a result has it: a Spark `--all-dates` run (one for all days);
        # `error` only for a table that failed.
        emit(
            [{k: r.get(k) for k in keys if k not in ("dates", "error") or k in r} for r in results],
            output,
        )
        return
    text_rows = [{label: r.get(key) for label, key in TEXT_COLUMNS.items()} for r in results]
    for row, r in zip(text_rows, results, strict=True):
        # Every row is a Silver table: the namespace only costs width.
        row["table"] = str(row["table"] or "").removeprefix("silver.")
        if r.get("dates"):
            row["date"] = r["dates"][0] + (f"..{r['dates'][-1]}" if len(r["dates"]) > 1 else "")
    emit(text_rows, output, title="Silver compaction", columns=list(TEXT_COLUMNS))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `lake` app."""
    app.command("compact")(compact)
