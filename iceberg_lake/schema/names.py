"""Column names across a table's schema history: what a renamed column was called before.

A rename in Iceberg is metadata only: the column keeps its field id, and its data files keep the
old name. Iceberg readers resolve columns by field id, but the lake's own code meets column
NAMES from outside the table: message fields (the producers still send `exchange` after the
table renamed it `exch`), the declared `catalog/*.toml` columns (dedup keys, `seq`), and the
other table of a Bronze → Silver pair (each has its own field ids). `NameHistory` turns such a
name into the field it denotes by looking at every schema the table ever had, newest first: a
name means the field it most recently named.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyiceberg.schema import Schema

__all__ = ["NameHistory"]


class NameHistory:
    """Which field each top-level column name most recently denoted, over a table's schemas.

    Args:
        schemas: every schema of the table (`table.schemas().values()`), any order.
    """

    def __init__(self, schemas: Iterable[Schema]) -> None:
        self._ids: dict[str, int] = {}
        self._names: dict[int, list[str]] = {}
        self._all_ids: dict[str, list[int]] = {}
        for schema in sorted(schemas, key=lambda s: s.schema_id, reverse=True):
            for f in schema.fields:
                # Newest first: a name reused by another field later means that later field.
                self._ids.setdefault(f.name, f.field_id)
                names = self._names.setdefault(f.field_id, [])
                if f.name not in names:
                    names.append(f.name)
                ids = self._all_ids.setdefault(f.name, [])
                if f.field_id not in ids:
                    ids.append(f.field_id)

    def field_id(self, name: str) -> int | None:
        """The field id `name` most recently denoted (None: the table never had that name)."""
        return self._ids.get(name)

    def field_ids(self, name: str) -> list[int]:
        """Every field `name` has denoted, newest first (two or more: the name was reused by a
        new column after a rename or a drop)."""
        return list(self._all_ids.get(name, []))

    def names(self, field_id: int) -> list[str]:
        """Every name field `field_id` has had, newest first."""
        return list(self._names.get(field_id, []))

    def resolve(self, name: str, schema: Schema) -> str | None:
        """The column of `schema` that `name` denotes: the column of that name, else the column
        with the field id `name` last denoted (a column renamed since), else None."""
        names = {f.name for f in schema.fields}
        if name in names:
            return name
        fid = self._ids.get(name)
        if fid is None:
            return None
        for f in schema.fields:
            if f.field_id == fid:
                return f.name
        return None

    def former_names(self, schema: Schema) -> dict[str, str]:
        """Old name → current name, for every old name of a column of `schema` that no column
        of `schema` carries today and that last denoted that column."""
        current = {f.name for f in schema.fields}
        by_id = {f.field_id: f.name for f in schema.fields}
        return {
            old: by_id[fid] for old, fid in self._ids.items() if old not in current and fid in by_id
        }
