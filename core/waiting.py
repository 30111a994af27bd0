"""Wait on a condition with a deadline — never sleep as synchronisation (STYLE.md, tests).

One helper per way of waiting: :func:`wait_until` from async code (the predicate may be sync or
async), :func:`wait_for` from a thread that may block. Both poll, return the first truthy value
and raise ``TimeoutError`` naming what they waited for. The product uses them too (`hiclaw
demo`), so they live here rather than in :mod:`hiclaw.testing`, which re-exports them.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_until(predicate: Callable[[], Any | Awaitable[Any]], *, timeout: float = 60.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Poll ``predicate`` (a function or a coroutine function) every ``interval`` seconds until it
    returns something truthy, and return that; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_for(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    """The blocking twin of :func:`wait_until`, for synchronous tests and threads."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
