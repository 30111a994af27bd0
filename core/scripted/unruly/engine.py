"""Deciding, per agent and per call, whether and how the model misbehaves — and recording it.

For call ``n`` of an agent (every call counts, clean or not) the decision is, in order:

1. the agent's ``schedule`` entry for ``n``, if any (always applied, whatever came before);
2. ``context_length`` with a ``budget`` the prompt exceeds (a property of the model: always);
3. a clean call, if the agent's last ``max_consecutive`` calls all misbehaved;
4. the rest of a running ``streak``;
5. the random mix: one draw in ``[0, 1)`` walks the kinds' rates in :data:`~config.KINDS` order.

A kind that cannot apply to this call (*tools as text* when the base reply has no tool call, a
kind whose ``tools``/``when`` filter does not hold) leaves the call clean, logged as ``skipped``.
The draw and every choice a kind makes use ``random.Random(f"{seed}/{agent}/{n}")``, so the same
seed gives the same misbehaviours for the same calls, however the agents' calls interleave.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hiclaw.scripted.unruly import failures as f
from hiclaw.scripted.unruly import kinds as k
from hiclaw.scripted.unruly.config import KINDS, AgentMix, KindSpec, UnrulyConfig

MAX_LOG = 100_000

Make = Callable[[Any, k.CallContext], k.Outcome]
Applies = Callable[[Any, k.CallContext], bool]

#: kind → (applies, make).
KIND_BEHAVIOURS: dict[str, tuple[Applies, Make]] = {
    "text_instead_of_tools": (k.has_tool_calls, k.text_instead_of_tools),
    "tools_as_text": (k.has_tool_calls, k.tools_as_text),
    "malformed_arguments": (k.has_tool_calls, k.malformed_arguments),
    "unknown_tool": (k.always, k.unknown_tool),
    "loop": (k.loop_applies, k.loop),
    "question": (k.always, k.question),
    "refusal": (k.always, k.refusal),
    "long_output": (k.always, k.long_output),
    "http_429": (k.always, f.http_429),
    "http_500": (k.always, f.http_500),
    "http_502": (k.always, f.http_502),
    "http_503": (k.always, f.http_503),
    "timeout": (k.always, f.timeout),
    "context_length": (k.always, f.context_length),
    "empty": (k.always, k.empty),
}
assert set(KIND_BEHAVIOURS) == set(KINDS), "every configured kind needs a behaviour"


def applies(spec: KindSpec, ctx: k.CallContext) -> bool:
    return k.filters_hold(spec, ctx) and KIND_BEHAVIOURS[spec.kind][0](spec, ctx)


def make(spec: KindSpec, ctx: k.CallContext) -> k.Outcome:
    return KIND_BEHAVIOURS[spec.kind][1](spec, ctx)


@dataclass
class AgentRecord:
    calls: int = 0
    consecutive: int = 0  # misbehaving calls in a row, up to now
    longest: int = 0  # the longest such run so far
    streak: KindSpec | None = None
    streak_left: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def misbehaved(self) -> int:
        return sum(self.kinds.values())


@dataclass(frozen=True)
class Decision:
    spec: KindSpec | None  # the misbehaviour to apply, or None: a clean call
    reason: str  # schedule, budget, streak, random — or clean, max_consecutive, skipped
    drawn: str | None = None  # for `skipped`: the kind that could not apply


class UnrulyEngine:
    """The misbehaviour plan of one server (one event loop, no locking)."""

    def __init__(self, config: UnrulyConfig, *, seed: int | None = None) -> None:
        self.config = config
        self.seed = config.seed if seed is None else seed
        self.records: dict[str, AgentRecord] = {}
        self.entries: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.records.clear()
        self.entries.clear()

    def begin(self, agent: str) -> tuple[int, random.Random]:
        """Count a new call of ``agent``: its number and its random generator."""
        record = self.records.setdefault(agent, AgentRecord())
        record.calls += 1
        return record.calls, random.Random(f"{self.seed}/{agent}/{record.calls}")

    def decide(self, ctx: k.CallContext) -> Decision:
        mix = self.config.mix_for(ctx.agent)
        record = self.records.setdefault(ctx.agent, AgentRecord())
        draw = ctx.rng.random()  # drawn first, always: later choices of the kind come after it
        decision = Decision(None, "clean") if mix is None else self._choose(mix, record, ctx, draw)
        if decision.spec is None:  # a clean call ends every run of bad ones
            record.consecutive = 0
            record.streak, record.streak_left = None, 0
        else:
            record.consecutive += 1
            record.longest = max(record.longest, record.consecutive)
            record.kinds[decision.spec.kind] += 1
        return decision

    def _choose(self, mix: AgentMix, record: AgentRecord, ctx: k.CallContext, draw: float) -> Decision:
        scheduled = mix.scheduled(ctx.call)
        if scheduled is not None:
            return self._if_applies(scheduled, ctx, "schedule")
        budgeted = mix.kinds.context_length
        if (budgeted is not None and budgeted.budget is not None and ctx.prompt_tokens > budgeted.budget
                and applies(budgeted, ctx)):
            return Decision(budgeted, "budget")
        if record.consecutive >= self.config.limit_for(mix):
            return Decision(None, "max_consecutive")
        if record.streak is not None and record.streak_left > 0:
            record.streak_left -= 1
            return self._if_applies(record.streak, ctx, "streak")
        total = 0.0
        for spec in mix.kinds.specs():
            if spec.rate <= 0:
                continue
            total += spec.rate
            if draw < total:
                decision = self._if_applies(spec, ctx, "random")
                if decision.spec is not None and spec.streak > 1:
                    record.streak, record.streak_left = spec, spec.streak - 1
                return decision
        return Decision(None, "clean")

    @staticmethod
    def _if_applies(spec: KindSpec, ctx: k.CallContext, reason: str) -> Decision:
        if applies(spec, ctx):
            return Decision(spec, reason)
        return Decision(None, "skipped", drawn=spec.kind)

    def record(self, ctx: k.CallContext, decision: Decision, outcome: k.Outcome | None, *, stream: bool) -> dict[str, Any]:
        """Append this call to the log (and return the entry, to complete it later)."""
        entry: dict[str, Any] = {
            "agent": ctx.agent, "call": ctx.call, "kind": outcome.kind if outcome else None,
            "reason": decision.reason, "status": outcome.status if outcome else (ctx.base.error.status if ctx.base.error
                                                                                  else 200),
            "stream": stream, "base": ctx.base.source, "base_tools": [name for name, _, _ in ctx.base_calls],
            "prompt_tokens": ctx.prompt_tokens, "detail": dict(outcome.detail) if outcome else {},
            "time": round(time.time(), 3),
        }
        if decision.drawn is not None:
            entry["detail"]["drawn"] = decision.drawn
        if len(self.entries) >= MAX_LOG:
            del self.entries[: MAX_LOG // 10]
        self.entries.append(entry)
        return entry

    def log(self, agent: str | None = None) -> list[dict[str, Any]]:
        return [dict(e) for e in self.entries if agent is None or e["agent"] == agent]

    def stats(self) -> dict[str, Any]:
        total: Counter[str] = Counter()
        agents = {}
        for name, record in sorted(self.records.items()):
            total.update(record.kinds)
            agents[name] = {"calls": record.calls, "clean": record.calls - record.misbehaved,
                            "misbehaved": record.misbehaved, "kinds": dict(sorted(record.kinds.items())),
                            "consecutive": record.consecutive, "longest_streak": record.longest}
        calls = sum(r.calls for r in self.records.values())
        return {"name": self.config.name, "seed": self.seed, "calls": calls, "misbehaved": sum(total.values()),
                "kinds": dict(sorted(total.items())), "agents": agents}
