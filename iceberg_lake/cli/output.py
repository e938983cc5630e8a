"""The CLI's one output layer: every command hands data to an `Output`, which renders it.

The format is chosen once, at the root (`lake --output json status`); a
command's own `--output/-o` is an alias that overrides it for that command. `table` renders rich
tables for people; `json` and `csv` are for scripts: the data alone on stdout, human messages on
stderr. Modeled on pyiceberg's `cli/output.py` (an `Output` base with a `ConsoleOutput` and a
`JsonOutput`).

Data is never markup. `console` and `err_console` print text literally (Rich markup and emoji codes
off): a value like `[/x]` or `[bold]x[/bold]` in a table, a title or a message is shown as it is.
A line that wants a style says so (`console.print(..., markup=True)`) and escapes its data with
`rich.markup.escape`.

JSON is typed (`to_json`), for scripts: integers are numbers; a decimal (DuckDB's `sum` of an
integer column, a `DECIMAL` column) is a number written with all its digits (`1056667`, `1.50`),
never rounded to a double here, so `json.loads(text, parse_float=decimal.Decimal)` reads it back
exactly; NaN and infinities (which JSON has no word for) are `null`; bytes are their UTF-8 text
when they are valid UTF-8, else base64; dates, times and timestamps are ISO-8601 with a `T`
(`2025-12-16T14:30:00+00:00`). CSV and table cells use the same rules for decimals and bytes.
"""

from __future__ import annotations

import base64
import csv
import errno
import io
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from iceberg_lake.exceptions import LakeError

if TYPE_CHECKING:
    from iceberg_lake.ops.status import LakeStatus

#: Literal consoles: what they print is never read as markup or emoji codes (see the module doc).
console = Console(markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False)

