"""Column mappings: how the columns of a vendor file become the columns of a lake table.

A mapping is a small TOML file. The declared ones ship in `catalog/mappings/` (Polygon/Massive
flat files, Databento DBN schemas); a user passes their own with `lake load --mapping FILE`::

    name = "my_trades"
    table = "bronze.stocks_trades"    # default target (`--table` overrides)
    format = "parquet"                 # default format (`--format` overrides)
    source = "myvendor"                # default `source` column value (`--source` overrides)
    detect = ["ticker", "px"]          # optional: columns that identify such files

    [columns]                          # target column = source column
    symbol = "ticker"
    price = "px"
    ts_event_ns = "time"

    [scale]                            # optional: target = source * factor
    ts_event_ns = 1000                 # the file has microseconds

Target columns not listed take the source column of the same name when there is one. `source`
is the `--source` value unless the mapping maps a column to it; `ts_recv_ns` defaults to
`ts_event_ns` (deterministic: loading the same file twice gives identical rows); the derived
`ts_event` partition column is never read from files.

`convert` turns one batch of source columns into the table's columns. Values that cannot be
converted (text in a numeric column, out-of-range integers, fractional sizes) become null and are
reported per row, so the validator dead-letters exactly those rows.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema

from iceberg_lake.exceptions import LakeError
from iceberg_lake.ingest.decode import DERIVED_TS
from iceberg_lake.schema.names import NameHistory
from iceberg_lake.tables import declared_dir

#: Sub-folder of the declared catalog holding the shipped mappings (not table definitions: the
#: table registry reads only `catalog/*.toml`).
MAPPINGS_FOLDER = "mappings"
#: `source` value of loaded rows when neither `--source` nor the mapping names one.
DEFAULT_SOURCE = "file"

_INT_RANGES = {
    pa.int8(): (-(2**7), 2**7 - 1),
    pa.int16(): (-(2**15), 2**15 - 1),
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass(frozen=True)
class Mapping:
    """A declared or user column mapping.

    Attributes:
        name: the mapping's name (`polygon_trades`).
        table: default target table identifier, or "" (then `--table` is required).
        format: default file format (`csv`, `parquet`, `ndjson`, `dbn`), or "".
        source: default value of the `source` column, or "".
        columns: target column → source column.
        scale: target column → factor applied after conversion.
        detect: source columns whose presence identifies files of this mapping.
        dbn_schemas: for DBN mappings, the DBN schemas (`trades`, `mbp-10`, ...) it reads.
        path: the file it was read from ("" for built-in identity mappings).
    """

    name: str
    table: str = ""
    format: str = ""
    source: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    detect: tuple[str, ...] = ()
    dbn_schemas: tuple[str, ...] = ()
    path: str = ""
    #: Target column → the names it had before a rename, newest first (`with_former_names`):
    #: a file written before the rename still feeds it, as the live writers' codec does.
    former: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def source_column(self, target: str, available: Iterable[str]) -> str | None:
        """The source column feeding `target`, or None."""
        if target in self.columns:
            return self.columns[target]
        have = set(available)
        if target in have:
            return target
        return next((old for old in self.former.get(target, ()) if old in have), None)

    def matches(self, columns: Iterable[str]) -> bool:
        """True when the mapping declares detection columns and all are present."""
        have = set(columns)
        return bool(self.detect) and all(c in have for c in self.detect)


#: The keys a mapping file may have.
_MAPPING_KEYS = frozenset(
    {"name", "doc", "table", "format", "source", "columns", "scale", "detect", "dbn_schemas"}
)


def load_mapping(path: Path) -> Mapping:
    """Read a mapping TOML file.

    Raises:
        LakeError: the file is missing or malformed, or a `[scale]` factor is zero or not finite.
    """
    try:
        # utf-8-sig: a file saved by Notepad starts with a byte-order mark (backfill15).
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LakeError(f"cannot read mapping {path}: {exc}") from None
    unknown = sorted(set(data) - _MAPPING_KEYS)
    if unknown:
        # A misspelt section (`[column]`) was ignored, and the rows blamed for it (backfill15).
        hints = [
            f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            for k in unknown
            for close in [difflib.get_close_matches(k, sorted(_MAPPING_KEYS), n=1)]
        ]
        raise LakeError(
            f"invalid mapping {path}: unknown key {', '.join(hints)} (keys: "
            f"{', '.join(sorted(_MAPPING_KEYS))}; a key after [columns] belongs to it)"
        )
    try:
        columns = {str(k): str(v) for k, v in dict(data.get("columns", {})).items()}
        scale = {}
        for key, factor in dict(data.get("scale", {})).items():
            if isinstance(factor, bool) or not isinstance(factor, int | float):
                raise LakeError(
                    f"invalid mapping {path}: [scale] {key} = {factor!r} is not a number"
                )
            scale[str(key)] = float(factor)
        for key, factor in scale.items():
            if not math.isfinite(factor) or factor == 0:
                # A zero factor ended the load in an internal ZeroDivisionError (review13).
                raise LakeError(
                    f"invalid mapping {path}: [scale] {key} = {factor:g} is not a finite, "
                    "non-zero factor"
                )
        return Mapping(
            name=str(data.get("name", path.stem)),
            table=str(data.get("table", "")),
            format=str(data.get("format", "")).lower(),
            source=str(data.get("source", "")),
            columns=columns,
            scale=scale,
            detect=tuple(str(c) for c in data.get("detect", [])),
            dbn_schemas=tuple(str(s) for s in data.get("dbn_schemas", [])),
            path=str(path),
        )
    except (TypeError, ValueError) as exc:
        raise LakeError(f"invalid mapping {path}: {exc}") from None


def mappings_dir() -> Path:
    """The folder of the shipped mappings (`catalog/mappings`)."""
    return declared_dir("catalog") / MAPPINGS_FOLDER


def declared_mappings() -> list[Mapping]:
    """Every shipped mapping, sorted by name."""
    folder = mappings_dir()
    if not folder.is_dir():
        return []
    return sorted((load_mapping(p) for p in folder.glob("*.toml")), key=lambda m: m.name)


def find_mapping(name_or_path: str) -> Mapping:
    """A mapping by file path or by the name of a shipped mapping.

    Raises:
        LakeError: no such file or shipped mapping.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise LakeError(f"mapping file {path} does not exist")
        return load_mapping(path)
    for m in declared_mappings():
        if m.name == name_or_path:
            return m
    known = ", ".join(m.name for m in declared_mappings()) or "none"
    raise LakeError(f"unknown mapping '{name_or_path}' (shipped: {known}; or give a .toml path)")


