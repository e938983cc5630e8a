"""S3 start-up errors of `lake init` and `lake serve`: one line that points at the cause.

A wrong secret names the credential variables (never their values), an unreachable endpoint
prints one line without urllib3's retry warnings, and only `lake init` creates the warehouse
bucket, so a mistyped `LAKE_WAREHOUSE` makes `lake serve` fail. Real SeaweedFS (`s3_server`).
Budget: about 10 s (four `lake` subprocesses and one in-process `lake init`).
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from test_cli_errors import _lake, _one_line_error
from typer.testing import CliRunner

from iceberg_lake.cli.app import app
from iceberg_lake.testing import S3Server

WRONG_SECRET = "WrongSecretXyz/+="
runner = CliRunner()


def _env(tmp_path: Path, s3: S3Server, bucket: str = "lake") -> dict[str, str]:
    return {
        "LAKE_DATA_DIR": str(tmp_path / "data"),
        **s3.lake_env(f"s3://{bucket}/{uuid.uuid4().hex[:8]}"),
        # serve checks the warehouse before it connects to NATS: nothing listens here
        "LAKE_NATS_URL": "nats://127.0.0.1:1",
    }


def test_a_wrong_secret_names_the_credentials_not_bucket_creation(
    tmp_path: Path, s3_server: S3Server
) -> None:
    s3_server.create_bucket("lake")
    env = _env(tmp_path, s3_server) | {"LAKE_S3_SECRET_KEY": WRONG_SECRET}
    for command in (["init"], ["serve"]):
        done = _lake(command, env)
        line = _one_line_error(done.stderr, done.returncode)
        assert done.returncode == 1, done.stderr
        assert "cannot access bucket lake" in line, line
        assert "LAKE_S3_ACCESS_KEY" in line and "LAKE_S3_SECRET_KEY" in line, line
        assert "cannot create" not in line, line
        assert WRONG_SECRET not in done.stderr + done.stdout
        assert s3_server.secret_key not in done.stderr + done.stdout


def test_serve_with_a_wrong_secret_on_an_existing_lake_is_one_line(
    tmp_path: Path, s3_server: S3Server
) -> None:
    """An existing lake (its no-op migrations pending, as `lake init` leaves them): the pending
    migrations warning came first, with the store's refusal inside it, then the real error
    (newuser5)."""
    env = _env(tmp_path, s3_server)
    assert runner.invoke(app, ["init"], env=env).exit_code == 0
    done = _lake(["serve"], env | {"LAKE_S3_SECRET_KEY": WRONG_SECRET})
    line = _one_line_error(done.stderr, done.returncode)
    assert "cannot access bucket lake" in line, line
    assert "migration" not in done.stderr, done.stderr


def test_an_unreachable_endpoint_is_exactly_one_line(tmp_path: Path, s3_server: S3Server) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _env(tmp_path, s3_server) | {"LAKE_S3_ENDPOINT": f"http://127.0.0.1:{port}"}
    done = _lake(["init"], env)
    line = _one_line_error(done.stderr, done.returncode)  # no urllib3 "Retrying" warnings
    assert f"object store http://127.0.0.1:{port} unreachable" in line, line


def test_serve_never_creates_the_bucket_and_init_says_it_did(
    tmp_path: Path, s3_server: S3Server
) -> None:
    typo = f"lake-typo-{uuid.uuid4().hex[:8]}"
    env = _env(tmp_path, s3_server, bucket=typo)
    done = _lake(["serve"], env)
    line = _one_line_error(done.stderr, done.returncode)
    assert f"bucket {typo} (LAKE_WAREHOUSE) does not exist" in line, line
    assert not s3_server.client().bucket_exists(typo), "serve must not create the bucket"

    done = runner.invoke(app, ["init"], env=env)  # in-process: saves a second of imports
    assert done.exit_code == 0, done.output
    assert f"created bucket {typo}" in done.stdout.splitlines(), done.stdout
    assert s3_server.client().bucket_exists(typo)
