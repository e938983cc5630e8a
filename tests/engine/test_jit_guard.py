"""Guard for `iceberg_lake.engine.jit`: the `memcpy` intrinsics the replay kernels copy with.

They build on numba's array model (`context.make_array(...).data` is the data pointer) and LLVM's
`llvm.memcpy` intrinsic; a numba or llvmlite upgrade that changes either fails here, by name,
before a replay writes wrong bytes. Budget: < 5 s (one small compile per kernel).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from iceberg_lake.engine.jit import copy_bytes, copy_from_address


@njit
def _copy_ranges(out, src, starts, sizes):  # type: ignore[no-untyped-def]
    pos = np.uint64(0)
    for i in range(starts.shape[0]):
        copy_bytes(out, pos, src, np.uint64(starts[i]), np.uint64(sizes[i]))
        pos += np.uint64(sizes[i])
    return pos


@njit
def _copy_addresses(out, addresses, sizes):  # type: ignore[no-untyped-def]
    pos = np.uint64(0)
    for i in range(addresses.shape[0]):
        copy_from_address(out, pos, np.uint64(addresses[i]), np.uint64(sizes[i]))
        pos += np.uint64(sizes[i])
    return pos


def test_numba_version_is_the_one_the_intrinsics_were_checked_on() -> None:
    assert numba.__version__ == "0.68.1", "re-check engine/jit.py against this numba, then update"


def test_copy_bytes_copies_exactly_the_range_at_every_length_and_offset() -> None:
    rng = np.random.default_rng(5)
    src = rng.integers(0, 256, 4096, dtype=np.uint8)
    sizes = np.array([0, 1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 300, 1000], dtype=np.int64)
    starts = np.array([0, 5, 11, 100, 1, 2, 3, 4, 999, 17, 2000, 7, 64, 3000], dtype=np.int64)
    out = np.full(int(sizes.sum()) + 16, 0xAB, dtype=np.uint8)
    end = _copy_ranges(out, src, starts, sizes)
    expected = np.concatenate([src[a : a + n] for a, n in zip(starts, sizes, strict=True)])
    assert end == len(expected)
    assert bytes(out[:end]) == expected.tobytes()
    assert (out[end:] == 0xAB).all()  # nothing written past the last range


def test_copy_from_address_reads_the_bytes_at_each_arrays_address() -> None:
    parts = [
        np.frombuffer(text, dtype=np.uint8) for text in (b"alpha", b"", b"bravo-charlie", b"d")
    ]
    addresses = np.array([p.ctypes.data for p in parts], dtype=np.uint64)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    out = np.zeros(64, dtype=np.uint8)
    end = _copy_addresses(out, addresses, sizes)
    assert bytes(out[:end]) == b"alphabravo-charlied"
    assert not out[end:].any()


def test_the_cached_kernels_name_the_jit_source_they_were_compiled_against() -> None:
    """numba's on-disk cache of the replay kernels is invalidated only by edits to their own
    module: an edit to engine/jit.py must come with a new `JIT_SOURCE_SHA256` there."""
    import hashlib
    from pathlib import Path

    from iceberg_lake.engine import jit
    from iceberg_lake.timetravel import _canonical_kernel

    source = hashlib.sha256(Path(jit.__file__).read_bytes()).hexdigest()
    assert source == _canonical_kernel.JIT_SOURCE_SHA256, (
        "engine/jit.py changed: set JIT_SOURCE_SHA256 in timetravel/_canonical_kernel.py to "
        f"{source} so cached kernels are recompiled"
    )
