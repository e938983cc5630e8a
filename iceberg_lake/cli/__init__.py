"""The `lake` command-line interface.

The console script imports this package, which stays light: the CLI (pyarrow, pyiceberg, DuckDB;
about a second) loads inside `main`, where a Ctrl-C while it loads is the CLI's own one line
rather than a Python traceback. The Typer application is `iceberg_lake.cli.app.app`.
"""

from __future__ import annotations

import signal
import sys

__all__ = ["main"]


def main() -> None:
    """Console-script entry point: load the CLI and run it (see `iceberg_lake.cli.app.main`)."""
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