def identity_mapping(table: str) -> Mapping:
    """The mapping of a file whose columns are named like the table's."""
    return Mapping(name="identity", table=table)


def with_former_names(mapping: Mapping, schemas: Iterable[Schema], current: Schema) -> Mapping:
    """`mapping` that also reads each column under the names it had before a rename (a name
    that now denotes another column is not one of them)."""
    history = NameHistory(schemas)
    former: dict[str, tuple[str, ...]] = {}
    for f in current.fields:
        older = [
            n
            for n in history.names(f.field_id)
            if n != f.name and history.field_id(n) == f.field_id
        ]
        if older:
            former[f.name] = tuple(older)
    return replace(mapping, former=former) if former else mapping


def unused_columns(mapping: Mapping, target: pa.Schema, columns: Iterable[str]) -> list[str]:
    """File columns no target column reads (with the identity mapping: columns the table does
    not have, e.g. dropped ones, so their values are not stored)."""
    names = list(columns)
    used = {mapping.source_column(f.name, names) for f in target}
    return [c for c in names if c not in used]


# ---- conversion ---------------------------------------------------------------------------------


@dataclass
class Converted:
    """One batch in the target table's columns.

    Attributes:
        table: the table's columns (all nullable; invalid values are null).
        problems: row → reason for values that could not be converted.
    """

    table: pa.Table
    problems: dict[int, str]


