"""Settings: one frozen object read from `LAKE_*` environment variables and an optional `lake.toml`.

Precedence: environment variable > `lake.toml` (path from `LAKE_CONFIG`, else `./lake.toml` if it
exists) > default. With nothing set the lake is embedded: data dir `./lake-data`, a SQLite catalog
file and a `file://` warehouse inside it. Every invalid value raises `ConfigError` with one line
that names the variable to fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from iceberg_lake.exceptions import ConfigError

ENV_PREFIX = "LAKE_"
CONFIG_FILE_ENV = "LAKE_CONFIG"
DEFAULT_CONFIG_FILE = "lake.toml"

CATALOG_SCHEMES = ("sqlite", "postgresql")
WAREHOUSE_SCHEMES = ("file", "s3", "s3a")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")


@dataclass(frozen=True)
class Settings:
    """Everything the lake needs to know about its environment.

    Attribute `x` is set by environment variable `LAKE_X` or key `x` in `lake.toml`.
    """

    data_dir: Path = Path("lake-data")
    catalog_name: str = "lake"
    catalog_uri: str = ""
    warehouse: str = ""
    s3_endpoint: str | None = None
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_region: str = "us-east-1"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_token: str | None = field(default=None, repr=False)
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    bronze_batch_size: int = 1000
    bronze_batch_seconds: float = 5.0
    gold_batch_size: int = 500
    gold_batch_seconds: float = 10.0
    max_buffered_events: int = 200_000
    # Time travel (docs/time-travel.md, "Retention"): every snapshot is kept for the window;
    # closed hours are kept as checkpoint tags, replays pin what they read.
    bronze_snapshot_retention_seconds: float = 21600.0
    gold_snapshot_retention_seconds: float = 21600.0
    silver_snapshot_retention_seconds: float = 21600.0
    snapshot_max_count: int = 10000
    checkpoint_max_age_days: float = 30.0
    replay_pin_max_age_days: float = 90.0
    stream_duplicate_window_seconds: float = 120.0
    log_level: str = "INFO"

    @property
    def is_s3(self) -> bool:
        """True when the warehouse lives on an S3-compatible object store."""
        return urlparse(self.warehouse).scheme in ("s3", "s3a")

    def catalog_properties(self) -> dict[str, str]:
        """Properties for pyiceberg's `SqlCatalog` (URI, warehouse, S3 access)."""
        props = {"uri": self.catalog_uri, "warehouse": self.warehouse, "pool_pre_ping": "true"}
        if self.s3_endpoint:
            props["s3.endpoint"] = self.s3_endpoint
        if self.s3_access_key:
            props["s3.access-key-id"] = self.s3_access_key
        if self.s3_secret_key:
            props["s3.secret-access-key"] = self.s3_secret_key
        if self.is_s3 or self.s3_endpoint:
            props["s3.region"] = self.s3_region
        return props

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy with some settings replaced (used by tests and `lake demo`)."""
        return _validate(dataclasses.replace(self, **changes))


def env_var(name: str) -> str:
    """The environment variable that sets attribute `name` of `Settings`."""
    return ENV_PREFIX + name.upper()


def setting_names() -> list[str]:
    """Every `LAKE_*` variable the lake understands (used to check deployment files)."""
    return sorted([env_var(f.name) for f in dataclasses.fields(Settings)] + [CONFIG_FILE_ENV])


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Settings:
    """Read settings from the environment and the optional TOML file.

    Args:
        environ: variables to read (default `os.environ`).
        config_file: TOML file to read (default `$LAKE_CONFIG`, else `./lake.toml` if present).

    Returns:
        The validated settings.

    Raises:
        ConfigError: a value is malformed or the combination is incomplete.
    """
    env = os.environ if environ is None else environ
    file_values = _read_config_file(env, config_file)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = env_var(f.name)
        if name in env and env[name] != "":
            values[f.name] = _coerce(f, env[name], name)
        elif f.name in file_values:
            values[f.name] = _coerce(f, file_values[f.name], f"{f.name} in lake.toml")
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in setting_names())
    if unknown:
        known = ", ".join(setting_names())
        raise ConfigError(f"{unknown[0]} is not a known setting (known: {known})")
    return _validate(Settings(**values))


def _read_config_file(env: Mapping[str, str], config_file: Path | None) -> dict[str, Any]:
    path = config_file
    if path is None and env.get(CONFIG_FILE_ENV):
        path = Path(env[CONFIG_FILE_ENV])
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV} points to {path}, which is not a file")
    if path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        if not default.is_file():
            return {}
        path = default
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(Settings)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown setting '{key}'")
    return data


def _coerce(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    kind = str(f.type)
    converters: dict[str, Callable[[Any], Any]] = {
        "int": int,
        "float": float,
        "Path": lambda v: Path(str(v)).expanduser(),
        "Path | None": lambda v: Path(str(v)).expanduser(),
    }
    convert = converters.get(kind, str)
    try:
        value = convert(raw)
    except (TypeError, ValueError):
        expected = {"int": "an integer", "float": "a number"}.get(kind, "a value")
        raise ConfigError(f"{source} must be {expected}, got {raw!r}") from None
    if kind == "float" and not math.isfinite(value):
        raise ConfigError(f"{source} must be a finite number, got {raw!r}")
    return value


def _validate(s: Settings) -> Settings:
    changes: dict[str, Any] = {}
    for name in (
        "bronze_batch_size",
        "gold_batch_size",
        "max_buffered_events",
        "bronze_batch_seconds",
        "gold_batch_seconds",
        "bronze_snapshot_retention_seconds",
        "gold_snapshot_retention_seconds",
        "silver_snapshot_retention_seconds",
        "snapshot_max_count",
        "checkpoint_max_age_days",
        "replay_pin_max_age_days",
        "stream_duplicate_window_seconds",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{env_var(name)} must be positive, got {getattr(s, name)!r}")
    if s.max_buffered_events < max(s.bronze_batch_size, s.gold_batch_size):
        raise ConfigError(
            f"{env_var('max_buffered_events')} must be at least the largest batch size"
        )

    data_dir = s.data_dir.expanduser().absolute()
    changes["data_dir"] = data_dir

    catalog_uri = s.catalog_uri or f"sqlite:///{data_dir / 'catalog.db'}"
    scheme = urlparse(catalog_uri).scheme
    base = scheme.split("+", 1)[0]
    if base == "postgres":
        base, catalog_uri = "postgresql", "postgresql" + catalog_uri[len("postgres") :]
    if base not in CATALOG_SCHEMES:
        raise ConfigError(
            f"LAKE_CATALOG_URI has unsupported scheme '{scheme}' (use sqlite:/// or postgresql://)"
        )
    if base == "postgresql" and "+" not in catalog_uri.split("://", 1)[0]:
        catalog_uri = "postgresql+psycopg2" + catalog_uri[len("postgresql") :]
    changes["catalog_uri"] = catalog_uri

    warehouse = s.warehouse or (data_dir / "warehouse").as_uri()
    parsed = urlparse(warehouse)
    if parsed.scheme == "":
        warehouse = Path(warehouse).expanduser().absolute().as_uri()
        parsed = urlparse(warehouse)
    if parsed.scheme not in WAREHOUSE_SCHEMES:
        raise ConfigError(
            f"LAKE_WAREHOUSE has unsupported scheme '{parsed.scheme}' (use file:// or s3://)"
        )
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise ConfigError("LAKE_WAREHOUSE must name a bucket, e.g. s3://lake/warehouse")
        for name in ("s3_access_key", "s3_secret_key"):
            if not getattr(s, name):
                raise ConfigError(f"{env_var(name)} is required for an s3:// LAKE_WAREHOUSE")
    changes["warehouse"] = warehouse.rstrip("/")

    if s.s3_endpoint and urlparse(s.s3_endpoint).scheme not in ("http", "https"):
        raise ConfigError(f"LAKE_S3_ENDPOINT must be an http(s):// URL, got {s.s3_endpoint!r}")
    for url in s.nats_url.split(","):
        if urlparse(url.strip()).scheme not in NATS_SCHEMES:
            raise ConfigError(f"LAKE_NATS_URL must be a nats:// or tls:// URL, got {url.strip()!r}")
    if s.nats_creds is not None and not s.nats_creds.is_file():
        raise ConfigError(f"LAKE_NATS_CREDS points to {s.nats_creds}, which is not a file")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"LAKE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}"
        )
    changes["log_level"] = s.log_level.upper()
    return dataclasses.replace(s, **changes)
