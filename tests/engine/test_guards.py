"""Guards for every private member of a dependency that `iceberg_lake/engine/` relies on.

Each guard checks the version the behaviour was verified on and the behaviour itself, so an
upgrade fails here, loudly and by name, instead of somewhere downstream. When a guard fails after
an upgrade: re-check the behaviour named in its docstring, then extend the version tuple in the
engine module (`PYICEBERG_VERSIONS_CHECKED`). Budget: < 3 s, no servers.
"""

from __future__ import annotations

import inspect
import itertools
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyiceberg
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.locations import load_location_provider
from pyiceberg.transforms import HourTransform, IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from iceberg_lake.engine import iceberg as engine_iceberg

SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=False),
    NestedField(2, "ts_event", TimestamptzType(), required=False),
    NestedField(3, "ts_event_ns", LongType(), required=False),
)
SPEC = PartitionSpec(
    PartitionField(1, 1000, IdentityTransform(), "symbol"),
    PartitionField(2, 1001, HourTransform(), "ts_event_hour"),
)


def test_pyiceberg_version_is_one_the_private_members_were_checked_on() -> None:
    assert pyiceberg.__version__.startswith(engine_iceberg.PYICEBERG_VERSIONS_CHECKED), (
        f"pyiceberg {pyiceberg.__version__}: re-check the private members listed in "
        "iceberg_lake/engine/__init__.py, then extend PYICEBERG_VERSIONS_CHECKED"
    )


def test_parquet_writer_kwargs_guard(tmp_path: Path) -> None:
    """`pyiceberg.io.pyarrow._get_parquet_writer_kwargs`: properties → ParquetWriter options."""
    from pyiceberg.io.pyarrow import _get_parquet_writer_kwargs

    assert list(inspect.signature(_get_parquet_writer_kwargs).parameters) == ["table_properties"]
    kwargs = engine_iceberg.parquet_writer_kwargs(
        {"write.parquet.compression-codec": "snappy", "write.parquet.page-size-bytes": "4096"}
    )
    assert kwargs["compression"] == "snappy" and kwargs["data_page_size"] == 4096
    assert engine_iceberg.parquet_writer_kwargs({})["compression"] == "zstd"
    # The options are accepted by pyarrow's writer as they are.
    table = pa.table({"x": [1, 2, 3]})
    with pq.ParquetWriter(tmp_path / "f.parquet", table.schema, **kwargs) as writer:
        writer.write_table(table)
    meta = pq.read_metadata(tmp_path / "f.parquet")
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_record_partition_key_guard() -> None:
    """`PartitionKey.to_path()` reads `self.partition`, which `RecordPartitionKey` overrides."""
    record = Record("ES", 480_000)
    key = engine_iceberg.partition_key(SPEC, SCHEMA, record)
    assert isinstance(key, PartitionKey)
    assert key.to_path() == SPEC.partition_to_path(record, SCHEMA)
    assert key.to_path() == "symbol=ES/ts_event_hour=2024-10-04-00"
    provider = load_location_provider(table_location="file:///wh/t", table_properties={})
    assert provider.new_data_location("f.parquet", key) == (
        "file:///wh/t/data/symbol=ES/ts_event_hour=2024-10-04-00/f.parquet"
    )


def test_column_bounds_decodes_with_pyiceberg_conversions() -> None:
    from pyiceberg.conversions import to_bytes
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat

    lo, hi = -5, 1_700_000_000_000_000_000
    f = DataFile.from_args(
        content=DataFileContent.DATA,
        file_path="x.parquet",
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=2,
        file_size_in_bytes=1,
        lower_bounds={3: to_bytes(LongType(), lo)},
        upper_bounds={3: to_bytes(LongType(), hi)},
    )
    assert engine_iceberg.column_bounds(f, SCHEMA, "ts_event_ns") == (lo, hi)
    assert engine_iceberg.column_bounds(f, SCHEMA, "symbol") is None