def convert(
    batch: pa.Table,
    mapping: Mapping,
    target: pa.Schema,
    source: str,
    problems: dict[int, str] | None = None,
    default_source: str = DEFAULT_SOURCE,
    *,
    trim_text: bool = False,
) -> Converted:
    """Convert a batch of source columns into the target table's columns.

    Args:
        batch: source rows (any column types; text columns are parsed).
        mapping: which source column feeds which target column.
        target: the live table's Arrow schema.
        source: `--source`: when non-empty, every row's `source` value. When empty, the
            file's own `source` column (mapped, or of that name) is kept, and rows where it is
            null or blank (or a file without one) get `default_source`.
        problems: row → reason already found by the reader (kept, first reason wins).
        default_source: the mapping's `source`, else `file`.
        trim_text: store text columns without leading and trailing blanks (a CSV's cells).

    Returns:
        The converted columns and every row that had a conversion problem.
    """
    n = batch.num_rows
    found: dict[int, str] = dict(problems or {})
    names = batch.column_names
    arrays: dict[str, pa.Array] = {}
    for f in target:
        if f.name == DERIVED_TS:
            continue
        src = mapping.source_column(f.name, names)
        if f.name == "source" and (source or src is None):
            arrays[f.name] = pa.repeat(pa.scalar(source or default_source, f.type), n)
            continue
        if src is None:
            arrays[f.name] = pa.nulls(n, f.type)
            continue
        if src not in names:
            raise LakeError(
                f"mapping '{mapping.name}': source column '{src}' (for {f.name}) is not in the "
                f"file (columns: {', '.join(names)})"
            )
        column = batch.column(src)
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_dictionary(arr.type):  # a Parquet dictionary column: as its values
            arr = arr.dictionary_decode()
        if trim_text and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
            # CSV text without the padding of fixed-width exports, as its numbers are read
            # (backfill15: `"AAPL "` was a second symbol beside `AAPL`): the columns loaded
            # only (trimming every column of a file cost ~10% of a CSV load).
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                arr = pc.utf8_trim_whitespace(arr)
        factor = mapping.scale.get(f.name)
        mine: dict[int, str] = {}
        times = _times_column(arr, f, factor)
        if times and _looks_iso(arr):  # a column of ISO times: read as times at once
            arr, times = _iso_times_as_ns(arr), False
        converted = _convert_column(arr, f.type, f.name, factor, mine)
        if mine and times and (iso := _iso_times_as_ns(arr)) is not arr:
            # Some values are not integers, ISO 8601 times among them: read as the JSON reader
            # reads them when it types a block itself (review15b). Tried only then, so an
            # integer column costs nothing more (the check cost ~10% of a CSV load).
            mine = {}
            converted = _convert_column(iso, f.type, f.name, factor, mine)
        for row, why in mine.items():
            found.setdefault(row, why)
        arrays[f.name] = converted
        if f.name == "source":
            arrays[f.name] = _default_blank(arrays[f.name], pa.scalar(default_source, f.type))
    if "ts_recv_ns" in arrays and "ts_event_ns" in arrays:
        recv = arrays["ts_recv_ns"]
        if recv.null_count == n:
            arrays["ts_recv_ns"] = arrays["ts_event_ns"]
        elif recv.null_count:
            arrays["ts_recv_ns"] = pc.coalesce(recv, arrays["ts_event_ns"])
    if DERIVED_TS in target.names:
        ts = pc.fill_null(arrays["ts_event_ns"], 0)
        micros = pc.divide(ts, pa.scalar(1000, pa.int64()))
        arrays[DERIVED_TS] = micros.cast(pa.timestamp("us", tz="UTC"))
    schema = pa.schema([f.with_nullable(True) for f in target])
    table = pa.Table.from_arrays([arrays[f.name] for f in target], schema=schema)
    return Converted(table, found)


def _default_blank(values: pa.Array, default: pa.Scalar) -> pa.Array:
    """`values` with null and blank (empty or whitespace) entries replaced by `default`."""
    # A file's `source` column is a dedup key in Silver: keep every real value (an export of
    # several sources reloads as several sources), and give rows without one the default
    # rather than null (which Bronze validation would refuse).
    present = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(values), ""), False)
    return pc.if_else(present, values, default)


#: An ISO 8601 time (`2025-12-16 14:30:00`, `…T14:30:00.123456789Z`, `…-05:00`).
_ISO_TIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"
_ZONE = r"(Z|[+-]\d{2}:?\d{2})$"


