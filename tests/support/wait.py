"""Waiting for a condition, always with a deadline: the one place tests poll.

    wait_until(lambda: proc_has_committed(), 30, "the first commit")
    await await_until(lambda: service.committed_events >= 2, 30, "two commits", alive=runner)
    await await_until(stream_has_1200_messages, 30, "1200 stored")  # an async predicate

A condition that never holds fails the test with what was awaited, never hangs it; `alive`
(a process, a task, or a callable) fails it as soon as the thing producing the condition died.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ["await_until", "wait_until"]

DEFAULT_INTERVAL = 0.05


def _check_alive(alive: Any, what: str) -> None:
    if alive is None:
        return
    if isinstance(alive, asyncio.Future):
        if alive.done():
            exc = alive.exception() if not alive.cancelled() else None
            raise AssertionError(f"stopped while waiting for {what}: {exc!r}")
        return
    if hasattr(alive, "poll"):  # subprocess.Popen
        if alive.poll() is not None:
            raise AssertionError(f"exited with {alive.returncode} while waiting for {what}")
        return
    if not alive():
        raise AssertionError(f"stopped while waiting for {what}")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    alive: Any = None,
) -> None:
    """Poll `predicate` until it is truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        _check_alive(alive, what)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    alive: Any = None,
) -> None:
    """`wait_until` for asyncio code: sleeps without blocking the event loop.

    `predicate` may be a coroutine function (a condition that asks a server, say).
    """

    async def holds() -> Any:
        result = predicate()
        return await result if inspect.isawaitable(result) else result

    deadline = time.monotonic() + timeout
    while not await holds():
        _check_alive(alive, what)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
