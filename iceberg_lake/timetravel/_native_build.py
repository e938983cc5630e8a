"""Compile the replay's C encoding kernels (`_canonical.c`) into a shared library.

Used at install by `hatch_build.py` (which loads this file by path: the package is not importable
there, so it imports nothing from it) and on first use in a checkout by `native.py`.
The library is named after the SHA-256 of its source, so an edited source is never served by a
stale build and a wheel carries exactly the build of the source it ships.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("_canonical.c")

# -ffp-contract=off: the float rule must round exactly as the recorded hashes were made (no fused
# multiply-add, never -ffast-math); baseline x86-64/aarch64 code, so a wheel runs on any CPU.
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")


def library_path(source: Path = SOURCE) -> Path:
    """Where the build of `source` lives: beside it, named after the source's SHA-256."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    return source.with_name(f"{source.stem}-{digest}{suffix}")


def build(source: Path = SOURCE) -> Path:
    """Compile `source` with `$CC` (default `cc`) into `library_path(source)`; returns the path.

    Written to a temporary name and renamed, so processes building at once never load a partial
    file; builds of earlier sources beside it are removed.

    Raises:
        RuntimeError: no compiler, or the compiler failed (its message in the error).
    """
    target = library_path(source)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    compiler = shlex.split(os.environ.get("CC") or "cc")
    command = [*compiler, *FLAGS, "-o", str(partial), str(source), "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"no C compiler ({compiler[0]}: {exc.strerror})") from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"{compiler[0]} failed: {detail[0] if detail else done.returncode}")
    os.replace(partial, target)
    for old in source.parent.glob(f"{source.stem}-*{target.suffix}"):
        if old != target:
            old.unlink(missing_ok=True)
    return target