def _times_column(arr: pa.Array, target: pa.Field, factor: float | None) -> bool:
    """Whether `arr` is text feeding an integer `*_ns` column without a scale factor."""
    text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    return (
        text
        and pa.types.is_integer(target.type)
        and target.name.endswith("_ns")
        and factor in (None, 1)
    )


def _looks_iso(arr: pa.Array) -> bool:
    """Whether the first values of `arr` (text) hold ISO dates (a `-` among digits)."""
    head = arr.slice(0, 64)
    return bool(pc.any(pc.fill_null(pc.match_substring(head, "-"), False)).as_py())


def _iso_times_as_ns(arr: pa.Array) -> pa.Array:
    """Text of an `*_ns` column with ISO 8601 times replaced by their Unix nanoseconds (UTC
    when no zone is given), as the JSON reader reads them when it types a block itself
    (review15b: a block read as text, after one line's quoted number, dead-lettered every
    ISO time in it). Other text is left to the integer conversion."""
    trimmed = pc.utf8_trim_whitespace(arr)
    iso = pc.fill_null(pc.match_substring_regex(trimmed, _ISO_TIME), False)
    if not pc.any(iso).as_py():
        return arr
    zoned = pc.and_(iso, pc.fill_null(pc.match_substring_regex(trimmed, _ZONE), False))
    out = arr
    for mask, kind in ((pc.and_(iso, pc.invert(zoned)), pa.timestamp("ns")), (zoned, None)):
        if not pc.any(mask).as_py():
            continue
        picked = pc.if_else(mask, trimmed, pa.scalar(None, pa.string()))
        to = kind or pa.timestamp("ns", tz="UTC")
        try:
            ns = picked.cast(to).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # One impossible time (Feb 30, 24:00, a 9999-12-31 placeholder) fails the cast of
            # all: each on its own then, the impossible ones left as text for the integer
            # conversion to name (review15c: a block's every time was dead-lettered).
            ns = _cast_isolating(picked, to)
            mask = pc.and_(mask, ns.is_valid())
        out = pc.if_else(mask, ns.cast(pa.string()), out)
    return out


def _cast_isolating(text: pa.Array, to: pa.DataType) -> pa.Array:
    """`text` cast to `to` as int64 nanoseconds, null where a value does not cast: halves are
    cast until the failing values are alone (review15d: value by value, ten bad cells in a
    500k-row file took the load from 2.4 s to 15.2 s)."""
    try:
        return text.cast(to).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(text) <= 1:
            return pa.nulls(len(text), pa.int64())
    half = len(text) // 2
    return pa.concat_arrays(
        [_cast_isolating(text.slice(0, half), to), _cast_isolating(text.slice(half), to)]
    )


def _convert_column(
    arr: pa.Array, target: pa.DataType, name: str, factor: float | None, found: dict[int, str]
) -> pa.Array:
    """One source column as `target` (null where a value is invalid; reasons into `found`);
    `arr` is not dictionary-encoded (`convert` decodes it)."""
    if pa.types.is_timestamp(arr.type) and pa.types.is_integer(target):
        # A timestamp column feeding an *_ns column: nanoseconds since the epoch.
        try:
            arr = arr.cast(pa.timestamp("ns", tz=arr.type.tz)).cast(pa.int64())
        except pa.ArrowInvalid:
            arr = _timestamp_nanoseconds(arr, name, found)
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            return pc.binary_join(arr.cast(pa.list_(pa.string())), ",").cast(target)
        return arr.cast(target)
    if factor == 1:
        factor = None
    text = pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
    if factor is not None and pa.types.is_integer(target) and not pa.types.is_integer(arr.type):
        integers = _whole_numbers(arr) if text else None
        if integers is None or not float(factor).is_integer():
            # Seconds as text, floats or decimals into nanoseconds: exact decimal arithmetic on
            # each value as written (binary floats put 1710150000.123456 s at ...123456128 ns).
            return _scale_exactly(arr, factor, target, name, found)
        arr, text = integers, False
    exact: tuple[np.ndarray, pa.Array] | None = None
    if text and factor is not None and pa.types.is_floating(target):
        arr, exact = _integer_text_beyond_doubles(arr, factor, target, name)
    if text:
        arr = _parse_text(arr, target, name, found)
    if pa.types.is_decimal(arr.type) and pa.types.is_floating(target):
        # Arrow's decimal-to-double cast is not correctly rounded (0.35 gives
        # 0.35000000000000003); through text it is the nearest double, as a CSV gives.
        arr = arr.cast(pa.string()).cast(pa.float64())
    if factor is not None:
        arr = _scale(arr, factor, target, name, found)
    if exact is not None:
        arr = pc.replace_with_mask(arr, pa.array(exact[0]), exact[1].cast(arr.type))
    if arr.type == target:
        return arr
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _cast_per_value(arr, target, name, found)


