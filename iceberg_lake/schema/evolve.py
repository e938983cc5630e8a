"""Safe table changes: add, rename, widen or drop a column, add a partition field.

A change is planned against a `TableState` (the live schema, partition spec, row count and
`lake.schema-version` of a table) before anything is committed. Planning is pure: it checks every
change, turns changes that are already in effect into no-ops (so a migration step can be run
twice) and refuses what Iceberg cannot do safely, with one message that says why:

- narrowing a type (`long` → `int`), or any type change other than `int`→`long`,
  `float`→`double` and a wider decimal precision at the same scale;
- adding a required column to a table that holds rows (the old rows have no value for it);
- dropping a column a partition field is computed from;
- a partition field on a Silver table (Silver compaction keeps its `[key,] hour/day` layout);
- an unknown type or transform, a missing column, a name already taken.

`evolve_table` then commits all changes of one table in ONE Iceberg metadata commit (schema
update, partition-spec update, `lake.schema-version` + 1). It sets only that property, so the
writers' exactly-once watermarks (`lake.watermark.*`) and every other property are kept. It
produces no snapshot: data files are untouched and old snapshots keep their schema, so time travel
to a snapshot before the change returns the old shape, and renames are safe because Iceberg
resolves columns by field id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.transforms import UnknownTransform, parse_transform
from pyiceberg.types import (
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    LongType,
)

from iceberg_lake.catalog import catalog_errors
from iceberg_lake.exceptions import CommitConflictError, LakeError, SchemaChangeError
from iceberg_lake.properties import SCHEMA_VERSION_PROPERTY
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.tables import BRONZE, SILVER, TableDefinition, TableRegistry, parse_type

log = logging.getLogger(__name__)

#: How often a change is re-planned and retried when a concurrent commit (a writer's append)
#: moved the table's metadata between load and commit.
COMMIT_ATTEMPTS = 5


# ---- the changes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddColumn:
    """Add a top-level column (optional unless `required`)."""

    name: str
    type: str
    doc: str = ""
    required: bool = False

    def describe(self) -> str:
        """One line for dry runs and reports."""
        kind = "required" if self.required else "optional"
        doc = f' doc "{self.doc}"' if self.doc else ""
        return f"add column {self.name} {parse_type(self.type)} ({kind}){doc}"


@dataclass(frozen=True)
class RenameColumn:
    """Rename a column; its field id (and so its data) is kept."""

    old: str
    new: str

    def describe(self) -> str:
        """One line for dry runs and reports."""
        return f"rename column {self.old} to {self.new}"


@dataclass(frozen=True)
class WidenColumn:
    """Promote a column's type: int→long, float→double, decimal(P,S)→decimal(P',S) with P'>P."""

    name: str
    type: str

    def describe(self) -> str:
        """One line for dry runs and reports."""
        return f"widen column {self.name} to {parse_type(self.type)}"


@dataclass(frozen=True)
class DropColumn:
    """Remove a column from the current schema (old snapshots still carry it)."""

    name: str

    def describe(self) -> str:
        """One line for dry runs and reports."""
        return f"drop column {self.name}"


@dataclass(frozen=True)
class AddPartitionField:
    """Add a hidden partition field (`identity`, `hour`, `day`, `bucket[16]`, ...) of a column."""

    source: str
    transform: str

    def describe(self) -> str:
        """One line for dry runs and reports."""
        return f"add partition field {self.transform}({self.source})"


Change = AddColumn | RenameColumn | WidenColumn | DropColumn | AddPartitionField


# ---- the state a change is planned against ----------------------------------------------------


@dataclass(frozen=True)
class ColumnState:
    """One live top-level column."""

    name: str
    type: IcebergType
    required: bool


