"""What the benchmark scripts share: printing their result rows (a rich table, or JSON)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

#: The columns of every benchmark row: a figure beside its same-run baseline.
COLUMNS = ("benchmark", "metric", "value", "unit", "baseline", "baseline_value")


def print_rows(rows: Sequence[Mapping[str, Any]], *, title: str, as_json: bool = False) -> None:
    """Print benchmark rows as a rich table on stdout, or as a JSON array with `as_json`.

    Args:
        rows: Rows with the keys of `COLUMNS`.
        title: The table's title.
        as_json: Print JSON (for scripts) instead of a table.
    """
    if as_json:
        print(json.dumps(list(rows), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col)
    for r in rows:
        table.add_row(*["" if r[c] is None else str(r[c]) for c in COLUMNS])
    Console().print(table)
