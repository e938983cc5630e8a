"""Spark and Trino: the settings that make them read and write the lake's tables by name.

The lake's catalog is pyiceberg's `SqlCatalog`, whose tables (`iceberg_tables`,
`iceberg_namespace_properties`) are the layout of Iceberg's Java `JdbcCatalog`. So an engine only
needs a JDBC catalog named like the lake's (`LAKE_CATALOG_NAME`: rows are keyed by it), pointed at
the same database and warehouse. This module turns `Settings` into those engine settings; the CLI
(`lake engines …`) prints them and the test harness starts Spark with them.

Below the settings: the few Spark calls the lake makes itself (`replace_partitions`, the one
Silver write through Spark). pyspark is imported only inside them, so the library works without
the `spark` extra.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

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
    StringType,
    TimestampType,
    TimestamptzType,
)

from iceberg_lake.config import Settings
from iceberg_lake.exceptions import CompactionError, ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: Versions the lake was tested with (tests/test_spark.py): Spark 3.5 / Scala 2.12, Iceberg 1.10.
ICEBERG_VERSION = "1.10.2"
SPARK_SCALA = "3.5_2.12"
POSTGRES_JDBC_VERSION = "42.7.4"
SQLITE_JDBC_VERSION = "3.46.1.3"

ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
SPARK_CATALOG_CLASS = "org.apache.iceberg.spark.SparkCatalog"
S3_FILE_IO = "org.apache.iceberg.aws.s3.S3FileIO"

REDACTED = "***"


@dataclass(frozen=True)
class JdbcCatalog:
    """The lake's catalog database as a JDBC connection.

    Attributes:
        url: `jdbc:sqlite:/path/catalog.db` or `jdbc:postgresql://host:port/db`.
        driver: the JDBC driver class.
        user: database user (PostgreSQL), or None.
        password: database password (PostgreSQL), or None.
    """

    url: str
    driver: str
    user: str | None = None
    password: str | None = None

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite catalog."""
        return self.url.startswith("jdbc:sqlite:")


