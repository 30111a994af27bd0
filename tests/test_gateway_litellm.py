"""The litellm upstream (``direct_openai = false``): the same wire behaviour through litellm.

litellm is what serves every provider that does not speak the OpenAI API; here it talks to the
scripted server as an ``openai/`` provider, which exercises the litellm call, its streaming
wrapper, usage, errors and redaction. Importing litellm takes a few seconds, once.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import openai
import pytest

from hiclaw.testing.gateway import running_gateway, running_scripted_model, scripted_aliases

CANARY = "sk-canary-litellm-5b8e1f0c2a7d4e9b"
SCENARIO = {
    "agents": {
        "tools": {"default": {"tool_calls": [{"name": "list_files", "arguments": {"path": "."}}]}},
        "failover": {"rules": [{"when": {"model": "scripted-smart"}, "error": {"status": 500, "message": "down"}}],
                     "default": {"text": "fallback {{model}}"}},
        "*": {"default": {"text": "via litellm: {{input}}", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}},
    },
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_scripted_model(SCENARIO, api_key=CANARY) as model:
        models = scripted_aliases(model.base_url)
        models["badkey"] = {"model": "openai/scripted-cheap", "api_base": model.base_url, "api_key_secret": "other_key"}
        with running_gateway(tmp_path_factory.mktemp("home"), models=models, settings={"direct_openai": False},
                             secrets_values={"scripted_api_key": CANARY, "other_key": "sk-wrong-0000"}) as gw:
            yield gw, model


def test_litellm_is_only_imported_by_the_gateway_process_when_needed():
    code = ("import sys, hiclaw.plugins.gateways.embedded, hiclaw.plugins.gateways.embedded.gateway, hiclaw.scripted.server;"
            "print('litellm' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_completion_stream_and_tools_through_litellm(env, caplog):
    gw, model = env
    caplog.set_level(logging.DEBUG)
    me = gw.mint()
    client = openai.OpenAI(base_url=gw.base_url, api_key=me.token, max_retries=0)
    reply = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"X-Hiclaw-Task": "lt-1"})
    assert reply.choices[0].message.content == "via litellm: hi"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1000, 100)
    chunks = list(client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "again"}],
                                                 stream=True, extra_headers={"X-Hiclaw-Task": "lt-2"}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "via litellm: again"
    assert chunks[-1].usage.prompt_tokens == 1000
    rows = {r["task"]: r for r in gw.usage(by="task") if r["task"] in ("lt-1", "lt-2")}
    assert rows["lt-1"]["cost_usd"] == rows["lt-2"]["cost_usd"] == pytest.approx(1100 * 0.25e-6)
    assert model.requests(me.name)[-1]["model"] == "scripted-cheap"  # `user` reached the provider
    tool_user = gw.mint("tools")
    tools = [{"type": "function", "function": {"name": "list_files", "parameters": {"type": "object", "properties": {}}}}]
    called = openai.OpenAI(base_url=gw.base_url, api_key=tool_user.token, max_retries=0).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "ls"}], tools=tools)
    assert json.loads(called.choices[0].message.tool_calls[0].function.arguments) == {"path": "."}
    assert all(CANARY not in r.getMessage() for r in caplog.records)


def test_litellm_errors_fall_back_and_are_redacted(env, caplog):
    gw, _model = env
    caplog.set_level(logging.DEBUG)
    failover = gw.mint("failover")
    client = openai.OpenAI(base_url=gw.base_url, api_key=failover.token, max_retries=0)
    reply = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "fallback scripted-fast"
    bad = gw.mint()
    with pytest.raises(openai.APIStatusError) as info:
        openai.OpenAI(base_url=gw.base_url, api_key=bad.token, max_retries=0).chat.completions.create(
            model="badkey", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_auth_failed"
    for text in [str(info.value.body), *(r.getMessage() for r in caplog.records)]:
        assert CANARY not in text and "sk-wrong-0000" not in text
