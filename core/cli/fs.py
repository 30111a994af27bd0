"""``hiclaw fs ls|cat|put|get|rm|url`` — the admin's view of the shared storage.

Paths are storage keys relative to the root (``agents/alice/MEMORY.md``,
``shared/tasks/task-001/``); a trailing ``/`` names a folder. Folders are copied with the same
sync as workers use (only changed files move; ``--delete`` mirrors; ``--include``/``--exclude``
filter). Uses whatever storage ``[storage]`` in config.toml selects, with the control plane's keys.
"""
from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from hiclaw.cli.app import App, echo_safe, emit_json, pass_app, table
from hiclaw.errors import InvalidInputError, NotFoundError
from hiclaw.protocols import Stoppable

T = TypeVar("T")

_sync_options = [
    click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable), e.g. '*.md'."),
    click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable), e.g. 'build/'."),
    click.option("--delete", is_flag=True, help="Folders: remove target files missing from the source."),
    click.option("--checksum", is_flag=True, help="Folders: compare content digests instead of size+mtime."),
    click.option("--dry-run", is_flag=True, help="Folders: show what would change, change nothing."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
]


def sync_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_sync_options):
        fn = option(fn)
    return fn


def _storage(app: App) -> Any:
    from hiclaw.host import ComponentContext

    config = app.config
    ctx = ComponentContext(home=app.home, side="control", config=config, host=app.host)
    return app.host.create("storage", config.storage.plugin, config.storage.settings, ctx, section="storage.settings")


@asynccontextmanager
async def open_storage(app: App) -> AsyncIterator[Any]:
    """The team's storage with the control plane's keys, stopped after use."""
    storage = _storage(app)
    try:
        yield storage
    finally:
        if isinstance(storage, Stoppable):
            await storage.stop()


async def read_text(storage: Any, key: str) -> str | None:
    """``key`` as text, or None if it is not written (yet)."""
    try:
        return (await storage.get(key)).decode("utf-8", errors="replace")
    except NotFoundError:
        return None


