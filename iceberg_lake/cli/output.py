"""The CLI's one output layer: every command hands data to an `Output`, which renders it.

The format is chosen once, at the root (`lake --output json status`); a
command's own `--output/-o` is an alias that overrides it for that command. `table` renders rich
tables for people; `json` and `csv` are for scripts: the data alone on stdout, human messages on
stderr. Modeled on pyiceberg's `cli/output.py` (an `Output` base with a `ConsoleOutput` and a
`JsonOutput`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from iceberg_lake.exceptions import LakeError

if TYPE_CHECKING:
    from iceberg_lake.ops.status import LakeStatus

console = Console()
err_console = Console(stderr=True)

__all__ = [
    "OUTPUT_OPTION",
    "CsvOutput",
    "JsonOutput",
    "Output",
    "OutputFormat",
    "TableOutput",
    "console",
    "err_console",
    "format_ms",
    "get_output",
    "output_file_errors",
    "print_status",
    "root_format",
    "set_root_format",
]


class OutputFormat(StrEnum):
    """How a command prints its result."""

    table = "table"
    json = "json"
    csv = "csv"
    #: The old name of `table`, kept so `OutputFormat.text` in code keeps meaning "for people".
    text = "table"


@contextmanager
def output_file_errors(path: Path | None, option: str = "--out") -> Iterator[None]:
    """Turn a failure to create or write the output file `path` into a one-line `LakeError`.

    Wrap only the statements that open or write the file (not the reads that feed it: a
    missing data file is an `OSError` too, and is not the output's fault).

    Args:
        path: the file the user named (None: stdout, nothing is translated).
        option: the option that named it, for the message.

    Raises:
        LakeError: `cannot write --out /no/such/dir/x.parquet: No such file or directory`.
    """
    try:
        yield
    except OSError as exc:
        if path is None or exc.errno == errno.EPIPE:
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise LakeError(f"cannot write {option} {path}: {reason}") from exc


def check_writable(path: Path, option: str) -> None:
    """Fail before any work when `path` cannot be created: its folder is missing or read-only
    (a replay would otherwise run, and tag its snapshots, before its manifest fails to write).

    Raises:
        LakeError: `cannot write --manifest /no/such/dir/m.json: No such file or directory`.
    """
    parent = path.parent
    if not parent.is_dir():
        raise LakeError(f"cannot write {option} {path}: {os.strerror(errno.ENOENT)}")
    if not os.access(parent, os.W_OK):
        raise LakeError(f"cannot write {option} {path}: {os.strerror(errno.EACCES)}")


#: The format chosen at the root of the current `lake` run (set by the root callback).
_root_choice: OutputFormat = OutputFormat.table


def set_root_format(fmt: OutputFormat | str) -> None:
    """Record the root's `--output` (called once per run by the `lake` callback)."""
    global _root_choice
    _root_choice = OutputFormat(fmt)


def root_format() -> OutputFormat:
    """The format chosen at the root (`lake --output ...`); `table` outside a CLI run."""
    return _root_choice


def _inherit(value: OutputFormat | None) -> OutputFormat:
    """A command's `--output`: its own value if given, else the root's."""
    if value is not None:
        return OutputFormat(value)
    return root_format()


#: A command's `--output/-o` option: an alias of the root's `--output` for this command.
OUTPUT_OPTION: Any = typer.Option(
    None,
    "--output",
    "-o",
    callback=_inherit,
    show_default=False,
    help="table, json or csv (default: the root's `lake --output`).",
)


def format_ms(ms: int | None) -> str:
    """A snapshot timestamp (epoch ms) as an ISO UTC string."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


class Output(ABC):
    """Where a command's results go."""

    format: OutputFormat

    @property
    def for_people(self) -> bool:
        """True for the table format (progress bars, colours and hints are welcome)."""
        return self.format == OutputFormat.table

    @abstractmethod
    def rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        title: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        """Print a list of records with the same keys."""

    def record(self, data: Mapping[str, Any], *, title: str | None = None) -> None:
        """Print one record (JSON: an array of one, as `rows`)."""
        self.rows([data], title=title)

    def message(self, text: str) -> None:
        """A line for people: stdout in the table format, stderr otherwise."""
        err_console.print(text, highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        """One error line on stderr."""
        err_console.print(f"[red]error:[/red] {text}", highlight=False, soft_wrap=True)


class TableOutput(Output):
    """Rich tables on stdout."""

    format = OutputFormat.table

    def rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        title: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        cols = list(columns or (rows[0].keys() if rows else []))
        table = RichTable(title=title, show_lines=False)
        for c in cols:
            table.add_column(c, overflow="fold")
        for row in rows:
            table.add_row(*[_cell(row.get(c)) for c in cols])
        console.print(table)

    def message(self, text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)


class JsonOutput(Output):
    """A JSON array of objects on stdout."""

    format = OutputFormat.json

    def rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        title: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        data = [{c: row.get(c) for c in columns} if columns else dict(row) for row in rows]
        typer.echo(json.dumps(data, default=str, indent=2))


class CsvOutput(Output):
    """CSV with a header row on stdout (nested values as JSON)."""

    format = OutputFormat.csv

    def rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        title: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        cols = list(columns or (rows[0].keys() if rows else []))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in cols])
        typer.echo(buffer.getvalue(), nl=False)


