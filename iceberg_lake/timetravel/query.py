"""Queries by table name: a DuckDB session where every catalog table is a view, optionally AS OF.

`Lake.duckdb()` opens a DuckDB connection (Iceberg extension loaded offline) with the schemas
`bronze`, `silver` and `gold` and one view per catalog table, so SQL names tables as the catalog
does (`bronze.stocks_trades`, `silver.futures_mbp10`, `gold.levels_signals`). Each view reads a
fixed snapshot through `iceberg_scan(<metadata file>, snapshot_from_id=<id>)`: the current one,
or the one an `as_of` pin names (snapshot id, tag or timestamp, for all tables or per table; see
`iceberg_lake.timetravel.snapshots`). A table without a snapshot (never written, or empty at
that point) is an empty view with the table's columns. The views are pinned when the connection
is made, so every query on it sees the same data even while writers commit.

Example::

    lake = Lake(load_settings())
    lake.query("SELECT symbol, count(*) FROM bronze.stocks_trades GROUP BY 1", as_of="bt-1")
    con = lake.duckdb(as_of={"silver.stocks_trades": 5120938471})
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from duckdb import DuckDBPyConnection
from pyiceberg.table import Table

from iceberg_lake.catalog import CatalogSource, as_catalog, catalog_errors
from iceberg_lake.engine import duck
from iceberg_lake.engine.duck import duckdb_path, quote_ident, quote_str
from iceberg_lake.exceptions import LakeError
from iceberg_lake.silver.dedup import duck_type
from iceberg_lake.tables import NAMESPACES
from iceberg_lake.timetravel.snapshots import AsOfSpec, pin_for, resolve_as_of

if TYPE_CHECKING:
    import pandas as pd

    from iceberg_lake.timetravel.live import NatsLoop

__all__ = ["Lake", "duckdb_path", "scan_sql"]


def scan_sql(table: Table, snapshot_id: int | None, pinned: bool = False) -> str:
    """SQL for the rows of `table` at `snapshot_id` (None: an empty relation, same columns).

    Unpinned (the current state), a current snapshot written before a schema change shows in
    the current schema (`_current_shape`); a snapshot asked for by a pin (`pinned`) always
    shows the schema it was written with, as replay does, whether or not anyone has written
    since (evolve14: a query pinned to a tag changed its columns with unrelated writes).
    """
    if snapshot_id is None:
        cols = ", ".join(
            f"CAST(NULL AS {duck_type(f.field_type)}) AS {quote_ident(f.name)}"
            for f in table.schema().fields
        )
        return f"SELECT {cols} WHERE false"
    location = quote_str(duckdb_path(table.metadata_location))
    scan = f"iceberg_scan({location}, snapshot_from_id={snapshot_id})"
    columns = None if pinned else _current_shape(table, snapshot_id)
    return f"SELECT {columns or '*'} FROM {scan}"


def _current_shape(table: Table, snapshot_id: int) -> str | None:
    """Columns that show the CURRENT snapshot in the table's current schema, or None.

    DuckDB's `iceberg_scan` reads a snapshot with the schema it was written with. A schema
    change makes no snapshot, so until the next write the current snapshot still has the old
    shape: `select exch` would fail after `--rename exchange:exch`. The current snapshot is
    shown in the current schema instead, columns matched by field id (a renamed column under
    its new name, an added one as NULL, a dropped one left out); an older snapshot keeps the
    shape it was written with (time travel).
    """
    snap = table.snapshot_by_id(snapshot_id)
    current = table.schema()
    if (
        snap is None
        or snapshot_id != table.metadata.current_snapshot_id
        or snap.schema_id is None
        or snap.schema_id == current.schema_id
    ):
        return None
    written = table.schemas().get(snap.schema_id)
    if written is None:
        return None
    old = {f.field_id: f for f in written.fields}
    out = []
    for f in current.fields:
        try:
            kind = duck_type(f.field_type)
        except LakeError:  # a type the mapping cannot spell: the snapshot's own shape
            return None
        was = old.get(f.field_id)
        if was is None:
            expr = f"CAST(NULL AS {kind})"
        elif was.field_type != f.field_type:
            expr = f"CAST({quote_ident(was.name)} AS {kind})"
        else:
            expr = quote_ident(was.name)
        out.append(f"{expr} AS {quote_ident(f.name)}")
    return ", ".join(out)


class Lake:
    """The lake as DuckDB sees it: every catalog table queryable by name, at any snapshot.

    Args:
        settings: lake settings, or an open `LakeCatalog`.
        sandbox: lock DuckDB down (`iceberg_lake.engine.duck.sandbox`): no file, network or
            extension access except reading the warehouse, and `query()` runs reads only
            (SELECT, EXPLAIN). Off by default: `lake query` is a local tool run by someone who
            can read those files anyway. Anything that runs SQL it did not write — a service,
            a notebook server — must turn it on.
    """

    def __init__(self, settings: CatalogSource, *, sandbox: bool = False) -> None:
        self.catalog = as_catalog(settings)
        self.settings = self.catalog.settings
        self.sandbox = sandbox
        #: Snapshot id each view of the last `duckdb()`/`query()` call read (None: empty).
        self.last_pins: dict[str, int | None] = {}
        #: With `query(..., live=True)`: table → snapshot and stream range each live view read
        #: (`iceberg_lake.timetravel.live.LiveRange`).
        self.last_live: dict[str, Any] = {}
        self._session: DuckDBPyConnection | None = None
        self._live: NatsLoop | None = None  # NATS loop of the live views (`live_loop()`)

    def pins(
        self, as_of: AsOfSpec = None, tables: Iterable[str] | None = None
    ) -> dict[str, int | None]:
        """Resolve `as_of` for each table (default: every catalog table).

        Returns:
            Table identifier → snapshot id (None: the table had no snapshot then).

        Raises:
            TimeTravelError: a pin names no snapshot or tag of some table.
            UnknownTableError: a table does not exist.
        """
        identifiers = list(tables) if tables is not None else self.catalog.existing_tables()
        if isinstance(as_of, dict):
            unknown = sorted(set(as_of) - set(self.catalog.existing_tables()))
            if unknown:
                self.catalog.load_table(unknown[0])  # raises a clear UnknownTableError
        return {
            ident: resolve_as_of(self.catalog.load_table(ident), pin_for(as_of, ident))
            for ident in identifiers
        }

    def duckdb(
        self, as_of: AsOfSpec = None, tables: Iterable[str] | None = None
    ) -> DuckDBPyConnection:
        """A DuckDB connection with one view per table, pinned to `as_of`.

        Read-only with respect to the lake; creates nothing in the catalog. The caller closes
        the connection.

        Args:
            as_of: one pin for all tables, or a mapping table → pin (others: current).
            tables: only these tables get views (default: every catalog table).

        Returns:
            The connection; time zone UTC, schemas `bronze`, `silver`, `gold`.

        Raises:
            TimeTravelError: a pin names no snapshot or tag of some table.
        """
        con = self.connect()
        try:
            self._create_views(con, as_of, tables)
        except BaseException:
            con.close()
            raise
        return con

    def connect(self) -> DuckDBPyConnection:
        """A bare DuckDB connection for this lake: Iceberg extension (plus httpfs and the S3
        secret for object-store warehouses), UTC, the `bronze`/`silver`/`gold` schemas, no views.
        """
        s = self.settings
        con = duck.connect_lake(s, extensions=("avro", "iceberg"), time_zone="UTC")
        try:
            for ns in NAMESPACES:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {ns}")
            if self.sandbox:
                # Views are (re)created per query; they read below the warehouse only.
                duck.sandbox(con, [duckdb_path(s.warehouse)])
        except BaseException:
            con.close()
            raise
        return con

    def _create_views(
        self, con: DuckDBPyConnection, as_of: AsOfSpec, tables: Iterable[str] | None
    ) -> None:
        identifiers = list(tables) if tables is not None else self.catalog.existing_tables()
        loaded = {ident: self.catalog.load_table(ident) for ident in identifiers}
        if isinstance(as_of, dict):
            self.pins(as_of, [])  # validate the mapping's table names
            for ident, pin in as_of.items():
                if ident not in loaded:  # unread, but a mistyped pin is still an error
                    resolve_as_of(self.catalog.load_table(ident), pin)
        pins = {ident: resolve_as_of(t, pin_for(as_of, ident)) for ident, t in loaded.items()}
        for ident, table in loaded.items():
            ns, name = ident.split(".", 1)
            with catalog_errors(f"opening {ident}"):
                try:
                    con.execute(
                        f"CREATE OR REPLACE VIEW {ns}.{quote_ident(name)} AS "
                        f"{scan_sql(table, pins[ident], pin_for(as_of, ident) is not None)}"
                    )
                except duckdb.Error as exc:
                    # e.g. a manifest list or metadata file deleted from the warehouse
                    raise LakeError(
                        f"cannot read {ident} (snapshot {pins[ident]}): {_first_line(exc)}"
                    ) from None
        self.last_pins = pins

    def query(self, sql: str, as_of: AsOfSpec = None, *, live: bool = False) -> pa.Table:
        """Run `sql` against the lake and return the result as an Arrow table.

        Only the tables the SQL names get views, so a query on one table does not read every
        table's metadata; SQL that names no lake table (`SELECT 1`, `SHOW TABLES`) gets a view
        of every table. DuckDB's parser finds the names, so every spelling DuckDB accepts works:
        quoted or not, any case, `memory.` prefix, whitespace around the dots. The views of
        earlier calls are dropped first: a table the SQL does not name has no view, never one
        at an older pin. `as_of` pins as in `duckdb()`; `last_pins` lists exactly the tables
        with a view.

        With `live=True` every Bronze/Gold view is the table's current snapshot united with
        the JetStream messages after that snapshot's watermark (`iceberg_lake.timetravel.live`);
        `last_live` then says which snapshot and stream range each view covers, and the
        result's schema metadata carries `lake.live.warnings` (a JSON list of one-line
        warnings, e.g. stream messages removed by its limits before they were committed) and
        `lake.live.no_tail` (a JSON object: each table read without a tail, Silver and the
        dead letters, and why).

        Raises:
            LakeError: the SQL is invalid or names an unknown table (one-line message).
            TimeTravelError: a pin names no snapshot or tag of some table.
        """
        if not sql.strip():
            raise LakeError(
                "empty SQL: give a query, e.g. 'SELECT count(*) FROM bronze.stocks_trades'"
            )
        if live and as_of is not None:
            raise LakeError("a live query reads the current snapshots: drop as_of/--as-of")
        if self._session is None:
            self._session = self.connect()
        con = self._session
        # One reused connection (loading the Iceberg extension costs ~0.5 s). Every view of the
        # previous call goes, so no table can be read at a pin this call did not ask for.
        self.last_pins, self.last_live = {}, {}
        try:
            duck.drop_views(con, NAMESPACES)
            refs = duck.referenced_tables(con, sql, NAMESPACES)
        except duckdb.Error as exc:
            raise LakeError(f"query failed: {_first_line(exc)}") from None
        existing = set(self.catalog.existing_tables())
        wanted = sorted(refs.names & existing) if refs.names else sorted(existing)
        # The tokenizer's names (statements the parser cannot serialize) may be `alias.column`:
        # only the parser's are known to be tables, and DuckDB reports a missing one anyway.
        unknown = sorted(refs.names - existing) if refs.exact else []
        if unknown:
            raise LakeError(
                f"no table '{unknown[0]}' in the catalog (tables: {', '.join(sorted(existing))})"
            )
        if live:
            from iceberg_lake.timetravel.live import create_live_views

            self.last_live = create_live_views(self, con, wanted)
        else:
            self._create_views(con, as_of, wanted)
        try:
            if self.sandbox:
                duck.check_read_only(con, sql)
            result = con.execute(sql).arrow()
            # A statement without a result set (SET, CREATE, ...) has nothing to return.
            table = pa.table({}) if result is None else result.read_all()
            if live:
                from iceberg_lake.timetravel.live import live_warnings, no_tail_notes

                meta = dict(table.schema.metadata or {})
                meta[b"lake.live.warnings"] = json.dumps(live_warnings(self.last_live)).encode()
                notes = no_tail_notes(self.last_pins, self.last_live)
                meta[b"lake.live.no_tail"] = json.dumps(notes).encode()
                table = table.replace_schema_metadata(meta)
            return table
        except duck.SandboxError as exc:
            raise LakeError(f"query refused: {exc}") from None
        except duckdb.Error as exc:
            raise LakeError(f"query failed: {_first_line(exc)}") from None

    def live_loop(self) -> NatsLoop:
        """The NATS loop this lake's live views read the JetStream
        tails with: made on first use, kept between queries, closed by `close()`."""
        if self._live is None:
            from iceberg_lake.timetravel.live import NatsLoop

            self._live = NatsLoop(self.catalog)
        return self._live

    def close(self) -> None:
        """Close the connection `query()` keeps between calls (connections from `duckdb()` are
        the caller's)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._live is not None:
            self._live.close()
            self._live = None

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def df(self, sql: str, as_of: AsOfSpec = None) -> pd.DataFrame:
        """Like `query`, as a pandas DataFrame."""
        return self.query(sql, as_of).to_pandas()

    # ---- backtest helpers (issue 16): thin entry points, the SQL lives in their modules ----

    def bars(self, table: str, every: str | int, **kwargs: Any) -> pa.Table:
        """Time bars of `table`; see `iceberg_lake.timetravel.bars.bars` for the arguments."""
        from iceberg_lake.timetravel.bars import bars

        return bars(self, table, every, **kwargs)

    def asof_join(self, left: str, right: str, **kwargs: Any) -> pa.Table:
        """Trades with the prevailing quote; see `iceberg_lake.timetravel.asof.asof_join`."""
        from iceberg_lake.timetravel.asof import asof_join

        return asof_join(self, left, right, **kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
