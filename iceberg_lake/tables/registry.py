"""The registry of declared tables, loaded from the `catalog/` definitions.

In a source checkout the definitions are the repository's `catalog/` folder; an installed wheel
carries them as `iceberg_lake/_declared/catalog`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

from iceberg_lake.exceptions import UnknownTableError
from iceberg_lake.tables.definitions import TableDefinition, load_definition_file

_PACKAGE_DIR = Path(__file__).resolve().parent.parent

BRONZE, SILVER, GOLD = "bronze", "silver", "gold"
NAMESPACES = (BRONZE, SILVER, GOLD)
DEAD_LETTERS_TABLE = "bronze.dead_letters"


def declared_dir(kind: str) -> Path:
    """The folder holding declared `kind` files (`catalog` or `migrations`)."""
    packaged = _PACKAGE_DIR / "_declared" / kind
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent / kind


class TableRegistry:
    """All declared tables, by identifier (`bronze.stocks_trades`)."""

    def __init__(self, definitions: list[TableDefinition]) -> None:
        self._by_id = {d.identifier: d for d in definitions}

    @classmethod
    def from_directory(cls, directory: Path) -> TableRegistry:
        """Load every `*.toml` definition in `directory`."""
        definitions: list[TableDefinition] = []
        for path in sorted(directory.glob("*.toml")):
            definitions.extend(load_definition_file(path))
        return cls(definitions)

    def __iter__(self) -> Iterator[TableDefinition]:
        return iter(sorted(self._by_id.values(), key=lambda d: d.identifier))

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, identifier: object) -> bool:
        return identifier in self._by_id

    @property
    def identifiers(self) -> list[str]:
        """Every declared table identifier, sorted."""
        return sorted(self._by_id)

    def get(self, identifier: str) -> TableDefinition:
        """The definition of `identifier`.

        Raises:
            UnknownTableError: no such declared table.
        """
        try:
            return self._by_id[identifier]
        except KeyError:
            raise UnknownTableError(
                f"unknown table '{identifier}' (known: {', '.join(self.identifiers)})"
            ) from None

    def in_namespace(self, namespace: str) -> list[TableDefinition]:
        """Declared tables of one namespace."""
        return [d for d in self if d.namespace == namespace]

    def for_subject(self, subject: str) -> TableDefinition | None:
        """The Bronze or Gold table that stores events published on `subject`."""
        for d in self:
            if d.subject == subject and d.namespace in (BRONZE, GOLD):
                return d
        return None

    def by_schema_name(self, schema_name: str, namespace: str) -> TableDefinition | None:
        """The table of `namespace` carrying `schema_name` (`stocks.trades`)."""
        return next(
            (d for d in self if d.schema_name == schema_name and d.namespace == namespace), None
        )

    def ingest_tables(self) -> list[TableDefinition]:
        """Tables the writers fill from the bus (Bronze market tables and Gold)."""
        return [d for d in self if d.subject and d.namespace in (BRONZE, GOLD)]


@cache
def registry() -> TableRegistry:
    """The registry of the declared tables shipped with the lake."""
    return TableRegistry.from_directory(declared_dir("catalog"))
