"""The bounded tool-calling loop."""
from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hiclaw.agent.client import GatewayClient, ModelReply
from hiclaw.errors import HiclawError
from hiclaw.models import ModelRequest, ToolSpec

log = logging.getLogger(__name__)

#: Tool results longer than this are cut (the agent can read files by path instead).
MAX_TOOL_RESULT_CHARS = 8000

BeforeCall = Callable[[ModelRequest], Awaitable[None]]


@dataclass
class ToolCallRecord:
    name: str
    arguments: dict[str, Any]
    result: str
    error: bool = False


@dataclass
class AgentTurn:
    """What one woken turn did."""

    final_text: str
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_prompt_tokens: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # hit the step limit


def _render_result(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_TOOL_RESULT_CHARS:
        text = text[:MAX_TOOL_RESULT_CHARS] + f"\n… [cut: {len(text) - MAX_TOOL_RESULT_CHARS} more characters]"
    return text


class AgentLoop:
    """Runs model → tools → model … until the model answers without tool calls."""

    def __init__(self, client: GatewayClient, tools: Sequence[ToolSpec], *, agent: str, max_steps: int = 16,
                 before_call: BeforeCall | None = None) -> None:
        self.client = client
        self.tools = {tool.name: tool for tool in tools}
        self.agent = agent
        self.max_steps = max_steps
        self.before_call = before_call

    async def _call_tool(self, call: dict[str, Any]) -> ToolCallRecord:
        function = call.get("function") or {}
        name = str(function.get("name", ""))
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else dict(raw)
            if not isinstance(arguments, dict):
                raise ValueError("arguments must be a JSON object")
        except (ValueError, TypeError) as exc:
            return ToolCallRecord(name, {}, f"error: invalid JSON arguments for {name}: {exc}", error=True)
        tool = self.tools.get(name)
        if tool is None:
            available = ", ".join(sorted(self.tools)) or "none"
            return ToolCallRecord(name, arguments, f"error: no tool named {name!r} (available: {available})", error=True)
        try:
            result = await tool.handler(arguments)
        except HiclawError as exc:
            return ToolCallRecord(name, arguments, f"error: {exc}", error=True)
        except Exception as exc:
            log.exception("agent %s: tool %s failed", self.agent, name)
            return ToolCallRecord(name, arguments, f"error: {type(exc).__name__}: {exc}", error=True)
        return ToolCallRecord(name, arguments, _render_result(result))

    async def run(self, messages: list[dict[str, Any]], *, model: str, task_id: str | None = None,
                  project_id: str | None = None) -> AgentTurn:
        turn = AgentTurn(final_text="", messages=list(messages))
        schemas = [tool.openai_schema() for tool in self.tools.values()]
        for step in range(1, self.max_steps + 1):
            request = ModelRequest(agent=self.agent, model=model, messages=turn.messages, tools=schemas,
                                   task_id=task_id, project_id=project_id)
            if self.before_call is not None:
                await self.before_call(request)
            reply: ModelReply = await self.client.chat(model=request.model, messages=request.messages,
                                                       tools=request.tools or None, task_id=request.task_id,
                                                       project_id=request.project_id)
            turn.messages = request.messages
            turn.steps = step
            turn.prompt_tokens += reply.prompt_tokens
            turn.completion_tokens += reply.completion_tokens
            if step == 1:
                turn.first_prompt_tokens = reply.prompt_tokens
            turn.messages.append(reply.assistant_message())
            if not reply.tool_calls:
                turn.final_text = (reply.content or "").strip()
                return turn
            for call in reply.tool_calls:
                record = await self._call_tool(call)
                turn.tool_calls.append(record)
                turn.messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "name": record.name,
                                      "content": record.result})
        turn.stopped = True
        turn.final_text = (turn.messages[-1].get("content") if turn.messages[-1].get("role") == "assistant" else "") or ""
        turn.final_text = (turn.final_text + f"\n\n(stopped after {self.max_steps} steps)").strip()
        return turn
