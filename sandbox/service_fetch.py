"""The skill-fetch probe: ``ssrf_address_forms``, loopback address forms against the fetch policy.

The worker-facing fetch policy (built by :class:`SkillService` for your ``[skills]``) on
:data:`SSRF_FORMS` forms of a loopback "internal service", through ``SkillService.add`` (a
worker's ``skills_add``) and the guarded fetcher alone. EXPOSED if that service saw a connection
or its answer came back. Host only: the boundary is the control plane's code.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from hiclaw.sandbox.service_components import NO_SANDBOX, Verdict, outcome
from hiclaw.sandbox.service_loopback import Answering

if TYPE_CHECKING:
    from hiclaw.sandbox.service_rig import ServiceRig

SSRF_FORMS = ("127.1", "2130706433", "[::ffff:127.0.0.1]", "0x7f.1", "localhost.")


async def ssrf_address_forms(rig: ServiceRig) -> Verdict:
    from hiclaw.errors import HiclawError
    from hiclaw.registry.http import NOT_REACHABLE, HttpFetcher

    internal = await Answering().start()
    try:
        urls = [f"http://{form}:{internal.port}/" for form in SSRF_FORMS]
        reaching = []
        async with HttpFetcher(retries=1, timeout=3) as plain:  # unguarded: does each form get there at all?
            for url in urls:
                before = internal.connections
                with contextlib.suppress(HiclawError):
                    await plain.get(url, max_bytes=4096)
                if internal.connections > before:
                    reaching.append(url)
        before, texts = internal.connections, []
        service = rig.options.components.skills(rig.config.skills)
        try:
            async with HttpFetcher(policy=service.policy, retries=1, timeout=3) as guarded:
                for url in urls:  # what a worker's skills_add does, then the fetcher alone
                    try:
                        await service.add(rig.worker, url, None, rig.work / "ssrf-skills")
                        texts.append("fetched")
                    except HiclawError as exc:
                        texts.append(str(exc))
                    try:
                        await guarded.get(url, max_bytes=4096)
                        texts.append("fetched")
                    except HiclawError as exc:
                        texts.append(str(exc))
        finally:
            await service.aclose()
        reached = internal.connections - before
        leaked = [t for t in texts if internal.canary in t or t == "fetched"]
        same = all(NOT_REACHABLE in t for t in texts)
        sandbox = outcome(bool(reached or leaked), (
            f"{len(urls)} address forms of 127.0.0.1:{internal.port}, through SkillService.add (a worker's "
            f"skills_add) and the worker-facing fetcher: {reached} connection(s) reached the internal service"
            + (f", {len(leaked)} answer(s) came back" if leaked else f"; all {len(texts)} attempts refused")
            + (f" as {NOT_REACHABLE!r}" if same else "") + f" — {NO_SANDBOX}"))
        unreached = [u for u in urls if u not in reaching]
        baseline = outcome(bool(reaching), f"unguarded, {len(reaching)}/{len(urls)} forms reach the service"
                           + (f" ({', '.join(unreached)} not on this host)" if unreached else ""))
        return sandbox, baseline
    finally:
        await internal.close()
