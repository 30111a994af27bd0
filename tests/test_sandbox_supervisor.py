"""The supervisor against real sandboxes: back-off, crash loops, callbacks, restart, stop, kill."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from hiclaw.errors import HiclawError, NotFoundError
from hiclaw.sandbox.supervisor import Supervisor
from hiclaw.testing import wait_until

PY = sys.executable
CRASH = [PY, "-c", "import sys; sys.exit(3)"]
SLEEP = [PY, "-c", "import time; print('up', flush=True); time.sleep(600)"]


class Events:
    def __init__(self):
        self.exits: list[tuple[str, int | None, bool, float]] = []
        self.loops: list[tuple[str, dict]] = []

    def on_exit(self, name, code, will_restart):
        self.exits.append((name, code, will_restart, time.monotonic()))

    async def on_crash_loop(self, name, status):  # coroutine callbacks are awaited
        self.loops.append((name, status))


async def test_crashes_restart_with_exponential_backoff_then_stop_as_a_crash_loop(sandbox_backend, worker_spec):
    events = Events()
    sup = Supervisor(sandbox_backend("process"), backoff_base=0.1, backoff_max=0.4, crash_loop_count=4,
                     crash_loop_window=60, on_exit=events.on_exit, on_crash_loop=events.on_crash_loop)
    await sup.start(worker_spec(CRASH))
    await wait_until(lambda: events.loops, timeout=30, what="the crash loop to be detected")
    assert [e[1:3] for e in events.exits] == [(3, True), (3, True), (3, True), (3, False)]
    gaps = [b[3] - a[3] for a, b in zip(events.exits, events.exits[1:], strict=False)]
    for gap, backoff in zip(gaps, (0.1, 0.2, 0.4), strict=True):  # each wait at least the doubled back-off
        assert gap >= backoff
    status = sup.status("w1")
    assert status["state"] == "crash-loop" and status["restarts"] == 3 and status["exit_code"] == 3
    assert events.loops[0][0] == "w1" and events.loops[0][1]["state"] == "crash-loop"
    assert sup.status() == [status]


@pytest.mark.parametrize("policy, restarted", [("on-failure", False), ("always", True), ("never", False)])
async def test_restart_policy_for_clean_exits(sandbox_backend, worker_spec, policy, restarted):
    events = Events()
    sup = Supervisor(sandbox_backend("process"), backoff_base=0.05, restart_policy=policy, crash_loop_count=2,
                     on_exit=events.on_exit)
    await sup.start(worker_spec([PY, "-c", "pass"]))
    if restarted:
        await wait_until(lambda: sup.status("w1")["restarts"] >= 1, timeout=30, what="a restart")
        await sup.stop("w1")
    else:
        await wait_until(lambda: sup.status("w1")["state"] == "exited", timeout=30, what="the exit")
        assert events.exits[0][1:3] == (0, False) and sup.status("w1")["restarts"] == 0


async def test_stop_during_backoff_cancels_the_restart(sandbox_backend, worker_spec):
    backend = sandbox_backend("process")
    sup = Supervisor(backend, backoff_base=30, backoff_max=60)
    await sup.start(worker_spec(CRASH))
    await wait_until(lambda: sup.status("w1")["state"] == "backoff", timeout=30, what="the back-off")
    assert 0 < sup.status("w1")["next_restart_in"] <= 30
    started = time.monotonic()
    await sup.stop("w1")
    assert time.monotonic() - started < 10
    assert sup.status("w1")["state"] == "stopped" and sup.status("w1")["restarts"] == 0


async def test_manual_restart_replaces_the_run_and_resets_counters(sandbox_backend, worker_spec):
    events = Events()
    backend = sandbox_backend("process")
    sup = Supervisor(backend, on_exit=events.on_exit)
    spec = worker_spec(SLEEP)
    await sup.start(spec)
    first_pid = (await backend.status("w1"))["pid"]
    with pytest.raises(HiclawError, match="already supervised"):
        await sup.start(spec)
    status = await sup.restart("w1", spec.model_copy(update={"env": {"GENERATION": "2"}}))
    assert status["state"] == "running" and status["restarts"] == 1
    assert (await backend.status("w1"))["pid"] != first_pid
    assert events.exits[0][2] is True  # the replaced run's exit was reported as "will restart"
    assert (await sup.backend_status("w1"))["state"] == "running"
    with pytest.raises(NotFoundError):
        await sup.restart("nobody")
    await sup.close()
    assert sup.status("w1")["state"] == "stopped" and (await backend.status("w1"))["state"] == "exited"


async def test_a_failing_callback_does_not_stop_supervision(sandbox_backend, worker_spec):
    def broken(*_):
        raise RuntimeError("callback bug")

    sup = Supervisor(sandbox_backend("process"), backoff_base=0.05, crash_loop_count=3, on_exit=broken)
    seen = []
    sup.on_crash_loop(lambda name, status: seen.append(name))
    await sup.start(worker_spec(CRASH))
    await wait_until(lambda: seen, timeout=30, what="the crash loop callback")
    assert sup.status("w1")["restarts"] == 2


async def test_start_failures_during_restarts_count_as_crashes(sandbox_backend, worker_spec):
    seen = []
    sup = Supervisor(sandbox_backend("process"), backoff_base=0.05, crash_loop_count=3,
                     on_crash_loop=lambda name, status: seen.append(status))
    spec = worker_spec(CRASH)
    await sup.start(spec)
    spec.home.rmdir()  # every restart now fails before the sandbox starts
    await wait_until(lambda: seen, timeout=30, what="the crash loop")
    assert seen[0]["state"] == "crash-loop" and "does not exist" in seen[0]["error"]


async def test_first_start_failure_raises(sandbox_backend, worker_spec):
    sup = Supervisor(sandbox_backend("process"))
    with pytest.raises(HiclawError, match="did not start"):
        await sup.start(worker_spec(["/nonexistent/worker"]))
    assert sup.status("w1")["state"] == "stopped"


async def test_a_killed_bwrap_worker_is_restarted(sandbox_backend, worker_spec):
    events = Events()
    backend = sandbox_backend("bwrap")
    sup = Supervisor(backend, backoff_base=0.05, on_exit=events.on_exit)
    await sup.start(worker_spec(SLEEP))
    status = await backend.status("w1")
    launcher = status["launcher_pid"]
    assert status["worker_pid"] not in (None, launcher, status["pid"])
    cmdline = Path(f"/proc/{status['worker_pid']}/cmdline")
    await wait_until(lambda: b"time.sleep(600)" in cmdline.read_bytes(), timeout=30, what="the worker's exec")
    os.kill(status["worker_pid"], signal.SIGKILL)  # the worker program itself dies
    await wait_until(lambda: sup.status("w1")["restarts"] == 1 and sup.status("w1")["state"] == "running",
                         timeout=30, what="the restart")
    assert events.exits[0][1] == 128 + signal.SIGKILL and events.exits[0][2] is True
    assert (await backend.status("w1"))["launcher_pid"] != launcher
    await asyncio.wait_for(sup.close(), 30)


def test_bad_supervisor_settings():
    with pytest.raises(ValueError):
        Supervisor(object(), backoff_base=0)
    with pytest.raises(ValueError):
        Supervisor(object(), backoff_base=2, backoff_max=1)
    with pytest.raises(ValueError):
        Supervisor(object(), crash_loop_count=0)
