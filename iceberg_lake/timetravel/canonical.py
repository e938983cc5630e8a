"""The canonical encoding of replayed rows, vectorised with Arrow compute.

A replayed event's canonical form is its row as compact JSON with the keys sorted, exactly what
`msgspec.json.Encoder(order="sorted").encode(row_dict)` gives for the row's Python values. The
replay sequence hash (see `iceberg_lake.timetravel.replay`) is a SHA-256 over these bytes, so the
encoding must never change: a manifest written by an older version has to verify with a newer one.

`encode_rows` produces the same bytes for a whole Arrow table at once, one column at a time:

* integers and booleans: Arrow's cast to string (`12`, `true`), identical to msgspec;
* floats (float32 is widened to float64 first, as `to_pylist` does): Arrow's shortest round-trip
  digits, with `.0` appended to integral values; `-0.0` is written `0.0` (the replay has always
  read rows through DuckDB's `ORDER BY`, which normalises it, so recorded hashes contain `0.0`).
  Arrow and msgspec agree on the digits but not on the notation outside `1e-5 <= |x| < 1e9`
  (`1e+16` vs `1e16`), so values outside that range, and NaN/±inf (msgspec writes `null`), are
  encoded one by one with msgspec;
* strings: quoted as they are (msgspec writes non-ASCII as UTF-8); a string that needs escaping
  (`"`, `\\`, control characters) is encoded by msgspec; low-cardinality columns are formatted once
  per distinct value through a dictionary;
* nulls: `null`; any other type (timestamps, lists, …): msgspec, value by value.

Then one `binary_join_element_wise` call interleaves the constant `{"key":` fragments with the
formatted values. `tests/test_replay_encoding.py` checks every rule against msgspec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["encode_rows", "encode_values", "row_encoder"]

#: The canonical row encoder: the one the event iterator has always used.
row_encoder = msgspec.json.Encoder(order="sorted")
_value_encoder = msgspec.json.Encoder()

# Range where Arrow's float formatting equals msgspec's (besides the `.0` of integral values).
_FLOAT_LO, _FLOAT_HI = 1e-5, 1e9
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'


def _scatter(values: pa.Array, positions: np.ndarray, replacement: list[str]) -> pa.Array:
    """`values` (strings) with `values[positions[i]] = replacement[i]` (rare-path fix-ups)."""
    arr = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    arr[positions] = replacement
    return pa.array(arr, pa.string())


def _msgspec_each(values: pa.Array) -> pa.Array:
    return pa.array([_value_encoder.encode(v).decode() for v in values.to_pylist()], pa.string())


def _floats(col: pa.Array) -> pa.Array:
    if not pa.types.is_float64(col.type):
        col = pc.cast(col, pa.float64())
    values = col.to_numpy(zero_copy_only=False)  # nulls become NaN: handled as unsafe below
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(values)
        zero = values == 0.0
        safe = ((magnitude >= _FLOAT_LO) & (magnitude < _FLOAT_HI)) | zero
        integral = safe & (np.floor(values) == values)
    # -0.0 is written as 0.0: the replay always read rows through DuckDB's ORDER BY, whose
    # normalised sort keys turn -0.0 into 0.0, so that is what every recorded hash contains.
    text = pc.cast(pc.if_else(pa.array(zero), 0.0, col) if zero.any() else col, pa.string())
    if integral.any():
        text = pc.if_else(pa.array(integral), pc.binary_join_element_wise(text, ".0", ""), text)
    unsafe = pc.and_(pc.invert(pa.array(safe)), pc.is_valid(col))
    if pc.any(unsafe).as_py():
        positions = np.flatnonzero(unsafe.to_numpy(zero_copy_only=False))
        picked = col.take(pa.array(positions)).to_pylist()
        text = _scatter(text, positions, [_value_encoder.encode(v).decode() for v in picked])
    return text


def _strings(col: pa.Array) -> pa.Array:
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    if len(col) > 64:
        encoded = pc.dictionary_encode(col)
        if len(encoded.dictionary) * 4 < len(col):
            # Few distinct values (symbols, sources): format each once.
            return pc.take(_strings(encoded.dictionary), encoded.indices)
    quoted = pc.binary_join_element_wise('"', col, '"', "")
    escape = pc.match_substring_regex(col, _NEEDS_ESCAPE)
    if pc.any(escape).as_py():
        positions = np.flatnonzero(pc.fill_null(escape, False).to_numpy(zero_copy_only=False))
        picked = col.take(pa.array(positions)).to_pylist()
        quoted = _scatter(quoted, positions, [_value_encoder.encode(v).decode() for v in picked])
    return quoted


def encode_values(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value of `col` as canonical JSON text (what msgspec writes for its Python value).

    Args:
        col: one column.

    Returns:
        A string array of the same length, without nulls (`null` for a null value).
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    kind = col.type
    if pa.types.is_null(kind):
        return pa.array(["null"] * len(col), pa.string())
    if pa.types.is_dictionary(kind):
        col = col.dictionary_decode()
        kind = col.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = pc.cast(col, pa.string())
    elif pa.types.is_floating(kind):
        text = _floats(col)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = _strings(col)
    else:
        return _msgspec_each(col)
    return pc.fill_null(text, "null") if text.null_count else text


def encode_rows(table: pa.Table, columns: Sequence[str] | None = None) -> pa.Array:
    """The canonical JSON of every row of `table` (keys sorted), as one string array.

    Args:
        table: the rows.
        columns: the columns that make up the row (default: all of `table`'s).

    Returns:
        A string array; element i equals `row_encoder.encode(table.slice(i, 1).to_pylist()[0])`.
    """
    names = sorted(columns if columns is not None else table.column_names)
    if table.num_rows == 0:
        return pa.array([], pa.string())
    if not names:
        return pa.array(["{}"] * table.num_rows, pa.string())
    parts: list[Any] = []
    for i, name in enumerate(names):
        key = _value_encoder.encode(name).decode()
        parts.append(("{" if i == 0 else ",") + key + ":")
        parts.append(encode_values(table.column(name)))
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")
