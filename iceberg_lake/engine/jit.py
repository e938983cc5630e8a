"""Code generation for the compiled replay kernels that numba's public API does not offer.

numba compiles a byte-copy loop (`out[i] = src[j]` over a range) to a byte-at-a-time loop, and a
slice assignment to an element loop with slice bookkeeping; neither becomes a `memcpy`. The
canonical encoding copies 5-300 byte fragments hundreds of millions of times per replay, where
libc's `memcpy` (wide loads and stores) is 2-10x faster. `copy_bytes` emits LLVM's `memcpy`
intrinsic through `numba.extending.intrinsic`, reading the data pointers from numba's array
model (`context.make_array`): the one numba internal this relies on, guarded by
`tests/engine/test_jit_guard.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["copy_bytes", "copy_from_address"]

_VOIDPTR = ir.IntType(8).as_pointer()


def _memcpy(builder: Any, dst: Any, src: Any, count: Any) -> None:
    """Emit `llvm.memcpy(dst, src, count, volatile=false)` (both `i8*`, count `i64`)."""
    memcpy = builder.module.declare_intrinsic("llvm.memcpy", [_VOIDPTR, _VOIDPTR, ir.IntType(64)])
    builder.call(memcpy, [dst, src, count, ir.Constant(ir.IntType(1), 0)])


def _copy_bytes(
    typingctx: Any, out: Any, pos: Any, src: Any, start: Any, count: Any
) -> Any:  # pragma: no cover - runs at compile time
    """`out[pos:pos + count] = src[start:start + count]` as one `memcpy` (no bounds checks).

    Only inside `@njit` code; both arrays 1-d contiguous uint8, the ranges in bounds and not
    overlapping (the caller guarantees it; nothing is checked).
    """
    if not (
        isinstance(out, types.Array)
        and isinstance(src, types.Array)
        and out.dtype == types.uint8
        and src.dtype == types.uint8
        and out.layout == "C"
        and src.layout == "C"
    ):
        return None
    sig = types.void(out, types.uint64, src, types.uint64, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        out_ty, _, src_ty, _, _ = signature.args
        dst_arr = context.make_array(out_ty)(context, builder, args[0])
        src_arr = context.make_array(src_ty)(context, builder, args[2])
        dst = builder.gep(dst_arr.data, [args[1]])
        source = builder.gep(src_arr.data, [args[3]])
        _memcpy(builder, builder.bitcast(dst, _VOIDPTR), builder.bitcast(source, _VOIDPTR), args[4])
        return context.get_dummy_value()

    return sig, codegen


def _copy_from_address(
    typingctx: Any, out: Any, pos: Any, address: Any, count: Any
) -> Any:  # pragma: no cover - runs at compile time
    """`out[pos:pos + count] = bytes at address` as one `memcpy` (no checks at all).

    Only inside `@njit` code; `out` 1-d contiguous uint8, `address` the address of `count`
    readable bytes (`array.ctypes.data + start`) of an array the caller keeps alive.
    """
    if not (isinstance(out, types.Array) and out.dtype == types.uint8 and out.layout == "C"):
        return None
    sig = types.void(out, types.uint64, types.uint64, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        dst_arr = context.make_array(signature.args[0])(context, builder, args[0])
        dst = builder.gep(dst_arr.data, [args[1]])
        _memcpy(
            builder, builder.bitcast(dst, _VOIDPTR), builder.inttoptr(args[2], _VOIDPTR), args[3]
        )
        return context.get_dummy_value()

    return sig, codegen


#: Called from `@njit` code as `copy_bytes(out, pos, src, start, count)` (the typing context is
#: numba's, not the caller's).
copy_bytes: Callable[..., None] = intrinsic(_copy_bytes)
#: Called from `@njit` code as `copy_from_address(out, pos, address, count)`.
copy_from_address: Callable[..., None] = intrinsic(_copy_from_address)
