"""The team on real components: Synapse, the gateway with the scripted model, bwrap workers."""
from __future__ import annotations

import json
import subprocess
import sys

from hiclaw.testing import clean_env
from hiclaw.testing.team import running_team, wait_until

CREATE_ALEX = {
    "manager": {"rules": [
        {"when": {"role": "user", "contains": "create alex"},
         "tool_calls": [{"name": "create_worker", "arguments": {"name": "alex", "role": "researcher"}}]},
        {"when": {"tool_result": "create_worker"}, "text": "alex is ready"},
    ], "default": {"text": "manager: {{input}}"}},
    "alex": {"default": {"text": "alex heard: {{input}}"}},
}


def test_demo_command_passes(tmp_path):
    """The README's main command, end to end: exit 0 only if the final state is exactly right."""
    env = clean_env()
    result = subprocess.run([sys.executable, "-m", "hiclaw", "demo", "--home", str(tmp_path / "demo"), "--timeout", "120"],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo PASSED" in result.stdout
    assert "FAIL" not in result.stdout
    # What the demo left behind, as `hiclaw project|task` show it (the state DB and storage).
    env["HICLAW_HOME"] = str(tmp_path / "demo")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "hiclaw", *args], capture_output=True, text=True, env=env,
                              timeout=120, check=False)

    plan = cli("project", "show", "proj-001").stdout
    assert plan.count("- [x] task-") == 6 and "task-006 Add model-selection guidance — @sam (after task-003; revision of task-004" in plan
    task = json.loads(cli("task", "show", "task-004", "--json").stdout)
    assert task["attempts"] == 2 and task["result_status"] == "SUCCESS" and "attempt: 2" in task["spec"]
    assert task["result_markdown"].startswith("---\ntask: task-004")
    assert [t["id"] for t in json.loads(cli("task", "list", "--assignee", "sam", "--json").stdout)] == \
        ["task-002", "task-003", "task-006"]


async def test_unmentioned_messages_cost_no_llm_call_and_come_back_as_context(tmp_path):
    async with running_team(tmp_path / "home", {"agents": CREATE_ALEX}) as team:
        await team.tell_manager("@manager please create alex")
        await team.wait_for_message("alex is ready")
        room = await team.plane.chat.worker_room("alex")
        await wait_until(lambda: room in team.admin.room_names, what="the admin to be in alex's room")
        for number in range(12):
            await team.admin.send(room, f"chatter number {number}")
        assert team.model_calls("alex") == 0
        await team.admin.send(room, "@alex what did we say?", mention=team.user_id("alex"))
        reply = await team.wait_for_message("alex heard", sender="alex")
        assert team.model_calls("alex") == 1
        assert "chatter number 0" in reply.body and "chatter number 11" in reply.body
        assert "what did we say?" in reply.body
        usage = {row["consumer"]: row for row in await team.plane.gateway.usage(by="consumer")}
        assert usage["alex"]["calls"] == 1


def test_demo_opening_with_your_own_model(tmp_path):
    """`hiclaw demo --model ALIAS` uses the models of your config; here the "provider" behind the
    alias is the scripted server (no real model is reachable), with a key that must reach it."""
    from hiclaw.config import ModelAlias, Secrets, load_config, save_config
    from hiclaw.demo.scenario import demo_scenario
    from hiclaw.testing.gateway import running_scripted_model

    user_home = tmp_path / "me"
    with running_scripted_model(demo_scenario(), api_key="sk-provider-canary") as model:
        config = load_config(user_home, environ={})
        config.models = {alias: ModelAlias(model=f"openai/some-{alias}-model", api_base=model.base_url,
                                           api_key_secret="my_provider_key", input_cost_per_mtok=1,
                                           output_cost_per_mtok=2) for alias in ("smart", "fast", "cheap")}
        save_config(config, user_home)
        secrets = Secrets({}, user_home / "secrets.toml", environ={})
        secrets.set("my_provider_key", "sk-provider-canary")
        secrets.save()
        env = clean_env(user_home)
        result = subprocess.run([sys.executable, "-m", "hiclaw", "demo", "--model", "smart", "--home",
                                 str(tmp_path / "demo"), "--timeout", "120"], capture_output=True, text=True, env=env,
                                timeout=600, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        assert "ok   the Manager proposed a plan" in result.stdout
        assert "sk-provider-canary" not in result.stdout + result.stderr
        bad = subprocess.run([sys.executable, "-m", "hiclaw", "demo", "--model", "nope"], capture_output=True,
                             text=True, env=env, timeout=120, check=False)
        assert bad.returncode == 1 and "--model 'nope' is not a model alias" in bad.stderr
