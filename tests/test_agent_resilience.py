"""The model client and the agent loop against providers that misbehave, over real HTTP on loopback.

The scripted model server answers with the errors real providers send (a 429 with ``Retry-After``,
a spent quota, 5xx) and with tool calls written as text; a small "context window" server refuses
conversations longer than its window the way OpenAI, litellm and llama.cpp word it, and records
every request it is sent. The last tests go through the real embedded gateway, so the statuses and
headers the client handles are the ones the gateway forwards. Durations are measured with the
monotonic clock; nothing sleeps to synchronise.
"""
from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web

from hiclaw.agent import AgentLoop, GatewayClient
from hiclaw.agent.recovery import CUT_NOTE, is_context_overflow, retry_after_seconds
from hiclaw.agent.textcalls import extract_calls, visible_text
from hiclaw.models import ToolSpec
from hiclaw.scripted import parse_scenario
from hiclaw.scripted.engine import ScriptEngine
from hiclaw.scripted.server import ScriptedModelServer, completion_body
from hiclaw.testing.gateway import running_gateway, running_scripted_model
from hiclaw.worker.http import WorkerGatewayClient

SYSTEM = {"role": "system", "content": "You are sam, a careful worker. Report with report_result."}
ASK = {"role": "user", "content": "admin wrote to you:\n~~~~\n@sam what is double 21?\n~~~~"}


