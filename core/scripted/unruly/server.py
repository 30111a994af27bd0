"""The unruly model server: the scripted model server, misbehaving on purpose.

Every call is first answered by the base scenario (as the scripted server would); then the
:class:`~hiclaw.scripted.unruly.engine.UnrulyEngine` decides whether this call misbehaves, and
the server sends the misbehaviour instead. When it does, the base scenario's progress for that
agent is rolled back — the step the model skipped is offered again on its next clean call — except
for *tools as text*, where a client that parses the text still gets the step done.

Routes: those of :class:`~hiclaw.scripted.server.ScriptedModelServer` (``/_scripted/stats``
counts only the calls the base scenario answered), and

``GET /_unruly/log?agent=NAME``
    ``{"calls": [...]}``: every call with the misbehaviour applied (``kind`` null when clean).
``GET /_unruly/stats``
    Calls, misbehaviours by kind, and the longest bad streak, per agent.
``POST /_unruly/reset``
    Forget the log and every agent's progress (base scenario included).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from hiclaw.scripted.engine import ScenarioError, latest_input, prompt_tokens_of
from hiclaw.scripted.scenario import Scenario, parse_scenario
from hiclaw.scripted.server import (
    SSE_DONE,
    SSE_HEADERS,
    ChatRequest,
    ScriptedModelServer,
    completion_body,
    error_response,
    scenario_error_response,
    sse_event,
    stream_chunks,
)
from hiclaw.scripted.unruly.config import UnrulyConfig, base_scenario
from hiclaw.scripted.unruly.engine import UnrulyEngine, make
from hiclaw.scripted.unruly.kinds import CallContext, Outcome

#: The base when neither the config nor the caller names a scenario: every agent says "ok".
DEFAULT_BASE: dict[str, Any] = {"name": "ok", "agents": {"*": {"default": {"text": "ok ({{agent}} #{{call}})"}}}}


def _drop(request: web.Request) -> None:
    """Close the connection at once, without a (complete) response."""
    if request.transport is not None:  # None: the client has gone already
        request.transport.abort()


class UnrulyModelServer(ScriptedModelServer):
    """Serve ``scenario`` (default: the config's, else :data:`DEFAULT_BASE`), misbehaving per ``config``.

    ``seed`` overrides the config's. :attr:`unruly` holds the decisions: ``unruly.log(agent)``,
    ``unruly.stats()``; :attr:`engine` is the base scenario's engine, as on the scripted server."""

    def __init__(self, config: UnrulyConfig, scenario: Scenario | None = None, *, seed: int | None = None,
                 host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, keep_requests: int = 500) -> None:
        base = scenario if scenario is not None else base_scenario(config)
        if base is None:
            base = parse_scenario(DEFAULT_BASE)
        super().__init__(base, host=host, port=port, api_key=api_key, keep_requests=keep_requests)
        self.config = config
        self.unruly = UnrulyEngine(config, seed=seed)
        self._closing: asyncio.Event | None = None

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get("/_unruly/log", self._log)
        app.router.add_get("/_unruly/stats", self._unruly_stats)
        app.router.add_post("/_unruly/reset", self._unruly_reset)

    def reset(self) -> None:
        super().reset()
        self.unruly.reset()

    def stats(self) -> dict[str, Any]:
        """Every call, misbehaviours by kind, per agent (see :meth:`UnrulyEngine.stats`)."""
        return self.unruly.stats()

    def log(self, agent: str | None = None) -> list[dict[str, Any]]:
        return self.unruly.log(agent)

    async def start(self) -> None:
        self._closing = asyncio.Event()
        await super().start()

    async def stop(self) -> None:
        if self._closing is not None:
            self._closing.set()  # hung and stalled calls give up now, so the runner's cleanup is quick
        await super().stop()

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        chat = await self.read_chat(request)
        if isinstance(chat, web.Response):
            return chat
        name = chat.agent or "*"
        saved = copy.deepcopy(self.engine.states.get(name)), self.engine.requests
        try:
            base = self.engine.reply(chat.body, agent=chat.agent)
        except ScenarioError as exc:
            return scenario_error_response(exc)
        number, rng = self.unruly.begin(name)
        ctx = CallContext(name, number, chat.body, chat.model, base, latest_input(chat.body["messages"]),
                          prompt_tokens_of(chat.body), rng)
        decision = self.unruly.decide(ctx)
        outcome = None
        if decision.spec is not None:
            outcome = make(decision.spec, ctx)
            if outcome.reply is not None:
                outcome.reply = replace(outcome.reply, call=number)
            if not outcome.keeps_base:  # the model did not do this step: offer it again next time
                state, requests = saved
                if state is None:
                    self.engine.states.pop(name, None)
                else:
                    self.engine.states[name] = state
                self.engine.requests = requests
        self.unruly.record(ctx, decision, outcome, stream=chat.stream)
        self.remember(chat, base, unruly=outcome.kind if outcome else None, unruly_call=number)
        if outcome is None:
            if base.delay_ms:
                await asyncio.sleep(base.delay_ms / 1000)  # simulated model latency, part of the script
            if base.error is not None:
                return error_response(base.error.status, base.error.message, code="scripted_error", kind="server_error")
            # Its own completion id: after a roll-back the base's call number comes again.
            return await self.send_reply(request, chat, replace(base, call=number))
        return await self._misbehave(request, chat, outcome)

    async def _misbehave(self, request: web.Request, chat: ChatRequest, outcome: Outcome) -> web.StreamResponse:
        if outcome.transport is not None:
            return await self._transport(request, chat, outcome)
        if outcome.reply is None:
            assert outcome.status is not None
            return web.Response(status=outcome.status, body=outcome.body, content_type=outcome.content_type,
                                headers=outcome.headers)
        if outcome.reply.delay_ms:
            await asyncio.sleep(outcome.reply.delay_ms / 1000)  # the base turn's latency, misbehaving or not
        return await self.send_reply(request, chat, outcome.reply, piece=outcome.piece)

    async def _wait(self, seconds: float) -> bool:
        """Hold on for ``seconds``; False if the server is stopping first."""
        assert self._closing is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)  # a deadline or the stop, whichever is first
        return not self._closing.is_set()

    async def _transport(self, request: web.Request, chat: ChatRequest, outcome: Outcome) -> web.StreamResponse:
        reply = outcome.reply
        assert reply is not None
        if outcome.transport == "close":
            _drop(request)
            return web.Response()  # never sent: the connection is gone
        if outcome.transport == "hang":
            if await self._wait(outcome.seconds):
                return await self.send_reply(request, chat, reply)  # far too late for any sensible client
            _drop(request)
            return web.Response()
        # stall / cut: the reply starts, then stops half-way (and the connection stays open or drops)
        if chat.stream:
            response = web.StreamResponse(headers=SSE_HEADERS)
            chunks = [sse_event(c) for c in stream_chunks(reply, chat.model, include_usage=chat.include_usage)]
            chunks.append(SSE_DONE)
        else:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            whole = json.dumps(completion_body(reply, chat.model), ensure_ascii=False).encode()
            response.content_length = len(whole)
            chunks = [whole[: len(whole) // 2], whole[len(whole) // 2:]]
        await response.prepare(request)
        for chunk in chunks[: max(1, len(chunks) // 2)]:
            await response.write(chunk)
        if outcome.transport == "stall":
            await self._wait(outcome.seconds)
        _drop(request)
        return response

    # ------------------------------------------------------------------ test hooks

    async def _log(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.unruly.log(request.query.get("agent"))})

    async def _unruly_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.unruly.stats())

    async def _unruly_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})
