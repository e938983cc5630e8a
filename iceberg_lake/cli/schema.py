"""`lake migrate status|up|new|check` and `lake table create|register|evolve`: schema evolution."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, console, emit
from iceberg_lake.cli.common import open_catalog as _open_catalog
from iceberg_lake.cli.output import format_ms
from iceberg_lake.exceptions import LakeError, SchemaChangeError
from iceberg_lake.schema.drift import ERROR, find_drift
from iceberg_lake.schema.evolve import (
    AddColumn,
    AddPartitionField,
    Change,
    DropColumn,
    RenameColumn,
    WidenColumn,
    check_declared_renames,
    check_partition_source_renames,
    evolve_table,
)
from iceberg_lake.schema.migrations import DEFAULT_LOCK_TIMEOUT, MigrationRunner

migrate_app = typer.Typer(
    help="Versioned schema migrations (migrations/NNNN_name.py).", no_args_is_help=True
)
table_app = typer.Typer(
    help="Create a declared table or evolve a live one safely.", no_args_is_help=True
)

DIR_OPTION = typer.Option(
    None,
    "--dir",
    help="Migrations folder (default: the shipped migrations/ and LAKE_MIGRATIONS_DIR).",
    show_default=False,
)


def register(app: typer.Typer) -> None:
    """Add the `migrate` and `table` sub-apps to the `lake` app."""
    app.add_typer(migrate_app, name="migrate")
    app.add_typer(table_app, name="table")


def _runner(
    directory: Path | None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    *,
    read_only: bool = False,
) -> MigrationRunner:
    return MigrationRunner(_open_catalog(read_only=read_only), directory, lock_timeout=lock_timeout)


# ---- lake migrate -----------------------------------------------------------------------------


@migrate_app.command("status")
def migrate_status(
    directory: Path | None = DIR_OPTION, output: OutputFormat = OUTPUT_OPTION
) -> None:
    """List migrations: applied (with checksum and time), pending, edited or missing."""
    runner = _runner(directory, read_only=True)
    try:
        rows = [s.as_row() for s in runner.status()]
    finally:
        runner.close()
    if not rows and output == OutputFormat.text:
        console.print(f"no migrations in {runner.directory}")
        return
    columns = ["version", "name", "state", "checksum", "applied_at"]
    if any(r["state"] in ("edited", "missing") for r in rows):
        columns.insert(4, "applied_checksum")
    emit(rows, output, title="migrations", columns=columns)


@migrate_app.command("up")
def migrate_up(
    to: int | None = typer.Option(None, "--to", help="Apply up to and including this version."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact changes, commit none."),
    lock_timeout: float = typer.Option(
        DEFAULT_LOCK_TIMEOUT, "--lock-timeout", help="Seconds to wait for another `migrate up`."
    ),
    directory: Path | None = DIR_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Apply pending migrations in order (idempotent: a second run does nothing)."""
    runner = _runner(directory, lock_timeout)
    try:
        results = runner.up(to, dry_run=dry_run)
    finally:
        runner.close()
    if output != OutputFormat.text:
        # CSV too: stdout holds data only (the changes joined with "; " in a CSV cell).
        emit(
            [
                {
                    "version": r.migration.version,
                    "name": r.migration.name,
                    "dry_run": dry_run,
                    "recorded": r.recorded,
                    "duration_ms": r.duration_ms,
                    "changes": _changes(r.lines(), output),
                }
                for r in results
            ],
            output,
            columns=["version", "name", "dry_run", "recorded", "duration_ms", "changes"],
        )
        return
    if not results:
        console.print("nothing to apply: every migration is applied")
        return
    verb = "would apply" if dry_run else "applied"
    for r in results:
        console.print(
            f"[bold]{verb} {escape(r.migration.id)}[/bold] ({r.duration_ms} ms)",
            markup=True,
            highlight=False,
        )
        for line in r.lines():
            console.print(f"  {line}", highlight=False, soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing committed or recorded")


@migrate_app.command("new")
def migrate_new(
    name: str = typer.Argument(..., help="Short name, e.g. quotes_venue."),
    directory: Path | None = DIR_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Write a numbered migration template NNNN_name.py to fill in."""
    runner = _runner(directory)
    try:
        path = runner.new(name)
    finally:
        runner.close()
    if output != OutputFormat.text:
        emit([{"path": str(path)}], output)
        return
    console.print(f"created {path}", highlight=False, soft_wrap=True)


@migrate_app.command("check")
def migrate_check(
    directory: Path | None = DIR_OPTION, output: OutputFormat = OUTPUT_OPTION
) -> None:
    """Compare catalog/ with the live tables; exit 1 if they differ."""
    drift = find_drift(_open_catalog(read_only=True), directory)
    errors = [d for d in drift if d.severity == ERROR]
    if output == OutputFormat.json:
        emit([d.as_row() for d in drift], output)
    elif drift:
        emit([d.as_row() for d in drift], output, title="drift")
    if output == OutputFormat.text:
        if errors:
            console.print(f"{len(errors)} difference(s) between catalog/ and the live tables")
        else:
            console.print("no drift: the live tables match catalog/")
    if errors:
        raise typer.Exit(1)


# ---- lake table -------------------------------------------------------------------------------


@table_app.command("create")
def table_create(
    name: str = typer.Argument(..., help="Declared table, e.g. silver.stocks_trades."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Create one table from its catalog/ definition (idempotent)."""
    catalog = _open_catalog()
    definition = catalog.definition(name)
    catalog.ensure_warehouse()
    catalog.ensure_namespaces()
    created = catalog.create_table(definition)
    if output != OutputFormat.text:
        row = {
            "table": name,
            "created": created,
            "schema_name": definition.schema_name,
            "schema_version": definition.schema_version,
        }
        emit([row], output)
    elif created:
        version = f"{definition.schema_name} v{definition.schema_version}"
        console.print(f"created {name} (schema {version})")
    else:
        console.print(f"{name} already exists")


@table_app.command("register")
def table_register(
    name: str = typer.Argument(..., help="Declared table missing from the catalog."),
    metadata: str = typer.Argument(
        ..., help="Its metadata file to register (the newest: `lake init` names it)."
    ),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Put a table missing from the catalog (a restored or failed-over catalog) back, at one
    of the metadata files its location still holds: snapshots, properties and the writers'
    watermarks come back as they were, so ingestion resumes exactly once."""
    catalog = _open_catalog()
    table = catalog.register_existing(name, metadata)
    snapshot = table.current_snapshot()
    row = {
        "table": name,
        "metadata": metadata,
        "snapshots": len(table.snapshots()),
        "current_snapshot": snapshot.snapshot_id if snapshot else None,
        "last_commit": format_ms(snapshot.timestamp_ms) if snapshot else None,
    }
    if output != OutputFormat.text:
        emit([row], output)
        return
    console.print(
        f"registered {name}: {row['snapshots']} snapshots, current "
        f"{row['current_snapshot'] or '(none)'} of {row['last_commit'] or '-'}; check it with "
        f"lake describe {name} before starting the writers"
    )


ADD_COLUMN_OPTION = typer.Option(
    [], "--add-column", help="col:type, e.g. venue:string (repeatable)."
)
RENAME_OPTION = typer.Option([], "--rename", help="old:new (repeatable).")
WIDEN_OPTION = typer.Option(
    [], "--widen", help="col:type: int->long, float->double, decimal precision (repeatable)."
)
DROP_OPTION = typer.Option([], "--drop-column", help="Column to drop (needs --force; repeatable).")
PARTITION_OPTION = typer.Option(
    [], "--add-partition-field", help="col:transform, e.g. venue:identity or ts_event:day."
)


def _pair(text: str, option: str, what: str) -> tuple[str, str]:
    left, sep, right = text.partition(":")
    if not sep or not left.strip() or not right.strip():
        raise SchemaChangeError(f"{option} expects {what}, got {text!r}")
    return left.strip(), right.strip()


@table_app.command("evolve")
def table_evolve(
    name: str = typer.Argument(..., help="Table, e.g. bronze.stocks_trades."),
    add_column: list[str] = ADD_COLUMN_OPTION,
    doc: str = typer.Option("", "--doc", help="Doc string of the added column(s)."),
    required: bool = typer.Option(
        False, "--required", help="Add the column(s) as required (only on an empty table)."
    ),
    rename: list[str] = RENAME_OPTION,
    widen: list[str] = WIDEN_OPTION,
    drop_column: list[str] = DROP_OPTION,
    force: bool = typer.Option(
        False, "--force", help="Confirm --drop-column or renaming a column catalog/ declares."
    ),
    add_partition_field: list[str] = PARTITION_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the changes, commit none."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Change a live table safely in one commit that bumps lake.schema-version.

    Refused (exit 1, with the reason): narrowing a type, adding a required column to a table with
    data, unknown types, dropping a partition source. Remember to update catalog/ (or write a
    migration) so `lake migrate check` agrees.
    """
    changes: list[Change] = []
    for spec in add_column:
        col, typ = _pair(spec, "--add-column", "col:type")
        changes.append(AddColumn(col, typ, doc, required))
    for spec in rename:
        changes.append(RenameColumn(*_pair(spec, "--rename", "old:new")))
    for spec in widen:
        changes.append(WidenColumn(*_pair(spec, "--widen", "col:type")))
    if drop_column and not force:
        raise SchemaChangeError(
            f"dropping {', '.join(drop_column)} removes it from the current schema (old snapshots"
            " keep it); pass --force to confirm"
        )
    changes.extend(DropColumn(c.strip()) for c in drop_column)
    for spec in add_partition_field:
        changes.append(AddPartitionField(*_pair(spec, "--add-partition-field", "col:transform")))
    if not changes:
        raise LakeError(
            "nothing to change: pass --add-column, --rename, --widen, --drop-column"
            " or --add-partition-field"
        )
    catalog = _open_catalog(read_only=True)  # evolves a live table: never makes a lake
    if not force:
        declared = catalog.registry.get(name) if name in catalog.registry else None
        check_declared_renames(declared, changes)
    table = catalog.load_table(name)
    check_partition_source_renames(name, changes, catalog.registry)
    result = evolve_table(table, name, changes, dry_run=dry_run, fresh=True)
    lines = result.plan.describe()
    if output != OutputFormat.text:
        emit(
            [
                {
                    "table": name,
                    "dry_run": dry_run,
                    "committed": result.committed,
                    "schema_version": result.plan.after.schema_version,
                    "changes": _changes(lines, output),
                }
            ],
            output,
        )
        return
    verb = "would change" if dry_run else ("changed" if result.committed else "unchanged")
    console.print(f"[bold]{verb} {escape(name)}[/bold]", markup=True, highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def _changes(lines: list[str], output: OutputFormat) -> list[str] | str:
    """A change list as JSON keeps it, or as one CSV cell."""
    return lines if output == OutputFormat.json else "; ".join(lines)
