"""The compiled half of the canonical encoding: numba kernels that write whole rows of JSON.

Kept apart from `canonical.py` so that numba (an LLVM JIT, ~0.3 s to import, kernels cached on
disk after the first compile) is imported only when a replay encodes rows. Every kernel runs with
`nogil=True`: the replay encodes its tables on parallel threads.

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

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from iceberg_lake.engine.jit import copy_bytes, copy_from_address

#: SHA-256 of `iceberg_lake/engine/jit.py` as these kernels were compiled against. numba's disk
#: cache is invalidated by changes to this file only, not to the intrinsics inlined from jit.py,
#: so a change there must change this line too (`tests/engine/test_jit_guard.py` checks it).
JIT_SOURCE_SHA256 = "b4a71899fa99ff8331c704734e4f16824490d9477cdeee78cce14156112ef4a2"

log = logging.getLogger(__name__)


def _cached_njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`njit(cache=True, ...)`, or without the on-disk cache where there is nowhere to write it.

    numba refuses `cache=True` at decoration when neither the package directory nor the user
    cache directory is writable (a read-only image with a read-only home): the kernels then
    compile once per process (a few seconds) instead of failing every replay.
    """

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as exc:
            log.warning("%s: compiling without a cache (%s); set NUMBA_CACHE_DIR", fn.__name__, exc)
            return njit(cache=False, **options)(fn)

    return wrap


_POW10 = np.array([10.0**k for k in range(16)], dtype=np.float64)


@_cached_njit(nogil=True)
def float_decimals(values: np.ndarray, valid: np.ndarray) -> np.ndarray:  # pragma: no cover
    """For every value, the `k` of the plain-notation fast path, or -1 (format it elsewhere)."""
    n = values.shape[0]
    out = np.full(n, -1, dtype=np.int8)
    for i in range(n):
        if not valid[i]:
            continue
        x = values[i]
        ax = abs(x)
        if ax == 0.0:
            out[i] = 0
            continue
        if not (ax >= 1e-5 and ax < 1e15):
            continue
        for k in range(16):
            p = _POW10[k]
            scaled = ax * p
            if scaled >= 1e15:
                break
            m = np.floor(scaled + 0.5)
            if m / p == ax:
                out[i] = k
                break
    return out


_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint8).copy()


# Index arithmetic below is unsigned on purpose: numba adds a negative-index wraparound check to
# every access with a signed index, which doubled the cost of the byte loops. Byte ranges are
# copied with `memcpy` (`iceberg_lake.engine.jit`): numba compiles neither a byte loop nor a
# slice assignment to one.
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U2 = np.uint64(2)
_U10 = np.uint64(10)
_U100 = np.uint64(100)
_NULL = np.frombuffer(b"null", dtype=np.uint8).copy()


_E4 = np.uint64(10**4)
_E8 = np.uint64(10**8)
_E16 = np.uint64(10**16)


@njit(nogil=True, error_model="numpy", inline="always")
def _small_digits(u: np.uint64) -> np.uint64:  # pragma: no cover
    """The decimal digits of `u < 10^8` (a comparison tree: no loop to mispredict)."""
    if u < _E4:
        if u < _U100:
            return _U1 if u < _U10 else _U2
        return np.uint64(3) if u < np.uint64(1000) else np.uint64(4)
    if u < np.uint64(10**6):
        return np.uint64(5) if u < np.uint64(10**5) else np.uint64(6)
    return np.uint64(7) if u < np.uint64(10**7) else np.uint64(8)


@njit(nogil=True, error_model="numpy", inline="always")
def _write_small(out: np.ndarray, pos: np.uint64, u: np.uint64) -> np.uint64:  # pragma: no cover
    """Write `u < 10^8` in decimal at `out[pos:]`, two digits per division; returns the end."""
    end = pos + _small_digits(u)
    n = end
    while u >= _U100:
        r = u % _U100
        u = u // _U100
        n -= _U2
        out[n] = _PAIRS[_U2 * r]
        out[n + _U1] = _PAIRS[_U2 * r + _U1]
    if u >= _U10:
        out[n - _U2] = _PAIRS[_U2 * u]
        out[n - _U1] = _PAIRS[_U2 * u + _U1]
    else:
        out[n - _U1] = np.uint8(48) + np.uint8(u)
    return end


@njit(nogil=True, error_model="numpy", inline="always")
def _write_eight(out: np.ndarray, pos: np.uint64, u: np.uint64) -> None:  # pragma: no cover
    """Write `u < 10^8` as exactly eight digits (leading zeros) at `out[pos:]`."""
    hi = u // _E4
    lo = u - hi * _E4
    a = hi // _U100
    b = hi - a * _U100
    c = lo // _U100
    d = lo - c * _U100
    out[pos] = _PAIRS[_U2 * a]
    out[pos + _U1] = _PAIRS[_U2 * a + _U1]
    out[pos + _U2] = _PAIRS[_U2 * b]
    out[pos + np.uint64(3)] = _PAIRS[_U2 * b + _U1]
    out[pos + np.uint64(4)] = _PAIRS[_U2 * c]
    out[pos + np.uint64(5)] = _PAIRS[_U2 * c + _U1]
    out[pos + np.uint64(6)] = _PAIRS[_U2 * d]
    out[pos + np.uint64(7)] = _PAIRS[_U2 * d + _U1]


