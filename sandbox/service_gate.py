"""The mention-gate probes: ``worker_wakes_worker`` and ``turn_limit``, against a worker's real gate.

A worker's real mention gate (:func:`hiclaw.worker.runtime.worker_gate`, through
:class:`ServiceComponents` ``gate``), fed mentions the way its channel would. EXPOSED if another
worker's mention (in a room or a DM) starts a turn, or if more turns than
``[team] max_turns_per_room_per_minute`` start in one room. Host only: the boundary is the
control plane's code, a worker only chooses the input.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hiclaw.sandbox.service_components import NO_SANDBOX, OTHER, Verdict, outcome

if TYPE_CHECKING:
    from hiclaw.sandbox.service_rig import ServiceRig


def _gate(rig: ServiceRig, turns: list[Any]) -> tuple[Any, Callable[[str], str]]:
    from hiclaw.worker.spec import ComponentRef, GatewayRef, WorkerRuntimeSpec

    server = str((rig.config.channel.settings or {}).get("server_name") or "hiclaw.local")

    def user_id(name: str) -> str:
        return f"@{name}:{server}"

    async def turn(message: Any) -> None:
        turns.append(message)

    async def no_assignment(message: Any) -> bool:
        return False  # none of these messages hands the worker one of its tasks

    spec = WorkerRuntimeSpec(  # what the provisioner hands a worker, but its secrets
        name=rig.worker, channel=ComponentRef(plugin="check"), storage=ComponentRef(plugin="check"),
        gateway=GatewayRef(base_url="http://127.0.0.1:9/v1", token=secrets.token_urlsafe(8)),
        control_url="http://127.0.0.1:9", control_token=secrets.token_urlsafe(8),
        max_turns_per_room_per_minute=rig.config.team.max_turns_per_room_per_minute)
    return rig.options.components.gate(spec, user_id, turn, exempt=no_assignment), user_id


def _mention(user_id: Callable[[str], str], sender: str, to: str, n: int, *, direct: bool = False) -> Any:
    from hiclaw.models import ChatMessage

    return ChatMessage(room_id="!check-room:check", event_id=f"$check-{sender}-{n}", sender=user_id(sender),
                       body=f"@{to} your turn ({n})", mentions=(user_id(to),), is_direct=direct)


async def worker_wakes_worker(rig: ServiceRig) -> Verdict:
    turns: list[Any] = []
    gate, uid = _gate(rig, turns)
    await gate(_mention(uid, OTHER, rig.worker, 1))
    await gate(_mention(uid, OTHER, rig.worker, 2, direct=True))
    by_worker = len(turns)
    await gate(_mention(uid, "manager", rig.worker, 3))
    sandbox = outcome(by_worker > 0, f"{by_worker} of 2 mentions by {OTHER} (in a room, in a DM) started a turn "
                                     f"— {NO_SANDBOX}")
    baseline = outcome(len(turns) > by_worker, "the same mention by the Manager starts a turn"
                       if len(turns) > by_worker else "the Manager's mention started no turn either")
    return sandbox, baseline


async def turn_limit(rig: ServiceRig) -> Verdict:
    limit = rig.config.team.max_turns_per_room_per_minute
    fed = limit + 5
    turns: list[Any] = []
    gate, uid = _gate(rig, turns)
    for n in range(fed):
        await gate(_mention(uid, "manager", rig.worker, n))
    limited = len(turns)
    admin_turns: list[Any] = []
    admin_gate, _ = _gate(rig, admin_turns)
    for n in range(fed):
        await admin_gate(_mention(uid, "admin", rig.worker, n))
    sandbox = outcome(limited >= fed, f"{limited} of {fed} mentions in one room started a turn (limit {limit} per "
                                      f"room per minute, [team] max_turns_per_room_per_minute) — {NO_SANDBOX}")
    baseline = outcome(len(admin_turns) == fed, f"{len(admin_turns)} of {fed} of the admin's (never limited) did")
    return sandbox, baseline
