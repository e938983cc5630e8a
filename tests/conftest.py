"""Shared fixtures: an isolated environment for every test, and real servers for the session.

One chain, every module uses it (no module defines its own server or lake fixture):

- ``nats_server`` (session): a JetStream nats-server; ``nats`` (per test): the same server with
  the lake's streams (``MARKET``, ``SIGNALS``, ``LAKE_DLQ``) and its writer-lease bucket deleted
  before and after the test, so a test that owns those fixed names starts empty (and no lease
  left by an earlier test's writer) without a server of its own.
- ``s3_server``, ``postgres_server`` (session): SeaweedFS S3 and PostgreSQL.
- ``lake`` (per test): a fresh ``LakeCatalog`` (SQLite catalog, local warehouse under
  ``tmp_path/data``, every declared table created, no data); ``lake.settings`` are its settings.
  ``module_lake``: the same, one per module, for read-only tests that share loaded data.
- ``duck``: an in-memory DuckDB connection with the extensions loaded offline.

The servers are started on free loopback ports in pytest's temporary directories and stopped at
the end. A server that fails to start fails the tests that need it (``ServerStartError`` with the
tail of its log); nothing is skipped. Polling helpers with deadlines: ``support.wait``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from iceberg_lake.catalog import LakeCatalog
from iceberg_lake.config import load_settings
from iceberg_lake.engine import duck as duck_module
from iceberg_lake.engine import nats as bus
from iceberg_lake.testing import (
    NatsServer,
    PostgresServer,
    S3Server,
    run_nats_server,
    run_postgres,
    run_seaweedfs,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist workers start with COLUMNS=80 and LINES=24 set; rich's consoles
    # (iceberg_lake.cli.output) would freeze that width at import, where in a serial run the
    # COLUMNS a test passes to CliRunner applies. Drop them, as in a serial run without a tty.
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)


#: Hypothesis's home (example database, caches) for this pytest process; see pytest_configure.
_HYPOTHESIS_HOME: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's markers; keep Hypothesis's files out of the clone.

    Hypothesis fixes its default home (``./.hypothesis``) when it is imported and writes its
    constants cache there while collecting, before any fixture runs (``_isolated_environment``'s
    ``chdir`` comes too late), so it is pointed at a temporary directory here. A home set with
    ``HYPOTHESIS_STORAGE_DIRECTORY`` is kept.
    """
    config.addinivalue_line(
        "markers",
        "integration: uses real servers (nats-server, SeaweedFS, PostgreSQL, Spark) from fixtures",
    )
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        _HYPOTHESIS_HOME.append(tempfile.mkdtemp(prefix="lake-tests-hypothesis-"))
        set_hypothesis_home_dir(_HYPOTHESIS_HOME[-1])


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary Hypothesis home made by `pytest_configure`."""
    while _HYPOTHESIS_HOME:
        shutil.rmtree(_HYPOTHESIS_HOME.pop(), ignore_errors=True)


#: The longest modules (measured), started first when pytest-xdist runs the suite (the README's
#: ``-n 2 --dist loadfile --no-loadscope-reorder``, which `.ci/run` runs too): each
#: file goes whole to one worker, so a long file scheduled last would leave the other worker
#: idle. Only the order changes.
SLOW_MODULES_FIRST = (
    "tests/test_spark.py",
    "tests/test_service_process.py",
    "tests/test_maintenance.py",
    "tests/timetravel/test_live.py",
    "tests/test_load_kill.py",
    "tests/test_service_shutdown.py",
    "tests/test_service_s3_outage.py",
    "tests/test_retention.py",
    "tests/test_demo.py",
    "tests/test_service_fencing.py",
    "tests/test_service_backlog.py",
    "tests/test_cli_errors.py",
    "tests/test_maintenance_concurrent.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker, put `SLOW_MODULES_FIRST` first (stable: the rest keep their
    order). Every worker sorts its identical collection the same way, as xdist requires."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {module: i for i, module in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Drop every ``LAKE_*`` variable and run the test in its own temporary directory.

    Relative defaults such as ``./lake-data`` then land in ``tmp_path``, never in the repository.
    """
    for name in list(os.environ):
        if name.startswith("LAKE_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A JetStream-enabled nats-server for the whole session (``.url``)."""
    with run_nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


async def _delete_lake_streams(url: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        # The lease bucket too: a writer a test killed (or stopped without releasing) would
        # otherwise hold its consumer's lease into the next test, whose writer of the same
        # consumer then waits as a standby for up to the TTL (10 s by default).
        lease_stream = f"KV_{bus.LEASE_BUCKET}"
        for stream in (bus.MARKET_STREAM, bus.SIGNALS_STREAM, bus.DEAD_LETTER_STREAM, lease_stream):
            try:
                await js.delete_stream(stream)
            except NotFoundError:
                pass
    finally:
        await nc.close()


@pytest.fixture
def nats(nats_server: NatsServer) -> Iterator[NatsServer]:
    """The session's nats-server, without the lake's streams and leases before and after."""
    asyncio.run(_delete_lake_streams(nats_server.url))
    yield nats_server
    asyncio.run(_delete_lake_streams(nats_server.url))


def _fresh_lake(data_dir: Path) -> LakeCatalog:
    catalog = LakeCatalog(load_settings({"LAKE_DATA_DIR": str(data_dir)}))
    catalog.init()
    return catalog


@pytest.fixture
def lake(tmp_path: Path) -> LakeCatalog:
    """A fresh lake under ``tmp_path/data``: every declared table created, no data."""
    return _fresh_lake(tmp_path / "data")


@pytest.fixture(scope="module")
def module_lake(tmp_path_factory: pytest.TempPathFactory) -> LakeCatalog:
    """A fresh lake like ``lake``, shared by the tests of one module.

    For modules whose tests only read: a module fixture loads the data into it once (named after
    what it holds, e.g. ``bars_data``) instead of once per test.
    """
    return _fresh_lake(tmp_path_factory.mktemp("lake") / "data")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole session (``.endpoint``, ``.access_key``, ...).

    A test that stops it must start it again (``s3_server.start()``) before it returns.
    """
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (``.uri`` is a SQLAlchemy URI)."""
    with run_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(scope="session")
def spark(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SparkSession]:
    """A ``local[2]`` SparkSession with Iceberg's extensions, shared by the whole session.

    Attach a lake with ``iceberg_lake.testing_spark.attach_catalog(spark, settings)``. The JVM
    (1 GB heap) starts on first use, once, and is stopped at the end of the session. The relocated
    Jackson jar is kept in pytest's cache directory, so it is built once per checkout.
    """
    from iceberg_lake.testing_spark import run_spark

    pytest_cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache = (
        Path(pytest_cache.mkdir("spark-jars"))
        if pytest_cache is not None
        else tmp_path_factory.mktemp("spark-jars")
    )
    with run_spark(tmp_path_factory.mktemp("spark"), cache_dir=cache) as session:
        yield session


@pytest.fixture
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with avro, httpfs and iceberg loaded offline."""
    con = duck_module.connect()
    try:
        yield con
    finally:
        con.close()
