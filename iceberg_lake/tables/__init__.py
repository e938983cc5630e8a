"""Declared tables: definitions in `catalog/` and the registry that loads them."""

from iceberg_lake.tables.definitions import (
    SCHEMA_NAME_PROPERTY,
    SCHEMA_VERSION_PROPERTY,
    ColumnDefinition,
    TableDefinition,
    parse_type,
)
from iceberg_lake.tables.registry import (
    BRONZE,
    DEAD_LETTERS_TABLE,
    GOLD,
    NAMESPACES,
    SILVER,
    TableRegistry,
    declared_dir,
    registry,
)

__all__ = [
    "BRONZE",
    "DEAD_LETTERS_TABLE",
    "GOLD",
    "NAMESPACES",
    "SCHEMA_NAME_PROPERTY",
    "SCHEMA_VERSION_PROPERTY",
    "SILVER",
    "ColumnDefinition",
    "TableDefinition",
    "TableRegistry",
    "declared_dir",
    "parse_type",
    "registry",
]
