"""The README's settings table and `Settings` name the same `LAKE_*` variables (budget: <1 s)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from iceberg_lake.cli.app import _root
from iceberg_lake.config import CONFIG_FILE_ENV, Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def _documented() -> set[str]:
    """Every `LAKE_*` name in the first column of the README's configuration table."""
    names: set[str] = set()
    for line in README.read_text().splitlines():
        if line.startswith("| `LAKE_"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`(LAKE_[A-Z0-9_]+)`", first_cell))
    return names


def test_every_setting_is_documented_and_every_documented_variable_exists() -> None:
    fields = {f"LAKE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    documented = _documented() - {CONFIG_FILE_ENV}  # the path of lake.toml, not a setting
    assert fields - documented == set(), "settings missing from the README table"
    assert documented - fields == set(), "README documents variables Settings does not have"


def test_log_level_default_is_one_value() -> None:
    # Settings, the CLI's --log-level and the README must agree.
    cli_default = inspect.signature(_root).parameters["log_level"].default.default
    row = next(line for line in README.read_text().splitlines() if "`LAKE_LOG_LEVEL`" in line)
    assert Settings().log_level == cli_default == "WARNING"
    assert "`WARNING`" in row
