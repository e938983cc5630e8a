"""The `lake` command-line interface."""

from iceberg_lake.cli.app import app, main

__all__ = ["app", "main"]