def _timestamp_nanoseconds(arr: pa.Array, name: str, found: dict[int, str]) -> pa.Array:
    """A timestamp column holding values beyond nanoseconds' range (1677-2262; a 9999-12-31
    "no date" placeholder) as int64 nanoseconds, those values null with a reason (quant10: one
    failed the whole load)."""
    per_unit = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[arr.type.unit]
    out: list[int | None] = []
    for row, value in enumerate(arr.cast(pa.int64()).to_pylist()):
        ns = None if value is None else value * per_unit
        if ns is not None and not -(2**63) <= ns < 2**63:
            found.setdefault(row, f"{name}: {arr[row]} is outside the range of nanoseconds")
            ns = None
        out.append(ns)
    return pa.array(out, pa.int64())


def _parse_text(arr: pa.Array, target: pa.DataType, name: str, found: dict[int, str]) -> pa.Array:
    """Parse a text column (CSV, NDJSON): empty → null, unparsable → null + reason."""
    arr = pc.utf8_trim_whitespace(arr)
    arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)
    if pa.types.is_boolean(target):
        lower = pc.utf8_lower(arr)
        ok = pc.or_(pc.is_in(lower, pa.array(sorted(_TRUE | _FALSE))), pc.is_null(lower))
        _report(arr, ok, name, found, "is not a boolean")
        known = pc.and_(pc.invert(pc.is_null(lower)), ok)
        truth = pc.is_in(lower, pa.array(sorted(_TRUE)))
        return pc.if_else(known, truth, pa.scalar(None, pa.bool_()))
    if pa.types.is_integer(target):
        integers = _integer_text(arr)
        return _cast_per_value(arr, pa.int64(), name, found) if integers is None else integers
    parse_as = pa.float64() if pa.types.is_floating(target) else target
    try:
        return arr.cast(parse_as)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _cast_per_value(arr, parse_as, name, found)


def _cast_per_value(
    arr: pa.Array, target: pa.DataType, name: str, found: dict[int, str]
) -> pa.Array:
    """Slow path for a batch holding bad values: convert value by value, report the bad ones."""
    out: list[Any] = []
    for row, value in enumerate(arr.to_pylist()):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(_convert_value(value, target))
        except (ValueError, TypeError, OverflowError):
            out.append(None)
            found.setdefault(row, f"{name}: invalid value {value!r} for type {target}")
    return pa.array(out, type=target)


def _convert_value(value: Any, target: pa.DataType) -> Any:
    if pa.types.is_integer(target):
        number = _whole_number(value)
        lo, hi = _INT_RANGES.get(target, (-(2**63), 2**63 - 1))
        if not lo <= number <= hi:
            raise OverflowError("out of range")
        return number
    if pa.types.is_floating(target):
        if isinstance(value, str) and ("_" in value or not value.isascii()):
            # Python reads 1_000 and any script's digits (`١٢٣.5`); no feed writes them, and
            # Arrow's cast refuses them (review13).
            raise ValueError("not a number")
        return float(value)
    if pa.types.is_boolean(target):
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("not a boolean")
    return pa.scalar(value).cast(target).as_py()


