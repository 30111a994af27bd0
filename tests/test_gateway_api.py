"""The embedded gateway over real HTTP: auth, routing, errors, streaming, tools, fallbacks, ledger.

The provider behind it is the scripted model server, which requires the canary key: every
successful answer proves the key reached the provider, and the last test proves it reached
nothing else (no response body or header, log line or ledger row of this module).
"""
from __future__ import annotations

import json
import logging
import sqlite3

import httpx
import openai
import pytest

from hiclaw.plugins.gateways.embedded.store import GatewayStore
from hiclaw.testing.gateway import running_gateway, running_scripted_model, scripted_aliases

CANARY = "sk-canary-7d1e0b9a4c2f4e8b9a1d3c5e7f9b2d4a"
SCENARIO = {
    "name": "gateway-tests",
    "models": ["scripted-smart", "scripted-fast", "scripted-cheap"],
    "agents": {
        "toolbox": {"default": {"text": "calling", "tool_calls": [
            {"name": "read_file", "arguments": {"path": "notes.md"}}]}},
        "failover": {"rules": [{"when": {"model": "scripted-smart"}, "error": {"status": 503, "message": "overloaded"}}],
                     "default": {"text": "answered by {{model}}"}},
        "broken": {"default": {"error": {"status": 500, "message": "boom"}}},
        "rejected": {"default": {"error": {"status": 400, "message": "temperature must be <= 2"}}},
        "slowpoke": {"default": {"text": "late", "delay_ms": 1000}},
        "*": {"default": {"text": "echo {{agent}}: {{input}}"}},
    },
}


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def seen():
    """Every response body and header, and every log line, of this module."""
    capture = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    responses: list[str] = []
    yield {"responses": responses, "logs": capture.lines}
    root.removeHandler(capture)
    root.setLevel(old_level)


