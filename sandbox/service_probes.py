"""The service-level probes of ``hiclaw sandbox check``: the boundary *through* what a worker reaches.

Direct isolation (no host files, processes or ports) is not the whole boundary: a worker also
reaches services that run with the control plane's rights — its storage, the gateway, the skill
fetcher, its peers' wake-ups, its bridges. Each probe here attacks one real component the check
starts in-process, from a probe program inside the real sandbox where the attack needs one
(:func:`hiclaw.sandbox.probes.run_services`), and judges the **outcome** on the host:

``result_link_swap``
    A local storage on the check's scratch root; the task folder bound in as a real grant is
    (:meth:`LocalStorage.grant`, by descriptor). Inside, ``result.md`` is swapped between a file
    and a link to the scratch ``secrets.toml`` while the host reads it through the storage API
    2000 times. EXPOSED if one read returned the canary.
``skills_folder_link``
    Inside, every way to turn the (read-only bound) skills folder into a link to another
    worker's home or to write into it; then the host installs a bundled skill the way the
    control plane does (:func:`hiclaw.control.skills.in_worker_skills`). EXPOSED if the folder
    changed, or anything landed outside the worker's skills.
``gateway_parameters``
    The embedded gateway, bridged in, with a direct and a litellm route to a loopback provider
    whose key is a canary. Inside, chat completions with ``api_base``/``base_url``/
    ``extra_headers``… aimed at a second (attacker's) recorder. EXPOSED if that recorder got
    anything, or the canary came back.
``ssrf_address_forms``
    The worker-facing fetch policy (built by :class:`SkillService` for your ``[skills]``) on
    ``127.1``, ``2130706433``, ``[::ffff:127.0.0.1]``, ``0x7f.1``, ``localhost.`` forms of a
    loopback "internal service". EXPOSED if that service saw a connection.
``worker_wakes_worker`` / ``turn_limit``
    A worker's real mention gate (:func:`hiclaw.worker.runtime.worker_gate`). EXPOSED if
    another worker's mention starts a turn, or if more turns than the limit start in one room.
``connection_flood``
    Inside, ~500 connections to a bridge (its socket, bypassing the in-sandbox forwarder), each
    with a request never finished, held. EXPOSED if the check's open descriptors grow past
    what the per-worker cap allows, or another worker's fresh connection gets no answer.

Every probe has a negative control as its baseline (the link target really is readable by a
plain ``open``, the installer really installs, the provider really gets the key, the address
forms really reach the service unguarded, the gate really wakes for the Manager, the flood really
outnumbers the cap…): without it a probe says ``unverified``, never ``isolated``.
``ssrf_address_forms``, ``worker_wakes_worker`` and ``turn_limit`` need no sandbox (the boundary
is in the control plane's code; a worker only chooses the input) and say so.

This module is their registry (:data:`SERVICE_PROBES`, in display order; :data:`IN_SANDBOX`)
and re-exports what runs them. One module per attacked service holds each probe's set-up, the
host's side of its steps and its judge: :mod:`~hiclaw.sandbox.service_storage`
(``result_link_swap``, ``skills_folder_link``), :mod:`~hiclaw.sandbox.service_gateway`,
:mod:`~hiclaw.sandbox.service_fetch` (``ssrf_address_forms``), :mod:`~hiclaw.sandbox.service_gate`
(``worker_wakes_worker``, ``turn_limit``) and :mod:`~hiclaw.sandbox.service_flood`;
:mod:`~hiclaw.sandbox.service_rig` sets them up around a run and judges (:class:`ServiceRig`,
:func:`service_rig`); :mod:`~hiclaw.sandbox.service_components` has what they share
(:class:`ServiceComponents` makes each attacked component replaceable, so a test can show that a
probe says EXPOSED against a weakened one; :class:`ServiceOptions`); the loopback stand-ins are in
:mod:`~hiclaw.sandbox.service_loopback`.
"""
from __future__ import annotations

from hiclaw.sandbox.service_components import (
    NO_SANDBOX,
    OTHER,
    ServiceComponents,
    ServiceOptions,
    Verdict,
    fd_count,
    local_storage,
    mention_gate,
    skill_service,
)
from hiclaw.sandbox.service_fetch import SSRF_FORMS
from hiclaw.sandbox.service_flood import FLOOD_CONNECTIONS, SOCKETS_INSIDE
from hiclaw.sandbox.service_loopback import Answering, Recorder
from hiclaw.sandbox.service_rig import ServiceRig, quiet_logs, service_rig
from hiclaw.sandbox.service_storage import READS, RESULT_CONTENT, SKILL, TASK

#: (probe name, what it tries) — the service probes, in display order.
SERVICE_PROBES = [
    ("result_link_swap", "make a control-plane read of its result.md follow a link to secrets.toml"),
    ("skills_folder_link", "swap its read-only skills folder for a link, so a skill install writes elsewhere"),
    ("gateway_parameters", "make the gateway send the provider key elsewhere (api_base, base_url, extra_headers)"),
    ("ssrf_address_forms", "make a skill fetch reach an internal port (127.1, 2130706433, [::ffff:127.0.0.1], …)"),
    ("worker_wakes_worker", "start another worker's turn with a mention (a worker-to-worker loop)"),
    ("turn_limit", "start more turns in one room than the per-room turn limit"),
    ("connection_flood", "hold ~500 bridge connections to exhaust the control plane's descriptors"),
]
#: Probes whose attack runs inside the sandbox (the others run on the host only).
IN_SANDBOX = frozenset({"result_link_swap", "skills_folder_link", "gateway_parameters", "connection_flood"})

__all__ = [
    "FLOOD_CONNECTIONS", "IN_SANDBOX", "NO_SANDBOX", "OTHER", "READS", "RESULT_CONTENT", "SERVICE_PROBES", "SKILL",
    "SOCKETS_INSIDE", "SSRF_FORMS", "TASK", "Answering", "Recorder", "ServiceComponents", "ServiceOptions", "ServiceRig",
    "Verdict", "fd_count", "local_storage", "mention_gate", "quiet_logs", "service_rig", "skill_service",
]
