"""The real small model's server, around a stand-in for llama.cpp (the real model: tests/test_soak_small_model.py).

What the server itself owns: the ChatML + Hermes-tools prompt, OpenAI's reply and error shapes,
one generation at a time, and the context window."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from hiclaw.scripted.realmodel import MODEL_ID, SmallModel, SmallModelServer, render_prompt

TOOLS = [{"type": "function", "function": {"name": "report_result", "description": "Report the task's result.",
                                           "parameters": {"type": "object", "properties": {"task_id": {"type": "string"}},
                                                          "required": ["task_id"]}}}]
CALL_TEXT = 'Sure.\n<tool_call>\n{"name": "report_result", "arguments": {"task_id": "task-001"}}\n</tool_call>'


class FakeLlama:
    """tokenize(): a token per 4 bytes; create_completion(): a fixed text, taking ``delay`` seconds."""

    def __init__(self, text: str = CALL_TEXT, delay: float = 0.0) -> None:
        self.text, self.delay = text, delay
        self.prompts: list[str] = []
        self.kwargs: list[dict[str, Any]] = []
        self.active = 0
        self.most_active = 0
        self._guard = threading.Lock()

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return [0] * (len(data) // 4)

    def create_completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        with self._guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.delay)
        with self._guard:
            self.active -= 1
        self.prompts.append(prompt)
        self.kwargs.append(kwargs)
        return {"choices": [{"text": self.text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(self.text) // 4}}


async def serve(llama: FakeLlama, n_ctx: int = 4096, **options: Any) -> SmallModelServer:
    server = SmallModelServer(SmallModel(llama, n_ctx), **options)
    await server.start()
    return server


async def post(server: SmallModelServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{server.base_url}/chat/completions", json=body, headers=headers)


def test_prompt_is_chatml_with_hermes_tools() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are sam."},
        {"role": "user", "content": [{"type": "text", "text": "Do task-001."}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "spec.md"}'}},
            {"id": "c2", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "the spec"},
        {"role": "tool", "tool_call_id": "c2", "content": "a.md"},
    ]
    prompt = render_prompt(messages, TOOLS)
    # The tools first (the state after them is reused across turns), then the agent's system text.
    assert prompt.startswith("<|im_start|>system\n# Tools")
    assert "</tool_call>\n\nYou are sam.<|im_end|>" in prompt
    assert json.dumps(TOOLS[0]) in prompt and "<tool_call></tool_call> XML tags" in prompt
    assert "<|im_start|>user\nDo task-001.<|im_end|>" in prompt
    assert '<tool_call>\n{"name": "read_file", "arguments": {"path": "spec.md"}}\n</tool_call>' in prompt
    # Consecutive tool results are one user turn, each in its <tool_response>.
    assert ("<|im_start|>user\n<tool_response>\nthe spec\n</tool_response>\n<tool_response>\na.md\n"
            "</tool_response><|im_end|>") in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "# Tools" not in render_prompt(messages[:2])


async def test_text_reply_keeps_tool_markup_and_reports_usage() -> None:
    llama = FakeLlama()
    server = await serve(llama, seed=5, temperature=0.1, max_tokens=64)
    try:
        response = await post(server, {"model": "anything", "user": "sam", "messages": [{"role": "user", "content": "hi"}],
                                       "tools": TOOLS})
        assert response.status_code == 200
        data = response.json()
        assert data["model"] == MODEL_ID
        choice = data["choices"][0]
        assert choice["message"]["content"] == CALL_TEXT and "tool_calls" not in choice["message"]
        assert data["usage"]["prompt_tokens"] == len(llama.prompts[0]) // 4
        assert llama.kwargs[0]["max_tokens"] == 64 and llama.kwargs[0]["seed"] == 5
        assert llama.kwargs[0]["temperature"] == 0.1
        stats = server.stats()
        assert stats["agents"]["sam"]["calls"] == 1 and stats["agents"]["sam"]["tool_call_texts"] == 1
        assert server.requests("sam")[0]["body"]["messages"][0]["content"] == "hi"
        # The request's own settings win.
        await post(server, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10, "temperature": 0.9,
                            "seed": 3})
        assert llama.kwargs[1]["max_tokens"] == 10 and llama.kwargs[1]["seed"] == 3
        assert llama.kwargs[1]["temperature"] == 0.9
    finally:
        await server.stop()


async def test_parse_tools_and_streaming() -> None:
    server = await serve(FakeLlama(), parse_tools=True)
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "user": "sam"}
        message = (await post(server, body)).json()["choices"][0]
        assert message["finish_reason"] == "tool_calls"
        call = message["message"]["tool_calls"][0]
        assert call["function"]["name"] == "report_result" and json.loads(call["function"]["arguments"]) == {
            "task_id": "task-001"}
        assert message["message"]["content"] == "Sure."
        streamed = await post(server, {**body, "stream": True, "stream_options": {"include_usage": True}})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        names = [tc["function"].get("name") for c in chunks for ch in c["choices"]
                 for tc in ch["delta"].get("tool_calls") or []]
        assert "report_result" in names
    finally:
        await server.stop()


async def test_context_window_errors_look_like_openai() -> None:
    server = await serve(FakeLlama(), n_ctx=300)
    try:
        long = {"messages": [{"role": "user", "content": "x" * 2000}]}
        response = await post(server, long)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert error["param"] == "messages"
        assert error["message"].startswith("This model's maximum context length is 300 tokens. However, your messages "
                                           "resulted in ")
        short = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 1000}
        response = await post(server, short)
        assert response.status_code == 400 and "in the completion" in response.json()["error"]["message"]
        # Without max_tokens the reply is cut to what fits.
        assert (await post(server, {"messages": short["messages"]})).status_code == 200
        assert server.stats()["agents"]["anonymous"]["errors"] == 2
    finally:
        await server.stop()


async def test_one_generation_at_a_time_and_the_key() -> None:
    llama = FakeLlama("ok", delay=0.3)
    server = await serve(llama, api_key="sk-test")
    try:
        assert (await post(server, {"messages": [{"role": "user", "content": "hi"}]})).status_code == 401
        auth = {"Authorization": "Bearer sk-test"}
        replies = await asyncio.gather(*(post(server, {"messages": [{"role": "user", "content": f"hi {i}"}]}, **auth)
                                         for i in range(3)))
        assert [r.status_code for r in replies] == [200, 200, 200]
        assert llama.most_active == 1
        assert [r["queued_s"] > 0.2 for r in server.requests()][1:] == [True, True]
        bad = await post(server, {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, **auth)
        assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]
        async with httpx.AsyncClient() as client:
            models = (await client.get(f"{server.base_url}/models")).json()
        assert models["data"][0]["id"] == MODEL_ID and models["data"][0]["context_length"] == 4096
    finally:
        await server.stop()


@pytest.mark.parametrize("body", [{"messages": []}, {"messages": "hi"}, {}])
async def test_bad_requests(body: dict[str, Any]) -> None:
    server = await serve(FakeLlama())
    try:
        assert (await post(server, body)).status_code == 400
    finally:
        await server.stop()