def jdbc_catalog(settings: Settings) -> JdbcCatalog:
    """The JDBC form of `settings.catalog_uri`.

    Args:
        settings: the lake's settings.

    Returns:
        URL, driver class and credentials.

    Raises:
        ConfigError: the catalog is a PostgreSQL server reached through a Unix socket (JDBC needs
            host and port) or the URI has no database.
    """
    uri = settings.catalog_uri
    scheme = uri.split("://", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not path or path == ":memory:":
            raise ConfigError("LAKE_CATALOG_URI: an in-memory SQLite catalog cannot be shared")
        return JdbcCatalog(url=f"jdbc:sqlite:{path}", driver="org.sqlite.JDBC")
    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    host = parsed.hostname or ""
    if not host or "host" in query:
        raise ConfigError(
            "LAKE_CATALOG_URI: a PostgreSQL catalog on a Unix socket cannot be reached over "
            "JDBC; use postgresql://user:password@host:port/db"
        )
    database = parsed.path.lstrip("/")
    if not database:
        raise ConfigError("LAKE_CATALOG_URI: name the database, postgresql://…/DATABASE")
    port = parsed.port or 5432
    params = {k: v[-1] for k, v in query.items() if k in ("sslmode",)}
    suffix = ("?" + "&".join(f"{k}={v}" for k, v in params.items())) if params else ""
    return JdbcCatalog(
        url=f"jdbc:postgresql://{host}:{port}/{database}{suffix}",
        driver="org.postgresql.Driver",
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
    )


def spark_catalog_conf(settings: Settings, *, show_secrets: bool = False) -> dict[str, str]:
    """Spark settings for a catalog named like the lake's, in the order a person reads them.

    Args:
        settings: the lake's settings.
        show_secrets: print passwords and secret keys instead of `***`.

    Returns:
        `spark.*` keys and values (the Iceberg SQL extensions, the catalog, its JDBC database,
        its warehouse and, for s3://, Iceberg's `S3FileIO` with the endpoint and keys).

    Raises:
        ConfigError: see `jdbc_catalog`.
    """
    jdbc = jdbc_catalog(settings)
    prefix = f"spark.sql.catalog.{settings.catalog_name}"
    conf = {
        "spark.sql.extensions": ICEBERG_EXTENSIONS,
        prefix: SPARK_CATALOG_CLASS,
        f"{prefix}.type": "jdbc",
        f"{prefix}.uri": jdbc.url,
        # The lake creates the catalog tables (`lake init`). Left on, Iceberg's check for them
        # leaks an open JDBC result set: on SQLite that pins a read transaction on a pooled
        # connection, so the engine keeps seeing the catalog as of its start (WAL) or blocks
        # the lake's commits with "database is locked" (rollback journal).
        f"{prefix}.jdbc.init-catalog-tables": "false",
    }
    if jdbc.user:
        conf[f"{prefix}.jdbc.user"] = jdbc.user
    if jdbc.password:
        conf[f"{prefix}.jdbc.password"] = jdbc.password if show_secrets else REDACTED
    conf[f"{prefix}.warehouse"] = settings.warehouse
    if settings.is_s3:
        conf[f"{prefix}.io-impl"] = S3_FILE_IO
        if settings.s3_endpoint:
            conf[f"{prefix}.s3.endpoint"] = settings.s3_endpoint
            # MinIO/SeaweedFS-style stores serve buckets by path, not by virtual host.
            conf[f"{prefix}.s3.path-style-access"] = "true"
        if settings.s3_access_key:
            conf[f"{prefix}.s3.access-key-id"] = settings.s3_access_key
        if settings.s3_secret_key:
            conf[f"{prefix}.s3.secret-access-key"] = (
                settings.s3_secret_key if show_secrets else REDACTED
            )
        conf[f"{prefix}.client.region"] = settings.s3_region
    return conf


def spark_packages(settings: Settings) -> list[str]:
    """Maven coordinates a Spark 3.5 cluster needs for the lake (`--packages`).

    Args:
        settings: the lake's settings.

    Returns:
        Iceberg's Spark runtime, its AWS bundle for s3://, and the catalog's JDBC driver.
    """
    packages = [f"org.apache.iceberg:iceberg-spark-runtime-{SPARK_SCALA}:{ICEBERG_VERSION}"]
    if settings.is_s3:
        packages.append(f"org.apache.iceberg:iceberg-aws-bundle:{ICEBERG_VERSION}")
    if jdbc_catalog(settings).is_sqlite:
        packages.append(f"org.xerial:sqlite-jdbc:{SQLITE_JDBC_VERSION}")
    else:
        packages.append(f"org.postgresql:postgresql:{POSTGRES_JDBC_VERSION}")
    return packages


def spark_defaults(settings: Settings, *, show_secrets: bool = False) -> str:
    """`spark-defaults.conf` lines for the lake (packages, extensions, catalog).

    Args:
        settings: the lake's settings.
        show_secrets: print secrets instead of `***`.

    Returns:
        The file's text, one `key value` line per setting.
    """
    conf = {"spark.jars.packages": ",".join(spark_packages(settings))}
    conf.update(spark_catalog_conf(settings, show_secrets=show_secrets))
    width = max(len(k) for k in conf)
    return "".join(f"{k.ljust(width)}  {v}\n" for k, v in conf.items())


def spark_sql_command(settings: Settings, *, show_secrets: bool = False) -> str:
    """A `spark-sql` command line that opens the lake's catalog.

    Args:
        settings: the lake's settings.
        show_secrets: print secrets instead of `***`.

    Returns:
        The command, one option per line (shell-quoted, joined with backslash-newlines).
    """
    parts = [f"--packages {shlex.quote(','.join(spark_packages(settings)))}"]
    for key, value in spark_catalog_conf(settings, show_secrets=show_secrets).items():
        parts.append(f"--conf {shlex.quote(f'{key}={value}')}")
    return "spark-sql \\\n  " + " \\\n  ".join(parts) + "\n"


def trino_properties(settings: Settings, *, show_secrets: bool = False) -> str:
    """Trino's `etc/catalog/<catalog>.properties` for the lake (Iceberg connector, JDBC catalog).

    Trino ships the PostgreSQL driver but no SQLite driver, so a SQLite catalog gets a comment
    saying so (use PostgreSQL for a shared catalog).

    Args:
        settings: the lake's settings.
        show_secrets: print secrets instead of `***`.

    Returns:
        The file's text.
    """
    jdbc = jdbc_catalog(settings)
    lines = []
    if jdbc.is_sqlite:
        lines.append("# Trino bundles no SQLite JDBC driver: serve the catalog from PostgreSQL.")
    props = {
        "connector.name": "iceberg",
        "iceberg.catalog.type": "jdbc",
        "iceberg.jdbc-catalog.catalog-name": settings.catalog_name,
        "iceberg.jdbc-catalog.driver-class": jdbc.driver,
        "iceberg.jdbc-catalog.connection-url": jdbc.url,
    }
    if jdbc.user:
        props["iceberg.jdbc-catalog.connection-user"] = jdbc.user
    if jdbc.password:
        props["iceberg.jdbc-catalog.connection-password"] = (
            jdbc.password if show_secrets else REDACTED
        )
    props["iceberg.jdbc-catalog.default-warehouse-dir"] = settings.warehouse
    if settings.is_s3:
        props["fs.native-s3.enabled"] = "true"
        if settings.s3_endpoint:
            props["s3.endpoint"] = settings.s3_endpoint
            props["s3.path-style-access"] = "true"
        props["s3.region"] = settings.s3_region
        if settings.s3_access_key:
            props["s3.aws-access-key"] = settings.s3_access_key
        if settings.s3_secret_key:
            props["s3.aws-secret-key"] = settings.s3_secret_key if show_secrets else REDACTED
    else:
        props["fs.native-local.enabled"] = "true"
        props["local.location"] = "/"
    lines.extend(f"{k}={v}" for k, v in props.items())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Writing through Spark
# --------------------------------------------------------------------------------------------

#: Iceberg's Spark write options (`org.apache.iceberg.spark.SparkWriteOptions`).
USE_TABLE_DISTRIBUTION_AND_ORDERING = "use-table-distribution-and-ordering"
SNAPSHOT_PROPERTY_PREFIX = "snapshot-property."


def spark_sql_type(t: IcebergType) -> str:
    """The Spark SQL type of an Iceberg primitive type (for typed NULL columns).

    Raises:
        CompactionError: a type the lake's tables do not use.
    """
    simple: dict[type, str] = {
        BooleanType: "BOOLEAN",
        IntegerType: "INT",
        LongType: "BIGINT",
        FloatType: "FLOAT",
        DoubleType: "DOUBLE",
        StringType: "STRING",
        BinaryType: "BINARY",
        DateType: "DATE",
        TimestamptzType: "TIMESTAMP",
        TimestampType: "TIMESTAMP_NTZ",
    }
    if isinstance(t, DecimalType):
        return f"DECIMAL({t.precision}, {t.scale})"
    for cls, name in simple.items():
        if isinstance(t, cls):
            return name
    raise CompactionError(f"column type {t} is not supported by Spark compaction")


def replace_partitions(df: DataFrame, table: str, snapshot_properties: dict[str, str]) -> None:
    """Replace every partition that `df` has rows in, in ONE Iceberg `overwrite` snapshot.

    Iceberg's dynamic partition overwrite (`overwritePartitions`, a `ReplacePartitions` commit)
    swaps the files of exactly the partitions present in `df`; other partitions keep theirs.
    `df`'s own clustering and order are written as they are: the table's declared distribution
    and sort order are switched off for this write (`use-table-distribution-and-ordering=false`),
    because Iceberg would otherwise re-sort by its sort order alone (`ts_event_ns`), which leaves
    the order of rows with equal keys to Spark's shuffle and spills. So `df` must be clustered by
    partition within each Spark partition (e.g. `repartition(keys).sortWithinPartitions(keys…)`).

    Args:
        df: the rows, with the table's columns (matched by name).
        table: the Spark table name, `catalog.namespace.table`.
        snapshot_properties: summary properties of the new snapshot.
    """
    writer = df.writeTo(table).option(USE_TABLE_DISTRIBUTION_AND_ORDERING, "false")
    for key, value in snapshot_properties.items():
        writer = writer.option(SNAPSHOT_PROPERTY_PREFIX + key, value)
    writer.overwritePartitions()
