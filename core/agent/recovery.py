"""What a model call's failure means, and how to recover from it (stdlib only).

- :func:`is_budget_refusal`: a spent budget or quota (the embedded gateway's ``budget_exceeded``,
  a provider's ``insufficient_quota``). Retrying does not help: the turn ends with an account.
- :func:`is_context_overflow`: the conversation is longer than the model's context window
  (OpenAI ``context_length_exceeded``, and the messages of other providers as litellm, vLLM,
  llama.cpp, Anthropic and Gemini word them). Retrying the same request does not help either;
  :func:`trim_messages` makes a shorter one.
- :func:`retry_after_seconds`: how long a 429/503 asks to wait (``retry-after-ms``,
  ``Retry-After`` in seconds or as an HTTP date, else a "try again in 20s" in the message).
"""
from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

BUDGET_CODES = frozenset({"budget_exceeded", "insufficient_quota", "quota_exceeded", "billing_hard_limit_reached"})
CONTEXT_CODES = frozenset({"context_length_exceeded", "context_window_exceeded", "exceed_context_size_error",
                           "request_too_large"})
#: Lower-case phrases of context-window errors, as providers and litellm word them.
CONTEXT_PHRASES = (
    "context_length_exceeded", "maximum context length", "context window exceeded", "contextwindowexceedederror",
    "exceeds the context window", "exceed context limit", "maximum context limit", "prompt is too long",
    "input is too long", "exceeds the available context size", "exceeds the maximum number of tokens allowed",
    "input tokens exceed the configured limit", "requested token count exceeds", "reduce the length of the messages",
    "is longer than the model's context length", "too many tokens",
)
_NOT_CONTEXT = ("string_above_max_length", "invalid 'user'")  # a too-long parameter, not the conversation
_CONTEXT_PATTERNS = (re.compile(r"current length is \d+ while limit is \d+"),
                     re.compile(r"maximum input length is \d+ tokens"),
                     re.compile(r"input length .{0,40}exceeds? .{0,40}context"))
_TRY_AGAIN = re.compile(r"(?:try again|retry) in (\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec|seconds?)\b", re.I)
_LIMITS = (re.compile(r"maximum context length is (\d+) tokens.{0,200}?(?:resulted in|requested) (\d+) tokens", re.S),
           re.compile(r"prompt is too long: (\d+) tokens > (\d+) maximum"))

#: Tool results longer than this are cut first when a conversation must shrink.
SHORT_RESULT_CHARS = 400
CUT_NOTE = "[cut to fit the model's context window: {n} more characters of this result; repeat the call if you need them]"
CUT_TEXT_NOTE = "[… {n} more characters cut to fit the model's context window]"


def is_budget_refusal(status: int, code: str | None, message: str = "") -> bool:
    return status in (402, 429) and (code or "").lower() in BUDGET_CODES


def is_context_overflow(status: int, code: str | None, message: str = "") -> bool:
    if status == 413 or (code or "").lower() in CONTEXT_CODES:
        return True
    if status < 400:
        return False
    text = message.lower()
    if any(phrase in text for phrase in _NOT_CONTEXT):
        return False
    return any(phrase in text for phrase in CONTEXT_PHRASES) or any(p.search(text) for p in _CONTEXT_PATTERNS)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def retry_after_seconds(headers: Mapping[str, str], message: str = "", *, now: datetime | None = None) -> float | None:
    """Seconds the server asks us to wait, or ``None`` if it does not say."""
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is not None:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
            return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    found = _TRY_AGAIN.search(message)
    if found:
        amount = float(found.group(1))
        return amount / 1000 if found.group(2).lower().startswith("m") else amount
    return None


# --------------------------------------------------------------------------- trimming the conversation


def size(messages: list[dict[str, Any]]) -> int:
    """Characters of the conversation as sent (compact JSON) — what trimming measures."""
    return len(json.dumps(messages, ensure_ascii=False, separators=(",", ":"), default=str))


