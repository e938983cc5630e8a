"""databento-dbn internals the loader relies on, in one place.

Guarded by `tests/engine/test_dbn_guard.py`.

Each record class of `databento_dbn` publishes its wire layout as NumPy dtype pairs
(`_dtypes`) and which fields are fixed-point prices (`_price_fields`), nanosecond timestamps
(`_timestamp_fields`) and header padding (`_hidden_fields`). Databento's own Python client builds
its arrays from the same attributes. Viewing the records' bytes through that dtype turns a whole
batch into columns at C speed; the guard test fails loudly if an upgrade changes the layout
(`bytes(record)` must be exactly one dtype item) or drops an attribute.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def record_dtype(record_class: Any, ts_out: bool = False) -> np.dtype:
    """The NumPy structured dtype of one record of `record_class` (its wire layout).

    Args:
        record_class: e.g. `databento_dbn.TradeMsg`.
        ts_out: the file's records carry the gateway send time (`Metadata.ts_out`): 8 more bytes.
    """
    fields = list(record_class._dtypes)
    if ts_out:
        fields.append(("ts_out", "u8"))
    return np.dtype(fields)


def price_fields(record_class: Any) -> frozenset[str]:
    """Fields holding fixed-point prices (units of 1e-9)."""
    return frozenset(record_class._price_fields)


def timestamp_fields(record_class: Any) -> frozenset[str]:
    """Fields holding nanosecond UNIX timestamps."""
    return frozenset(record_class._timestamp_fields)


def hidden_fields(record_class: Any) -> frozenset[str]:
    """Header fields that are not data (record length)."""
    return frozenset(record_class._hidden_fields)


def is_decoder_panic(exc: BaseException) -> bool:
    """Whether `exc` is a panic inside databento-dbn's Rust decoder (a malformed record: a
    length shorter than its type needs). pyo3 raises it as `pyo3_runtime.PanicException`, a
    `BaseException` that `except Exception` misses and that cannot be imported by name."""
    return type(exc).__name__ == "PanicException" and type(exc).__module__ == "pyo3_runtime"