#: Decimal digits before the point of the largest integer any column holds (int64: 19).
_MAX_DIGITS = 19
#: Fixed-point "undefined" sentinels (Databento's UNDEF_PRICE is int64's largest): no value.
_UNDEFINED_INTEGERS = (2**63 - 1, -(2**63), 2**64 - 1)
#: A number as text in plain or exponent notation, in ASCII digits (not Python's `1_000`, `0x1f`,
#: `nan`, or the other scripts' digits `\d` and `Decimal` take: `١٢٣.5`; review13).
_NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _whole_number(value: Any) -> int:
    """`value` as the exact integer it is: integer text as is, other number text (`2.0`,
    `1.7e18`) in decimal arithmetic, floats and decimals only when whole.

    Raises:
        ValueError: not a number, or a number with a fraction (never truncated or rounded:
            `0.5` is not a size, and `1710163800000000001.0` through a float was ...000).
    """
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        value = _decimal_text(text)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            raise ValueError("not an integer")
        if value and value.adjusted() > _MAX_DIGITS:
            # Out of range for any integer column, said before `int()` builds a number of a
            # billion digits (`1e999999999` stalled a load; review12).
            raise OverflowError("out of range")
        return int(value)
    return int(value)


def _decimal_text(text: str) -> Decimal:
    """Number text as the exact decimal it writes (plain or exponent notation only).

    Raises:
        ValueError: anything else (Python's `Decimal` also reads `1_000`, `nan`, `Infinity`).
    """
    text = text.strip()
    if not _NUMBER_TEXT.fullmatch(text):
        raise ValueError("not a number")
    return Decimal(text)


def _whole_numbers(arr: pa.Array) -> pa.Array | None:
    """A text column as int64 when every value is integer text (empty: null), else None."""
    trimmed = pc.utf8_trim_whitespace(arr)
    return _integer_text(pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed))


def _integer_text(text: pa.Array) -> pa.Array | None:
    """Trimmed text (or null) as int64 when every value is ASCII digits after an optional `-`
    and within int64, else None (then the values go value by value, with their reasons)."""
    try:
        integers = text.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # Arrow's cast also reads hex (`0x64` as 100), which value by value is refused: the same
    # row was stored or dead-lettered by what else its batch held (review13). Checked after
    # the cast, which refuses the rest, in a tenth of the time of a pattern.
    digits = pc.fill_null(pc.ascii_is_decimal(pc.ascii_ltrim(text, "-")), True)
    return integers if pc.all(digits, min_count=0).as_py() else None


def _integer_text_beyond_doubles(
    text: pa.Array, factor: float, target: pa.DataType, name: str
) -> tuple[pa.Array, tuple[np.ndarray, pa.Array] | None]:
    """Integer text beyond 2**53 scaled into a float `target` as `_scale` has the same integers
    in an int64 or uint64 column: exactly, and a fixed-point "undefined" sentinel as no value
    without a reason (review13: text `9223372036854775807` with `price = 1e-9` was parsed as a
    double first and stored as a price of 9223372036.854776, and a quarter of the integers
    beyond 2**53 came a double away from the Parquet file's).

    Returns:
        `text` with those values null, and the mask of their rows with their scaled values
        (None when there are none).
    """
    # Only text at least as long as 2**53 is looked at further: the columns this path reads
    # hold short prices, and a pattern over every value would cost more than the parse.
    long = pc.fill_null(pc.greater_equal(pc.utf8_length(text), 16), False)
    if not pc.any(long).as_py():
        return text, None
    rows = np.flatnonzero(long.to_numpy(zero_copy_only=False))
    candidates = pc.utf8_trim_whitespace(text.take(pa.array(rows)))
    integers = pc.match_substring_regex(candidates, r"^[+-]?0*[0-9]{16,20}$")
    rows = rows[pc.fill_null(integers, False).to_numpy(zero_copy_only=False)]
    values = [int(v) for v in candidates.filter(integers).to_pylist()]
    exact = {
        int(row): value
        for row, value in zip(rows, values, strict=True)
        if abs(value) > 2**53 and -(2**63) <= value < 2**64
    }
    if not exact:
        return text, None
    signed = [row for row, value in exact.items() if value < 2**63]
    unsigned = [row for row, value in exact.items() if value >= 2**63]
    scaled: dict[int, float | None] = {}
    for group, of_type in ((signed, pa.int64()), (unsigned, pa.uint64())):
        if group:
            column = _scale(
                pa.array([exact[row] for row in group], of_type), factor, target, name, {}
            )
            scaled.update(zip(group, column.to_pylist(), strict=True))
    mask = np.zeros(len(text), dtype=bool)
    mask[list(exact)] = True
    values_in_order = pa.array([scaled[row] for row in sorted(exact)], pa.float64())
    return pc.if_else(pa.array(mask), pa.scalar(None, text.type), text), (mask, values_in_order)


