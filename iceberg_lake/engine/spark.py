"""Spark and Trino: the settings that make them read and write the lake's tables by name.

The lake's catalog is pyiceberg's `SqlCatalog`, whose tables (`iceberg_tables`,
`iceberg_namespace_properties`) are the layout of Iceberg's Java `JdbcCatalog`. So an engine only
needs a JDBC catalog named like the lake's (`LAKE_CATALOG_NAME`: rows are keyed by it), pointed at
the same database and warehouse. This module turns `Settings` into those engine settings; the CLI
(`lake engines …`) prints them and the test harness starts Spark with them.

Below the settings: a local session for `lake compact --engine spark` (`spark_session`, with the
jars of the `spark` extra: Iceberg's runtime from the `snowpark-connect-deps-iceberg` wheel lacks
its relocated Jackson classes, which `jackson_patch_jar` builds from pyspark's own Jackson jars),
and the one Silver write through Spark (`replace_partitions`). pyspark is imported only inside
functions, so the library works without the `spark` extra.

Engine internals relied on (guard tests in tests/test_spark.py): pyspark keeps the JVM launcher
in `SparkContext._gateway.proc` (`stop_spark`); Iceberg's Spark writer honours the write option
`use-table-distribution-and-ordering`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlparse

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
    from pyspark.sql import Column, DataFrame, SparkSession

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
        # Absolute: an engine started in another directory would open (and create) another,
        # empty catalog file (spark13).
        return JdbcCatalog(url=f"jdbc:sqlite:{os.path.abspath(path)}", driver="org.sqlite.JDBC")
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
    params = _jdbc_params(query)
    suffix = (
        ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())) if params else ""
    )
    return JdbcCatalog(
        url=f"jdbc:postgresql://{host}:{port}/{database}{suffix}",
        driver="org.postgresql.Driver",
        # libpq also takes them as parameters (`?user=…&password=…`).
        user=unquote(parsed.username) if parsed.username else query.get("user", [None])[-1],
        password=(
            unquote(parsed.password) if parsed.password else query.get("password", [None])[-1]
        ),
    )


#: libpq parameters of a PostgreSQL catalog URI → PgJDBC's names for them. Any other parameter
#: is refused: dropped, it could point the engine at another lake (spark13: `options=-csearch_path
#: =desk2` selects the lake's schema; without it Spark read the public schema's lake, silently).
_LIBPQ_TO_JDBC = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "options": "options",
    "connect_timeout": "connectTimeout",
    "application_name": "ApplicationName",
    "target_session_attrs": "targetServerType",
}
#: libpq's `target_session_attrs` values in PgJDBC's `targetServerType` words.
_TARGET_SERVER_TYPES = {
    "any": "any",
    "read-write": "primary",
    "primary": "primary",
    "read-only": "secondary",
    "standby": "secondary",
    "prefer-standby": "preferSecondary",
}


def _jdbc_params(query: dict[str, list[str]]) -> dict[str, str]:
    """The URI's libpq parameters as PgJDBC URL parameters.

    Raises:
        ConfigError: a parameter (or a `target_session_attrs` value) with no JDBC equivalent.
    """
    params: dict[str, str] = {}
    for key, values in query.items():
        if key in ("user", "password"):
            continue  # the JDBC catalog's own credentials (`jdbc_catalog`)
        name = _LIBPQ_TO_JDBC.get(key)
        value = values[-1]
        if key == "target_session_attrs":
            value = _TARGET_SERVER_TYPES.get(value, "")
        if name is None or not value:
            # The key only: a value may be a secret (`sslpassword=…`; review13b).
            raise ConfigError(
                f"LAKE_CATALOG_URI: its parameter {key} has no JDBC equivalent here, and Spark "
                "or Trino connected without it could reach another database or schema; JDBC "
                f"takes {', '.join(_LIBPQ_TO_JDBC)}"
            )
        params[name] = value
    return params


def spark_catalog_conf(settings: Settings, *, show_secrets: bool = False) -> dict[str, str]:
    """Spark settings for a catalog named like the lake's, in the order a person reads them.

    Args:
        settings: the lake's settings.
        show_secrets: print passwords and secret keys instead of `***`.

    Returns:
        `spark.*` keys and values (the Iceberg SQL extensions, the UTC session time zone, the
        catalog, its JDBC database, its warehouse and, for s3://, Iceberg's `S3FileIO` with the
        endpoint and keys).

    Raises:
        ConfigError: see `jdbc_catalog`.
    """
    jdbc = jdbc_catalog(settings)
    prefix = f"spark.sql.catalog.{settings.catalog_name}"
    conf = {
        "spark.sql.extensions": ICEBERG_EXTENSIONS,
        # The lake's times are UTC: a session in the machine's zone reads every timestamp
        # literal and `date(ts_event)` hours off (spark17: 0 rows for a half hour with 6,857).
        "spark.sql.session.timeZone": "UTC",
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


def spark_jars_conf(settings: Settings, jars: SparkJars | None = None) -> dict[str, str]:
    """The settings that put Iceberg's runtime and the JDBC drivers on Spark's classpath.

    Args:
        settings: the lake's settings.
        jars: jar files on this machine (`find_spark_jars`, `local_spark_jars`); None for Maven
            coordinates (`spark.jars.packages`, for a machine that reaches Maven).

    Returns:
        `spark.jars.packages`, or `spark.jars` plus the driver's `java.library.path` (the
        directory of SQLite's JNI library, which Debian's SQLite driver loads from there).
    """
    if jars is None:
        return {"spark.jars.packages": ",".join(spark_packages(settings))}
    return local_jars_conf(jars)


def local_jars_conf(jars: SparkJars) -> dict[str, str]:
    """`spark.jars` and the driver's `java.library.path` for jar files on this machine.

    The test harness (`iceberg_lake.testing_spark.start_spark`), `spark_session` and
    `lake engines spark --jars local` all take them from here.

    Args:
        jars: from `find_spark_jars` / `local_spark_jars`.

    Returns:
        `spark.jars` (the classpath, comma-separated) and `spark.driver.extraJavaOptions`.
    """
    return {
        "spark.jars": ",".join(str(p) for p in jars.classpath),
        "spark.driver.extraJavaOptions": f"-Djava.library.path={jars.sqlite_jni_dir}",
    }


def spark_defaults(
    settings: Settings, *, show_secrets: bool = False, jars: SparkJars | None = None
) -> str:
    """`spark-defaults.conf` lines for the lake (jars, extensions, catalog).

    Args:
        settings: the lake's settings.
        show_secrets: print secrets instead of `***`.
        jars: local jar files instead of Maven coordinates (see `spark_jars_conf`).

    Returns:
        The file's text, one `key value` line per setting.
    """
    conf = spark_jars_conf(settings, jars)
    conf.update(spark_catalog_conf(settings, show_secrets=show_secrets))
    width = max(len(k) for k in conf)
    return "".join(f"{k.ljust(width)}  {v}\n" for k, v in conf.items())


def spark_sql_command(
    settings: Settings, *, show_secrets: bool = False, jars: SparkJars | None = None
) -> str:
    """A `spark-sql` command line that opens the lake's catalog.

    Args:
        settings: the lake's settings.
        show_secrets: print secrets instead of `***`.
        jars: local jar files (`--jars`) instead of Maven coordinates (`--packages`).

    Returns:
        The command, one option per line (shell-quoted, joined with backslash-newlines).
    """
    options = {"spark.jars.packages": "--packages", "spark.jars": "--jars"}
    parts = []
    for key, value in spark_jars_conf(settings, jars).items():
        if key in options:
            parts.append(f"{options[key]} {shlex.quote(value)}")
        else:
            parts.append(f"--conf {shlex.quote(f'{key}={value}')}")
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
    lines = []
    if jdbc_catalog(settings).is_sqlite:
        lines.append("# Trino bundles no SQLite JDBC driver: serve the catalog from PostgreSQL.")
    props = trino_catalog_properties(settings, show_secrets=show_secrets)
    lines.extend(f"{k}={v}" for k, v in props.items())
    return "\n".join(lines) + "\n"


def trino_catalog_properties(settings: Settings, *, show_secrets: bool = False) -> dict[str, str]:
    """The keys and values of `trino_properties`' file, in its order.

    Args:
        settings: the lake's settings.
        show_secrets: secrets instead of `***`.

    Returns:
        Trino catalog property → value.

    Raises:
        ConfigError: see `jdbc_catalog`.
    """
    jdbc = jdbc_catalog(settings)
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
    return props


# --------------------------------------------------------------------------------------------
# A local Spark with the lake's catalog (jars from the `spark` extra and Debian)
# --------------------------------------------------------------------------------------------

#: Environment variable naming a directory where Debian's JDBC packages were unpacked
#: (`dpkg -x pkg.deb DIR`), for machines where they cannot be installed system-wide.
DEBS_DIR_ENV = "ICEBERG_LAKE_SPARK_DEBS"
#: Where Debian installs Java libraries and JNI libraries.
SYSTEM_JAVA_DIR = Path("/usr/share/java")
SYSTEM_JNI_DIRS = (Path("/usr/lib/x86_64-linux-gnu/jni"), Path("/usr/lib/aarch64-linux-gnu/jni"))

JACKSON_FROM = "com/fasterxml/jackson/"
JACKSON_TO = "org/apache/iceberg/shaded/com/fasterxml/jackson/"
JACKSON_JARS = ("jackson-annotations", "jackson-core", "jackson-databind")


class SparkSetupError(ConfigError):
    """Something Spark needs (the `spark` extra, a JDBC driver) is missing."""


# --------------------------------------------------------------------------------------------
# Jar relocation: rewrite class names inside the constant pool of every class file
# --------------------------------------------------------------------------------------------

# Constant-pool entry sizes after the tag byte (JVMS §4.4); Utf8 (1) is variable-length.
_CP_FIXED = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2}
_CP_FIXED.update({17: 4, 18: 4, 19: 2, 20: 2})


def relocate_class(data: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """Return a class file whose constant-pool strings have each `old` prefix replaced by `new`.

    Every class, field and method reference in a class file names types through `CONSTANT_Utf8`
    entries (internal names `a/b/C`, descriptors `La/b/C;`, generic signatures), and everything
    after the constant pool refers to entries by index, so rewriting the Utf8 entries relocates
    the class — what Maven's shade plugin does, minus its string-literal heuristics. Dotted names
    (`a.b.C`, used reflectively) are rewritten too.

    Args:
        data: the class file.
        pairs: `(old, new)` byte strings, slash form; the dotted form is derived.

    Returns:
        The rewritten class file.
    """
    if data[:4] != b"\xca\xfe\xba\xbe":
        raise ValueError("not a class file")
    replacements = [*pairs, *((o.replace(b"/", b"."), n.replace(b"/", b".")) for o, n in pairs)]
    count = struct.unpack_from(">H", data, 8)[0]
    out = bytearray(data[:10])
    pos, index = 10, 1
    while index < count:
        tag = data[pos]
        if tag == 1:
            length = struct.unpack_from(">H", data, pos + 1)[0]
            text = data[pos + 3 : pos + 3 + length]
            for old, new in replacements:
                if old in text:
                    text = text.replace(old, new)
            out += bytes([1]) + struct.pack(">H", len(text)) + text
            pos += 3 + length
        else:
            size = _CP_FIXED[tag]
            out += data[pos : pos + 1 + size]
            pos += 1 + size
            if tag in (5, 6):  # long and double take two slots
                index += 1
        index += 1
    out += data[pos:]
    return bytes(out)


def relocate_jar(sources: list[Path], dest: Path, old: str, new: str) -> Path:
    """Write one jar holding the classes of `sources` moved from package prefix `old` to `new`.

    Class files get their constant pools rewritten (`relocate_class`), entry names move,
    `META-INF/services/` files are renamed and rewritten; signatures, `module-info` and
    multi-release variants are dropped. The jar is written to a temporary name and renamed, so
    a concurrent builder never sees half a jar.

    Args:
        sources: jars to relocate.
        dest: the jar to write.
        old: prefix to move, slash form (`com/fasterxml/jackson/`).
        new: its new name (`org/apache/iceberg/shaded/com/fasterxml/jackson/`).

    Returns:
        `dest`.
    """
    pairs = [(old.encode(), new.encode())]
    old_dot, new_dot = old.replace("/", "."), new.replace("/", ".")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    seen: set[str] = set()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
        for source in sources:
            with zipfile.ZipFile(source) as jar:
                for info in jar.infolist():
                    name = info.filename
                    if info.is_dir() or name.startswith("META-INF/versions/"):
                        continue
                    if name.endswith("module-info.class") or name == "META-INF/MANIFEST.MF":
                        continue
                    if name.endswith((".SF", ".RSA", ".DSA")):
                        continue
                    data = jar.read(info)
                    if name.endswith(".class") and name.startswith(old):
                        name, data = new + name[len(old) :], relocate_class(data, pairs)
                    elif name.startswith("META-INF/services/" + old_dot):
                        name = (
                            "META-INF/services/"
                            + new_dot
                            + name[len("META-INF/services/") + len(old_dot) :]
                        )
                        data = data.replace(old_dot.encode(), new_dot.encode())
                    elif name.startswith("META-INF/"):
                        name = f"META-INF/{source.stem}/{name[len('META-INF/') :]}"
                    else:
                        continue
                    if name not in seen:
                        seen.add(name)
                        out.writestr(name, data)
    tmp.replace(dest)
    return dest


def _pyspark_jars_dir() -> Path:
    try:
        import pyspark
    except ImportError as exc:
        raise SparkSetupError("pyspark is not installed (pip install -e '.[spark]')") from exc
    return Path(pyspark.__file__).parent / "jars"


def jackson_patch_jar(cache_dir: Path) -> Path:
    """The relocated-Jackson jar that Iceberg's Spark runtime needs, built once per cache dir.

    Args:
        cache_dir: where to keep it (created if missing).

    Returns:
        Path of the jar (about 2 MB).
    """
    jars = _pyspark_jars_dir()
    sources = sorted(
        p for p in jars.glob("jackson-*.jar") if p.name.rsplit("-", 1)[0] in JACKSON_JARS
    )
    if len(sources) != len(JACKSON_JARS):
        raise SparkSetupError(f"pyspark's Jackson jars not found in {jars}")
    version = sources[0].stem.rsplit("-", 1)[1]
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"iceberg-shaded-jackson-{version}.jar"
    if not dest.is_file():
        relocate_jar(sources, dest, JACKSON_FROM, JACKSON_TO)
    return dest


# --------------------------------------------------------------------------------------------
# Jars and drivers
# --------------------------------------------------------------------------------------------


# The AWS SDK for Java v2, which Iceberg's `S3FileIO` (an s3:// warehouse) links against and
# Iceberg's Spark runtime does not bundle. Maven (`iceberg-aws-bundle`) may be out of reach; a
# maintained PyPI wheel ships the SDK's own Maven jars unmodified: `bodo-iceberg-connector`
# (its `jars/libs/`). `scripts/install_spark_s3.py` downloads that wheel by pinned hash and
# extracts just these jars (their digests checked against the wheel's RECORD) into
# `aws_sdk_dir()`. Tested with Iceberg 1.10.2's S3FileIO on SeaweedFS (tests/test_spark.py).
AWS_SDK_VERSION = "2.29.26"
AWS_SDK_WHEEL = "bodo-iceberg-connector"
AWS_SDK_WHEEL_VERSION = "2026.10"
AWS_SDK_WHEEL_SHA256 = "947a72aea7d0f0fa49e7609841d8871dd4841335eeaaf9e6abe2ae34075e4c55"
AWS_SDK_WHEEL_JARS_DIR = "bodo_iceberg_connector/jars/libs/"
#: SDK modules S3FileIO needs (`kms` too: Iceberg's AWS properties name its model classes).
AWS_SDK_MODULES = (
    "annotations",
    "apache-client",
    "arns",
    "auth",
    "aws-core",
    "aws-json-protocol",
    "aws-query-protocol",
    "aws-xml-protocol",
    "checksums",
    "checksums-spi",
    "crt-core",
    "endpoints-spi",
    "http-auth",
    "http-auth-aws",
    "http-auth-aws-eventstream",
    "http-auth-spi",
    "http-client-spi",
    "identity-spi",
    "json-utils",
    "kms",
    "metrics-spi",
    "profiles",
    "protocol-core",
    "regions",
    "retries",
    "retries-spi",
    "s3",
    "sdk-core",
    "sts",
    "third-party-jackson-core",
    "url-connection-client",
    "utils",
)
#: The SDK's two third-party dependencies that pyspark does not ship.
AWS_SDK_THIRD_PARTY_JARS = ("reactive-streams-1.0.4.jar", "eventstream-1.0.1.jar")
#: Environment variable naming the directory of the AWS SDK jars (default: `aws_sdk_dir()`).
AWS_SDK_DIR_ENV = "ICEBERG_LAKE_SPARK_AWS_SDK"


def aws_sdk_jar_names() -> list[str]:
    """File names of every jar of the AWS SDK set (`AWS_SDK_MODULES` + third-party)."""
    return [f"{m}-{AWS_SDK_VERSION}.jar" for m in AWS_SDK_MODULES] + list(AWS_SDK_THIRD_PARTY_JARS)


def _user_cache() -> Path:
    """`$XDG_CACHE_HOME/iceberg_lake` (else `~/.cache/iceberg_lake`): the jars this module keeps."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iceberg_lake"


