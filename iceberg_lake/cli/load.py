"""`lake load`: historical backfill of vendor files into Bronze, exactly once per file."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.common import OUTPUT_OPTION, OutputFormat, emit, err_console, say, settings
from iceberg_lake.cli.output import to_json
from iceberg_lake.exceptions import LakeError

#: Text output: column title → result key.
TEXT_COLUMNS = {
    "file": "file",
    "table": "table",
    "status": "status",
    "read": "rows_read",
    "stored": "rows_stored",
    "dead": "dead_lettered",
    "skipped": "rows_skipped",
    "parts": "partitions",
    "snaps": "snapshots",
}

PATHS_ARGUMENT = typer.Argument(
    ..., help="Files (or folders of files) to load: DBN, CSV[.gz], Parquet, NDJSON."
)


def load(
    paths: list[Path] = PATHS_ARGUMENT,
    table: str | None = typer.Option(
        None, "--table", "-t", help="Target Bronze table; default: from the mapping / DBN schema."
    ),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="dbn, csv, parquet or ndjson; default: from the file name."
    ),
    mapping: str | None = typer.Option(
        None, "--mapping", "-m", help="Column mapping: a shipped name (polygon_trades) or a TOML."
    ),
    source: str | None = typer.Option(
        None,
        "--source",
        help=(
            "Value of the `source` column for every row; default: the file's own `source` "
            "column where set, else the mapping's, else file."
        ),
    ),
    commit_rows: int | None = typer.Option(
        None, "--commit-rows", min=1, help="Rows per commit (default 500,000)."
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Files loaded in parallel processes."),
    compact: bool = typer.Option(
        False, "--compact", help="Compact the touched days into Silver afterwards."
    ),
    reload: bool = typer.Option(
        False,
        "--reload",
        help="Load files again although already loaded (Bronze keeps both copies; Silver one).",
    ),
    undo: bool = typer.Option(
        False,
        "--undo",
        help=(
            "Take back out of Bronze every row the loads of these files stored (and their "
            "dead letters); Silver follows on its next compaction of those days (--compact)."
        ),
    ),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Load vendor files into Bronze: same validation as the writers, exactly once per file.

    Loading a file again stores nothing (unless --reload); a load interrupted at any point
    resumes where its last commit ended. Bad rows go to bronze.dead_letters with the reason; a
    file with no valid row in its first commit is refused whole (exit 1, nothing stored).
    --undo removes what the loads of a file stored (a load under the wrong options), so it can
    be loaded again.
    """
    from iceberg_lake.load import DEFAULT_COMMIT_ROWS, LoadOptions, compact_loaded, load_files
    from iceberg_lake.load.loader import EARLIER_RUN
    from iceberg_lake.load.sources import FORMATS

    if undo:
        given = [
            flag
            for flag, value in (
                ("--format", fmt),
                ("--mapping", mapping),
                ("--source", source),
                ("--commit-rows", commit_rows),
                ("--reload", reload or None),
                ("--jobs", jobs if jobs != 1 else None),
            )
            if value is not None
        ]
        if given:
            raise LakeError(
                f"--undo takes files, --table, --compact and -o only, not {', '.join(given)} "
                "(a file's loads are found by its content, whatever options loaded it)"
            )
        _undo(paths, table, compact, output)
        return
    if fmt is not None and fmt not in FORMATS:
        raise LakeError(
            f"--format {fmt}: not a format lake load reads (one of {', '.join(FORMATS)})"
        )
    files: list[Path] = []
    skipped: list[Path] = []
    lake_folders: list[Path] = []
    lake_settings = settings()
    # An existing lake only (docs19: a load in a fresh directory left an empty catalog behind,
    # and every later command then blamed LAKE_CATALOG_NAME): `no lake at …: run lake init`.
    LakeCatalog(lake_settings, create=False)
    own = _own_folders(lake_settings)
    for p in paths:
        _refuse_inside_lake(p, own)
        if p.is_dir():
            # Every file below a folder (a vendor's YYYY/MM/ layout of daily files, backfill15),
            # but, without --format, files of no format lake load reads (a README.md).
            data: list[Path] = []
            found, lake_own = _files_below(p, own)
            lake_folders.extend(lake_own)
            for f in found:
                (data if fmt is not None or _has_format(f) else skipped).append(f)
            if not data:
                raise LakeError(f"no files to load in folder {p}")
            files.extend(data)
        else:
            files.append(_regular_file(p))
    paths = files
    options = LoadOptions(
        table=table,
        format=fmt,
        mapping=mapping,
        source=source,
        commit_rows=commit_rows or DEFAULT_COMMIT_ROWS,
        reload=reload,
    )
    if mapping:
        from iceberg_lake.load.mapping import find_mapping

        find_mapping(mapping)  # a bad mapping is a bad command: one line, not one per file
    show_progress = output == OutputFormat.text and err_console.is_terminal
    with Progress(
        TextColumn("{task.description}", markup=False),  # a file or table name, not markup
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]:>12,} rows"),
        TextColumn("{task.fields[rate]:>10,.0f} rows/s"),
        TimeRemainingColumn(),
        console=err_console,
        disable=not show_progress,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, rows: int, fraction: float, seconds: float) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=1000, rows=0, rate=0.0)
            rate = rows / seconds if seconds > 0 else 0.0
            bar.update(tasks[name], completed=int(fraction * 1000), rows=rows, rate=rate)

        results = load_files(lake_settings, paths, options, jobs=jobs, progress=progress)
    compactions = compact_loaded(lake_settings, results) if compact else []
    rejected = [r for r in results if r.status in ("rejected", "failed")]

    # A compaction that failed is said with its reason and fails the command (review15b: the
    # incremental path's error was a status only, exit 0).
    compaction_errors = _compaction_errors(compactions)
    if output == OutputFormat.json:
        payload = {
            "results": [r.as_dict() for r in results],
            "compactions": _compaction_rows(compactions),
            "skipped": [str(f) for f in skipped],
            "skipped_lake_folders": [str(f) for f in lake_folders],
        }
        typer.echo(to_json(payload))
        _fail_if_rejected(rejected, compaction_errors)
        return
    if len(rejected) == len(results):
        _fail_if_rejected(rejected, compaction_errors)  # nothing else to show: one line each
    rows = []
    for r in results:
        d = r.as_dict()
        d["file"] = Path(r.file).name
        d["table"] = r.table.removeprefix("bronze.")
        d["partitions"] = len(r.partitions)
        d["snapshots"] = len(r.snapshots)
        for key in ("rows_read", "rows_stored", "dead_lettered", "rows_skipped"):
            d[key] = f"{d[key]:,}"
        if r.status == "resumed":  # an earlier run had committed the first rows
            d["status"] = f"resumed at row {r.first_row:,}"
        rows.append({label: d.get(key) for label, key in TEXT_COLUMNS.items()})
    columns = list(TEXT_COLUMNS)
    if any(r.rows_other_tables for r in results):  # a replay export: the other tables' rows
        columns.insert(columns.index("skipped") + 1, "other")
        for row, r in zip(rows, results, strict=True):
            row["other"] = f"{r.rows_other_tables:,}"
    emit(rows, output, title="lake load", columns=columns)
    if lake_folders:
        names = ", ".join(str(f) for f in lake_folders[:3]) + (
            " …" if len(lake_folders) > 3 else ""
        )
        say(f"skipped {len(lake_folders)} folders of the lake itself: {names}", output)
    if skipped:
        names = ", ".join(str(f) for f in skipped[:5]) + (" …" if len(skipped) > 5 else "")
        say(f"skipped {len(skipped)} files of no format lake load reads: {names}", output)
    total_stored = sum(r.rows_stored for r in results)
    total_dead = sum(r.dead_lettered for r in results)
    seconds = max(r.seconds for r in results) if results else 0.0
    say(
        f"{total_stored:,} rows stored, {total_dead:,} dead-lettered, "
        f"{sum(len(r.partitions) for r in results):,} partitions, "
        f"{sum(len(r.snapshots) for r in results)} snapshots"
        + (f" ({total_stored / seconds:,.0f} rows/s)" if seconds and total_stored else ""),
        output,
    )
    for r in results:
        for warning in r.warnings:
            say(f"warning: {warning}", output)
        if r.unknown_columns:
            say(
                f"{Path(r.file).name}: {r.table} has no column "
                f"{', '.join(r.unknown_columns)}: not stored (add it with `lake table evolve`, "
                "then load with --reload; or name the columns with --mapping)",
                output,
            )
    other = sum(r.rows_other_tables for r in results)
    if table and other:
        say(
            f"{other:,} rows of other tables in the replay export were not loaded into "
            f"{results[0].table} (load the file without --table to load each table's rows)",
            output,
        )
    for c in compactions:
        say(
            f"silver: {c.get('table')} {c.get('date') or '(incremental)'} {c.get('status')}, "
            f"{c.get('rows_written') or 0:,} rows, {c.get('partitions') or 0} partitions",
            output,
        )
    if not compact and any(r.status in EARLIER_RUN for r in results):
        # An earlier run loaded (part of) these files: its days are not this run's.
        say(
            "next: lake compact --incremental (compacts what Silver has not seen of every day "
            "loaded, an earlier run's too; nothing to do if it is current; or lake load ... "
            "--compact)",
            output,
        )
    elif not compact and total_stored:
        hint = compact_hint(sorted({d for r in results for d in r.days}))
        if hint:
            say(hint, output)
    _fail_if_rejected(rejected, compaction_errors)


