"""Keeping a turn from going round in circles, and saying in one line how it ended.

:class:`TurnGuard` watches the tool calls of one turn: the same call (name and canonical
arguments) made ``max_repeats`` times is not run again — the model gets its earlier result and
is told to do something else or finish (one nudge per call); made once more, the turn stops. A
run of ``max_invalid_steps`` steps whose every call could not even be run (an unknown tool,
arguments that are not a JSON object) stops it too. :func:`account` words each way a turn can
end for the humans in the room: one line, tool names only, never raw arguments or markup.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["done", "step_limit", "repeated_call", "invalid_calls", "empty", "model_error", "budget", "context"]
Verdict = Literal["run", "nudge", "stop"]

#: How much of an earlier result the nudge repeats to the model.
NUDGE_RESULT_CHARS = 1500


@dataclass
class ToolCallRecord:
    name: str
    arguments: dict[str, Any]
    result: str
    error: bool = False
    invalid: bool = False  # could not be run at all: unknown tool, unreadable arguments
    repeat: bool = False  # not run: the same call again (the model got the nudge instead)


def signature(name: str, arguments: Any) -> str:
    """A call's identity: its name and its arguments as canonical JSON."""
    return name + "\0" + json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def safe_name(name: str) -> str:
    """A tool name fit for a sentence shown to a human (the model chose it)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "", name)[:40]
    return cleaned or "a nameless tool"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class TurnGuard:
    def __init__(self, *, max_repeats: int = 3, max_invalid_steps: int = 3) -> None:
        self.max_repeats = max(2, max_repeats) if max_repeats > 0 else 0  # 0: off; the first call always runs
        self.max_invalid_steps = max_invalid_steps
        self.calls: Counter[str] = Counter()
        self.results: dict[str, str] = {}
        self.invalid_streak = 0
        self.repeated: str | None = None  # the tool whose repetition stopped the turn

    def verdict(self, name: str, arguments: dict[str, Any]) -> Verdict:
        key = signature(name, arguments)
        self.calls[key] += 1
        if self.max_repeats <= 0 or self.calls[key] < self.max_repeats:
            return "run"
        if self.calls[key] == self.max_repeats:
            return "nudge"
        self.repeated = name
        return "stop"

    def ran(self, name: str, arguments: dict[str, Any], result: str) -> None:
        self.results[signature(name, arguments)] = result

    def nudge(self, name: str, arguments: dict[str, Any]) -> str:
        earlier = self.results.get(signature(name, arguments), "")
        if len(earlier) > NUDGE_RESULT_CHARS:
            earlier = earlier[:NUDGE_RESULT_CHARS] + " …"
        return (f"error: not run — you already called {name} with exactly these arguments "
                f"{self.max_repeats - 1} times in this turn, and calling it again will not change anything. "
                f"Its result was:\n{earlier}\n"
                "Do something else, or finish: answer with what you have (or report the task as blocked, saying why). "
                "If you call it again with the same arguments, your turn ends here.")

    def step(self, records: list[ToolCallRecord]) -> bool:
        """After a step's calls: ``True`` when too many steps in a row had only unrunnable calls."""
        self.invalid_streak = self.invalid_streak + 1 if records and all(r.invalid for r in records) else 0
        return 0 < self.max_invalid_steps <= self.invalid_streak

    def count(self, name: str) -> int:
        """How often the most repeated call of ``name`` was made."""
        return max((n for key, n in self.calls.items() if key.split("\0", 1)[0] == name), default=0)


def describe_recent(records: list[ToolCallRecord], window: int = 6) -> str:
    """What the last steps did, in words: "the last steps kept calling read_file with the same arguments"."""
    recent = records[-window:]
    if not recent:
        return "I kept answering without finishing"
    names = Counter(r.name for r in recent)
    top, count = names.most_common(1)[0]
    if count >= 2 and count * 3 >= len(recent) * 2:
        same = len({signature(r.name, r.arguments) for r in recent if r.name == top}) == 1
        return f"the last steps kept calling {safe_name(top)}" + (" with the same arguments" if same else "")
    return "the last steps called " + _join([safe_name(name) for name in dict.fromkeys(r.name for r in recent)])


def _problems(records: list[ToolCallRecord]) -> str:
    seen: list[str] = []
    for record in records:
        if not record.invalid:
            continue
        if record.result.startswith("error: no tool named"):
            seen.append(f"an unknown tool {safe_name(record.name)}" if record.name else "a call without a tool name")
        else:
            seen.append(f"unreadable arguments for {safe_name(record.name)}")
    return _join(list(dict.fromkeys(seen))[:3]) if seen else "calls that could not be run"


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def account(outcome: Outcome, *, steps: int, records: list[ToolCallRecord], guard: TurnGuard | None = None,
            detail: str = "", trims: int = 0) -> str:
    """The one line a human is told about how the turn ended."""
    stopped = f"I stopped after {steps} step{'s' if steps != 1 else ''} without finishing"
    if outcome == "done":
        return f"Done in {steps} step{'s' if steps != 1 else ''}."
    if outcome == "step_limit":
        return f"{stopped}: {describe_recent(records)}."
    if outcome == "repeated_call":
        name = guard.repeated if guard and guard.repeated else (records[-1].name if records else "")
        times = guard.count(name) if guard else 0
        return (f"{stopped}: I kept calling {safe_name(name)} with the same arguments ({times} times), "
                "even after being told it would not change anything.")
    if outcome == "invalid_calls":
        streak = guard.invalid_streak if guard else 0
        return f"{stopped}: my last {streak} steps only produced tool calls that could not be run ({_problems(records)})."
    if outcome == "empty":
        return f"{stopped}: my model gave an empty answer, also when asked again — ask me once more, or rephrase."
    if outcome == "budget":
        return one_line(f"I cannot go on: the model budget is used up ({detail}).")
    if outcome == "context":
        cut = f", even after cutting older parts of it {trims} time{'s' if trims != 1 else ''}" if trims else ""
        return one_line(f"I could not finish this turn: the conversation is too long for the model{cut} ({detail}).")
    return one_line(f"I could not finish this turn: the model call failed ({detail}).")
