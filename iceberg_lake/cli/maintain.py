"""`lake maintain compact-files|expire-snapshots|remove-orphans|rewrite-manifests|reset-position`
and `lake status`."""

from __future__ import annotations

from typing import Any

import typer

from iceberg_lake.cli.common import (
    OUTPUT_OPTION,
    OutputFormat,
    console,
    emit,
    open_catalog,
    say,
)
from iceberg_lake.exceptions import CommitConflictError
from iceberg_lake.ops.maintenance import (
    TableMaintenance,
    maintained_tables,
    parse_duration,
    parse_size,
    silver_sources,
)
from iceberg_lake.ops.maintenance import remove_orphans as orphan_removal

maintain_app = typer.Typer(
    name="maintain",
    help="Keep tables healthy: compact small files, expire snapshots, remove orphan files.",
    no_args_is_help=True,
)

TABLE_OPTION = typer.Option(
    None, "--table", "-t", help="namespace.table (default: every table in the catalog)"
)
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Only list what would change.")


@maintain_app.command("compact-files")
def compact_files(
    table: str | None = TABLE_OPTION,
    older_than: str = typer.Option(
        "1h", "--older-than", help="Only time partitions closed at least this long ago."
    ),
    target_size: str = typer.Option("256MB", "--target-size", help="Desired data file size."),
    dry_run: bool = DRY_RUN_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Bin-pack small data files of closed hour partitions, sorted by event time.

    One `overwrite` snapshot per table; the rows a reader sees do not change. Rows that land
    late in a partition being compacted are never overwritten: the compaction is re-planned
    (a few times, then it says so in one line).
    """
    age, size = parse_duration(older_than), parse_size(target_size)
    catalog = open_catalog(read_only=True)  # maintains tables: never makes a lake
    rows, conflicts = [], []
    for t in maintained_tables(catalog, table):
        try:
            rows.append(
                TableMaintenance(catalog, t).compact_files(age, size, dry_run=dry_run).as_dict()
            )
        except CommitConflictError as exc:
            # Other tables still get compacted; the conflict is reported once at the end.
            conflicts.append(str(exc))
    if rows or not conflicts:
        _emit(rows, output, "compact-files", lambda r: r["files_before"] > 0)
    _raise_conflicts(conflicts)


@maintain_app.command("expire-snapshots")
def expire_snapshots(
    table: str | None = TABLE_OPTION,
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Retention window (default: LAKE_<NS>_SNAPSHOT_RETENTION_SECONDS of each table).",
    ),
    retain_last: int = typer.Option(
        1, "--retain-last", min=1, help="Always keep this many newest snapshots."
    ),
    dry_run: bool = DRY_RUN_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Expire old snapshots and delete the files no remaining snapshot needs.

    The lake's expiry policy (docs/time-travel.md, "Retention"): hourly checkpoints are tagged
    first; never expires the current snapshot, one inside the retention window, a tagged one
    (checkpoints, replay pins, user tags) or a Bronze snapshot Silver names as its source.
    """
    age = parse_duration(older_than) if older_than is not None else None
    catalog = open_catalog(read_only=True)  # maintains tables: never makes a lake
    tables = maintained_tables(catalog, table)
    # Read Silver's source snapshots once, not once per Bronze table.
    sources = silver_sources(catalog) if any(t.startswith("bronze.") for t in tables) else {}
    results, conflicts = [], []
    for t in tables:
        maint = TableMaintenance(catalog, t, protected_snapshots=sources.get(t, set()))
        try:
            results.append(maint.expire_snapshots(age, retain_last=retain_last, dry_run=dry_run))
        except CommitConflictError as exc:
            # Other tables still get expired; the conflict is reported once at the end.
            conflicts.append(str(exc))
    rows = [r.as_dict() for r in results]
    if output == OutputFormat.text:
        for row in rows:
            row.pop("expired")
            files = row.pop("files")
            if dry_run:
                for f in files:
                    console.print(f"would delete {f}", highlight=False)
    changed = ("expired_snapshots", "checkpoints_tagged", "tags_dropped")
    _emit(rows, output, "expire-snapshots", lambda r: any(r[k] > 0 for k in changed))
    _raise_conflicts(conflicts)


def _raise_conflicts(conflicts: list[str]) -> None:
    """Report the tables whose operation lost every attempt to concurrent commits (one line)."""
    if conflicts:
        more = f" (and {len(conflicts) - 1} more table(s))" if len(conflicts) > 1 else ""
        raise CommitConflictError(conflicts[0] + more)


@maintain_app.command("rewrite-manifests")
def rewrite_manifests(
    table: str | None = TABLE_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Merge each table's manifests into few large ones (writers fast-append one per commit).

    One snapshot per table that adds no rows; readers see the same data. A concurrent commit
    makes it merge again from the new snapshot (a few times, then it says so in one line).
    """
    catalog = open_catalog(read_only=True)  # maintains tables: never makes a lake
    rows, conflicts = [], []
    for t in maintained_tables(catalog, table):
        try:
            rows.append(TableMaintenance(catalog, t).rewrite_manifests(dry_run=dry_run))
        except CommitConflictError as exc:
            # Other tables still get rewritten; the conflict is reported once at the end.
            conflicts.append(str(exc))
    if rows or not conflicts:
        _emit(rows, output, "rewrite-manifests", lambda r: r["manifests_before"] > 1)
    _raise_conflicts(conflicts)


@maintain_app.command("remove-orphans")
def remove_orphans(
    table: str | None = TABLE_OPTION,
    older_than: str = typer.Option(
        "1d", "--older-than", help="Only delete orphans last modified at least this long ago."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Allow --older-than below 1h (files of in-flight commits at risk); "
        "--dry-run needs no --force.",
    ),
    dry_run: bool = DRY_RUN_OPTION,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Delete files under a table's location that no retained metadata references.

    Safe during ingest: candidates are re-checked against freshly refreshed metadata of every
    table right before deletion. Intervals below 1h are refused unless --force is given.
    """
    age = parse_duration(older_than)
    catalog = open_catalog(read_only=True)  # maintains tables: never makes a lake
    results = orphan_removal(
        catalog, maintained_tables(catalog, table), age, dry_run=dry_run, force=force
    )
    rows = [r.as_dict() for r in results]
    if output == OutputFormat.text:
        for row in rows:
            for f in row.pop("files"):
                console.print(f"{'orphan' if dry_run else 'deleted'} {f}", highlight=False)
    _emit(rows, output, "remove-orphans", lambda r: r["orphans"] > 0)


RESET_TABLES_ARGUMENT = typer.Argument(
    None,
    help="Tables fed from the bus (or 'inferred'); default: every one. Only those whose "
    "stream no longer matches their committed position are reset.",
)


@maintain_app.command("reset-position")
def reset_position(
    tables: list[str] | None = RESET_TABLES_ARGUMENT,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """After a JetStream stream was deleted and created again (or NATS lost its storage):
    record the new stream and read it from its first message.

    `lake serve` refuses to start (one line) when a table's committed position counts in
    another stream than the live one; check what happened to the stream first (its messages
    may be new events, a replay of stored ones, or both). Consumers whose stream matches are
    left alone. Run it while the writers are stopped.
    """
    from iceberg_lake.ingest.position import reset_positions
    from iceberg_lake.ingest.service import resolve_targets

    catalog = open_catalog(read_only=True)  # resets positions: never makes a lake
    results = [r.as_dict() for r in reset_positions(catalog, resolve_targets(tables))]
    if output != OutputFormat.table:
        emit(results, output)
        return
    for r in results:
        if r["action"] == "reset":
            console.print(
                f"{r['table']}: position {r['old_position']} (stream {r['stream']} created "
                f"{r['old_created'] or 'unknown'}) reset to 0 in stream {r['stream']} created "
                f"{r['new_created']}; `lake serve` reads it from its first message",
                highlight=False,
            )
    reset = sum(r["action"] == "reset" for r in results)
    missing = sorted({r["stream"] for r in results if r["action"] == "no stream"})
    if missing:
        # Nothing to reset against: `lake serve` creates the stream, then this can run (ops8).
        say(
            f"reset-position: stream {', '.join(missing)} does not exist: start `lake serve` "
            "(it creates the stream), then run reset-position again",
            output,
        )
    if not reset and not missing:
        say(
            f"reset-position: nothing to do in {len(results)} consumer(s) (their streams match)",
            output,
        )


def _emit(rows: list[dict[str, Any]], output: OutputFormat, title: str, changed: Any) -> None:
    if output == OutputFormat.json:
        emit(rows, output)
        return
    shown = [r for r in rows if changed(r)]
    if not shown:
        say(f"{title}: nothing to do in {len(rows)} table(s)", output)
        return
    emit(shown, output, title=title)


def status(
    as_json: bool = typer.Option(
        False, "--json", hidden=True, help="Same as --output json (kept for old scripts)."
    ),
    output: OutputFormat = OUTPUT_OPTION,
    nats_timeout: float = typer.Option(
        3.0, "--nats-timeout", help="Seconds to wait for NATS before reporting it unreachable."
    ),
) -> None:
    """Tables (rows, files, mean file size, snapshots, last commit), consumer lag, dead letters."""
    from iceberg_lake.cli.output import print_status
    from iceberg_lake.ops.status import collect_status

    if output == OutputFormat.csv and not as_json:
        # A report of several sections, not one table: stdout under -o csv is data only.
        raise typer.BadParameter(
            "lake status has no CSV form (tables, consumers and dead letters): use -o json",
            param_hint="--output",
        )
    report = collect_status(open_catalog(read_only=True), nats_timeout=nats_timeout)
    if as_json or output == OutputFormat.json:
        typer.echo(report.to_json())
    else:
        print_status(report, console)


def register(app: typer.Typer) -> None:
    """Add `lake maintain ...` and `lake status` to the `lake` app."""
    app.add_typer(maintain_app, name="maintain")
    app.command("status")(status)