def _scale(
    arr: pa.Array, factor: float, target: pa.DataType, name: str, found: dict[int, str]
) -> pa.Array:
    """`arr * factor` as `target`, for integer sources into integers and anything into floats.

    A factor `1/d` (`1e-9`, `0.01`) divides by `d`: IEEE division of the exact fixed-point
    integer is correctly rounded, so 35 × 0.01 is 0.35 (the multiplication gives
    0.35000000000000003), the same double a CSV's "0.35" or a live message gives — a different
    double would keep both copies of an event apart in Silver's dedup.
    """
    if pa.types.is_integer(target):
        if float(factor).is_integer():
            try:
                return pc.multiply_checked(arr.cast(pa.int64()), pa.scalar(int(factor), pa.int64()))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        return _scale_exactly(arr, factor, target, name, found)
    inverse = 1.0 / factor
    divisor = round(inverse)
    divides = abs(factor) < 1 and abs(divisor) > 1 and abs(inverse - divisor) <= 1e-9 * abs(divisor)
    limits = np.iinfo(arr.type.to_pandas_dtype()) if pa.types.is_integer(arr.type) else None
    sentinels = [v for v in _UNDEFINED_INTEGERS if limits and limits.min <= v <= limits.max]
    if sentinels:
        # A fixed-point "undefined" (an empty book level: Databento's UNDEF_PRICE) is no value,
        # as the DBN reader has it; scaled, it was stored as a price of 9.2e9 (review12).
        undefined = pc.is_in(arr, pa.array(sentinels, arr.type))
        if pc.any(undefined).as_py():
            arr = pc.if_else(undefined, pa.scalar(None, arr.type), arr)
    try:
        values = arr.cast(pa.float64())
    except pa.ArrowInvalid:
        # Other integers beyond 2**53: the exact quotient or product, correctly rounded, value
        # by value (review11: the safe cast failed the load).
        scale = Fraction(1, divisor) if divides else Fraction(factor)
        return pa.array(
            [None if v is None else float(Fraction(v) * scale) for v in arr.to_pylist()],
            pa.float64(),
        )
    if divides:
        return pc.divide(values, pa.scalar(float(divisor)))
    return pc.multiply(values, pa.scalar(float(factor)))


def _scale_exactly(
    arr: pa.Array, factor: float, target: pa.DataType, name: str, found: dict[int, str]
) -> pa.Array:
    """`arr * factor` into an integer `target` in decimal arithmetic: each value as written
    (text as is, a float by its shortest repr), the product rounded half to even. Invalid or
    out-of-range values become null with a reason in `found`.

    A power-of-ten factor (seconds to nanoseconds) shifts plain decimal text in Arrow compute
    (review10: value by value cost 1.2-1.6 s per million rows); the other values (exponents,
    words, other factors) go value by value.
    """
    digits = _power_of_ten(factor)
    if digits is None:
        return _scale_per_value(arr, factor, target, name, found)
    text = arr if pa.types.is_string(arr.type) else arr.cast(pa.string())
    text = pc.utf8_trim_whitespace(text.cast(pa.string()))
    plain = pc.fill_null(pc.match_substring_regex(text, _PLAIN_DECIMAL), False)
    others = pc.invert(pc.or_(plain, pc.fill_null(pc.equal(text, ""), True)))
    try:
        only_plain = pc.if_else(plain, text, pa.scalar(None, pa.string()))
        shifted, outside = _shift_decimal_text(only_plain, digits)
        shifted = shifted.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # > 18 decimals, < int64 target
        return _scale_per_value(arr, factor, target, name, found)
    others = pc.or_(others, pa.array(outside))  # said why value by value
    if not pc.any(others).as_py():
        return shifted
    rows = np.flatnonzero(others.to_numpy(zero_copy_only=False))
    slow_found: dict[int, str] = {}
    slow = _scale_per_value(arr.take(pa.array(rows)), factor, target, name, slow_found)
    for i, reason in slow_found.items():
        found.setdefault(int(rows[i]), reason)
    return pc.replace_with_mask(shifted, others, slow)


