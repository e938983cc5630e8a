"""Logging for operations that are retried while a dependency is down.

A retry loop that logs every failure floods the log during an outage; one that logs at DEBUG
hides it at the default level. `RetryLog` says WARNING on the first failure of a run of failures
and then at most once per `every` seconds (with the count so far), DEBUG in between, and INFO
once the operation succeeds again.
"""

from __future__ import annotations

import logging
import time


class RetryLog:
    """Rate-limited log of one retried operation's failures.

    Args:
        logger: where to log.
        what: the operation, for the recovery line (`writer bronze.x: fetch`).
        every: seconds between two WARNING lines of one run of failures.
    """

    def __init__(self, logger: logging.Logger, what: str, every: float = 60.0) -> None:
        self.logger = logger
        self.what = what
        self.every = every
        self.failures = 0
        self._warned_at: float | None = None

    def failed(self, reason: str) -> None:
        """Record a failure that will be retried; WARNING if it is the first of a run or the
        last warning is `every` seconds old, else DEBUG."""
        self.failures += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= self.every:
            self._warned_at = now
            count = f" ({self.failures} failures so far)" if self.failures > 1 else ""
            self.logger.warning("%s failed, retrying%s: %s", self.what, count, reason)
        else:
            self.logger.debug("%s failed again, retrying: %s", self.what, reason)

    def succeeded(self) -> None:
        """End a run of failures (INFO if there was one)."""
        if self.failures:
            plural = "s" if self.failures > 1 else ""
            self.logger.info("%s works again after %d failure%s", self.what, self.failures, plural)
        self.failures = 0
        self._warned_at = None
