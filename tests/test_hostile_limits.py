"""Default limits of a bwrap worker (issue 14): a fork bomb and a memory hog from a hostile
worker's own ``run_command`` are contained, and the control plane goes on answering.

The worker ``mallory`` runs in a live team with the defaults (512 processes, 2 GiB, 4096 open
files). Where the control plane can create cgroups (root here: cgroup v1 ``pids`` and
``memory``) they are per-sandbox cgroup limits; elsewhere rlimits (see
:mod:`hiclaw.sandbox.limits`). Before the defaults there was no limit at all: the bomb forked
as far as it wanted (it stops itself at 1500) and the hog got its 4 GiB.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from hiclaw.sandbox.limits import plan_limits
from hiclaw.sandbox.settings import BwrapSettings, ProcessSettings
from hiclaw.storage import layout
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import Team, running_team, wait_until

PY = sys.executable
ATTACKER, VICTIM = "mallory", "bob"
needs_bwrap = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))
module_loop = pytest.mark.asyncio(loop_scope="module")
BOMB_CAP = 1500  # the bomb stops itself here, so that the test cannot take the machine down without limits

#: Forks until the kernel refuses (or BOMB_CAP), holds the children, reports to ./bomb.json, then
#: lets them go when ./stop-bomb appears.
BOMB = r'''
import json, os, signal, sys, time
children, error = [], None
while len(children) < int(sys.argv[1]):
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.strerror
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    children.append(pid)
def report(phase):
    with open("bomb.tmp", "w") as fh:
        json.dump({"phase": phase, "forked": len(children), "error": error}, fh)
    os.replace("bomb.tmp", "bomb.json")
report("holding")
end = time.monotonic() + 120
while not os.path.exists("stop-bomb") and time.monotonic() < end:
    time.sleep(0.1)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
report("stopped")
'''

#: Allocates (and touches) 64 MiB at a time up to 4 GiB, printing how far it got.
HOG = r'''
import sys
chunks = []
for step in range(1, 65):
    chunks.append(b"\1" * (64 << 20))
    print("HOG MiB", step * 64, flush=True)
print("HOG got everything", flush=True)
'''


def run(command: str) -> list[dict]:
    return [{"name": "run_command", "arguments": {"command": command, "timeout_seconds": 120}}]


SCENARIO = {"agents": {
    ATTACKER: {"rules": [
        {"when": {"role": "user", "contains": "bomb"},
         "tool_calls": run(f"cat > bomb.py <<'PYEOF'\n{BOMB}\nPYEOF\n"
                           f"nohup {PY} bomb.py {BOMB_CAP} > bomb.log 2>&1 &\necho bomb started")},
        {"when": {"role": "user", "contains": "hog"},
         "tool_calls": run(f"{PY} - <<'PYEOF'\n{HOG}\nPYEOF\necho \"HOG exit=$?\"")},
        {"when": {"tool_result": "run_command", "contains": "bomb started"}, "text": "bombing"},
        {"when": {"tool_result": "run_command", "regex": r"(?s)(?P<hog_out>.*HOG exit.*)"}, "text": "hogged"},
    ], "default": {"text": "mallory heard: {{input}}"}},
    VICTIM: {"default": {"text": "bob heard: {{input}}"}},
    "*": {"default": {"text": "ok"}},
}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def team(tmp_path_factory) -> AsyncIterator[Team]:
    if bwrap_unavailable() is not None:
        pytest.skip(str(bwrap_unavailable()))
    async with running_team(tmp_path_factory.mktemp("limits") / "home", SCENARIO, sandbox="bwrap") as live:
        for name in (ATTACKER, VICTIM):
            await live.plane.provisioner.create_worker(name, role="tester")
        yield live


async def room_of(team: Team, name: str) -> str:
    room = await team.plane.chat.worker_room(name)
    await wait_until(lambda: room in team.admin.room_names, what=f"the admin in {name}'s room")
    return room


async def ask(team: Team, name: str, text: str, reply: str, timeout: float = 30) -> float:
    """Mention ``name`` with ``text``; seconds until its reply containing ``reply``."""
    started = time.monotonic()
    await team.admin.send(await room_of(team, name), f"@{name} {text}", mention=team.user_id(name))
    await team.wait_for_message(reply, sender=name, timeout=timeout)
    return time.monotonic() - started


async def control_status(team: Team) -> tuple[int, float]:
    doc = json.loads((team.home / "run" / "control.json").read_text())
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{doc['url']}/v1/status", headers={"Authorization": f"Bearer {doc['token']}"})
    return response.status_code, time.monotonic() - started


def workspace(team: Team, name: str) -> Path:
    return Path(team.plane.storage.local_path(layout.agent_workspace(name).rstrip("/")))


@needs_bwrap
@module_loop
async def test_a_fork_bomb_is_contained_and_the_control_plane_answers(team):
    plane = team.plane
    backend = plane.components["sandbox"]
    assert backend.settings.max_processes == 512  # the default
    await ask(team, VICTIM, "before", "bob heard")
    await team.admin.send(await room_of(team, ATTACKER), "@mallory bomb", mention=team.user_id(ATTACKER))
    bomb_file = workspace(team, ATTACKER) / "bomb.json"

    def bomb() -> dict | None:
        try:
            return json.loads(bomb_file.read_text())
        except (OSError, ValueError):
            return None

    report = await wait_until(lambda: (b := bomb()) and b["phase"] == "holding" and b, timeout=120,
                              what="the fork bomb to hit its limit")
    assert report["forked"] < 512 and report["error"] == "Resource temporarily unavailable", report
    cgroup = backend._runs[ATTACKER].cgroup
    if cgroup is not None:  # cgroups here: the kernel's own count of the sandbox's processes and threads
        assert cgroup.usage()["pids"] <= 512
    # While the bomb holds everything it got: the control plane forks, answers, and runs others' turns.
    proc = await asyncio.create_subprocess_exec("/bin/true")
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    status, seconds = await control_status(team)
    assert status == 200 and seconds < 5, (status, seconds)
    assert await ask(team, VICTIM, "during the bomb", "during the bomb") < 15

    (workspace(team, ATTACKER) / "stop-bomb").write_text("")
    await wait_until(lambda: (b := bomb()) and b["phase"] == "stopped", timeout=60, what="the bomb to let go")
    await ask(team, ATTACKER, "still there?", "still there")  # contained: the worker itself carries on
    assert (await plane.supervisor.backend_status(ATTACKER))["restarts"] == 0


@needs_bwrap
@module_loop
async def test_a_memory_hog_is_stopped_at_the_limit(team):
    plane = team.plane
    backend = plane.components["sandbox"]
    assert backend.settings.memory_mb == 2048  # the default
    await team.admin.send(await room_of(team, ATTACKER), "@mallory hog", mention=team.user_id(ATTACKER))
    await team.wait_for_message("hogged", sender=ATTACKER, timeout=120)
    output = team.model.engine.stats()["agents"][ATTACKER]["variables"]["hog_out"]
    reached = [int(mib) for mib in re.findall(r"HOG MiB (\d+)", output)]
    assert "HOG got everything" not in output and reached and max(reached) < 2048, output[-500:]
    if backend._runs[ATTACKER].cgroup is not None:
        assert "HOG exit=137" in output  # the cgroup's OOM killer took the hog (and only the hog)
    else:
        assert "MemoryError" in output  # RLIMIT_AS
    status, seconds = await control_status(team)
    assert status == 200 and seconds < 5
    await ask(team, ATTACKER, "are you alive?", "are you alive")  # the worker itself was not the victim
    assert (await plane.supervisor.backend_status(ATTACKER))["restarts"] == 0


# --------------------------------------------------------------------------- how each limit applies


@needs_bwrap
async def test_without_cgroups_the_limits_are_rlimits(sandbox_backend, worker_spec):
    """``cgroups = false``: memory becomes RLIMIT_AS (a hog gets MemoryError); the process limit
    is RLIMIT_NPROC inside the user namespace — except for root, which it does not bind (then the
    plan says there is none instead of pretending)."""
    backend = sandbox_backend("bwrap", cgroups=False, memory_mb=256)
    plan = backend.limits
    assert plan.tree is None and plan.rlimits["--rlimit-as"] == 256 << 20 and plan.rlimits["--rlimit-nofile"] == 4096
    if os.geteuid() == 0:
        assert "--rlimit-nproc" not in plan.rlimits and plan.how["processes"].startswith("NONE")
    else:
        assert plan.rlimits["--rlimit-nproc"] == 512
    await backend.start(worker_spec([PY, "-c", "import resource\n"
                                              "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
                                              "try:\n    b'x' * (512 << 20)\nexcept MemoryError:\n    print('MemoryError')"]))
    assert await backend.wait("w1") == 0
    lines = [ln for ln in backend.log_path("w1").read_text().splitlines() if not ln.startswith("---")]
    assert lines == ["(4096, 4096)", "MemoryError"]


@needs_bwrap
async def test_cgroup_limits_bind_the_whole_sandbox(sandbox_backend, worker_spec):
    """Where cgroups can be made: one per run, with the limits, gone when the run ends."""
    backend = sandbox_backend("bwrap", max_processes=40, memory_mb=128)
    if backend.limits.tree is None:
        pytest.skip(f"no cgroups here: {backend.limits.how['processes']}")
    threads = ("import threading, time\nstarted = 0\ntry:\n    for _ in range(100):\n"
               "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); started += 1\n"
               "except RuntimeError:\n    pass\nprint(started)")
    await backend.start(worker_spec([PY, "-c", threads]))
    cgroup = backend._runs["w1"].cgroup
    assert cgroup is not None and all(p.exists() for p in cgroup.paths)
    assert await backend.wait("w1") == 0
    started = int(backend.log_path("w1").read_text().splitlines()[-2])
    assert 20 < started < 40  # threads count: the launcher's and the program's, all in one cgroup
    assert not any(p.exists() for p in cgroup.paths)  # removed with the run


def test_the_plan_names_how_each_limit_applies(tmp_path):
    """What ``hiclaw sandbox check`` prints: one line per limit, saying which mechanism applies."""
    plan = plan_limits(BwrapSettings(), tmp_path, user_namespace=True)
    assert set(plan.how) == {"memory", "processes", "open_files"}
    assert plan.how["open_files"] == "4096 per process (RLIMIT_NOFILE)"
    if plan.tree is not None:
        assert "cgroup v" in plan.how["memory"] and "--rlimit-as" not in plan.rlimits
    else:
        assert "RLIMIT_AS" in plan.how["memory"]
    process_plan = plan_limits(ProcessSettings(cgroups=False, max_processes=64), tmp_path, user_namespace=False)
    assert process_plan.how["processes"].startswith("NONE") and "--rlimit-nproc" not in process_plan.rlimits
    assert process_plan.how["memory"] == "none (memory_mb is not set)"


@needs_bwrap
async def test_sandbox_check_says_which_limits_apply(tmp_path):
    """``hiclaw sandbox check`` reports, beside its probes, how memory, processes, open files and
    syscalls are limited — and warns where a limit does not apply."""
    from hiclaw.sandbox.backends.bwrap import BwrapBackend
    from hiclaw.sandbox.check import run_check

    report = await run_check("bwrap", lambda ctx: BwrapBackend(ctx=ctx), real_control_home=tmp_path)
    assert report.passed
    assert set(report.confinement) == {"memory", "processes", "open_files", "seccomp"}
    assert report.confinement["seccomp"].startswith("38 syscalls denied (EPERM)")
    assert report.confinement["open_files"] == "4096 per process (RLIMIT_NOFILE)"
    unlimited = [what for what, how in report.confinement.items() if how.startswith("NONE")]
    assert [w for w in report.warnings if w.startswith("WARNING: ")] == [
        f"WARNING: {what}: {report.confinement[what]}" for what in unlimited]
    off = await run_check("bwrap", lambda ctx: BwrapBackend(BwrapSettings(seccomp=False), ctx=ctx),
                          real_control_home=tmp_path)
    assert off.confinement["seccomp"].startswith("OFF") and any("seccomp: OFF" in w for w in off.warnings)
