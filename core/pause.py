"""A back-off sleep that can be cut short: :class:`Pause`.

    pause = Pause()
    await pause(2.0)   # in a retry loop: sleeps 2 s ...
    pause.wake()       # ... unless someone says the service is back (then it returns at once)
"""
from __future__ import annotations

import asyncio


class Pause:
    def __init__(self) -> None:
        self._event = asyncio.Event()  # bound to a loop on first use (Python ≥ 3.10)

    def wake(self) -> None:
        """End the current pause now (or the next one, if none is running)."""
        self._event.set()

    async def __call__(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            pass
        self._event.clear()