__all__ = [
    "OUTPUT_OPTION",
    "CsvOutput",
    "JsonOutput",
    "Output",
    "OutputFormat",
    "TableOutput",
    "bytes_text",
    "cell_text",
    "console",
    "err_console",
    "format_ms",
    "get_output",
    "json_value",
    "output_file_errors",
    "print_status",
    "root_format",
    "set_root_format",
    "to_json",
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


def bytes_text(value: bytes | bytearray | memoryview) -> str:
    """Bytes as text: their UTF-8 text when valid UTF-8, else base64 (the rule of every format)."""
    raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def json_value(value: Any) -> Any:
    """`value` as JSON-ready Python: None, bool, int, float, str, Decimal, dict or list.

    Decimals stay `Decimal` unless whole (then `int`), so `to_json` writes all their digits; NaN
    and infinities become None; bytes follow `bytes_text`; dates, times and timestamps become
    ISO-8601 text; a named tuple (Arrow's interval) becomes an object; other types their `str`.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes_text(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return json_value(value._asdict())
    if isinstance(value, list | tuple | set | frozenset):
        return [json_value(v) for v in value]
    return str(value)


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """`value` as typed JSON text (see the module doc; `json.dumps` layout and escaping).

    Args:
        value: rows, a record or any value `json_value` accepts.
        indent: spaces per level, as `json.dumps`; None: one line.

    Returns:
        The JSON text, without a trailing newline.
    """
    return _encode(value, indent, 0)


#: `json.dumps`'s own string escaper (C), as it escapes by default (`ensure_ascii`).
_quote: Any = getattr(json.encoder, "c_encode_basestring_ascii", None) or (
    json.encoder.encode_basestring_ascii
)


def _encode(value: Any, indent: int | None, level: int) -> str:
    """JSON text of `value` by `json_value`'s rules, in one pass (the common types first: a query
    result is mostly str, int and float); a Decimal is written as the exact number it is."""
    kind = type(value)
    if kind is str:
        return str(_quote(value))
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        return float.__repr__(value) if math.isfinite(value) else "null"
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [f"{_quote(str(k))}: {_encode(v, indent, level + 1)}" for k, v in value.items()]
        return _block("{", items, "}", indent, level)
    if isinstance(value, list | tuple | set | frozenset) and not hasattr(value, "_asdict"):
        if not value:
            return "[]"
        return _block("[", [_encode(v, indent, level + 1) for v in value], "]", indent, level)
    plain = json_value(value)
    if isinstance(plain, Decimal):
        return str(plain)  # finite and not whole: `1.50`, `1E-20`, valid JSON numbers
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, str):  # a subclass (StrEnum): its value
        return str(_quote(plain))
    if isinstance(plain, int):  # IntEnum, numpy-free subclasses: the number
        return int.__repr__(plain)
    if isinstance(plain, float):
        return float.__repr__(plain) if math.isfinite(plain) else "null"
    return _encode(plain, indent, level)  # None, or a dict/list made from another type


def _block(open_: str, items: list[str], close: str, indent: int | None, level: int) -> str:
    if indent is None:
        return f"{open_}{', '.join(items)}{close}"
    inner = "\n" + " " * (indent * (level + 1))
    outer = "\n" + " " * (indent * level)
    return f"{open_}{inner}{(',' + inner).join(items)}{outer}{close}"


def cell_text(value: Any) -> str:
    """A value as one table or CSV cell: `json_value`'s rules, nested values as JSON.

    Timestamps keep `str` (`2025-12-16 14:30:00+00:00`, easier to read than the `T` form).
    """
    if value is None:
        return ""
    if isinstance(value, Mapping | list | tuple):
        return to_json(value, indent=None)
    if isinstance(value, Decimal | bytes | bytearray | memoryview):
        return str(json_value(value))
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
        """A line for people (printed as it is, never markup): stdout in the table format,
        stderr otherwise."""
        err_console.print(text, highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        """One error line on stderr."""
        err_console.print(
            f"[red]error:[/red] {escape(text)}", markup=True, highlight=False, soft_wrap=True
        )


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
            table.add_row(*[cell_text(row.get(c)) for c in cols])
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
        typer.echo(to_json(data))


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
            writer.writerow([cell_text(row.get(c)) for c in cols])
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
    from iceberg_lake.ops.status import missing_table_errors

    target = out if isinstance(out, Console) else console
    if report.migrations_warning:
        target.print(
            f"[yellow]warning[/yellow] {escape(report.migrations_warning)}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
    tables = RichTable(title="tables")
    cols = ("table", "rows", "data files", "mean file", "snapshots", "last commit")
    for col in (*cols, "fresh (committed)", "fresh (live)"):
        tables.add_column(col, justify="left" if col == "table" else "right")
    lines = []
    for t in report.tables:
        if t.missing:
            gone = ("-", "-", "-", "-", "not in the catalog", "-", "-")
            tables.add_row(t.table, *gone)
            lines.append(f"{t.table}: not in the catalog")
            continue
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
    for line in missing_table_errors(report.tables):
        target.print(f"[red]error[/red] {escape(line)}", markup=True, highlight=False)
    # Tables nothing ever fed (no commit, no writer's consumer, no message stored) share the
    # stream's removals: one line for all, not one each that a stocks-only desk learns to skip.
    fed = {c.table for c in report.consumers if c.exists}
    unfed = [
        t.table
        for t in report.tables
        if t.live_warning
        and t.snapshots == 0
        and t.table not in fed
        and t.live_freshness_seconds is None
        and t.events_ahead_seconds is None
    ]
    if len(unfed) > 1:
        target.print(
            f"[yellow]warning[/yellow] {len(unfed)} tables have no commit, no writer and no "
            f"message in the stream, which removed messages before any was stored (if some "
            f"were theirs, they are gone; start their writers if they are meant to be fed): "
            f"{escape(', '.join(unfed))}",
            markup=True,
            highlight=False,
        )
    for t in report.tables:
        if t.live_warning and (len(unfed) < 2 or t.table not in unfed):
            target.print(
                f"[yellow]warning[/yellow] {escape(t.live_warning)}", markup=True, highlight=False
            )
    if report.nats != "ok":
        target.print(
            f"[yellow]NATS {escape(report.nats)}[/yellow]: consumer lag unknown",
            markup=True,
            highlight=False,
        )
    else:
        consumers = RichTable(title="consumers")
        for col in ("table", "stream", "consumer", "lag", "pending", "ack pending", "redelivered"):
            consumers.add_column(col)
        lines = []
        for c in report.consumers:
            if not c.exists:
                lag = str(c.lag) if c.stream_error else "-"
                consumers.add_row(c.table, c.stream, c.consumer, lag, "not created", "", "")
                lines.append(f"{c.table}: consumer {c.consumer} on {c.stream} not created")
                continue
            counts = [str(n) for n in (c.lag, c.pending, c.ack_pending, c.redelivered)]
            consumers.add_row(c.table, c.stream, c.consumer, *counts)
            lines.append(
                f"{c.table}: consumer {c.consumer} on {c.stream}, lag {counts[0]}, pending "
                f"{counts[1]}, ack pending {counts[2]}, redelivered {counts[3]}"
            )
        wide = target.measure(consumers, options=target.options.update_width(1_000)).maximum
        if wide <= target.width:
            target.print(consumers)
        else:
            # Too narrow (80 columns: the compose log, cron): one line per consumer rather than
            # names cut to `bronze.fu…`, which hid the lagging one (newuser5).
            target.print("consumers", style="italic")
            for line in lines:
                target.print(line, highlight=False, soft_wrap=True)
        for c in report.consumers:
            if c.warning:
                target.print(
                    f"[yellow]warning[/yellow] {escape(c.consumer)}: {escape(c.warning)}",
                    markup=True,
                    highlight=False,
                )
            if c.stream_error:
                target.print(
                    f"[red]error[/red] {escape(c.stream_error)}", markup=True, highlight=False
                )
    if report.dead_letters:
        dl = RichTable(title="dead letters")
        dl.add_column("target table")
        dl.add_column("rows", justify="right")
        for name, n in sorted(report.dead_letters.items()):
            dl.add_row(name, f"{n:,}")
        target.print(dl)
    else:
        target.print("dead letters: none")
