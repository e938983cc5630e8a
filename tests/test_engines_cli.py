"""`lake engines spark|trino`: the engine settings printed for the current lake settings.

The same `spark_catalog_conf` starts the real Spark session of tests/test_spark.py, and with
`--jars local` the same `local_jars_conf` of the same `find_spark_jars`, so what is printed here
is what was tested there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iceberg_lake.cli.app import app
from iceberg_lake.config import load_settings
from iceberg_lake.engine.spark import find_spark_jars, jdbc_catalog, spark_catalog_conf

PG_ENV = {
    "LAKE_CATALOG_URI": "postgresql://lake:pa%40ss@db.internal:6432/lakedb",
    "LAKE_CATALOG_NAME": "prod",
    "LAKE_WAREHOUSE": "s3://lake/warehouse",
    "LAKE_S3_ENDPOINT": "http://minio.internal:9000",
    "LAKE_S3_ACCESS_KEY": "AKID",
    "LAKE_S3_SECRET_KEY": "topsecret",
}


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_spark_defaults_for_the_embedded_lake(tmp_path: Path) -> None:
    code, out, _ = _run(["engines", "spark"], {"LAKE_DATA_DIR": str(tmp_path / "d")})
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["spark.sql.catalog.lake"] == "org.apache.iceberg.spark.SparkCatalog"
    assert lines["spark.sql.catalog.lake.type"] == "jdbc"
    assert lines["spark.sql.catalog.lake.uri"] == f"jdbc:sqlite:{tmp_path / 'd' / 'catalog.db'}"
    assert lines["spark.sql.catalog.lake.warehouse"] == f"file://{tmp_path / 'd' / 'warehouse'}"
    assert lines["spark.sql.catalog.lake.jdbc.init-catalog-tables"] == "false"
    assert "org.xerial:sqlite-jdbc" in lines["spark.jars.packages"]
    # The lake's times are UTC; pasted into a session in local time, every literal shifted.
    assert lines["spark.sql.session.timeZone"] == "UTC"


def test_jars_local_prints_the_jar_files_the_test_harness_runs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline (no Maven): the files themselves, as `start_spark` and `spark_session` use them.
    About 1 s (the Jackson patch jar is built into the user cache, here under tmp_path)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the CLI's and the harness's
    env = {"LAKE_DATA_DIR": str(tmp_path / "d")}
    cache = tmp_path / "cache" / "iceberg_lake" / "spark-jars"
    code, out, err = _run(["engines", "spark", "--jars", "local"], env)
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert "spark.jars.packages" not in lines
    jars = [Path(p) for p in lines["spark.jars"].split(",")]
    # As testing_spark.start_spark finds them (its cache here is the CLI's: built once).
    harness = find_spark_jars(cache)
    assert [j.name for j in jars] == [j.name for j in harness.classpath]
    assert all(j.is_file() for j in jars)
    names = " ".join(j.name for j in jars)
    for expected in ("iceberg-spark-runtime-3.5_2.12-", "iceberg-shaded-jackson-", "xerial-sqlite"):
        assert expected in names
    assert jars[1].parent == cache  # the patch jar, built once there
    assert not (tmp_path / "d").exists()  # printing settings creates no lake
    java_opts = lines["spark.driver.extraJavaOptions"]
    assert java_opts == f"-Djava.library.path={harness.sqlite_jni_dir}"
    assert (harness.sqlite_jni_dir / "libsqlitejdbc.so").is_file()
    assert lines["spark.sql.catalog.lake.type"] == "jdbc"
    code, out, _ = _run(["engines", "spark", "--jars", "local", "-f", "spark-sql"], env)
    assert code == 0 and f"--jars {lines['spark.jars']} " in out and "--packages" not in out
    code, out, _ = _run(["engines", "spark", "--jars", "local", "-f", "json"], env)
    body = json.loads(out)
    assert body["jars"] == [str(j) for j in jars] and body["driver_java_options"] == java_opts


def test_postgres_and_s3_secrets_are_redacted_unless_asked() -> None:
    code, out, _ = _run(["engines", "spark", "--format", "spark-sql"], PG_ENV)
    assert code == 0 and out.startswith("spark-sql \\\n")
    assert "topsecret" not in out and "pa@ss" not in out
    assert "--conf 'spark.sql.catalog.prod.jdbc.password=***'" in out
    assert "spark.sql.catalog.prod.uri=jdbc:postgresql://db.internal:6432/lakedb" in out
    assert "spark.sql.catalog.prod.io-impl=org.apache.iceberg.aws.s3.S3FileIO" in out
    assert "iceberg-aws-bundle" in out and "org.postgresql:postgresql" in out
    code, out, _ = _run(["engines", "spark", "-f", "json", "--show-secrets"], PG_ENV)
    conf = json.loads(out)["conf"]
    assert conf["spark.sql.catalog.prod.jdbc.password"] == "pa@ss"
    assert conf["spark.sql.catalog.prod.jdbc.user"] == "lake"
    assert conf["spark.sql.catalog.prod.s3.secret-access-key"] == "topsecret"
    assert conf["spark.sql.catalog.prod.s3.path-style-access"] == "true"


def test_trino_properties() -> None:
    code, out, _ = _run(["engines", "trino"], PG_ENV)
    props = dict(line.split("=", 1) for line in out.splitlines() if not line.startswith("#"))
    assert code == 0
    assert props["connector.name"] == "iceberg"
    assert props["iceberg.catalog.type"] == "jdbc"
    assert props["iceberg.jdbc-catalog.catalog-name"] == "prod"
    assert (
        props["iceberg.jdbc-catalog.connection-url"] == "jdbc:postgresql://db.internal:6432/lakedb"
    )
    assert props["iceberg.jdbc-catalog.connection-password"] == "***"
    assert props["s3.aws-secret-key"] == "***"
    code, out, _ = _run(["engines", "trino", "--show-secrets"], PG_ENV)
    assert "s3.aws-secret-key=topsecret" in out.splitlines()


def test_a_unix_socket_catalog_is_one_clear_error() -> None:
    env = {"LAKE_CATALOG_URI": "postgresql://postgres@/postgres?host=/run/pg&port=5432"}
    code, out, err = _run(["engines", "spark"], env)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Unix socket" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("postgresql://u@h/db?sslmode=require", "jdbc:postgresql://h:5432/db?sslmode=require"),
        ("postgres://u:p@h:1/db", "jdbc:postgresql://h:1/db"),
        # spark13: every libpq parameter in its JDBC name, none dropped.
        (
            "postgresql://u@h/db?options=-csearch_path%3Ddesk2&connect_timeout=5"
            "&target_session_attrs=read-write&application_name=lake",
            "jdbc:postgresql://h:5432/db?options=-csearch_path%3Ddesk2&connectTimeout=5"
            "&targetServerType=primary&ApplicationName=lake",
        ),
    ],
)
def test_jdbc_urls(uri: str, url: str) -> None:
    settings = load_settings({"LAKE_CATALOG_URI": uri})
    assert jdbc_catalog(settings).url == url
    assert spark_catalog_conf(settings)["spark.sql.catalog.lake.uri"] == url


def test_a_catalog_parameter_jdbc_cannot_take_is_one_line_not_dropped() -> None:
    env = {"LAKE_CATALOG_URI": "postgresql://u:secret@h/db?sslpassword=s3cr3t-key"}
    code, out, err = _run(["engines", "spark"], env)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert "its parameter sslpassword has no JDBC equivalent" in err
    # review13b: the value was printed, and it may be a secret.
    assert "secret" not in err and "s3cr3t-key" not in err


def test_user_and_password_as_uri_parameters_are_the_jdbc_credentials() -> None:
    settings = load_settings({"LAKE_CATALOG_URI": "postgresql://h/db?user=bob&password=pw"})
    jdbc = jdbc_catalog(settings)
    assert (jdbc.url, jdbc.user, jdbc.password) == ("jdbc:postgresql://h:5432/db", "bob", "pw")


def test_a_relative_sqlite_catalog_is_printed_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spark13: `jdbc:sqlite:demo/catalog.db` opened another, empty catalog from any other
    directory."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"LAKE_CATALOG_URI": "sqlite:///demo/catalog.db"})
    assert jdbc_catalog(settings).url == f"jdbc:sqlite:{tmp_path / 'demo' / 'catalog.db'}"


def test_compact_engine_spark_refuses_incremental(tmp_path: Path) -> None:
    env = {"LAKE_DATA_DIR": str(tmp_path / "d")}
    result = CliRunner().invoke(app, ["compact", "--engine", "spark", "--incremental"], env=env)
    assert result.exit_code == 1 and "--date D or --all-dates" in result.stderr