def _run(app: App, action: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_storage(app) as storage:
            return await action(storage)

    return asyncio.run(main())


def _when(mtime: float | None) -> str:
    if mtime is None:
        return "-"
    return datetime.fromtimestamp(mtime, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _report_sync(result: Any, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    would = "would be " if result.dry_run else ""
    click.echo(f"{len(result.transferred)} file(s) {would}{verb} ({result.bytes} bytes), "
               f"{result.unchanged} unchanged, {len(result.deleted)} {would}deleted")
    if result.skipped_links:
        echo_safe(f"skipped {len(result.skipped_links)} symbolic link(s): {', '.join(result.skipped_links[:5])}", err=True)


@click.group("fs")
def fs_group() -> None:
    """Browse and copy files in the shared storage (agents/…, shared/tasks/…, shared/projects/…)."""


@fs_group.command("ls")
@click.argument("path", default="")
@click.option("-r", "--recursive", is_flag=True, help="List everything below, not just one level.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def ls_command(app: App, path: str, recursive: bool, as_json: bool) -> None:
    """List files and folders under PATH (default: the storage root)."""

    async def action(storage: Any) -> list[dict[str, Any]]:
        if path and not path.endswith("/"):
            info = await storage.stat(path)
            if info is not None:
                return [info]
        folder = path if not path or path.endswith("/") else path + "/"
        entries = await storage.list(folder, recursive=recursive)
        if path and not entries:
            raise NotFoundError(f"nothing at {path!r} in storage", hint="list its parent folder with `hiclaw fs ls`")
        return entries

    entries = _run(app, action)
    if as_json:
        emit_json(entries)
        return
    table([["-" if e["is_dir"] else e["size"], _when(e["mtime"]), e["key"]] for e in entries], ["size", "modified", "path"])


@fs_group.command("cat")
@click.argument("path")
@pass_app
def cat_command(app: App, path: str) -> None:
    """Print a file's content."""
    data = _run(app, lambda storage: storage.get(path))
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


@fs_group.command("put")
@click.argument("source")
@click.argument("dest")
@sync_options
@pass_app
def put_command(app: App, source: str, dest: str, include: tuple[str, ...], exclude: tuple[str, ...], delete: bool,
                checksum: bool, dry_run: bool, as_json: bool) -> None:
    """Upload SOURCE (a file, a folder, or - for stdin) to DEST.

    A DEST ending in / is a folder: a file keeps its name inside it. A folder SOURCE is synced
    into DEST (only changed files are uploaded).
    """
    local = Path(source)
    if source != "-" and local.is_dir():
        result = _run(app, lambda s: s.sync(local, dest, direction="up", include=include, exclude=exclude,
                                              delete=delete, checksum=checksum, dry_run=dry_run))
        _report_sync(result, as_json, "uploaded")
        return
    key = dest + local.name if dest.endswith("/") and source != "-" else dest
    if source == "-":
        data = sys.stdin.buffer.read()
        _run(app, lambda s: s.put(key, data))
        size = len(data)
    else:
        if not local.is_file():
            raise InvalidInputError(f"no such local file or folder {source!r}", hint="check the path")
        _run(app, lambda s: s.put_file(key, local))
        size = local.stat().st_size
    if as_json:
        emit_json({"key": key, "size": size})
    else:
        click.echo(f"uploaded {key} ({size} bytes)")


@fs_group.command("get")
@click.argument("source")
@click.argument("dest", required=False)
@sync_options
@pass_app
def get_command(app: App, source: str, dest: str | None, include: tuple[str, ...], exclude: tuple[str, ...],
                delete: bool, checksum: bool, dry_run: bool, as_json: bool) -> None:
    """Download SOURCE (a file, or a folder ending in /) to DEST (default: its name here; - for stdout)."""

    async def action(storage: Any) -> Any:
        if not source.endswith("/"):
            info = await storage.stat(source)
            if info is not None:
                if dest == "-":
                    return await storage.get(source)
                target = Path(dest or Path(source).name)
                if target.is_dir():  # noqa: ASYNC240 - a single stat of a local path
                    target = target / Path(source).name
                await storage.get_file(source, target)
                return {"key": source, "path": str(target.absolute()), "size": info["size"]}
        folder = source if source.endswith("/") else source + "/"
        if not await storage.list(folder, recursive=True):
            raise NotFoundError(f"nothing at {source!r} in storage", hint="check the path with `hiclaw fs ls`")
        if dest == "-":
            raise InvalidInputError(f"{source!r} is a folder; it cannot go to stdout", hint="give a local folder")
        target = Path(dest or Path(folder.rstrip("/")).name)
        return await storage.sync(target, folder, direction="down", include=include, exclude=exclude, delete=delete,
                                  checksum=checksum, dry_run=dry_run)

    result = _run(app, action)
    if isinstance(result, bytes):
        out = sys.stdout.buffer
        out.write(result)
        out.flush()
    elif isinstance(result, dict):
        emit_json(result) if as_json else click.echo(f"downloaded {result['key']} to {result['path']} ({result['size']} bytes)")
    else:
        _report_sync(result, as_json, "downloaded")


@fs_group.command("rm")
@click.argument("path")
@click.option("-r", "--recursive", is_flag=True, help="Remove every file under the folder PATH.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def rm_command(app: App, path: str, recursive: bool, as_json: bool) -> None:
    """Remove a file (or, with -r, a folder and everything in it)."""
    from hiclaw.storage import layout

    async def action(storage: Any) -> list[str]:
        if not recursive:
            if await storage.stat(path) is None:
                raise NotFoundError(f"no file {path!r} in storage", hint="use -r for a folder; check with `hiclaw fs ls`")
            await storage.delete(path)
            return [path]
        folder = layout.validate_folder(path, what="folder to remove")
        keys = [e["key"] for e in await storage.list(folder, recursive=True) if not e["is_dir"]]
        if not keys:
            raise NotFoundError(f"nothing at {path!r} in storage", hint="check the path with `hiclaw fs ls`")
        gate = asyncio.Semaphore(8)

        async def remove(key: str) -> None:
            async with gate:
                await storage.delete(key)

        await asyncio.gather(*(remove(k) for k in keys))
        return keys

    removed = _run(app, action)
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"removed {len(removed)} file(s)")


@fs_group.command("url")
@click.argument("path")
@click.option("--expires", default=3600, show_default=True, type=click.IntRange(1, 7 * 24 * 3600),
              help="Seconds the link stays valid.")
@pass_app
def url_command(app: App, path: str, expires: int) -> None:
    """Print a download link for PATH to hand to a human (S3: presigned; local: file://)."""
    click.echo(_run(app, lambda storage: storage.presign(path, expires)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(fs_group())
