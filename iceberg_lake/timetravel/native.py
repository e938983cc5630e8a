"""The replay's compiled kernels (`_canonical.c`): the canonical encoding's rows of JSON and
the hashed frames of merged events.

The kernels (`_canonical.c`) are built at install (`hatch_build.py`), or on first use in a
checkout, and loaded with ctypes in about a millisecond; ctypes releases the GIL for each call, so
the replay encodes its tables on parallel threads. (They replaced numba kernels whose import and
cache load cost ~0.6 s of every `lake replay`; the bytes are the same:
`tests/test_replay_compat.py`.)

Floats. msgspec writes the shortest decimal that reads back as the same double (Python's
`repr` digits), in plain notation for `1e-5 <= |x| < 1e16`. For a value `x` with `|x| < 1e15`,
the kernel looks for the fewest decimals `k` such that `m = round(|x|·10^k)` has at most 15
digits and `m / 10^k == |x|` exactly. Any decimal of at most 15 significant digits reads back to
a different double than every other such decimal (15 < log10(2^53)), and `m / 10^k`, an IEEE
division of two exact values, rounds exactly as parsing the decimal does, so when such an `m`
exists its digits (with `k` decimals, `.0` when `k == 0`) are the shortest representation. The
values where no such `m` exists (16–17 digits, out of range, NaN, ±inf) are marked `-1` and
formatted by the caller one by one, exactly as before (they are rare in market data: prices and
sizes are short decimals).
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from iceberg_lake.exceptions import ConfigError
from iceberg_lake.timetravel import _native_build

_P = ctypes.c_void_p
_I64 = ctypes.c_int64

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    """The kernels' library, built first when this checkout has none for its source."""
    global _library
    with _lock:
        if _library is None:
            path = _native_build.library_path()
            if not path.exists():
                try:
                    path = _native_build.build()
                except (RuntimeError, OSError) as exc:
                    raise ConfigError(
                        f"the replay's compiled encoding is missing ({_where(path)}) and could "
                        f"not be built: {exc}; reinstall iceberg_lake where a C compiler (cc) "
                        "is available"
                    ) from None
            library = ctypes.CDLL(str(path))
            library.float_decimals.argtypes = [_P, _P, _I64, _P]
            library.float_decimals.restype = None
            library.write_rows.argtypes = [_I64, _I64, *[_P] * 15]
            library.write_rows.restype = _I64
            library.frame_rows.argtypes = [_I64, *[_P] * 11, ctypes.c_int32]
            library.frame_rows.restype = _I64
            _library = library
        return _library


def _where(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _in(array: np.ndarray, dtype: type) -> np.ndarray:
    """`array` as a C-contiguous array of `dtype` (copied only when it is not one already)."""
    return np.ascontiguousarray(array, dtype=dtype)


def _out(array: np.ndarray, dtype: type) -> int:
    """The address of an output buffer, which must already be C-contiguous `dtype`."""
    if array.dtype != np.dtype(dtype) or not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"a kernel output must be a writable C-contiguous {np.dtype(dtype)} array")
    return int(array.ctypes.data)


def load() -> None:
    """Load (in a checkout: build) the kernels now rather than at their first call."""
    _load()


