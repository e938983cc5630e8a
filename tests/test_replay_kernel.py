"""The replay's C encoding kernels: built under the name of their source, loaded once, and a
missing build that cannot be made is one readable error (no lake; budget ~2 s with a compiler).

What the kernels write is checked byte for byte against msgspec in `test_replay_encoding.py`
and against recorded hashes in `test_replay_compat.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from iceberg_lake.exceptions import ConfigError
from iceberg_lake.timetravel import _native_build
from iceberg_lake.timetravel import native as kernel


def test_an_edited_source_gets_a_build_of_its_own_and_the_old_one_goes(tmp_path: Path) -> None:
    source = tmp_path / "_canonical.c"
    shutil.copy(_native_build.SOURCE, source)
    first = _native_build.build(source)
    assert first.exists() and first == _native_build.library_path(source)
    source.write_text(source.read_text() + "\n/* edited */\n")
    second = _native_build.build(source)
    assert second != first, "an edited source must not be served by the old build"
    assert second.exists() and not first.exists()
    assert not list(tmp_path.glob(".*.tmp")), "no partial file left behind"


def test_a_compiler_error_is_reported_with_its_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "_canonical.c"
    source.write_text("this is not C\n")
    with pytest.raises(RuntimeError, match="failed: .*error") as failed:
        _native_build.build(source)
    assert "\n" not in str(failed.value)
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    shutil.copy(_native_build.SOURCE, source)
    with pytest.raises(RuntimeError, match="no C compiler"):
        _native_build.build(source)


def test_a_missing_build_that_cannot_be_made_is_one_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "_canonical-0000000000000000.so"
    monkeypatch.setattr(_native_build, "library_path", lambda source=None: missing)
    monkeypatch.setattr(kernel, "_library", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(ConfigError) as failed:
        kernel.float_decimals(np.array([1.5]), np.array([True]))
    message = str(failed.value)
    assert "\n" not in message
    assert "_canonical-0000000000000000.so" in message and "no C compiler" in message
    assert "C compiler (cc)" in message


def test_outputs_of_the_wrong_type_are_refused_before_the_kernel_runs() -> None:
    """The kernels check nothing: the wrapper must refuse a buffer they would misread."""
    n = 2
    args = {
        "n": n,
        "kinds": np.zeros(1, np.int8),
        "slots": np.zeros(1, np.int64),
        "keydata": np.frombuffer(b'{"a":}', np.uint8),
        "keyoff": np.array([0, 5, 6], np.int64),
        "ints": np.array([[7, -8]], np.int64),
        "intvalid": np.ones((1, n), np.bool_),
        "floats": np.empty((0, n)),
        "floatvalid": np.empty((0, n), np.bool_),
        "decimals": np.empty((0, n), np.int8),
        "floatfb": np.empty((0, n), np.int64),
        "stridx": np.empty((0, n), np.int64),
        "entdata": np.zeros(0, np.uint8),
        "entoff": np.zeros(1, np.int64),
    }
    out, offsets = np.zeros(64, np.uint8), np.zeros(n + 1, np.int64)
    total = kernel.write_rows(**args, out=out, offsets=offsets)
    assert bytes(out[:total]) == b'{"a":7}{"a":-8}' and list(offsets) == [0, 7, 15]
    with pytest.raises(ValueError, match="writable C-contiguous uint8"):
        kernel.write_rows(**args, out=np.zeros(64, np.int8), offsets=offsets)
    with pytest.raises(ValueError, match="offsets for 2 rows"):
        kernel.write_rows(**args, out=out, offsets=np.zeros(n, np.int64))
    with pytest.raises(ValueError, match="shape"):
        kernel.write_rows(**{**args, "ints": np.array([7, -8])}, out=out, offsets=offsets)
