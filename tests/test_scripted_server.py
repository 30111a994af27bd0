"""The scripted model server: scenario validation, turn selection, and the OpenAI wire format."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from hiclaw.errors import InvalidInputError
from hiclaw.scripted import load_scenario, parse_scenario
from hiclaw.scripted.engine import ScenarioError, ScriptEngine, latest_input
from hiclaw.testing.gateway import running_scripted_model

MANAGER_SCENARIO = {
    "name": "manager-flow",
    "agents": {
        "manager": {
            "turns": [
                {"when": {"contains": "build"}, "tool_calls": [
                    {"name": "create_worker", "arguments": {"name": "alice", "role": "coder"}}]},
                {"when": {"tool_result": "create_worker"}, "tool_calls": [
                    {"name": "create_project", "arguments": {"title": "Site", "goal": "build it"}}]},
                {"when": {"tool_result": "create_project", "regex": r'"project_id": "(?P<project>[a-z0-9-]+)"'},
                 "tool_calls": [{"name": "propose_plan", "arguments": {"project_id": "{{project}}", "tasks": []}}]},
                {"text": "Plan proposed for {{project}}; please confirm."},
            ],
            "rules": [
                {"when": {"regex": r"(?P<task>task-\d+) .*REVISION", "not_contains": "final"}, "times": 1,
                 "tool_calls": [{"name": "request_revision",
                                 "arguments": {"task_id": "{{task}}", "feedback": "add tests", "assignee": "alice"}}]},
                {"when": {"regex": r"(?P<task>task-\d+) (done|reported)"},
                 "tool_calls": [{"name": "accept_task", "arguments": {"task_id": "{{task}}", "note": "good"}}]},
            ],
            "default": {"text": "Nothing to do ({{call}})."},
        },
        "*": {"default": {"text": "hello {{agent}}", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}},
    },
}


def _user(text):
    return {"role": "user", "content": text}


def _tool_result(engine_reply, content):
    call = engine_reply.tool_calls[0]
    return [{"role": "assistant", "content": None, "tool_calls": engine_reply.tool_calls},
            {"role": "tool", "tool_call_id": call["id"], "content": content}]


def test_manager_script_walks_ordered_turns_and_captures_variables():
    engine = ScriptEngine(parse_scenario(MANAGER_SCENARIO))
    messages = [_user("please build a site")]
    first = engine.reply({"messages": messages}, agent="manager")
    assert first.source == "turn 1" and first.tool_calls[0]["function"]["name"] == "create_worker"
    assert json.loads(first.tool_calls[0]["function"]["arguments"]) == {"name": "alice", "role": "coder"}
    messages += _tool_result(first, "worker alice created")
    second = engine.reply({"messages": messages}, agent="manager")
    assert second.tool_calls[0]["function"]["name"] == "create_project"
    messages += _tool_result(second, '{"project_id": "proj-7f3a"}')
    third = engine.reply({"messages": messages}, agent="manager")
    assert json.loads(third.tool_calls[0]["function"]["arguments"])["project_id"] == "proj-7f3a"
    messages += _tool_result(third, "plan stored")
    fourth = engine.reply({"messages": messages}, agent="manager")
    assert fourth.text == "Plan proposed for proj-7f3a; please confirm." and fourth.finish_reason == "stop"
    # Ordered turns are used up: results are judged by the rules (revision once, then accept).
    revision = engine.reply({"messages": [_user("@manager task-002 reported: REVISION_NEEDED")]}, agent="manager")
    assert json.loads(revision.tool_calls[0]["function"]["arguments"]) == {
        "task_id": "task-002", "feedback": "add tests", "assignee": "alice"}
    again = engine.reply({"messages": [_user("@manager task-002 reported: REVISION_NEEDED")]}, agent="manager")
    assert again.tool_calls[0]["function"]["name"] == "accept_task"  # `times: 1` used up
    assert engine.reply({"messages": [_user("how are you")]}, agent="manager").text == "Nothing to do (7)."
    assert engine.stats()["agents"]["manager"]["variables"] == {"project": "proj-7f3a", "task": "task-002"}


def test_guarded_turn_waits_and_unmatched_calls_are_counted():
    engine = ScriptEngine(parse_scenario({"agents": {"w": {"turns": [{"when": {"role": "tool"}, "text": "after tool"}]}}}))
    reply = engine.reply({"messages": [_user("hi")]}, agent="w")
    assert reply.source == "unmatched" and "no turn" in reply.text
    tool_messages = [_user("hi"), {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "x", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    assert latest_input(tool_messages).tool_names == ("x",)  # name found through the call id
    assert engine.reply({"messages": tool_messages}, agent="w").text == "after tool"
    assert engine.stats()["agents"]["w"]["unmatched"] == 1


def test_usage_is_deterministic_and_explicit_usage_wins():
    engine = ScriptEngine(parse_scenario(MANAGER_SCENARIO))
    a = engine.reply({"messages": [_user("x" * 400)]}, agent="someone")
    b = engine.reply({"messages": [_user("x" * 400)]}, agent="someone")
    assert (a.prompt_tokens, a.completion_tokens) == (b.prompt_tokens, b.completion_tokens) == (7, 3)
    m1 = engine.reply({"messages": [_user("x" * 400)]}, agent="manager")
    m2 = ScriptEngine(parse_scenario(MANAGER_SCENARIO)).reply({"messages": [_user("x" * 4000)]}, agent="manager")
    assert 100 <= m1.prompt_tokens < m2.prompt_tokens  # grows with the prompt


def test_unknown_agent_and_missing_variable_are_scenario_errors():
    engine = ScriptEngine(parse_scenario({"agents": {"a": {"default": {"text": "{{never}}"}}}}))
    with pytest.raises(ScenarioError, match="no script for agent 'b'"):
        engine.reply({"messages": [_user("x")]}, agent="b")
    with pytest.raises(ScenarioError, match=r"variable \{\{never\}\} was never captured"):
        engine.reply({"messages": [_user("x")]}, agent="a")


@pytest.mark.parametrize("data, message", [
    ({"agents": {}}, "agents: needs at least one agent"),
    ({"agents": {"a": {}}}, "agents.a: an agent needs at least one of"),
    ({"agents": {"a": {"turns": [{"when": {"contains": "x"}}]}}}, r"agents.a.turns\[0\]: a turn needs"),
    ({"agents": {"a": {"default": {"text": "x", "colour": 1}}}}, r"agents.a.default.colour: unknown key"),
    ({"agents": {"a": {"rules": [{"when": {"regex": "("}, "text": "x"}]}}}, "invalid regular expression"),
    ({"agents": {"a": {"default": {"tool_calls": [{"name": "t", "arguments": "{no"}]}}}}, "arguments string is not JSON"),
    ([1, 2], "must be a mapping"),
])
def test_invalid_scenarios_name_the_place(data, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_scenario(data, source="s.yaml")


def test_yaml_and_json_files_load(tmp_path):
    (tmp_path / "s.yaml").write_text("agents:\n  a:\n    default: {text: hi}\n")
    (tmp_path / "s.json").write_text(json.dumps({"agents": {"a": {"default": {"text": "hi"}}}}))
    (tmp_path / "bad.yaml").write_text("agents: [\n")
    assert load_scenario(tmp_path / "s.yaml") == load_scenario(tmp_path / "s.json")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_scenario(tmp_path / "bad.yaml")
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def served():
    scenario = {"name": "wire", "agents": {
        "coder": {"turns": [
            {"tool_calls": [{"name": "write_file", "arguments": {"path": "a.py", "content": "print('hi')\n" * 5}}]},
            {"when": {"tool_result": "write_file"}, "text": "Wrote a.py with a friendly greeting for everyone."}]},
        "flaky": {"default": {"error": {"status": 503, "message": "overloaded"}}},
        "*": {"default": {"text": "hi {{agent}}"}}}}
    with running_scripted_model(scenario, api_key="sk-scripted") as model:
        yield model


def test_openai_sdk_gets_tool_calls_then_streamed_text_with_usage(served):
    client = openai.OpenAI(base_url=served.base_url, api_key="sk-scripted")
    tools = [{"type": "function", "function": {"name": "write_file", "parameters": {"type": "object"}}}]
    first = client.chat.completions.create(model="m", messages=[_user("code it")], tools=tools, user="coder")
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "write_file" and first.choices[0].finish_reason == "tool_calls"
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens > 0
    messages = [_user("code it"), first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "ok"}]
    stream = client.chat.completions.create(model="m", messages=messages, user="coder", stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Wrote a.py with a friendly greeting for everyone." and len(chunks) > 4
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert served.hits("coder") == 2


def test_streamed_tool_call_arguments_reassemble(served):
    served.reset()
    client = openai.OpenAI(base_url=served.base_url, api_key="sk-scripted")
    stream = client.chat.completions.create(model="m", messages=[_user("go")], user="coder", stream=True)
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                        for c in stream if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(arguments)["path"] == "a.py"


def test_agent_from_header_errors_and_key_check(served):
    with httpx.Client(base_url=served.base_url) as http:
        body = {"model": "m", "messages": [_user("x")]}
        ok = http.post("/chat/completions", json=body, headers={"Authorization": "Bearer sk-scripted",
                                                                 "X-Hiclaw-Consumer": "zed"})
        assert ok.json()["choices"][0]["message"]["content"] == "hi zed"
        assert http.post("/chat/completions", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        flaky = http.post("/chat/completions", json={**body, "user": "flaky"}, headers={"Authorization": "Bearer sk-scripted"})
        assert flaky.status_code == 503 and flaky.json()["error"]["message"] == "overloaded"
        assert http.get("/models").json()["data"][0]["id"] == "scripted"
    assert [r["agent"] for r in served.requests()][-2:] == ["zed", "flaky"]


def test_cli_check_scenario(tmp_path):
    path = tmp_path / "manager.json"
    path.write_text(json.dumps(MANAGER_SCENARIO))
    out = subprocess.run([sys.executable, "-m", "hiclaw", "model", "check-scenario", str(path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["agent"]: r for r in json.loads(out)["agents"]}
    assert rows["manager"]["turns"] == 4 and "propose_plan" in rows["manager"]["tools"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  a: {turns: [{when: {contains: x}}]}\n")
    result = subprocess.run([sys.executable, "-m", "hiclaw", "model", "check-scenario", str(bad)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "a turn needs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _doc_example():
    import re

    import yaml
    from conftest import ROOT

    text = (ROOT / "docs" / "scripted-model.md").read_text()
    block = re.search(r"## Example: a Manager and a Worker.*?```yaml\n(.*?)```", text, flags=re.S).group(1)
    return parse_scenario(yaml.safe_load(block), source="docs/scripted-model.md")


def test_documented_example_runs_the_manager_and_worker_flow():
    engine = ScriptEngine(_doc_example())

    def step(agent, messages):
        reply = engine.reply({"messages": messages}, agent=agent)
        assert reply.source != "unmatched", reply.text
        return reply

    def result(reply, content):
        return _tool_result(reply, content)

    chat = [_user("@manager build a word counter")]
    names = []
    for content in ("worker alice created", '{"project_id": "proj-42"}', "plan stored"):
        reply = step("manager", chat)
        names.append(reply.tool_calls[0]["function"]["name"])
        chat += result(reply, content)
    assert names == ["create_worker", "create_project", "propose_plan"]
    assert step("manager", chat).text == "Plan for proj-42 is ready — please confirm it."
    confirm = step("manager", [_user("@manager confirm")])
    assert json.loads(confirm.tool_calls[0]["function"]["arguments"]) == {"project_id": "proj-42"}
    work = [_user("@alice please do task-001: write wc.py")]
    for expected in ("write_file", "report_result"):
        reply = step("alice", work)
        assert reply.tool_calls[0]["function"]["name"] == expected
        work += result(reply, "ok")
    assert json.loads(reply.tool_calls[0]["function"]["arguments"])["task_id"] == "task-001"
    first = step("manager", [_user("@manager alice reported task-001: SUCCESS")])
    second = step("manager", [_user("@manager alice reported task-001: SUCCESS")])
    assert [first.tool_calls[0]["function"]["name"], second.tool_calls[0]["function"]["name"]] == [
        "request_revision", "accept_task"]
