"""``kill -9`` of a worker's process: the supervisor restarts it, it is back in its room, and it
carries on — the next mention is answered, and nothing it already answered is answered again."""
from __future__ import annotations

import os
import signal
import time

import pytest

from hiclaw.testing.team import running_team, wait_until

SCENARIO = {"agents": {"rex": {"default": {"text": "rex heard: {{input}}"}}, "*": {"default": {"text": "ok"}}}}


@pytest.mark.parametrize("victim", ["worker_pid", "launcher_pid"])
async def test_killed_worker_is_restarted_and_answers_again(tmp_path, victim):
    """``worker_pid``: the worker program; ``launcher_pid``: the sandbox's PID 1 (the whole sandbox goes)."""
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane = team.plane
        await plane.provisioner.create_worker("rex", role="tester")
        room = await plane.chat.worker_room("rex")
        await wait_until(lambda: room in team.admin.room_names, what="the admin in rex's room")
        await team.admin.send(room, "@rex before the crash", mention=team.user_id("rex"))
        await team.wait_for_message("before the crash", sender="rex")

        before = await plane.supervisor.backend_status("rex")
        assert before["state"] == "running" and before[victim], before
        killed_at = time.time()
        os.kill(before[victim], signal.SIGKILL)  # host pids, as the local backends report them

        async def restarted() -> dict | None:
            status = await plane.supervisor.backend_status("rex")
            ready_again = plane.provisioner.ready_at.get("rex", 0) > killed_at  # its control API ready signal
            return status if status["state"] == "running" and status["restarts"] == 1 and ready_again else None

        after = await wait_until(restarted, timeout=60, what="rex to be restarted and ready")
        assert after["exit_code"] == 128 + signal.SIGKILL  # how the sandbox reports a SIGKILL, either way
        assert after["worker_pid"] not in (None, before["worker_pid"])
        log = (team.home / "logs" / "workers" / "rex.log").read_text()
        assert log.count("hiclaw worker rex: ready") == 2 and "exited with code 137" in log

        await team.admin.send(room, "@rex after the crash", mention=team.user_id("rex"))
        await team.wait_for_message("after the crash", sender="rex")
        assert team.model_calls("rex") == 2  # the answered mention was not replayed after the restart
        replies = [m for m in team.admin.messages if m.sender == team.user_id("rex")]
        assert [("before" in m.body, "after" in m.body) for m in replies] == [(True, False), (False, True)]
