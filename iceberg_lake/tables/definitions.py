"""Declared table definitions: the TOML files in `catalog/` turned into Iceberg and Arrow objects.

A definition file describes one schema (e.g. `stocks.trades`) and the tables that carry it
(`bronze.stocks_trades`, `silver.stocks_trades`). The Iceberg schema, the hidden partition spec,
the sort order and the table properties are all derived from it, so `catalog/` stays the single
description of the desired state.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform, Transform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from iceberg_lake.exceptions import LakeError

# Table property keys the lake reads and writes.
SCHEMA_NAME_PROPERTY = "lake.schema-name"
SCHEMA_VERSION_PROPERTY = "lake.schema-version"

#: Properties every lake table gets: ZSTD 3 Parquet (the spec), manifest merging so read planning
#: stays cheap under many small appends, bounded metadata history, generous commit retries for
#: concurrent writers and compactors.
BASE_TABLE_PROPERTIES: dict[str, str] = {
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "3",
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "commit.retry.num-retries": "10",
    "commit.retry.min-wait-ms": "50",
    "commit.retry.max-wait-ms": "2000",
}

_PRIMITIVES: dict[str, IcebergType] = {
    "boolean": BooleanType(),
    "int": IntegerType(),
    "long": LongType(),
    "float": FloatType(),
    "double": DoubleType(),
    "string": StringType(),
    "binary": BinaryType(),
    "date": DateType(),
    "timestamptz": TimestamptzType(),
}
_DECIMAL = re.compile(r"^decimal\((\d+),\s*(\d+)\)$")
_TRANSFORMS: dict[str, Transform[Any, Any]] = {
    "identity": IdentityTransform(),
    "hour": HourTransform(),
    "day": DayTransform(),
}


def parse_type(text: str) -> IcebergType:
    """Parse a type name used in definitions and CLI arguments (`long`, `decimal(18,4)`, ...).

    Raises:
        LakeError: the name is not a supported primitive type.
    """
    name = text.strip().lower()
    if name in _PRIMITIVES:
        return _PRIMITIVES[name]
    if m := _DECIMAL.match(name):
        return DecimalType(int(m.group(1)), int(m.group(2)))
    supported = ", ".join([*_PRIMITIVES, "decimal(P,S)"])
    raise LakeError(f"unknown column type '{text}' (supported: {supported})")


#: Value ranges of the spec's integer types (Iceberg stores int8/int16 as `int`).
SPEC_INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


@dataclass(frozen=True)
class ColumnDefinition:
    """One declared column.

    Besides its type, a column may declare what the writers accept (checked on every event):
    `enum` (the allowed values), bounds `ge` / `gt` / `le` (numbers), and `default` (the value
    stored when an event does not carry the column, e.g. an absent quote side). Integer columns
    are also range-checked against their `spec_type` (`int8`, `int16`, `int32`, `int64`).
    """

    name: str
    type: str
    required: bool
    doc: str = ""
    spec_type: str = ""
    derived_from: str | None = None
    enum: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    default: Any = None

    def __post_init__(self) -> None:
        if self.enum is not None:
            # TOML gives a list; a tuple keeps the frozen definition hashable.
            object.__setattr__(self, "enum", tuple(self.enum))

    @property
    def iceberg_type(self) -> IcebergType:
        """The Iceberg type of the column."""
        return parse_type(self.type)

    @property
    def int_range(self) -> tuple[int, int] | None:
        """The `(min, max)` the spec's integer type allows (None for non-integer columns)."""
        if self.spec_type in SPEC_INT_RANGES:
            return SPEC_INT_RANGES[self.spec_type]
        if self.type == "int":
            return SPEC_INT_RANGES["int32"]
        if self.type == "long":
            return SPEC_INT_RANGES["int64"]
        return None


@dataclass(frozen=True)
class PartitionFieldDefinition:
    """One hidden partition field: a transform of a source column."""

    source: str
    transform: str

    @property
    def name(self) -> str:
        """The partition field name (`symbol`, `ts_event_hour`, ...)."""
        return self.source if self.transform == "identity" else f"{self.source}_{self.transform}"


