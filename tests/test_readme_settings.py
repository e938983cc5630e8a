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


def test_documented_defaults_are_the_real_ones() -> None:
    # Rows whose default cell is backticked literals, one per variable (`1000`, `5`); `–` = None.
    defaults = {f"LAKE_{f.name.upper()}": f.default for f in dataclasses.fields(Settings)}
    wrong: list[str] = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `LAKE_"):
            continue
        cells = line.split("|")
        names = re.findall(r"`(LAKE_[A-Z0-9_]+)`", cells[1])
        cell = cells[2].strip()
        values: list[str | None] = (
            [None] * len(names) if cell == "–" else re.findall(r"`([^`$]*)`", cell)
        )
        if len(values) != len(names):
            continue  # a default computed from another setting ($LAKE_DATA_DIR/…)
        for name, text in zip(names, values, strict=True):
            real = defaults.get(name)
            if text is None:
                ok = real is None
            elif isinstance(real, (int, float)):
                ok = float(text) == float(real)
            else:
                ok = str(text).removeprefix("./") == str(real)
            if not ok:
                wrong.append(f"{name}: README {text!r}, Settings {real!r}")
    assert wrong == []
