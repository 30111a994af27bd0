"""The fixtures shipped to plugin authors (``hiclaw.testing.gateway``) work as documented."""
from __future__ import annotations

import openai
import pytest


def test_my_plugin_calls_the_model(gateway_token, scripted_model):
    client = openai.OpenAI(base_url=gateway_token.base_url, api_key=gateway_token.token, max_retries=0)
    reply = client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == f"[scripted] {gateway_token.name} #1: hi"
    assert scripted_model.hits(gateway_token.name) == 1


def test_gateway_fixture_mints_with_limits_and_reads_the_ledger(gateway):
    limited = gateway.mint(models=["fast"], budget_usd=1.0)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=limited.token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}])
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
    (row,) = [r for r in gateway.usage(by="consumer,model") if r["consumer"] == limited.name and r["model"] == "fast"]
    assert row["calls"] == 1 and row["cost_usd"] > 0
    gateway.revoke(limited.name)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])
