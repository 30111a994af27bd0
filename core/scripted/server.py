"""The scripted model server: an OpenAI-compatible HTTP server that replays a scenario.

Routes:

``POST /v1/chat/completions``
    Non-streaming and SSE streaming replies with text and/or tool calls and ``usage``
    (streams end with a usage chunk when ``stream_options.include_usage`` is set).
``GET /v1/models``
    The scenario's ``models``.
``GET /_scripted/stats`` / ``GET /_scripted/requests`` / ``POST /_scripted/reset``
    Test hooks: hit counts and progress per agent, the recent requests (never headers or
    keys), and a reset of every agent's progress.
``GET /healthz``
    ``{"ok": true}``.

It never imports litellm: it is a stand-in for a model *provider*, not for the gateway.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hiclaw.scripted.engine import ScenarioError, ScriptedReply, ScriptEngine, content_text, latest_input
from hiclaw.scripted.scenario import Scenario

#: How much of each message's text a recorded request keeps (``recent``, ``GET /_scripted/requests``).
KEPT_MESSAGE_CHARS = 20_000

CONSUMER_HEADER = "X-Hiclaw-Consumer"
_PIECE = 16  # characters per streamed content/argument piece


def error_body(message: str, *, code: str | None, kind: str = "invalid_request_error",
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error document: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, *, code: str | None, kind: str = "invalid_request_error",
                   param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(message, code=code, kind=kind, param=param), status=status, headers=headers)



def _pieces(text: str, size: int = _PIECE) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _usage(reply: ScriptedReply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def completion_body(reply: ScriptedReply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.refusal is not None:
        message["refusal"] = reply.refusal
    if reply.tool_calls:
        message["tool_calls"] = reply.tool_calls
    return {
        "id": f"chatcmpl-scripted-{reply.agent}-{reply.call}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": _usage(reply),
    }


def stream_chunks(reply: ScriptedReply, model: str, *, include_usage: bool, piece: int = _PIECE) -> list[dict[str, Any]]:
    """The chunk objects of a streamed reply, in order (without the final ``[DONE]``);
    content and arguments are cut into ``piece``-character deltas."""
    base = {"id": f"chatcmpl-scripted-{reply.agent}-{reply.call}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    if reply.text:
        chunks.extend(chunk({"content": part}) for part in _pieces(reply.text, piece))
    if reply.refusal:
        chunks.extend(chunk({"refusal": part}) for part in _pieces(reply.refusal, piece))
    for index, call in enumerate(reply.tool_calls):
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        chunks.append(chunk({"tool_calls": [head]}))
        chunks.extend(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
                      for part in _pieces(call["function"]["arguments"], piece))
    chunks.append(chunk({}, reply.finish_reason))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(reply)})
    return chunks


def sse_event(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class ChatRequest:
    """A parsed ``POST /v1/chat/completions``: the body, who is calling, and how to answer."""

    body: dict[str, Any]
    agent: str | None  # the `user` field, else the X-Hiclaw-Consumer header
    model: str

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))


def scenario_error_response(exc: ScenarioError) -> web.Response:
    """The scenario cannot answer: 400 for an agent it has no script for, else 500."""
    return error_response(400 if exc.code == "unknown_agent" else 500, str(exc), code=exc.code, kind="scenario_error")


class LoopbackModelServer:
    """What every test provider shares: an aiohttp app on ``host:port`` (port 0 picks a free one,
    set on :meth:`start`), an optional API key, and the OpenAI error for a wrong one."""

    #: Who a wrong key's error names.
    kind = "model server"

    def __init__(self, *, host: str, port: int, api_key: str | None) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to put in a model alias's ``api_base``."""
        return f"{self.url}/v1"

    #: The server's own routes are ``/_<prefix>/stats`` and ``/_<prefix>/requests``.
    prefix = "model"

    def app(self) -> web.Application:
        """The OpenAI routes, ``/healthz``, the stats and requests routes, then :meth:`add_routes`."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get(f"/_{self.prefix}/stats", self._stats)
        app.router.add_get(f"/_{self.prefix}/requests", self._requests)
        app.router.add_get("/healthz", self._health)
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application) -> None:
        """More routes of a subclass."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def _models(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def _stats(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def _requests(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def prepare(self) -> None:
        """Before listening (a model to load, say)."""

    async def start(self) -> None:
        if self._runner is not None:
            return
        await self.prepare()
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """A chat request's JSON body, with its ``messages`` list — or the OpenAI-shaped error for a
        wrong key, a body that is not JSON or a body without messages."""
        if (refused := self.refused(request)) is not None:
            return refused
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "request body is not valid JSON", code="invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error_response(400, "`messages` must be a list", code="missing_field", param="messages")
        return body

    def refused(self, request: web.Request) -> web.Response | None:
        """401 unless the request carries the key (when there is one)."""
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_response(401, f"Incorrect API key provided to the {self.kind}.",
                                  code="invalid_api_key", kind="authentication_error")
        return None


