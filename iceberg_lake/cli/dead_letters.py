"""`lake dead-letters list|replay`: inspect the quarantine and re-drive what passes today."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from iceberg_lake.cli.common import (
    OUTPUT_OPTION,
    OutputFormat,
    emit,
    open_catalog,
    parse_since_ns,
    say,
)
from iceberg_lake.ingest.redrive import list_dead_letters, redrive

dead_letters_app = typer.Typer(
    name="dead-letters",
    help="Inspect dead-lettered messages and re-drive the ones that pass today's rules.",
    no_args_is_help=True,
)

TABLE_OPTION = typer.Option(
    None, "--table", "-t", help="Target table (bronze.stocks_trades, ...) or 'unrouted'."
)
SINCE_OPTION = typer.Option(
    None,
    "--since",
    help="Received at or after: Unix ns, an ISO time (2025-12-16T14:00) or an age (2h, 7d).",
)


def parse_since(text: str | None) -> datetime | None:
    """`--since`: Unix nanoseconds, an ISO-8601 time (naive = UTC) or an age back from now
    (`parse_since_ns`, as `lake check` takes it)."""
    if text is None:
        return None
    ns = parse_since_ns(text)
    try:
        return datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
            microsecond=(ns % 1_000_000_000) // 1000
        )
    except (OverflowError, OSError, ValueError):
        raise typer.BadParameter(f"{text!r} is out of range", param_hint="--since") from None


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dead_letters_app.command("list")
def list_command(
    table: str | None = TABLE_OPTION,
    since: str | None = SINCE_OPTION,
    limit: int = typer.Option(100, "--limit", min=0, help="Show at most this many (0: all)."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """List dead letters (oldest first): where they came from, why, and if re-driven."""
    letters = list_dead_letters(open_catalog(read_only=True), table, parse_since(since))
    shown = letters if limit == 0 else letters[-limit:]
    if output == OutputFormat.json:
        emit([d.as_dict() for d in shown], output)
        return
    if not letters:
        say("no dead letters", output)
        return
    rows = [
        {
            "received": d.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            "id": d.label,
            "target": d.target_table,
            "subject": d.subject,
            "reason": _short(d.reason, 70),
            "redriven": "yes" if d.redriven else "",
            "raw": _short(d.raw.decode("utf-8", errors="backslashreplace"), 40),
        }
        for d in shown
    ]
    emit(rows, output, f"dead letters ({len(shown)} of {len(letters)})")


@dead_letters_app.command("replay")
def replay_command(
    table: str | None = TABLE_OPTION,
    since: str | None = SINCE_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Decode only; append nothing."),
    output: OutputFormat = OUTPUT_OPTION,
) -> None:
    """Re-decode dead letters with today's codec; append the ones that pass, exactly once."""
    report = redrive(open_catalog(read_only=True), table, parse_since(since), dry_run=dry_run)
    if output == OutputFormat.json:
        emit([o.as_dict() for o in report.outcomes], output)
        return
    done = "would re-drive" if dry_run else "re-driven"
    status = "would-redrive" if dry_run else "redriven"
    say(
        f"{done}: {report.count(status)} ({report.rows} rows), "
        f"still failing: {report.count('still-failing')}, "
        f"already re-driven: {report.count('already-redriven')}"
        + (
            f", rows of loaded files: {n} (left: fix them and `lake load` them as a file of "
            "their own)"
            if (n := report.count("from-file"))
            else ""
        ),
        output,
    )
    failing = [o for o in report.outcomes if o.status == "still-failing"]
    if failing:
        emit(
            [
                {
                    "id": o.letter.label,
                    "target": o.letter.target_table,
                    "reason": _short(o.reason, 90),
                }
                for o in failing[:50]
            ],
            output,
            "still failing",
        )


def register(app: typer.Typer) -> None:
    """Add `lake dead-letters ...` to the `lake` app."""
    app.add_typer(dead_letters_app, name="dead-letters")
