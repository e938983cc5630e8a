"""What every CLI command shares: settings, the catalog, consoles and output formatting."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


class OutputFormat(StrEnum):
    """How a command prints its result."""

    text = "text"
    json = "json"


OUTPUT_OPTION = typer.Option(
    OutputFormat.text, "--output", "-o", help="text (rich tables) or json (for scripts)"
)


def settings() -> Settings:
    """The settings from `LAKE_*` variables and `lake.toml` (raises `ConfigError`)."""
    return load_settings()


def open_catalog() -> LakeCatalog:
    """Open the catalog from the current settings."""
    return LakeCatalog(settings())


def format_ms(ms: int | None) -> str:
    """A snapshot timestamp (epoch ms) as an ISO UTC string."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def emit(
    rows: Sequence[dict[str, Any]],
    output: OutputFormat,
    title: str | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    """Print rows as a rich table (text) or a JSON array (json)."""
    if output == OutputFormat.json:
        typer.echo(json.dumps(list(rows), default=str, indent=2))
        return
    cols = list(columns or (rows[0].keys() if rows else []))
    table = RichTable(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in cols])
    console.print(table)
