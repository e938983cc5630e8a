"""DuckDB connections with the Iceberg, Avro and httpfs extensions, loaded offline.

DuckDB normally downloads extensions on first ``LOAD``; this machine (and many locked-down hosts)
cannot. The extensions ship as PyPI wheels (``duckdb-extension-<name>``) whose version must equal
``duckdb.__version__``. :func:`connect` installs them from the wheel files (once per process) and
loads them, so every connection it returns can run ``iceberg_scan`` and read ``s3://`` objects.

Example::

    from iceberg_lake.engine import duck

    con = duck.connect()
    duck.configure_s3(con, "http://127.0.0.1:8333", "AK", "SK", "us-east-1")
    con.sql("SELECT count(*) FROM iceberg_scan('s3://bucket/t/metadata/v3.metadata.json')")
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlparse, urlsplit

import duckdb

from iceberg_lake.exceptions import ConfigError

if TYPE_CHECKING:
    from iceberg_lake.config import Settings

__all__ = [
    "EXTENSIONS",
    "DuckSession",
    "READ_ONLY_STATEMENTS",
    "SandboxError",
    "TableRefs",
    "check_read_only",
    "configure_s3",
    "connect",
    "connect_lake",
    "drop_views",
    "duckdb_path",
    "extension_path",
    "quote_ident",
    "quote_str",
    "referenced_tables",
    "sandbox",
    "set_resources",
    "uses_object_store",
    "timestamptz_literal",
]

#: Extensions loaded by :func:`connect`, in load order (``iceberg`` needs ``avro``).
EXTENSIONS: tuple[str, ...] = ("avro", "httpfs", "iceberg")

_install_lock = threading.Lock()
_installed: set[str] = set()


def extension_path(name: str) -> Path:
    """Return the extension file shipped by the ``duckdb-extension-<name>`` wheel.

    Args:
        name: Extension name, e.g. ``"iceberg"``.

    Returns:
        Path of ``<name>.duckdb_extension`` for the running DuckDB version.

    Raises:
        RuntimeError: If the wheel is not installed or was built for another DuckDB version.
    """
    module_name = f"duckdb_extension_{name}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"DuckDB extension {name!r} is not installed: pip install "
            f"duckdb-extension-{name}=={duckdb.__version__}"
        ) from exc
    assert module.__file__ is not None
    path = (
        Path(module.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / f"{name}.duckdb_extension"
    )
    if not path.is_file():
        raise RuntimeError(
            f"{module_name} has no extension for DuckDB {duckdb.__version__} (looked for {path}); "
            f"install duckdb-extension-{name}=={duckdb.__version__}"
        )
    return path


def _install(con: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> None:
    """INSTALL each extension from its wheel once per process (copies it to DuckDB's dir)."""
    with _install_lock:
        for name in names:
            if name not in _installed:
                con.execute(f"INSTALL {quote_str(str(extension_path(name)))}")
                _installed.add(name)


def connect(
    database: str | Path = ":memory:",
    *,
    extensions: tuple[str, ...] = EXTENSIONS,
    read_only: bool = False,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection with the lake's extensions loaded, without network access.

    Automatic extension *installation* is switched off on the connection, so a query that needs
    a missing extension fails at once instead of trying to download it.

    Args:
        database: Database file, or ``":memory:"`` (default).
        extensions: Extensions to install from their wheels and load, in order.
        read_only: Open ``database`` read-only.

    Returns:
        The connection, with ``extensions`` loaded.
    """
    con = duckdb.connect(str(database), read_only=read_only)
    try:
        con.execute("SET autoinstall_known_extensions = false")
        _install(con, extensions)
        for name in extensions:
            con.execute(f"LOAD {name}")
    except BaseException:
        con.close()
        raise
    return con


def configure_s3(
    con: duckdb.DuckDBPyConnection,
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    *,
    name: str = "lake_s3",
) -> None:
    """Create (or replace) a DuckDB S3 secret for an S3-compatible endpoint.

    Path-style URLs are used (``http://host:port/bucket/key``), which SeaweedFS and MinIO need;
    SSL is off for ``http://`` endpoints.

    Args:
        con: Connection with ``httpfs`` loaded (see :func:`connect`).
        endpoint: ``http://host:port`` or ``https://host:port``; a bare ``host:port`` means https.
        access_key: S3 access key id.
        secret_key: S3 secret access key.
        region: S3 region (any value for SeaweedFS).
        name: Secret name; a secret of that name is replaced.
    """
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"S3 endpoint must look like http://host:port, got {endpoint!r}")
    use_ssl = "true" if parts.scheme == "https" else "false"
    if not name.isidentifier():
        raise ValueError(f"secret name must be an identifier, got {name!r}")
    con.execute(
        f"CREATE OR REPLACE SECRET {name} ("
        f"TYPE s3, KEY_ID {quote_str(access_key)}, SECRET {quote_str(secret_key)}, "
        f"REGION {quote_str(region)}, ENDPOINT {quote_str(parts.netloc)}, "
        f"URL_STYLE 'path', USE_SSL {use_ssl})"
    )


def uses_object_store(settings: Settings) -> bool:
    """Whether the lake's files live on an object store (so DuckDB needs httpfs and a secret)."""
    return settings.is_s3 or bool(settings.s3_endpoint)


def connect_lake(
    settings: Settings, *, extensions: tuple[str, ...] = (), time_zone: str | None = None
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection that can read the lake's warehouse described by `settings`.

    The one place that sets DuckDB up for the warehouse: for an object store (see
    :func:`uses_object_store`) ``httpfs`` is added to `extensions` and the S3 secret is created
    from the ``LAKE_S3_*`` settings (AWS when no endpoint is set); a local warehouse gets only
    `extensions` (loading httpfs costs ~0.2 s per connection).

    Args:
        settings: The lake's settings.
        extensions: Extensions needed besides httpfs, e.g. ``("avro", "iceberg")``; loaded in
            :data:`EXTENSIONS` order.
        time_zone: ``SET TimeZone`` to this (e.g. ``"UTC"``); None keeps DuckDB's default.

    Returns:
        The connection; the caller closes it.
    """
    wanted = set(extensions)
    if uses_object_store(settings):
        wanted.add("httpfs")
    ordered = tuple(n for n in EXTENSIONS if n in wanted) + tuple(
        n for n in extensions if n not in EXTENSIONS
    )
    con = connect(extensions=ordered)
    try:
        if "httpfs" in wanted:
            configure_s3(
                con,
                settings.s3_endpoint or "https://s3.amazonaws.com",
                settings.s3_access_key or "",
                settings.s3_secret_key or "",
                settings.s3_region,
            )
            # DuckDB takes whole seconds.
            seconds = max(1, round(settings.s3_read_timeout_seconds))
            con.execute(f"SET http_timeout = {seconds}")
        set_resources(con, settings)
        if time_zone is not None:
            con.execute(f"SET TimeZone = {quote_str(time_zone)}")
    except BaseException:
        con.close()
        raise
    return con


def set_resources(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Apply ``LAKE_DUCKDB_MEMORY_LIMIT`` and ``LAKE_DUCKDB_TEMP_DIRECTORY`` to `con`.

    The spill directory is created here, so a path that cannot be one fails before any read
    rather than in the middle of a sort that spills.

    Raises:
        ConfigError: the spill directory cannot be created.
    """
    if settings.duckdb_memory_limit:
        con.execute(f"SET memory_limit = {quote_str(settings.duckdb_memory_limit)}")
    directory = settings.duckdb_temp_directory
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"LAKE_DUCKDB_TEMP_DIRECTORY {directory} cannot be created: {exc.strerror or exc}"
            ) from None
        con.execute(f"SET temp_directory = {quote_str(str(directory))}")


class DuckSession:
    """One DuckDB database shared by worker threads (each worker takes a cursor); Silver's.

    Plain Parquet reads need no extension (httpfs for S3); the Iceberg reader, needed only for
    partitions with delete files, is loaded on first use: loading it costs a few hundred
    milliseconds that most runs do not need.

    Args:
        settings: the lake's settings (the warehouse to read, see `connect_lake`).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._con: duckdb.DuckDBPyConnection | None = None
        self._iceberg_loaded = False
        self._lock = threading.Lock()

    def cursor(self, *, iceberg: bool = False, utc: bool = False) -> duckdb.DuckDBPyConnection:
        """A new cursor of the shared database (the caller closes it).

        Args:
            iceberg: load the Iceberg reader (`iceberg_scan`) first.
            utc: ``SET TimeZone = 'UTC'`` on the cursor.
        """
        with self._lock:
            if self._con is None:
                self._con = connect_lake(self._settings)
                # A run reads each Bronze file once: DuckDB's cache of file blocks only held
                # memory, growing with every file (+78 MB per 1,000; 1.9 GB RSS over 14,000
                # partitions of 20 rows, silver18).
                self._con.execute("SET enable_external_file_cache = false")
            if iceberg and not self._iceberg_loaded:
                extra = connect(extensions=("avro", "iceberg"))  # installs from the wheels
                extra.close()
                self._con.execute("LOAD avro")
                self._con.execute("LOAD iceberg")
                self._iceberg_loaded = True
            cur = self._con.cursor()
        if utc:
            try:
                cur.execute("SET TimeZone = 'UTC'")
            except BaseException:
                cur.close()
                raise
        return cur

    def close(self) -> None:
        """Close the database (a later `cursor()` opens a new one)."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
                self._iceberg_loaded = False


def quote_str(value: str) -> str:
    """Quote ``value`` as a DuckDB string literal."""
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """Quote a column or table name for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def duckdb_path(uri: str) -> str:
    """A location DuckDB can open: ``file:`` URIs become local paths, ``s3a://`` becomes ``s3://``.

    The path is kept exactly as written: pyiceberg (and Java Iceberg) take the characters of a
    location literally, so a partition directory of symbol ``A/B`` is named ``symbol=A%2FB`` on
    disk and in S3 keys, and a ``%20`` in the warehouse URI is a directory named ``%20``.
    Percent-decoding here would name a different file. DuckDB itself opens such paths as given
    (no decoding, locally or over S3: `tests/engine/test_duck_paths_guard.py`); partition escapes
    never contain the glob characters ``* ? [``.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return parsed.path
    if parsed.scheme == "s3a":
        return "s3://" + uri[len("s3a://") :]
    return uri


def timestamptz_literal(us: int) -> str:
    """A DuckDB ``TIMESTAMPTZ`` literal for Unix microseconds (exact, no float rounding)."""
    from datetime import UTC, datetime, timedelta

    value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    return f"TIMESTAMPTZ '{value.isoformat()}'"


# ---- sandbox ----------------------------------------------------------------------------------

#: Statement types a sandboxed query may run: reads only (`SHOW`, `DESCRIBE`, `SUMMARIZE`,
#: `VALUES`, `FROM t` and `PRAGMA` table functions parse as SELECT).
READ_ONLY_STATEMENTS: frozenset[duckdb.StatementType] = frozenset(
    {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
)


class SandboxError(ValueError):
    """A statement a sandboxed connection refuses (the caller turns it into a lake error)."""


def sandbox(con: duckdb.DuckDBPyConnection, allowed: list[str]) -> None:
    """Turn off DuckDB's access to files, the network and extensions, except `allowed`.

    After this the connection can read only below the `allowed` directories (local paths or
    ``s3://bucket/prefix/`` URLs): ``read_csv('/etc/passwd')``, ``COPY … TO '/tmp/x'``,
    ``ATTACH``, ``INSTALL``/``LOAD`` and ``glob`` elsewhere fail with a permission error, and the
    configuration is locked so SQL cannot switch it back. Extensions, secrets and views created
    before stay usable. Writing *into* an allowed directory is still possible at this level:
    `check_read_only` refuses the statements that write.

    Args:
        con: the connection (extensions loaded, S3 secret created).
        allowed: directories the connection may still read.
    """
    dirs = ", ".join(quote_str(d if d.endswith("/") else d + "/") for d in allowed)
    con.execute(f"SET allowed_directories = [{dirs}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse SQL that is not purely a read (`COPY`, `ATTACH`, `CREATE`, `SET`, `EXPORT`, …).

    Raises:
        SandboxError: a statement is not in `READ_ONLY_STATEMENTS`.
        duckdb.Error: the SQL does not parse.
    """
    for statement in con.extract_statements(sql):
        if statement.type not in READ_ONLY_STATEMENTS:
            kind = statement.type.name.replace("_STATEMENT", "")
            raise SandboxError(f"{kind} statements are not allowed in sandbox mode (reads only)")


# ---- which tables a statement names -----------------------------------------------------------


class TableRefs(NamedTuple):
    """The tables some SQL names in the given schemas (see `referenced_tables`)."""

    #: Lower-case ``schema.table`` names.
    names: frozenset[str]
    #: True: from DuckDB's parser, exactly the table references. False: from its tokenizer, every
    #: dotted name outside literals and comments (a superset: may hold ``alias.column``).
    exact: bool


def referenced_tables(
    con: duckdb.DuckDBPyConnection, sql: str, schemas: Collection[str]
) -> TableRefs:
    """The tables `sql` names in `schemas` of the connection's current database.

    Asks DuckDB's own parser (``json_serialize_sql``) rather than matching text, so every spelling
    DuckDB resolves to the same table is found — quoted or not, any case (DuckDB matches
    identifiers case-insensitively), with or without the database prefix, whitespace around the
    dots — and names inside string literals, comments or CTE names are not. Nothing is bound: the
    tables need not exist yet. Statements the parser cannot serialize (only SELECT-like ones can:
    not EXPLAIN, PIVOT, CREATE, COPY, ...) are scanned with DuckDB's tokenizer instead.

    Args:
        con: the connection the SQL will run on (its parser and current database).
        sql: one or more statements.
        schemas: the schemas of interest (compared case-insensitively).

    Returns:
        The names, and whether they came from the parser (exact) or the tokenizer.

    Raises:
        duckdb.ParserException: the SQL does not parse.
    """
    con.extract_statements(sql)  # a syntax error is the caller's one-line error, not a fallback
    row = con.execute("SELECT current_database(), json_serialize_sql(?)", [sql]).fetchone()
    assert row is not None
    database, serialized = str(row[0]).lower(), json.loads(row[1])
    wanted = {s.lower() for s in schemas}
    exact = not serialized.get("error")
    triples = _parsed_refs(serialized) if exact else _dotted_names(sql)
    names = frozenset(
        f"{schema.lower()}.{table.lower()}"
        for catalog, schema, table in triples
        if schema.lower() in wanted and catalog.lower() in ("", database)
    )
    return TableRefs(names, exact)


def _parsed_refs(node: Any) -> Iterator[tuple[str, str, str]]:
    """(catalog, schema, table) of every BASE_TABLE node of `json_serialize_sql` output."""
    if isinstance(node, dict):
        if node.get("type") == "BASE_TABLE":
            yield node["catalog_name"], node["schema_name"], node["table_name"]
        for value in node.values():
            yield from _parsed_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _parsed_refs(value)


_NAME_TOKENS = (duckdb.token_type.identifier, duckdb.token_type.keyword)
_IDENT_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


def _dotted_names(sql: str) -> Iterator[tuple[str, str, str]]:
    """(catalog, schema, table) for each `a.b` (and `c.a.b`) in `sql`'s tokens: string literals
    and comments are tokens of their own (or skipped), so their text is never a name."""
    raw = sql.encode()  # token positions are byte offsets
    tokens = duckdb.tokenize(sql)
    names: list[str | None] = []  # per token: its identifier, '.' for a dot, None otherwise
    for pos, kind in tokens:
        if kind in _NAME_TOKENS:
            names.append(_identifier_at(raw, pos))
        elif kind == duckdb.token_type.operator and raw[pos : pos + 1] == b".":
            names.append(".")
        else:
            names.append(None)
    for i in range(len(names) - 2):
        schema, dot, table = names[i : i + 3]
        if dot == "." and schema not in (None, ".") and table not in (None, "."):
            has_catalog = i >= 2 and names[i - 1] == "." and names[i - 2] not in (None, ".")
            yield (names[i - 2] or "") if has_catalog else "", str(schema), str(table)


def _identifier_at(raw: bytes, pos: int) -> str:
    """The identifier starting at byte `pos`: quoted (`"a""b"` → `a"b`) or bare."""
    if raw[pos : pos + 1] == b'"':
        out = bytearray()
        i = pos + 1
        while i < len(raw):
            if raw[i : i + 1] == b'"':
                if raw[i + 1 : i + 2] != b'"':
                    break
                i += 1
            out += raw[i : i + 1]
            i += 1
        return out.decode(errors="replace")
    end = pos
    while end < len(raw) and (raw[end] in _IDENT_BYTES or raw[end] >= 0x80):
        end += 1
    return raw[pos:end].decode(errors="replace")


def drop_views(con: duckdb.DuckDBPyConnection, schemas: Collection[str]) -> None:
    """Drop every view in `schemas` of the connection's current database."""
    wanted = [s.lower() for s in schemas]
    views = con.execute(
        "SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal "
        "AND database_name = current_database() AND lower(schema_name) IN (SELECT unnest(?))",
        [wanted],
    ).fetchall()
    for schema, view in views:
        con.execute(f"DROP VIEW IF EXISTS {quote_ident(schema)}.{quote_ident(view)}")


def is_interrupted_query(exc: BaseException) -> bool:
    """Whether `exc` is DuckDB's answer to an interrupt (Ctrl-C during a query): its
    `InterruptException`, or the `RuntimeError("Query interrupted")` some calls raise."""
    if isinstance(exc, duckdb.InterruptException):
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith("Query interrupted")
