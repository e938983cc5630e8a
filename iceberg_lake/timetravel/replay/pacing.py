"""Pacing a replay by event time: `speed`× real time from the first event."""

from __future__ import annotations

import asyncio
import time

import numpy as np

__all__ = ["Pacer", "paced_cut"]


class Pacer:
    """Maps event time to wall time: `speed`× real time from the first event."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self.t0_event: int | None = None
        self.t0_wall = 0.0

    def delay(self, ts_event_ns: int) -> float:
        """Seconds until the event stamped `ts_event_ns` is due (<= 0: due now; the first
        event starts the clock)."""
        if not self.speed:
            return 0.0
        if self.t0_event is None:
            self.t0_event, self.t0_wall = ts_event_ns, time.monotonic()
            return 0.0
        due = self.t0_wall + (ts_event_ns - self.t0_event) / 1e9 / self.speed
        return due - time.monotonic()

    def event_time_now(self) -> int:
        """The event time (ns) that is due now (after the first `delay` call)."""
        if not self.speed or self.t0_event is None:
            return 2**63 - 1
        return self.t0_event + int((time.monotonic() - self.t0_wall) * self.speed * 1e9)


async def paced_cut(pacer: Pacer, ts: np.ndarray, lo: int, hi: int) -> int:
    """Wait until event `lo` is due; return the end of the run of events due by then (> lo)."""
    delay = pacer.delay(int(ts[lo]))
    if delay > 0:
        await asyncio.sleep(delay)
    horizon = pacer.event_time_now() + 1_000_000  # everything due within the next millisecond
    return lo + max(1, int(np.searchsorted(ts[lo:hi], horizon, side="right")))