@njit(nogil=True, error_model="numpy", inline="always")
def _write_uint(out: np.ndarray, pos: np.uint64, u: np.uint64) -> np.uint64:  # pragma: no cover
    """Write `u` in decimal at `out[pos:]` in place; returns the end.

    Cut into eight-digit groups: the leading group written with its own length, the rest as
    fixed eight-digit blocks whose four divisions are independent. A nanosecond timestamp (19
    digits) costs half of what one long chain of divisions by 100 did; small numbers take a
    comparison tree instead of a digit-counting loop.
    """
    if u < _E8:
        return _write_small(out, pos, u)
    if u < _E16:
        hi = u // _E8
        pos = _write_small(out, pos, hi)
        _write_eight(out, pos, u - hi * _E8)
        return pos + np.uint64(8)
    top = u // _E16
    rest = u - top * _E16
    mid = rest // _E8
    pos = _write_small(out, pos, top)
    _write_eight(out, pos, mid)
    _write_eight(out, pos + np.uint64(8), rest - mid * _E8)
    return pos + np.uint64(16)


@njit(nogil=True, inline="always")
def _copy(
    out: np.ndarray, pos: np.uint64, src: np.ndarray, a: np.uint64, b: np.uint64
) -> np.uint64:  # pragma: no cover
    """Copy `src[a:b]` to `out[pos:]`; returns the end.

    Always `memcpy`: measured against a byte loop below 4, 8 and 16 bytes, the call was as fast
    or faster for the key fragments, numbers and strings of real rows.
    """
    copy_bytes(out, pos, src, a, b - a)
    return pos + (b - a)


@_cached_njit(nogil=True, error_model="numpy")
def write_rows(  # pragma: no cover
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
    the last one. Returns the number of bytes written.
    """
    ncols = np.uint64(kinds.shape[0])
    pos = _U0
    offsets[0] = 0
    for ii in range(n):
        i = np.uint64(ii)
        j = _U0
        while j < ncols:
            pos = _copy(out, pos, keydata, np.uint64(keyoff[j]), np.uint64(keyoff[j + _U1]))
            kind = kinds[j]
            s = np.uint64(slots[j])
            j += _U1
            if kind == 0:
                if not intvalid[s, i]:
                    pos = _copy(out, pos, _NULL, _U0, np.uint64(4))
                    continue
                v = ints[s, i]
                if v < 0:
                    out[pos] = 45
                    pos += _U1
                    u = np.uint64(-(v + 1)) + _U1
                else:
                    u = np.uint64(v)
                pos = _write_uint(out, pos, u)
            elif kind == 1:
                if not floatvalid[s, i]:
                    pos = _copy(out, pos, _NULL, _U0, np.uint64(4))
                    continue
                k = decimals[s, i]
                if k < 0:
                    e = np.uint64(floatfb[s, i])
                    pos = _copy(out, pos, entdata, np.uint64(entoff[e]), np.uint64(entoff[e + _U1]))
                    continue
                x = floats[s, i]
                if x < 0.0:
                    out[pos] = 45
                    pos += _U1
                uk = np.uint64(k)
                m = np.uint64(np.floor(abs(x) * _POW10[uk] + 0.5))
                start = pos
                pos = _write_uint(out, pos, m)
                if uk == _U0:
                    out[pos] = 46
                    out[pos + _U1] = 48
                    pos += _U2
                else:
                    digits = pos - start
                    if digits > uk:
                        # Shift the last k digits right by one and put the point in.
                        b = pos
                        while b > pos - uk:
                            out[b] = out[b - _U1]
                            b -= _U1
                        out[pos - uk] = 46
                        pos += _U1
                    else:
                        # 0.00ddd: move the digits right by (k - digits) + 2.
                        shift = uk - digits + _U2
                        b = pos
                        while b > start:
                            b -= _U1
                            out[b + shift] = out[b]
                        out[start] = 48
                        out[start + _U1] = 46
                        b = start + _U2
                        while b < start + shift:
                            out[b] = 48
                            b += _U1
                        pos += shift
            else:
                e = stridx[s, i]
                if e < 0:
                    pos = _copy(out, pos, _NULL, _U0, np.uint64(4))
                    continue
                ue = np.uint64(e)
                pos = _copy(out, pos, entdata, np.uint64(entoff[ue]), np.uint64(entoff[ue + _U1]))
        pos = _copy(out, pos, keydata, np.uint64(keyoff[ncols]), np.uint64(keyoff[ncols + _U1]))
        offsets[ii + 1] = pos
    return int(pos)


@_cached_njit(nogil=True)
def frame_rows(  # pragma: no cover
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
    `addresses[k]` (the parts' offsets concatenated; buffers by address, see
    `iceberg_lake.engine.jit.copy_from_address`); its frame is the part's prefix (table id and
    `\\x1f`, `prefixes[prefix_off[k]:prefix_off[k + 1]]`), the payload and `\\n`. Returns the
    bytes written to `framed`.
    """
    want_bare = bare.shape[0] > 0
    pos = _U0
    bpos = _U0
    framed_off[0] = 0
    if want_bare:
        bare_off[0] = 0
    for r in range(part_of.shape[0]):
        uk = np.uint64(part_of[r])
        g = np.uint64(offset_base[uk]) + np.uint64(rowpos[r])
        pos = _copy(
            framed, pos, prefixes, np.uint64(prefix_off[uk]), np.uint64(prefix_off[uk + _U1])
        )
        a = np.uint64(offsets[g])
        size = np.uint64(offsets[g + _U1]) - a
        source = np.uint64(addresses[uk]) + a
        copy_from_address(framed, pos, source, size)
        pos += size
        framed[pos] = 10
        pos += _U1
        framed_off[r + 1] = pos
        if want_bare:
            copy_from_address(bare, bpos, source, size)
            bpos += size
            bare_off[r + 1] = bpos
    return int(pos)
