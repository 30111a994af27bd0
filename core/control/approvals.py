"""Approvals: the admin decides which calls of workers' tools happen (docs/approvals.md).

The gateway sees every MCP tool call and egress request with its worker (from the token),
task and arguments; before running one it asks :class:`ApprovalDesk.review`. The policy
(``[approvals]``, :func:`reason_to_ask`) says whether the call needs the admin.

* A call that does becomes an **approval** (state DB table ``approvals``, one row per call id
  the worker sent) and a **card** in its task's room that mentions the admin. The gateway holds
  the worker's request for ``hold_seconds`` and then answers *pending*; the worker sends the
  same call (same call id) again until it is decided — across a ``kill -9`` of the control
  plane too, since the row is in the state DB and the worker only retries.
* The admin decides once: a reply ``approve apr-3`` / ``deny apr-3 <reason>`` in any room,
  ``hiclaw approvals approve|deny`` or the control API (``approval-approve``/``approval-deny``).
* **Approved**: the first request after the decision moves the row approved → running in one
  UPDATE (of two requests, one wins), runs the call, stores its answer and marks it done;
  every later retry of that call gets the stored answer. The call runs **exactly once**. A
  crash while it ran leaves it running; at the next start it is *interrupted* (it may or may
  not have happened; never run again) and the admin is told.
* **Denied**: the worker's call is answered with the admin's reason (the model reads it).
* **Not decided**: the admin is reminded every ``remind_seconds``; after ``expire_seconds``
  (if set) it is denied saying so. Never dropped silently.
"""
from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hiclaw.config import ApprovalsConfig
from hiclaw.errors import InvalidInputError
from hiclaw.state import ROOM_MANAGER, Approval, StateDB, now_iso, room_of_project, room_of_worker

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: Commands ``smart`` holds: those that delete recursively, escalate, publish, deploy or send
#: data out (a worker with network access), or rewrite disks and permissions wholesale.
RISKY_COMMAND = re.compile(
    r"\brm\s+(-\w*[rRf]|--recursive|--force)|\bsudo\b|\bsu\s|\bgit\s+push\b|\b(npm|pnpm|yarn|twine|cargo|gem)\s+"
    r"publish\b|\b(curl|wget|http|nc|ncat|ssh|scp|rsync|sftp|ftp)\b|\b(kubectl|helm|terraform|docker|podman)\b"
    r"|\bdd\s+if=|\bmkfs|\bchmod\s+-R|\bchown\s+-R|>\s*/dev/sd")
MAX_SHOWN_ARGUMENTS = 1500
#: A decision in chat: ``approve apr-3 [note]`` / ``deny apr-3 <reason>`` (a line of its own).
DECISION = re.compile(r"^\s*(approve|approved|deny|denied|reject)\s+(apr-[0-9]{1,18})\b[\s:,.-]*(.*)$", re.IGNORECASE)
CLOSED = ("denied", "done", "interrupted")
#: Approvals one worker may have waiting at once: a worker makes one call at a time, so more is a
#: loop or a flood of cards (each would ring the admin's phone) — refused without a card.
MAX_PENDING_PER_WORKER = 3