@pytest.fixture(scope="module")
def env(tmp_path_factory, seen):
    with running_scripted_model(SCENARIO, api_key=CANARY) as model:
        models = scripted_aliases(model.base_url)
        models["wrongkey"] = {"model": "openai/scripted-cheap", "api_base": model.base_url, "api_key_secret": "wrong_key"}
        models["nowhere"] = {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1", "api_key_secret": "scripted_api_key"}
        secrets = {"scripted_api_key": CANARY, "wrong_key": "sk-not-the-right-one-123456"}
        settings = {"upstream_timeout_seconds": 0.4, "retries": 1, "max_body_bytes": 64 * 1024}
        with running_gateway(tmp_path_factory.mktemp("home"), models=models, secrets_values=secrets,
                             settings=settings) as gw:
            yield gw, model


@pytest.fixture
def http(seen):
    def record(response: httpx.Response) -> None:
        response.read()
        seen["responses"].append(f"{response.status_code} {dict(response.headers)} {response.text}")

    with httpx.Client(timeout=30, event_hooks={"response": [record]}) as client:
        yield client


def _sdk(http, base_url, token):
    return openai.OpenAI(base_url=base_url, api_key=token, http_client=http, max_retries=0)


def _chat(http, gw, token, model="smart", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": extra.pop("content", "hello")}], **extra}
    headers = {"Authorization": f"Bearer {token}", **extra.pop("headers", {})} if token else extra.pop("headers", {})
    return http.post(f"{gw.base_url}/chat/completions", json=body, headers=headers)


def test_sdk_non_streaming_with_tools_reports_usage_and_ledger(env, http):
    gw, model = env
    me = gw.mint("toolbox")
    client = _sdk(http, gw.base_url, me.token)
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    reply = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "read my notes"}], tools=tools,
        extra_headers={"X-Hiclaw-Task": "task-001", "X-Hiclaw-Project": "proj-a"})
    assert reply.headers["x-hiclaw-model"] == "smart"
    completion = reply.parse()
    call = completion.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("read_file", {"path": "notes.md"})
    (row,) = [r for r in gw.ledger() if r["consumer"] == "toolbox"]
    assert (row["task"], row["project"], row["model"], row["status"]) == ("task-001", "proj-a", "smart", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    expected = completion.usage.prompt_tokens * 3e-6 + completion.usage.completion_tokens * 15e-6
    assert row["cost_usd"] == pytest.approx(expected)
    # The provider saw the consumer's name (the gateway set `user`) and the provider model.
    assert model.requests("toolbox")[-1]["model"] == "scripted-smart"


def test_sdk_streaming_has_usage_in_the_final_chunk(env, http):
    gw, _model = env
    me = gw.mint()
    chunks = list(_sdk(http, gw.base_url, me.token).chat.completions.create(
        model="cheap", messages=[{"role": "user", "content": "stream please"}], stream=True,
        extra_headers={"X-Hiclaw-Task": "task-stream"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo {me.name}: stream please"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    usage = {(r["consumer"], r["task"]): r for r in gw.usage(by="consumer,task")}
    row = usage[(me.name, "task-stream")]
    assert (row["calls"], row["prompt_tokens"], row["completion_tokens"]) == (
        1, chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)
    assert row["cost_usd"] == pytest.approx(0.25e-6 * row["total_tokens"])


def test_models_lists_only_what_the_consumer_may_use(env, http):
    gw, _ = env
    me = gw.mint(models=["cheap", "fast"])
    listed = http.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {me.token}"}).json()
    assert [m["id"] for m in listed["data"]] == ["cheap", "fast"]
    assert http.get(f"{gw.base_url}/models").status_code == 401


def test_auth_errors_never_reach_the_provider(env, http):
    gw, model = env
    before = model.hits()
    missing = _chat(http, gw, None)
    unknown = _chat(http, gw, "hc-not-a-token")
    me = gw.mint()
    check = gw.thread.run(gw.gateway.check_token(me.name, me.token))  # what adoption after a crash asks
    assert check and not gw.thread.run(gw.gateway.check_token("someone-else", me.token))
    # Revoke through a second connection to the database, as `hiclaw gateway token revoke` does.
    other = GatewayStore(gw.db_path)
    other.revoke(me.name)
    other.close()
    revoked = _chat(http, gw, me.token)
    for response, code in ((missing, "missing_api_key"), (unknown, "invalid_api_key"), (revoked, "token_revoked")):
        assert response.status_code == 401 and response.json()["error"]["code"] == code
    assert model.hits() == before
    # Re-minting gives a new token; the old one stays dead.
    assert not gw.thread.run(gw.gateway.check_token(me.name, me.token))
    fresh = gw.mint(me.name)
    assert _chat(http, gw, fresh.token).status_code == 200
    assert _chat(http, gw, me.token).json()["error"]["code"] == "invalid_api_key"
    assert gw.thread.run(gw.gateway.check_token(me.name, fresh.token))
    assert not gw.thread.run(gw.gateway.check_token(me.name, me.token))


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"[]", 400, "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_field"),
    (b'{"model": "smart"}', 400, "missing_field"),
    (b'{"model": "smart", "messages": [{"content": "x"}]}', 400, "invalid_field"),
    (b'{"model": "smart", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "invalid_field"),
    (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
    (b'{"model": "smart", "messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}', 413, "request_too_large"),
])
def test_bad_requests_get_openai_errors(env, http, body, status, code):
    gw, model = env
    me = gw.mint()
    before = model.hits()
    response = http.post(f"{gw.base_url}/chat/completions", content=body,
                         headers={"Authorization": f"Bearer {me.token}", "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert model.hits() == before
    assert [r["status"] for r in gw.ledger() if r["consumer"] == me.name] == [status]


def test_disallowed_model_is_403_and_bad_task_header_is_400(env, http):
    gw, model = env
    me = gw.mint(models=["cheap"])
    before = model.hits()
    denied = _chat(http, gw, me.token, "smart")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    assert "allowed: cheap" in denied.json()["error"]["message"]
    bad_tag = _chat(http, gw, me.token, "cheap", headers={"X-Hiclaw-Task": "has space"})
    assert bad_tag.status_code == 400 and bad_tag.json()["error"]["param"] == "X-Hiclaw-Task"
    assert model.hits() == before
    # The alias's provider model string is accepted as a name for the alias.
    assert _chat(http, gw, me.token, "openai/scripted-cheap").status_code == 200


def test_fallback_to_second_model_on_5xx(env, http):
    gw, model = env
    me = gw.mint("failover")
    response = _chat(http, gw, me.token, "smart")
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "answered by scripted-fast"
    assert response.headers["X-Hiclaw-Model"] == "fast"
    assert [r["model"] for r in model.requests("failover")] == ["scripted-smart", "scripted-smart", "scripted-fast"]
    (row,) = [r for r in gw.ledger() if r["consumer"] == "failover"]
    assert row["model"] == "fast" and row["cost_usd"] == pytest.approx(
        row["prompt_tokens"] * 0.5e-6 + row["completion_tokens"] * 1.5e-6)


def test_streaming_falls_back_before_the_first_byte(env, http):
    gw, _ = env
    me = gw.mint("failover")
    with http.stream("POST", f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {me.token}"},
                     json={"model": "smart", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "data: [DONE]"
    assert "answered by scripted-fast" in "".join(json.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                                                  for e in events[:-1] if json.loads(e[6:])["choices"])


def test_upstream_failures_map_to_502_504_and_pass_4xx(env, http):
    gw, model = env
    broken = _chat(http, gw, gw.mint("broken").token, "smart")
    assert broken.status_code == 502 and broken.json()["error"]["code"] == "upstream_error"
    assert "boom" in broken.json()["error"]["message"] and "tried: smart, smart, fast, fast" in broken.json()["error"]["message"]
    slow = _chat(http, gw, gw.mint("slowpoke").token, "cheap")
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "upstream_timeout"
    rejected = _chat(http, gw, gw.mint("rejected").token, "smart")
    assert rejected.status_code == 400 and "temperature must be <= 2" in rejected.json()["error"]["message"]
    assert len(model.requests("rejected")) == 1  # a 4xx is neither retried nor sent to the fallback
    wrong = _chat(http, gw, gw.mint().token, "wrongkey")
    assert wrong.status_code == 502 and wrong.json()["error"]["code"] == "upstream_auth_failed"
    assert "wrong_key" in wrong.json()["error"]["message"]
    unreachable = _chat(http, gw, gw.mint().token, "nowhere")
    assert unreachable.status_code == 502 and unreachable.json()["error"]["code"] == "upstream_unreachable"
    statuses = {r["consumer"]: r["status"] for r in gw.ledger(50)}
    assert statuses["broken"] == 502 and statuses["slowpoke"] == 504 and statuses["rejected"] == 400


def test_the_canary_key_appears_nowhere_but_at_the_provider(env, seen):
    gw, model = env
    assert len(seen["responses"]) > 20 and len(seen["logs"]) > 20
    for text in seen["responses"] + seen["logs"]:
        assert CANARY not in text
    with sqlite3.connect(gw.db_path) as db:
        dump = "\n".join(db.iterdump())
    assert CANARY not in dump and "toolbox" in dump
    assert model.hits() > 10  # ...while the provider accepted it on every successful call
