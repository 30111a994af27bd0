"""The bounded tool-calling loop.

One woken turn: model → tools → model … until the model answers without tool calls. Whatever
the model does, the turn ends with an :class:`AgentTurn` whose ``outcome`` says how and whose
``account`` says it in one line a human can read (see :mod:`hiclaw.agent.guard`):

- tool calls written as text (``<tool_call>{…}</tool_call>`` and the like,
  :mod:`hiclaw.agent.textcalls`) are run as real calls, and never shown to a human;
- a conversation too long for the model is trimmed and sent again, up to ``max_trims`` times
  (:func:`hiclaw.agent.recovery.trim_messages`);
- the same call made ``max_repeats`` times gets one nudge, then ends the turn; steps whose calls
  cannot even be run end it after ``max_invalid_steps`` in a row; ``max_steps`` bounds the rest;
- an empty reply (no text, no tool call) is answered with a request to answer, ``max_empty``
  times, then ends the turn (``empty``);
- a model call that fails for good (after the client's retries) or a spent budget ends the turn
  with ``outcome`` ``model_error`` / ``budget`` / ``context`` and the :class:`GatewayError`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hiclaw.agent.arguments import argument_problems
from hiclaw.agent.client import GatewayClient, GatewayError, ModelReply
from hiclaw.agent.guard import Outcome, ToolCallRecord, TurnGuard, account
from hiclaw.agent.recovery import shrink_ratio, trim_messages
from hiclaw.agent.textcalls import extract_calls, visible_text
from hiclaw.errors import HiclawError
from hiclaw.models import ModelRequest, ToolSpec

log = logging.getLogger(__name__)

#: Tool results longer than this are cut (the agent can read files by path instead).
MAX_TOOL_RESULT_CHARS = 8000
#: What an empty reply is answered with.
EMPTY_NUDGE = ("Your last reply was empty. Answer the request above in words, or call one of your tools; "
               "if you cannot do it, say why.")

BeforeCall = Callable[[ModelRequest], Awaitable[None]]

__all__ = ["MAX_TOOL_RESULT_CHARS", "AgentLoop", "AgentTurn", "BeforeCall", "Outcome", "ToolCallRecord"]


@dataclass
class AgentTurn:
    """What one woken turn did, and how it ended (``outcome``, and ``account`` in words)."""

    final_text: str  # the model's last text, tool markup removed
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_prompt_tokens: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    outcome: Outcome = "done"
    account: str = ""
    error: GatewayError | None = None  # why the model could not be used (model_error, budget, context)
    trims: int = 0  # times the conversation was cut to fit the model's context window
    text_calls: int = 0  # tool calls the model wrote as text
    empty_replies: int = 0  # replies with neither text nor a tool call

    @property
    def stopped(self) -> bool:
        """The turn ended before the model finished."""
        return self.outcome != "done"

    @property
    def failed(self) -> bool:
        """The model could not be used at all (worth retrying later, or telling the admin)."""
        return self.outcome in ("model_error", "budget", "context")

    @property
    def reply(self) -> str:
        """What to post for this turn: the model's answer when it finished, else the account."""
        return self.final_text if self.outcome == "done" else self.account