def aws_sdk_dir() -> Path:
    """Where the AWS SDK jars are kept: `$ICEBERG_LAKE_SPARK_AWS_SDK`, else the user cache."""
    if os.environ.get(AWS_SDK_DIR_ENV):
        return Path(os.environ[AWS_SDK_DIR_ENV])
    return _user_cache() / f"aws-sdk-java-{AWS_SDK_VERSION}"


def find_aws_sdk_jars(directory: Path | None = None) -> list[Path]:
    """The AWS SDK jars for Iceberg's S3FileIO, all of them or an error.

    Args:
        directory: where to look (default `aws_sdk_dir()`).

    Returns:
        The jars, in `aws_sdk_jar_names()` order.

    Raises:
        SparkSetupError: one is missing (the message says how to install them).
    """
    root = directory or aws_sdk_dir()
    jars = [root / name for name in aws_sdk_jar_names()]
    missing = [j.name for j in jars if not j.is_file()]
    if missing:
        raise SparkSetupError(
            f"AWS SDK jars for an s3:// warehouse missing in {root} ({missing[0]}, …): "
            "python scripts/install_spark_s3.py"
        )
    return jars


@dataclass(frozen=True)
class SparkJars:
    """The jars (and the SQLite JNI directory) a Spark session on the lake needs."""

    iceberg_runtime: Path
    jackson_patch: Path
    sqlite_jdbc: Path
    postgres_jdbc: Path
    sqlite_jni_dir: Path
    aws_sdk: tuple[Path, ...] = ()

    @property
    def classpath(self) -> list[Path]:
        """Every jar, in classpath order."""
        base = [self.iceberg_runtime, self.jackson_patch, self.sqlite_jdbc, self.postgres_jdbc]
        return base + list(self.aws_sdk)


