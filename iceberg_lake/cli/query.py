"""`lake` commands: query, snapshot (tag, untag, list), replay."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import pyarrow as pa
import typer

from iceberg_lake import properties as P
from iceberg_lake.cli.common import (
    AS_OF_OPTION,
    OUTPUT_OPTION,
    OutputFormat,
    SigtermInterrupt,
    Window,
    console,
    emit,
    err_console,
    format_ms,
    note_outside,
    open_catalog,
    split_names,
    window_options,
)
from iceberg_lake.cli.output import (
    cell_text,
    check_writable,
    output_file_errors,
    root_format,
    to_json,
)
from iceberg_lake.exceptions import LakeError, TimeTravelError
from iceberg_lake.timetravel import snapshots
from iceberg_lake.timetravel.snapshots import AsOf, AsOfSpec

if TYPE_CHECKING:
    from iceberg_lake.timetravel.sessions import Session

snapshot_app = typer.Typer(help="Snapshots and tags: what a backtest cites.", no_args_is_help=True)


class QueryOutput(StrEnum):
    """How `lake query` prints its result."""

    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def register(app: typer.Typer) -> None:
    """Add `query`, `snapshot` and `replay` to the `lake` app."""
    app.command("query")(query)
    app.command("replay")(replay)
    app.add_typer(snapshot_app, name="snapshot")


# ---- shared parsing ------------------------------------------------------------------------------


def parse_as_of(values: list[str] | None) -> AsOfSpec:
    """`--as-of` values: one `PIN` for all tables, and/or `TABLE=PIN` per table.

    A pin is a tag, a snapshot id or an ISO timestamp. A global pin plus per-table pins is not
    allowed (ambiguous for the tables not named).
    """
    if not values:
        return None
    global_pin: AsOf = None
    per_table: dict[str, AsOf] = {}
    for raw in values:
        head, sep, tail = raw.partition("=")
        if sep and head.count(".") == 1 and " " not in head:
            per_table[head.strip()] = _pin(tail)
        elif global_pin is None:
            global_pin = _pin(raw)
        else:
            raise typer.BadParameter(
                "give one global pin, or TABLE=PIN pairs", param_hint="--as-of"
            )
    if per_table and global_pin is not None:
        raise typer.BadParameter(
            "use either one pin for all tables or TABLE=PIN pairs", param_hint="--as-of"
        )
    return per_table or global_pin


def _recorded_session(recorded: dict[str, Any]) -> Session | None:
    """The session a manifest's window was chosen as (`--session`), with the manifest's own
    bounds (the calendar package's hours may have changed since); None if it was not one."""
    from iceberg_lake.timetravel.sessions import Session

    try:
        day = date.fromisoformat(str(recorded["session"]))
        return Session(day, str(recorded["calendar"]), recorded["start_ns"], recorded["end_ns"])
    except (KeyError, ValueError):
        return None


def _pin(text: str) -> AsOf:
    text = text.strip()
    return int(text) if text.isdigit() else text


# ---- lake query --------------------------------------------------------------------------------


def query(
    sql: str = typer.Argument(..., help="SQL; tables by name, e.g. bronze.stocks_trades."),
    as_of: Annotated[
        list[str] | None,
        typer.Option(
            "--as-of", help="Tag, snapshot id or ISO time for all tables, or TABLE=PIN (repeat)."
        ),
    ] = None,
    output: Annotated[
        QueryOutput | None,
        typer.Option(
            "--output", "-o", help="table, csv, json or parquet (default: the root's --output)."
        ),
    ] = None,
    file: Annotated[
        Path | None,
        # No `-f`: that is `--format` in `replay`, `load` and `engines spark`.
        typer.Option("--out", help="Write the result here (required for parquet)."),
    ] = None,
    old_file: Annotated[
        Path | None, typer.Option("--file", hidden=True, help="The old spelling of --out.")
    ] = None,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Reads only, and DuckDB may open no file outside the warehouse (no read_csv of "
            "local files, COPY, ATTACH, INSTALL). Off by default: a local tool.",
        ),
    ] = False,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Bronze/Gold tables include the JetStream messages after their last commit.",
        ),
    ] = False,
) -> None:
    """Run SQL against the lake's tables, optionally as of a tag, snapshot or time."""
    from iceberg_lake.timetravel.query import Lake

    output = output or QueryOutput(root_format().value)
    if file is not None and old_file is not None:
        raise typer.BadParameter("give --out once", param_hint="--out")
    file = file or old_file
    pins = parse_as_of(as_of)
    if output == QueryOutput.parquet and file is None:
        raise typer.BadParameter("parquet output needs --out PATH", param_hint="--output")
    if live and pins is not None:
        raise typer.BadParameter("--live reads the current snapshots", param_hint="--as-of")
    lake = Lake(open_catalog(read_only=True), sandbox=sandbox)
    try:
        result = lake.query(sql, as_of=pins, live=live)
    finally:
        lake.close()
    with output_file_errors(file):
        write_result(result, output, file)
    # Every result says which snapshots (and, live, which stream range) it read (stderr, so
    # stdout stays the data).
    notes: dict[str, str] = {}
    if live:
        from iceberg_lake.timetravel.live import no_tail_notes

        notes = no_tail_notes(lake.last_pins, lake.last_live)
    parts = []
    for t, sid in sorted(lake.last_pins.items()):
        rng = lake.last_live.get(t)
        part = rng.describe() if rng else f"{t}@{sid if sid is not None else 'empty'}"
        parts.append(f"{part} ({notes[t]})" if t in notes else part)
    err_console.print(f"read {', '.join(parts)}", highlight=False, soft_wrap=True)
    if live:
        from iceberg_lake.timetravel.live import live_warnings

        for warning in live_warnings(lake.last_live):
            err_console.print(f"warning: {warning}", highlight=False, soft_wrap=True)


