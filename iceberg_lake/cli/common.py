"""What every CLI command shares: settings, the catalog, and (re-exported) the output layer."""

from __future__ import annotations

import functools
import inspect
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.cli.output import (
    OUTPUT_OPTION,
    OutputFormat,
    console,
    err_console,
    format_ms,
    get_output,
)
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import LakeError
from iceberg_lake.timetravel import snapshots

if TYPE_CHECKING:
    from iceberg_lake.timetravel.query import Lake
    from iceberg_lake.timetravel.sessions import Session

__all__ = [
    "AS_OF_OPTION",
    "OUTPUT_OPTION",
    "OutputFormat",
    "Window",
    "console",
    "emit",
    "err_console",
    "format_ms",
    "SigtermInterrupt",
    "open_catalog",
    "option",
    "option_group",
    "parse_time_ns",
    "split_names",
    "parse_window",
    "settings",
    "window_options",
]

F = TypeVar("F", bound=Callable[..., Any])

#: `--as-of` of the read commands (`Annotated[list[str] | None, AS_OF_OPTION]`, parsed by
#: `cli.query.parse_as_of`): one pin for every table, or TABLE=PIN per table.
AS_OF_OPTION = typer.Option("--as-of", help="Tag, snapshot id or ISO time, or TABLE=PIN (repeat).")


class SigtermInterrupt:
    """From its creation until `restore()`, SIGTERM (docker stop, systemd, `kill`) ends a long
    command as Ctrl-C does: it raises `KeyboardInterrupt`, so the command's `except
    KeyboardInterrupt` path runs (output flushed and closed, manifest written) instead of the
    process ending where it stands.

    Attributes:
        received: a SIGTERM arrived (the interrupt was this signal, not Ctrl-C).
    """

    def __init__(self) -> None:
        from iceberg_lake.cli import holds_sigterm, take_held_sigterm

        self.received = False
        self._previous: Any = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: SIGTERM keeps its handler
            self._previous = None
        if holds_sigterm(self._previous):
            # It was held while the command started (`cli.hold_sigterm`): the default after
            # `restore`; one that came meanwhile ends the command at `raise_if_received`.
            self._previous = signal.SIG_DFL
            if take_held_sigterm():
                self.received = True
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    def raise_if_received(self) -> None:
        """Raise `KeyboardInterrupt` if a SIGTERM came before this handler was installed
        (held while the command started): the command ends at once, as on a later one."""
        if self.received:
            raise KeyboardInterrupt

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        if self.received:
            return  # once: a repeated SIGTERM must not interrupt the clean-up it started
        self.received = True
        # Nor a Ctrl-C right after it (an asyncio run's teardown, cut by it, left a task
        # destroyed pending and a traceback: review16b); `restore` gives it back.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    def restore(self) -> None:
        """Give SIGTERM back its previous handler (and Ctrl-C its default, if a SIGTERM came)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
            if self.received:
                signal.signal(signal.SIGINT, signal.default_int_handler)


def settings() -> Settings:
    """The settings from `LAKE_*` variables and `lake.toml` (raises `ConfigError`)."""
    return load_settings()


def open_catalog(*, read_only: bool = False) -> LakeCatalog:
    """Open the catalog from the current settings.

    Args:
        read_only: open an existing lake only and create nothing (no `./lake-data`): a missing
            local catalog is a `ConfigError`. Every command that reads or changes an existing
            lake's tables passes True; only `init`, `serve`, `compact`, `demo`,
            `table create` and `migrate up|new` may make a lake.
    """
    return LakeCatalog(settings(), create=not read_only)


def say(text: str, output: OutputFormat | None = None) -> None:
    """A line for people: stdout beside a table, stderr beside CSV or JSON (scripts read
    stdout)."""
    get_output(output).message(text)


def emit(
    rows: Sequence[Mapping[str, Any]],
    output: OutputFormat | None = None,
    title: str | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    """Print rows in the chosen format (see `iceberg_lake.cli.output`)."""
    get_output(output).rows(rows, title=title, columns=columns)


# ---- option groups ---------------------------------------------------------------------------


def option_group(
    name: str, build: Callable[..., Any], options: Sequence[inspect.Parameter]
) -> Callable[[F], F]:
    """A decorator that gives a command a group of options as one argument.

    The command declares a keyword-only parameter `name` (no default); Typer sees `options` in
    its place (same position, so `--help` lists them where the parameter stands), and the
    command receives
    `build(**values of options)` as `name`. Flags, defaults and help live once, here or in the
    module that defines the group.

    Args:
        name: the command's parameter that receives the group.
        build: makes the group object from the options' values (keyword arguments).
        options: the options as keyword-only `inspect.Parameter`s, annotated
            `Annotated[T, typer.Option(...)]` with their defaults.

    Returns:
        The decorator.
    """

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        if name not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {name!r} for its option group")
        params: list[inspect.Parameter] = []
        for param in sig.parameters.values():
            # Typer passes every value by keyword, so all may be keyword-only (the command
            # declares its group after `*`, since the group has no default).
            kw = param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            params.extend(options if param.name == name else [kw])
        names = [o.name for o in options]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = build(**{n: kwargs.pop(n) for n in names})
            return fn(*args, **kwargs)

        # Typer reads the signature and type hints of `command`, not of `fn`.
        del command.__wrapped__
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__annotations__["return"] = sig.return_annotation
        return command  # type: ignore[return-value]

    return decorate


def option(
    name: str, annotation: Any, default: Any, *decls: str, text: str, hidden: bool = False
) -> inspect.Parameter:
    """One option of an `option_group`: parameter `name` of type `annotation`, flags `decls`,
    help `text` (`hidden`: left out of `--help`, for an old spelling kept working)."""
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(*decls, help=text, hidden=hidden)],
    )


@dataclass(frozen=True)
class Window:
    """`--start/--end` or `--session/--calendar` as given (see `window_options`)."""

    start: str | None
    end: str | None
    session: str | None
    calendar: str | None

    @property
    def given(self) -> bool:
        """Whether a window was asked for (`--start` or `--session`)."""
        return self.start is not None or self.session is not None

    def calendar_of(self, tables: Sequence[str]) -> str:
        """`--calendar`, else the default for `tables` (`sessions.calendar_for`)."""
        from iceberg_lake.timetravel.sessions import calendar_for

        return self.calendar or calendar_for(tables)

    def origin(self, tables: Sequence[str] = ()) -> dict[str, Any]:
        """How a `--session` window was chosen, for a replay manifest (empty otherwise): the
        session, the calendar and the calendar package's version (its hours may change)."""
        if self.session is None:
            return {}
        from importlib.metadata import version

        from iceberg_lake.timetravel.sessions import resolve_calendar

        package = "pandas-market-calendars"
        return {
            "session": self.session,
            "calendar": resolve_calendar(self.calendar_of(tables)),
            "calendars": f"{package} {version(package)}",
        }

    def ns(self, tables: Sequence[str] = ()) -> tuple[int, int]:
        """The `[start_ns, end_ns)` window (see `parse_window`); without `--calendar`, a
        session's calendar follows `tables` (`sessions.calendar_for`)."""
        return parse_window(self.start, self.end, self.session, self.calendar_of(tables))

    def session_of(self, tables: Sequence[str]) -> Session | None:
        """The `--session` window as `ns(tables)` takes it (None without `--session`)."""
        if self.session is None:
            return None
        from iceberg_lake.timetravel.sessions import session_window

        return session_window(self.session, self.calendar_of(tables))


