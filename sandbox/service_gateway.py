"""The gateway probe: ``gateway_parameters``, smuggling a route's target past the embedded gateway.

The embedded gateway, bridged in, with a direct and a litellm route to a loopback provider whose
key is a canary (:class:`~hiclaw.sandbox.service_loopback.Recorder`s stand in for the provider
and for the attacker's server). Inside, chat completions with ``api_base``/``base_url``/
``extra_headers``… aimed at the attacker's recorder. EXPOSED if that recorder got anything, the
key came back, or a smuggled value reached the provider. The gateway starts once the sandbox runs
(:meth:`ServiceRig.sandbox_started`: litellm's import overlaps the other attacks).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import TYPE_CHECKING, Any

from hiclaw.sandbox.service_components import Verdict, outcome
from hiclaw.sandbox.service_loopback import Recorder, ask_http, free_port
from hiclaw.sandbox.spec import Bridge

if TYPE_CHECKING:
    from hiclaw.sandbox.service_rig import ServiceRig


async def setup_gateway(rig: ServiceRig) -> None:
    from pydantic import SecretStr

    from hiclaw.config import HiclawConfig
    from hiclaw.host import ComponentContext, PluginHost
    from hiclaw.plugins.gateways import embedded

    provider, attacker = await Recorder().start(), await Recorder().start()
    rig.closers += [provider.close, attacker.close]
    key = f"sk-check-{secrets.token_hex(16)}"
    price = {"api_base": provider.url, "api_key_secret": "check_provider_key",
             "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0}
    # One route the gateway calls itself, one through litellm (where the parameters leaked).
    models = {"check-direct": {"model": "openai/check-direct", **price},
              "check-litellm": {"model": "hosted_vllm/check-litellm", **price}}
    config = HiclawConfig.model_validate({"models": models, "gateway": {"plugin": "embedded-gateway"}})
    host = PluginHost(load_defaults=False, load_entry_points=False, plugins=[("embedded-gateway", embedded)],
                      secret_source=lambda name: SecretStr(key) if name == "check_provider_key" else None)
    port = free_port()
    gateway = host.create("gateway", "embedded-gateway", {"port": port, "retries": 0, "retry_backoff_seconds": 0,
                                                  "upstream_timeout_seconds": 20, "connect_timeout_seconds": 5},
                          ComponentContext(home=rig.work / "gateway", side="control", config=config))
    token = await gateway.mint_token(rig.worker)

    async def stop() -> None:
        if rig.gateway_task is not None:
            with contextlib.suppress(Exception):
                await rig.gateway_task
        await gateway.stop()
        gateway.store.close()

    rig.closers.append(stop)
    rig.bridges.append(Bridge(name="gateway", port=port))
    rig.gateway_start = gateway.start
    await ask_http(asyncio.open_connection("127.0.0.1", attacker.port))  # the recorder records?
    rig.gateway = {"provider": provider, "attacker": attacker, "key": key, "recorder_works": bool(attacker.requests),
                   "aliases": sorted(models)}
    attacker.requests.clear()
    rig.sandbox_plan["gateway"] = {"base_url": f"http://127.0.0.1:{port}/v1", "token": token, "aliases": sorted(models),
                                   "attacker": attacker.url}


async def gateway_ready(rig: ServiceRig, message: dict[str, Any]) -> dict[str, Any]:
    rig.sandbox_started()  # (already, unless a caller drives the rig itself)
    assert rig.gateway_task is not None
    try:
        await asyncio.wait_for(asyncio.shield(rig.gateway_task), 60)
    except Exception as exc:  # noqa: BLE001 - the probe is then unverified, with the reason
        rig.errors["gateway_parameters"] = f"the gateway did not start: {type(exc).__name__}: {exc}"
        return {"ready": False, "error": rig.errors["gateway_parameters"]}
    return {"ready": True}


def judge_gateway(rig: ServiceRig, seen: dict[str, Any]) -> Verdict:
    gw = rig.gateway
    if not seen.get("ready"):
        raise ValueError(seen.get("error") or "the gateway did not start")
    calls = seen["calls"]
    smuggled = [c for c in calls if c["case"] != "plain"]
    key, attacker, provider = gw["key"], gw["attacker"], gw["provider"]
    leaks = [f"{c['alias']} {c['case']}" for c in calls if key in c["text"]]
    at_provider = [r for r in provider.requests if any(mark in json.dumps(r).lower() for mark in
                                                      ("x-hiclaw-smuggled", "sk-attacker", attacker.url))]
    refused = sum(c["status"] == 400 and "unsupported_parameter" in c["text"] for c in smuggled)
    reached = bool(attacker.requests or leaks or at_provider)
    detail = (f"{len(smuggled)} smuggling calls on routes {', '.join(gw['aliases'])}: {refused} refused "
              f"(400 unsupported_parameter); the attacker's server got {len(attacker.requests)} request(s)"
              + ((", with the provider key" if key in attacker.text() else ", without the key") if attacker.requests else "")
              + (f"; the key came back in: {', '.join(leaks)}" if leaks else "")
              + (f"; {len(at_provider)} smuggled value(s) reached the provider" if at_provider else ""))
    plain = [c for c in calls if c["case"] == "plain"]
    keyed = sum(r["headers"].get("authorization") == f"Bearer {key}" for r in provider.requests)
    works = gw["recorder_works"] and len(plain) == len(gw["aliases"]) and all(c["status"] == 200 for c in plain) \
        and keyed >= len(gw["aliases"])
    baseline = outcome(works, "a plain call on each route reaches the provider with the canary key, and the "
                              "attacker's server records what reaches it" if works else
                       f"the control failed: plain calls {[c['status'] for c in plain]}, {keyed} keyed provider "
                       f"request(s), attacker recorder works: {gw['recorder_works']}")
    return outcome(reached, detail), baseline
