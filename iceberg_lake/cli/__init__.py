"""The `lake` command-line interface.

The console script imports this package, which stays light: the CLI (pyarrow, pyiceberg, DuckDB;
about a second) loads inside `main`, where a Ctrl-C while it loads is the CLI's own one line
rather than a Python traceback. The Typer application is `iceberg_lake.cli.app.app`.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["hold_sigterm", "holds_sigterm", "main", "release_sigterm", "take_held_sigterm"]

#: SIGTERMs that came while held (`hold_sigterm`).
_held: list[int] = []


def _note_sigterm(signum: int, _frame: object) -> None:
    _held.append(signum)


def hold_sigterm(argv: list[str]) -> bool:
    """For `lake replay --follow`, note a SIGTERM that comes while the CLI loads and the replay
    starts, rather than die by it, until the replay's own handler takes it over
    (`take_held_sigterm`): it then ends at once as a SIGTERM later does (exit 0, a manifest).

    Loading the CLI takes a second, several under load; a follower stopped then (a rolling
    deploy, a supervisor's stop) died by the signal with no manifest (live19). Other commands
    keep the default until `release_sigterm`.

    Returns:
        True if SIGTERM is held.
    """
    if "replay" not in argv or "--follow" not in argv:
        return False
    signal.signal(signal.SIGTERM, _note_sigterm)
    return True


def holds_sigterm(handler: object) -> bool:
    """True if `handler` (a previous SIGTERM handler) is the one `hold_sigterm` installs."""
    return handler is _note_sigterm


def take_held_sigterm() -> bool:
    """True if a SIGTERM came while held; the caller has installed its own handler."""
    came = bool(_held)
    _held.clear()
    return came


def release_sigterm() -> None:
    """Stop holding SIGTERM (a command that is not a following replay): the default again, and
    one that came while held ends the process now, as it would have then."""
    if signal.getsignal(signal.SIGTERM) is not _note_sigterm:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if take_held_sigterm():
        signal.raise_signal(signal.SIGTERM)


def main() -> None:
    """Console-script entry point: load the CLI and run it (see `iceberg_lake.cli.app.main`)."""
    hold_sigterm(sys.argv[1:])
    try:
        from iceberg_lake.cli.app import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    try:
        run()
    finally:
        # The command is over and has said so: a Ctrl-C while the interpreter shuts down
        # (a few hundred ms after pyarrow and DuckDB) would kill it by the signal, and a
        # scheduler would read a finished run as interrupted (newuser13).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
