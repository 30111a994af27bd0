"""The seed scenario played on a live team as a person plays it, with its invariants measured.

The model-chaos suite (``tests/test_model_chaos.py``) and its benchmark (``bench/model_chaos.py``)
play the demo's scenario — four workers, a five-task project, a revision — on a real team (embedded
Synapse, the embedded gateway, local storage, sandboxed workers, a private skill registry) whose
model is the scripted one, clean or made unruly by a mix (docs/scripted-model.md, "The unruly
model"). The admin behaves like a person: says a thing, reads the answer, says it again if it
did not happen (at most :data:`ASKS` times), and does by hand what the Manager still did not do
(creates the workers with ``hiclaw worker create``).

What is measured (:class:`SeedPlay`), and what must hold whatever the model does:

- **no silent stall** — a :class:`StallWatch` samples every task and project; a task that waits
  on code or a worker (in progress, in review, blocked) or a project without a plan, unchanged for
  two heartbeat intervals (plus a quarter interval, the watchdog's check period, and
  :data:`STALL_GRACE`), must have been reported to the admin (a message in the Manager room
  mentioning the admin and naming it) since it last changed;
- **bounded LLM calls** — every call the gateway saw, per task dispatched or planned (the bench
  compares it with the clean run: ≤ 1.5×);
- **no duplicate or lost assignment** — each task's "**task-N** is yours" is posted exactly as many
  times as it was dispatched;
- **nothing raw shown to the human** — no tool-call markup, chat-template tokens or JSON tool
  calls in any message the admin sees (:data:`RAW`);
- every admin message answered; no traceback in the control plane's log or a worker's.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hiclaw.models import ProjectState, TaskState

#: How often the admin says a thing before doing it by hand (or giving up on it).
ASKS = 5
#: How long the admin waits for an answer to each ask.
ASK_WAIT = 25.0
#: Slack on top of the two heartbeat intervals (a quarter interval is the watchdog's check period;
#: this is the rest: a Manager turn in flight, Matrix delivery).
STALL_GRACE = 3.0
#: Task states that wait on code or a worker (pending ones wait on dependencies or the human).
OWNED = (TaskState.IN_PROGRESS, TaskState.REVIEW, TaskState.BLOCKED)
TERMINAL = (TaskState.DONE, TaskState.CANCELLED)
#: What must never reach a human: tool-call markup, chat-template tokens, tool calls as JSON.
RAW = re.compile(r"</?tool_call>|</?tool_response>|<\|im_(start|end)\|>|<\|[a-z_]+\|>|</?function[=>]|\[TOOL_CALLS\]"
                 r"""|\{\s*["'](name|function)["']\s*:\s*["'][A-Za-z_]\w*["']\s*,\s*["'](arguments|parameters)["']""")
ASSIGNED = re.compile(r"\*\*(task-\d+)\*\* is yours")


#: The bench's and the suite's mix: every kind of misbehaviour at this rate per model call, for
#: every agent (15 kinds: about one call in four misbehaves), at most 2 bad calls in a row.
MIX_RATE = 0.02
#: The suite's one-kind runs: that kind at this rate per call.
KIND_RATE = 0.3


def kind_spec(kind: str, rate: float) -> dict[str, Any]:
    """One kind's entry of a mix: a hung call holds 30 s (the gateway gives up after 5), a 429 asks
    for 1 s."""
    spec: dict[str, Any] = {"rate": rate}
    if kind == "timeout":
        spec["seconds"] = 30
    if kind == "http_429":
        spec["retry_after"] = 1
    return spec


def seeded_mix(seed: int, rate: float = MIX_RATE, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A seeded random mix of ``kinds`` (default: every kind) for every agent."""
    from hiclaw.scripted.unruly import KINDS

    return {"seed": seed, "max_consecutive": 2,
            "agents": {"*": {"kinds": {kind: kind_spec(kind, rate) for kind in kinds or KINDS}}}}


class Tracebacks(logging.Handler):
    """Every log record of the control plane (this process) that carries a traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback (most recent call last)" in record.getMessage():
            self.records.append(f"{record.name}: {record.getMessage()[:300]} ({record.exc_info and record.exc_info[0]})")


def stamp(value: str | None) -> float:
    """An ISO time of the state DB as epoch seconds (0 for none)."""
    return datetime.fromisoformat(value).timestamp() if value else 0.0


@dataclass
class Told:
    """A message of the Manager's account in the Manager room that mentions the admin."""

    at: float
    body: str


@dataclass
class StallWatch:
    """Samples the team's tasks and records every silent stall: a task in an owned state that has
    not changed for ``2 × heartbeat + heartbeat / 4 + STALL_GRACE`` seconds without the admin told."""

    state: Any  # hiclaw.state.StateDB
    heartbeat: float
    told: Callable[[], list[Told]]
    silent: dict[str, str] = field(default_factory=dict)  # task → what it was doing, once per episode
    _seen: dict[str, tuple[Any, float]] = field(default_factory=dict)

    @property
    def limit(self) -> float:
        return 2 * self.heartbeat + self.heartbeat / 4 + STALL_GRACE

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        # What each task did (not stalled_at: marking a stall is telling, not progress), and each
        # project waiting for its plan.
        subjects: list[tuple[str, str, tuple[Any, ...], bool]] = [(t.id, t.state.value, (t.state, t.dispatch_count, t.last_progress_at, t.result_status),
                     t.state in OWNED) for t in self.state.tasks()]
        subjects += [(p.id, p.state, (p.state, p.updated_at), p.state == ProjectState.PLANNING) for p in self.state.projects()]
        for subject, what, mark, owned in subjects:
            previous = self._seen.get(subject)
            if previous is None or previous[0] != mark:
                self._seen[subject] = (mark, now)
                continue
            since = previous[1]
            episode = f"{subject}@{since:.0f}"
            if not owned or now - since <= self.limit or episode in self.silent:
                continue
            # Told since it last changed (a notice posted the moment it changed counts: 1 s early).
            if not any(t.at >= since - 1 and subject in t.body for t in self.told()):
                self.silent[episode] = f"{subject} {what} unchanged for {now - since:.0f} s, admin not told"

    async def run(self, interval: float = 0.25) -> None:
        while True:
            self.sample()
            await asyncio.sleep(interval)


@dataclass
class SeedPlay:
    """What one play of the seed scenario did."""

    label: str
    wall: float = 0.0
    workers_by_hand: list[str] = field(default_factory=list)
    asks: int = 0
    projects: list[str] = field(default_factory=list)  # each project's final state
    tasks: dict[str, str] = field(default_factory=dict)  # task → final state
    dispatches: int = 0
    calls: int = 0  # every call the gateway answered or refused, every consumer
    failed_calls: int = 0
    tokens: int = 0
    manager_calls: int = 0
    per_task: dict[str, int] = field(default_factory=dict)  # worker calls attributed to each task
    model_calls: int = 0  # calls that reached the model (misbehaving ones included)
    misbehaved: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    silent_stalls: list[str] = field(default_factory=list)
    assignment_errors: list[str] = field(default_factory=list)
    duplicate_events: list[str] = field(default_factory=list)
    raw_shown: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    #: The unruly model's log, one line per call: ``agent #call: kind (base turn)``.
    model_log: list[str] = field(default_factory=list)

    @property
    def task_count(self) -> int:
        """Tasks the run dispatched (a re-check counts again) or planned: what its calls served."""
        return max(self.dispatches, len(self.tasks), 1)

    @property
    def calls_per_task(self) -> float:
        return self.calls / self.task_count

    @property
    def tokens_per_task(self) -> float:
        return self.tokens / self.task_count

    def calls_within(self, factor: float, clean: SeedPlay) -> bool:
        """LLM calls per task at most ``factor`` × the clean run's; a run that planned no task at
        all, at most ``factor`` × the clean run's calls in all."""
        if not self.tasks:
            return self.calls <= factor * clean.calls
        return self.calls_per_task <= factor * clean.calls_per_task

    @property
    def done(self) -> bool:
        return self.projects == ["done"]

    def broken(self) -> dict[str, list[str]]:
        """Each invariant that did not hold, with what broke it."""
        found = {"silent stalls": self.silent_stalls, "assignments lost or posted twice": self.assignment_errors,
                 "events posted twice": self.duplicate_events, "raw tool markup shown to the admin": self.raw_shown,
                 "admin messages never answered": self.unanswered, "tracebacks": self.tracebacks}
        return {name: items for name, items in found.items() if items}

    def line(self) -> str:
        states = Counter(self.tasks.values())
        return (f"{self.label}: {self.wall:.0f} s, project {','.join(self.projects) or 'none'}, tasks "
                f"{dict(states) or 'none'}, {self.dispatches} dispatches, {self.calls} calls "
                f"({self.failed_calls} failed, {self.manager_calls} Manager), {self.calls_per_task:.1f} calls and "
                f"{self.tokens_per_task:.0f} tokens per task, {self.misbehaved} of {self.model_calls} model calls "
                f"misbehaved, silent stalls {len(self.silent_stalls)}"
                + (f", workers by hand: {','.join(self.workers_by_hand)}" if self.workers_by_hand else ""))


async def play_seed(home: Path, *, mix: Any = None, label: str = "clean", heartbeat: float = 4.0,
                    deadline: float = 300.0, sandbox: str | None = None) -> SeedPlay:
    """Play the seed scenario on a new team in ``home`` (its model the scripted demo scenario, made
    unruly by ``mix`` when given) and measure it; ``deadline``: wall seconds after the first message."""
    from hiclaw.demo import REGISTRY_ROOT
    from hiclaw.demo.runner import ASK_PROJECT, ASK_WORKERS, CONFIRM
    from hiclaw.demo.scenario import WORKERS, demo_scenario
    from hiclaw.testing.registry import RunningRegistry
    from hiclaw.testing.team import running_team

    result = SeedPlay(label)
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    registry = RunningRegistry(REGISTRY_ROOT).start()
    seen: list[tuple[float, Any]] = []
    try:
        # A hung model call is given up on after 5 s (the gateway's upstream timeout); a 429's
        # Retry-After is honoured.
        async with running_team(home, demo_scenario(), unruly=mix, registry_url=registry.url, sandbox=sandbox,
                                heartbeat_seconds=heartbeat,
                                gateway_settings={"upstream_timeout_seconds": 5}) as team:
            plane = team.plane
            admin_id, manager_id = team.user_id("admin"), team.user_id("manager")
            team.admin.on_message = lambda message: seen.append((time.time(), message))

            def told() -> list[Told]:
                return [Told(at, m.body) for at, m in list(seen) if m.sender == manager_id
                        and m.room_id == plane.chat.manager_room and admin_id in m.mentions]

            watch = StallWatch(plane.state, heartbeat, told)
            watcher = asyncio.create_task(watch.run())
            started = time.time()
            asked: list[float] = []

            async def ask(text: str, happened: Callable[[], bool]) -> bool:
                """Say ``text`` until it happened: once the Manager's turn for it is over (or after
                ASK_WAIT), again."""
                for _ in range(ASKS):
                    if happened():
                        return True
                    asked.append(time.time())
                    result.asks += 1
                    event_id = await team.tell_manager(text)

                    def over(key: str = f"message:{event_id}") -> bool:
                        return plane.state.inbox_status(key) in ("done", "failed") and not plane.state.inbox_pending()

                    await _wait(lambda: (happened() and not plane.state.inbox_pending()) or over(), ASK_WAIT)
                return happened()

            def workers_created() -> bool:
                return set(WORKERS) <= {w.name for w in plane.state.workers()}

            def proposed() -> bool:
                return any(p.state in (ProjectState.AWAITING_CONFIRMATION, ProjectState.RUNNING, ProjectState.DONE)
                           for p in plane.state.projects())

            def confirmed() -> bool:
                return any(p.state in (ProjectState.RUNNING, ProjectState.DONE) for p in plane.state.projects())

            try:
                if not await ask(ASK_WORKERS, workers_created):
                    for name, (role, model) in WORKERS.items():
                        if name not in {w.name for w in plane.state.workers()}:
                            await plane.admin_action("create-worker", {"name": name, "role": role, "model": model})
                            result.workers_by_hand.append(name)
                if await ask(ASK_PROJECT, proposed):
                    await ask(CONFIRM, confirmed)
                def quiet_since() -> float:
                    return max([since for _, since in watch._seen.values()] + [at for at, _ in seen[-1:]] + asked[-1:])

                await _wait(lambda: _settled(plane, quiet_since(), heartbeat), deadline - (time.time() - started))
            finally:
                watcher.cancel()
            watch.sample()
            result.wall = time.time() - started
            await _measure(result, team, watch, seen, asked)
    finally:
        logging.getLogger().removeHandler(tracebacks)
        registry.stop()
    result.tracebacks = tracebacks.records + result.tracebacks
    return result


async def _wait(predicate: Callable[[], Any], timeout: float) -> bool:
    """:func:`hiclaw.waiting.wait_until`, as a yes or no."""
    from hiclaw.waiting import wait_until

    try:
        await wait_until(predicate, timeout=max(timeout, 0))
    except TimeoutError:
        return False
    return True


def _settled(plane: Any, quiet_since: float, heartbeat: float) -> bool:
    """The project is done (and reported), or nothing has moved — no task, no message — for three
    heartbeat intervals with the Manager idle: what is left waits on the admin (who was told, or
    the run says so)."""
    if plane.state.inbox_pending():
        return False
    projects = plane.state.projects()
    if projects and all(p.state == ProjectState.DONE for p in projects):
        return True
    return time.time() - quiet_since > 3 * heartbeat + STALL_GRACE


async def _measure(result: SeedPlay, team: Any, watch: StallWatch, seen: list[tuple[float, Any]],
                   asked: list[float]) -> None:
    plane = team.plane
    admin_id, manager_id = team.user_id("admin"), team.user_id("manager")
    tasks = plane.state.tasks()
    result.tasks = {t.id: t.state.value for t in tasks}
    result.projects = [p.state for p in plane.state.projects()]
    result.dispatches = sum(t.dispatch_count for t in tasks)
    result.silent_stalls = sorted(watch.silent.values())
    ledger = await plane.gateway.ledger(limit=1_000_000)
    result.calls = len(ledger)
    result.failed_calls = sum(1 for row in ledger if row["status"] != 200)
    result.tokens = sum(row["prompt_tokens"] + row["completion_tokens"] for row in ledger)
    result.manager_calls = sum(1 for row in ledger if row["consumer"] == "manager")
    result.per_task = dict(Counter(row["task"] for row in ledger if row["task"] and row["consumer"] != "manager"))
    stats = team.model.stats() if hasattr(team.model, "stats") else team.model.engine.stats()
    result.model_calls = int(stats.get("calls") or sum(a.get("calls", 0) for a in stats.get("agents", {}).values()))
    result.misbehaved = int(stats.get("misbehaved") or 0)
    result.kinds = dict(stats.get("kinds") or {})
    if hasattr(team.model, "log"):
        result.model_log = [f"{c['agent']} #{c['call']}: {c['kind'] or 'clean'} ({c['base']}; {c['reason']})"
                            for c in team.model.log()]
    # Assignments and duplicates, from the rooms themselves (what a client shows).
    posted: Counter[str] = Counter()
    for room in await team.admin.joined_rooms():
        events = await team.admin.room_messages(room, limit=5000)
        ids = [e["event_id"] for e in events]
        if len(ids) != len(set(ids)):
            result.duplicate_events.append(room)
        for event in events:
            if event.get("sender") == manager_id:
                posted.update(ASSIGNED.findall(event["content"].get("body", "")))
    result.assignment_errors = [f"{t.id}: dispatched {t.dispatch_count}, posted {posted.get(t.id, 0)}"
                                for t in tasks if posted.get(t.id, 0) != t.dispatch_count]
    result.raw_shown = [f"{m.sender}: {m.body[:160]!r}" for _, m in seen if m.sender != admin_id and RAW.search(m.body)]
    replies = [at for at, m in seen if m.sender == manager_id and m.room_id == plane.chat.manager_room]
    result.unanswered = [f"message {i + 1} of the admin" for i, at in enumerate(asked)
                         if not any(r >= at for r in replies)]
    logs = {p.stem: p.read_text(errors="replace") for p in (team.home / "logs" / "workers").glob("*.log")}
    result.tracebacks = [f"worker {name}" for name, text in logs.items() if "Traceback (most recent call last)" in text]
