"""A real Spark session on the lake's catalog, for tests and benchmarks (test harness only).

Spark runs offline from PyPI wheels and Debian packages (ENVIRONMENT.md):

- `pyspark==3.5.9` (Spark itself and a JVM launcher; Java 17 from the machine),
- `snowpark-connect-deps-iceberg==1.0.3`, which ships `iceberg-spark-runtime-3.5_2.12-1.10.2.jar`
  — but without the relocated Jackson classes that jar's Iceberg code links against
  (`NoClassDefFoundError: org/apache/iceberg/shaded/com/fasterxml/jackson/core/…`). We build them:
  pyspark's own Jackson 2.15.2 jars relocated into `org/apache/iceberg/shaded/com/fasterxml/…`
  by rewriting the class files' constant pools (`relocate_jar`), once per cache directory;
- the JDBC drivers from Debian: `libxerial-sqlite-jdbc-java` (+ `-jni`, the native library the
  Debian build loads from the system) and `libpostgresql-jdbc-java`. `.ci/run` installs them; a
  non-root machine can unpack the `.deb`s (`apt-get download` + `dpkg -x`) into a directory named
  by `ICEBERG_LAKE_SPARK_DEBS`.

The library never imports this module.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from iceberg_lake.config import Settings
from iceberg_lake.engine.spark import ICEBERG_EXTENSIONS, spark_catalog_conf

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "SparkJars",
    "TcpToUnixProxy",
    "find_spark_jars",
    "jackson_patch_jar",
    "relocate_jar",
    "attach_catalog",
    "run_spark",
    "start_spark",
    "stop_spark",
]

#: Environment variable naming a directory where Debian's JDBC packages were unpacked
#: (`dpkg -x pkg.deb DIR`), for machines where they cannot be installed system-wide.
DEBS_DIR_ENV = "ICEBERG_LAKE_SPARK_DEBS"
#: Where Debian installs Java libraries and JNI libraries.
SYSTEM_JAVA_DIR = Path("/usr/share/java")
SYSTEM_JNI_DIRS = (Path("/usr/lib/x86_64-linux-gnu/jni"), Path("/usr/lib/aarch64-linux-gnu/jni"))

JACKSON_FROM = "com/fasterxml/jackson/"
JACKSON_TO = "org/apache/iceberg/shaded/com/fasterxml/jackson/"
JACKSON_JARS = ("jackson-annotations", "jackson-core", "jackson-databind")


class SparkSetupError(RuntimeError):
    """Something Spark needs (a wheel, a JDBC driver, Java) is missing."""


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


@dataclass(frozen=True)
class SparkJars:
    """The jars (and the SQLite JNI directory) a Spark session on the lake needs."""

    iceberg_runtime: Path
    jackson_patch: Path
    sqlite_jdbc: Path
    postgres_jdbc: Path
    sqlite_jni_dir: Path

    @property
    def classpath(self) -> list[Path]:
        """Every jar, in classpath order."""
        return [self.iceberg_runtime, self.jackson_patch, self.sqlite_jdbc, self.postgres_jdbc]


def _find_jar(pattern: str, dirs: list[Path], package: str) -> Path:
    for d in dirs:
        found = sorted(p for p in d.glob(pattern) if not p.is_symlink()) or sorted(d.glob(pattern))
        if found:
            return found[-1]
    raise SparkSetupError(
        f"{pattern} not found in {', '.join(map(str, dirs))}: apt-get install {package} "
        f"(or dpkg -x its .deb into ${DEBS_DIR_ENV})"
    )


def find_spark_jars(cache_dir: Path) -> SparkJars:
    """Locate Iceberg's runtime, the JDBC drivers, and build the Jackson patch if needed.

    Args:
        cache_dir: where the Jackson patch jar is kept.

    Returns:
        The jars.

    Raises:
        SparkSetupError: a wheel or Debian package is missing (the message names it).
    """
    try:
        import snowpark_connect_deps_iceberg as deps
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
    return SparkJars(
        iceberg_runtime=runtime,
        jackson_patch=jackson_patch_jar(cache_dir),
        sqlite_jdbc=sqlite,
        postgres_jdbc=postgres,
        sqlite_jni_dir=jni,
    )


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
    jars = find_spark_jars(cache_dir or workdir / "jars")
    java_opts = f"-Djava.library.path={jars.sqlite_jni_dir} -Djava.io.tmpdir={workdir}"
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("iceberg_lake-tests")
        .config("spark.jars", ",".join(str(p) for p in jars.classpath))
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


def attach_catalog(spark: SparkSession, settings: Settings) -> str:
    """Register the lake of `settings` as a Spark catalog named `settings.catalog_name`.

    Iceberg's JdbcCatalog keys its rows by its own name, so the Spark name must be the lake's
    catalog name; two lakes in one session need two catalog names.

    Args:
        spark: a session from `start_spark`.
        settings: the lake's settings.

    Returns:
        The Spark catalog name.
    """
    for key, value in spark_catalog_conf(settings, show_secrets=True).items():
        if key != "spark.sql.extensions":
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
