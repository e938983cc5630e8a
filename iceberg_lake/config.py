"""Settings: one frozen object read from `LAKE_*` environment variables and an optional `lake.toml`.

Precedence: environment variable > `lake.toml` (path from `LAKE_CONFIG`, else `./lake.toml` if it
exists) > default. Relative paths in the file (`data_dir`, a plain `warehouse` path, the file of a
`sqlite:///` catalog URI, the NATS credential and TLS files) are relative to the file's
directory; in a variable, to the working directory. With nothing set the
lake is embedded: data dir `./lake-data`, a SQLite catalog
file and a `file://` warehouse inside it. Every invalid value raises `ConfigError` with one line
that names the variable to fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, parse_qsl, urlencode, urlparse, urlsplit, urlunsplit

from iceberg_lake.exceptions import ConfigError

ENV_PREFIX = "LAKE_"
CONFIG_FILE_ENV = "LAKE_CONFIG"
#: Default of LAKE_LOG_LEVEL, for `Settings` and the CLI's `--log-level` alike.
DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_CONFIG_FILE = "lake.toml"

CATALOG_SCHEMES = ("sqlite", "postgresql")
WAREHOUSE_SCHEMES = ("file", "s3", "s3a")
NATS_SCHEMES = ("nats", "tls", "ws", "wss")

#: What a redacted secret is shown as.
REDACTED = "***"
#: Query parameters whose values are secrets (matched case-insensitively as substrings).
_SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "token", "key", "credential", "sig")
#: `scheme://userinfo@` anywhere in a text (an error message, a log line).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^\s/@'\"<>]+)@")


def redact_url(url: str) -> str:
    """`url` with its credentials masked, for printing and logging.

    `nats://user:pw@host:4222` becomes `nats://user:***@host:4222`; a bare userinfo (a NATS
    token, `nats://s3cr3t@host`) becomes `***`; query parameters named like a secret
    (`password`, `secret`, `token`, `key`, ...) are masked. Comma-separated lists (a NATS
    cluster) are redacted element by element. Text that is not a URL is returned unchanged.

    Args:
        url: a URL, a comma-separated list of URLs, or any string.

    Returns:
        The same text without secrets.
    """
    if "," in url and "://" in url:
        return ",".join(redact_url(part) for part in url.split(","))
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        # Everything up to the LAST `@` is user info: a password with an unencoded `/`, `?`,
        # `#` or `@` would otherwise end the parsed netloc early and be printed as the host
        # (libraries disagree on which `@` ends it; masking more than needed is the safe side).
        info, _, tail = rest.rpartition("@")
        user, colon, _ = info.partition(":")
        masked = f"{user}:{REDACTED}" if colon and "/" not in user else REDACTED
        url = f"{scheme}://{masked}@{tail}"
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        info, _, host = netloc.rpartition("@")
        user, sep, _ = info.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if sep else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret_param(k) for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if _is_secret_param(k) else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, settings: Settings | None = None) -> str:
    """`text` (an error message, a log line) with every URL's credentials masked.

    With `settings`, the literal values of its secrets (NATS password and token, S3 secret key,
    the catalog URI's password) are masked too, wherever they appear.

    Args:
        text: any text.
        settings: the settings whose secret values must not appear.

    Returns:
        The text without secrets.
    """

    def mask(match: re.Match[str]) -> str:
        user, sep, _ = match.group("info").partition(":")
        return (
            f"{match.group('scheme')}{user}:{REDACTED}@"
            if sep
            else (f"{match.group('scheme')}{REDACTED}@")
        )

    out = _USERINFO.sub(mask, text)
    if settings is not None:
        for secret in settings.secret_values():
            if len(secret) >= 3:  # masking "a" everywhere would mangle the message
                out = out.replace(secret, REDACTED)
    return out


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PARAMS)


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
    #: DuckDB's reads of the object store (Silver, `lake query`, replay): seconds without
    #: progress before a try fails, over 4 tries. DuckDB's own 30 s kept a Silver run waiting
    #: 2 minutes on a stalled store (prod17); raise it for a store slow to answer.
    s3_read_timeout_seconds: float = 5.0
    #: DuckDB's memory limit for Silver, `lake query` and replay (e.g. ``4GB``, ``512MiB``);
    #: empty = DuckDB's own, 80% of RAM. Sorts beyond it spill to `duckdb_temp_directory`.
    duckdb_memory_limit: str = ""
    #: Where DuckDB spills (empty = DuckDB's own, ``.tmp`` under the working directory, which a
    #: read-only or small working directory cannot hold).
    duckdb_temp_directory: Path | None = None
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    nats_token: str | None = field(default=None, repr=False)
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    #: JetStream domain of the streams (leaf-node set-ups); empty = the server's own JetStream.
    nats_domain: str | None = None
    #: The lake's own migrations folder, planned with the shipped one (`lake migrate`, and the
    #: pending-migration checks of `lake status`/`lake serve`).
    migrations_dir: Path | None = None
    # Micro-batches: large batches (commit CPU per row falls from 24 us at 1k rows to 1.2 us at
    # 50k: docs/ingest.md, "Throughput") and long intervals (few, large files; docs/live.md).
    # Freshness comes from the live tail (`lake query --live`), not from commits.
    bronze_batch_size: int = 50_000
    bronze_batch_seconds: float = 30.0
    gold_batch_size: int = 5_000
    gold_batch_seconds: float = 30.0
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
    #: Stream limits applied when the lake creates or updates its streams (0 = unlimited).
    #: Messages older/beyond them are discarded by the server even if no writer stored them.
    stream_max_age: float = 0.0
    stream_max_bytes: int = 0
    #: One active writer per consumer: a lease in a NATS KV bucket with this time to live.
    #: A standby takes over at most this long after the active writer died.
    writer_lease_seconds: float = 10.0
    #: On SIGTERM, how long a failing commit may keep retrying before the process exits
    #: non-zero without acking (the bus keeps the data).
    shutdown_grace_seconds: float = 10.0
    #: Bytes all pull requests of one process may have in flight together; keep it below the
    #: NATS server's max_pending (64 MB by default) or the server drops the connection.
    fetch_max_bytes: int = 32 * 1024 * 1024
    #: Level of every `lake` command (`--log-level`); `lake serve` logs its startup anyway.
    log_level: str = DEFAULT_LOG_LEVEL

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

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (for `redact`): passwords, tokens, keys."""
        values = [self.nats_password, self.nats_token, self.s3_secret_key]
        for url in (self.catalog_uri, *self.nats_url.split(",")):
            try:
                parsed = urlsplit(url.strip())
            except ValueError:
                continue
            values.append(parsed.password)
            if parsed.scheme in NATS_SCHEMES and not parsed.password:
                values.append(parsed.username)  # `nats://TOKEN@host`
        return [v for v in values if v]

    def __repr__(self) -> str:
        # URLs may carry credentials (`nats://user:pw@...`); secret fields have repr=False.
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            text = repr(redact_url(value)) if isinstance(value, str) else repr(value)
            shown.append(f"{f.name}={text}")
        return f"Settings({', '.join(shown)})"

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
    file_path, file_values = _read_config_file(env, config_file)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = env_var(f.name)
        if name in env and env[name] != "":
            values[f.name] = _coerce(f, env[name], name)
        elif f.name in file_values:
            value = _coerce(f, file_values[f.name], f"{f.name} in lake.toml")
            values[f.name] = value if file_path is None else _beside(file_path, f.name, value)
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in setting_names())
    if unknown:
        known = ", ".join(setting_names())
        raise ConfigError(f"{unknown[0]} is not a known setting (known: {known})")
    return _validate(Settings(**values))