def float_decimals(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """For every value, the `k` of the plain-notation fast path, or -1 (format it elsewhere)."""
    values, valid = _in(values, np.float64), _in(valid, np.bool_)
    out = np.empty(len(values), dtype=np.int8)
    _load().float_decimals(values.ctypes.data, valid.ctypes.data, len(values), out.ctypes.data)
    return out


def write_rows(
    n: int,
    kinds: np.ndarray,
    slots: np.ndarray,
    keydata: np.ndarray,
    keyoff: np.ndarray,
    ints: np.ndarray,
    intvalid: np.ndarray,
    floats: np.ndarray,
    floatvalid: np.ndarray,
    decimals: np.ndarray,
    floatfb: np.ndarray,
    stridx: np.ndarray,
    entdata: np.ndarray,
    entoff: np.ndarray,
    out: np.ndarray,
    offsets: np.ndarray,
) -> int:
    """Write the JSON of rows `0..n-1` into `out`, row i at `out[offsets[i]:offsets[i + 1]]`.

    Column j (in key order) is `kinds[j]` — 0: integer (`ints[slots[j]]`), 1: float
    (`floats[slots[j]]`, decimals from `float_decimals`, `floatfb` the entry of a value formatted
    elsewhere), 2: preformatted text (`stridx[slots[j]]`, an entry of `entdata`/`entoff`, -1 null)
    — preceded by its key fragment (`keydata[keyoff[j]:keyoff[j + 1]]`); the closing fragment is
    the last one. The 2-d arrays have `n` columns. `out` must hold every byte and `offsets`
    `n + 1` values (nothing is checked in the kernel). Returns the number of bytes written.
    """
    inputs = (
        _in(kinds, np.int8),
        _in(slots, np.int64),
        _in(keydata, np.uint8),
        _in(keyoff, np.int64),
        _in(ints, np.int64),
        _in(intvalid, np.bool_),
        _in(floats, np.float64),
        _in(floatvalid, np.bool_),
        _in(decimals, np.int8),
        _in(floatfb, np.int64),
        _in(stridx, np.int64),
        _in(entdata, np.uint8),
        _in(entoff, np.int64),
    )
    for table in inputs[4:11]:
        if table.ndim != 2 or table.shape[1] != n:
            raise ValueError(f"a per-column table of shape {table.shape} for {n} rows")
    if len(offsets) < n + 1:
        raise ValueError(f"{len(offsets)} offsets for {n} rows")
    addresses = [a.ctypes.data for a in inputs]
    return int(
        _load().write_rows(
            n,
            len(inputs[0]),
            *addresses,
            _out(out, np.uint8),
            _out(offsets, np.int64),
        )
    )


def frame_rows(
    part_of: np.ndarray,
    rowpos: np.ndarray,
    offsets: np.ndarray,
    offset_base: np.ndarray,
    addresses: np.ndarray,
    prefixes: np.ndarray,
    prefix_off: np.ndarray,
    framed: np.ndarray,
    framed_off: np.ndarray,
    bare: np.ndarray,
    bare_off: np.ndarray,
) -> int:
    """Write the hashed frame of every merged event, and its bare payload when `bare` has room.

    Event r is row `g = rowpos[r]` of part `k = part_of[r]`, whose payload is the bytes
    `[offsets[offset_base[k] + g], offsets[offset_base[k] + g + 1])` of the buffer at
    `addresses[k]` (the parts' offsets concatenated; the caller keeps those buffers alive); its
    frame is the part's prefix (table id and `\\x1f`, `prefixes[prefix_off[k]:prefix_off[k +
    1]]`), the payload and `\\n`. `framed`, `framed_off` (and `bare`, `bare_off`) must hold every
    byte and offset (nothing is checked in the kernel). Returns the bytes written to `framed`.
    """
    inputs = (
        _in(part_of, np.int64),
        _in(rowpos, np.int64),
        _in(offsets, np.int64),
        _in(offset_base, np.int64),
        _in(addresses, np.uint64),
        _in(prefixes, np.uint8),
        _in(prefix_off, np.int64),
    )
    n = len(inputs[0])
    if len(framed_off) < n + 1:
        raise ValueError(f"{len(framed_off)} frame offsets for {n} events")
    want_bare = len(bare) > 0
    if want_bare and len(bare_off) < n + 1:
        raise ValueError(f"{len(bare_off)} payload offsets for {n} events")
    return int(
        _load().frame_rows(
            n,
            *[a.ctypes.data for a in inputs],
            _out(framed, np.uint8),
            _out(framed_off, np.int64),
            _out(bare, np.uint8) if want_bare else None,
            _out(bare_off, np.int64) if want_bare else None,
            1 if want_bare else 0,
        )
    )