def shrink_ratio(message: str) -> float:
    """How much of the conversation to keep: from the error's numbers when it gives them."""
    for pattern in _LIMITS:
        found = pattern.search(message)
        if found:
            limit, used = sorted((int(found.group(1)), int(found.group(2))))
            if used:
                return max(0.2, min(0.8, 0.9 * limit / used))
    return 0.6


def _groups(messages: list[dict[str, Any]], *, starts: tuple[str, ...] = ("assistant", "user", "system")) -> list[list[dict[str, Any]]]:
    """Messages grouped so that an assistant message stays with the tool results that answer it
    (and, with ``starts=("user",)``, a user message with the answers to it: one exchange)."""
    groups: list[list[dict[str, Any]]] = []
    for message in messages:
        if groups and message.get("role") not in starts:
            groups[-1].append(message)
        else:
            groups.append([message])
    return groups


def _cut(message: dict[str, Any], keep: int) -> bool:
    content = message.get("content")
    note = CUT_NOTE if message.get("role") == "tool" else CUT_TEXT_NOTE
    if not isinstance(content, str) or len(content) <= keep + len(note):
        return False
    message["content"] = content[:keep] + "\n" + note.format(n=len(content) - keep)
    return True


class _Conversation:
    """The parts trimming treats differently: the leading system messages and the latest user
    message are never touched; the earlier history and this turn's steps (assistant + tools) are."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        messages = [dict(m) for m in messages]
        head = 0
        while head < len(messages) and messages[head].get("role") == "system":
            head += 1
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user" and i >= head), default=None)
        self.head = messages[:head]
        if last_user is None:
            self.history: list[list[dict[str, Any]]] = []
            self.user: list[dict[str, Any]] = []
            self.steps = _groups(messages[head:])
        else:
            self.history = _groups(messages[head:last_user], starts=("user",))
            self.user = [messages[last_user]]
            self.steps = _groups(messages[last_user + 1:])
        self.dropped: list[str] = []  # names of the tools of the steps dropped

    def messages(self) -> list[dict[str, Any]]:
        steps = [dict(m) for group in self.steps for m in group]
        if self.dropped and steps:
            tools = ", ".join(dict.fromkeys(self.dropped)) or "no tools"
            note = (f"(To fit the model's context window, {len(self.dropped)} earlier step(s) of this turn were cut; "
                    f"they used: {tools}.)")
            steps[0]["content"] = note + ("\n" + steps[0]["content"] if steps[0].get("content") else "")
        return self.head + [m for group in self.history for m in group] + self.user + steps

    def size(self) -> int:
        return size(self.messages())


def trim_messages(messages: list[dict[str, Any]], ratio: float = 0.6) -> list[dict[str, Any]] | None:
    """A shorter copy of ``messages`` (aiming at ``ratio`` of its size), or ``None`` if nothing
    can be cut. In order, until small enough: older tool results are cut to a short head and a
    note; earlier history is dropped, oldest first; this turn's earlier steps are dropped (a note
    on the first remaining step names their tools); the latest tool results are cut; long
    assistant texts are cut. The system prompt and the latest user message stay as they are."""
    talk = _Conversation(messages)
    target = int(size(messages) * ratio)
    changed = False

    def small() -> bool:
        return talk.size() <= target

    for group in talk.steps[:-1] + talk.history:  # older tool results, oldest first
        for message in group:
            if message.get("role") == "tool" and not small():
                changed = _cut(message, SHORT_RESULT_CHARS) or changed
    while talk.history and not small():
        talk.history.pop(0)
        changed = True
    while len(talk.steps) > 1 and not small():
        dropped = talk.steps.pop(0)
        talk.dropped += [str((c.get("function") or {}).get("name", "?")) for c in dropped[0].get("tool_calls") or []]
        changed = True
    for keep in (2000, SHORT_RESULT_CHARS):  # the latest tool results, then long assistant texts
        for group in talk.steps:
            for message in group:
                if not small() and message.get("role") in ("tool", "assistant"):
                    changed = _cut(message, keep) or changed
    return talk.messages() if changed else None
