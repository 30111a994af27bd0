"""``hiclaw skills find|add|list|remove|update|check`` — skills.sh-compatible skill management.

Scopes are the ``skills`` CLI's: project (default: ``./.agents/skills`` + ``./skills-lock.json``),
global (``-g``: ``~/.agents/skills`` + ``~/.agents/.skill-lock.json``) and ``--dir D`` (``D/<name>``
+ ``D/skills-lock.json``, e.g. a worker's skills folder). The registry is ``[skills] api_url``
(``SKILLS_API_URL``), skills.sh by default.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from hiclaw.cli.app import App, echo_safe, emit_json, pass_app, table
from hiclaw.errors import HiclawError
from hiclaw.protocols import Closeable

T = TypeVar("T")


def scope_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                        help="Use this skills folder (lock file: DIR/skills-lock.json).")(func)
    return click.option("-g", "--global", "global_", is_flag=True,
                        help="Global scope: ~/.agents/skills and ~/.agents/.skill-lock.json.")(func)


def _scope(global_: bool, directory: Path | None) -> Any:
    from hiclaw.registry.scopes import resolve_scope

    if global_ and directory is not None:
        raise click.UsageError("choose either -g/--global or --dir, not both")
    return resolve_scope(global_=global_, directory=directory)


def _registry(app: App) -> Any:
    """The configured skill registry, created through the plugin host (a plugin may replace it)."""
    from hiclaw.host import ComponentContext

    config = app.config.skills
    ctx = ComponentContext(home=app.home, config=app.config)
    return app.host.create("skill_registry", config.registry, config.model_dump(), ctx, section="skills")


def _run(app: App, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        registry = _registry(app)
        try:
            return await work(registry)
        finally:
            if isinstance(registry, Closeable):
                await registry.aclose()

    return asyncio.run(main())


@click.group("skills")
def skills_group() -> None:
    """Find, install and verify agent skills (skills.sh-compatible; SKILLS_API_URL picks the registry)."""


@skills_group.command("find")
@click.argument("query", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--owner", help="Only skills from this owner.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def find_command(app: App, query: tuple[str, ...], limit: int, owner: str | None, as_json: bool) -> None:
    """Search the registry for skills."""
    text = " ".join(query)
    results = _run(app, lambda registry: registry.search(text, limit=limit, owner=owner))
    if as_json:
        emit_json([r.wire() if hasattr(r, "wire") else r for r in results])
        return
    if not results:
        click.echo(f"no skills found for {text!r} in {app.config.skills.api_url}")
        return
    table([[r.install_source, r.installs, (r.description[:60] + "…") if len(r.description) > 61 else r.description]
           for r in results], ["skill", "installs", "description"])
    click.echo(f"\ninstall with: hiclaw skills add {results[0].install_source}")


@skills_group.command("add")
@click.argument("source")
@click.option("-s", "--skill", "skills", multiple=True, help="Skill to install from SOURCE (repeatable).")
@scope_options
@click.option("-y", "--yes", is_flag=True, hidden=True, help="Accepted for `skills` CLI compatibility.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def add_command(app: App, source: str, skills: tuple[str, ...], global_: bool, directory: Path | None,
                yes: bool, as_json: bool) -> None:
    """Install skills from SOURCE: owner/repo@skill, an https:// registry, a git URL, or ./path."""
    from hiclaw.registry.installer import install
    from hiclaw.registry.models import Limits

    scope = _scope(global_, directory)
    config = app.config.skills
    limits = Limits(max_files=config.max_files, max_bytes=config.max_bytes)

    async def work(registry: Any) -> list[Any]:
        fetched: list[Any] = []
        for skill in skills or (None,):
            fetched.extend(await registry.fetch(source, skill))
        # Everything is fetched and verified before the first install writes anything.
        return [install(item, scope, limits=limits) for item in fetched]

    results = _run(app, work)
    if as_json:
        emit_json({"installed": [r.as_dict() for r in results], "scope": scope.label, "lock": str(scope.lock_path)})
        return
    for r in results:
        echo_safe(f"installed {r.name} ({r.files} file{'s' * (r.files != 1)}) into {r.path} from {r.source} [{r.source_type}]")
    click.echo(f"locked in {scope.lock_path}")


@skills_group.command("list")
@scope_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(global_: bool, directory: Path | None, as_json: bool) -> None:
    """List installed skills."""
    from hiclaw.registry.installer import installed

    scope = _scope(global_, directory)
    skills = installed(scope)
    if as_json:
        emit_json([s.as_dict() for s in skills])
        return
    if not skills:
        click.echo(f"no skills installed in {scope.skills_dir}")
        return
    table([[s.name, s.source or "(unlocked)", s.files, (s.description[:60] + "…") if len(s.description) > 61 else s.description]
           for s in skills], ["name", "source", "files", "description"])


@skills_group.command("remove")
@click.argument("names", nargs=-1, required=True)
@scope_options
@click.option("-y", "--yes", is_flag=True, hidden=True, help="Accepted for `skills` CLI compatibility.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def remove_command(names: tuple[str, ...], global_: bool, directory: Path | None, yes: bool, as_json: bool) -> None:
    """Remove installed skills (folder, lock entry, agent symlinks)."""
    from hiclaw.registry.installer import remove

    scope = _scope(global_, directory)
    removed = [str(remove(scope, name)) for name in names]
    if as_json:
        emit_json({"removed": list(names), "paths": removed})
        return
    for name in names:
        click.echo(f"removed {name}")


@skills_group.command("update")
@click.argument("names", nargs=-1)
@scope_options
@click.option("-y", "--yes", is_flag=True, hidden=True, help="Accepted for `skills` CLI compatibility.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def update_command(app: App, names: tuple[str, ...], global_: bool, directory: Path | None, yes: bool, as_json: bool) -> None:
    """Re-fetch locked skills and reinstall those that changed (exit 1 if any failed)."""
    from hiclaw.registry.update import update

    scope = _scope(global_, directory)
    results = _run(app, lambda registry: update(scope, registry, list(names) or None))
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        if not results:
            click.echo(f"no locked skills in {scope.lock_path}")
        for r in results:
            echo_safe(f"{r.name}: {r.status}" + (f" ({r.detail})" if r.detail else ""))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise HiclawError(f"{len(failed)} skill(s) could not be updated: {', '.join(r.name for r in failed)}")


@skills_group.command("check")
@scope_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_command(global_: bool, directory: Path | None, as_json: bool) -> None:
    """Re-hash installed skills against the lock file; exit 1 on any change, naming the file."""
    from hiclaw.registry.installer import check

    scope = _scope(global_, directory)
    results = check(scope)
    if as_json:
        emit_json({"ok": not any(r.failed for r in results), "skills": [r.as_dict() for r in results]})
    else:
        for r in results:
            files = [f"changed {p}" for p in r.changed] + [f"added {p}" for p in r.added] + [f"missing {p}" for p in r.removed]
            detail = "; ".join(files) or r.detail
            echo_safe(f"{r.name}: {r.status}" + (f" — {detail}" if detail else ""))
        if not results:
            click.echo(f"no skills in {scope.lock_path}")
    bad = [r for r in results if r.failed]
    if bad:
        first = bad[0]
        what = (first.changed or first.added or first.removed or [""])[0]
        where = f"{first.path}/{what}" if what else first.path
        raise HiclawError(f"{len(bad)} skill(s) do not match {scope.lock_path}: {first.name} ({first.status}: {where})",
                          hint="reinstall with `hiclaw skills update` or remove the skill")
