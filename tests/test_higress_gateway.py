"""The Higress gateway plugin against a recorded contract of the Higress console API.

No Higress can run here: :mod:`hiclaw.plugins.gateways.higress.contract` answers like the
console does (validation, 409s, versions, session cookie), so these tests prove the plugin sends
what Higress accepts and keeps consumers and routes consistent — not that Higress routes traffic.
"""
from __future__ import annotations

import pytest
from pydantic import SecretStr

from hiclaw.config import HiclawConfig
from hiclaw.errors import ConfigError, InvalidInputError, NotFoundError, PluginError
from hiclaw.host import ComponentContext, PluginHost
from hiclaw.plugins.gateways import higress
from hiclaw.plugins.gateways.higress.contract import HigressConsoleContract

PROVIDER_KEY = "sk-provider-in-higress-0001"
MODELS = {
    "smart": {"model": "openai/gpt-4o", "api_key_secret": "openai_api_key", "fallback": "fast"},
    "fast": {"model": "openai/gpt-4o-mini", "api_key_secret": "openai_api_key"},
    "local": {"model": "openai/llama", "api_base": "http://127.0.0.1:8000/v1"},
}


@pytest.fixture
async def console():
    contract = HigressConsoleContract(password="console-pw")
    await contract.start()
    yield contract
    await contract.stop()


def _gateway(tmp_path, console, *, models=MODELS, secrets=None, **settings):
    values = {"higress_console_password": "console-pw", "openai_api_key": PROVIDER_KEY} if secrets is None else secrets
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("higress", higress)],
                      secret_source=lambda name: SecretStr(values[name]) if name in values else None)
    config = HiclawConfig.model_validate({"models": models, "gateway": {"plugin": "higress"}})
    return host.create("gateway", "higress", {"console_url": console.url, "gateway_url": "http://aigw.local:8080/v1",
                                              **settings}, ComponentContext(home=tmp_path, config=config))


async def test_start_pushes_providers_and_mint_creates_consumer_and_routes(tmp_path, console):
    gateway = _gateway(tmp_path, console)
    await gateway.start()
    smart = console.providers["hiclaw-smart"]
    assert (smart["type"], smart["protocol"], smart["tokens"]) == ("openai", "openai/v1", [PROVIDER_KEY])
    assert console.providers["hiclaw-local"]["rawConfigs"] == {"openaiCustomUrl": "http://127.0.0.1:8000/v1"}
    assert console.providers["hiclaw-local"]["tokens"] == []
    assert console.routes == {}  # routes appear with their first consumer

    token = await gateway.mint_token("alice", models=["smart", "fast"])
    assert token.startswith("hc-") and len(token) > 40
    credential = console.consumers["hiclaw-alice"]["credentials"][0]
    assert credential == {"type": "key-auth", "source": "BEARER", "values": [token]}
    route = console.routes["hiclaw-smart"]
    assert route["authConfig"] == {"enabled": True, "allowedCredentialTypes": ["key-auth"], "allowedConsumers": ["hiclaw-alice"]}
    assert route["modelPredicates"] == [{"enabled": True, "prefix": "smart"}]
    assert route["upstreams"] == [{"provider": "hiclaw-smart", "weight": 100, "modelMapping": {"*": "gpt-4o"}}]
    assert route["fallbackConfig"]["upstreams"][0]["provider"] == "hiclaw-fast"
    assert "hiclaw-local" not in console.routes
    assert gateway.base_url == "http://aigw.local:8080/v1"

    await gateway.mint_token("bob")  # all models
    assert console.routes["hiclaw-smart"]["authConfig"]["allowedConsumers"] == ["hiclaw-alice", "hiclaw-bob"]
    assert console.routes["hiclaw-smart"]["version"] == "2"  # updated with the version it read
    assert await gateway.list_tokens() == [
        {"name": "alice", "models": ["smart", "fast"], "budget_usd": None, "spent_usd": None, "created": None,
         "revoked": False, "revoked_at": None},
        {"name": "bob", "models": ["smart", "fast", "local"], "budget_usd": None, "spent_usd": None, "created": None,
         "revoked": False, "revoked_at": None}]
    await gateway.stop()