def _compaction_errors(compactions: list[dict[str, Any]]) -> list[str]:
    """One line per Silver compaction that failed (review15b: it was a status only, exit 0)."""
    return [
        f"silver compaction of {c.get('table')}: {c.get('error') or 'failed'}"
        for c in compactions
        if c.get("status") == "error"
    ]


def _compaction_rows(compactions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compactions as `-o json` gives them."""
    keys = ("table", "date", "status", "rows_written", "partitions", "error")
    return [{k: c.get(k) for k in keys} for c in compactions]


#: Text output of `--undo`: column title → result key.
UNDO_COLUMNS = {
    "file": "file",
    "table": "table",
    "status": "status",
    "removed": "rows_removed",
    "dead": "dead_letters_removed",
    "files": "files_removed",
    "days": "days",
}


def _undo(paths: list[Path], table: str | None, compact: bool, output: OutputFormat) -> None:
    """`lake load --undo`: one result per (file, table); a file that cannot be undone is
    said with its reason (exit 1) and the others are undone."""
    from iceberg_lake.load.undo import UndoResult, undo_file
    from iceberg_lake.silver import SilverCompactor

    files: list[Path] = []
    lake_settings = settings()
    for p in paths:
        if p.is_dir():
            found, _ = _files_below(p, _own_folders(lake_settings))
            files.extend(f for f in found if _has_format(f))
        else:
            files.append(_regular_file(p))
    lake = LakeCatalog(lake_settings, create=False)
    results: list[UndoResult] = []
    errors: list[str] = []
    for f in files:
        try:
            results.extend(undo_file(lake, f, table))
        except LakeError as exc:
            if not str(exc).startswith(f.name):
                exc = LakeError(f"{f.name}: {exc}")
            errors.append(str(exc))
    compactions: list[dict[str, Any]] = []
    if compact:
        work = sorted({(r.table, d) for r in results if r.status == "undone" for d in r.days})
        with SilverCompactor(lake) as compactor:
            compactions = [compactor.compact_date(d, t).as_dict() for t, d in work]
    errors += _compaction_errors(compactions)
    if output == OutputFormat.json:
        payload = {
            "results": [r.as_dict() for r in results],
            "compactions": _compaction_rows(compactions),
            "errors": errors,
        }
        typer.echo(to_json(payload))
    else:
        rows = []
        for r in results:
            d = r.as_dict()
            d["file"] = Path(r.file).name
            d["table"] = r.table.removeprefix("bronze.")
            d["days"] = ", ".join(r.days)
            rows.append({label: d.get(key) for label, key in UNDO_COLUMNS.items()})
        if rows:
            emit(rows, output, title="lake load --undo", columns=list(UNDO_COLUMNS))
        for c in compactions:
            say(
                f"silver: {c.get('table')} {c.get('date')} {c.get('status')}, "
                f"{c.get('rows_written') or 0:,} rows, {c.get('partitions') or 0} partitions",
                output,
            )
        days = sorted({d for r in results if r.status == "undone" for d in r.days})
        if not compact and days:
            hint = compact_hint(days)
            if hint:
                say(
                    hint.replace("lake load ... --compact", "lake load --undo ... --compact"),
                    output,
                )
    if errors:
        for line in errors:
            err_console.print(
                f"[red]error:[/red] {escape(line)}", markup=True, highlight=False, soft_wrap=True
            )
        raise typer.Exit(1)


#: `compact_hint` names each touched day up to this many; more are shown as a range.
HINT_MAX_DAYS = 5


def compact_hint(days: list[str]) -> str | None:
    """The `next:` line after a load without `--compact`: a command covering every day touched.

    One day: `lake compact --date D`. Several: `lake compact --incremental`, which compacts
    every partition Bronze changed since Silver's last run, so every loaded day (naming each day,
    or the range when there are many, with the per-day alternative).
    """
    if not days:
        return None
    if len(days) == 1:
        return f"next: lake compact --date {days[0]} (or lake load ... --compact)"
    named = (
        ", ".join(days)
        if len(days) <= HINT_MAX_DAYS
        else f"{days[0]} .. {days[-1]}, {len(days)} days"
    )
    return (
        f"next: lake compact --incremental (compacts every day loaded: {named}; "
        "or lake compact --date D for each, or lake load ... --compact)"
    )


def _regular_file(path: Path) -> Path:
    """`path` if it is a regular file; one line otherwise."""
    if path.is_file():
        return path
    if path.exists():
        raise LakeError(f"{path} is not a regular file (a device or a pipe cannot be loaded)")
    raise LakeError(f"no such file or folder: {path}")


def _own_folders(lake_settings: Any) -> set[str]:
    """Real path of the lake's own local folder: a local warehouse (not all of `LAKE_DATA_DIR`:
    an `incoming/` kept beside the catalog is the user's, review19d)."""
    parsed = urlparse(lake_settings.warehouse)
    if parsed.scheme == "file":
        return {os.path.realpath(unquote(parsed.path))}
    return set()


