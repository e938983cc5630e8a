"""All tables on every catalog × warehouse combination, against real PostgreSQL and S3 servers."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.transforms import DayTransform, HourTransform, IdentityTransform

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import Settings, load_settings
from iceberg_lake.tables import registry

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["file", "s3"])
def warehouse_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def matrix_settings(
    request: pytest.FixtureRequest, tmp_path: Path, catalog_kind: str, warehouse_kind: str
) -> Settings:
    env = {"LAKE_DATA_DIR": str(tmp_path / "data"), "LAKE_CATALOG_NAME": f"c{uuid.uuid4().hex[:8]}"}
    if catalog_kind == "postgresql":
        env["LAKE_CATALOG_URI"] = request.getfixturevalue("postgres_server").uri
    if warehouse_kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        env.update(
            **s3.lake_env(f"s3://lake-{uuid.uuid4().hex[:8]}/warehouse"),
        )
    return load_settings(env)


def test_init_creates_every_table_with_its_partition_spec(matrix_settings: Settings) -> None:
    catalog = LakeCatalog(matrix_settings)
    created = catalog.init()
    assert {"bronze/", "silver/", "gold/"} <= set(created)
    assert set(registry().identifiers) <= set(created)
    assert catalog.init() == [], "a second init must be a no-op"

    reopened = LakeCatalog(matrix_settings)  # read back from the catalog database, not memory
    for definition in registry():
        table = reopened.load_table(definition.identifier)
        schema = table.schema()
        got = [
            (schema.find_column_name(f.source_id), type(f.transform)) for f in table.spec().fields
        ]
        transforms = {"identity": IdentityTransform, "hour": HourTransform, "day": DayTransform}
        want = [(p.source, transforms[p.transform]) for p in definition.partition]
        assert got == want, definition.identifier
        assert table.properties["lake.schema-name"] == definition.schema_name


def test_one_row_written_by_pyiceberg_reads_back_through_duckdb(
    matrix_settings: Settings, duck
) -> None:
    catalog = LakeCatalog(matrix_settings)
    catalog.init()
    table = catalog.load_table("bronze.stocks_trades")
    ts_ns = 1_765_000_000_123_456_789
    row = pa.Table.from_pylist(
        [
            {
                "ts_event_ns": ts_ns,
                "ts_recv_ns": ts_ns + 1000,
                "source": "test",
                "symbol": "SPY",
                "price": 545.42,
                "size": 100,
                "exchange": 4,
                "seq": 1,
                "ts_event": datetime.fromtimestamp(ts_ns // 1000 / 1e6, tz=UTC),
            }
        ],
        schema=registry().get("bronze.stocks_trades").arrow_schema(),
    )
    table.append(row)
    table = catalog.load_table("bronze.stocks_trades")
    if matrix_settings.is_s3:
        from iceberg_lake.engine.duck import configure_s3

        configure_s3(
            duck,
            matrix_settings.s3_endpoint,
            matrix_settings.s3_access_key,
            matrix_settings.s3_secret_key,
            matrix_settings.s3_region,
        )
    got = duck.sql(
        "SELECT symbol, price, size, ts_event_ns FROM iceberg_scan(?)",
        params=[table.metadata_location],
    ).fetchall()
    assert got == [("SPY", 545.42, 100, ts_ns)]
    paths = [f.file.file_path for f in table.scan().plan_files()]
    assert len(paths) == 1 and "symbol=SPY" in paths[0]


def test_a_mistyped_warehouse_of_an_existing_lake_is_refused_not_created(
    matrix_settings: Settings,
) -> None:
    """prod17: `lake serve` with a typo'd bucket said to run `lake init`, which created the
    stray bucket and exited 0; the tables stayed in the real one. Now init (and serve, which
    calls it) refuses in one line, creating nothing."""
    from iceberg_lake.catalog import ensure_bucket
    from iceberg_lake.exceptions import ConfigError

    LakeCatalog(matrix_settings).init()
    good = matrix_settings.warehouse
    typo = (
        good.replace("/warehouse", "-typo/warehouse")
        if good.startswith("s3://")
        else (good.rstrip("/") + "-typo")
    )
    wrong = dataclasses.replace(matrix_settings, warehouse=typo)
    with pytest.raises(ConfigError, match="tables of catalog .* are in") as refused:
        LakeCatalog(wrong).init()
    assert "check LAKE_WAREHOUSE" in str(refused.value) and "\n" not in str(refused.value)
    if typo.startswith("s3://"):
        with pytest.raises(ConfigError, match="does not exist"):
            ensure_bucket(wrong, typo[len("s3://") :].split("/")[0], create=False)
    else:
        assert not Path(typo[len("file://") :]).exists()
