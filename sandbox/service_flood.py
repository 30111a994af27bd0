"""The bridge probe: ``connection_flood``, ~500 held connections against the per-worker bridge cap.

Inside, :data:`FLOOD_CONNECTIONS` connections to a bridge (its socket, bypassing the in-sandbox
forwarder), each with a request never finished, held. Meanwhile the host counts its own open
descriptors and has another worker connect through its own bridge to the same service. EXPOSED if
the descriptors grow past what the cap allows, or the other worker's fresh connection gets no answer.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hiclaw.sandbox.service_components import OTHER, Verdict, fd_count, outcome
from hiclaw.sandbox.service_loopback import Answering, ask_http
from hiclaw.sandbox.spec import Bridge

if TYPE_CHECKING:
    from hiclaw.sandbox.service_rig import ServiceRig

FLOOD_CONNECTIONS = 500
#: Where the bwrap and docker backends show a worker its bridges' sockets.
SOCKETS_INSIDE = "/run/hiclaw"


async def setup_flood(rig: ServiceRig) -> None:
    from hiclaw.sandbox.base import run_dir_for
    from hiclaw.sandbox.bridge import HostBridges, socket_name
    from hiclaw.sandbox.limits import raise_fd_limit

    raise_fd_limit()  # as the control plane does: the question is whether the cap holds, not the soft limit
    service = await Answering().start()
    rig.closers.append(service.close)
    bridge = Bridge(name="flood", port=service.port)
    rig.bridges.append(bridge)
    # Another worker's own bridge to the same service (what the flood must not starve),
    # with the backend's limits.
    run_dir = run_dir_for(rig.canaries.control / "run" / "check-other", OTHER)
    settings = getattr(rig.backend, "settings", None)
    other = HostBridges.from_settings(run_dir, [bridge], settings) if hasattr(settings, "bridge_max_connections") \
        else HostBridges(run_dir, [bridge])
    sockets = await other.start()
    rig.closers.append(other.close)
    rig.flood = {"service": service, "other": sockets["flood"], "cap": other.max_connections}
    rig.sandbox_plan["flood"] = {"socket": f"{SOCKETS_INSIDE}/{socket_name('flood')}", "port": service.port,
                                 "count": FLOOD_CONNECTIONS}


async def flood_begin(rig: ServiceRig, message: dict[str, Any]) -> dict[str, Any]:
    other = await ask_http(asyncio.open_unix_connection(str(rig.flood["other"])))
    rig.found["connection_flood"] = {"fds_before": fd_count(), "other_before": rig.flood["service"].canary.encode() in other}
    return {"ok": True}


async def flood_holding(rig: ServiceRig, message: dict[str, Any]) -> dict[str, Any]:
    found = rig.found.setdefault("connection_flood", {})
    opened, via = int(message.get("opened") or 0), str(message.get("via") or "")
    service: Answering = rig.flood["service"]
    stats_of = getattr(rig.backend, "bridge_stats", None)

    def handled() -> int:  # flood connections the host has dealt with (held or refused)
        stats = stats_of(rig.worker) if callable(stats_of) else None
        if stats and "flood" in stats:
            return int(stats["flood"]["open"] + stats["flood"]["refused"])
        return service.connections

    loop = asyncio.get_running_loop()
    deadline, peak = loop.time() + 10, fd_count() or 0
    while handled() < opened and loop.time() < deadline:
        await asyncio.sleep(0.01)  # the host's own loop accepts them; sample its descriptors meanwhile
        peak = max(peak, fd_count() or 0)
    if via.startswith("bridge socket"):  # another worker: through its own bridge
        answer = await ask_http(asyncio.open_unix_connection(str(rig.flood["other"])))
    else:  # no bridges (process backend): another worker connects straight to the service
        answer = await ask_http(asyncio.open_connection("127.0.0.1", service.port))
    peak = max(peak, fd_count() or 0)
    stats = stats_of(rig.worker) if callable(stats_of) else None
    found.update(opened=opened, via=via, fds_peak=peak, fresh_answered=service.canary.encode() in answer,
                 stats=dict((stats or {}).get("flood") or {}) or None)
    return {"fresh_answered": found["fresh_answered"]}


def judge_flood(rig: ServiceRig, seen: dict[str, Any]) -> Verdict:
    found = rig.found["connection_flood"]
    cap = rig.flood["cap"]
    # Each connection the host holds costs it three descriptors (the bridge's end, its relay,
    # the service's end); a cap that lets one worker hold half the flood bounds nothing.
    bound = 3 * min(cap, FLOOD_CONNECTIONS // 2) + 64
    before, peak = found.get("fds_before"), found.get("fds_peak")
    if before is None or not peak:
        raise ValueError("this system does not show a process's open descriptors")
    growth, opened = peak - before, int(found.get("opened") or 0)
    stats = found.get("stats")
    detail = (f"{opened} connections opened and held via {found.get('via')}: the check's open descriptors grew by {growth} "
              f"(bound {bound}: 3 per held connection, at most {cap} held per bridge, + 64)"
              + (f", the bridge held {stats['open']} and refused {stats['refused']}" if stats else "")
              + f"; {seen.get('held', '?')} still open inside; another worker's fresh connection "
              + ("was answered" if found.get("fresh_answered") else "got NO answer"))
    baseline = outcome(opened > bound and bool(found.get("other_before")),
                       f"the flood outnumbers the bound ({opened} > {bound}) and the service answered before it"
                       if opened > bound else f"{opened} connections are too few to pass the bound ({bound}) "
                                              "at one descriptor each")
    return outcome(growth > bound or not found.get("fresh_answered"), detail), baseline
