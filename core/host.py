"""The plugin host: loads plugins, validates them, and is the only caller of hooks.

``PluginHost`` is a typed facade (one method per hook) over a :class:`pluggy.PluginManager`.
Plugins come from :data:`DEFAULT_PLUGINS` (modules shipped with hiclaw) and from the
``hiclaw`` entry-point group of installed distributions. A plugin that fails to import, has a
misspelt hook, or raises while registering is recorded as *broken* with its error; the host
keeps running without it.

Environment:

``HICLAW_LOAD_PLUGINS``
    Comma-separated allow-list of plugin names; only these load (``""`` loads none).
``HICLAW_DISABLE_PLUGINS``
    Comma-separated plugin names not to load (added to ``[plugins] disabled`` in config).
``HICLAW_ENTRY_POINT_PLUGINS``
    Which installed (entry-point) plugins load: unset or ``*`` all, ``""`` none, else a
    comma-separated list of names. hiclaw's pytest plugin sets it to none, so the plugins that
    happen to be installed stay out of a test suite's teams unless a test asks for them.
``HICLAW_TRACE_PLUGINS``
    Any non-empty value prints every hook call (plugin, arguments, result, time) to stderr.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pluggy
from pydantic import BaseModel, SecretStr, ValidationError

from hiclaw import PROJECT_NAME, __version__, hookspecs
from hiclaw.errors import ConfigError, PluginError

if TYPE_CHECKING:  # pragma: no cover
    import click

    from hiclaw.config import HiclawConfig
    from hiclaw.models import ChatMessage, ModelRequest, TaskRecord, TaskResult, ToolSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hiclaw"

#: Plugins shipped with hiclaw, as (name, module); every module is in the wheel. One missing from
#: an installation (a copy with parts removed) is skipped, not listed; one that fails to import
#: is listed as broken.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("matrix", "hiclaw.plugins.channels.matrix"),
    ("embedded-gateway", "hiclaw.plugins.gateways.embedded"),
    ("higress", "hiclaw.plugins.gateways.higress"),
    ("local-storage", "hiclaw.plugins.storage.local"),
    ("minio", "hiclaw.plugins.storage.minio"),
    ("skills-sh", "hiclaw.registry.plugin"),
    ("bwrap", "hiclaw.sandbox.bwrap"),
    ("process", "hiclaw.sandbox.process"),
    ("docker", "hiclaw.sandbox.docker"),
    ("kubernetes", "hiclaw.sandbox.kubernetes"),
    ("worker-tools", "hiclaw.worker.plugin"),
    ("manager-tools", "hiclaw.manager.plugin"),
)

#: Capability kinds and the registration hook that provides each.
KINDS: dict[str, str] = {
    "channel": "hiclaw_register_channels",
    "gateway": "hiclaw_register_gateways",
    "storage": "hiclaw_register_storage",
    "skill_registry": "hiclaw_register_skill_registries",
    "sandbox": "hiclaw_register_sandboxes",
    "tool": "hiclaw_register_tools",
}
Kind = Literal["channel", "gateway", "storage", "skill_registry", "sandbox", "tool"]
Side = Literal["control", "worker"]


class RegisterCallback(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        settings_model: type[BaseModel] | None = None,
        secrets: Sequence[str] | Callable[[Any], Sequence[str]] = (),
        description: str = "",
    ) -> None: ...


@dataclass(frozen=True)
class Registration:
    """One capability a plugin provides."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    settings_model: type[BaseModel] | None = None
    #: Secret names the factory needs, or a function of the config returning them (for plugins
    #: whose needs depend on configuration, e.g. one provider key per configured model alias).
    secrets: tuple[str, ...] | Callable[[Any], Sequence[str]] = ()
    description: str = ""

    def secret_names(self, config: Any) -> tuple[str, ...]:
        return tuple(self.secrets(config)) if callable(self.secrets) else self.secrets


