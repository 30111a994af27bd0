"""A team on S3 storage (moto with IAM enforced: real users, keys and policies on every request).

Every new task changes its worker's grant. A worker busy with one task when the next one is
assigned must keep working with the keys it holds: the new grant applies to them at once, and
nothing is restarted.
"""
from __future__ import annotations

from hiclaw.config import StorageConfig
from hiclaw.models import TaskState
from hiclaw.storage import layout
from hiclaw.testing.team import running_team, wait_until


def call(name: str, **arguments):
    return {"name": name, "arguments": arguments}


def finish(task: str) -> list[dict]:
    return [call("write_file", path=f"shared/tasks/{task}/workspace/out.md", content=f"# {task}\n\nby rex\n"),
            call("report_result", task_id=task, status="SUCCESS", summary=f"{task} is done",
                 result_markdown=f"# {task}\n\nSee `shared/tasks/{task}/workspace/out.md`.\n")]


SCENARIO = {"agents": {
    "rex": {"rules": [
        {"when": {"role": "user", "regex": r"@rex \*\*(?P<task>task-\d+)\*\*"},
         "tool_calls": [call("read_file", path="shared/tasks/{{task}}/spec.md")]},
        # The first task takes a while: the second is assigned (a new grant) meanwhile.
        {"when": {"tool_result": "read_file", "contains": "task: task-001"}, "delay_ms": 3000,
         "tool_calls": finish("task-001")},
        {"when": {"tool_result": "read_file", "contains": "task: task-002"}, "tool_calls": finish("task-002")},
        {"when": {"tool_result": "report_result"}, "text": "Reported."},
    ]},
    "*": {"default": {"text": "ok"}},
}}


async def test_a_busy_worker_keeps_its_keys_when_its_grant_grows(tmp_path, s3_server_auth):
    storage = StorageConfig(plugin="minio", settings=s3_server_auth.settings(admin_api="iam"))
    keys = {"s3_access_key": s3_server_auth.access_key, "s3_secret_key": s3_server_auth.secret_key}
    async with running_team(tmp_path / "home", SCENARIO, storage=storage, secrets=keys) as team:
        plane = team.plane
        await plane.provisioner.create_worker("rex", role="tester")
        started_with = dict(plane.provisioner.storage_settings["rex"])
        await plane.engine.assign_adhoc("rex", "first", spec="The first job.")
        await wait_until(lambda: team.model_calls("rex") >= 2, what="rex inside its first task's slow call")
        await plane.engine.assign_adhoc("rex", "second", spec="The second job.")  # the grant grows now

        def reported() -> bool:
            return all(plane.state.task(t).state is TaskState.REVIEW for t in ("task-001", "task-002"))

        await wait_until(reported, timeout=60, what="rex to report both tasks")
        for task in ("task-001", "task-002"):
            assert (await plane.storage.get(layout.task_result(task))).decode().count(f"{task} is done") == 1
            assert await plane.storage.get(f"shared/tasks/{task}/workspace/out.md") == f"# {task}\n\nby rex\n".encode()
        assert plane.supervisor.status("rex")["restarts"] == 0  # nothing restarted, nothing re-keyed
        assert plane.provisioner.storage_settings["rex"] == started_with
        assert not any("could not finish" in m.body for m in team.admin.messages)