@dataclass(frozen=True)
class TableState:
    """What planning needs to know about a table; `from_table` reads it from live metadata."""

    identifier: str
    columns: tuple[ColumnState, ...]
    partition: tuple[tuple[str, str], ...]  # (source column, transform), current spec
    rows: int
    schema_version: int
    #: (former name, current name) of renamed columns (`NameHistory.former_names`).
    renamed: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_table(cls, identifier: str, table: Table) -> TableState:
        """The state of a loaded pyiceberg table."""
        schema = table.schema()
        columns = tuple(ColumnState(f.name, f.field_type, f.required) for f in schema.fields)
        partition = tuple(
            (schema.find_column_name(p.source_id) or f"<field {p.source_id}>", str(p.transform))
            for p in table.spec().fields
        )
        snap = table.current_snapshot()
        rows = 0
        if snap is not None and snap.summary is not None:
            rows = int(snap.summary.get("total-records", 0) or 0)
        renamed = tuple(sorted(NameHistory(table.schemas().values()).former_names(schema).items()))
        return cls(identifier, columns, partition, rows, schema_version(table.properties), renamed)

    def column(self, name: str) -> ColumnState | None:
        """The live column called `name`, if any."""
        return next((c for c in self.columns if c.name == name), None)


def schema_version(properties: dict[str, str]) -> int:
    """The `lake.schema-version` table property as an int (0 when missing or malformed)."""
    try:
        return int(properties.get(SCHEMA_VERSION_PROPERTY, "0"))
    except ValueError:
        return 0