@dataclass(frozen=True)
class GuardedCall:
    """What the gateway is about to run for a worker. ``target``: ``server/tool`` (mcp) or
    ``route/METHOD path`` (egress); ``read_only``/``destructive``: the MCP tool's annotations."""

    kind: str  # mcp | egress
    worker: str
    call_id: str
    target: str
    arguments: Any
    task_id: str | None = None
    project_id: str | None = None
    method: str | None = None
    read_only: bool | None = None
    destructive: bool | None = None

    @property
    def pattern_target(self) -> str:
        return f"{self.kind}:{self.target}"

    def arguments_json(self) -> str:
        """The arguments as JSON, whole: the approval is bound to all of them (a cap would let a
        worker swap what lies past it after the admin's yes, or hide it from a rule's ``args``)."""
        try:
            return json.dumps(self.arguments, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            return str(self.arguments)


def reason_to_ask(policy: ApprovalsConfig, call: GuardedCall) -> str | None:
    """Why ``call`` needs the admin, or None if the worker may make it alone."""
    level = policy.workers.get(call.worker, policy.level)
    if level == "off":
        return None
    for rule in policy.rules:
        if rule.workers and call.worker not in rule.workers:
            continue
        if not fnmatch.fnmatchcase(call.pattern_target, rule.tool):
            continue
        if rule.args is not None and not re.search(rule.args, call.arguments_json()):
            continue
        if rule.decision == "allow":
            return None
        return f"the rule for {rule.tool!r}" + (f" (arguments matching {rule.args!r})" if rule.args else "") + " asks"
    if level == "strict":
        return f"{call.worker}'s approval level is strict: every call of a tool waits for you"
    if level == "smart":
        if call.kind == "command":
            found = RISKY_COMMAND.search(str(call.target))
            if found:
                return f"the command may delete, publish or reach out ({found.group(0).strip()!r})"
            return None
        if call.kind == "mcp":
            if call.destructive:
                return "the tool is marked destructive"
            if not call.read_only:
                return "the tool may write (it is not marked read-only)"
        elif (call.method or "GET").upper() not in SAFE_METHODS:
            return f"{(call.method or '').upper()} may change something (only GET, HEAD and OPTIONS go alone)"
    return None


def fenced(text: str) -> str:
    """``text`` in a code block it cannot close (a fence longer than any run of backticks in it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def visible(text: str) -> str:
    """``text`` with every invisible or reordering character (bidi overrides, zero-width ones,
    line separators: what is not printable, but newlines) written as ``\\uXXXX``: the card
    shows the admin what the call holds, not what a worker wants it to look like."""
    return "".join(ch if ch == "\n" or ch.isprintable() else f"\\u{ord(ch):04x}" for ch in text)


def one_line(text: str, limit: int = 120) -> str:
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())[:limit]


def approval_room(state: StateDB, approval: Approval) -> str:
    """The card's room: its task's project room, else the worker's own room."""
    if approval.project_id:
        try:
            if state.project(approval.project_id).room_id:
                return room_of_project(approval.project_id)
        except Exception:  # noqa: BLE001, S110 - a project gone: the worker's room
            pass
    return room_of_worker(approval.worker)


def card(state: StateDB, approval: Approval, admin: str) -> str:
    task = ""
    if approval.task_id:
        try:
            task = f" for **{approval.task_id}** ({one_line(state.task(approval.task_id).title, 80)})"
        except Exception:  # noqa: BLE001 - a task gone: its id alone
            task = f" for **{approval.task_id}**"
    shown = approval.arguments
    if len(shown) > MAX_SHOWN_ARGUMENTS:
        shown = shown[:MAX_SHOWN_ARGUMENTS] + f"… [{len(approval.arguments) - MAX_SHOWN_ARGUMENTS} more characters]"
    return (f"@{admin} approval **{approval.id}**: {approval.worker} wants to make a call that waits for you{task}.\n"
            f"Why: {approval.reason}.\n"
            + fenced(visible(f"{approval.kind} {approval.target}\n{shown}")) + "\n"
            f"Reply `approve {approval.id}` or `deny {approval.id} <reason>`, or run "
            f"`hiclaw approvals approve {approval.id}`. Until then nothing happens.")


def decide(state: StateDB, approval_id: str, *, approve: bool, by: str, note: str = "") -> Approval:
    """Decide a pending approval once (one UPDATE: a second decision is refused) and record the
    notice for its room. Used live and on a stopped team's state DB (posted at its next start)."""
    approval = state.approval(approval_id.strip())
    note = one_line(note, 500)
    if not approve and not note:
        note = "no reason given"
    new = "approved" if approve else "denied"
    with state.transaction():
        if not state.move_approval(approval.seq, ["pending"], new, decided_by=by, note=note or None,
                                   decided_at=now_iso()):
            current = state.approval(approval.id).state
            raise InvalidInputError(f"{approval.id} is already {current}", hint="see `hiclaw approvals list --all`")
        state.log_event(f"approval.{new}", approval.id, worker=approval.worker, by=by, note=note)
        text = (f"{approval.id} approved by {by}: {approval.worker}'s call runs now." if approve
                else f"{approval.id} denied by {by} ({note}): {approval.worker} is told.")
        state.enqueue_message(f"approval-decided:{approval.id}", approval_room(state, approval), text)
    return state.approval(approval.id)


def listing(state: StateDB, *, every: bool = False) -> list[dict[str, Any]]:
    rows = state.approvals() if every else state.approvals(states=["pending"])
    return [a.view() for a in rows]


class ApprovalDesk:
    """The control plane's side of approvals: asked by the gateway, decided by the admin.
    ``flush``: delivers recorded messages (the chat's outbox)."""

    def __init__(self, *, state: StateDB, policy: ApprovalsConfig, admin: str,
                 flush: Callable[[], Awaitable[Any]], admin_user: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.policy, self.admin, self.flush = state, policy, admin, flush
        self.admin_user = admin_user
        self.clock = clock
        self._changed: dict[int, asyncio.Event] = {}
        self._loop: asyncio.Task[None] | None = None
        self._posting: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ the gateway asks

    async def review(self, call: dict[str, Any], run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """``{"state": "done", "result": …}`` (run now, or the stored answer of an approved call),
        ``pending`` (ask again with the same call id), ``denied`` (``reason``) or ``interrupted``."""
        guarded = GuardedCall(**call)
        reason = reason_to_ask(self.policy, guarded)
        if reason is None:
            return {"state": "done", "result": await run()}
        if not guarded.call_id:
            return {"state": "denied", "approval": None,
                    "reason": "this call needs the admin's approval and came without a call id to wait on"}
        if self.state.approval_of_call(guarded.worker, guarded.call_id[:128]) is None:
            waiting = [a.id for a in self.state.approvals(states=["pending"]) if a.worker == guarded.worker]
            if len(waiting) >= MAX_PENDING_PER_WORKER:
                self.state.log_event("approval.refused", guarded.worker, target=guarded.target[:200], waiting=waiting)
                return {"state": "denied", "approval": None,
                        "reason": f"{len(waiting)} of your calls already wait for the admin ({', '.join(waiting)}); "
                                  "wait for those decisions before asking again"}
        with self.state.transaction():  # the row and its card: both, or neither (a kill -9 between)
            approval, new = self.state.add_approval(Approval(
                seq=0, worker=guarded.worker, call_id=guarded.call_id[:128], kind=guarded.kind,
                target=guarded.target[:600], arguments=guarded.arguments_json(), reason=reason,
                task_id=guarded.task_id, project_id=guarded.project_id))
            if new:
                self.state.log_event("approval.requested", approval.id, worker=approval.worker, call=approval.kind,
                                     target=approval.target, task=approval.task_id, reason=reason)
                self.state.enqueue_message(f"approval:{approval.id}", approval_room(self.state, approval),
                                           card(self.state, approval, self.admin), [self.admin])
        if not new and (approval.kind, approval.target, approval.arguments) != (
                guarded.kind, guarded.target[:600], guarded.arguments_json()):
            # An approval is for one call: its id sent with another target or other arguments
            # (a hostile worker swapping them after the admin said yes) runs nothing.
            self.state.log_event("approval.mismatch", approval.id, worker=guarded.worker, target=guarded.target[:200])
            return {"state": "denied", "approval": approval.id,
                    "reason": "this call id belongs to another call (other tool or arguments); nothing was run — "
                              "make a new call"}
        if new:
            # Answered at once, the card posted meanwhile (it is in the outbox: a crash now still
            # delivers it): the worker knows its call waits before anything can cut this request.
            posting: asyncio.Future[Any] = asyncio.ensure_future(self.flush())
            self._posting.add(posting)
            posting.add_done_callback(self._posting.discard)
            return {"state": "pending", "approval": approval.id, "reason": reason}
        deadline = time.monotonic() + self.policy.hold_seconds
        while True:
            self._drop_if_task_closed(approval)
            approval = self.state.approval(approval.id)
            if approval.state == "approved" and self.state.move_approval(approval.seq, ["approved"], "running"):
                return await self._run(approval, run)
            if approval.state == "done":
                return {"state": "done", "approval": approval.id, "result": json.loads(approval.result or "{}")}
            if approval.state == "denied":
                return {"state": "denied", "approval": approval.id, "reason": approval.note or "denied"}
            if approval.state == "interrupted":
                return {"state": "interrupted", "approval": approval.id,
                        "reason": "it was approved, but the control plane stopped while it ran: it may or may not "
                                  "have happened, and it is not run again"}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"state": "pending", "approval": approval.id, "reason": approval.reason}
            event = self._changed.setdefault(approval.seq, asyncio.Event())
            try:  # woken by a decision here; the short cap also sees one written by another process
                await asyncio.wait_for(event.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass
            event.clear()

    def _drop_if_task_closed(self, approval: Approval) -> None:
        """A call still waiting for a task that was cancelled (or completed without it) meanwhile
        is denied: nobody needs it any more, and its worker must not wait on."""
        if approval.state != "pending" or not approval.task_id:
            return
        try:
            task = self.state.task(approval.task_id)
        except Exception:  # noqa: BLE001 - the task is gone: nothing to wait for either
            task = None
        if task is None or task.state.value == "cancelled":
            with contextlib.suppress(InvalidInputError):  # decided meanwhile
                decide(self.state, approval.id, approve=False, by="task engine",
                       note=f"its task {approval.task_id} was cancelled")

    async def _run(self, approval: Approval, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        try:
            result = await run()
        except Exception as exc:  # noqa: BLE001 - the answer of this one run, kept like any other
            log.warning("approved call %s failed: %s", approval.id, type(exc).__name__)
            result = {"error": f"the approved call failed ({type(exc).__name__})"}
        self.state.move_approval(approval.seq, ["running"], "done", result=json.dumps(result), finished_at=now_iso())
        self.state.log_event("approval.ran", approval.id, worker=approval.worker, target=approval.target)
        self._wake(approval.seq)
        return {"state": "done", "approval": approval.id, "result": result}

    async def command(self, worker: str, body: dict[str, Any]) -> dict[str, Any]:
        """A worker asks before ``run_command`` (``POST /v1/approval``): ``done`` = run it now."""
        # Matched whole (a risky part past a cap would go alone), shown and bound as it runs (with
        # its newlines: joined into one line, "echo ok\ncurl …" would look like one echo).
        line = str(body.get("command") or "")
        command = " ".join(line.split())
        task_id, project_id = None, None
        named = str(body.get("task_id") or "")
        if named:
            try:
                task = self.state.task(named)
            except Exception:  # noqa: BLE001 - not a task: none
                task = None
            if task is not None and task.assignee == worker:  # never another worker's task
                task_id, project_id = task.id, task.project_id

        async def let() -> dict[str, Any]:
            return {"run": True}

        verdict = await self.review({"kind": "command", "worker": worker, "call_id": str(body.get("call_id") or ""),
                                     "target": command, "arguments": {"command": line, "cwd": str(body.get("cwd") or "")},
                                     "task_id": task_id, "project_id": project_id}, let)
        return {k: v for k, v in verdict.items() if k != "result"}

    def _wake(self, seq: int) -> None:
        event = self._changed.get(seq)
        if event is not None:
            event.set()

    # ------------------------------------------------------------------ the admin decides

    async def decide(self, approval_id: str, *, approve: bool, by: str = "admin", note: str = "") -> dict[str, Any]:
        approval = decide(self.state, approval_id, approve=approve, by=by, note=note)
        self._wake(approval.seq)
        await self.flush()
        return approval.view()

    async def on_admin_message(self, sender: str, body: str) -> list[str]:
        """Decisions in a chat message of the admin's (one per line): the ids decided."""
        if sender != self.admin_user:
            return []
        decided = []
        # Lines end at "\n" only: splitlines() also cuts at U+2028, \x85, \x0c…, and a quoted line of
        # a worker's words ("> <@eve> done\u2028approve apr-4") would become a line of the admin's.
        for line in body.replace("\r\n", "\n").split("\n"):
            if line.lstrip().startswith(">"):  # the quoted card of a reply
                continue
            match = DECISION.match(line)
            if match is None:
                continue
            verb, approval_id, note = match.groups()
            try:
                await self.decide(approval_id, approve=verb.lower().startswith("approve"), note=note)
            except Exception as exc:  # noqa: BLE001 - told in the room, like any other mistake
                log.info("admin decision %s %s refused: %s", verb, approval_id, exc)
                continue
            decided.append(approval_id)
        return decided

    async def admin_action(self, action: str, body: dict[str, Any]) -> Any:
        """``approvals-list``, ``approval-approve``, ``approval-deny`` (the CLI's, live)."""
        if action == "approvals-list":
            return listing(self.state, every=bool(body.get("all")))
        if action in ("approval-approve", "approval-deny"):
            return await self.decide(str(body.get("id") or ""), approve=action == "approval-approve",
                                     by="admin", note=str(body.get("note") or ""))
        raise InvalidInputError(f"unknown approvals action {action!r}")

    # ------------------------------------------------------------------ start, timeouts

    def reconcile(self) -> list[str]:
        """At start: a call that was running when the control plane stopped is interrupted
        (never run twice); the admin is told."""
        hit = []
        for approval in self.state.approvals(states=["running"]):
            with self.state.transaction():
                if self.state.move_approval(approval.seq, ["running"], "interrupted", finished_at=now_iso()):
                    self.state.log_event("approval.interrupted", approval.id, worker=approval.worker)
                    self.state.enqueue_message(
                        f"approval-interrupted:{approval.id}", ROOM_MANAGER,
                        f"@{self.admin} {approval.id} ({approval.worker}: {approval.kind} {one_line(approval.target)}) "
                        "was approved and running when the control plane stopped: it may or may not have happened. "
                        f"It is not run again; {approval.worker} is told.", [self.admin])
                    hit.append(approval.id)
        return hit

    async def tick(self) -> list[str]:
        """Remind the admin of approvals waiting longer than ``remind_seconds`` (once per period)
        and deny those past ``expire_seconds``: what was escalated or expired."""
        now = self.clock()
        touched = []
        for approval in self.state.approvals(states=["pending"]):
            self._drop_if_task_closed(approval)
            if self.state.approval(approval.id).state != "pending":
                touched.append(approval.id)
                continue
            age = now - _epoch(approval.created_at)
            expire = self.policy.expire_seconds
            if expire and age >= expire:
                try:
                    decide(self.state, approval.id, approve=False, by="timeout",
                           note=f"no decision within {expire:g} seconds ([approvals] expire_seconds)")
                except InvalidInputError:
                    continue  # decided meanwhile
                self._wake(approval.seq)
                touched.append(approval.id)
                continue
            due = int(age // self.policy.remind_seconds)
            if due > approval.reminders:
                with self.state.transaction():
                    self.state.move_approval(approval.seq, ["pending"], "pending", reminders=due)
                    self.state.enqueue_message(
                        f"approval-remind:{approval.id}:{due}", ROOM_MANAGER,
                        f"@{self.admin} reminder: approval **{approval.id}** ({approval.worker}: {approval.kind} "
                        f"{one_line(approval.target)}) has waited {age / 60:.0f} min; {approval.worker} cannot go on "
                        f"until you decide — `approve {approval.id}` or `deny {approval.id} <reason>`.", [self.admin])
                    self.state.log_event("approval.reminded", approval.id, waited_seconds=round(age))
                touched.append(approval.id)
        if touched:
            await self.flush()
        return touched

    def start(self, interval: float) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)  # a periodic check, not synchronisation
                try:
                    await self.tick()
                except Exception:  # the next tick tries again
                    log.exception("approvals: the reminder check failed")

        self._loop = asyncio.create_task(loop(), name="approvals")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None

    def awaiting(self, task_id: str) -> bool:
        """Whether the task's worker waits for the admin on one of its calls (not a stall). An
        approved call counts only while its worker may still be on its way to claim it (it asks
        again every ``hold_seconds``): one it never comes back for (a worker restarted, or one
        that goes quiet on purpose after the yes) is not reminded, so it must not hide a stall."""
        claim = 60.0 + 3 * self.policy.hold_seconds
        now = self.clock()
        return any(a.task_id == task_id and (a.state != "approved" or now - _epoch(a.decided_at or a.created_at) < claim)
                   for a in self.state.approvals(states=["pending", "approved", "running"]))


def may_ask_commands(policy: ApprovalsConfig, worker: str) -> bool:
    """Whether ``policy`` can hold a command of ``worker`` (its runtime asks before each one)."""
    if policy.workers.get(worker, policy.level) == "off":
        return False
    if policy.workers.get(worker, policy.level) in ("strict", "smart"):
        return True
    return any(rule.decision == "ask" and (not rule.workers or worker in rule.workers)
               and (rule.tool.startswith("command:") or rule.tool.startswith("*")) for rule in policy.rules)


def may_ask(policy: ApprovalsConfig) -> bool:
    """Whether ``policy`` can make any call wait (what a gateway without approvals cannot do)."""
    levels = {policy.level, *policy.workers.values()}
    return bool(levels & {"strict", "smart"}) or any(rule.decision == "ask" for rule in policy.rules)


def _epoch(stamp: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return time.time()
