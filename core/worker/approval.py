"""A worker's side of approvals (docs/approvals.md): a call the gateway holds for the admin is
answered *pending*; the worker sends the same call — the same call id, so it is one approval
and runs once — again until the admin decides. While the control plane is away (a crash and a
restart) it keeps asking: the approval is in the state DB and outlives the plane."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Between two sends when the gateway answered at once (it normally holds each for seconds).
MIN_INTERVAL_SECONDS = 1.0
#: Between two sends while the gateway does not answer.
AWAY_INTERVAL_SECONDS = 2.0


def call_id() -> str:
    """A new call's id (the same on every resend of that call)."""
    return os.urandom(12).hex()


async def until_decided(send: Callable[[], Awaitable[T]], pending: Callable[[T], str | None], *,
                        away: tuple[type[BaseException], ...] = ()) -> T:
    """``send()`` until its answer is not ``pending`` (which returns the approval's id while the
    call waits for the admin); ``away``: errors meaning the gateway did not answer, waited out
    once the call is known to be waiting (before that, the caller's business)."""
    waiting: str | None = None
    while True:
        started = time.monotonic()
        try:
            answer = await send()
        except away:
            if waiting is None:
                raise
            await asyncio.sleep(AWAY_INTERVAL_SECONDS)  # back-off while the control plane is away
            continue
        approval = pending(answer)
        if approval is None:
            return answer
        if approval != waiting:
            log.info("call waits for the admin's approval %s", approval)
            waiting = approval
        if time.monotonic() - started < MIN_INTERVAL_SECONDS:
            await asyncio.sleep(MIN_INTERVAL_SECONDS)  # back-off: a gateway that does not hold the call