class ScriptedModelServer(LoopbackModelServer):
    """Serve ``scenario`` on ``host:port`` (port 0 picks a free one; see :attr:`url`)."""

    kind = "scripted model server"
    prefix = "scripted"

    def __init__(self, scenario: Scenario, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, keep_requests: int = 500) -> None:
        super().__init__(host=host, port=port, api_key=api_key)
        self.engine = ScriptEngine(scenario)
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep_requests)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/_scripted/reset", self._reset)

    # ------------------------------------------------------------------ routes

    async def read_chat(self, request: web.Request) -> ChatRequest | web.Response:
        """Check the key and parse the body; an error response when either fails."""
        body = await self.read_body(request)
        if isinstance(body, web.Response):
            return body
        agent = body.get("user") or request.headers.get(CONSUMER_HEADER) or None
        return ChatRequest(body, agent, str(body.get("model", "scripted")))

    def remember(self, chat: ChatRequest, reply: ScriptedReply, **extra: Any) -> None:
        """Add the request to :attr:`recent` (never headers or keys): besides the latest input, every
        message's role and text (each cut at :data:`KEPT_MESSAGE_CHARS`) and the prompt's tokens."""
        latest = latest_input(chat.body["messages"])
        messages = [{"role": str(m.get("role")), "content": content_text(m.get("content"))[:KEPT_MESSAGE_CHARS]}
                    for m in chat.body["messages"] if isinstance(m, dict)]
        self.recent.append({
            "agent": reply.agent, "call": reply.call, "source": reply.source, "model": chat.model,
            "stream": chat.stream, "latest_input": latest.text[:500], "latest_role": latest.role,
            "messages": messages, "prompt_tokens": reply.prompt_tokens,
            "tools": [t.get("function", {}).get("name") for t in chat.body.get("tools") or [] if isinstance(t, dict)],
            "error": reply.error.status if reply.error else None, **extra,
        })

    async def send_reply(self, request: web.Request, chat: ChatRequest, reply: ScriptedReply, *,
                         piece: int = _PIECE) -> web.StreamResponse:
        """Answer with ``reply``: one JSON completion, or SSE chunks when the request streams."""
        if not chat.stream:
            return web.json_response(completion_body(reply, chat.model))
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        for chunk in stream_chunks(reply, chat.model, include_usage=chat.include_usage, piece=piece):
            await response.write(sse_event(chunk))
        await response.write(SSE_DONE)
        await response.write_eof()
        return response

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        chat = await self.read_chat(request)
        if isinstance(chat, web.Response):
            return chat
        try:
            reply = self.engine.reply(chat.body, agent=chat.agent)
        except ScenarioError as exc:
            return scenario_error_response(exc)
        self.remember(chat, reply)
        if reply.delay_ms:
            await asyncio.sleep(reply.delay_ms / 1000)  # simulated model latency, part of the script
        if reply.error is not None:
            error = reply.error
            return error_response(error.status, error.message, code=error.code or "scripted_error",
                                  kind=error.type or "server_error", headers={k: str(v) for k, v in error.headers.items()})
        return await self.send_reply(request, chat, reply)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "scripted"} for m in self.engine.scenario.models]
        return web.json_response({"object": "list", "data": data})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.stats())

    async def _requests(self, request: web.Request) -> web.Response:
        agent = request.query.get("agent")
        items = [r for r in self.recent if agent is None or r["agent"] == agent]
        return web.json_response({"requests": items})

    def reset(self) -> None:
        """Forget every agent's progress and the recent requests."""
        self.engine.reset()
        self.recent.clear()

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