def _refuse_inside_lake(path: Path, own: Collection[str]) -> None:
    """One line when `path` is in the lake's own folders or in an Iceberg table's folder
    (review19b: `lake load <a table's data folder>` loaded the lake's own Parquet files back
    into Bronze, 300 rows became 600)."""
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        if str(folder) in own or _is_table_folder(str(folder), ["metadata"]):
            raise LakeError(
                f"{path} is {'' if folder == real else 'inside '}the lake's own folder "
                f"{folder}: lake load reads vendor files, not the lake's (its tables' files are "
                "in Bronze already)"
            )


def _is_table_folder(root: str, dirs: list[str]) -> bool:
    """Whether `root` is an Iceberg table's folder (a `metadata/` holding metadata files)."""
    if "metadata" not in dirs:
        return False
    try:
        return any(n.endswith(".metadata.json") for n in os.listdir(Path(root) / "metadata"))
    except OSError:
        return False


def _files_below(folder: Path, own: Collection[str] = ()) -> tuple[list[Path], list[Path]]:
    """The files below `folder`, in path order, through symlinked folders (a year on a NAS
    mount; each real folder once), without hidden files and folders; and the folders left out
    because they are the lake's own (`own`: its data directory or warehouse) or any Iceberg
    table's (docs19: `lake load .` beside the default `./lake-data` loaded the lake's own
    Parquet files, doubling Bronze on every re-run)."""
    found: list[Path] = []
    lake_folders: list[Path] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add(real)
        if real in own or _is_table_folder(root, dirs):
            lake_folders.append(Path(root))
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / n for n in names if not n.startswith("."))
    return sorted(f for f in found if f.is_file()), lake_folders


def _has_format(path: Path) -> bool:
    """Whether `path`'s name says a format lake load reads."""
    from iceberg_lake.load.sources import detect_format

    try:
        detect_format(path)
    except LakeError:
        return False
    return True


def _fail_if_rejected(rejected: list[Any], errors: list[str] | None = None) -> None:
    """One line per rejected or failed file (and per failed compaction, `errors`) on stderr,
    exit 1 (the other files' results stand)."""
    lines = [r.error for r in rejected] + (errors or [])
    if not lines:
        return
    for line in lines:
        err_console.print(
            f"[red]error:[/red] {escape(line)}", markup=True, highlight=False, soft_wrap=True
        )
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `lake` app."""
    app.command("load")(load)