def test_partition_field_bounds_decodes_what_pyiceberg_writes(tmp_path: Path) -> None:
    """`partition_field_bounds` reads a manifest's partition summary as pyiceberg wrote it: the
    hour partition's bounds are the hours of the oldest and newest event (live freshness)."""
    from datetime import UTC, datetime

    catalog = SqlCatalog(
        "guard", uri=f"sqlite:///{tmp_path / 'c.db'}", warehouse=f"file://{tmp_path}"
    )
    catalog.create_namespace("ns")
    table = catalog.create_table("ns.t", schema=SCHEMA, partition_spec=SPEC)
    times = [datetime(2025, 12, 16, h, 30, tzinfo=UTC) for h in (14, 9, 11)]
    table.append(
        pa.table(
            {
                "symbol": ["ES", "NQ", "ES"],
                "ts_event": pa.array(times, pa.timestamp("us", tz="UTC")),
                "ts_event_ns": pa.array([0, 1, 2], pa.int64()),
            }
        )
    )
    snapshot = table.current_snapshot()
    assert snapshot is not None
    (manifest,) = snapshot.manifests(table.io)
    hour = 1_765_893_600 // 3600  # 2025-12-16 14:00 UTC, hours since the epoch
    spec, schema = table.spec(), table.schema()
    assert engine_iceberg.partition_field_bounds(manifest, spec, schema, 1) == (hour - 5, hour)
    assert engine_iceberg.partition_field_bounds(manifest, spec, schema, 0) == ("ES", "NQ")
    assert engine_iceberg.partition_field_bounds(manifest, spec, schema, 2) is None


def test_dataframe_to_data_files_guard(tmp_path: Path) -> None:
    """`pyiceberg.io.pyarrow._dataframe_to_data_files`: writes files, names them with `counter`."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    params = inspect.signature(_dataframe_to_data_files).parameters
    assert {"table_metadata", "df", "io", "write_uuid", "counter"} <= set(params)
    catalog = SqlCatalog(
        "guard", uri=f"sqlite:///{tmp_path / 'c.db'}", warehouse=f"file://{tmp_path}"
    )
    catalog.create_namespace("ns")
    table = catalog.create_table("ns.t", schema=Schema(NestedField(1, "x", LongType())))
    rows = pa.table({"x": pa.array([1, 2, 3], pa.int64())})
    rows = rows.cast(pa.schema([pa.field("x", pa.int64(), nullable=False)]))
    write_uuid, counter = uuid.uuid4(), itertools.count()
    first = engine_iceberg.write_data_files(table, rows, write_uuid, counter)
    second = engine_iceberg.write_data_files(table, rows, write_uuid, counter)
    assert [f.record_count for f in first + second] == [3, 3]
    paths = [f.file_path for f in first + second]
    assert len(set(paths)) == 2, paths  # a shared counter: the second call got new names
    assert all(Path(p.removeprefix("file://")).exists() for p in paths)


def test_current_metadata_locations_are_the_pointers_load_table_follows(tmp_path: Path) -> None:
    """`current_metadata_locations` reads `SqlCatalog`'s `iceberg_tables` rows: the location of
    each table is the file `load_table` reads, moved by every commit; an unknown table is None;
    a table of another catalog in the same database is not this catalog's."""
    uri = f"sqlite:///{tmp_path / 'c.db'}"
    catalog = SqlCatalog("guard", uri=uri, warehouse=f"file://{tmp_path}")
    other = SqlCatalog("other", uri=uri, warehouse=f"file://{tmp_path}/other")
    for c in (catalog, other):
        c.create_namespace("ns")
        c.create_table("ns.t", schema=Schema(NestedField(1, "x", LongType())))
    catalog.create_table("ns.u", schema=Schema(NestedField(1, "x", LongType())))
    names = ["ns.t", "ns.u", "ns.missing"]
    before = engine_iceberg.current_metadata_locations(catalog, names)
    assert before == {
        "ns.t": catalog.load_table("ns.t").metadata_location,
        "ns.u": catalog.load_table("ns.u").metadata_location,
        "ns.missing": None,
    }
    table = catalog.load_table("ns.t")
    table.transaction().set_properties(k="v").commit_transaction()
    after = engine_iceberg.current_metadata_locations(catalog, names)
    assert after is not None and before is not None
    assert after["ns.t"] == table.metadata_location != before["ns.t"]
    assert after["ns.u"] == before["ns.u"]
    assert engine_iceberg.current_metadata_locations(object(), names) is None


