"""`lake check`: data-quality counts over a time window (read-only)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from iceberg_lake.cli.common import (
    AS_OF_OPTION,
    OUTPUT_OPTION,
    OutputFormat,
    emit,
    err_console,
    open_catalog,
    parse_since_ns,
    parse_time_ns,
    say,
    split_names,
)
from iceberg_lake.cli.query import parse_as_of
from iceberg_lake.ops.check import CHECKS, CheckReport
from iceberg_lake.ops.status import missing_table_error
from iceberg_lake.tables import DEAD_LETTERS_TABLE


def check(
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table", "-t", help="A table to check (as in every command); repeat for more."
        ),
    ] = None,
    tables: Annotated[
        list[str] | None,
        typer.Option(
            "--tables",
            help="Tables to check (comma-separated or repeated); default: all but dead letters.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Window start on ts_event_ns: Unix ns, ISO time (UTC) or an age (2h, 7d).",
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Exclusive window end: Unix ns or ISO time.")
    ] = None,
    as_of: Annotated[list[str] | None, AS_OF_OPTION] = None,
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any count is not zero."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Count sequence gaps, ts_recv < ts_event, ts_event not ts_event_ns (an engine's write),
    crossed books, out-of-range values, duplicates.

    Reads one snapshot per table (sandboxed DuckDB); writes nothing.
    """
    from iceberg_lake.ops.check import check_tables
    from iceberg_lake.timetravel.query import Lake

    since_ns = parse_since_ns(since) if since else None
    until_ns = parse_time_ns(until, "--until") if until else None
    catalog = open_catalog(read_only=True)
    # Declared tables the catalog lacks are not checked: said, not skipped silently (review19d).
    missing = (
        []
        if table or tables
        else sorted(
            set(catalog.registry.identifiers)
            - set(catalog.existing_tables())
            - {DEAD_LETTERS_TABLE}
        )
    )
    with Lake(catalog, sandbox=True) as lake:
        report = check_tables(
            lake,
            split_names([*table, *(tables or [])] if table else tables),
            since_ns=since_ns,
            until_ns=until_ns,
            as_of=parse_as_of(as_of),
        )
    if output == OutputFormat.json:
        typer.echo(json.dumps({**report.as_dict(), "missing": missing}, indent=2))
    else:
        emit(
            _matrix(report),
            output,
            title="lake check",
            columns=["table", "rows", *CHECKS, "detail"],
        )
        hit = len({r.table for r in report.rows if r.count})
        checked = len({r.table for r in report.rows})
        say(f"{report.issues} issue(s) in {hit} of {checked} table(s) checked", output)
    for identifier in missing:
        err_console.print(
            f"[red]error:[/red] {escape(missing_table_error(identifier))} (not checked)",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
    if strict and (report.issues or missing):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `lake check` to the `lake` app."""
    app.command("check")(check)


def _matrix(report: CheckReport) -> list[dict[str, Any]]:
    """One row per table, one column per check ('-' where a check does not apply)."""
    by_table: dict[str, dict[str, Any]] = {}
    for r in report.rows:
        row = by_table.setdefault(r.table, {"table": r.table, "rows": r.rows, "detail": ""})
        row[r.check] = r.count
        if r.detail:
            row["detail"] = "; ".join(filter(None, [row["detail"], f"{r.check}: {r.detail}"]))
    for row in by_table.values():
        for c in CHECKS:
            row.setdefault(c, "-")
    return list(by_table.values())