def write_result(result: pa.Table, output: QueryOutput, file: Path | None) -> None:
    """Print or write a query result in the chosen format."""
    if output == QueryOutput.parquet:
        import pyarrow.parquet as pq

        assert file is not None
        pq.write_table(result, file, compression="zstd")
        err_console.print(f"wrote {result.num_rows} rows to {file}")
        return
    if output == QueryOutput.csv:
        import pyarrow.csv as pcsv

        sink: Any = str(file) if file else pa.BufferOutputStream()
        pcsv.write_csv(_csv_ready(result), sink)
        if file is None:
            sys.stdout.write(sink.getvalue().to_pybytes().decode())
        return
    rows = result.to_pylist()
    if output == QueryOutput.json:
        text = to_json(rows)
        if file:
            file.write_text(text + "\n")
        else:
            typer.echo(text)
        return
    if file:
        file.write_text("\n".join(to_json(r, indent=None) for r in rows) + "\n")
        return
    emit(rows, OutputFormat.text, columns=result.column_names)
    err_console.print(f"{result.num_rows} rows")


def _csv_ready(result: pa.Table) -> pa.Table:
    """`result` with the columns Arrow's CSV writer refuses or garbles as text (`cell_text`):
    bytes (UTF-8 text, else base64), lists and structs (JSON), intervals."""
    columns = []
    for field, column in zip(result.schema, result.columns, strict=True):
        kind = field.type
        if (
            pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_fixed_size_binary(kind)
            or pa.types.is_binary_view(kind)
            or pa.types.is_nested(kind)
            or pa.types.is_interval(kind)
        ):
            text = [None if v is None else cell_text(v) for v in column.to_pylist()]
            column = pa.chunked_array([pa.array(text, pa.string())])
        columns.append(column)
    return pa.Table.from_arrays(columns, names=result.column_names)


# ---- lake snapshot -----------------------------------------------------------------------------