def _private_members_used(source: str) -> set[str]:
    """`_x` names imported from other packages, and `obj._x` read or written on any object
    (`self._x` too: a subclass reading its dependency base's attribute), minus what the module
    itself defines (its functions, classes, module and class variables, `self._x = ...`)."""
    import ast

    tree = ast.parse(source)
    used: set[str] = set()
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("iceberg_lake"):
            used |= {a.name for a in node.names if a.name.startswith("_")}
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__"):
                continue
            own_object = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if own_object and isinstance(node.ctx, ast.Store):
                own.add(node.attr)  # the module's own attribute
            else:
                used.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own |= {t.id for t in targets if isinstance(t, ast.Name)}
    return used - own


def _private_overrides(module: object) -> set[str]:
    """Private members of another package's class that a class of `module` overrides (its
    `_hook` methods and attributes): the module relies on the base calling or reading them."""
    out: set[str] = set()
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != getattr(module, "__name__", None):
            continue
        for name in vars(cls):
            if not name.startswith("_") or name.startswith(("__", "_abc_")):
                continue
            if any(
                name in vars(base)
                for base in cls.__mro__[1:]
                if not base.__module__.startswith("iceberg_lake")
            ):
                out.add(name)
    return out


def _engine_modules() -> list[str]:
    import pkgutil

    import iceberg_lake.engine as engine

    return sorted(m.name for m in pkgutil.iter_modules(engine.__path__))


def _named_in_engine_docstring() -> set[str]:
    """The `_x` names the engine's docstring lists, as whole names (`_stage` is not named by
    `_update_and_stage_table`)."""
    import re

    import iceberg_lake.engine as engine

    return set(re.findall(r"(?<![A-Za-z0-9_])_[A-Za-z0-9_]+", engine.__doc__ or ""))


def test_every_engine_module_is_checked() -> None:
    assert {"iceberg", "duck", "nats", "nats_tail", "dbn", "spark"} <= set(_engine_modules())


@pytest.mark.parametrize("module", _engine_modules())
def test_engine_docstring_lists_every_private_member(module: str) -> None:
    """Every private member of a dependency an engine module uses is named in its __init__."""
    import importlib

    mod = importlib.import_module(f"iceberg_lake.engine.{module}")
    used = _private_members_used(inspect.getsource(mod)) | _private_overrides(mod)
    missing = sorted(used - _named_in_engine_docstring())
    assert not missing, f"engine/{module}.py uses private members not listed: {missing}"


def test_the_private_member_check_sees_what_it_should() -> None:
    source = (
        "from lib.mod import _hidden, public\n"
        "from iceberg_lake.x import _ours\n"
        "class C(Base):\n"
        "    _flag = 1\n"
        "    def _helper(self, obj):\n"
        "        obj._secret = 1\n"
        "        self._mine = obj._other + self._inherited + self._mine + self._flag\n"
    )
    assert _private_members_used(source) == {"_hidden", "_secret", "_other", "_inherited"}

    class Base:
        def _hook(self) -> None: ...

    class Sub(Base):
        def _hook(self) -> None: ...

        def _own(self) -> None: ...

    Base.__module__ = "lib.mod"  # a dependency's class
    module = type(inspect)("iceberg_lake.engine.x")
    Sub.__module__ = module.__name__
    module.Sub = Sub  # type: ignore[attr-defined]
    assert _private_overrides(module) == {"_hook"}
    # Whole names: `_stage` is not listed by `_update_and_stage_table`.
    names = _named_in_engine_docstring()
    assert "_update_and_stage_table" in names and "_api_request" in names
    assert "_and_stage_table" not in names
