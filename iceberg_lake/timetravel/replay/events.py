"""The Python event path of a replay: `ReplayEvent`, and a merged window as events or dicts.

`events()` yields `ReplayEvent`s (table, subject, canonical payload bytes, `ts_event_ns`); the
row dict is decoded from the payload only when `event.row` is read. Iterating the engine yields
dicts (`table` + row), decoded a chunk of rows at a time (`window_dicts`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iceberg_lake.timetravel.replay.source import PinnedSource
from iceberg_lake.timetravel.replay.window import Window

__all__ = ["EventSink", "Progress", "ReplayEvent", "window_dicts", "window_events"]

_decoder = msgspec.json.Decoder()

#: Called with (events so far, ts_event_ns of the last event).
Progress = Callable[[int, int], None]


class ReplayEvent(msgspec.Struct, frozen=True, gc=False):
    """One replayed event: its table, subject, canonical encoding and event time.

    `row` decodes the payload (the canonical JSON of the row) on each access: read it once. A
    NaN or infinite float reads back as None (the canonical JSON has no NaN).
    """

    table: str
    subject: str
    payload: bytes
    ts_event_ns: int

    @property
    def row(self) -> dict[str, Any]:
        """The row's columns (keys sorted), decoded from the payload."""
        row: dict[str, Any] = _decoder.decode(self.payload)
        return row

    def as_dict(self) -> dict[str, Any]:
        """The event as a dict: `table` plus the row's columns."""
        return {"table": self.table, **self.row}


#: Rows `window_dicts` decodes in one call (one JSON array per chunk, not per event).
_DICT_CHUNK = 4_096
#: Rows spliced at once by `window_dicts` (bounds its copy of the payloads).
_DICT_BLOCK = 65_536
_dicts_decoder = msgspec.json.Decoder(list[dict[str, Any]])


class EventSink(Protocol):
    """Where replayed events go (a `Protocol`: any object with `send` and `close`)."""

    async def send(self, event: ReplayEvent) -> None:
        """Deliver one event."""

    async def close(self) -> None:
        """Flush and release resources."""


def window_events(window: Window, sources: Sequence[PinnedSource]) -> list[ReplayEvent]:
    """The events of a merged `window` (with payloads) in replay order.

    Args:
        window: a window prepared with payloads (`WindowPipeline.windows()`).
        sources: the replay's tables, in tie-break order (`Window.sources` indexes them).
    """
    assert window.payloads is not None and window.ts is not None
    payloads, ts = window.payloads.to_pylist(), window.ts.tolist()
    if window.order is None:
        src, n = sources[window.parts[0].index], len(ts)
        return list(map(ReplayEvent, [src.identifier] * n, [src.subject] * n, payloads, ts))
    idents = np.array([s.identifier for s in sources], dtype=object)
    subjects = np.array([s.subject for s in sources], dtype=object)
    tables = idents[window.sources].tolist()
    return list(map(ReplayEvent, tables, subjects[window.sources].tolist(), payloads, ts))


def window_dicts(window: Window, sources: Sequence[PinnedSource]) -> Iterator[dict[str, Any]]:
    """`event.as_dict()` of every event of `window`, without an event object per row.

    Each payload (a JSON object) gets `"table":…,` spliced in as its first key and a `,`
    after it, in Arrow; a chunk of rows is then one slice of the joined buffer, decoded as one
    JSON array. The same dicts: a row's own `table` column, if any, still wins (later key).
    """
    payloads = window.payloads
    assert payloads is not None
    if pc.any(pc.equal(pc.binary_length(payloads), 2)).as_py():  # a `{}` row: no comma
        for event in window_events(window, sources):
            yield event.as_dict()
        return
    prefixes = pa.array(
        [b'{"table":' + json.dumps(s.identifier).encode() + b"," for s in sources],
        pa.large_binary(),
    )
    comma, empty = pa.scalar(b",", pa.large_binary()), pa.scalar(b"", pa.large_binary())
    # A block at a time, so the spliced copy stays small beside the window itself.
    for lo in range(0, len(payloads), _DICT_BLOCK):
        block = payloads.slice(lo, _DICT_BLOCK).cast(pa.large_binary())
        if window.order is None:
            prefix = pa.repeat(prefixes[window.parts[0].index], len(block))
        else:
            prefix = prefixes.take(pa.array(window.sources[lo : lo + _DICT_BLOCK]))
        # An explicit stop: pyarrow 26's `binary_slice` fails without one, and with a huge
        # one ("Negative buffer resize"); no payload is 2 GiB.
        rows = pc.binary_join_element_wise(
            prefix, pc.binary_slice(block, 1, 2**31 - 1), comma, empty
        )
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset :]
        data = memoryview(rows.buffers()[2])
        for i in range(0, len(rows), _DICT_CHUNK):
            j = min(len(rows), i + _DICT_CHUNK)
            # `[` + rows i..j-1 (each ends with `,`) without the last comma + `]`
            yield from _dicts_decoder.decode(b"[" + data[offsets[i] : offsets[j] - 1] + b"]")
