"""Deterministic, snapshot-pinned replay of several tables merged by event time.

`ReplayEngine` (`engine`) is the entry point; the modules beside it each do one job:

* `source`: one table's pinned snapshot, its planned files, a window of its rows in replay order;
* `window`: the window pipeline: read windows merged across tables, encoded and hashed;
* `arrow`: the Arrow batch outputs (`batches()`, `table_batches()`);
* `events`: `ReplayEvent` and the Python event path (`events()`, iteration);
* `publish`: the NATS publisher (`publish()`, `NatsSink`);
* `pacing`: event time to wall time (`speed`);
* `manifest`: the manifest format, reading and comparing manifests.
"""

from iceberg_lake.timetravel.replay.arrow import REPLAY_SEQ_COLUMN, TABLE_COLUMN
from iceberg_lake.timetravel.replay.engine import ReplayEngine
from iceberg_lake.timetravel.replay.events import EventSink, Progress, ReplayEvent
from iceberg_lake.timetravel.replay.manifest import (
    MANIFEST_FORMAT,
    TIE_BREAK,
    compare_manifests,
    read_manifest,
)
from iceberg_lake.timetravel.replay.publish import NatsSink, replay_subject

__all__ = [
    "MANIFEST_FORMAT",
    "REPLAY_SEQ_COLUMN",
    "TABLE_COLUMN",
    "TIE_BREAK",
    "EventSink",
    "NatsSink",
    "Progress",
    "ReplayEngine",
    "ReplayEvent",
    "compare_manifests",
    "read_manifest",
    "replay_subject",
]