class Tools:
    """Real tool handlers that remember every call they got."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def specs(self, big: int = 0) -> list[ToolSpec]:
        async def double(args: dict[str, Any]) -> dict[str, Any]:
            self.ran.append(("double", args))
            return {"value": int(args["x"]) * 2}

        async def read_file(args: dict[str, Any]) -> str:
            self.ran.append(("read_file", args))
            return "x" * big if big else "line 1\nline 2"

        return [ToolSpec(name="double", description="twice x", handler=double),
                ToolSpec(name="read_file", description="a file's text", handler=read_file)]


@asynccontextmanager
async def scripted(agents: dict[str, Any]) -> AsyncIterator[ScriptedModelServer]:
    server = ScriptedModelServer(parse_scenario({"name": "resilience", "agents": agents}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


CLIENTS: dict[str, Callable[..., GatewayClient]] = {
    "httpx": lambda url, **kw: GatewayClient(url, "tok", **kw),
    "aiohttp": lambda url, **kw: WorkerGatewayClient(url, "tok", **kw),  # what a worker uses
}


async def run(client: GatewayClient, tools: list[ToolSpec], messages: list[dict[str, Any]] | None = None, **kwargs: Any):
    try:
        return await AgentLoop(client, tools, agent="sam", **kwargs).run(messages or [SYSTEM, ASK], model="smart")
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- rate limits and failures


@pytest.mark.parametrize("kind", sorted(CLIENTS))
async def test_a_429_is_retried_after_its_retry_after_then_succeeds(kind):
    agents = {"*": {"turns": [{"error": {"status": 429, "message": "Rate limit reached, slow down",
                                         "code": "rate_limit_exceeded", "headers": {"Retry-After": 1}}},
                              {"text": "42"}]}}
    async with scripted(agents) as server:
        started = time.monotonic()
        turn = await run(CLIENTS[kind](server.base_url), Tools().specs())
        elapsed = time.monotonic() - started
    assert (turn.outcome, turn.final_text, turn.reply) == ("done", "42", "42")
    assert server.engine.requests == 2 and 1.0 <= elapsed < 4.0


async def test_retry_after_as_an_http_date_and_in_milliseconds():
    now = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
    date = email.utils.format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=now) == 30
    assert retry_after_seconds({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert retry_after_seconds({}, "Rate limit reached. Please try again in 20s.") == 20
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    agents = {"*": {"turns": [{"error": {"status": 429, "message": "slow down", "headers": {
        "Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}}}, {"text": "ok"}]}}
    async with scripted(agents) as server:
        started = time.monotonic()
        turn = await run(GatewayClient(server.base_url, "tok"), Tools().specs())
        assert turn.final_text == "ok" and time.monotonic() - started >= 1.0  # the date is to the second


async def test_a_retry_after_beyond_the_bound_is_a_clear_error_at_once():
    agents = {"*": {"default": {"error": {"status": 429, "message": "slow down", "headers": {"Retry-After": 120}}}}}
    async with scripted(agents) as server:
        started = time.monotonic()
        turn = await run(GatewayClient(server.base_url, "tok", max_retry_wait=10), Tools().specs())
        assert time.monotonic() - started < 1.0 and server.engine.requests == 1
    assert turn.outcome == "model_error" and turn.failed and turn.error is not None and turn.error.status == 429
    assert turn.account == ("I could not finish this turn: the model call failed (slow down (asked to wait 120 s after "
                            "1 attempt; this client waits at most 10 s in all)).")


async def test_5xx_are_retried_with_back_off_then_reported():
    agents = {"*": {"turns": [{"error": {"status": 503, "message": "overloaded"}},
                              {"error": {"status": 500, "message": "boom"}}, {"text": "back"}]}}
    async with scripted(agents) as server:
        turn = await run(GatewayClient(server.base_url, "tok"), Tools().specs())
        assert turn.final_text == "back" and server.engine.requests == 3
    agents = {"*": {"default": {"error": {"status": 502, "message": "bad gateway"}}}}
    async with scripted(agents) as server:
        turn = await run(WorkerGatewayClient(server.base_url, "tok", retries=1), Tools().specs())
        assert server.engine.requests == 2
    assert turn.outcome == "model_error" and "bad gateway (gave up after 2 attempts in" in turn.account


async def test_a_spent_quota_is_not_retried_and_ends_the_turn_with_an_account():
    agents = {"*": {"default": {"error": {"status": 429, "code": "insufficient_quota", "type": "insufficient_quota",
                                          "message": "You exceeded your current quota, please check your plan.",
                                          "headers": {"Retry-After": 1}}}}}
    async with scripted(agents) as server:
        started = time.monotonic()
        turn = await run(GatewayClient(server.base_url, "tok"), Tools().specs())
        assert server.engine.requests == 1 and time.monotonic() - started < 1.0
    assert turn.outcome == "budget" and turn.failed
    assert turn.reply == ("I cannot go on: the model budget is used up (You exceeded your current quota, please check "
                          "your plan.).")


# --------------------------------------------------------------------------- context overflow


class Window:
    """A provider with a small context window: longer requests get the given error; it records all."""

    def __init__(self, limit: int, error: dict[str, Any], scenario: dict[str, Any]) -> None:
        self.limit = limit
        self.error = error
        self.engine = ScriptEngine(parse_scenario(scenario))
        self.bodies: list[dict[str, Any]] = []
        self.refused = 0

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if len(json.dumps(body["messages"], separators=(",", ":"))) > self.limit:
            self.refused += 1
            return web.json_response({"error": self.error}, status=400)
        return web.json_response(completion_body(self.engine.reply(body, agent=None), body["model"]))


@asynccontextmanager
async def window(limit: int, error: dict[str, Any], scenario: dict[str, Any]) -> AsyncIterator[tuple[Window, str]]:
    provider = Window(limit, error, scenario)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", provider.chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield provider, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


OVERFLOWS = {  # the shapes providers answer with (litellm's and llama.cpp's have no OpenAI code)
    "openai": {"message": "This model's maximum context length is 4096 tokens. However, your messages resulted in "
                          "9000 tokens. Please reduce the length of the messages.", "type": "invalid_request_error",
               "param": "messages", "code": "context_length_exceeded"},
    "litellm": {"message": "litellm.ContextWindowExceededError: AnthropicException - prompt is too long: 210000 tokens "
                           "> 200000 maximum", "type": None, "param": None, "code": "400"},
    "llama.cpp": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                  "type": "exceed_context_size_error"},
}
READ_THEN_ANSWER = {"agents": {"*": {"turns": [
    {"tool_calls": [{"name": "read_file", "arguments": {"path": "big.log"}}]},
    {"when": {"role": "tool"}, "tool_calls": [{"name": "double", "arguments": {"x": 21}}]},
    {"when": {"tool_result": "double"}, "text": "It is 42."}]}}}


@pytest.mark.parametrize("shape", sorted(OVERFLOWS))
async def test_context_overflow_is_recovered_by_trimming_old_tool_results(shape):
    tools = Tools()
    async with window(6000, OVERFLOWS[shape], READ_THEN_ANSWER) as (provider, url):
        turn = await run(GatewayClient(url, "tok"), tools.specs(big=7000))
    assert (turn.outcome, turn.final_text, turn.trims) == ("done", "It is 42.", 1)
    assert [name for name, _ in tools.ran] == ["read_file", "double"] and provider.refused == 1
    refused, retried, last = (body["messages"] for body in provider.bodies[1:])
    assert refused[-1]["content"] == "x" * 7000
    assert retried[:2] == [SYSTEM, ASK]  # the system prompt and the latest user message, intact
    kept = retried[-1]["content"]
    assert retried[-1]["name"] == "read_file" and kept.startswith("x" * 400)
    assert kept.endswith(CUT_NOTE.format(n=7000 - kept.index("\n"))) and len(kept) < 2200
    assert last[:4] == retried and last[-1] == {"role": "tool", "tool_call_id": "call_*_2_0", "name": "double",
                                                "content": '{"value": 42}'}  # the turn goes on with the cut one


async def test_a_conversation_that_cannot_be_cut_enough_ends_with_an_account():
    history = [{"role": "user", "content": "earlier question " * 100}, {"role": "assistant", "content": "earlier answer"}]
    limit = len(json.dumps([SYSTEM, ASK], separators=(",", ":"))) - 10
    async with window(limit, OVERFLOWS["openai"], READ_THEN_ANSWER) as (provider, url):
        turn = await run(GatewayClient(url, "tok"), Tools().specs(), [SYSTEM, *history, ASK])
    assert turn.outcome == "context" and turn.failed and turn.trims == 1 and len(provider.bodies) == 2
    assert provider.bodies[1]["messages"] == [SYSTEM, ASK]  # the history went first
    assert turn.account.startswith("I could not finish this turn: the conversation is too long for the model, even "
                                   "after cutting older parts of it 1 time (This model's maximum context length is")
    assert is_context_overflow(400, None, "Error: Input is too long for requested model.")
    assert not is_context_overflow(400, "string_above_max_length", "Invalid 'user': string too long")


# --------------------------------------------------------------------------- loops, garbage, the step limit


async def test_three_identical_calls_stop_the_turn_early_with_an_account():
    tools = Tools()
    agents = {"*": {"default": {"text": "Let me check the file again.",
                                "tool_calls": [{"name": "read_file", "arguments": {"path": "notes.md"}}]}}}
    async with scripted(agents) as server:
        turn = await run(GatewayClient(server.base_url, "tok"), tools.specs(), max_steps=24)
        seen = [r["latest_input"] for r in server.recent]
    assert tools.ran == [("read_file", {"path": "notes.md"})] * 2 and len(seen) == 4
    assert "you already called read_file with exactly these arguments 2 times" in seen[3] and "line 1" in seen[3]
    assert turn.outcome == "repeated_call"
    assert turn.reply == ("I stopped after 4 steps without finishing: I kept calling read_file with the same arguments "
                          "(4 times), even after being told it would not change anything.")


async def test_the_step_limit_gives_a_readable_account():
    agents = {"*": {"default": {"tool_calls": [{"name": "double", "arguments": '{"x": {{call}}}'}]}}}
    async with scripted(agents) as server:
        turn = await run(GatewayClient(server.base_url, "tok"), Tools().specs(), max_steps=5)
        assert server.engine.requests == 5
    assert turn.outcome == "step_limit" and not turn.failed
    assert turn.reply == "I stopped after 5 steps without finishing: the last steps kept calling double."


TEXT_CALLS = {
    "hermes": 'I will compute it.\n<tool_call>\n{"name": "double", "arguments": {"x": 21}}\n</tool_call>\n'
              '<tool_call>\n{"name": "read_file", "arguments": "{\\"path\\": \\"a.md\\"}"}\n</tool_call>',
    "qwen-unclosed": '<tool_call>\n{"name": "double", "arguments": {"x": 21}}\n</tool_call>\n<tool_call>'
                     '{"name": "read_file", "arguments": {"path": "a.md"}}',
    "json-fence": 'Calling the tools:\n```json\n[{"name": "double", "arguments": {"x": 21}}, '
                  '{"name": "read_file", "parameters": {"path": "a.md"}}]\n```',
    "llama": '<function=double>{"x": 21}</function>\n<function=read_file>{"path": "a.md"}</function>',
}


@pytest.mark.parametrize("form", sorted(TEXT_CALLS))
async def test_tool_calls_written_as_text_are_run_and_never_shown(form):
    tools = Tools()
    agents = {"*": {"turns": [{"text": TEXT_CALLS[form]},
                              {"when": {"role": "tool", "tool_result": "double"},
                               "text": "<think>the tool said 42</think>The answer is 42.\n</tool_call>"}]}}
    async with scripted(agents) as server:
        turn = await run(GatewayClient(server.base_url, "tok"), tools.specs())
        second = server.recent[1]
    assert tools.ran == [("double", {"x": 21}), ("read_file", {"path": "a.md"})]
    assert second["latest_role"] == "tool" and second["latest_input"] == '{"value": 42}\nline 1\nline 2'
    assert (turn.outcome, turn.final_text, turn.text_calls) == ("done", "The answer is 42.", 2)
    assistant = turn.messages[2]  # what the model sees of its own step: real calls, no markup
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["double", "read_file"]
    assert "<" not in (assistant["content"] or "") and "{" not in (assistant["content"] or "")


async def test_unreadable_text_calls_go_back_to_the_model_as_errors():
    tools = Tools()
    agents = {"*": {"default": {"text": 'Sure! <tool_call>{"name": "double", "arguments": {"x": 21</tool_call>'}}}
    async with scripted(agents) as server:
        turn = await run(GatewayClient(server.base_url, "tok"), tools.specs(), max_invalid_steps=2)
        assert "invalid JSON arguments for double" in server.recent[1]["latest_input"]
    assert tools.ran == [] and turn.outcome == "invalid_calls"
    assert turn.reply == ("I stopped after 2 steps without finishing: my last 2 steps only produced tool calls that "
                          "could not be run (unreadable arguments for double).")
    assert visible_text("<|im_start|>assistant\nhi<|im_end|> [TOOL_CALLS]") == "assistant\nhi"
    assert visible_text("planning…</think>\n\nThe answer is 42.") == "The answer is 42."
    qwen3_coder = ("<tool_call>\n<function=write_file>\n<parameter=path>\na.md\n</parameter>\n<parameter=content>\n"
                   "two\nlines\n</parameter>\n</function>\n</tool_call>")
    assert extract_calls(qwen3_coder) == ([{"type": "function", "function": {
        "name": "write_file", "arguments": '{"path": "a.md", "content": "two\\nlines"}'}}], "")


async def test_an_empty_reply_is_asked_again_once_then_the_turn_ends_with_an_account():
    agents = {"*": {"turns": [{"text": ""}, {"text": "42"}, {"text": ""}, {"text": ""}, {"text": "never asked"}]}}
    async with scripted(agents) as server:
        client = GatewayClient(server.base_url, "tok")
        once = await AgentLoop(client, Tools().specs(), agent="sam").run([SYSTEM, ASK], model="smart")
        always = await AgentLoop(client, Tools().specs(), agent="sam").run([SYSTEM, ASK], model="smart")
        await client.aclose()
        asked = server.recent[1]["messages"]
        assert len(server.recent) == 4
    assert once.outcome == "done" and once.reply == "42" and asked[-1]["content"].startswith("Your last reply was empty")
    assert [m["role"] for m in asked] == ["system", "user", "user"]  # the empty reply is not sent back
    assert always.outcome == "empty" and always.steps == 2 and not always.failed
    assert always.reply == ("I stopped after 2 steps without finishing: my model gave an empty answer, also when "
                            "asked again — ask me once more, or rephrase.")


PLAN_SCHEMA = {"type": "object", "required": ["project_id", "tasks"], "properties": {
    "project_id": {"type": "string"},
    "tasks": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["id", "title"], "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "depends_on": {"type": "array", "items": {"type": "string"}},
        "model": {"type": ["string", "null"], "enum": ["smart", "cheap", None]}}}}}}


@pytest.mark.parametrize(("arguments", "problem"), [
    ({"tasks": [{"id": "t1", "title": "A"}]}, "project_id: required"),
    ({"project_id": "p", "tasks": '[{"id": "t1", "title": "A"}]'}, "tasks: must be array (not a JSON string holding it), got a string"),
    ({"project_id": "p", "tasks": [{"id": 1, "title": "A"}, {"title": "B"}]}, "tasks[0].id: must be string, got a number; tasks[1].id: required"),
    ({"project_id": "p", "tasks": []}, "tasks: needs at least 1 item(s)"),
    ({"project_id": "p", "tasks": [{"id": "t", "title": "A", "model": "huge", "depends_on": "t0"}]},
     "tasks[0].depends_on: must be array (not a JSON string holding it), got a string; tasks[0].model: must be one of"),
])
async def test_arguments_that_do_not_match_the_schema_never_reach_the_handler(arguments, problem):
    """Malformed arguments (the unruly model's ``wrong_types`` and ``missing_required``) get one line
    naming each problem, and the model calls again; the handler only ever sees valid ones."""
    ran: list[dict[str, Any]] = []

    async def propose_plan(args: dict[str, Any]) -> str:
        ran.append(args)
        return f"{len(args['tasks'])} tasks for {args['project_id'].upper()}"

    good = {"project_id": "p", "tasks": [{"id": "t1", "title": "A", "extra": "ignored"}]}
    agents = {"*": {"turns": [{"tool_calls": [{"name": "propose_plan", "arguments": arguments}]},
                              {"tool_calls": [{"name": "propose_plan", "arguments": good}]}, {"text": "planned"}]}}
    tool = ToolSpec(name="propose_plan", description="a plan", parameters=PLAN_SCHEMA, handler=propose_plan)
    async with scripted(agents) as server:
        turn = await run(GatewayClient(server.base_url, "tok"), [tool])
        told = server.recent[1]["messages"][-1]["content"]
    assert told.startswith("error: invalid arguments for propose_plan: ") and problem in told, told
    assert ran == [good] and turn.outcome == "done" and turn.reply == "planned"


# --------------------------------------------------------------------------- through the real embedded gateway

GATEWAY_SCENARIO = {
    "name": "resilience-gateway",
    "models": ["scripted-smart", "scripted-fast", "scripted-cheap"],
    "agents": {
        "limited": {"turns": [{"error": {"status": 429, "message": "Rate limit reached", "headers": {"Retry-After": 2}}},
                              {"error": {"status": 429, "message": "Rate limit reached", "headers": {"Retry-After": 2}}},
                              {"text": "through"}]},
        "overflowing": {"turns": [{"error": {"status": 400, "code": "context_length_exceeded", "message":
                                             OVERFLOWS["openai"]["message"]}}, {"text": "fits now"}]},
        "*": {"default": {"text": "ok"}},
    },
}


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "litellm"])
async def test_through_the_gateway_retry_after_and_context_errors_reach_the_client(direct, tmp_path):
    with running_scripted_model(GATEWAY_SCENARIO) as model, running_gateway(
            tmp_path, model.base_url, settings={"direct_openai": direct}) as gw:
        limited, overflowing, broke = gw.mint("limited"), gw.mint("overflowing"), gw.mint("broke", budget_usd=0.0)
        async with httpx.AsyncClient(timeout=30) as http:
            raw = await http.post(f"{gw.base_url}/chat/completions", headers=limited.headers,
                                  json={"model": "cheap", "messages": [ASK]})
        assert raw.status_code == 429 and raw.headers["retry-after"] == "2"
        assert raw.json()["error"]["code"] == "upstream_rate_limited"

        started = time.monotonic()
        turn = await AgentLoop(GatewayClient(gw.base_url, limited.token), Tools().specs(), agent="limited").run(
            [SYSTEM, ASK], model="cheap")
        assert turn.final_text == "through" and time.monotonic() - started >= 2.0 and model.hits("limited") == 3

        history = [{"role": "user", "content": "an older request " * 200}, {"role": "assistant", "content": "done"}]
        turn = await AgentLoop(GatewayClient(gw.base_url, overflowing.token), Tools().specs(), agent="overflowing").run(
            [SYSTEM, *history, ASK], model="cheap")
        assert (turn.outcome, turn.final_text, turn.trims) == ("done", "fits now", 1)
        assert [r["error"] for r in model.requests("overflowing")] == [400, None]

        turn = await AgentLoop(GatewayClient(gw.base_url, broke.token), Tools().specs(), agent="broke").run(
            [SYSTEM, ASK], model="cheap")
        assert turn.outcome == "budget" and model.hits("broke") == 0 and turn.error is not None
        assert turn.error.attempts == 1 and turn.error.code == "budget_exceeded"
        assert "budget exhausted for consumer 'broke'" in turn.reply and "hiclaw gateway budget set" in turn.reply
        errors = [row["error"] for row in gw.ledger() if row["consumer"] == "overflowing"]
        assert "context_length_exceeded" in errors