def _find_jar(pattern: str, dirs: list[Path], package: str) -> Path:
    for d in dirs:
        found = sorted(p for p in d.glob(pattern) if not p.is_symlink()) or sorted(d.glob(pattern))
        if found:
            return found[-1]
    raise SparkSetupError(
        f"{pattern} not found in {', '.join(map(str, dirs))}: apt-get install {package} "
        f"(or dpkg -x its .deb into ${DEBS_DIR_ENV})"
    )


def find_spark_jars(cache_dir: Path, *, s3: bool | None = None) -> SparkJars:
    """Locate Iceberg's runtime, the JDBC drivers, and build the Jackson patch if needed.

    Args:
        cache_dir: where the Jackson patch jar is kept.
        s3: the AWS SDK jars (`find_aws_sdk_jars`): True = required, False = left out,
            None = added when installed.

    Returns:
        The jars.

    Raises:
        SparkSetupError: a wheel or Debian package is missing (the message names it).
    """
    try:
        import snowpark_connect_deps_iceberg as deps  # type: ignore[import-untyped]
    except ImportError as exc:
        raise SparkSetupError(
            "snowpark-connect-deps-iceberg is not installed (pip install -e '.[spark]')"
        ) from exc
    runtime = _find_jar(
        "iceberg-spark-runtime-3.5_2.12-*.jar",
        [Path(deps.get_jars_dir())],
        "snowpark-connect-deps-iceberg",
    )
    java_dirs = [SYSTEM_JAVA_DIR]
    jni_dirs = list(SYSTEM_JNI_DIRS)
    if os.environ.get(DEBS_DIR_ENV):
        root = Path(os.environ[DEBS_DIR_ENV])
        java_dirs.insert(0, root / "usr/share/java")
        jni_dirs[:0] = [root / d.relative_to("/") for d in SYSTEM_JNI_DIRS]
    sqlite = _find_jar("xerial-sqlite-jdbc-*.jar", java_dirs, "libxerial-sqlite-jdbc-java")
    postgres = _find_jar("postgresql-4*.jar", java_dirs, "libpostgresql-jdbc-java")
    jni = next((d for d in jni_dirs if (d / "libsqlitejdbc.so").is_file()), None)
    if jni is None:
        raise SparkSetupError(
            "libsqlitejdbc.so not found: apt-get install libxerial-sqlite-jdbc-jni "
            f"(or dpkg -x its .deb into ${DEBS_DIR_ENV})"
        )
    aws: list[Path] = []
    if s3 is not False:
        try:
            aws = find_aws_sdk_jars()
        except SparkSetupError:
            if s3:
                raise
    return SparkJars(
        iceberg_runtime=runtime,
        jackson_patch=jackson_patch_jar(cache_dir),
        sqlite_jdbc=sqlite,
        postgres_jdbc=postgres,
        sqlite_jni_dir=jni,
        aws_sdk=tuple(aws),
    )