async def test_remint_replaces_token_and_models_and_revoke_cleans_up(tmp_path, console):
    gateway = _gateway(tmp_path, console)
    await gateway.start()
    first = await gateway.mint_token("alice", models=["smart"])
    second = await gateway.mint_token("alice", models=["fast"])
    assert first != second and console.consumers["hiclaw-alice"]["credentials"][0]["values"] == [second]
    assert await gateway.check_token("alice", second) and not await gateway.check_token("alice", first)
    assert not await gateway.check_token("nobody", second)
    assert "hiclaw-smart" not in console.routes  # its last consumer left: the route is gone, not open
    assert console.routes["hiclaw-fast"]["authConfig"]["allowedConsumers"] == ["hiclaw-alice"]
    await gateway.mint_token("bob", models=["fast"])
    await gateway.revoke_token("alice")
    assert "hiclaw-alice" not in console.consumers and not await gateway.check_token("alice", second)
    assert console.routes["hiclaw-fast"]["authConfig"]["allowedConsumers"] == ["hiclaw-bob"]
    with pytest.raises(NotFoundError, match="no consumer 'hiclaw-alice'"):
        await gateway.revoke_token("alice")
    await gateway.stop()
    # A restart re-applies the aliases to existing routes, and removes one left without consumers.
    console.routes["hiclaw-fast"]["upstreams"] = [{"provider": "edited-by-hand"}]
    console.routes["hiclaw-local"] = {"name": "hiclaw-local", "version": "1", "upstreams": [{"provider": "x"}],
                                      "authConfig": {"enabled": False, "allowedConsumers": []}}
    restarted = _gateway(tmp_path, console)
    await restarted.start()
    assert console.routes["hiclaw-fast"]["upstreams"][0]["provider"] == "hiclaw-fast"
    assert console.routes["hiclaw-fast"]["authConfig"]["allowedConsumers"] == ["hiclaw-bob"]
    assert "hiclaw-local" not in console.routes
    await restarted.stop()


async def test_expired_session_is_renewed_and_foreign_consumers_are_left_alone(tmp_path, console):
    gateway = _gateway(tmp_path, console)
    await gateway.start()
    console.consumers["team-ci"] = {"name": "team-ci", "credentials": [{"type": "key-auth", "source": "BEARER", "values": ["x"]}]}
    console.expire_sessions()
    await gateway.mint_token("carol", models=["fast"])
    assert [c for c in console.calls if c[1] == "/session/login"] == [("POST", "/session/login")] * 2
    assert [t["name"] for t in await gateway.list_tokens()] == ["carol"]
    await gateway.stop()


async def test_refusals_are_clear_and_change_nothing(tmp_path, console):
    gateway = _gateway(tmp_path, console)
    await gateway.start()
    before = (dict(console.consumers), dict(console.routes))
    with pytest.raises(PluginError, match="cannot enforce a budget"):
        await gateway.mint_token("dave", budget_usd=5)
    with pytest.raises(InvalidInputError, match="unknown model alias"):
        await gateway.mint_token("dave", models=["huge"])
    with pytest.raises(InvalidInputError, match="consumer name"):
        await gateway.mint_token("Bad Name")
    with pytest.raises(PluginError, match="no usage ledger"):
        await gateway.usage()
    assert (console.consumers, console.routes) == before
    await gateway.stop()
    with pytest.raises(PluginError, match="refused the login"):
        await _gateway(tmp_path, console, secrets={"higress_console_password": "wrong"}).start()
    with pytest.raises(ConfigError, match="higress_console_password"):
        _gateway(tmp_path, console, secrets={})
    with pytest.raises(ConfigError, match="has no Higress equivalent"):
        await _gateway(tmp_path, console, models={"x": {"model": "bedrock/claude"}}).start()


async def test_keys_can_stay_in_higress(tmp_path, console):
    console.providers["corp-openai"] = {"name": "corp-openai", "type": "openai", "protocol": "openai/v1", "tokens": ["k"]}
    gateway = _gateway(tmp_path, console, models={"smart": {"model": "openai/gpt-4o"}}, manage_providers=False,
                       providers={"smart": "corp-openai"}, secrets={"higress_console_password": "console-pw"})
    await gateway.start()
    await gateway.mint_token("erin")
    assert console.routes["hiclaw-smart"]["upstreams"][0]["provider"] == "corp-openai"
    assert set(console.providers) == {"corp-openai"}  # nothing pushed
    await gateway.stop()
    missing = _gateway(tmp_path, console, models={"fast": {"model": "openai/gpt-4o-mini"}}, manage_providers=False,
                       secrets={"higress_console_password": "console-pw"})
    with pytest.raises(PluginError, match="has no provider 'hiclaw-fast'"):
        await missing.start()


async def test_contract_rejects_what_higress_rejects(console):
    import httpx

    async with httpx.AsyncClient(base_url=console.url) as http:
        assert (await http.get("/v1/consumers")).status_code == 401
        await http.post("/session/login", json={"username": "admin", "password": "console-pw"})
        bad_consumer = await http.post("/v1/consumers", json={"name": "x", "credentials": [{"type": "key-auth", "source": "HEADER", "values": ["v"]}]})
        assert bad_consumer.status_code == 400 and bad_consumer.json()["message"] == "key cannot be blank."
        open_route = {"name": "r", "upstreams": [{"provider": "p"}], "authConfig": {"enabled": True, "allowedConsumers": []}}
        assert (await http.post("/v1/ai/routes", json=open_route)).json()["message"].startswith("allowedConsumers cannot be empty")
        route = {**open_route, "authConfig": {"enabled": False}}
        assert (await http.post("/v1/ai/routes", json=route)).status_code == 200
        assert (await http.post("/v1/ai/routes", json=route)).status_code == 409
        assert (await http.put("/v1/ai/routes/r", json={**route, "version": "0"})).status_code == 409
