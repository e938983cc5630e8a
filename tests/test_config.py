"""Settings: defaults, precedence, and one clear error naming the variable."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from iceberg_lake.config import load_settings, redact_url, setting_names
from iceberg_lake.exceptions import ConfigError


def test_embedded_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    s = load_settings({"LAKE_DATA_DIR": str(tmp_path / "d")})
    assert s.data_dir == tmp_path / "d"
    assert s.catalog_uri == f"sqlite:///{tmp_path / 'd' / 'catalog.db'}"
    assert s.warehouse == (tmp_path / "d" / "warehouse").as_uri()
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert (s.bronze_batch_size, s.bronze_batch_seconds) == (50_000, 30.0)
    assert (s.gold_batch_size, s.gold_batch_seconds) == (5_000, 30.0)
    assert not s.is_s3


def test_default_data_dir_is_lake_data_in_the_working_directory() -> None:
    s = load_settings({})
    assert s.data_dir == Path.cwd() / "lake-data"


def test_environment_overrides_the_toml_file(tmp_path: Path) -> None:
    cfg = tmp_path / "lake.toml"
    cfg.write_text('bronze_batch_size = 50\nnats_url = "nats://10.0.0.1:4222"\n')
    s = load_settings({"LAKE_CONFIG": str(cfg), "LAKE_BRONZE_BATCH_SIZE": "7"})
    assert s.bronze_batch_size == 7
    assert s.nats_url == "nats://10.0.0.1:4222"


def test_a_relative_path_in_the_toml_file_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LAKE_CONFIG=/etc/lake/lake.toml` with `data_dir = "data"` is the same lake from every
    working directory; a relative `LAKE_DATA_DIR` stays relative to the working directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "lake.creds").write_text("creds")
    cfg = tmp_path / "etc" / "lake.toml"
    cfg.write_text('data_dir = "data"\nnats_creds = "../secrets/lake.creds"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    s = load_settings({"LAKE_CONFIG": str(cfg)})
    assert s.data_dir == tmp_path / "etc" / "data"
    assert s.catalog_uri == f"sqlite:///{tmp_path / 'etc' / 'data' / 'catalog.db'}"
    assert s.nats_creds == tmp_path / "etc" / ".." / "secrets" / "lake.creds"
    # ./lake.toml (found in the working directory) resolves the same way.
    monkeypatch.chdir(tmp_path / "etc")
    assert load_settings({}).data_dir == tmp_path / "etc" / "data"
    # A plain warehouse path and a SQLite catalog file too (review13: they followed the
    # working directory, so `lake init` put tables wherever it ran).
    cfg.write_text('data_dir = "data"\nwarehouse = "wh"\ncatalog_uri = "sqlite:///cat.db"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    s = load_settings({"LAKE_CONFIG": str(cfg)})
    assert s.warehouse == (tmp_path / "etc" / "wh").as_uri()
    assert s.catalog_uri == f"sqlite:///{tmp_path / 'etc' / 'cat.db'}"
    # A variable is the operator's own: relative to where the command runs.
    monkeypatch.chdir(tmp_path / "elsewhere")
    env = {"LAKE_CONFIG": str(cfg), "LAKE_DATA_DIR": "mine"}
    assert load_settings(env).data_dir == tmp_path / "elsewhere" / "mine"


def test_postgres_uri_gets_the_psycopg2_driver() -> None:
    s = load_settings({"LAKE_CATALOG_URI": "postgresql://u:p@db:5432/lake"})
    assert s.catalog_uri == "postgresql+psycopg2://u:p@db:5432/lake"


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("postgresql+psycopg://u:secret@db:5432/lake", "driver of 'postgresql+psycopg' is not"),
        ("postgresql+nodriver://u:secret@db:5432/lake", "unknown database driver"),
    ],
)
def test_a_catalog_driver_that_is_missing_is_a_config_error(uri: str, says: str) -> None:
    if "psycopg:" in uri:
        assert importlib.util.find_spec("psycopg") is None, "psycopg 3 is installed: pick another"
    with pytest.raises(ConfigError, match=re.escape(says)) as err:
        load_settings({"LAKE_CATALOG_URI": uri})
    assert "secret" not in str(err.value)


def test_a_relative_data_dir_with_dotdot_gives_a_normalised_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LAKE_DATA_DIR=../lake` (review6): the default warehouse URI is built from the data dir
    and URIs with `..` are refused, so the data dir is normalised first."""
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    s = load_settings({"LAKE_DATA_DIR": "../lake"})
    lake = (tmp_path / "lake").resolve()
    assert s.data_dir == lake
    assert s.warehouse == (lake / "warehouse").as_uri()
    assert s.catalog_uri == f"sqlite:///{lake / 'catalog.db'}"
    # `..` after a symlink is the OS's: beside the link's target, not beside the link (review7).
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "sub" / "link").symlink_to(tmp_path / "real" / "inner")
    linked = load_settings({"LAKE_DATA_DIR": "link/../lake"})
    assert linked.data_dir == (tmp_path / "real" / "lake").resolve()


def test_s3_warehouse_produces_pyiceberg_s3_properties() -> None:
    s = load_settings(
        {
            "LAKE_WAREHOUSE": "s3://lake/wh",
            "LAKE_S3_ENDPOINT": "http://127.0.0.1:9000",
            "LAKE_S3_ACCESS_KEY": "ak",
            "LAKE_S3_SECRET_KEY": "sk",
        }
    )
    props = s.catalog_properties()
    assert s.is_s3
    assert props["s3.endpoint"] == "http://127.0.0.1:9000"
    assert props["s3.access-key-id"] == "ak" and props["s3.secret-access-key"] == "sk"
    assert "sk" not in repr(s), "secrets must not appear in the settings repr"


