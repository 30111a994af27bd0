"""Every hook hiclaw calls, grouped by lifecycle.

Plugins implement these with ``@hiclaw.hookimpl``. The host never calls ``pm.hook.*``
directly: :class:`hiclaw.host.PluginHost` has one typed method per hook.

Lifecycle, in the order hooks fire:

1. **Registration** (``hiclaw_register_*``) — when the host loads plugins. Each hook receives a
   ``register`` callback; a plugin calls it once per capability it provides. Nothing is
   started here: factories run later, with validated settings.
2. **Command line** (``hiclaw_register_commands``) — when the ``hiclaw`` CLI starts.
3. **Run-time events** (``hiclaw_startup`` … ``hiclaw_shutdown``) — broadcast to every plugin
   while the control plane or a worker runs. An event hook may return ``None``, a value, or an
   awaitable; the host awaits what needs awaiting. An event hook that raises is reported with
   the plugin's name and does not stop the others.

Every hook here is documented in ``docs/plugins/hooks.md`` with its exact signature and has a
``test_hook_<name>`` test; a meta-test checks both.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hiclaw import hookspec

if TYPE_CHECKING:  # pragma: no cover - types only
    import click

    from hiclaw.host import RuntimeContext
    from hiclaw.models import ChatMessage, ModelRequest, TaskRecord, TaskResult
    from hiclaw.protocols import (
        RegisterChannel,
        RegisterGateway,
        RegisterSandbox,
        RegisterSkillRegistry,
        RegisterStorage,
        RegisterTools,
    )


# --------------------------------------------------------------------------- registration


@hookspec
def hiclaw_register_channels(register: RegisterChannel) -> None:
    """Register chat channels (how agents and the human talk), e.g. Matrix.

    :param register: ``register(name, factory, *, settings_model=None, secrets=(),
        description="")``. ``factory(settings, ctx)`` returns an object implementing
        :class:`hiclaw.protocols.Channel`; ``settings`` is an instance of ``settings_model``
        validated from ``[channel.settings]``; ``ctx`` is a :class:`hiclaw.host.ComponentContext`.
    """


@hookspec
def hiclaw_register_gateways(register: RegisterGateway) -> None:
    """Register AI gateways (hold real provider keys, issue consumer tokens, meter usage).

    :param register: as for :func:`hiclaw_register_channels`; the factory returns a
        :class:`hiclaw.protocols.Gateway`; settings come from ``[gateway.settings]``.
    """


@hookspec
def hiclaw_register_storage(register: RegisterStorage) -> None:
    """Register shared storage backends (where specs, results and workspaces live).

    :param register: as for :func:`hiclaw_register_channels`; the factory returns a
        :class:`hiclaw.protocols.Storage`; settings come from ``[storage.settings]``.
    """


@hookspec
def hiclaw_register_skill_registries(register: RegisterSkillRegistry) -> None:
    """Register skill registries (where workers find and fetch SKILL.md packages).

    :param register: as for :func:`hiclaw_register_channels`; the factory returns a
        :class:`hiclaw.protocols.SkillRegistry`; settings come from ``[skills]``.
    """


@hookspec
def hiclaw_register_sandboxes(register: RegisterSandbox) -> None:
    """Register sandbox backends (how a worker process is isolated), e.g. bubblewrap.

    :param register: as for :func:`hiclaw_register_channels`; the factory returns a
        :class:`hiclaw.protocols.SandboxBackend`; settings come from ``[sandbox.settings]``.
    """


@hookspec
def hiclaw_register_tools(register: RegisterTools) -> None:
    """Register tools that agents may call (the Manager's and the Workers').

    :param register: ``register(name, factory, *, description="")`` where
        ``factory(ctx)`` returns a :class:`hiclaw.models.ToolSpec` (or a list of them) for
        the agent described by ``ctx`` (a :class:`hiclaw.host.ComponentContext`; ``ctx.side``
        is ``"control"`` for the Manager and ``"worker"`` for a Worker). Return ``[]`` to offer
        nothing to that agent.
    """


# --------------------------------------------------------------------------- command line


@hookspec
def hiclaw_register_commands(cli: click.Group) -> None:
    """Add commands or command groups to the ``hiclaw`` command line.

    :param cli: the top-level :class:`click.Group`; call ``cli.add_command(...)``. Keep the
        module import light: this hook runs on every ``hiclaw`` invocation.
    """


# --------------------------------------------------------------------------- run-time events


@hookspec
def hiclaw_startup(ctx: RuntimeContext) -> Any:
    """The control plane or a worker has created its components and is about to serve.

    :param ctx: a :class:`hiclaw.host.RuntimeContext`: ``ctx.side`` (``"control"`` or
        ``"worker"``), ``ctx.agent`` (the agent's name on the worker side), ``ctx.home``,
        ``ctx.config`` and the live components (``ctx.components``, by kind).
    :returns: ``None`` or an awaitable (awaited before serving starts).
    """


@hookspec
def hiclaw_on_message(message: ChatMessage, ctx: RuntimeContext) -> Any:
    """A chat message arrived for an agent (before mention gating: fires for every message).

    :param message: the :class:`hiclaw.models.ChatMessage` (room, sender, body, mentions).
    :param ctx: the receiving side's :class:`hiclaw.host.RuntimeContext`.
    :returns: ``None`` or an awaitable. Return values are ignored; this hook observes.
    """


@hookspec
def hiclaw_before_model_call(request: ModelRequest, ctx: RuntimeContext) -> Any:
    """An agent is about to call the model through the gateway.

    :param request: the :class:`hiclaw.models.ModelRequest` (agent, model alias, messages,
        tools, task id). Plugins may modify it in place (e.g. add a system note).
    :param ctx: the calling side's :class:`hiclaw.host.RuntimeContext`.
    :returns: ``None`` or an awaitable.
    """


@hookspec
def hiclaw_after_task(task: TaskRecord, result: TaskResult, ctx: RuntimeContext) -> Any:
    """A task reached a final state (accepted, blocked or cancelled) in the control plane.

    :param task: the :class:`hiclaw.models.TaskRecord` as stored.
    :param result: the :class:`hiclaw.models.TaskResult` the worker reported (status, summary).
    :param ctx: the control plane's :class:`hiclaw.host.RuntimeContext`.
    :returns: ``None`` or an awaitable.
    """


@hookspec
def hiclaw_budget_warning(scope: str, name: str, spent_usd: float, budget_usd: float, ctx: RuntimeContext) -> Any:
    """A gateway budget is nearly spent: a call took spending past 80 % of it (once per crossing).

    :param scope: ``"consumer"`` (an agent's consumer token) or ``"project"`` (calls tagged
        ``X-Hiclaw-Project``).
    :param name: the consumer name or the project id.
    :param spent_usd: what has been spent so far, in USD, including the call that crossed.
    :param budget_usd: the budget, in USD. At 100 % the gateway refuses calls with 429.
    :param ctx: the gateway's :class:`hiclaw.host.RuntimeContext` (``side == "control"``;
        ``ctx.components["gateway"]`` is the gateway).
    :returns: ``None`` or an awaitable. Return values are ignored; this hook observes.
    """


@hookspec
def hiclaw_shutdown(ctx: RuntimeContext) -> Any:
    """The control plane or a worker is stopping (after serving ends, before exit).

    :param ctx: the stopping side's :class:`hiclaw.host.RuntimeContext`.
    :returns: ``None`` or an awaitable.
    """