_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*", re.IGNORECASE)
_MEMORY_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_MEMORY_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
#: Below this DuckDB fails plain queries with "Out of Memory" rather than spilling.
_MIN_MEMORY_LIMIT = 64 * 2**20


def _memory_limit(text: str) -> str:
    """`text` checked as a DuckDB memory size (``4GB``, ``512 MiB``), written as DuckDB takes it."""
    name = env_var("duckdb_memory_limit")
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"{name} must be a size such as 4GB or 512MiB (units B, KB, MB, GB, TB, KiB, MiB, "
            f"GiB, TiB), got {text!r}"
        )
    number, unit = match.groups()
    if float(number) * _MEMORY_UNITS[unit.upper()] < _MIN_MEMORY_LIMIT:
        raise ConfigError(f"{name} must be at least 64MiB, got {text!r}")
    return f"{number}{unit.upper().replace('I', 'i')}"


def _beside(file_path: Path, name: str, value: Any) -> Any:
    """A relative path of the config file made relative to the file's directory.

    A relative path in the file means beside the file, wherever the command runs
    (`LAKE_CONFIG=/etc/lake/lake.toml lake serve` from any directory): path settings, a plain
    `warehouse` path and the file of a `sqlite:///` catalog URI alike (review13).
    """
    here = file_path.absolute().parent
    if isinstance(value, Path):
        return value if value.is_absolute() else here / value
    if name == "warehouse" and value and not urlparse(value).scheme:
        path = Path(value).expanduser()
        return value if path.is_absolute() else str(here / path)
    if name == "catalog_uri" and value.startswith("sqlite:///"):
        database, query = value[len("sqlite:///") :], ""
        if "?" in database:
            database, query = database.split("?", 1)
            query = "?" + query
        if database and database != ":memory:" and not Path(database).is_absolute():
            return f"sqlite:///{here / database}{query}"
    return value


