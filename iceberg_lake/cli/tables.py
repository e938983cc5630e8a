"""`lake init`, `lake tables`, `lake describe`: create and inspect the declared tables."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import typer
from rich.markup import escape

from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, console, emit, format_ms
from iceberg_lake.cli.common import open_catalog as _open_catalog
from iceberg_lake.cli.output import get_output
from iceberg_lake.tables import SCHEMA_NAME_PROPERTY, SCHEMA_VERSION_PROPERTY


def register(app: typer.Typer) -> None:
    """Add `init`, `tables` and `describe` to the `lake` app."""
    app.command("init")(init)
    app.command("tables")(tables)
    app.command("describe")(describe)


def init(output: OutputFormat = OUTPUT_OPTION) -> None:
    """Create the warehouse, the namespaces and every declared table that is missing.

    Idempotent: a second run creates nothing.
    """
    catalog = _open_catalog()
    # Before anything is created (docs19: a refused LAKE_WAREHOUSE had its directory made).
    catalog.refuse_other_warehouse()
    # Only `lake init` creates the S3 bucket, and says so: a mistyped LAKE_WAREHOUSE shows up
    # here as a new bucket instead of passing silently.
    new_bucket = catalog.ensure_warehouse() and catalog.settings.warehouse.startswith("s3")
    created = catalog.init()
    if new_bucket and output != OutputFormat.json:
        console.print(f"created bucket {urlparse(catalog.settings.warehouse).netloc}")
    if output == OutputFormat.json:
        emit([{"created": c} for c in created], output)
        return
    if created:
        for c in created:
            console.print(f"created {c}")
        console.print(f"{len(created)} created; warehouse {catalog.settings.warehouse}")
    else:
        console.print(f"nothing to create: all {len(catalog.registry)} tables exist")


def tables(output: OutputFormat = OUTPUT_OPTION) -> None:
    """List the lake's tables: rows, data files, snapshots and last commit. Read-only.

    Every declared table is listed; one the catalog has no row for is marked (`missing` in
    JSON and CSV) and named in an error line on stderr.
    """
    from datetime import UTC, datetime

    from iceberg_lake.ops.status import lake_table_status, missing_table_errors

    catalog = _open_catalog(read_only=True)
    out = get_output(output)
    statuses = lake_table_status(catalog, datetime.now(UTC))
    if all(t.missing for t in statuses) and out.for_people:
        out.message("no tables yet: run `lake init`")
        return
    rows = []
    for t in statuses:
        row: dict[str, Any] = {
            "table": t.table,
            "rows": t.rows,
            "data_files": t.data_files,
            "bytes": t.bytes,
            "snapshots": t.snapshots,
            "last_commit": t.last_commit or "-",
        }
        if not out.for_people:
            row["missing"] = t.missing
            if t.missing:  # no counts, and why (review19c: 0s and no `error`)
                row |= dict.fromkeys(("rows", "data_files", "bytes", "snapshots"))
                row |= {"last_commit": None, "error": t.error}
        elif t.missing:
            row = dict.fromkeys(row, "-") | {"table": t.table, "last_commit": "not in the catalog"}
        rows.append(row)
    out.rows(rows, title="tables")
    for line in missing_table_errors(statuses):
        out.error(line)


def describe(
    table: str = typer.Argument(..., help="namespace.table, e.g. bronze.stocks_trades"),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Show a table's schema, partition spec, properties and current snapshot."""
    catalog = _open_catalog(read_only=True)
    tbl = catalog.load_table(table)
    schema = tbl.schema()
    columns = [
        {
            "id": f.field_id,
            "name": f.name,
            "type": str(f.field_type),
            "required": f.required,
            "doc": f.doc or "",
        }
        for f in schema.fields
    ]
    partition = [
        {
            "name": p.name,
            "transform": str(p.transform),
            "source": schema.find_column_name(p.source_id),
        }
        for p in tbl.spec().fields
    ]
    snap = tbl.current_snapshot()
    current: dict[str, Any] | None = None
    if snap is not None:
        current = {
            "snapshot_id": snap.snapshot_id,
            "time": format_ms(snap.timestamp_ms),
            "operation": snap.summary.operation.value if snap.summary else None,
            "summary": dict(snap.summary.additional_properties) if snap.summary else {},
        }
    info = {
        "table": table,
        "location": tbl.location(),
        "schema_name": tbl.properties.get(SCHEMA_NAME_PROPERTY),
        "schema_version": tbl.properties.get(SCHEMA_VERSION_PROPERTY),
        "format_version": tbl.format_version,
        "columns": columns,
        "partition_spec": partition,
        "properties": dict(tbl.properties),
        "current_snapshot": current,
    }
    if output == OutputFormat.json:
        emit([info], output)
        return
    console.print(f"[bold]{escape(table)}[/bold]  ({escape(str(info['location']))})", markup=True)
    console.print(
        f"schema {info['schema_name']} v{info['schema_version']}, format v{info['format_version']}"
    )
    emit(columns, output, title="schema")
    emit(partition, output, title="partition spec")
    emit([{"key": k, "value": v} for k, v in sorted(tbl.properties.items())], output, "properties")
    if current:
        console.print(
            f"current snapshot {current['snapshot_id']} at {current['time']}"
            f" ({current['operation']})"
        )
        for k, v in sorted(current["summary"].items()):
            console.print(f"  {k} = {v}")
    else:
        console.print("no snapshot yet (empty table)")