@dataclass
class PluginInfo:
    """What ``hiclaw plugins list`` shows about one plugin."""

    name: str
    module: str
    source: Literal["default", "entry point"]
    version: str
    status: Literal["ok", "broken", "disabled"] = "ok"
    error: str | None = None
    capabilities: list[str] = field(default_factory=list)  # "channel:matrix", ...
    hooks: list[str] = field(default_factory=list)
    distribution: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "kinds": sorted({c.split(":", 1)[0] for c in self.capabilities}),
            "capabilities": self.capabilities,
            "hooks": self.hooks,
            "module": self.module,
            "distribution": self.distribution,
        }


@dataclass
class ComponentContext:
    """What a factory gets besides its settings."""

    home: Path
    side: Side = "control"
    agent: str | None = None
    config: HiclawConfig | None = None
    secrets: Mapping[str, SecretStr] = field(default_factory=dict)
    host: PluginHost | None = None
    #: For tool factories: the running agent's services (the control plane for the Manager,
    #: the worker runtime for a Worker). ``None`` when components are being created.
    runtime: Any = None


@dataclass
class RuntimeContext:
    """What run-time event hooks get."""

    side: Side
    home: Path
    config: HiclawConfig | None = None
    agent: str | None = None
    components: dict[str, Any] = field(default_factory=dict)