def _read_config_file(
    env: Mapping[str, str], config_file: Path | None
) -> tuple[Path | None, dict[str, Any]]:
    """The config file read (None: none) and its values."""
    path = config_file
    if path is None and env.get(CONFIG_FILE_ENV):
        path = Path(env[CONFIG_FILE_ENV])
        if not path.is_file():
            raise ConfigError(f"{CONFIG_FILE_ENV} points to {path}, which is not a file")
    if path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        if not default.is_file():
            return None, {}
        path = default
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    known = {f.name for f in dataclasses.fields(Settings)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown setting '{key}'")
    return path, data


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
        "writer_lease_seconds",
        "fetch_max_bytes",
        "s3_read_timeout_seconds",
    ):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{env_var(name)} must be positive, got {getattr(s, name)!r}")
    for name in ("stream_max_age", "stream_max_bytes", "shutdown_grace_seconds"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{env_var(name)} must be 0 or more, got {getattr(s, name)!r}")
    if 0 < s.stream_max_age < s.stream_duplicate_window_seconds:
        # JetStream refuses a duplicate window longer than max_age. Not clamped: the window is
        # the publishers' retry guarantee, and shrinking it silently would weaken it.
        raise ConfigError(
            f"{env_var('stream_max_age')} ({s.stream_max_age:g} s) must be at least "
            f"{env_var('stream_duplicate_window_seconds')} ({s.stream_duplicate_window_seconds:g} s"
            "): JetStream refuses a duplicate window longer than max age; set a shorter window "
            "or a longer max age"
        )
    if s.duckdb_memory_limit:
        changes["duckdb_memory_limit"] = _memory_limit(s.duckdb_memory_limit)
    if s.duckdb_temp_directory is not None:
        changes["duckdb_temp_directory"] = s.duckdb_temp_directory.absolute()
    if s.max_buffered_events < max(s.bronze_batch_size, s.gold_batch_size):
        raise ConfigError(
            f"{env_var('max_buffered_events')} must be at least the largest batch size"
        )

    # Normalised (`../lake`, `a//b`): the default warehouse URI is built from it, and a URI's
    # `..` components are refused. A `..` is resolved as the OS does, after the symlinks before
    # it (`link/../lake` is the lake beside the link's target; review7), the rest by text.
    data_dir = s.data_dir.expanduser().absolute()
    data_dir = Path(
        os.path.realpath(data_dir) if ".." in data_dir.parts else os.path.normpath(data_dir)
    )
    changes["data_dir"] = data_dir
    if not s.catalog_uri or not s.warehouse:
        _check_data_dir(data_dir)  # the catalog file or the warehouse lives in it

    catalog_uri = s.catalog_uri or f"sqlite:///{data_dir / 'catalog.db'}"
    scheme = _parse_url(catalog_uri, "LAKE_CATALOG_URI").scheme
    base = scheme.split("+", 1)[0]
    if base == "postgres":
        base, catalog_uri = "postgresql", "postgresql" + catalog_uri[len("postgres") :]
    if base not in CATALOG_SCHEMES:
        raise ConfigError(
            f"LAKE_CATALOG_URI has unsupported scheme '{scheme}' (use sqlite:/// or postgresql://)"
        )
    _check_port(catalog_uri, "LAKE_CATALOG_URI")
    if base == "postgresql" and "+" not in catalog_uri.split("://", 1)[0]:
        catalog_uri = "postgresql+psycopg2" + catalog_uri[len("postgresql") :]
    _check_catalog_driver(catalog_uri)
    changes["catalog_uri"] = catalog_uri

    warehouse = s.warehouse or (data_dir / "warehouse").as_uri()
    parsed = _parse_url(warehouse, "LAKE_WAREHOUSE")
    if parsed.scheme == "":
        # A plain path is the user's own spelling: normalised (`a/../b`, `a//b`), not refused.
        warehouse = Path(os.path.normpath(Path(warehouse).expanduser().absolute())).as_uri()
        parsed = _parse_url(warehouse, "LAKE_WAREHOUSE")
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
    # Object keys are built by joining names onto this path: an empty, `.` or `..` component
    # would name another place than the one shown (or no valid key at all).
    parts = parsed.path.rstrip("/").split("/")[1:]
    if any(part in ("", ".", "..") for part in parts):
        raise ConfigError(
            f"LAKE_WAREHOUSE has an empty, '.' or '..' path component: {redact_url(warehouse)!r} "
            "(write the path plainly, e.g. s3://lake/warehouse)"
        )
    changes["warehouse"] = warehouse.rstrip("/")

    if s.s3_endpoint:
        if _parse_url(s.s3_endpoint, "LAKE_S3_ENDPOINT").scheme not in ("http", "https"):
            raise ConfigError(
                f"LAKE_S3_ENDPOINT must be an http(s):// URL, got {redact_url(s.s3_endpoint)!r}"
            )
        _check_port(s.s3_endpoint, "LAKE_S3_ENDPOINT")
    for url in s.nats_url.split(","):
        if _parse_url(url.strip(), "LAKE_NATS_URL").scheme not in NATS_SCHEMES:
            raise ConfigError(
                f"LAKE_NATS_URL must be a nats:// or tls:// URL, got {redact_url(url.strip())!r}"
            )
        _check_port(url.strip(), "LAKE_NATS_URL")
    if s.nats_creds is not None and not s.nats_creds.is_file():
        raise ConfigError(f"LAKE_NATS_CREDS points to {s.nats_creds}, which is not a file")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"LAKE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}"
        )
    changes["log_level"] = s.log_level.upper()
    return dataclasses.replace(s, **changes)


