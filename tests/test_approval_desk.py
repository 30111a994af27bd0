"""The approvals desk on a real state DB: who may decide in chat, decisions once, reminders and
expiry (never a silent drop), a call cut by a crash never run again, the policy's levels."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hiclaw.config import ApprovalsConfig, HiclawConfig
from hiclaw.control.approvals import ApprovalDesk, GuardedCall, fenced, may_ask, reason_to_ask
from hiclaw.errors import InvalidInputError
from hiclaw.state import StateDB
from hiclaw.testing.team import wait_until

ADMIN = "@admin:hiclaw.test"


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def desk(tmp_path: Path, clock: Any = None, **policy: Any) -> ApprovalDesk:
    flushed: list[int] = []

    async def flush() -> None:
        flushed.append(1)

    return ApprovalDesk(state=StateDB(tmp_path / "state.db"), admin="admin", flush=flush, admin_user=ADMIN,
                        policy=ApprovalsConfig.model_validate({"hold_seconds": 0.1, "level": "strict", **policy}),
                        **({"clock": clock} if clock else {}))


def call(call_id: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"kind": "mcp", "worker": "eve", "call_id": call_id, "target": "tracker/create_issue",
            "arguments": {"title": "x"}, **fields}


async def test_only_the_admins_account_decides_in_chat_and_only_once(tmp_path):
    d = desk(tmp_path)
    runs: list[int] = []

    async def run() -> dict[str, Any]:
        runs.append(1)
        return {"ok": True}

    assert (await d.review(call(), run))["state"] == "pending"
    assert await d.on_admin_message("@eve:hiclaw.test", "approve apr-1") == []  # the worker itself
    assert await d.on_admin_message("@admin:elsewhere.org", "approve apr-1") == []  # another server's admin
    assert await d.on_admin_message(ADMIN, "> <@manager:hiclaw.test> approve apr-1\n\nlooks odd") == []  # a quote
    assert d.state.approval("apr-1").state == "pending" and runs == []
    assert await d.on_admin_message(ADMIN, "Deny apr-1: wrong title") == ["apr-1"]
    assert (d.state.approval("apr-1").state, d.state.approval("apr-1").note) == ("denied", "wrong title")
    with pytest.raises(InvalidInputError, match="apr-1 is already denied"):
        await d.decide("apr-1", approve=True)
    verdict = await d.review(call(), run)
    assert verdict == {"state": "denied", "approval": "apr-1", "reason": "wrong title"} and runs == []


async def test_two_requests_of_one_approved_call_run_it_once(tmp_path):
    d = desk(tmp_path)
    runs: list[int] = []
    gate = asyncio.Event()

    async def run() -> dict[str, Any]:
        runs.append(1)
        await gate.wait()
        return {"n": len(runs)}

    await d.review(call(), run)
    await d.decide("apr-1", approve=True)
    first = asyncio.create_task(d.review(call(), run))
    second = asyncio.create_task(d.review(call(), run))
    await wait_until(lambda: runs, timeout=5, what="one of them to run it")
    finished, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result()["state"] for t in finished] == ["pending"]  # the other waited its hold, ran nothing
    gate.set()
    assert sorted([(await first)["state"], (await second)["state"]]) == ["done", "pending"]
    assert runs == [1]
    assert (await d.review(call(), run)) == {"state": "done", "approval": "apr-1", "result": {"n": 1}}


async def test_reminders_escalate_and_expiry_denies_saying_so(tmp_path):
    clock = Clock()
    d = desk(tmp_path, clock, remind_seconds=60, expire_seconds=600)

    async def run() -> dict[str, Any]:
        return {}

    await d.review(call(), run)
    assert await d.tick() == []
    clock.now += 61
    assert await d.tick() == ["apr-1"]
    assert await d.tick() == []  # once per period
    clock.now += 60
    assert await d.tick() == ["apr-1"]
    assert [e["data"]["waited_seconds"] // 60 for e in d.state.events(kind="approval.reminded")] == [1, 2]
    clock.now += 600
    assert await d.tick() == ["apr-1"]
    approval = d.state.approval("apr-1")
    assert approval.state == "denied" and approval.decided_by == "timeout" and "600 seconds" in (approval.note or "")


async def test_a_call_running_when_the_plane_died_is_interrupted_not_run_again(tmp_path):
    d = desk(tmp_path)

    async def run() -> dict[str, Any]:
        return {}

    await d.review(call(), run)
    await d.decide("apr-1", approve=True)
    assert d.state.move_approval(1, ["approved"], "running")  # as a kill -9 mid-call leaves it
    d.state.close()
    again = desk(tmp_path)
    assert again.reconcile() == ["apr-1"]
    ran: list[int] = []

    async def must_not_run() -> dict[str, Any]:
        ran.append(1)
        return {}

    verdict = await again.review(call(), must_not_run)
    assert verdict["state"] == "interrupted" and ran == []


@pytest.mark.parametrize(("policy", "fields", "asks"), [
    ({"level": "smart"}, {"read_only": True}, False),
    ({"level": "smart"}, {"read_only": False}, True),
    ({"level": "smart"}, {"read_only": True, "destructive": True}, True),
    ({"level": "smart"}, {"kind": "egress", "method": "GET", "target": "api/GET /x"}, False),
    ({"level": "smart"}, {"kind": "egress", "method": "DELETE", "target": "api/DELETE /x"}, True),
    ({"level": "auto"}, {}, False),
    ({"level": "auto", "rules": [{"tool": "mcp:tracker/*"}]}, {}, True),
    ({"level": "auto", "rules": [{"tool": "mcp:tracker/*", "args": "secret"}]}, {}, False),
    ({"level": "strict", "rules": [{"tool": "mcp:tracker/create_issue", "decision": "allow"}]}, {}, False),
    ({"level": "strict", "workers": {"eve": "off"}, "rules": [{"tool": "*"}]}, {}, False),
    ({"level": "off", "workers": {"eve": "strict"}}, {}, True),
])
def test_levels_and_rules(policy, fields, asks):
    config = ApprovalsConfig.model_validate(policy)
    guarded = GuardedCall(**{**call(), **fields})
    assert (reason_to_ask(config, guarded) is not None) is asks


def test_a_policy_that_asks_nothing_needs_no_gateway_support():
    assert not may_ask(ApprovalsConfig()) and may_ask(ApprovalsConfig(level="smart"))
    assert may_ask(ApprovalsConfig(rules=[{"tool": "egress:*"}]))  # type: ignore[list-item]


@pytest.mark.parametrize(("section", "words"), [
    ({"level": "careful"}, "level"),
    ({"rules": [{"tool": "tracker/create_issue"}]}, "must start with 'mcp:'"),
    ({"rules": [{"tool": "mcp:*", "args": "("}]}, "not a regular expression"),
    ({"workers": {"Bad Name": "strict"}}, "not a worker name"),
])
def test_config_mistakes_are_refused(section, words):
    with pytest.raises(ValueError, match=words):
        HiclawConfig.model_validate({"approvals": section})


def test_arguments_cannot_close_the_cards_code_block():
    text = 'x ``` @room **bold**\n````\nend'
    block = fenced(text)
    fence = block.split("text\n", 1)[0]
    assert len(fence) == 5 and block.endswith("\n" + fence) and block.count(fence) == 2


async def test_a_flood_of_calls_gets_a_few_cards_and_no_more(tmp_path):
    """A hostile worker sending call after call (each a new id) rings the admin three times, not a thousand."""
    d = desk(tmp_path)

    async def run() -> dict[str, Any]:
        raise AssertionError("nothing runs before a decision")

    verdicts = [await d.review(call(f"flood-{i}"), run) for i in range(20)]
    assert [v["state"] for v in verdicts] == ["pending"] * 3 + ["denied"] * 17
    assert "already wait for the admin" in verdicts[-1]["reason"]
    assert len(d.state.approvals()) == 3
    assert len([m for m in d.state.pending_messages() if m.key.startswith("approval:")]) == 3
    assert (await d.review(call("flood-0"), run))["state"] == "pending"  # a waiting one still waits


async def test_a_call_waiting_for_a_cancelled_task_is_denied_saying_why(tmp_path):
    from hiclaw.models import TaskState
    from hiclaw.state import Task

    d = desk(tmp_path)
    (task,) = d.state.add_tasks(None, [Task(id="task-001", title="t", assignee="eve")])

    async def run() -> dict[str, Any]:
        raise AssertionError("a call of a cancelled task never runs")

    assert (await d.review(call(task_id=task.id), run))["state"] == "pending"
    d.state.update_task(task.id, state=TaskState.CANCELLED)
    verdict = await d.review(call(task_id=task.id), run)
    assert verdict["state"] == "denied" and "task-001 was cancelled" in verdict["reason"]
    assert d.state.approval("apr-1").decided_by == "task engine"
