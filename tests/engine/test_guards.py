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


def _private_members_used(source: str) -> set[str]:
    """`_x` names imported from other packages, and `obj._x` on objects other than self/cls,
    minus what the module itself defines."""
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
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                if isinstance(node.ctx, ast.Store):
                    own.add(node.attr)  # the module's own attribute
                continue
            used.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            own |= {t.id for t in targets if isinstance(t, ast.Name)}
    return used - own


@pytest.mark.parametrize("module", ["iceberg", "duck", "nats", "filters", "dbn", "spark"])
def test_engine_docstring_lists_every_private_member(module: str) -> None:
    """Every private member of a dependency an engine module uses is named in its __init__."""
    import importlib

    import iceberg_lake.engine as engine

    source = inspect.getsource(importlib.import_module(f"iceberg_lake.engine.{module}"))
    missing = sorted(m for m in _private_members_used(source) if m not in (engine.__doc__ or ""))
    assert not missing, f"engine/{module}.py uses private members not listed: {missing}"


def test_the_private_member_check_sees_what_it_should() -> None:
    source = (
        "from lib.mod import _hidden, public\n"
        "from iceberg_lake.x import _ours\n"
        "def _helper(obj):\n"
        "    obj._secret = 1\n"
        "    self._mine = obj._other\n"
    )
    assert _private_members_used(source) == {"_hidden", "_secret", "_other"}
