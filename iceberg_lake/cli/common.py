"""What every CLI command shares: settings, the catalog, and (re-exported) the output layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

__all__ = [
    "AS_OF_OPTION",
    "OUTPUT_OPTION",
    "OutputFormat",
    "console",
    "emit",
    "err_console",
    "format_ms",
    "open_catalog",
    "settings",
]

#: `--as-of` of the read commands (`Annotated[list[str] | None, AS_OF_OPTION]`, parsed by
#: `cli.query.parse_as_of`): one pin for every table, or TABLE=PIN per table.
AS_OF_OPTION = typer.Option("--as-of", help="Tag, snapshot id or ISO time, or TABLE=PIN (repeat).")


def settings() -> Settings:
    """The settings from `LAKE_*` variables and `lake.toml` (raises `ConfigError`)."""
    return load_settings()


def open_catalog(*, read_only: bool = False) -> LakeCatalog:
    """Open the catalog from the current settings.

    Args:
        read_only: open an existing lake only and create nothing (no `./lake-data`): a missing
            local catalog is a `ConfigError`. Read-only commands (`tables`, `describe`,
            `status`, `query`, `snapshot list`) pass True.
    """
    return LakeCatalog(settings(), create=not read_only)


def emit(
    rows: Sequence[Mapping[str, Any]],
    output: OutputFormat | None = None,
    title: str | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    """Print rows in the chosen format (see `iceberg_lake.cli.output`)."""
    get_output(output).rows(rows, title=title, columns=columns)
