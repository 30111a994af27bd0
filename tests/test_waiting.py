"""One way to wait in async code (:func:`hiclaw.waiting.wait_until`) and its blocking twin; the
test harness re-exports them rather than having its own."""
from __future__ import annotations

import pytest

import hiclaw.testing
import hiclaw.testing.team
import hiclaw.waiting


def test_the_harness_reexports_the_one_helper():
    assert hiclaw.testing.wait_until is hiclaw.testing.team.wait_until is hiclaw.waiting.wait_until
    assert hiclaw.testing.wait_for_async is hiclaw.waiting.wait_until  # deprecated name
    assert hiclaw.testing.wait_for is hiclaw.waiting.wait_for


async def test_wait_until_takes_sync_and_async_predicates_and_names_what_timed_out():
    calls = []

    def sync() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert await hiclaw.waiting.wait_until(sync, interval=0.001) == 3

    async def later() -> str:
        return "ready"

    assert await hiclaw.waiting.wait_until(later) == "ready"
    with pytest.raises(TimeoutError, match="waiting for the sky to fall"):
        await hiclaw.waiting.wait_until(lambda: False, timeout=0.05, interval=0.01, what="the sky to fall")


def test_wait_for_blocks_until_truthy():
    seen = iter([0, "", "yes"])
    assert hiclaw.waiting.wait_for(lambda: next(seen), interval=0.001) == "yes"
    with pytest.raises(TimeoutError, match="nothing"):
        hiclaw.waiting.wait_for(lambda: None, timeout=0.02, what="nothing")