def default_jar_cache() -> Path:
    """The user's cache for the built Jackson patch jar (`<user cache>/spark-jars`), beside the
    AWS SDK jars and the Debian drivers `scripts/install_spark_jdbc.sh` keeps there. Not the
    data directory: printing Spark settings must not create a lake."""
    return _user_cache() / "spark-jars"


def local_spark_jars(settings: Settings, *, cache_dir: Path | None = None) -> SparkJars:
    """The jars on this machine that `spark_session` (`lake compact --engine spark`) runs with.

    Args:
        settings: the lake's settings (an s3:// warehouse requires the AWS SDK jars).
        cache_dir: where the Jackson patch jar is kept (default `default_jar_cache()`; built
            there, about a second, if missing).

    Returns:
        The jars (`find_spark_jars`).

    Raises:
        SparkSetupError: a wheel, a Debian package or (s3://) the AWS SDK jars are missing.
    """
    # Absolute: the paths are printed for spark-defaults.conf (the default data dir is relative).
    cache = Path(cache_dir or default_jar_cache()).absolute()
    return find_spark_jars(cache, s3=settings.is_s3 or None)


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


def spark_session(
    settings: Settings, *, master: str = "local[*]", cache_dir: Path | None = None
) -> SparkSession:
    """A SparkSession with the lake's catalog, for `lake compact --engine spark`.

    Jars: with the `spark` extra installed, Iceberg's runtime from its wheel (plus the relocated
    Jackson classes it lacks, built once into `cache_dir`), the JDBC drivers from Debian and, for
    an s3:// warehouse, the AWS SDK jars (`find_aws_sdk_jars`, required then); without the
    extra, Maven coordinates (`spark.jars.packages`) for a machine that reaches Maven.
    Settings from `spark-defaults.conf` / `PYSPARK_SUBMIT_ARGS` apply as usual.
    The catalog is configured once the session runs (`attach_spark_catalog`), so neither its
    password nor the S3 secret key appears on the JVM's command line.

    Args:
        settings: the lake's settings (its catalog becomes Spark catalog `catalog_name`).
        master: Spark master URL.
        cache_dir: where the Jackson jar is kept (default `default_jar_cache()`).

    Returns:
        The session; end it with `stop_spark`.

    Raises:
        SparkSetupError: pyspark, a JDBC driver or (s3://) the AWS SDK jars are missing.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkSetupError(
            "pyspark is not installed: pip install 'iceberg_lake[spark]'"
        ) from exc
    builder = SparkSession.builder.master(master).appName("iceberg_lake")
    jars: SparkJars | None
    try:
        jars = local_spark_jars(settings, cache_dir=cache_dir)
    except SparkSetupError:
        if importlib.util.find_spec("snowpark_connect_deps_iceberg") is not None:
            raise  # the extra is there but a driver is not: say which
        jars = None
    # What `lake engines spark [--jars local]` prints.
    for key, value in spark_jars_conf(settings, jars).items():
        builder = builder.config(key, value)
    # A static setting: it must be given before the session starts. The catalog (with its
    # password and S3 secret key) is not: `attach_spark_catalog` sets it once the JVM runs.
    builder = builder.config("spark.sql.extensions", ICEBERG_EXTENSIONS)
    builder = builder.config("spark.sql.session.timeZone", "UTC")
    # The CLI prints its own summary: no console progress bars on stderr.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    spark = builder.getOrCreate()
    attach_spark_catalog(spark, settings)
    return spark


def attach_spark_catalog(spark: SparkSession, settings: Settings) -> str:
    """Configure the lake's catalog in a running session (`spark_catalog_conf`, secrets too).

    Never through the session builder: PySpark launches the JVM with every builder setting as
    a `--conf key=value` argument, and a command line is readable by any local user (`ps`).
    Set at run time instead, they reach only the session's SQL conf; Iceberg's `SparkCatalog`
    reads its options from there when the catalog is first used, so this must run before the
    first query that names it (a catalog Spark already loaded keeps its old options).

    Args:
        spark: a running session whose static `spark.sql.extensions` includes Iceberg's.
        settings: the lake's settings.

    Returns:
        The Spark catalog name (`settings.catalog_name`: Iceberg's JdbcCatalog keys its rows by
        its own name, so two lakes in one session need two catalog names).
    """
    for key, value in spark_catalog_conf(settings, show_secrets=True).items():
        if key != "spark.sql.extensions":  # static: given to the builder
            spark.conf.set(key, value)
    return settings.catalog_name


def stop_spark(spark: SparkSession, timeout: float = 30.0) -> None:
    """Stop the session and its JVM (pyspark otherwise keeps the JVM until Python exits).

    Args:
        spark: the session.
        timeout: seconds to wait for the JVM to exit before killing it.
    """
    from pyspark import SparkContext

    gateway = SparkContext._gateway  # noqa: SLF001 - pyspark keeps the JVM handle only here
    spark.stop()
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    with contextlib.suppress(Exception):
        gateway.shutdown()
    SparkContext._gateway = None  # noqa: SLF001
    SparkContext._jvm = None  # noqa: SLF001
    if proc is not None:
        # The JVM's PythonGatewayServer exits when its stdin closes.
        with contextlib.suppress(Exception):
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# Writing through Spark
# --------------------------------------------------------------------------------------------

#: Iceberg's Spark write options (`org.apache.iceberg.spark.SparkWriteOptions`).
USE_TABLE_DISTRIBUTION_AND_ORDERING = "use-table-distribution-and-ordering"
SNAPSHOT_PROPERTY_PREFIX = "snapshot-property."
ISOLATION_LEVEL = "isolation-level"
VALIDATE_FROM_SNAPSHOT_ID = "validate-from-snapshot-id"


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


def replace_partitions(
    df: DataFrame,
    table: str,
    snapshot_properties: dict[str, str],
    *,
    planned_at: int | None,
    rows_in: Column | None = None,
) -> None:
    """Replace every partition that `df` has rows in, in ONE Iceberg `overwrite` snapshot.

    Iceberg's dynamic partition overwrite (`overwritePartitions`, a `ReplacePartitions` commit)
    swaps the files of exactly the partitions present in `df`; other partitions keep theirs.
    With `rows_in`, a static overwrite by that filter instead (`overwrite(rows_in)`): every
    partition inside it is replaced, so one `df` has no rows for is emptied.
    `df`'s own clustering and order are written as they are: the table's declared distribution
    and sort order are switched off for this write (`use-table-distribution-and-ordering=false`),
    because Iceberg would otherwise re-sort by its sort order alone (`ts_event_ns`), which leaves
    the order of rows with equal keys to Spark's shuffle and spills. So `df` must be clustered by
    partition within each Spark partition (e.g. `repartition(keys).sortWithinPartitions(keys…)`).

    The commit is validated at serializable isolation from `planned_at`: if another commit
    added or removed files of the replaced partitions since (a DuckDB compaction of a newer
    Bronze snapshot), it fails with Iceberg's `ValidationException` ("conflicting files", see
    `is_write_conflict`) instead of replacing the newer rows with older ones.

    Args:
        df: the rows, with the table's columns (matched by name).
        table: the Spark table name, `catalog.namespace.table`.
        snapshot_properties: summary properties of the new snapshot.
        planned_at: the table's current snapshot when `df` was planned (None: it had none).
        rows_in: a filter on the table's columns that partitions align with (replace every
            partition in it), or None (replace the partitions `df` has rows in).
    """
    writer = (
        df.writeTo(table)
        .option(USE_TABLE_DISTRIBUTION_AND_ORDERING, "false")
        .option(ISOLATION_LEVEL, "serializable")
    )
    if planned_at is not None:
        writer = writer.option(VALIDATE_FROM_SNAPSHOT_ID, str(planned_at))
    for key, value in snapshot_properties.items():
        writer = writer.option(SNAPSHOT_PROPERTY_PREFIX + key, value)
    if rows_in is None:
        writer.overwritePartitions()
    else:
        writer.overwrite(rows_in)


def is_write_conflict(exc: BaseException) -> bool:
    """True if `exc` (from a Spark write) is Iceberg's validation failure of a commit that
    conflicts with one made since it was planned (`replace_partitions`): files of the replaced
    partitions added or removed since, or the planned snapshot no longer in the table's
    history (a rollback meanwhile)."""
    text = str(exc)
    return "ValidationException" in text and (
        "conflicting" in text.lower() or "Cannot determine history" in text
    )


def spark_error_line(exc: BaseException) -> str:
    """The line of a pyspark/py4j error that says what went wrong: py4j's first line only
    names the JVM call ("An error occurred while calling o136.overwrite."), the cause is the
    first Java exception line after it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("An error occurred while calling"):
        for line in lines[1:]:
            cause = line.lstrip(": ")
            if "Exception: " in cause or "Error: " in cause:
                name, _, message = cause.partition(": ")
                return f"{name.rsplit('.', 1)[-1]}: {message}"
    return lines[0]
