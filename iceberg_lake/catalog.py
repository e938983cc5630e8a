"""The Iceberg catalog: pyiceberg's `SqlCatalog` opened from settings, plus the lake's tables.

`LakeCatalog` is the one place that opens the catalog, creates namespaces and declared tables,
creates the warehouse bucket on S3, and translates catalog failures into `LakeError`s.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from pydantic import ValidationError as PydanticValidationError
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.exceptions import ValidationError as MetadataValidationError
from pyiceberg.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from iceberg_lake.config import Settings, redact_url
from iceberg_lake.exceptions import (
    CatalogUnavailableError,
    ConfigError,
    CorruptMetadataError,
    LakeError,
    OrphanedTableError,
    UnknownTableError,
)
from iceberg_lake.tables import (
    NAMESPACES,
    SCHEMA_NAME_PROPERTY,
    TableDefinition,
    TableRegistry,
    registry,
)

log = logging.getLogger(__name__)


def _metadata_version(uri: str) -> tuple[int, str]:
    """Sort key of a metadata file: its version number (`00042-<uuid>.metadata.json`), then
    its name."""
    name = uri.rsplit("/", 1)[-1]
    match = re.match(r"(\d+)-", name)
    return (int(match.group(1)) if match else -1, name)


def _metadata_parse_error(exc: BaseException) -> PydanticValidationError | None:
    """The pydantic error behind `exc`: pyiceberg parses `*.metadata.json` with pydantic and
    re-raises its error as its own `ValidationError`."""
    for err in (exc, exc.__cause__):
        if isinstance(err, PydanticValidationError):
            return err
    return None


def _parse_reason(exc: BaseException) -> str:
    """One short line saying why a metadata file did not parse (pydantic's text is a page)."""
    pydantic = _metadata_parse_error(exc)
    if pydantic is None:
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    errors = pydantic.errors(include_url=False)
    if not errors:
        return pydantic.title
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0].isdigit():  # the tag of pyiceberg's union of format versions
        loc[0] = f"format-version {loc[0]}:"
    where = " ".join(loc)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    text = f"{where}: {first['msg']}" if where else str(first["msg"])
    return " ".join(text.split())[:300] + more


@contextmanager
def catalog_errors(what: str) -> Iterator[None]:
    """Translate database and storage failures raised inside the block into lake errors.

    A metadata file that does not parse (a reload inside the block) is a `CorruptMetadataError`.
    """
    try:
        yield
    except MetadataValidationError as exc:
        # Only `TableMetadataUtil.parse_raw` wraps a pydantic error this way; a bare pydantic
        # error (a model the lake builds) or pyiceberg's own (a refused schema change) is not a
        # corrupt file and stays as it is.
        if not isinstance(exc.__cause__, PydanticValidationError):
            raise
        raise CorruptMetadataError(
            f"{what}: table metadata cannot be parsed ({_parse_reason(exc)})"
        ) from exc
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)  # DBAPIError has it; other SQLAlchemy errors do not
        reason = str(orig) if orig else type(exc).__name__
        raise CatalogUnavailableError(
            f"{what}: catalog database unavailable ({reason.strip()})"
        ) from exc
    except (OSError, ConnectionError) as exc:
        raise CatalogUnavailableError(f"{what}: storage unavailable ({exc})") from exc