#: Decimal text without an exponent and at most 18 digits before the point: what
#: `_shift_decimal_text` converts (Arrow's decimal cast wraps `1e30` around silently, and wrapped
#: 27-digit integer text, whose point was optional here, into a 2023 timestamp; review13).
_PLAIN_DECIMAL = r"^[+-]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)$"


def _power_of_ten(factor: float) -> int | None:
    """k when `factor` is 10**k for 0 <= k <= 18, else None."""
    for k in range(19):
        if factor == 10**k:
            return k
    return None


def _shift_decimal_text(text: pa.Array, digits: int) -> tuple[pa.Array, np.ndarray]:
    """`_PLAIN_DECIMAL` text (or null) times 10**digits as int64, rounded half to even as
    `Decimal(text) * 10**digits` rounds.

    Returns:
        The values (null where the text is null or the result is outside int64), and a mask
        of the results outside int64.

    Raises:
        pyarrow.ArrowInvalid: more than 18 digits after the point.
    """
    exact = text.cast(pa.decimal128(38, 18))
    rounded = pc.round(exact, digits, round_mode="half_to_even").cast(pa.decimal128(38, digits))
    # The decimal's unscaled 128-bit integer is the result; it must fit in its low word.
    words = np.frombuffer(rounded.buffers()[1], dtype=np.int64)
    words = words[2 * rounded.offset : 2 * (rounded.offset + len(rounded))].reshape(-1, 2)
    low, high = words[:, 0], words[:, 1]
    valid = rounded.is_valid().to_numpy(zero_copy_only=False)
    outside = valid & (high != low >> 63)
    return pa.array(low, type=pa.int64(), mask=~valid | outside), outside


def _scale_per_value(
    arr: pa.Array, factor: float, target: pa.DataType, name: str, found: dict[int, str]
) -> pa.Array:
    """`_scale_exactly` value by value, in Python's `Decimal`."""
    scale = Decimal(repr(float(factor)))
    out: list[int | None] = []
    for row, value in enumerate(arr.to_pylist()):
        if value is None or (isinstance(value, str) and not value.strip()):
            out.append(None)
            continue
        try:
            if isinstance(value, str):
                number = _decimal_text(value)
            elif isinstance(value, float):
                number = Decimal(repr(value))
            else:
                number = Decimal(value)
            product = _exact_product(number, scale)
            if not product.is_finite():
                raise ValueError("not a number")
            if product and product.adjusted() > _MAX_DIGITS:
                raise OverflowError("out of range")  # before int() of a huge exponent
            result = _convert_value(int(product.to_integral_value(ROUND_HALF_EVEN)), target)
        except (ArithmeticError, ValueError, TypeError):
            out.append(None)
            found.setdefault(row, f"{name}: invalid value {value!r} for type {target}")
            continue
        out.append(result)
    return pa.array(out, type=target)


def _exact_product(number: Decimal, scale: Decimal) -> Decimal:
    """`number * scale` unrounded: in Decimal's default 28 digits the product was rounded before
    it was rounded to an integer (`1.0000000005000000000000000000001` s × 1e9 gave 1000000000
    ns; review13)."""
    with localcontext() as context:
        digits = len(number.as_tuple().digits) + len(scale.as_tuple().digits)
        context.prec = max(context.prec, digits)
        return number * scale


def _report(arr: pa.Array, ok: pa.Array, name: str, found: dict[int, str], what: str) -> None:
    failed = pc.invert(pc.fill_null(ok, True))
    if pc.any(failed).as_py():
        for row in np.flatnonzero(failed.to_numpy(zero_copy_only=False)):
            found.setdefault(int(row), f"{name}: {arr[int(row)].as_py()!r} {what}")
