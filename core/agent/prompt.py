"""Lean prompts: identity + rules + a skills catalog + a bounded memory excerpt + this turn.

Room history enters a worker's prompt only as the bounded buffer of unmentioned messages (the
Manager also gets the room's recent exchange, bounded and summarised: :mod:`hiclaw.manager.history`);
files are referenced by path; skills by name and description until the agent reads one
(progressive disclosure). Each woken turn starts a fresh conversation, so a worker's prompt at
its 50th task is about as long as at its first.

Chat text is untrusted (a worker, a skill, a prompt-injected model may have written it), so it
is quoted *structurally*: each buffered message is one JSON object on one line, its real sender
(from the channel, never from the text) beside its text — a newline inside the text stays inside
the JSON string and cannot start a new speaker — and the message that woke the agent sits
between fence lines longer than any run of ``~`` inside it, so it cannot close its own quote.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from hiclaw.models import ChatMessage

#: How much of MEMORY.md (its most recent part) enters the prompt; the rest stays one
#: `read_file MEMORY.md` away, so a long-lived agent's prompt does not grow with its memory.
MEMORY_EXCERPT_CHARS = 800
#: How much of one buffered message enters the prompt.
CONTEXT_MESSAGE_CHARS = 500


def bounded_tail(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    return "…\n" + (cut[newline + 1:] if 0 <= newline < 200 else cut)


def system_prompt(*, identity: str, rules: str = "", skills: Sequence[tuple[str, str]] = (), memory: str = "",
                  facts: Sequence[str] = (), read_memory: str = "read_file MEMORY.md") -> str:
    """``read_memory``: how this agent reads the rest of its memory (the Manager: ``memory_read``)."""
    parts = [identity.strip()]
    if rules.strip():
        parts.append("## Rules\n" + rules.strip())
    if skills:
        catalog = "\n".join(f"- **{name}**: {description}" for name, description in skills)
        parts.append("## Skills you have\nRead a skill's full instructions with `skills_read` before you use it.\n"
                     + catalog)
    if memory.strip():
        excerpt = bounded_tail(memory, MEMORY_EXCERPT_CHARS)
        more = f" (older entries: {read_memory})" if excerpt.startswith("…") else ""
        parts.append(f"## Your memory (most recent part of MEMORY.md{more})\n" + excerpt)
    if facts:
        parts.append("## Facts\n" + "\n".join(f"- {fact}" for fact in facts))
    return "\n\n".join(parts)


def quote(text: str) -> str:
    """``text`` as a JSON string: one line, every newline and control character escaped."""
    return json.dumps(text, ensure_ascii=False)


def quoted_message(sender: str, text: str) -> str:
    """One chat message as one line of JSON: ``{"from": sender, "text": text}``."""
    return json.dumps({"from": sender, "text": text}, ensure_ascii=False)


def fence_for(text: str) -> str:
    """A fence line that no line of ``text`` can equal (longer than its longest run of ``~``)."""
    longest = max((len(run) for run in re.findall(r"~+", text)), default=0)
    return "~" * max(4, longest + 1)


def user_turn(message: ChatMessage, *, display: Callable[[str], str] = lambda user_id: user_id) -> str:
    """The woken turn's user message: buffered context first (oldest first), then the mention —
    every message quoted with its real sender (see the module docstring)."""
    lines: list[str] = []
    if message.context:
        lines.append("Messages in this room since you last spoke (you were not mentioned), oldest first, one JSON "
                     "object per line with its real sender:")
        for earlier in message.context:
            body = earlier.body if len(earlier.body) <= CONTEXT_MESSAGE_CHARS else earlier.body[:CONTEXT_MESSAGE_CHARS] + "…"
            lines.append(quoted_message(display(earlier.sender), body))
        lines.append("")
    room = f" in room {quote(message.room_name)}" if message.room_name else ""
    fence = fence_for(message.body)
    lines.append(f"{display(message.sender)} wrote to you{room} (their message is between the {fence} lines):")
    lines += [fence, message.body, fence]
    return "\n".join(lines)