# ---- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The outcome of planning changes for one table.

    Attributes:
        identifier: the table.
        apply: the changes that will be committed, in order.
        skipped: `(change, why)` for changes already in effect (no-ops).
        before: the state planned against; `after`: the state once `apply` is committed.
    """

    identifier: str
    apply: tuple[Change, ...]
    skipped: tuple[tuple[Change, str], ...]
    before: TableState
    after: TableState

    @property
    def is_noop(self) -> bool:
        """True when nothing needs to be committed."""
        return not self.apply

    def describe(self) -> list[str]:
        """One line per change, plus the schema-version bump (for dry runs and reports)."""
        lines = [c.describe() for c in self.apply]
        if self.apply:
            lines.append(
                f"set {SCHEMA_VERSION_PROPERTY} {self.before.schema_version}"
                f" -> {self.after.schema_version}"
            )
        lines.extend(f"skip: {c.describe()} ({why})" for c, why in self.skipped)
        return lines


def check_partition_source_renames(
    identifier: str, changes: list[Change] | tuple[Change, ...], registry: TableRegistry
) -> None:
    """Refuse renaming, in one table alone, a column Silver compaction pairs partitions by.

    Iceberg keeps the partition field (it names its source by field id), but Silver compaction
    pairs a Bronze table's partition fields with Silver's by column name: a Bronze-only rename
    of `symbol` stopped every compaction of the table, with a message claiming the spec lacked
    `identity(symbol)` (silver18). Not even with `--force`: both tables change together, in a
    migration. A rename back to such a name (a repair) and other partition columns are free.

    Args:
        identifier: the table (`bronze.x` or `silver.x`; other tables have no pair).
        changes: the requested changes.
        registry: the declared tables: the columns Silver's declared partition spec is computed
            from (`symbol` or `underlying`, `ts_event`) are the refused ones.

    Raises:
        SchemaChangeError: a rename of one of those columns.
    """
    namespace, _, name = identifier.partition(".")
    pair = f"{SILVER}.{name}"
    if namespace not in (BRONZE, SILVER) or pair not in registry:
        return
    sources = {p.source for p in registry.get(pair).partition}
    for change in changes:
        if isinstance(change, RenameColumn) and change.old in sources:
            raise SchemaChangeError(
                f"{identifier}: cannot rename '{change.old}' in this table alone: Silver "
                "compaction pairs the Bronze and Silver partitions by that name; rename it in "
                "both tables with a migration (`lake migrate`, docs/schema-evolution.md)"
            )


def check_declared_renames(
    definition: TableDefinition | None, changes: list[Change] | tuple[Change, ...]
) -> None:
    """Refuse renaming a column `catalog/` declares (the operator confirms with `--force`).

    Iceberg renames by field id and the lake follows (writers read the old message field into
    the renamed column, Silver feeds its column of the old name from it), but the lake's code,
    the Silver table, `catalog/` and every saved query still use the declared name.

    Args:
        definition: the table's declaration (None: an undeclared table, nothing to check).
        changes: the requested changes.

    Raises:
        SchemaChangeError: a rename of a declared column; the message names its role.
    """
    if definition is None:
        return
    declared = set(definition.column_names)
    for change in changes:
        if not isinstance(change, RenameColumn) or change.old not in declared:
            continue
        name = change.old
        if name in definition.dedup_columns:
            role = "a dedup key"
        elif any(p.source == name for p in definition.partition):
            role = "a partition source"
        elif name in definition.sort_order:
            role = "a sort key"
        else:
            role = "a declared column"
        raise SchemaChangeError(
            f"{definition.identifier}: '{name}' is {role} in catalog/; writers and Silver follow "
            "the rename by field id, but catalog/, the other tables and queries keep the old "
            "name (`lake migrate check` will report drift): pass --force to rename it anyway"
        )


def plan_changes(state: TableState, changes: list[Change] | tuple[Change, ...]) -> Plan:
    """Check `changes` against `state`, in order; drop the ones already in effect.

    Pure: reads nothing, commits nothing. Idempotent: planning the same changes against the
    resulting state gives an empty plan.

    Args:
        state: the table as it is (or as it will be after earlier planned steps).
        changes: the requested changes.

    Returns:
        The plan, with `after` describing the table once it is committed.

    Raises:
        SchemaChangeError: a change Iceberg cannot make safely; the message says why.
    """
    current = state
    apply: list[Change] = []
    skipped: list[tuple[Change, str]] = []
    for change in changes:
        why_noop, current = _plan_one(current, change)
        if why_noop is None:
            apply.append(change)
        else:
            skipped.append((change, why_noop))
    if apply:
        current = replace(current, schema_version=state.schema_version + 1)
    return Plan(state.identifier, tuple(apply), tuple(skipped), state, current)


def _plan_one(state: TableState, change: Change) -> tuple[str | None, TableState]:
    where = state.identifier
    if isinstance(change, AddColumn):
        new_type = _type(change.type, where)
        existing = state.column(change.name)
        if existing is not None:
            if existing.type == new_type and existing.required == change.required:
                return "column already exists", state
            raise SchemaChangeError(
                f"{where}: cannot add column '{change.name}': a column of that name already"
                f" exists as {_describe_column(existing)}"
            )
        was = dict(state.renamed).get(change.name)
        if was is not None:
            # Names from outside the table (message fields, declared dedup keys, the other
            # table of a Bronze/Silver pair) resolve to the column of that name first: a new
            # column under a renamed column's old name would take over its values' meaning
            # (Silver's dedup merged distinct events on an all-null key).
            raise SchemaChangeError(
                f"{where}: cannot add column '{change.name}': column '{was}' was called "
                f"'{change.name}' before a rename, and the lake still resolves that name to it; "
                "choose another name (or rename the column back)"
            )
        if change.required and state.rows > 0:
            raise SchemaChangeError(
                f"{where}: cannot add required column '{change.name}' to a table with"
                f" {state.rows} rows: the existing rows have no value for it; add it as optional"
            )
        added = ColumnState(change.name, new_type, change.required)
        return None, replace(state, columns=(*state.columns, added))
    if isinstance(change, RenameColumn):
        old, new = state.column(change.old), state.column(change.new)
        if old is None and new is not None:
            return f"column already named {change.new}", state
        if old is None:
            raise SchemaChangeError(f"{where}: cannot rename: no column '{change.old}'")
        if new is not None:
            raise SchemaChangeError(
                f"{where}: cannot rename '{change.old}' to '{change.new}': that name is taken"
            )
        columns = tuple(replace(c, name=change.new) if c is old else c for c in state.columns)
        partition = tuple(
            (change.new if src == change.old else src, t) for src, t in state.partition
        )
        # The former names as the committed rename will have them (`NameHistory.former_names`),
        # so a later change of the same plan (or of the next migration of a dry run) sees them.
        renamed = tuple(
            sorted(
                {
                    **{
                        was: (change.new if now == change.old else now)
                        for was, now in state.renamed
                    },
                    change.old: change.new,
                }.items()
            )
        )
        renamed = tuple((was, now) for was, now in renamed if was != change.new)
        return None, replace(state, columns=columns, partition=partition, renamed=renamed)
    if isinstance(change, WidenColumn):
        col = state.column(change.name)
        if col is None:
            raise SchemaChangeError(f"{where}: cannot widen: no column '{change.name}'")
        new_type = _type(change.type, where)
        if col.type == new_type:
            return f"already {new_type}", state
        _check_widening(where, change.name, col.type, new_type)
        columns = tuple(replace(c, type=new_type) if c is col else c for c in state.columns)
        return None, replace(state, columns=columns)
    if isinstance(change, DropColumn):
        col = state.column(change.name)
        if col is None:
            return "no such column", state
        used_by = [f"{t}({s})" for s, t in state.partition if s == change.name]
        if used_by:
            raise SchemaChangeError(
                f"{where}: cannot drop column '{change.name}': partition field"
                f" {used_by[0]} is computed from it"
            )
        if len(state.columns) == 1:
            raise SchemaChangeError(f"{where}: cannot drop the last column '{change.name}'")
        columns = tuple(c for c in state.columns if c is not col)
        # A dropped column's former names denote nothing any more.
        renamed = tuple((was, now) for was, now in state.renamed if now != change.name)
        return None, replace(state, columns=columns, renamed=renamed)
    if isinstance(change, AddPartitionField):
        col = state.column(change.source)
        if col is None:
            raise SchemaChangeError(
                f"{where}: cannot add partition field: no column '{change.source}'"
            )
        try:
            transform = parse_transform(change.transform.strip().lower())
            if isinstance(transform, UnknownTransform):
                raise ValueError(change.transform)
        except (ValueError, KeyError):
            raise SchemaChangeError(
                f"{where}: unknown partition transform '{change.transform}' (use identity, year,"
                " month, day, hour, bucket[N] or truncate[W])"
            ) from None
        if not transform.can_transform(col.type):
            raise SchemaChangeError(
                f"{where}: cannot partition by {transform}({change.source}): {transform} does not"
                f" apply to {col.type} values"
            )
        if (change.source, str(transform)) in state.partition:
            return "partition field already exists", state
        time = next(
            (t for src, t in state.partition if src == change.source and t in _TIME_TRANSFORMS),
            None,
        )
        if time is not None and str(transform) in _TIME_TRANSFORMS:
            # Iceberg refuses two time partitions of one column at every write: accepted here,
            # every later commit failed with "Cannot have redundant partitions" (history18).
            raise SchemaChangeError(
                f"{where}: cannot add partition field {transform}({change.source}): the table"
                f" is partitioned by {time}({change.source}) already, and Iceberg allows one"
                " time partition per column"
            )
        if where.startswith(f"{SILVER}."):
            # Silver compaction replaces whole [key,] hour/day(ts_event) partitions; a finer
            # Silver spec would split them by row content it does not route. Bronze may be
            # partitioned any finer way: Silver keeps its own layout (silver.plan.PartitionMap).
            raise SchemaChangeError(
                f"{where}: cannot add partition field {transform}({change.source}): Silver"
                " compaction keeps Silver partitioned by [key,] hour/day(ts_event); partition"
                " the Bronze table instead (Silver keeps its layout)"
            )
        return None, replace(state, partition=(*state.partition, (change.source, str(transform))))
    raise SchemaChangeError(f"{where}: unsupported change {change!r}")  # pragma: no cover


#: Iceberg's time transforms: a column takes at most one of them in a spec.
_TIME_TRANSFORMS = frozenset({"year", "month", "day", "hour"})


def _type(text: str, where: str) -> IcebergType:
    try:
        return parse_type(text)
    except LakeError as exc:
        raise SchemaChangeError(f"{where}: {exc}") from None


def _describe_column(col: ColumnState) -> str:
    return f"{col.type} ({'required' if col.required else 'optional'})"


_WIDENINGS: dict[type[IcebergType], type[IcebergType]] = {
    IntegerType: LongType,
    FloatType: DoubleType,
}


def _check_widening(where: str, name: str, old: IcebergType, new: IcebergType) -> None:
    if isinstance(old, DecimalType) and isinstance(new, DecimalType):
        if new.scale != old.scale:
            raise SchemaChangeError(
                f"{where}: cannot change {name} from {old} to {new}: Iceberg keeps a decimal's"
                " scale fixed (only the precision may grow)"
            )
        if new.precision < old.precision:
            raise SchemaChangeError(
                f"{where}: cannot narrow {name} from {old} to {new}: values that need"
                f" {old.precision} digits would not fit; Iceberg only widens types"
            )
        return
    if _WIDENINGS.get(type(old)) is type(new):
        return
    if _WIDENINGS.get(type(new)) is type(old):
        raise SchemaChangeError(
            f"{where}: cannot narrow {name} from {old} to {new}: existing values may not fit;"
            " Iceberg only widens types"
        )
    raise SchemaChangeError(
        f"{where}: cannot change {name} from {old} to {new}: Iceberg only allows int -> long,"
        " float -> double and a larger decimal precision"
    )


# ---- committing -------------------------------------------------------------------------------


@dataclass
class EvolveResult:
    """What `evolve_table` did (or, for a dry run, would do) to one table."""

    plan: Plan
    committed: bool = False

    @property
    def identifier(self) -> str:
        """The table."""
        return self.plan.identifier


def evolve_table(
    table: Table,
    identifier: str,
    changes: list[Change],
    *,
    dry_run: bool = False,
    fresh: bool = False,
) -> EvolveResult:
    """Plan and commit `changes` to one table as ONE metadata commit.

    Idempotent: changes already in effect are skipped; when none remain nothing is committed and
    `lake.schema-version` stays. Otherwise the schema and partition-spec updates and
    `lake.schema-version` + 1 land in one commit and no snapshot is produced. Other table
    properties (the writers' watermarks included) are kept. A concurrent commit (a writer's
    append) is handled by reloading the table, re-planning and retrying.

    Args:
        table: the loaded table.
        identifier: its name, for messages.
        changes: the requested changes, applied in order.
        dry_run: plan only; commit nothing.
        fresh: `table` was just loaded; skip the reload before planning.

    Returns:
        The plan and whether it was committed.

    Raises:
        SchemaChangeError: a change Iceberg cannot make safely.
        CommitConflictError: concurrent commits kept winning.
    """
    for attempt in range(COMMIT_ATTEMPTS):
        if attempt == 0 and not fresh:
            with catalog_errors(f"reloading {identifier}"):
                table.refresh()  # plan against the current metadata, not a stale copy
        plan = plan_changes(TableState.from_table(identifier, table), changes)
        if dry_run or plan.is_noop:
            return EvolveResult(plan)
        try:
            with catalog_errors(f"changing {identifier}"):
                _commit(table, plan)
        except CommitFailedException:
            log.info("concurrent commit on %s, re-planning (attempt %d)", identifier, attempt + 1)
            with catalog_errors(f"reloading {identifier}"):
                table.refresh()
            continue
        except (ValueError, TypeError) as exc:  # pyiceberg's own validation
            raise SchemaChangeError(f"{identifier}: {exc}") from None
        log.info("%s: %s", identifier, "; ".join(plan.describe()))
        return EvolveResult(plan, committed=True)
    raise CommitConflictError(
        f"{identifier}: schema change lost {COMMIT_ATTEMPTS} races with concurrent commits"
    )


def _commit(table: Table, plan: Plan) -> None:
    schema_changes = [c for c in plan.apply if not isinstance(c, AddPartitionField)]
    spec_changes = [c for c in plan.apply if isinstance(c, AddPartitionField)]
    allow_required = any(isinstance(c, AddColumn) and c.required for c in schema_changes)
    with table.transaction() as tx:
        if schema_changes:
            with tx.update_schema(allow_incompatible_changes=allow_required) as update:
                for c in schema_changes:
                    if isinstance(c, AddColumn):
                        update.add_column(
                            c.name, parse_type(c.type), doc=c.doc or None, required=c.required
                        )
                    elif isinstance(c, RenameColumn):
                        update.rename_column(c.old, c.new)
                    elif isinstance(c, WidenColumn):
                        update.update_column(c.name, field_type=parse_type(c.type))
                    elif isinstance(c, DropColumn):
                        update.delete_column(c.name)
        if spec_changes:
            with tx.update_spec() as spec:
                for field in spec_changes:
                    spec.add_field(field.source, field.transform.strip().lower())
        tx.set_properties({SCHEMA_VERSION_PROPERTY: str(plan.after.schema_version)})
