"""The real-service harness: every server answers, and processes are stopped and reaped."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iceberg_lake.engine import duck as duck_module
from iceberg_lake.testing import (
    ManagedProcess,
    NatsServer,
    PostgresServer,
    S3Server,
    ServerStartError,
    free_port,
    free_ports,
    wait_until_ready,
)


def _bucket() -> str:
    return f"harness-{uuid.uuid4().hex[:12]}"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Ports and processes (no servers)
# ---------------------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert _port_is_free(port)


def test_free_ports_with_grpc_offset_are_distinct_and_free() -> None:
    ports = free_ports(4, also_free_offset=10000)
    everything = set(ports) | {p + 10000 for p in ports}
    assert len(everything) == 8
    assert all(p + 10000 < 65536 for p in ports)
    assert all(_port_is_free(p) for p in everything)


def test_managed_process_logs_and_is_reaped(tmp_path: Path) -> None:
    proc = ManagedProcess(  # the log's header repeats argv: the marker is built at run time
        [sys.executable, "-c", "import time; print('hel' + 'lo', flush=True); time.sleep(60)"],
        tmp_path / "p.log",
    )
    proc.start()
    wait_until_ready(lambda: "hello" in proc.log_tail(), what="sleeper", timeout=10, process=proc)
    pid = proc.pid
    assert pid is not None and proc.is_running()
    assert proc.stop(timeout=5) == -15
    assert not proc.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: not even a zombie is left


def test_managed_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('rea' + 'dy', flush=True); time.sleep(60)"
    )
    proc = ManagedProcess([sys.executable, "-c", code], tmp_path / "p.log").start()
    wait_until_ready(lambda: "ready" in proc.log_tail(), what="stubborn", timeout=10, process=proc)
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -9
    assert time.monotonic() - started < 5


def test_process_that_exits_early_raises_server_start_error_with_log(tmp_path: Path) -> None:
    proc = ManagedProcess(
        [sys.executable, "-c", "import sys; print('boom: bad flag', file=sys.stderr); sys.exit(3)"],
        tmp_path / "p.log",
    ).start()
    with pytest.raises(ServerStartError, match=r"(?s)exited with code 3.*boom: bad flag"):
        wait_until_ready(lambda: False, what="broken", timeout=10, process=proc)


def test_deadline_raises_server_start_error(tmp_path: Path) -> None:
    proc = ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "p.log")
    with proc:
        with pytest.raises(ServerStartError, match="did not answer within"):
            wait_until_ready(lambda: False, what="silent", timeout=0.3, process=proc)
    assert not proc.is_running()


# ---------------------------------------------------------------------------------------------
# NATS JetStream
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_nats_jetstream_publish_and_pull_consume(nats_server: NatsServer) -> None:
    import nats

    async def roundtrip() -> tuple[bytes, str | None, int]:
        nc = await nats.connect(nats_server.url, connect_timeout=5)
        try:
            js = nc.jetstream()
            await js.add_stream(name="HARNESS", subjects=["harness.>"])
            ack = await js.publish(
                "harness.one", b"hello", headers={"Nats-Msg-Id": "m-1"}, timeout=5
            )
            dup = await js.publish(
                "harness.one", b"hello", headers={"Nats-Msg-Id": "m-1"}, timeout=5
            )
            assert dup.duplicate and dup.seq == ack.seq
            sub = await js.pull_subscribe("harness.>", durable="harness-consumer")
            msgs = await sub.fetch(1, timeout=5)
            assert len(msgs) == 1
            await msgs[0].ack_sync(timeout=5)  # waits for the server to confirm
            info = await js.consumer_info("HARNESS", "harness-consumer")
            return msgs[0].data, msgs[0].subject, info.num_ack_pending
        finally:
            await nc.close()

    data, subject, pending = asyncio.run(roundtrip())
    assert (data, subject, pending) == (b"hello", "harness.one", 0)
    assert nats_server.process.is_running()
    assert (nats_server.store_dir / "jetstream").is_dir()


# ---------------------------------------------------------------------------------------------
# SeaweedFS S3
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_seaweedfs_put_and_get_with_minio(s3_server: S3Server) -> None:
    bucket = _bucket()
    s3_server.create_bucket(bucket)
    s3_server.create_bucket(bucket)  # idempotent
    client = s3_server.client()
    client.put_object(bucket, "dir/hello.txt", io.BytesIO(b"hello lake"), 10)
    assert client.get_object(bucket, "dir/hello.txt").read() == b"hello lake"
    assert [o.object_name for o in client.list_objects(bucket, prefix="dir/")] == ["dir/hello.txt"]


@pytest.mark.integration
def test_seaweedfs_many_buckets_are_writable(s3_server: S3Server) -> None:
    # weed's defaults leave only 2 buckets writable (7 volumes each, 8 volumes max).
    client = s3_server.client()
    for _ in range(5):
        bucket = _bucket()
        s3_server.create_bucket(bucket)
        client.put_object(bucket, "x", io.BytesIO(b"x"), 1)


@pytest.mark.integration
def test_seaweedfs_multipart_parquet_through_pyarrow(s3_server: S3Server) -> None:
    bucket = _bucket()
    s3_server.create_bucket(bucket)
    fs = s3_server.pyarrow_filesystem()
    rows = 400_000
    table = pa.table(
        {
            "i": pa.array(range(rows), pa.int64()),
            # Incompressible bytes keep the file above pyarrow's 10 MB multipart part size.
            "payload": pa.array([os.urandom(32) for _ in range(rows)], pa.binary()),
        }
    )
    path = f"{bucket}/big/data.parquet"
    pq.write_table(table, path, filesystem=fs, compression="none")
    info = fs.get_file_info(path)
    assert info.size > 12 * 1024 * 1024
    assert pq.read_table(path, filesystem=fs).equals(table)


@pytest.mark.integration
def test_seaweedfs_restart_keeps_ports_and_data(s3_server: S3Server) -> None:
    bucket = _bucket()
    s3_server.create_bucket(bucket)
    s3_server.client().put_object(bucket, "k", io.BytesIO(b"before outage"), 13)
    endpoint, pid = s3_server.endpoint, s3_server.process.pid

    s3_server.stop()
    try:
        assert not s3_server.is_running()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s3_server.port), timeout=1).close()
    finally:
        s3_server.start()

    assert s3_server.endpoint == endpoint and s3_server.process.pid != pid
    assert s3_server.client().get_object(bucket, "k").read() == b"before outage"
    s3_server.client().put_object(bucket, "k2", io.BytesIO(b"after"), 5)


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_postgres_select_one_and_create_table(postgres_server: PostgresServer) -> None:
    import sqlalchemy as sa

    assert postgres_server.uri.startswith("postgresql+psycopg2://")
    assert postgres_server.is_running()
    engine = sa.create_engine(postgres_server.uri)
    try:
        with engine.begin() as con:
            assert con.execute(sa.text("SELECT 1")).scalar() == 1
            con.execute(sa.text("CREATE TABLE harness_t (id int PRIMARY KEY, name text)"))
            con.execute(sa.text("INSERT INTO harness_t VALUES (1, 'one'), (2, 'two')"))
        with engine.connect() as con:
            assert con.execute(sa.text("SELECT count(*) FROM harness_t")).scalar() == 2
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# DuckDB
# ---------------------------------------------------------------------------------------------


def test_duckdb_loads_iceberg_offline(duck: duckdb.DuckDBPyConnection) -> None:
    loaded = duck.sql(
        "SELECT extension_name FROM duckdb_extensions() WHERE loaded "
        "AND extension_name IN ('avro', 'httpfs', 'iceberg') ORDER BY 1"
    ).fetchall()
    assert loaded == [("avro",), ("httpfs",), ("iceberg",)]
    functions = "SELECT count(*) FROM duckdb_functions() WHERE function_name = 'iceberg_scan'"
    assert duck.sql(functions).fetchone()[0] > 0
    second = duck_module.connect()  # installed once per process, loaded on every connection
    try:
        assert second.sql(functions).fetchone()[0] > 0
    finally:
        second.close()


def test_configure_s3_rejects_bad_endpoint(duck: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError):
        duck_module.configure_s3(duck, "ftp://127.0.0.1:1", "a", "b")


@pytest.mark.integration
def test_duckdb_reads_parquet_from_seaweedfs(
    s3_server: S3Server, duck: duckdb.DuckDBPyConnection
) -> None:
    bucket = _bucket()
    s3_server.create_bucket(bucket)
    buf = io.BytesIO()
    pq.write_table(pa.table({"symbol": ["SPY", "QQQ", "SPY"], "size": [100, 5, 7]}), buf)
    s3_server.client().put_object(
        bucket, "t/part-0.parquet", io.BytesIO(buf.getvalue()), buf.tell()
    )

    s3_server.configure_duckdb(duck)
    got = duck.sql(
        "SELECT symbol, sum(size) FROM read_parquet(?) GROUP BY 1 ORDER BY 1",
        params=[f"s3://{bucket}/t/*.parquet"],
    ).fetchall()
    assert got == [("QQQ", 5), ("SPY", 107)]