def _parse_url(url: str, variable: str) -> ParseResult:
    """`urlparse(url)`, but a malformed URL (`nats://[::1`) is a `ConfigError` naming `variable`.

    `urlparse` raises a bare `ValueError` for an unbalanced IPv6 bracket or an invalid netloc;
    the URL in the message is redacted (it may carry a password).
    """
    try:
        return urlparse(url)
    except ValueError as exc:
        raise ConfigError(f"{variable} is not a valid URL ({exc}): {redact_url(url)}") from None


def _check_catalog_driver(catalog_uri: str) -> None:
    """Refuse a `LAKE_CATALOG_URI` whose database driver is unknown or not installed.

    Without this, the first command to open the catalog failed with "internal error:
    ModuleNotFoundError" (`postgresql+psycopg://`, psycopg 3 not being installed).
    """
    import sqlalchemy as sa

    scheme = catalog_uri.split("://", 1)[0]
    try:
        sa.engine.make_url(catalog_uri).get_dialect().import_dbapi()
    except sa.exc.NoSuchModuleError:
        raise ConfigError(
            f"LAKE_CATALOG_URI names an unknown database driver '{scheme}' "
            "(use sqlite:/// or postgresql://)"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"LAKE_CATALOG_URI: the driver of '{scheme}' is not installed ({exc.name}); "
            "postgresql:// uses psycopg2, which the lake installs"
        ) from None


def _check_port(url: str, variable: str) -> None:
    """A URL's port, if any, must be a number in 1..65535 (else `ConfigError`, URL redacted).

    User info with an unencoded `/`, `?`, `#` or `@` (a password taken from a secret store as
    is) is refused too: parsers split such a URL differently, so the host, port and password
    would be guesses (and the password could end up printed as a host name).
    """
    _, sep, rest = url.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if sep and "@" in rest:
        # Two `@` in the authority, or an `@` after a `/`, `?` or `#` that ended it at a
        # "port" that is no number (`lake:Pa/ss@host`): a password that needs encoding.
        doubled = netloc.count("@") > 1
        cut = "@" not in netloc and not _port_ok(netloc)
        if doubled or cut:
            raise ConfigError(
                f"{variable}: percent-encode the user name and password (/ as %2F, @ as %40, "
                f"? as %3F, # as %23): {redact_url(url)}"
            )
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError:
        raise ConfigError(
            f"{variable} has an invalid port (must be a number 1-65535): {redact_url(url)}"
        ) from None
    if port == 0:
        raise ConfigError(f"{variable} has port 0: {redact_url(url)}")


def _port_ok(netloc: str) -> bool:
    """Whether `host[:port]` has no port or a numeric one."""
    try:
        return urlsplit(f"x://{netloc}").port is not None or ":" not in netloc
    except ValueError:
        return False


def _check_data_dir(data_dir: Path) -> None:
    """The data directory must be a directory we can write, or creatable (else `ConfigError`)."""
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link cannot be created through
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == data_dir else f" ({existing} is not a directory)"
        raise ConfigError(f"LAKE_DATA_DIR={data_dir} is not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == data_dir else f"cannot be created in {existing}"
        raise ConfigError(f"LAKE_DATA_DIR={data_dir} {what} (permission denied)")
