"""A real Spark session on the lake's catalog, for tests and benchmarks (test harness only).

Spark runs offline from PyPI wheels and Debian packages (ENVIRONMENT.md):

- `pyspark==3.5.9` (Spark itself and a JVM launcher; Java 17 from the machine),
- `snowpark-connect-deps-iceberg==1.0.3`, which ships `iceberg-spark-runtime-3.5_2.12-1.10.2.jar`
  — but without the relocated Jackson classes that jar's Iceberg code links against
  (`NoClassDefFoundError: org/apache/iceberg/shaded/com/fasterxml/jackson/core/…`). We build them:
  pyspark's own Jackson 2.15.2 jars relocated into `org/apache/iceberg/shaded/com/fasterxml/…`
  by rewriting the class files' constant pools (`iceberg_lake.engine.spark.relocate_jar`), once
  per cache directory;
- the JDBC drivers from Debian: `libxerial-sqlite-jdbc-java` (+ `-jni`, the native library the
  Debian build loads from the system) and `libpostgresql-jdbc-java`. `.ci/run` installs them; a
  non-root machine can unpack the `.deb`s (`apt-get download` + `dpkg -x`) into a directory named
  by `ICEBERG_LAKE_SPARK_DEBS`;
- for an s3:// warehouse, the AWS SDK for Java v2 jars that Iceberg's S3FileIO needs, extracted
  from a PyPI wheel by `scripts/install_spark_s3.py` (`.ci/run` runs it) into
  `iceberg_lake.engine.spark.aws_sdk_dir()`; the session has them whenever they are installed.

The library never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from iceberg_lake.config import Settings
from iceberg_lake.engine.spark import (
    ICEBERG_EXTENSIONS,
    SparkSetupError,
    attach_spark_catalog,
    find_spark_jars,
    local_jars_conf,
    stop_spark,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "SparkSetupError",
    "TcpToUnixProxy",
    "attach_catalog",
    "run_spark",
    "spark_jar_paths",
    "start_spark",
    "stop_spark",
]

# --------------------------------------------------------------------------------------------
# PostgreSQL over TCP for JDBC
# --------------------------------------------------------------------------------------------


class TcpToUnixProxy:
    """Forward a loopback TCP port to a Unix socket (the test PostgreSQL listens only on one).

    PgJDBC cannot open Unix sockets without an extra library, so Spark reaches the test server
    through this proxy: one thread accepts, one thread per connection pumps bytes both ways.

    Args:
        socket_path: the Unix socket to forward to.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = str(socket_path)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="pg-proxy", daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.2)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.socket_path)
            except OSError:
                client.close()
                upstream.close()
                continue
            t = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def stop(self) -> None:
        """Stop accepting, close every forwarded connection, join the threads."""
        self._stopping.set()
        self._listener.close()
        self._accept.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------


def start_spark(workdir: Path, *, cache_dir: Path | None = None) -> SparkSession:
    """Start a `local[2]` SparkSession with Iceberg's SQL extensions and the JDBC drivers.

    No lake catalog is configured yet: `attach_catalog` adds one per lake at run time (Spark
    looks catalogs up in its conf when first used), so one JVM serves every test's lake.

    Args:
        workdir: Spark's scratch space (local dirs, the session catalog's warehouse).
        cache_dir: where the Jackson patch jar is kept (default `workdir / "jars"`).

    Returns:
        The session; stop it with `stop_spark` (see `run_spark`).

    Raises:
        SparkSetupError: a wheel or Debian package is missing.
    """
    from pyspark.sql import SparkSession

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # Bind Spark's driver to loopback only (it otherwise picks the host's first interface).
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # The jars and library path `lake engines spark --jars local` prints.
    jar_conf = local_jars_conf(find_spark_jars(cache_dir or workdir / "jars"))
    # C1-only JIT and the serial GC: a short-lived test JVM on 2 shared cores spends less CPU
    # compiling and collecting than with the server defaults.
    java_opts = (
        f"{jar_conf['spark.driver.extraJavaOptions']} -Djava.io.tmpdir={workdir} "
        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    )
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("iceberg_lake-tests")
        .config("spark.jars", jar_conf["spark.jars"])
        .config("spark.sql.extensions", ICEBERG_EXTENSIONS)
        .config("spark.driver.memory", "1g")
        .config("spark.driver.extraJavaOptions", java_opts)
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", str(workdir / "local"))
        .config("spark.sql.warehouse.dir", str(workdir / "spark-warehouse"))
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_jar_paths(spark: SparkSession) -> list[Path]:
    """The jars the session was started with (`spark.jars`)."""
    return [Path(p) for p in (spark.conf.get("spark.jars", "") or "").split(",") if p]


def attach_catalog(spark: SparkSession, settings: Settings) -> str:
    """Register the lake of `settings` as a Spark catalog named `settings.catalog_name`.

    Iceberg's JdbcCatalog keys its rows by its own name, so the Spark name must be the lake's
    catalog name; two lakes in one session need two catalog names. Set at run time, as
    `spark_session` does (`engine.spark.attach_spark_catalog`): no secret on a command line.

    Args:
        spark: a session from `start_spark`.
        settings: the lake's settings.

    Returns:
        The Spark catalog name.
    """
    return attach_spark_catalog(spark, settings)


@contextlib.contextmanager
def run_spark(workdir: Path, *, cache_dir: Path | None = None) -> Iterator[SparkSession]:
    """Context manager around `start_spark`; stops the session and its JVM on exit.

    Args:
        workdir: Spark's scratch space.
        cache_dir: where the Jackson patch jar is kept.

    Yields:
        The running session.
    """
    spark = start_spark(workdir, cache_dir=cache_dir)
    try:
        yield spark
    finally:
        stop_spark(spark)
