"""The `lake` command: one Typer app, sub-apps per concern, one place that reports errors.

Every `LakeError` (bad configuration, unknown table, unreachable catalog, refused schema change)
ends as one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from iceberg_lake import __version__
from iceberg_lake.cli import (
    backtest,
    check,
    compact,
    dead_letters,
    demo,
    engines,
    load,
    maintain,
    query,
    schema,
    serve,
    tables,
)
from iceberg_lake.cli.output import OutputFormat, err_console, set_root_format
from iceberg_lake.config import DEFAULT_LOG_LEVEL, load_settings, redact
from iceberg_lake.exceptions import LakeError


class LakeGroup(TyperGroup):
    """Top-level group: turns a `LakeError` raised by any sub-command into one line, exit 1."""

    # `Any`: Typer vendors click, and its `Context` class has no public import path.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LakeError as exc:
            err_console.print(
                f"[red]error:[/red] {escape(_safe(exc))}", highlight=False, soft_wrap=True
            )
            ctx.exit(1)


def _safe(exc: LakeError) -> str:
    """The error's message on one line, with every credential masked (last line of defence)."""
    settings = None
    with contextlib.suppress(Exception):  # the error may be the configuration itself
        settings = load_settings()
    text = " ".join(str(exc).split("\n")).strip() or type(exc).__name__
    return redact(text, settings)


app = typer.Typer(
    cls=LakeGroup,
    name="lake",
    help="iceberg_lake: market data from NATS JetStream into Bronze/Silver/Gold Iceberg tables.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lake {__version__}")
        raise typer.Exit()


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever `sys.stderr` is now (a test runner swaps it per invocation)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _configure_logging(level: int) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


_ROOT_OUTPUT = typer.Option(
    OutputFormat.table,
    "--output",
    "-o",
    help="table (for people), json or csv (for scripts); every command's output.",
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    output: OutputFormat = _ROOT_OUTPUT,
    log_level: str = typer.Option(
        DEFAULT_LOG_LEVEL,
        "--log-level",
        envvar="LAKE_LOG_LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (`lake serve` always logs its startup and flushes).",
    ),
) -> None:
    """iceberg_lake: market data from NATS JetStream into Bronze/Silver/Gold Iceberg tables."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    _configure_logging(level)
    set_root_format(output)


for _module in (
    tables,
    serve,
    load,
    compact,
    query,
    backtest,
    schema,
    maintain,
    check,
    engines,
    demo,
    dead_letters,
):
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