def _make_dir(path: Path, variable: str) -> None:
    """`mkdir -p path`, or a one-line `ConfigError` naming the variable that chose it.

    Settings check that the data directory's nearest existing parent is writable; that cannot
    foresee every refusal (`/proc`, a read-only mount, a full disk), so the mkdir itself is
    guarded too.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        failed = f" at {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
        raise ConfigError(
            f"{variable}: directory {path} cannot be created ({reason}{failed})"
        ) from None


class LakeCatalog:
    """The lake's catalog and its declared tables.

    Args:
        settings: where the catalog database and the warehouse are.
        tables: the declared tables (default: the shipped `catalog/` definitions).
        create: create the local data directory and SQLite catalog file if missing; with
            False (read-only commands) a missing SQLite catalog is a `ConfigError` and
            nothing is created.
    """

    def __init__(
        self, settings: Settings, tables: TableRegistry | None = None, *, create: bool = True
    ) -> None:
        self.settings = settings
        self.registry = tables or registry()
        if settings.catalog_uri.startswith("sqlite"):
            db_path = settings.catalog_uri.removeprefix("sqlite:///")
            local = bool(db_path) and db_path != ":memory:"
            if not create:
                if local and not Path(db_path).exists():
                    raise ConfigError(
                        f"no lake at {db_path}: run `lake init`, or point LAKE_DATA_DIR "
                        "(or LAKE_CONFIG) at an existing lake"
                    )
            elif local:
                # The catalog file's own directory only: the data directory holds nothing
                # else, and one made for a lake whose files are elsewhere (a lake.toml naming
                # the catalog and the warehouse) was an empty ./lake-data (newuser13).
                folder = Path(db_path).parent
                chosen_by = "LAKE_DATA_DIR" if folder == settings.data_dir else "LAKE_CATALOG_URI"
                _make_dir(folder, chosen_by)
        with catalog_errors("opening the catalog"):
            self.catalog = SqlCatalog(settings.catalog_name, **settings.catalog_properties())
        if settings.catalog_uri.startswith("sqlite"):
            use_wal_journal(self.catalog.engine)
        if not create:
            self._refuse_no_lake()

    def _refuse_no_lake(self) -> None:
        """`ConfigError` when this catalog name has none of the lake's namespaces: a database
        that exists but holds no lake (PostgreSQL, a mistyped `LAKE_CATALOG_NAME`) would let a
        read-only command report an empty lake as healthy (`check --strict` passing)."""
        with catalog_errors("opening the catalog"):
            existing = {ns[0] for ns in self.catalog.list_namespaces()}
        if not existing.intersection(NAMESPACES):
            raise ConfigError(
                f"no lake in catalog '{self.settings.catalog_name}' at "
                f"{redact_url(self.settings.catalog_uri)}: run `lake init`, or check "
                "LAKE_CATALOG_NAME and LAKE_CATALOG_URI"
            )

    # ---- set-up -------------------------------------------------------------------------------

    def ensure_warehouse(self, *, create_bucket: bool = True) -> bool:
        """Create the warehouse bucket (s3://) or directory (file://) if missing.

        Idempotent. Returns True if something was created.

        Args:
            create_bucket: create a missing S3 bucket; when False (`lake serve`) a missing
                bucket is a `ConfigError`, so a mistyped `LAKE_WAREHOUSE` fails visibly.
        """
        parsed = urlparse(self.settings.warehouse)
        if parsed.scheme == "file":
            path = Path(parsed.path)
            existed = path.is_dir()
            _make_dir(path, "LAKE_WAREHOUSE")
            return not existed
        return ensure_bucket(self.settings, parsed.netloc, create=create_bucket)

    def ensure_namespaces(self) -> list[str]:
        """Create the `bronze`, `silver` and `gold` namespaces if missing; return those created."""
        created = []
        with catalog_errors("creating namespaces"):
            existing = {ns[0] for ns in self.catalog.list_namespaces()}
            for ns in NAMESPACES:
                if ns not in existing:
                    try:
                        self.catalog.create_namespace(ns)
                        created.append(ns)
                    except NamespaceAlreadyExistsError:
                        pass
        return created

    def create_table(self, definition: TableDefinition) -> bool:
        """Create one declared table if it does not exist. Returns True if created.

        Raises:
            OrphanedTableError: the catalog has no such table, but its location already holds
                metadata files (see `refuse_orphaned`).
        """
        schema = definition.iceberg_schema()
        with catalog_errors(f"creating {definition.identifier}"):
            if self.catalog.table_exists(definition.identifier):
                return False
            self.refuse_orphaned([definition.identifier])
            try:
                self.catalog.create_table(
                    definition.identifier,
                    schema=schema,
                    partition_spec=definition.partition_spec(schema),
                    sort_order=definition.iceberg_sort_order(schema),
                    properties=definition.properties(),
                )
            except TableAlreadyExistsError:
                return False
        log.info("created table %s", definition.identifier)
        return True

    def init(self, *, create_bucket: bool = True) -> list[str]:
        """Create the warehouse, namespaces and every declared table that is missing.

        Idempotent: a second call creates nothing and returns an empty list.

        Args:
            create_bucket: create a missing S3 warehouse bucket (`lake init`); `lake serve`
                passes False so a mistyped `LAKE_WAREHOUSE` is an error, not a new bucket.

        Returns:
            What was created: namespaces as `namespace/`, then table identifiers.
        """
        self.refuse_other_warehouse()
        self.ensure_warehouse(create_bucket=create_bucket)
        created = [f"{ns}/" for ns in self.ensure_namespaces()]
        existing = set(self.existing_tables())
        missing = [d for d in self.registry if d.identifier not in existing]
        if missing:
            self.refuse_shared_location([self.settings.warehouse], "creating tables")
            # Before creating any: a restored catalog missing one table is a lake to repair,
            # not one to complete.
            with catalog_errors("checking the locations of the missing tables"):
                self.refuse_orphaned([d.identifier for d in missing])
        for definition in missing:
            if self.create_table(definition):
                created.append(definition.identifier)
        return created

    def refuse_other_warehouse(self) -> None:
        """Raise `ConfigError` when this catalog already holds tables and none of them is in
        `LAKE_WAREHOUSE`: a mistyped warehouse (prod17: serve said to run `lake init`, which
        created the stray bucket and exited 0; the tables stayed in the real one, and a table
        created later would have gone to the stray one, splitting the lake).
        """
        tables = self.existing_tables()  # none: a new lake, nothing to compare with
        pointers = self.metadata_pointers(tables) if tables else None
        if not pointers:
            return
        prefix = self.settings.warehouse.rstrip("/") + "/"
        located = {t: p for t, p in pointers.items() if p}
        if not located or any(p.startswith(prefix) for p in located.values()):
            return
        table, pointer = sorted(located.items())[0]
        where = pointer.split(f"/{table.split('.')[0]}/", 1)[0]
        raise ConfigError(
            f"LAKE_WAREHOUSE is {redact_url(self.settings.warehouse)}, but the {len(located)} "
            f"tables of catalog '{self.settings.catalog_name}' are in {redact_url(where)} "
            f"({table}): check LAKE_WAREHOUSE (a lake in another warehouse needs its own "
            "LAKE_CATALOG_NAME)"
        )

    def orphaned_metadata(self, identifier: str) -> tuple[str, list[str]]:
        """(the location a new table `identifier` would get, the metadata files it already
        holds, oldest first by version)."""
        from iceberg_lake.engine.iceberg import default_table_location, metadata_files_at

        location = default_table_location(self.catalog, identifier)
        files = [uri for uri, _, _ in metadata_files_at(self.catalog, location)]
        return location, sorted(files, key=_metadata_version)

    def refuse_orphaned(self, identifiers: list[str]) -> None:
        """Raise `OrphanedTableError` when the location of one of these tables (none in the
        catalog) already holds metadata files: a catalog restored or failed over without the
        table. Creating it there would start an empty table over the old one's files: the
        writers would re-read only what the stream still holds, Silver would follow, and
        `remove-orphans` would delete the rest (ops19: 2,732 of 3,937 rows lost). The way back is
        `lake table register` with the newest metadata file."""
        for identifier in identifiers:
            location, files = self.orphaned_metadata(identifier)
            if not files or self._created_meanwhile(identifier):
                continue
            others = len(identifiers) - identifiers.index(identifier) - 1
            raise OrphanedTableError(
                f"{identifier} is not in the catalog, but its location {redact_url(location)} "
                f"already holds {len(files)} metadata files (newest {files[-1].rsplit('/', 1)[-1]})"
                ": a catalog restored or failed over without it? Creating it there would hide "
                f"that data. Register it back: lake table register {identifier} {files[-1]} "
                "(or move the location away to start the table empty)"
                + (f"; {others} more tables to check after it" if others else "")
            )

    def _created_meanwhile(self, identifier: str, wait: float = 3.0) -> bool:
        """Whether another process is creating `identifier` right now: pyiceberg writes the
        first metadata file, then the catalog row, so a table seen with metadata and no row may
        get its row a moment later (review19b: two `lake init`, or an active and a standby
        `lake serve` starting on a new lake, failed one of them as "restored without it")."""
        deadline = time.monotonic() + wait
        while True:
            if self.catalog.table_exists(identifier):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def register_existing(self, identifier: str, metadata_location: str) -> Table:
        """Put a declared table whose catalog row is missing back into the catalog, pointing at
        `metadata_location` (a `metadata.json` under the table's own location, written for that
        table), with its snapshots, properties and writers' watermarks as they were.

        Raises:
            LakeError: the table exists, is not declared, or the file is not one of its
                metadata files.
        """
        from iceberg_lake.engine.iceberg import read_metadata_file

        definition = self.definition(identifier)
        with catalog_errors(f"registering {identifier}"):
            if self.catalog.table_exists(identifier):
                raise LakeError(f"{identifier} is in the catalog already: nothing to register")
            location, files = self.orphaned_metadata(identifier)
            if metadata_location.startswith("/"):  # a plain path of a local warehouse
                metadata_location = Path(metadata_location).as_uri()
            if metadata_location not in files:
                newest = f" (newest: {files[-1]})" if files else " (it holds none)"
                raise LakeError(
                    f"{metadata_location} is not a metadata file of {identifier}'s location "
                    f"{redact_url(location)}{newest}"
                )
            try:
                metadata = read_metadata_file(self.catalog, metadata_location)
            except Exception as exc:
                raise LakeError(f"cannot read {metadata_location}: {exc}") from None
            declared = definition.properties().get(SCHEMA_NAME_PROPERTY)
            if metadata.properties.get(SCHEMA_NAME_PROPERTY) != declared:
                raise LakeError(
                    f"{metadata_location} is a table of schema "
                    f"{metadata.properties.get(SCHEMA_NAME_PROPERTY)!r}, not {declared!r}"
                )
            self.catalog.register_table(identifier, metadata_location)
            table = self.catalog.load_table(identifier)
        log.info("registered %s at %s", identifier, metadata_location)
        return table

    def refuse_shared_location(self, locations: Iterable[str], doing: str) -> None:
        """Raise `ConfigError` when another catalog of this database keeps a table under one of
        `locations` (two lakes sharing one database and one `LAKE_WAREHOUSE`): the tables would
        share directories, and one lake's `remove-orphans` would delete the other's files.

        Raises:
            ConfigError: naming the location, the other catalog and one of its tables.
        """
        from iceberg_lake.engine.iceberg import other_catalogs_tables

        prefixes = [location.rstrip("/") + "/" for location in locations]
        with catalog_errors("listing the tables of other catalogs"):
            others = other_catalogs_tables(self.catalog)
        for name, identifier, metadata in others:
            for prefix in prefixes:
                if metadata.startswith(prefix):
                    raise ConfigError(
                        f"{doing}: {redact_url(prefix.rstrip('/'))} already holds table "
                        f"{identifier} of catalog '{name}' in the same catalog database; give "
                        "each LAKE_CATALOG_NAME its own LAKE_WAREHOUSE"
                    )

    # ---- access -------------------------------------------------------------------------------

    def definition(self, identifier: str) -> TableDefinition:
        """The declared definition of `identifier` (raises `UnknownTableError`)."""
        return self.registry.get(identifier)

    def load_table(self, identifier: str) -> Table:
        """Load a table from the catalog.

        Raises:
            UnknownTableError: the name is malformed or the catalog has no such table.
            CatalogUnavailableError: the catalog cannot be reached.
        """
        if identifier.count(".") != 1:
            raise UnknownTableError(
                f"table name '{identifier}' must be namespace.table, e.g. bronze.stocks_trades"
            )
        with catalog_errors(f"loading {identifier}"):
            try:
                try:
                    return self.catalog.load_table(identifier)
                except FileNotFoundError:
                    # A commit may have replaced (and deleted) the file between reading the
                    # pointer and the file: read the pointer again.
                    return self._load_or_missing(identifier)
            except NoSuchTableError:
                hint = " (run `lake init`)" if identifier in self.registry else ""
                raise UnknownTableError(f"no table '{identifier}' in the catalog{hint}") from None
            except (
                MetadataValidationError,
                PydanticValidationError,
                UnicodeDecodeError,
                json.JSONDecodeError,
            ) as exc:
                # A read: a parse failure is the current metadata file (truncated, edited,
                # invalid UTF-8 or JSON, an unknown format version). Other ValueErrors (an
                # unknown URI scheme in metadata_location) are not a corrupt file.
                raise self._corrupt(identifier, exc) from exc

    def metadata_pointers(self, identifiers: list[str]) -> dict[str, str | None] | None:
        """The current metadata file of each table as the catalog records it (one query, no
        file read): a table whose pointer has not moved has not changed.

        Returns:
            The location per identifier (None: not in the catalog), or None when the catalog
            type cannot tell without loading the tables.

        Raises:
            CatalogUnavailableError: the catalog cannot be reached.
        """
        from iceberg_lake.engine.iceberg import current_metadata_locations

        # Not named after the tables: an outage here, in a writer's check before it records a
        # flush, read as a problem of the quarantine table (ops13).
        with catalog_errors("reading the catalog's table pointers"):
            return current_metadata_locations(self.catalog, identifiers)

    def _load_or_missing(self, identifier: str) -> Table:
        """Load again; a current metadata file still missing while its directory holds other
        files is a `CorruptMetadataError` (a directory with nothing: the `FileNotFoundError`, an
        outage).

        Not a retryable outage: the catalog points at a file that is gone for good, typically
        a catalog database restored from a backup older than the table's last
        `write.metadata.previous-versions-max` metadata versions, whose older files each
        commit deletes (ops6: `lake serve` retried it forever as "storage unavailable").
        """
        from iceberg_lake.engine.iceberg import holds_files_beside, metadata_locations
        from iceberg_lake.tables.definitions import BASE_TABLE_PROPERTIES

        kept = BASE_TABLE_PROPERTIES["write.metadata.previous-versions-max"]
        try:
            return self.catalog.load_table(identifier)
        except FileNotFoundError:
            current, _ = metadata_locations(self.catalog, identifier)
            if current is None or not holds_files_beside(self.catalog, current):
                # Nothing at all where the table's metadata lives: storage not mounted yet, a
                # bucket not there (yet): an outage to retry, not a lost file (review9).
                raise
            raise CorruptMetadataError(
                f"loading {identifier}: its current metadata file {current} does not exist: "
                "the catalog database was restored from a backup older than the table's last "
                f"{kept} metadata versions (each commit deletes older ones), or the file was "
                "deleted; restore the table's metadata/ directory from the same backup"
            ) from None

    def _corrupt(self, identifier: str, exc: BaseException) -> CorruptMetadataError:
        """The one-line error for a table whose current metadata file does not parse."""
        from iceberg_lake.engine.iceberg import metadata_locations

        current, previous = metadata_locations(self.catalog, identifier)
        where = f" {current}" if current else ""
        hint = (
            f"; the previous one is {previous} (restore from backup, or point the catalog's "
            "metadata_location back at it)"
            if previous
            else ""
        )
        return CorruptMetadataError(
            f"table {identifier}: its current metadata file{where} cannot be parsed "
            f"({_parse_reason(exc)}){hint}"
        )

    def existing_tables(self) -> list[str]:
        """Identifiers of every table the catalog holds in the lake's namespaces, sorted."""
        found: list[str] = []
        with catalog_errors("listing tables"):
            namespaces = {ns[0] for ns in self.catalog.list_namespaces()}
            for ns in NAMESPACES:
                if ns in namespaces:
                    found.extend(".".join(t) for t in self.catalog.list_tables(ns))
        return sorted(found)


#: What a stage's entry point accepts for "the catalog": settings (the catalog is opened from
#: them) or an already open `LakeCatalog` (shared, e.g. by a test or a long-running service).
CatalogSource = Settings | LakeCatalog


def as_catalog(source: CatalogSource | None = None) -> LakeCatalog:
    """The open catalog for `source`.

    Args:
        source: an open `LakeCatalog` (returned as is), `Settings` (opened), or None (settings
            from the environment, `LAKE_*` and `lake.toml`).

    Raises:
        ConfigError: `source` is None and the environment's settings are invalid.
        CatalogUnavailableError: the catalog cannot be opened.
    """
    if isinstance(source, LakeCatalog):
        return source
    if source is None:
        from iceberg_lake.config import load_settings

        source = load_settings()
    return LakeCatalog(source)


def use_wal_journal(engine: Engine) -> bool:
    """Put a SQLite catalog database in WAL journal mode (persistent; idempotent).

    In SQLite's default rollback-journal mode a reader blocks writers: a Spark or Trino JVM that
    opened the catalog through JDBC keeps a read lock, and the lake's own commits then fail with
    "database is locked". In WAL mode readers never block the writer, so Spark, a second `lake`
    process and `lake serve` share the embedded catalog. The mode is stored in the database file,
    so once is enough; a database that is busy right now keeps its mode and is retried on the
    next open.

    Args:
        engine: the catalog's SQLAlchemy engine (a `sqlite` URI).

    Returns:
        True if the database is in WAL mode afterwards.
    """
    database = engine.url.database
    if not database or database == ":memory:":
        return False
    try:
        with engine.connect() as con:
            mode = con.exec_driver_sql("PRAGMA journal_mode").scalar()
            if str(mode).lower() != "wal":
                mode = con.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
    except SQLAlchemyError as exc:
        log.warning("SQLite catalog %s: cannot switch to WAL journal mode (%s)", database, exc)
        return False
    return str(mode).lower() == "wal"


#: S3 error codes that mean "these credentials may not do this": the operator should check
#: the access key and secret, not the bucket.
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken"}
)