def note_outside(
    lake: Lake,
    session: Session | None,
    pins: Mapping[str, int | None],
    symbols: Sequence[str] | None = None,
) -> None:
    """After a `--session` read: one stderr line for each table of `pins` (table → the snapshot
    id the read used) holding events between `session` and its neighbours, which the window
    leaves out (desk14: the last minutes of a half day on the pit calendar, a closing cross
    stamped at the close, pre- and post-market prints were left out without a word).
    Best effort: a count that fails says so in one line and never fails the command."""
    if session is None:
        return
    from iceberg_lake.timetravel.sessions import events_outside

    read = {t: sid for t, sid in pins.items() if sid is not None}  # empty at its pin: nothing
    try:
        found = events_outside(lake, list(read), session, dict(read), symbols)
    except Exception as exc:  # an advisory line must not cost the command its result
        err_console.print(
            f"could not count what session {session.day.isoformat()} leaves out: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            highlight=False,
            soft_wrap=True,
        )
        return
    where = f"session {session.day.isoformat()} ({session.calendar})"
    for outside in found:
        sides = []
        if outside.before:
            assert outside.last_before_ns is not None
            since = (
                "between the previous close and the open"
                if outside.previous_close
                else "in the 14 days before the open"
            )
            sides.append(
                f"{outside.before:,} events {since} (the last at {_utc_ms(outside.last_before_ns)})"
            )
        if outside.after:
            assert outside.first_after_ns is not None
            until = (
                "between the close and the next open"
                if outside.next_open
                else "in the 14 days after the close"
            )
            sides.append(
                f"{outside.after:,} events {until} (the first at {_utc_ms(outside.first_after_ns)})"
            )
        if sides:
            err_console.print(
                f"not in {where}, left out: {outside.table} has {' and '.join(sides)}; "
                "--start/--end takes them",
                highlight=False,
                soft_wrap=True,
            )


