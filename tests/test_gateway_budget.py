"""Budgets: reservation before dispatch (no overspending under concurrency), 429 at 100 %, the
``hiclaw_budget_warning`` hook at 80 %, and budgets changed from another process."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from hiclaw import hookimpl
from hiclaw.plugins.gateways.embedded.store import GatewayStore
from hiclaw.testing import wait_for
from hiclaw.testing.gateway import running_gateway, running_scripted_model

SCENARIO = {
    "name": "budgets",
    "agents": {
        # 100k prompt tokens on `cheap` ($0.25/M) = $0.025 a call.
        "*": {"default": {"text": "spent", "usage": {"prompt_tokens": 100000, "completion_tokens": 0}}},
        # 10 + 1000 tokens on `smart` ($3/M in, $15/M out) = $0.01503, answered after 300 ms.
        "measured": {"default": {"text": "slow", "delay_ms": 300, "usage": {"prompt_tokens": 10, "completion_tokens": 1000}}},
    },
}


class Warnings:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float, float, str]] = []

    @hookimpl
    async def hiclaw_budget_warning(self, scope, name, spent_usd, budget_usd, ctx):
        self.seen.append((scope, name, spent_usd, budget_usd, ctx.side))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    warnings = Warnings()
    with running_scripted_model(SCENARIO) as model, running_gateway(
            tmp_path_factory.mktemp("home"), model.base_url, plugins=[("warnings", warnings)]) as gw:
        yield gw, model, warnings


def _call(gw, token, model="cheap", **headers):
    return httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {token}", **headers},
                      json={"model": model, "messages": [{"role": "user", "content": "go"}]}, timeout=30)


def test_hook_hiclaw_budget_warning(env):
    gw, model, warnings = env
    me = gw.mint("spender", budget_usd=0.05)
    assert _call(gw, me.token).status_code == 200  # $0.025: 50 %, no warning
    assert warnings.seen == []
    assert _call(gw, me.token).status_code == 200  # $0.050: crosses 80 %
    wait_for(lambda: warnings.seen, what="the budget warning hook")
    assert warnings.seen == [("consumer", "spender", pytest.approx(0.05), 0.05, "control")]
    refused = _call(gw, me.token)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert "budget exhausted for consumer 'spender'" in error["message"] and "hiclaw gateway budget set" in error["message"]
    assert model.hits("spender") == 2  # the refused call never reached the provider
    assert len(warnings.seen) == 1  # one warning per crossing, not per call


def test_project_budget_refuses_every_consumer_of_the_project(env):
    gw, _model, warnings = env
    gw.set_budget(project="proj-b", usd=0.03)
    alice, bob = gw.mint(), gw.mint()
    assert _call(gw, alice.token, **{"X-Hiclaw-Project": "proj-b"}).status_code == 200  # $0.025 crosses 80 %
    wait_for(lambda: any(w[0] == "project" for w in warnings.seen), what="the project warning")
    assert ("project", "proj-b", pytest.approx(0.025), 0.03, "control") in warnings.seen
    # bob's reservation (~$0.001) still fits under $0.03; the recorded cost then exhausts it.
    assert _call(gw, bob.token, **{"X-Hiclaw-Project": "proj-b"}).status_code == 200
    refused = _call(gw, alice.token, **{"X-Hiclaw-Project": "proj-b"})
    assert refused.status_code == 429 and "project 'proj-b'" in refused.json()["error"]["message"]
    assert _call(gw, alice.token, **{"X-Hiclaw-Project": "proj-c"}).status_code == 200  # other projects are fine
    budgets = {(b["scope"], b["name"]): b for b in gw.thread.run(gw.gateway.list_budgets())}
    assert budgets[("project", "proj-b")]["spent_usd"] == pytest.approx(0.05)


def test_concurrent_calls_cannot_overspend(env):
    gw, model, _ = env
    me = gw.mint("measured", budget_usd=0.05)  # each call reserves ~$0.0151 (max_tokens 1000 on smart)

    async def burst():
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "smart", "max_tokens": 1000, "messages": [{"role": "user", "content": "go"}]}
            calls = [client.post(f"{gw.base_url}/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {me.token}"}) for _ in range(10)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(burst())
    assert sorted(statuses) == [200] * 3 + [429] * 7
    assert model.hits("measured") == 3
    (row,) = [t for t in gw.thread.run(gw.gateway.list_tokens()) if t["name"] == "measured"]
    assert row["spent_usd"] == pytest.approx(3 * 0.01503) and row["spent_usd"] <= 0.05


def test_budget_changed_from_another_process_applies_on_the_next_request(env):
    gw, _model, _ = env
    me = gw.mint()
    assert _call(gw, me.token).status_code == 200
    cli_store = GatewayStore(gw.db_path)  # what `hiclaw gateway budget set` opens
    cli_store.set_budget(consumer=me.name, usd=0.01)
    assert _call(gw, me.token).status_code == 429
    cli_store.set_budget(consumer=me.name, usd=None)
    cli_store.close()
    assert _call(gw, me.token).status_code == 200
