"""One test per hook: the host calls it with the documented arguments and uses what it returns.

``tests/test_meta.py`` checks that every hookspec has a ``test_hook_<name>`` here (or elsewhere).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import click
import click.testing
from pydantic import BaseModel

from hiclaw import hookimpl
from hiclaw.host import ComponentContext, RuntimeContext
from hiclaw.models import ChatMessage, ModelRequest, ResultStatus, TaskRecord, TaskResult, ToolSpec


class Settings(BaseModel):
    size: int = 1


def _capability_plugin(hook_name: str):
    class Plugin:
        pass

    def impl(register):
        register("thing", lambda settings, ctx: ("made", settings.size, ctx.side), settings_model=Settings)

    impl.__name__ = hook_name
    setattr(Plugin, hook_name, staticmethod(hookimpl(impl)))
    return Plugin()


def test_hook_hiclaw_register_channels(plugin_host, tmp_path):
    _run_capability(plugin_host, tmp_path, "hiclaw_register_channels", "channel")


def test_hook_hiclaw_register_gateways(plugin_host, tmp_path):
    _run_capability(plugin_host, tmp_path, "hiclaw_register_gateways", "gateway")


def test_hook_hiclaw_register_storage(plugin_host, tmp_path):
    _run_capability(plugin_host, tmp_path, "hiclaw_register_storage", "storage")


def test_hook_hiclaw_register_skill_registries(plugin_host, tmp_path):
    _run_capability(plugin_host, tmp_path, "hiclaw_register_skill_registries", "skill_registry")


def test_hook_hiclaw_register_sandboxes(plugin_host, tmp_path):
    _run_capability(plugin_host, tmp_path, "hiclaw_register_sandboxes", "sandbox")


def _run_capability(plugin_host, tmp_path, hook_name, kind):
    host = plugin_host(("p", _capability_plugin(hook_name)))
    assert list(host.registrations(kind)) == ["thing"]
    made = host.create(kind, "thing", {"size": 3}, ComponentContext(home=tmp_path, side="worker"))
    assert made == ("made", 3, "worker")
    assert host.plugin("p").capabilities == [f"{kind}:thing"]


def test_hook_hiclaw_register_tools(plugin_host, tmp_path):
    async def handler(args):
        return args["x"] * 2

    class Plugin:
        @hookimpl
        def hiclaw_register_tools(self, register):
            def factory(ctx):
                if ctx.side != "worker":
                    return []
                return ToolSpec(name="double", description="doubles x", handler=handler,
                                parameters={"type": "object", "properties": {"x": {"type": "integer"}}})

            register("doubler", factory)

    host = plugin_host(("p", Plugin()))
    assert host.tools(ComponentContext(home=tmp_path, side="control")) == []
    (tool,) = host.tools(ComponentContext(home=tmp_path, side="worker"))
    assert tool.openai_schema()["function"]["name"] == "double"
    assert asyncio.run(tool.handler({"x": 4})) == 8


def test_hook_hiclaw_register_commands(plugin_host):
    class Plugin:
        @hookimpl
        def hiclaw_register_commands(self, cli):
            @cli.command("hello")
            def hello():
                click.echo("hello from plugin")

    group = click.Group("root")
    plugin_host(("p", Plugin())).register_commands(group)
    result = click.testing.CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from plugin\n"


def _ctx(tmp_path: Path) -> RuntimeContext:
    return RuntimeContext(side="control", home=tmp_path)


def test_hook_hiclaw_startup(plugin_host, tmp_path):
    seen = []

    class Plugin:
        @hookimpl
        async def hiclaw_startup(self, ctx):  # awaitable results are awaited
            await asyncio.sleep(0)
            seen.append(ctx.side)

    asyncio.run(plugin_host(("p", Plugin())).startup(_ctx(tmp_path)))
    assert seen == ["control"]


def test_hook_hiclaw_on_message(plugin_host, tmp_path):
    seen = []

    class Plugin:
        @hookimpl
        def hiclaw_on_message(self, message, ctx):
            seen.append((message.body, message.mentions))

    msg = ChatMessage(room_id="!r", event_id="$e", sender="@a:x", body="hi @b", mentions=("@b:x",))
    asyncio.run(plugin_host(("p", Plugin())).on_message(msg, _ctx(tmp_path)))
    assert seen == [("hi @b", ("@b:x",))]


def test_hook_hiclaw_before_model_call(plugin_host, tmp_path):
    class Plugin:
        @hookimpl
        def hiclaw_before_model_call(self, request, ctx):
            request.messages.insert(0, {"role": "system", "content": "be brief"})

    request = ModelRequest(agent="alice", model="smart", messages=[{"role": "user", "content": "hi"}])
    asyncio.run(plugin_host(("p", Plugin())).before_model_call(request, _ctx(tmp_path)))
    assert request.messages[0] == {"role": "system", "content": "be brief"}


def test_hook_hiclaw_after_task(plugin_host, tmp_path):
    seen = []

    class Plugin:
        @hookimpl
        async def hiclaw_after_task(self, task, result, ctx):
            seen.append((task.id, result.status))

    task = TaskRecord(id="task-001", title="t", assignee="alice")
    result = TaskResult(task_id="task-001", status=ResultStatus.SUCCESS)
    asyncio.run(plugin_host(("p", Plugin())).after_task(task, result, _ctx(tmp_path)))
    assert seen == [("task-001", ResultStatus.SUCCESS)]


def test_hook_hiclaw_shutdown(plugin_host, tmp_path):
    seen = []

    class Plugin:
        @hookimpl
        def hiclaw_shutdown(self, ctx):
            seen.append("bye")

    asyncio.run(plugin_host(("p", Plugin())).shutdown(_ctx(tmp_path)))
    assert seen == ["bye"]