def window_options(
    *, start_help: str = "Unix ns (not s/ms) or ISO time/date (UTC).", end_help: str | None = None
) -> Callable[[F], F]:
    """Options `--start`, `--end`, `--session`, `--calendar`, passed as `window: Window`.

    Args:
        start_help: help of `--start` (commands differ in what no `--start` means).
        end_help: help of `--end` (default: start + 1 day for a date).
    """
    return option_group(
        "window",
        Window,
        [
            option("start", str | None, None, "--start", text=start_help),
            option(
                "end",
                str | None,
                None,
                "--end",
                text=end_help or "Exclusive end; default: start + 1 day for a date.",
            ),
            option(
                "session",
                str | None,
                None,
                "--session",
                text="Trading day (YYYY-MM-DD): the window is its session.",
            ),
            option(
                "calendar",
                str | None,
                None,
                "--calendar",
                text=(
                    "Calendar of --session: XNYS, NASDAQ, 'CME Globex Equity', … (default: "
                    "CME Globex Equity for futures tables, else XNYS)."
                ),
            ),
        ],
    )


def split_names(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated options (`-t a,b -t c`) as one list; None if none given."""
    if not values:
        return None
    out = [t.strip() for v in values for t in v.split(",") if t.strip()]
    return out or None


#: `--start 2025-12-16`: a date (the window is then that UTC day unless --end is given).
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time_ns(text: str, option: str, *, plausible: bool = True) -> int:
    """`--start/--end`: Unix nanoseconds, or an ISO time/date (naive = UTC), to the nanosecond.

    An integer that looks like Unix seconds, milliseconds or microseconds is refused
    (`snapshots.check_unix_ns`): read as nanoseconds it would select nothing, silently.
    `plausible=False` takes any integer (`--origin`: only its offset on the grid matters).
    """
    raw = text.strip()
    try:
        if raw.lstrip("-").isdigit():
            return snapshots.check_unix_ns(int(raw)) if plausible else int(raw)
        when = snapshots.parse_timestamp_ns(raw)
    except LakeError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
    if when is None:
        raise typer.BadParameter(
            f"{text!r} is neither Unix nanoseconds nor an ISO time", param_hint=option
        )
    return when


def parse_since_ns(text: str, option: str = "--since") -> int:
    """`--since` (`check`, `dead-letters`): Unix nanoseconds, an ISO time/date (naive = UTC),
    or an age back from now (`2h`, `7d`, `1d12h`)."""
    from iceberg_lake.ops.maintenance import parse_duration

    raw = text.strip()
    if raw.lstrip("-").isdigit() or snapshots.parse_timestamp_ns(raw) is not None:
        return parse_time_ns(raw, option)
    try:
        age = parse_duration(raw)
    except LakeError:
        raise typer.BadParameter(
            f"invalid --since {text!r} (use Unix nanoseconds, an ISO time or an age like 2h, 7d)",
            param_hint=option,
        ) from None
    # Whole microseconds (a timedelta's resolution) as integers: no float seconds in between.
    return time.time_ns() - age // timedelta(microseconds=1) * 1_000


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_ms(ns: int) -> str:
    when = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{ns % 1_000_000_000 // 1_000_000:03d}Z"


def parse_window(
    start: str | None, end: str | None, session: str | None, calendar: str
) -> tuple[int, int]:
    """`--start/--end` or `--session/--calendar` as a `[start_ns, end_ns)` window."""
    if session is not None:
        if start is not None or end is not None:
            raise typer.BadParameter("give --session or --start/--end, not both")
        from iceberg_lake.timetravel.sessions import session_window

        window = session_window(session, calendar)
        # Which calendar and hours the session took (a default that followed the tables, an
        # early close): one line beside the output, never in it.
        pit = (
            " (the pit calendar: half days close at 12:00 Chicago; Globex data: "
            "--calendar 'CME Globex Equity')"
            if window.calendar == "CME_Equity"
            else ""
        )
        err_console.print(
            f"session {window.day.isoformat()} on {window.calendar}: "
            f"[{_utc(window.open_ns)}, {_utc(window.close_ns)}){pit}",
            highlight=False,
        )
        return window.open_ns, window.close_ns
    if start is None:
        raise typer.BadParameter("--start (or --session) is required", param_hint="--start")
    start_ns = parse_time_ns(start, "--start")
    if end is None:
        if not _DATE.match(start.strip()):
            raise typer.BadParameter("--end is required unless --start is a date")
        return start_ns, start_ns + 86_400 * 1_000_000_000
    return start_ns, parse_time_ns(end, "--end")