def ensure_bucket(settings: Settings, bucket: str, *, create: bool = True) -> bool:
    """Check that an S3 bucket exists, creating it if missing and `create`. Returns True if
    created.

    The check is one request with no retry on connection errors, so an unreachable endpoint
    fails at once with one message instead of urllib3's retry warnings.

    Args:
        settings: the lake's settings (endpoint, credentials, region).
        bucket: the bucket name.
        create: create the bucket if it is missing (`lake init`); when False a missing bucket
            is a `ConfigError`, so a mistyped `LAKE_WAREHOUSE` fails instead of being created.

    Raises:
        ConfigError: no valid S3 endpoint, the credentials were refused, or the bucket is
            missing and `create` is False.
        CatalogUnavailableError: the object store cannot be reached or refused the creation.
    """
    import urllib3
    from minio import Minio
    from minio.error import S3Error

    endpoint = settings.s3_endpoint or "https://s3.amazonaws.com"
    parsed = urlparse(endpoint)
    if not parsed.netloc:
        raise ConfigError(f"LAKE_S3_ENDPOINT is not a valid URL: {endpoint!r}")
    # Minio's default client retries 5 times and waits up to 5 minutes per attempt; a start-up
    # check should fail fast with one line. Connection errors are not retried (no urllib3
    # "Retrying" warnings); a 5xx answer is retried once.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=30.0),
        retries=urllib3.Retry(
            total=1, connect=0, read=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )
    client = Minio(
        parsed.netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        region=settings.s3_region,
        secure=parsed.scheme == "https",
        http_client=http,
    )
    try:
        try:
            exists = client.bucket_exists(bucket)
        except S3Error as exc:
            hint = (
                " (check LAKE_S3_ACCESS_KEY and LAKE_S3_SECRET_KEY)"
                if exc.code in _CREDENTIAL_CODES
                else ""
            )
            error = ConfigError if hint else CatalogUnavailableError
            raise error(f"cannot access bucket {bucket} at {endpoint}: {exc.code}{hint}") from exc
        if exists:
            return False
        if not create:
            raise ConfigError(
                f"bucket {bucket} (LAKE_WAREHOUSE) does not exist at {endpoint}: check "
                "LAKE_WAREHOUSE, or create it with `lake init`"
            )
        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise CatalogUnavailableError(f"cannot create bucket {bucket}: {exc.code}") from exc
        log.info("created bucket %s at %s (LAKE_WAREHOUSE)", bucket, endpoint)
        return True
    except (ConfigError, CatalogUnavailableError):
        raise
    except urllib3.exceptions.MaxRetryError as exc:
        reason = exc.reason or exc
        raise CatalogUnavailableError(f"object store {endpoint} unreachable: {reason}") from exc
    except Exception as exc:  # urllib3 raises many connection error types
        raise CatalogUnavailableError(f"object store {endpoint} unreachable: {exc}") from exc
    finally:
        http.clear()
