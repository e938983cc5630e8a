"""Drift: how the live tables differ from the declared `catalog/` definitions.

`catalog/` is the single description of the desired state. `find_drift` compares every declared
table with the live one: missing tables, missing or undeclared columns, type and nullability
differences, the partition spec, the schema name and `lake.schema-version`. It also reports
migrations that are pending (severity `warning`: on a fresh lake they are recorded no-ops) or
were edited after being applied (`error`), and tables in the lake's namespaces that `catalog/`
does not declare (`warning`). `lake migrate check` exits 1 when any `error` is found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyiceberg.table import Table

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.properties import SCHEMA_NAME_PROPERTY
from iceberg_lake.schema.evolve import TableState
from iceberg_lake.tables import TableDefinition

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Drift:
    """One difference between the desired and the live state."""

    table: str
    kind: str
    detail: str
    severity: str = ERROR

    def as_row(self) -> dict[str, Any]:
        """For `lake migrate check` output."""
        return asdict(self)


def compare_table(definition: TableDefinition, table: Table) -> list[Drift]:
    """Differences between one declared table and its live counterpart.

    Column order and docs are not compared (adding a column always appends it); field ids are
    not compared either, because a lake created fresh and a migrated one may number differently.
    """
    ident = definition.identifier
    live = TableState.from_table(ident, table)
    out: list[Drift] = []
    declared = {c.name: c for c in definition.columns}
    for name, col in declared.items():
        have = live.column(name)
        if have is None:
            out.append(Drift(ident, "missing-column", f"{name} {col.type} is declared, not live"))
            continue
        if have.type != col.iceberg_type:
            out.append(
                Drift(ident, "type", f"{name} is {have.type} live, declared {col.iceberg_type}")
            )
        if have.required != col.required:
            want = "required" if col.required else "optional"
            out.append(Drift(ident, "required", f"{name} is declared {want}, live is not"))
    for have in live.columns:
        if have.name not in declared:
            out.append(Drift(ident, "extra-column", f"{have.name} {have.type} is live, undeclared"))
    want_spec = [(p.source, p.transform) for p in definition.partition]
    if list(live.partition) != want_spec:
        out.append(
            Drift(ident, "partition", f"live {_spec(live.partition)}, declared {_spec(want_spec)}")
        )
    live_name = table.properties.get(SCHEMA_NAME_PROPERTY)
    if live_name != definition.schema_name:
        out.append(
            Drift(ident, "schema-name", f"live {live_name!r}, declared {definition.schema_name!r}")
        )
    if live.schema_version != definition.schema_version:
        out.append(
            Drift(
                ident,
                "schema-version",
                f"live {live.schema_version}, declared {definition.schema_version}",
            )
        )
    return out


def _spec(fields: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    return "[" + ", ".join(f"{t}({s})" for s, t in fields) + "]" if fields else "unpartitioned"


def find_drift(catalog: LakeCatalog, migrations_dir: Path | None = None) -> list[Drift]:
    """Every difference between `catalog/`, the migrations and the live lake.

    Read-only.

    Args:
        catalog: the lake (its `registry` is the desired state).
        migrations_dir: the migrations folder to check (default: the shipped one).

    Returns:
        The differences, errors first; empty when the lake is exactly as declared.
    """
    from iceberg_lake.schema.migrations import MigrationRunner

    out: list[Drift] = []
    existing = set(catalog.existing_tables())
    for definition in catalog.registry:
        if definition.identifier not in existing:
            out.append(
                Drift(definition.identifier, "missing-table", "declared, not in the catalog")
            )
            continue
        out.extend(compare_table(definition, catalog.load_table(definition.identifier)))
    for ident in sorted(existing - set(catalog.registry.identifiers)):
        out.append(Drift(ident, "undeclared-table", "in the catalog, not in catalog/", WARNING))
    runner = MigrationRunner(catalog, migrations_dir)
    try:
        for s in runner.status():
            if s.state == "pending":
                out.append(
                    Drift(f"migration {s.version:04d}", "pending", s.name + " not applied", WARNING)
                )
            elif s.state == "edited":
                out.append(
                    Drift(
                        f"migration {s.version:04d}",
                        "edited",
                        f"{s.name} changed after it was applied",
                    )
                )
    finally:
        runner.close()
    return sorted(out, key=lambda d: (d.severity != ERROR, d.table, d.kind))