@dataclass(frozen=True)
class TableDefinition:
    """The declared, desired state of one lake table."""

    identifier: str
    schema_name: str
    schema_version: int
    doc: str
    subject: str
    columns: tuple[ColumnDefinition, ...]
    partition: tuple[PartitionFieldDefinition, ...]
    sort_order: tuple[str, ...]
    dedup_columns: tuple[str, ...]
    source_file: str

    @property
    def namespace(self) -> str:
        """`bronze`, `silver` or `gold`."""
        return self.identifier.split(".", 1)[0]

    @property
    def name(self) -> str:
        """The table name without namespace (`stocks_trades`)."""
        return self.identifier.split(".", 1)[1]

    @property
    def partition_key(self) -> str | None:
        """The identity-partitioned column (`symbol` or `underlying`), if any."""
        return next((p.source for p in self.partition if p.transform == "identity"), None)

    @property
    def time_partition(self) -> PartitionFieldDefinition | None:
        """The time partition field (`hour` or `day` of `ts_event`), if any."""
        return next((p for p in self.partition if p.transform in ("hour", "day")), None)

    @property
    def column_names(self) -> list[str]:
        """Declared column names, in order."""
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnDefinition:
        """The declared column called `name`."""
        for c in self.columns:
            if c.name == name:
                return c
        raise LakeError(f"{self.identifier} declares no column '{name}'")

    def iceberg_schema(self) -> Schema:
        """The Iceberg schema, field ids 1..n in declaration order."""
        fields = [
            NestedField(i, c.name, c.iceberg_type, required=c.required, doc=c.doc or None)
            for i, c in enumerate(self.columns, start=1)
        ]
        return Schema(*fields)

    def partition_spec(self, schema: Schema | None = None) -> PartitionSpec:
        """The hidden partition spec, bound to `schema` (default: the declared schema)."""
        schema = schema or self.iceberg_schema()
        fields = [
            PartitionField(
                source_id=schema.find_field(p.source).field_id,
                field_id=1000 + i,
                transform=_TRANSFORMS[p.transform],
                name=p.name,
            )
            for i, p in enumerate(self.partition)
        ]
        return PartitionSpec(*fields)

    @property
    def sort_keys(self) -> list[tuple[str, str]]:
        """The declared sort order as Arrow `sort_by` keys (every column ascending); event time
        when the table declares none (Arrow refuses to sort by no key)."""
        columns = self.sort_order or [c for c in ("ts_event_ns",) if c in self.column_names]
        return [(c, "ascending") for c in columns]

    def iceberg_sort_order(self, schema: Schema | None = None) -> SortOrder:
        """The declared sort order (writers sort before they write; engines may use it)."""
        schema = schema or self.iceberg_schema()
        fields = [
            SortField(source_id=schema.find_field(c).field_id, transform=IdentityTransform())
            for c in self.sort_order
        ]
        return SortOrder(*fields)

    def properties(self) -> dict[str, str]:
        """Table properties to create the table with."""
        return {
            **BASE_TABLE_PROPERTIES,
            SCHEMA_NAME_PROPERTY: self.schema_name,
            SCHEMA_VERSION_PROPERTY: str(self.schema_version),
        }

    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema a writer must produce for this table (required → non-nullable)."""
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        return schema_to_pyarrow(self.iceberg_schema(), include_field_ids=False)


def load_definition_file(path: Path) -> list[TableDefinition]:
    """Read one `catalog/*.toml` file into the definitions of the tables it declares.

    Raises:
        LakeError: the file is malformed.
    """
    try:
        data = tomllib.loads(path.read_text())
        columns = tuple(ColumnDefinition(**c) for c in data["columns"])
        partition = tuple(PartitionFieldDefinition(**p) for p in data.get("partition", []))
        common = {
            "schema_name": data["schema_name"],
            "schema_version": int(data["schema_version"]),
            "doc": data.get("doc", ""),
            "subject": data.get("subject", ""),
            "columns": columns,
            "partition": partition,
            "sort_order": tuple(data.get("sort_order", [])),
            "dedup_columns": tuple(data.get("dedup_columns", [])),
            "source_file": path.name,
        }
        tables = list(data["tables"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise LakeError(f"invalid table definition {path}: {exc}") from None
    definitions = [TableDefinition(identifier=t, **common) for t in tables]
    for d in definitions:
        names = d.column_names
        for p in d.partition:
            if p.source not in names or p.transform not in _TRANSFORMS:
                raise LakeError(f"invalid partition field {p} in {path}")
        for c in (*d.sort_order, *d.dedup_columns):
            if c not in names:
                raise LakeError(f"{path}: column '{c}' is not declared")
        for col in d.columns:
            parse_type(col.type)
            _check_rules(path, col)
    return definitions


def _check_rules(path: Path, c: ColumnDefinition) -> None:
    """Refuse value rules that do not fit the column's type (a typo would silently reject data)."""
    numeric = c.type in ("int", "long", "float", "double") or c.type.startswith("decimal")
    if (c.ge is not None or c.gt is not None or c.le is not None) and not numeric:
        raise LakeError(f"{path}: column '{c.name}' is not numeric but declares bounds")
    values = list(c.enum or ())
    if c.default is not None:
        values.append(c.default)
    for v in values:
        if c.type in ("int", "long"):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif c.type in ("float", "double"):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif c.type == "string":
            ok = isinstance(v, str)
        elif c.type == "boolean":
            ok = isinstance(v, bool)
        else:
            ok = False
        if not ok:
            raise LakeError(f"{path}: value {v!r} of column '{c.name}' does not fit {c.type}")