#: See the module docstring; hiclaw.testing sets it for every test session.
ENTRY_POINTS_ENV = "HICLAW_ENTRY_POINT_PLUGINS"


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _describe(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class PluginHost:
    """Loads plugins and calls their hooks. See the module docstring for the environment."""

    def __init__(
        self,
        *,
        load_defaults: bool = True,
        default_plugins: Iterable[tuple[str, str]] | None = None,
        load_entry_points: bool = True,
        plugins: Iterable[tuple[str, object]] = (),
        disabled: Iterable[str] = (),
        secret_source: Callable[[str], SecretStr | None] | None = None,
        trace: bool | None = None,
        entry_point_plugins: Iterable[str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._registrations: dict[str, dict[str, Registration]] | None = None
        self._secret_source = secret_source
        self.trace = bool(os.environ.get("HICLAW_TRACE_PLUGINS")) if trace is None else trace
        allow = _env_list("HICLAW_LOAD_PLUGINS")
        self._allow = set(allow) if allow is not None else None
        self._disabled = set(disabled) | set(_env_list("HICLAW_DISABLE_PLUGINS") or ())
        if load_defaults:
            for name, module in DEFAULT_PLUGINS if default_plugins is None else default_plugins:
                self._load_default(name, module)
        if load_entry_points:
            self._load_entry_points(None if entry_point_plugins is None else set(entry_point_plugins))
        for name, obj in plugins:
            self.add_plugin(name, obj)

    # ------------------------------------------------------------------ loading

    def _skip(self, info: PluginInfo) -> bool:
        if info.name in self._disabled or (self._allow is not None and info.name not in self._allow):
            info.status = "disabled"
            self._infos[info.name] = info
            return True
        return False

    def _load_default(self, name: str, module: str) -> None:
        try:
            if importlib.util.find_spec(module) is None:
                return  # not in this installation: skipped, not listed
        except ModuleNotFoundError:
            return
        info = PluginInfo(name=name, module=module, source="default", version=__version__, distribution="hiclaw")
        if self._skip(info):
            return
        try:
            obj = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure makes the plugin broken
            self._broken(info, f"import failed: {_describe(exc)}")
            return
        self._add(info, obj)

    def _load_entry_points(self, only: set[str] | None = None) -> None:
        """Load installed plugins: ``only`` these names if given, else as :data:`ENTRY_POINTS_ENV` says."""
        if only is None:
            wanted = os.environ.get(ENTRY_POINTS_ENV)
            only = None if wanted is None or wanted.strip() == "*" else set(_env_list(ENTRY_POINTS_ENV) or ())
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if only is not None and ep.name not in only:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                source="entry point",
                version=getattr(dist, "version", None) or "?",
                distribution=getattr(dist, "name", None),
            )
            if ep.name in self._infos and self._infos[ep.name].status != "disabled":
                self._broken(info, f"name clashes with already loaded plugin '{ep.name}'", replace=False)
                continue
            if self._skip(info):
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001
                self._broken(info, f"import failed: {_describe(exc)}")
                continue
            self._add(info, obj)

    def add_plugin(self, name: str, obj: object, *, source: Literal["default", "entry point"] = "entry point") -> PluginInfo:
        """Register a plugin object (a module or any object with hookimpls) under ``name``.

        Used for tests and for plugins created at run time."""
        info = PluginInfo(name=name, module=getattr(obj, "__name__", type(obj).__name__), source=source, version="local")
        if not self._skip(info):
            self._add(info, obj)
        return self._infos[name]

    def _add(self, info: PluginInfo, obj: object) -> None:
        try:
            self.pm.register(obj, name=info.name)
        except Exception as exc:  # noqa: BLE001 - pluggy validation errors and name clashes
            self._broken(info, _describe(exc))
            return
        unknown = [
            caller.name
            for caller in (self.pm.get_hookcallers(obj) or [])
            if caller.spec is None
            and not any(impl.plugin is obj and impl.optionalhook for impl in caller.get_hookimpls())
        ]
        if unknown:
            self.pm.unregister(obj)
            self._broken(info, f"unknown hook(s) {', '.join(sorted(unknown))} — check the spelling against docs/plugins/hooks.md")
            return
        wrappers = sorted(
            caller.name
            for caller in (self.pm.get_hookcallers(obj) or [])
            for impl in caller.get_hookimpls()
            if impl.plugin is obj and (impl.wrapper or impl.hookwrapper)
        )
        if wrappers:
            # The host calls each implementation itself (to await async hooks and to isolate one
            # plugin's failure from the others), so a wrapper would be listed but never run.
            self.pm.unregister(obj)
            self._broken(info, f"hook wrapper(s) {', '.join(wrappers)} are not supported — drop wrapper=True/hookwrapper=True "
                               "and implement the hook directly (docs/plugins/hooks.md)")
            return
        info.hooks = sorted(c.name for c in self.pm.get_hookcallers(obj) or [])
        self._infos[info.name] = info
        self._registrations = None

    def _broken(self, info: PluginInfo, error: str, *, replace: bool = True) -> None:
        info.status = "broken"
        info.error = error
        log.warning("plugin %s is broken: %s", info.name, error)
        if replace or info.name not in self._infos:
            self._infos[info.name] = info
        plugin = self.pm.get_plugin(info.name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._registrations = None

    def check_pending(self) -> None:
        """Raise :class:`PluginError` if any loaded hook implementation matches no hookspec."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            hooks = [c.name for c in self.pm.get_hookcallers(exc.plugin) or [] if c.spec is None]
            raise PluginError(
                f"plugin {name!r} implements unknown hook(s) {', '.join(hooks)}",
                hint="check the spelling against docs/plugins/hooks.md",
            ) from exc

    # ------------------------------------------------------------------ listing

    def plugins(self) -> list[PluginInfo]:
        self._ensure_registered()
        return sorted(self._infos.values(), key=lambda i: (i.source != "default", i.name))

    def plugin(self, name: str) -> PluginInfo | None:
        self._ensure_registered()
        return self._infos.get(name)

    # ------------------------------------------------------------------ dispatch

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy calls implementations last-registered-first (and honours tryfirst/trylast
        # through this ordering); keep its order.
        return list(reversed(caller.get_hookimpls()))

    def _trace(self, hook_name: str, plugin: str, kwargs: Mapping[str, Any], outcome: str, started: float) -> None:
        if not self.trace:
            return
        args = ", ".join(f"{k}={type(v).__name__}" for k, v in kwargs.items())
        ms = (time.perf_counter() - started) * 1000
        print(f"hiclaw trace: {hook_name}({args}) plugin={plugin} -> {outcome} [{ms:.2f} ms]", file=sys.stderr)

    def _call_sync(self, hook_name: str, *, broken_on_error: bool, **kwargs: Any) -> list[tuple[str, Any]]:
        results: list[tuple[str, Any]] = []
        for impl in self._impls(hook_name):
            name = impl.plugin_name
            started = time.perf_counter()
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:  # noqa: BLE001 - isolate plugins from each other
                self._trace(hook_name, name, kwargs, f"raised {_describe(exc)}", started)
                if broken_on_error and name in self._infos:
                    self._broken(self._infos[name], f"{hook_name} raised {_describe(exc)}")
                else:
                    log.error("plugin %s: hook %s raised %s", name, hook_name, _describe(exc))
                results.append((name, exc))
                continue
            self._trace(hook_name, name, kwargs, repr(result)[:80], started)
            results.append((name, result))
        return results

    async def _call_async(self, hook_name: str, **kwargs: Any) -> list[Any]:
        results: list[Any] = []
        for impl in self._impls(hook_name):
            started = time.perf_counter()
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:  # noqa: BLE001 - one plugin's failure must not stop the others
                self._trace(hook_name, impl.plugin_name, kwargs, f"raised {_describe(exc)}", started)
                log.error("plugin %s: hook %s raised %s", impl.plugin_name, hook_name, _describe(exc))
                continue
            self._trace(hook_name, impl.plugin_name, kwargs, repr(result)[:80], started)
            if result is not None:
                results.append(result)
        return results

    # ------------------------------------------------------------------ registrations

    def _ensure_registered(self) -> None:
        if self._registrations is not None:
            return
        registrations: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for info in self._infos.values():
            if info.status == "ok":
                info.capabilities = []
        for kind, hook_name in KINDS.items():
            for impl in self._impls(hook_name):
                plugin = impl.plugin_name
                found: list[Registration] = []

                def register(
                    name: str,
                    factory: Callable[..., Any],
                    *,
                    settings_model: type[BaseModel] | None = None,
                    secrets: Sequence[str] | Callable[[Any], Sequence[str]] = (),
                    description: str = "",
                    _kind: str = kind,
                    _plugin: str = plugin,
                    _found: list[Registration] = found,
                ) -> None:
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"plugin {_plugin!r} registered a {_kind} without a name")
                    if not callable(factory):
                        raise PluginError(f"plugin {_plugin!r}: factory for {_kind} {name!r} is not callable")
                    declared = secrets if callable(secrets) else tuple(secrets)
                    _found.append(Registration(_kind, name, factory, _plugin, settings_model, declared, description))

                started = time.perf_counter()
                try:
                    impl.function(*[{"register": register}[a] for a in impl.argnames])
                except Exception as exc:  # noqa: BLE001
                    self._trace(hook_name, plugin, {"register": register}, f"raised {_describe(exc)}", started)
                    if plugin in self._infos:
                        self._broken(self._infos[plugin], f"{hook_name} raised {_describe(exc)}")
                    continue
                self._trace(hook_name, plugin, {"register": register}, f"{len(found)} registered", started)
                for reg in found:
                    if reg.name in registrations[kind]:
                        other = registrations[kind][reg.name].plugin
                        log.warning("%s %r from plugin %s overrides the one from %s", kind, reg.name, plugin, other)
                    registrations[kind][reg.name] = reg
                    if plugin in self._infos:
                        self._infos[plugin].capabilities.append(f"{kind}:{reg.name}")
        # Drop what broken plugins registered before they broke.
        for kind in registrations:
            registrations[kind] = {
                n: r for n, r in registrations[kind].items() if self._infos.get(r.plugin, None) is None or self._infos[r.plugin].status == "ok"
            }
        self._registrations = registrations

    def registrations(self, kind: Kind) -> dict[str, Registration]:
        """Capabilities of one kind, by name."""
        if kind not in KINDS:
            raise ValueError(f"unknown capability kind {kind!r}")
        self._ensure_registered()
        assert self._registrations is not None
        return dict(self._registrations[kind])

    def registration(self, kind: Kind, name: str) -> Registration:
        regs = self.registrations(kind)
        if name not in regs:
            from hiclaw.config import current_plugin_name

            name = current_plugin_name(kind, name)  # a built-in's former name still works
        if name not in regs:
            broken = [i.name for i in self._infos.values() if i.status == "broken"]
            extra = f"; broken plugins: {', '.join(broken)} (see `hiclaw plugins list`)" if broken else ""
            available = ", ".join(sorted(regs)) or "none"
            raise PluginError(
                f"no {kind.replace('_', ' ')} named {name!r} (available: {available}{extra})",
                hint="install the plugin that provides it with `hiclaw plugins install`, or pick an available one",
            )
        return regs[name]

    def validate_settings(self, kind: Kind, name: str, settings: Mapping[str, Any], *, section: str) -> BaseModel | dict[str, Any]:
        """Validate ``settings`` against the capability's model; errors name ``section`` and the key."""
        reg = self.registration(kind, name)
        if reg.settings_model is None:
            return dict(settings)
        try:
            return reg.settings_model.model_validate(dict(settings))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(section)"
            raise ConfigError(
                f"[{section}] {key}: {err['msg']} (for {kind.replace('_', ' ')} {name!r})",
                hint=f"fix `{key}` under [{section}] in config.toml or the matching HICLAW_ environment variable",
            ) from None

    def create(self, kind: Kind, name: str, settings: Mapping[str, Any], ctx: ComponentContext, *, section: str | None = None) -> Any:
        """Validate settings, hand the declared secrets over, and call the factory."""
        reg = self.registration(kind, name)
        validated = self.validate_settings(kind, name, settings, section=section or f"{kind}.settings")
        secrets: dict[str, SecretStr] = {}
        if self._secret_source is not None:
            for secret in reg.secret_names(ctx.config):
                value = self._secret_source(secret)
                if value is not None:
                    secrets[secret] = value
        component_ctx = ComponentContext(
            home=ctx.home, side=ctx.side, agent=ctx.agent, config=ctx.config, secrets=secrets, host=self
        )
        return reg.factory(validated, component_ctx)

    def tools(self, ctx: ComponentContext) -> list[ToolSpec]:
        """Every tool the registered tool factories offer the agent described by ``ctx``."""
        tools: list[ToolSpec] = []
        for reg in self.registrations("tool").values():
            try:
                made = reg.factory(ctx)
            except Exception as exc:  # noqa: BLE001
                log.error("plugin %s: tool factory %s raised %s", reg.plugin, reg.name, _describe(exc))
                continue
            if made is None:
                continue
            tools.extend(made if isinstance(made, list | tuple) else [made])
        return tools

    # ------------------------------------------------------------------ typed hook facade

    def register_commands(self, cli: click.Group) -> None:
        for name, result in self._call_sync("hiclaw_register_commands", broken_on_error=True, cli=cli):
            if isinstance(result, Exception):
                print(f"warning: plugin {name!r} could not add its commands: {_describe(result)}", file=sys.stderr)

    async def startup(self, ctx: RuntimeContext) -> None:
        await self._call_async("hiclaw_startup", ctx=ctx)

    async def on_message(self, message: ChatMessage, ctx: RuntimeContext) -> None:
        await self._call_async("hiclaw_on_message", message=message, ctx=ctx)

    async def before_model_call(self, request: ModelRequest, ctx: RuntimeContext) -> None:
        await self._call_async("hiclaw_before_model_call", request=request, ctx=ctx)

    async def after_task(self, task: TaskRecord, result: TaskResult, ctx: RuntimeContext) -> None:
        await self._call_async("hiclaw_after_task", task=task, result=result, ctx=ctx)

    async def budget_warning(self, *, scope: str, name: str, spent_usd: float, budget_usd: float,
                             ctx: RuntimeContext) -> None:
        await self._call_async("hiclaw_budget_warning", scope=scope, name=name, spent_usd=spent_usd,
                               budget_usd=budget_usd, ctx=ctx)

    async def shutdown(self, ctx: RuntimeContext) -> None:
        await self._call_async("hiclaw_shutdown", ctx=ctx)