_OUTPUTS: dict[OutputFormat, type[Output]] = {
    OutputFormat.table: TableOutput,
    OutputFormat.json: JsonOutput,
    OutputFormat.csv: CsvOutput,
}


def get_output(fmt: OutputFormat | str | None = None) -> Output:
    """The `Output` for `fmt` (default: the root's choice)."""
    chosen = OutputFormat(fmt) if fmt is not None else root_format()
    return _OUTPUTS[chosen]()


# ---- renderers of library reports --------------------------------------------------------------


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.1f}{unit}"
    return f"{seconds:.0f}s"


def _freshness(seconds: float | None) -> str:
    if seconds is not None and abs(seconds) < 60:
        return f"{seconds:.1f}s"  # sub-second matters for the live view
    return _human_age(seconds)


def print_status(report: LakeStatus, out: Console | Output | None = None) -> None:
    """Render `lake status` for people: tables, consumers and dead letters as rich tables."""
    target = out if isinstance(out, Console) else console
    tables = RichTable(title="tables")
    cols = ("table", "rows", "data files", "mean file", "snapshots", "last commit")
    for col in (*cols, "fresh (committed)", "fresh (live)"):
        tables.add_column(col, justify="left" if col == "table" else "right")
    lines = []
    for t in report.tables:
        cells = (
            f"{t.rows:,}",
            f"{t.data_files:,}",
            _human_bytes(t.mean_file_bytes),
            str(t.snapshots),
            f"{_human_age(t.last_commit_age_seconds)} ago" if t.last_commit else "never",
            _freshness(t.committed_freshness_seconds),
            _freshness(t.live_freshness_seconds),
        )
        tables.add_row(t.table, *cells)
        lines.append(
            f"{t.table}: {cells[0]} rows, {cells[1]} data files ({cells[2]} mean), "
            f"{cells[3]} snapshots, last commit {cells[4]}, fresh {cells[5]} committed / "
            f"{cells[6]} live"
        )
    if target.measure(tables, options=target.options.update_width(1_000)).maximum <= target.width:
        target.print(tables)
    else:
        # Too narrow for the table (80 columns): one line per table rather than cut names.
        target.print("tables", style="italic")
        for line in lines:
            target.print(line, highlight=False, soft_wrap=True)
    for t in report.tables:
        if t.live_warning:
            target.print(f"[yellow]warning[/yellow] {t.live_warning}", highlight=False)
    if report.nats != "ok":
        target.print(f"[yellow]NATS {report.nats}[/yellow]: consumer lag unknown", highlight=False)
    else:
        consumers = RichTable(title="consumers")
        for col in ("table", "stream", "consumer", "lag", "pending", "ack pending", "redelivered"):
            consumers.add_column(col)
        for c in report.consumers:
            if not c.exists:
                lag = str(c.lag) if c.stream_error else "-"
                consumers.add_row(c.table, c.stream, c.consumer, lag, "not created", "", "")
                continue
            consumers.add_row(
                c.table,
                c.stream,
                c.consumer,
                str(c.lag),
                str(c.pending),
                str(c.ack_pending),
                str(c.redelivered),
            )
        target.print(consumers)
        for c in report.consumers:
            if c.warning:
                target.print(f"[yellow]warning[/yellow] {c.consumer}: {c.warning}", highlight=False)
            if c.stream_error:
                target.print(f"[red]error[/red] {c.stream_error}", highlight=False)
    if report.dead_letters:
        dl = RichTable(title="dead letters")
        dl.add_column("target table")
        dl.add_column("rows", justify="right")
        for name, n in sorted(report.dead_letters.items()):
            dl.add_row(name, f"{n:,}")
        target.print(dl)
    else:
        target.print("dead letters: none")
