"""Live tail: table snapshots united with what JetStream holds beyond their last commit.

Every Bronze/Gold writer commits, in ONE transaction with each append, the table property
`lake.watermark.<stream>.<consumer>` = the last stream sequence the table holds. So a loaded
table's metadata says exactly which messages its current snapshot contains: everything on its
subject up to the watermark. The rest, `(watermark, newest]`, is the *tail*. A live view is

    current snapshot (pinned through the same metadata file the watermark was read from)
    UNION ALL the tail, decoded with the writer's own codec (same validation; messages the writer
    would dead-letter are left out)

so there is no gap and no overlap at any moment, whatever the writer does meanwhile (commits,
crashes, restarts): a commit after the table was loaded is simply not seen, and its messages are
read from the stream instead.

The tail is read with an ephemeral ordered consumer (`engine.nats_tail`), never the writers'
durable consumers, up to the newest message on the subject when the read started.

The modules, each with one job:

* `source`: one bus-fed table pinned at a loaded metadata version (`TailSource`: snapshot,
  watermark, the writer's decoder) and its tail decoded;
* `loop`: the NATS connection on a background loop (`NatsLoop`) and the tails a `Lake` keeps
  between queries;
* `inferred`: the second tail of a Bronze table, rows schema inference routes into it;
* `gaps`: sequences the stream removed before they were read (`GapLog`, the warnings);
* `views`: the live views of `Lake.query(sql, live=True)` / `lake query --live`;
* `continuation`: `ReplayEngine(..., live=True)` / `lake replay --live [--follow]` (`LiveTail`);
* `freshness`: event-time freshness of the committed tables and their live views.
"""

from iceberg_lake.timetravel.live.continuation import REMOVAL_CHECK_SECONDS, LiveTail
from iceberg_lake.timetravel.live.freshness import Freshness, committed_newest_ns, freshness
from iceberg_lake.timetravel.live.gaps import (
    MAX_LISTED_GAPS,
    WARNING_RUNS,
    GapLog,
    removed_warning,
)
from iceberg_lake.timetravel.live.inferred import (
    MAX_SUBJECT_READS,
    InferenceStart,
    inference_start,
    inferred_mapped_subjects,
)
from iceberg_lake.timetravel.live.loop import NatsLoop
from iceberg_lake.timetravel.live.source import TailSource, is_live_table, require_tails
from iceberg_lake.timetravel.live.views import (
    LiveRange,
    create_live_views,
    live_warnings,
    no_tail_notes,
)

__all__ = [
    "MAX_LISTED_GAPS",
    "MAX_SUBJECT_READS",
    "REMOVAL_CHECK_SECONDS",
    "WARNING_RUNS",
    "Freshness",
    "GapLog",
    "InferenceStart",
    "LiveRange",
    "LiveTail",
    "NatsLoop",
    "TailSource",
    "committed_newest_ns",
    "create_live_views",
    "freshness",
    "inference_start",
    "inferred_mapped_subjects",
    "is_live_table",
    "live_warnings",
    "no_tail_notes",
    "removed_warning",
    "require_tails",
]
