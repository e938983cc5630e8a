"""The `lake` command: one Typer app, sub-apps per concern, one place that reports errors.

Every `LakeError` (bad configuration, unknown table, unreachable catalog, refused schema change)
ends as one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import sys
import traceback
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
    release_sigterm,
    schema,
    serve,
    tables,
)
from iceberg_lake.cli.output import OutputFormat, err_console, set_root_format
from iceberg_lake.config import DEFAULT_LOG_LEVEL, load_settings, redact
from iceberg_lake.exceptions import LakeError

log = logging.getLogger("iceberg_lake.cli")


class LakeGroup(TyperGroup):
    """Top-level group: every error a command raises ends as one line on stderr, no traceback.

    Every error exits 1: a `LakeError`, a usage error (unknown option, missing or conflicting
    options, a value that does not parse; Click's own code would be 2, the lake has one), an
    `OSError` of the machine (`No space left on device: <file>`), and anything else, which is a
    bug: `error: internal error: <type>: <message>` (`--log-level debug` adds the traceback,
    redacted like the line). Ctrl-C, `typer.Exit` and `SystemExit` pass through unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _reflow_help(self)

    # `Any`: Typer vendors click, and its `Context` class has no public import path.
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        # The root's own options are parsed here, before `invoke` (`lake --bogus`).
        try:
            return super().make_context(*args, **kwargs)
        except typer.TyperException as exc:
            if _is_help(exc):
                _print_help(exc)
            raise typer.Exit(_report(exc)) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, EOFError):
            raise  # normal ends (`typer.Exit(1)` of `check --strict`) and Ctrl-D
        except KeyboardInterrupt:
            ctx.exit(_interrupted())
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # `lake query … | head`: Typer exits quietly
            ctx.exit(_report(exc))
        except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
            from iceberg_lake.engine.duck import is_interrupted_query

            if is_interrupted_query(exc):  # DuckDB's answer to Ctrl-C (newuser10)
                ctx.exit(_interrupted())
            if _is_help(exc):
                _print_help(exc)
            ctx.exit(_report(exc))


def _interrupted() -> int:
    """Ctrl-C: one line, exit code 130 (128 + SIGINT), as shells report it."""
    err_console.print("interrupted", highlight=False)
    return 130


def _reflow_help(command: Any) -> None:
    """Join the hard-wrapped lines of every help paragraph below `command`.

    Typer's Rich help keeps the single line breaks of a docstring's later paragraphs, so text
    wrapped at 100 columns in the source breaks mid-sentence in an 80-column terminal. Lists
    (lines starting with `- `, `* ` or a space) and `\b` blocks keep their lines.
    """
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(_reflow(p) for p in paragraphs)
    for sub in getattr(command, "commands", {}).values():
        _reflow_help(sub)


def _reflow(paragraph: str) -> str:
    lines = paragraph.split("\n")
    if paragraph.startswith("\b") or any(line.startswith(("- ", "* ", " ")) for line in lines):
        return paragraph
    return " ".join(line.strip() for line in lines)


def _is_help(exc: BaseException) -> bool:
    """Click's "no arguments: print the help" signal (`lake maintain`), not an error."""
    return type(exc).__name__ == "NoArgsIsHelpError"  # how Typer itself tells it apart


def _print_help(exc: BaseException) -> None:
    """`lake` or a group alone (`lake maintain`): its help on stdout, as `--help`, exit 0.

    Asking what a group holds is not a usage error (Click would exit 2).

    Raises:
        typer.Exit: always, with code 0.
    """
    # With Rich, Typer prints the help while it builds the message (so the message is empty);
    # without it, the message is the help.
    text = exc.format_message() if isinstance(exc, typer.TyperException) else ""
    if text.strip():
        typer.echo(text)
    raise typer.Exit(0)


def _report(exc: BaseException) -> int:
    """Print `exc` as one redacted line on stderr; return the exit code (1)."""
    if log.isEnabledFor(logging.DEBUG):  # --log-level debug: the traceback, redacted too
        trace = "".join(traceback.format_exception(exc))
        log.debug("the error's traceback:\n%s", _redact(trace))
    if isinstance(exc, LakeError):
        text = _one_line(str(exc)) or type(exc).__name__
    elif isinstance(exc, OSError) and exc.strerror:
        # The machine, not the lake: a full disk, a permission, a file that went away.
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    elif isinstance(exc, typer.TyperException):  # Click's usage errors (BadParameter, ...)
        text = _one_line(exc.format_message())
        command = getattr(getattr(exc, "ctx", None), "command_path", None)
        if command:
            text += f" (see `{command} --help`)"
    else:
        detail = _one_line(str(exc))
        text = (
            f"internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
            "(run with --log-level debug for the traceback)"
        )
    err_console.print(
        f"[red]error:[/red] {escape(_redact(text))}", markup=True, highlight=False, soft_wrap=True
    )
    return 1


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).strip()


def _redact(text: str) -> str:
    """`text` with every credential masked (last line of defence)."""
    settings = None
    with contextlib.suppress(Exception):  # the error may be the configuration itself
        settings = load_settings()
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


def _not_retry_chatter(record: logging.LogRecord) -> bool:
    """Drop a dependency's notes about its own retries and cleanups unless the log is verbose.

    pyiceberg says at WARNING that it retries a lost commit or could not delete an old metadata
    file (`engine.iceberg.is_retry_chatter`); neither is a problem of the command, which lands
    or fails with its own error line. They show at `--log-level info` or `debug`; at `info`,
    the missing metadata files only once per table (after a catalog restore each of the next
    20 commits names one), all of them at `debug`.
    """
    level = logging.getLogger().getEffectiveLevel()
    if level <= logging.DEBUG:
        return True
    # (not needed to start the CLI)
    from iceberg_lake.engine.iceberg import is_repeated_metadata_delete_note, is_retry_chatter

    if level <= logging.INFO:
        return not is_repeated_metadata_delete_note(record)
    return not is_retry_chatter(record)


def _configure_logging(level: int) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_not_retry_chatter)
        root.addHandler(handler)


_ROOT_OUTPUT = typer.Option(
    OutputFormat.table,
    "--output",
    "-o",
    help="table (for people), json or csv (for scripts); every command's output.",
)


@app.callback()
def _root(
    ctx: typer.Context,
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
    if ctx.invoked_subcommand != "replay":
        release_sigterm()  # held only for `lake replay --follow` (`hold_sigterm`)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        # Both spellings (docs19: a bad LAKE_LOG_LEVEL was named as the flag never typed).
        raise typer.BadParameter(
            f"unknown log level {log_level!r}", param_hint="--log-level / LAKE_LOG_LEVEL"
        )
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
    """Console-script entry point.

    `LakeGroup` reports every error a command raises; this is the net under it (an error in
    Typer's own machinery), with the same one line and exit code 1.
    """
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - never a traceback
        sys.exit(_report(exc))
