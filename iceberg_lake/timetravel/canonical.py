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

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "Scratch",
    "encode_rows",
    "encode_rows_raw",
    "encode_values",
    "one_array",
    "frame_rows",
    "row_encoder",
    "warm_up",
]

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
        # Append `.0` to the integral values only (a masked replace, not a join over all).
        mask = pa.array(integral)
        fixed = pc.binary_join_element_wise(text.filter(mask), ".0", "")
        text = pc.replace_with_mask(text, mask, fixed)
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


def one_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`col` as one array: its only chunk as is (`ChunkedArray.combine_chunks` copies even
    that), several chunks concatenated."""
    if not isinstance(col, pa.ChunkedArray):
        return col
    if col.num_chunks == 1:
        return col.chunk(0)
    return col.combine_chunks()


def encode_values(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value of `col` as canonical JSON text (what msgspec writes for its Python value).

    Args:
        col: one column.

    Returns:
        A string array of the same length, without nulls (`null` for a null value).
    """
    col = one_array(col)
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


def warm_up() -> None:
    """Load the compiled kernels before the first window needs them (in a checkout without a
    build of their source: compile them, once): a replay calls this on a thread while it plans
    its reads.
    """
    from iceberg_lake.timetravel import native as kernel

    kernel.load()


class Scratch:
    """A byte buffer reused from one replay window to the next.

    A fresh buffer of a few hundred MB costs a page fault per 4 KiB on first write (about a third
    of the framing time measured); reusing one keeps its pages. Not thread-safe: one per thread
    of use, and a result written into it is valid until the next `get`.
    """

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)

    def get(self, size: int) -> np.ndarray:
        """A buffer of at least `size` bytes (contents undefined)."""
        if len(self._buffer) < size:
            # Headroom, so windows of similar size do not reallocate.
            self._buffer = np.empty(size + size // 4, dtype=np.uint8)
        return self._buffer


def _text_bytes(text: pa.Array) -> int:
    """The UTF-8 bytes of a string array's values."""
    return int(pc.sum(pc.binary_length(text.cast(pa.binary()))).as_py() or 0)


def _entries(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Preformatted text for a column the kernel does not format itself: (entries, index).

    Low-cardinality columns (symbols, sources, booleans) are formatted once per distinct value
    through a dictionary; the index is -1 for a null.
    """
    if len(col) > 64 and not pa.types.is_null(col.type):
        encoded = pc.dictionary_encode(col)
        if len(encoded.dictionary) * 4 < len(col):
            index = pc.fill_null(encoded.indices.cast(pa.int64()), -1).to_numpy()
            return encode_values(encoded.dictionary), index
    return encode_values(col), np.arange(len(col), dtype=np.int64)


def encode_rows(table: pa.Table, columns: Sequence[str] | None = None) -> pa.Array:
    """The canonical JSON of every row of `table` (keys sorted), as one string array.

    Args:
        table: the rows.
        columns: the columns that make up the row (default: all of `table`'s).

    Returns:
        A string array; element i equals `row_encoder.encode(table.slice(i, 1).to_pylist()[0])`.
    """
    offsets, data = encode_rows_raw(table, columns)
    n = len(offsets) - 1
    body = pa.py_buffer(data)
    if len(data) < 2**31 - 1:
        return pa.Array.from_buffers(
            pa.string(), n, [None, pa.py_buffer(offsets.astype(np.int32)), body]
        )
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), body])


def encode_rows_raw(
    table: pa.Table, columns: Sequence[str] | None = None, scratch: Scratch | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`encode_rows` as numpy buffers: int64 offsets (n + 1) and the UTF-8 bytes.

    Integers and floats are written by a compiled kernel (`native.write_rows`, whose
    docstring gives the float rule); every other column is formatted column-wise by
    `encode_values` and copied in. The rare floats the kernel's fast path does not cover are
    formatted by `encode_values` too.

    Args:
        table: the rows.
        columns: the columns that make up the row (default: all of `table`'s).
        scratch: write the bytes into this reusable buffer (the result then lives only until
            its next use); None: a new buffer.

    Returns:
        `(offsets, data)`: row i is `data[offsets[i]:offsets[i + 1]]`.
    """
    from iceberg_lake.timetravel import native as kernel

    names = sorted(columns if columns is not None else table.column_names)
    n = table.num_rows
    if n == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    fragments = [
        ("{" if i == 0 else ",") + _value_encoder.encode(k).decode() + ":"
        for i, k in enumerate(names)
    ]
    fragments.append("}" if names else "{}")
    keybytes = [f.encode() for f in fragments]
    keydata = np.frombuffer(b"".join(keybytes), dtype=np.uint8)
    keyoff = np.zeros(len(keybytes) + 1, dtype=np.int64)
    keyoff[1:] = np.cumsum([len(b) for b in keybytes])

    kinds = np.zeros(len(names), dtype=np.int8)
    slots = np.zeros(len(names), dtype=np.int64)
    int_cols: list[pa.Array] = []
    float_cols: list[pa.Array] = []
    entry_arrays: list[pa.Array] = []
    str_index: list[np.ndarray] = []
    str_sizes: list[tuple[int, int]] = []  # (longest entry, total bytes) per text column
    entry_base = 0
    for j, name in enumerate(names):
        col = one_array(table.column(name))
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        kind = col.type
        if pa.types.is_integer(kind) and kind != pa.uint64():
            kinds[j], slots[j] = 0, len(int_cols)
            int_cols.append(col)
        elif pa.types.is_floating(kind):
            kinds[j], slots[j] = 1, len(float_cols)
            float_cols.append(col if pa.types.is_float64(kind) else pc.cast(col, pa.float64()))
        else:
            entries, index = _entries(col)
            kinds[j], slots[j] = 2, len(str_index)
            if entry_base:
                index = np.where(index >= 0, index + entry_base, -1)
            str_index.append(index)
            entry_arrays.append(entries)
            entry_base += len(entries)
            if len(entries) < n:  # a dictionary: at most its longest entry per row
                lengths = pc.binary_length(entries.cast(pa.binary()))
                str_sizes.append((int(pc.max(lengths).as_py() or 0), 0))
            else:
                str_sizes.append((0, _text_bytes(entries) + 4 * n))

    ints = np.empty((len(int_cols), n), dtype=np.int64)
    intvalid = np.ones((len(int_cols), n), dtype=np.bool_)
    for s, col in enumerate(int_cols):
        if col.null_count:
            intvalid[s] = col.is_valid().to_numpy(zero_copy_only=False)
            col = pc.fill_null(col, 0)
        ints[s] = col.to_numpy(zero_copy_only=False)

    floats = np.empty((len(float_cols), n), dtype=np.float64)
    floatvalid = np.ones((len(float_cols), n), dtype=np.bool_)
    decimals = np.empty((len(float_cols), n), dtype=np.int8)
    floatfb = np.full((len(float_cols), n), -1, dtype=np.int64)
    fallback_bytes = 0
    for s, col in enumerate(float_cols):
        if col.null_count:
            floatvalid[s] = col.is_valid().to_numpy(zero_copy_only=False)
            floats[s] = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False)
        else:
            floats[s] = col.to_numpy(zero_copy_only=False)
        decimals[s] = kernel.float_decimals(floats[s], floatvalid[s])
        slow = np.flatnonzero((decimals[s] < 0) & floatvalid[s])
        if len(slow):
            entries = encode_values(col.take(pa.array(slow)))
            floatfb[s, slow] = np.arange(len(slow)) + entry_base
            entry_arrays.append(entries)
            entry_base += len(entries)
            fallback_bytes += _text_bytes(entries)

    if entry_arrays:
        merged = pa.concat_arrays([a.cast(pa.large_string()) for a in entry_arrays])
        entoff = np.frombuffer(merged.buffers()[1], dtype=np.int64)[
            merged.offset : merged.offset + len(merged) + 1
        ]
        entdata = np.frombuffer(merged.buffers()[2] or b"", dtype=np.uint8)
    else:
        entoff = np.zeros(1, dtype=np.int64)
        entdata = np.zeros(0, dtype=np.uint8)
    stridx = np.stack(str_index) if str_index else np.empty((0, n), dtype=np.int64)

    # An upper bound of the output (pages never written are never touched): keys, 20 bytes per
    # integer, 24 per fast float, the longest entry (or "null") per dictionary-formatted value,
    # and every other preformatted byte.
    bound = n * (int(keyoff[-1]) + 20 * len(int_cols) + 24 * len(float_cols)) + fallback_bytes
    for width, total in str_sizes:
        bound += max(n * max(width, 4), total)
    out = np.empty(bound, dtype=np.uint8) if scratch is None else scratch.get(bound)
    offsets = np.empty(n + 1, dtype=np.int64)
    total = kernel.write_rows(
        n,
        kinds,
        slots,
        keydata,
        keyoff,
        ints,
        intvalid,
        floats,
        floatvalid,
        decimals,
        floatfb,
        stridx,
        entdata,
        entoff,
        out,
        offsets,
    )
    return offsets, out[:total]


def frame_rows(
    payloads: Sequence[tuple[np.ndarray, np.ndarray]],
    prefixes: Sequence[bytes],
    part_of: np.ndarray,
    rowpos: np.ndarray,
    bare: bool,
    scratch: Scratch | None = None,
) -> tuple[np.ndarray, pa.Array | None]:
    """The hashed bytes of merged events: `prefix + payload + b"\\n"` each, concatenated.

    Args:
        payloads: per part, `encode_rows_raw` output (rows in the part's read order).
        prefixes: per part, the frame prefix (table identifier and `\\x1f`).
        part_of: the part of every merged event.
        rowpos: the row (in its part's payloads) of every merged event.
        bare: also return the payloads alone, in merged order, as a binary array.
        scratch: write the frames into this reusable buffer (they then live only until its
            next use); None: a new buffer. The bare payloads always get a new buffer.

    Returns:
        The frames as one uint8 array, and the bare payloads (None unless `bare`).
    """
    from iceberg_lake.timetravel import native as kernel

    n = len(part_of)
    prefix_bytes = b"".join(prefixes)
    prefix_off = np.zeros(len(prefixes) + 1, dtype=np.int64)
    prefix_off[1:] = np.cumsum([len(p) for p in prefixes])
    longest = max((len(p) for p in prefixes), default=0)
    payload_bytes = sum(len(data) for _, data in payloads)
    size = payload_bytes + n * (longest + 1)
    framed = np.empty(size, dtype=np.uint8) if scratch is None else scratch.get(size)
    framed_off = np.empty(n + 1, dtype=np.int64)
    bare_data = np.empty(payload_bytes if bare else 0, dtype=np.uint8)
    bare_off = np.empty(n + 1 if bare else 0, dtype=np.int64)
    # The kernel reads each part's bytes by address: `datas` keeps the buffers alive.
    datas = [np.ascontiguousarray(data, dtype=np.uint8) for _, data in payloads]
    part_offsets = [np.asarray(offsets, dtype=np.int64) for offsets, _ in payloads]
    all_offsets = np.concatenate(part_offsets) if part_offsets else np.zeros(0, dtype=np.int64)
    offset_base = np.zeros(len(payloads), dtype=np.int64)
    offset_base[1:] = np.cumsum([len(offsets) for offsets in part_offsets])[:-1]
    total = kernel.frame_rows(
        np.ascontiguousarray(part_of, dtype=np.int64),
        np.ascontiguousarray(rowpos, dtype=np.int64),
        all_offsets,
        offset_base,
        np.array([data.ctypes.data for data in datas], dtype=np.uint64),
        np.frombuffer(prefix_bytes, dtype=np.uint8),
        prefix_off,
        framed,
        framed_off,
        bare_data,
        bare_off,
    )
    if not bare:
        return framed[:total], None
    size = int(bare_off[-1]) if n else 0
    if size >= 2**31 - 1:
        raise ValueError(f"a replay window of {size} bytes of payloads is too large")
    offsets32 = bare_off.astype(np.int32) if n else np.zeros(1, dtype=np.int32)
    array = pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets32), pa.py_buffer(bare_data[:size])]
    )
    return framed[:total], array