def _render_result(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_TOOL_RESULT_CHARS:
        text = text[:MAX_TOOL_RESULT_CHARS] + f"\n… [cut: {len(text) - MAX_TOOL_RESULT_CHARS} more characters]"
    return text


class AgentLoop:
    """Runs model → tools → model … until the model answers without tool calls (or a guard ends it)."""

    def __init__(self, client: GatewayClient, tools: Sequence[ToolSpec], *, agent: str, max_steps: int = 16,
                 before_call: BeforeCall | None = None, max_repeats: int = 3, max_invalid_steps: int = 3,
                 max_trims: int = 3, max_empty: int = 1) -> None:
        self.client = client
        self.max_empty = max_empty
        self.tools = {tool.name: tool for tool in tools}
        self.agent = agent
        self.max_steps = max_steps
        self.before_call = before_call
        self.max_repeats = max_repeats
        self.max_invalid_steps = max_invalid_steps
        self.max_trims = max_trims

    def _parse(self, call: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
        """(name, arguments, why it cannot run) of one call."""
        function = call.get("function") or {}
        name = str(function.get("name", ""))
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else dict(raw)
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except (ValueError, TypeError) as exc:
            return name, {}, f"error: invalid JSON arguments for {name}: {exc}"
        if name not in self.tools:
            available = ", ".join(sorted(self.tools)) or "none"
            return name, arguments, f"error: no tool named {name!r} (available: {available})"
        problems = argument_problems(self.tools[name].parameters, arguments)
        if problems is not None:
            return name, arguments, (f"error: invalid arguments for {name}: {problems}. Call it again with arguments "
                                     "that match its parameters.")
        return name, arguments, None

    async def _run_tool(self, name: str, arguments: dict[str, Any]) -> ToolCallRecord:
        try:
            result = await self.tools[name].handler(arguments)
        except HiclawError as exc:
            return ToolCallRecord(name, arguments, f"error: {exc}", error=True)
        except Exception as exc:
            log.exception("agent %s: tool %s failed", self.agent, name)
            return ToolCallRecord(name, arguments, f"error: {type(exc).__name__}: {exc}", error=True)
        return ToolCallRecord(name, arguments, _render_result(result))

    async def _chat(self, request: ModelRequest, turn: AgentTurn) -> ModelReply:
        """One model call; a conversation too long for the model is trimmed and sent again."""
        messages = request.messages
        while True:
            try:
                reply = await self.client.chat(model=request.model, messages=messages, tools=request.tools or None,
                                               task_id=request.task_id, project_id=request.project_id)
            except GatewayError as exc:
                trimmed = trim_messages(messages, shrink_ratio(exc.detail)) if exc.context_overflow else None
                if trimmed is None or turn.trims >= self.max_trims:
                    raise
                turn.trims += 1
                log.info("agent %s: the conversation is too long for the model (%s); trimmed it (%d)",
                         self.agent, exc.detail[:200], turn.trims)
                messages = trimmed
                continue
            turn.messages = messages
            return reply

    def _calls(self, reply: ModelReply, step: int, turn: AgentTurn) -> tuple[list[dict[str, Any]], str]:
        """The reply's tool calls (native, or written as text) and its text fit for humans."""
        if reply.tool_calls:
            return reply.tool_calls, visible_text(reply.content or "")
        calls, text = extract_calls(reply.content or "")
        for index, call in enumerate(calls):
            call["id"] = f"call_text_{step}_{index}"
        turn.text_calls += len(calls)
        return calls, visible_text(text)

    def _end(self, turn: AgentTurn, outcome: Outcome, guard: TurnGuard, error: GatewayError | None = None) -> AgentTurn:
        turn.outcome = outcome
        turn.error = error
        detail = visible_text(error.detail) if error is not None else ""
        turn.account = account(outcome, steps=turn.steps, records=turn.tool_calls, guard=guard, detail=detail,
                               trims=turn.trims)
        if outcome != "done":
            log.info("agent %s: turn ended (%s): %s", self.agent, outcome, turn.account)
        return turn

    async def run(self, messages: list[dict[str, Any]], *, model: str, task_id: str | None = None,
                  project_id: str | None = None) -> AgentTurn:
        turn = AgentTurn(final_text="", messages=list(messages))
        guard = TurnGuard(max_repeats=self.max_repeats, max_invalid_steps=self.max_invalid_steps)
        schemas = [tool.openai_schema() for tool in self.tools.values()]
        for step in range(1, self.max_steps + 1):
            request = ModelRequest(agent=self.agent, model=model, messages=turn.messages, tools=schemas,
                                   task_id=task_id, project_id=project_id)
            if self.before_call is not None:
                await self.before_call(request)
            try:
                reply = await self._chat(request, turn)
            except GatewayError as exc:
                outcome: Outcome = "budget" if exc.budget else "context" if exc.context_overflow else "model_error"
                return self._end(turn, outcome, guard, exc)
            turn.steps = step
            turn.prompt_tokens += reply.prompt_tokens
            turn.completion_tokens += reply.completion_tokens
            if step == 1:
                turn.first_prompt_tokens = reply.prompt_tokens
            calls, text = self._calls(reply, step, turn)
            turn.final_text = text
            if not calls and not text.strip():
                # An empty reply (no text, no tool call): asked once to answer, then the turn ends
                # with an account instead of silence.
                turn.empty_replies += 1
                if turn.empty_replies > self.max_empty:
                    return self._end(turn, "empty", guard)
                turn.messages.append({"role": "user", "content": EMPTY_NUDGE})
                continue
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            turn.messages.append(message)
            if not calls:
                return self._end(turn, "done", guard)
            records: list[ToolCallRecord] = []
            stop = False
            for call in calls:
                name, arguments, problem = self._parse(call)
                if stop:  # every call gets its result message, even the ones not run
                    record = ToolCallRecord(name, arguments, "error: not run — the turn was stopped", error=True,
                                            repeat=True)
                elif problem is not None:
                    record = ToolCallRecord(name, arguments, problem, error=True, invalid=True)
                else:
                    verdict = guard.verdict(name, arguments)
                    stop = verdict == "stop"
                    if verdict == "run":
                        record = await self._run_tool(name, arguments)
                        guard.ran(name, arguments, record.result)
                    else:
                        record = ToolCallRecord(name, arguments, guard.nudge(name, arguments) if not stop
                                                else "error: not run — the turn was stopped", error=True, repeat=True)
                records.append(record)
                turn.messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "name": record.name,
                                      "content": record.result})
            turn.tool_calls += records
            if stop:
                return self._end(turn, "repeated_call", guard)
            if guard.step(records):
                return self._end(turn, "invalid_calls", guard)
        return self._end(turn, "step_limit", guard)