@pytest.mark.parametrize("warehouse", ["s3://lake//wh", "s3://lake/a/../wh", "file:///tmp/./wh"])
def test_a_warehouse_url_with_empty_dot_or_dotdot_components_is_refused(warehouse: str) -> None:
    """`s3://b//x` failed deep in pyarrow ("internal error") and `s3://b/a/../b` with
    ACCESS_DENIED (found by the production chaos audit)."""
    env = {"LAKE_WAREHOUSE": warehouse, "LAKE_S3_ACCESS_KEY": "ak", "LAKE_S3_SECRET_KEY": "sk"}
    with pytest.raises(ConfigError, match="LAKE_WAREHOUSE has an empty, '.' or '..' path"):
        load_settings(env)


def test_a_plain_warehouse_path_is_normalised(tmp_path: Path) -> None:
    s = load_settings({"LAKE_WAREHOUSE": f"{tmp_path}/a/..//wh/"})
    assert s.warehouse == (tmp_path / "wh").as_uri()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"LAKE_CATALOG_URI": "mysql://x/y"}, "LAKE_CATALOG_URI"),
        ({"LAKE_WAREHOUSE": "hdfs://nn/wh"}, "LAKE_WAREHOUSE"),
        ({"LAKE_WAREHOUSE": "s3://bucket/wh"}, "LAKE_S3_ACCESS_KEY"),
        ({"LAKE_BRONZE_BATCH_SIZE": "0"}, "LAKE_BRONZE_BATCH_SIZE"),
        ({"LAKE_GOLD_BATCH_SIZE": "-3"}, "LAKE_GOLD_BATCH_SIZE"),
        ({"LAKE_BRONZE_BATCH_SECONDS": "soon"}, "LAKE_BRONZE_BATCH_SECONDS"),
        ({"LAKE_NATS_URL": "http://x:4222"}, "LAKE_NATS_URL"),
        ({"LAKE_NATS_CREDS": "/nonexistent/x.creds"}, "LAKE_NATS_CREDS"),
        ({"LAKE_BATCH_SIZ": "5"}, "LAKE_BATCH_SIZ"),
        ({"LAKE_DUCKDB_MEMORY_LIMIT": "80%"}, "LAKE_DUCKDB_MEMORY_LIMIT"),
        ({"LAKE_DUCKDB_MEMORY_LIMIT": "4096"}, "LAKE_DUCKDB_MEMORY_LIMIT"),
        ({"LAKE_DUCKDB_MEMORY_LIMIT": "10MB"}, "LAKE_DUCKDB_MEMORY_LIMIT"),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    message = str(info.value)
    assert variable in message
    assert "\n" not in message


def test_setting_names_cover_the_documented_variables() -> None:
    documented = {
        "LAKE_DATA_DIR", "LAKE_CATALOG_URI", "LAKE_WAREHOUSE", "LAKE_S3_ENDPOINT",
        "LAKE_S3_ACCESS_KEY", "LAKE_S3_SECRET_KEY", "LAKE_S3_REGION", "LAKE_NATS_URL",
        "LAKE_NATS_USER", "LAKE_NATS_PASSWORD", "LAKE_NATS_TOKEN", "LAKE_NATS_CREDS",
    }  # fmt: skip
    assert documented <= set(setting_names())


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("LAKE_CATALOG_URI", "postgresql://lake:Pa/Sec9ret@127.0.0.1:5432/lake"),
        ("LAKE_CATALOG_URI", "postgresql://lake:Pa@Sec9ret@127.0.0.1:1/lake"),
        ("LAKE_NATS_URL", "nats://lake:Na/Sec9ret@127.0.0.1:4222"),
        ("LAKE_NATS_URL", "nats://lake:Na?Sec9ret@127.0.0.1:4222"),
    ],
)
def test_a_password_that_needs_encoding_is_one_line_without_it(variable: str, url: str) -> None:
    """Parsers split such a URL at different places (the password would be printed as a host
    name by the driver): refused, the message masks everything up to the last `@`."""
    with pytest.raises(ConfigError, match="percent-encode") as info:
        load_settings({variable: url})
    assert "Sec9ret" not in str(info.value) and "\n" not in str(info.value)
    assert redact_url(url).count("Sec9ret") == 0


def test_an_at_sign_after_the_host_is_not_user_info() -> None:
    """`@` in a path or query of a URL without (or with well-formed) credentials is legal."""
    for url in ("postgresql://h:5432/db?x=a@b", "postgresql://u:p@h/db?options=a@b"):
        assert load_settings({"LAKE_CATALOG_URI": url}).catalog_uri.endswith("a@b")


def test_a_lake_whose_files_are_elsewhere_leaves_no_data_dir_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """newuser13: `lake init` with the catalog and the warehouse named in lake.toml put the
    lake there, and an empty ./lake-data wherever it ran."""
    from iceberg_lake.catalog import LakeCatalog

    (tmp_path / "etc").mkdir()
    (tmp_path / "run").mkdir()
    cfg = tmp_path / "etc" / "lake.toml"
    cfg.write_text('catalog_uri = "sqlite:///cat/catalog.db"\nwarehouse = "wh"\n')
    monkeypatch.chdir(tmp_path / "run")
    LakeCatalog(load_settings({"LAKE_CONFIG": str(cfg)})).init()
    assert (tmp_path / "etc" / "cat" / "catalog.db").is_file()
    assert (tmp_path / "etc" / "wh").is_dir()
    assert list((tmp_path / "run").iterdir()) == []