@snapshot_app.command("tag")
def tag(
    name: str = typer.Argument(..., help="Tag name, e.g. bt-2025-12-16."),
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", help="Tables to tag (comma-separated or repeated); default all."),
    ] = None,
    replace: bool = typer.Option(False, "--replace", help="Move an existing tag of that name."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Tag each table's current snapshot; a backtest cites the tag."""
    result = snapshots.create_tag(
        open_catalog(read_only=True), name, split_names(tables), replace=replace
    )
    rows = [{"table": t, "snapshot_id": sid, "tag": name} for t, sid in result.items()]
    if output != OutputFormat.text:
        emit(rows, output)
        return
    for row in rows:
        sid = row["snapshot_id"]
        console.print(f"{row['table']}: {sid if sid is not None else 'empty (no snapshot)'}")
    console.print(f"tagged {len(rows)} tables as '{name}'")


@snapshot_app.command("untag")
def untag(
    name: str = typer.Argument(..., help="Tag to remove."),
    tables: Annotated[list[str] | None, typer.Option("--tables", help="Only these tables.")] = None,
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Remove a tag (its snapshots become expirable again)."""
    removed = snapshots.remove_tag(open_catalog(read_only=True), name, split_names(tables))
    if not removed:
        raise TimeTravelError(f"no table has tag '{name}'")
    if output != OutputFormat.text:
        emit([{"table": t, "tag": name} for t in removed], output)
        return
    console.print(f"removed tag '{name}' from {', '.join(removed)}")


@snapshot_app.command("pin-manifest")
def pin_manifest(
    manifests: Annotated[
        list[Path], typer.Argument(help="Replay manifests (replay-<hash>.json) to pin.")
    ],
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Pin the snapshots stored replay manifests read, without replaying them.

    Tags them `replay-<hash>` exactly as `lake replay --from-manifest` would (kept
    LAKE_REPLAY_PIN_MAX_AGE_DAYS), so expiry keeps them. For manifests recorded without a pin
    (`--no-pin`, or by the first release, which had no `pin_tag`): run it before the next
    maintenance pass expires their snapshots.
    """
    from iceberg_lake.timetravel.replay import ReplayEngine, read_manifest

    catalog = open_catalog(read_only=True)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in manifests:
        try:
            # The replay's own pinning (`ReplayEngine.from_manifest(pin=True)`): resolves the
            # manifest's snapshots and tags them; no event is read.
            engine = ReplayEngine.from_manifest(catalog, read_manifest(path), pin=True)
        except LakeError as exc:  # expired, unknown table, a live manifest, not a manifest
            errors.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
            continue
        rows.append(
            {
                "manifest": str(path),
                "pin_tag": engine.pin_tag,
                "snapshots": dict(engine.pins),
                "max_age_days": catalog.settings.replay_pin_max_age_days,
            }
        )
    if output != OutputFormat.text:
        emit(rows, output)
    else:
        for row in rows:
            read = ", ".join(
                f"{t}@{sid if sid is not None else 'empty'}" for t, sid in row["snapshots"].items()
            )
            console.print(
                f"{row['manifest']}: pinned as {row['pin_tag']} for"
                f" {row['max_age_days']:g} days ({read})",
                highlight=False,
                soft_wrap=True,
            )
    if errors:
        for error in errors[:-1]:
            err_console.print(f"error: {error}", highlight=False, soft_wrap=True)
        raise TimeTravelError(
            errors[-1] if len(errors) == 1 else f"{errors[-1]} ({len(errors)} manifests failed)"
        )


@snapshot_app.command("list")
def list_(
    table: str | None = typer.Argument(None, help="A table; without it, one line per table."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Show a table's snapshots (id, time, operation, rows added, lake properties) and tags."""
    catalog = open_catalog(read_only=True)
    if table is None:
        rows: list[dict[str, Any]] = []
        for ident in catalog.existing_tables():
            t = catalog.load_table(ident)
            current = t.current_snapshot()
            kinds: dict[str, int] = {}
            for ref in snapshots.list_refs(t):
                if snapshots.is_lake_ref(ref["ref"]):
                    kinds[ref["kind"]] = kinds.get(ref["kind"], 0) + 1
            rows.append(
                {
                    "table": ident,
                    "current_snapshot": current.snapshot_id if current else None,
                    "snapshots": len(t.metadata.snapshots),
                    "tags": ", ".join(
                        f"{n}={s if s is not None else 'empty'}"
                        for n, s in snapshots.list_tags(t).items()
                        if not snapshots.is_lake_ref(n)
                    ),
                    "lake_refs": ", ".join(f"{n} {k}s" for k, n in sorted(kinds.items())),
                }
            )
        emit(rows, output, title="snapshots", columns=list(rows[0]) if rows else None)
        return
    t = catalog.load_table(table)
    rows = snapshots.list_snapshots(t)
    refs = snapshots.list_refs(t)
    if output == OutputFormat.json:
        by_snapshot: dict[int, list[dict[str, Any]]] = {}
        for ref in refs:
            by_snapshot.setdefault(ref["snapshot_id"], []).append(ref)
        emit(
            [{**r, "table": table, "refs": by_snapshot.get(r["snapshot_id"], [])} for r in rows],
            output,
        )
        return
    text_rows = [
        {
            "snapshot_id": r["snapshot_id"],
            "time": format_ms(r["timestamp_ms"]),
            "operation": r["operation"],
            "rows_added": r["added_records"],
            "total_rows": r["total_records"],
            "tags": ", ".join(r["tags"]),
            "current": "*" if r["current"] else "",
            "properties": " ".join(f"{k}={v}" for k, v in r["properties"].items()),
        }
        for r in rows
    ]
    emit(text_rows, output, title=f"{table} snapshots", columns=list(text_rows[0]) if rows else [])
    if refs:
        emit(
            [{**r, "expires": r["expires"] or "never"} for r in refs],
            output,
            title=f"{table} refs",
            columns=["ref", "kind", "snapshot_id", "expires"],
        )
    empty_tags = [n for n, s in snapshots.list_tags(t).items() if s is None]
    if empty_tags:
        console.print(f"tags made while empty: {', '.join(empty_tags)}")
    marks = {
        k: v
        for k, v in t.metadata.properties.items()
        if k.startswith((P.WATERMARK_PREFIX, P.POSITION_PREFIX, P.SILVER_INCREMENTAL_SOURCE))
    }
    for key, value in sorted(marks.items()):
        console.print(f"{key} = {value}", highlight=False)


# ---- lake replay -------------------------------------------------------------------------------


class ReplayFormat(StrEnum):
    """What `lake replay` writes without `--to-nats`."""

    ndjson = "ndjson"
    arrow = "arrow"
    parquet = "parquet"


@window_options(
    start_help="Unix ns (not s/ms) or ISO time/date (UTC); default: everything the pins hold."
)
def replay(
    tables: Annotated[
        list[str] | None,
        typer.Option("--tables", help="Tables in tie-break order (comma-separated or repeated)."),
    ] = None,
    *,
    window: Window,
    as_of: Annotated[list[str] | None, AS_OF_OPTION] = None,
    from_manifest: Annotated[
        Path | None,
        typer.Option("--from-manifest", help="Replay exactly the pins and window of a manifest."),
    ] = None,
    to_nats: bool = typer.Option(False, "--to-nats", help="Publish to NATS (LAKE_NATS_URL)."),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Subject prefix for --to-nats, e.g. replay → replay.market.…"
    ),
    speed: float = typer.Option(0.0, "--speed", help="0 = as fast as possible; N = N× real time."),
    fmt: Annotated[
        ReplayFormat,
        typer.Option(
            "--format",
            "-f",
            help="Without --to-nats: ndjson (one event per line), arrow (IPC stream) or parquet.",
        ),
    ] = ReplayFormat.ndjson,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Without --to-nats: write the events here (ndjson default: stdout)."
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest", help="Where to write the replay manifest (default replay-<hash>.json)."
        ),
    ] = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    pin: bool = typer.Option(
        True,
        "--pin/--no-pin",
        help="Tag the snapshots read (replay-<hash>) so expiry keeps them for the manifest.",
    ),
    live: bool = typer.Option(
        False, "--live", help="Continue past the current snapshots into the JetStream tail."
    ),
    follow: bool = typer.Option(
        False, "--follow", help="With --live: keep going as events arrive until --end passes."
    ),
    lateness: float | None = typer.Option(
        None,
        "--lateness",
        help="With --follow: seconds after --end (wall clock) to still wait for events stamped "
        "inside the window, your feed's publish lag (default 5). Later ones are not in this "
        "replay (a replay of the committed window has them).",
    ),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="With --format arrow|parquet: --no-verify skips the canonical encoding and the "
        "sequence hash (faster; the manifest then has no hash).",
    ),
) -> None:
    """Replay pinned snapshots of tables merged by event time, to NATS, NDJSON, Arrow or Parquet."""
    from iceberg_lake.timetravel.replay import ReplayEngine, compare_manifests, read_manifest

    if prefix and not to_nats:
        raise typer.BadParameter("--prefix needs --to-nats", param_hint="--prefix")
    if root_format() != OutputFormat.table:
        # Its stdout is the events themselves: `lake -o json replay` was silently NDJSON.
        raise typer.BadParameter(
            "replay writes events, not a result table: choose them with --format "
            "ndjson|arrow|parquet (and --out), not lake --output",
            param_hint="--output",
        )
    if follow and not live:
        raise typer.BadParameter("--follow needs --live", param_hint="--follow")
    if lateness is not None and not follow:
        raise typer.BadParameter("--lateness needs --live --follow", param_hint="--lateness")
    if live and (from_manifest is not None or as_of):
        raise typer.BadParameter(
            "--live starts at the current snapshots (no --as-of/--from-manifest)",
            param_hint="--live",
        )
    if live and fmt != ReplayFormat.ndjson:
        raise typer.BadParameter(
            "--live writes NDJSON or publishes (--to-nats)", param_hint="--live"
        )
    if not verify and fmt == ReplayFormat.ndjson:
        raise typer.BadParameter(
            "--no-verify needs --format arrow or parquet (NDJSON and NATS replays write the "
            "canonical encoding the hash is made of)",
            param_hint="--no-verify",
        )
    if speed and fmt != ReplayFormat.ndjson:
        raise typer.BadParameter(
            f"--format {fmt.value} writes a file as fast as it can: --speed paces NDJSON and "
            "--to-nats replays",
            param_hint="--speed",
        )
    if fmt != ReplayFormat.ndjson and (to_nats or out is None):
        raise typer.BadParameter(
            f"--format {fmt.value} writes a file: give --out (and no --to-nats)",
            param_hint="--format",
        )
    for path, option in ((out, "--out"), (manifest, "--manifest")):
        if path is not None:
            check_writable(path, option)
    # A replay reads an existing lake (its pins may tag it): it never creates one.
    catalog = open_catalog(read_only=True)
    recorded: dict[str, Any] | None = None
    session: Session | None = None  # a session window: what it leaves out is named
    if from_manifest is not None:
        recorded = read_manifest(from_manifest)
        try:
            engine = ReplayEngine.from_manifest(catalog, recorded, speed=speed, pin=pin)
        except TimeTravelError as exc:  # a live manifest: name the file
            raise TimeTravelError(f"{from_manifest}: {exc}") from None
        engine.window_origin = {
            k: recorded[k] for k in ("session", "calendar", "calendars") if k in recorded
        }
        session = _recorded_session(recorded)
    else:
        names = split_names(tables)
        if not names:
            raise typer.BadParameter("name at least one table", param_hint="--tables")
        if not window.given:
            # No window: everything the pinned snapshots hold (from file metadata).
            from iceberg_lake.timetravel.readers import event_time_range

            held = event_time_range(catalog, names, parse_as_of(as_of))
            if held is None:
                raise TimeTravelError(
                    "nothing to replay: the pinned snapshots hold no rows (give --start/--end)"
                )
            start_ns, end_ns = held
        else:
            start_ns, end_ns = window.ns(names)
        engine = ReplayEngine(
            catalog,
            names,
            start_ns,
            end_ns,
            parse_as_of(as_of),
            speed=speed,
            pin=pin,
            live=live,
            follow=follow,
            lateness_seconds=lateness,
        )
        engine.window_origin = window.origin(names)
        if not live:
            session = window.session_of(names)
    if session is not None:
        from iceberg_lake.timetravel.query import Lake

        with Lake(catalog) as lake:
            note_outside(lake, session, engine.pins)
    interrupted = stopped = False
    written = {"events": 0}  # events in the output so far (kept up to date by the writers)
    # docker stop, systemd and kill send SIGTERM: the replay ends as with Ctrl-C (its output
    # flushed, its manifest written), not cut off with what was buffered.
    signals = SigtermInterrupt()
    try:  # restored only once the manifest is written: a second SIGTERM must not cut that
        try:
            signals.raise_if_received()  # one that came while the CLI loaded
            if fmt == ReplayFormat.ndjson:
                result = _run_with_progress(engine, to_nats, prefix, out, progress, written)
            else:
                assert out is not None
                result = _write_batches(engine, fmt, out, verify, written)
        except KeyboardInterrupt:
            # Ctrl-C ends a --follow replay: what was delivered is in the manifest
            # (complete: false).
            # Any other replay it cuts short: the output is partial, and the exit code says so
            # (newuser10: it exited 0 as "replayed 0 events … (--no-verify)"). One that came after
            # the last event changes nothing (newuser13: it said partial of a complete output).
            result = engine.manifest()
            if not result.get("complete"):
                # The manifest counts the windows handed out; the output holds what was written
                # (published: the engine counts each event it published).
                if to_nats:
                    written["events"] = engine.published
                result["events_written"] = written["events"]
                interrupted, stopped = not follow, follow
        how = "SIGTERM" if signals.received else "Ctrl-C"
        if manifest is None:
            # Every run leaves what reproduces it; identical replays share one file name.
            if result["sequence_hash"] is not None:
                manifest = Path(
                    f"replay-{result['sequence_hash'].removeprefix('sha256:')[:12]}.json"
                )
            else:  # --no-verify: named after what it read
                from iceberg_lake.timetravel.snapshots import replay_pin_name

                name = replay_pin_name(engine.tables, engine.pins, engine.start_ns, engine.end_ns)
                manifest = Path(f"{name}.json")
        with output_file_errors(manifest, "--manifest"):
            manifest.write_text(json.dumps(result, indent=2) + "\n")
        read = ", ".join(
            f"{t}@{sid if sid is not None else 'empty'}" for t, sid in result["snapshots"].items()
        )
        pinned = f", pinned as {result['pin_tag']}" if result.get("pin_tag") else ""
        if interrupted:
            err_console.print(
                f"interrupted ({how}): the output holds the first {written['events']:,} events "
                f"of the replay (complete: false, no sequence hash); manifest {manifest}; "
                f"read {read}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(143 if signals.received else 130)
        if stopped:  # Ctrl-C (or SIGTERM) is how a --follow replay ends before --end: exit 0
            hashed = result["sequence_hash"] or "no sequence hash"
            err_console.print(
                f"stopped by {how} before --end: replayed {written['events']:,} events "
                f"(complete: false, {hashed} of those events); manifest {manifest}; read {read}",
                highlight=False,
                soft_wrap=True,
            )
            return
        no_hash = "no sequence hash" + (" (--no-verify)" if not verify else "")
        err_console.print(
            f"replayed {result['event_count']} events, "
            f"{result['sequence_hash'] or no_hash}; manifest {manifest}"
            f"; read {read}{pinned}",
            highlight=False,
            soft_wrap=True,
        )
        for warning in (result.get("live") or {}).get("warnings", []):
            err_console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
        if recorded is not None:
            # The point of --from-manifest: the same sequence again. Exit 1 when it is not.
            if not recorded.get("complete", True):
                err_console.print(
                    f"warning: {from_manifest} is from an interrupted run (complete: false): its "
                    "event count and hash were not compared",
                    highlight=False,
                    soft_wrap=True,
                )
            mismatch = compare_manifests(recorded, result)
            if mismatch is not None:
                raise TimeTravelError(f"replay does not match {from_manifest}: {mismatch}")
    finally:
        signals.restore()


def _write_batches(
    engine: Any, fmt: ReplayFormat, out: Path, verify: bool, written: dict[str, int]
) -> dict[str, Any]:
    """Stream `engine.batches()` to an Arrow IPC stream or a Parquet file (`written["events"]`:
    rows written so far)."""
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    schema = engine.schema()
    writer: Any
    with output_file_errors(out):
        if fmt == ReplayFormat.arrow:
            writer = ipc.new_stream(str(out), schema)
        else:
            writer = pq.ParquetWriter(str(out), schema, compression="zstd")
    try:
        for batch in engine.batches(verify=verify):
            writer.write_batch(batch)
            written["events"] += batch.num_rows
    finally:
        writer.close()
    return engine.manifest()


def _run_with_progress(
    engine: Any,
    to_nats: bool,
    prefix: str | None,
    out: Path | None,
    show: bool,
    written: dict[str, int],
) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    stream: Any = None
    if not to_nats:  # opened before the bar shows: a bad --out is then the only line printed
        with output_file_errors(out):
            stream = out.open("wb") if out else sys.stdout.buffer
    span = engine.end_ns - engine.start_ns
    bar = Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of the window"),
        TextColumn("{task.fields[events]} events"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not show,
        transient=False,
    )
    with bar:
        task = bar.add_task("replay", total=span, events=0)

        def progress(count: int, ts: int) -> None:
            bar.update(task, completed=max(0, min(span, ts - engine.start_ns)), events=count)

        if to_nats:
            return asyncio.run(engine.publish(prefix=prefix, progress=progress))
        count = last = 0
        engine.before_wait = stream.flush
        try:
            heads: dict[str, bytes] = {}
            for event in engine.paced_events():
                # `{"table": T, **row}` without decoding: the payload is the row's JSON with
                # sorted keys, so splice the table in front (same bytes as encoding the dict).
                head = heads.get(event.table)
                if head is None:
                    head = heads[event.table] = b'{"table":' + msgspec.json.encode(event.table)
                stream.write(head + b"," + event.payload[1:] + b"\n")
                count += 1
                if count % 1_000 == 0:
                    progress(count, event.ts_event_ns)
                last = event.ts_event_ns
            last = engine.end_ns
        finally:
            # Also after a Ctrl-C: the bar and `written` show what the output holds.
            written["events"] = count
            progress(count, last or engine.start_ns)
            if out:
                stream.close()
            else:
                stream.flush()
        return engine.manifest()
