"""One storage test suite, run against both backends: local files and S3 (a real moto server)."""
from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from hiclaw.errors import InvalidInputError, NotFoundError
from hiclaw.host import ComponentContext
from hiclaw.protocols import ControlStorage, Storage
from hiclaw.storage import layout


@pytest.fixture(params=["local", "s3"])
async def storage(request, tmp_path, plugin_host):
    if request.param == "local":
        from hiclaw.plugins.storage import local

        host = plugin_host(("local-storage", local))
        made = host.create("storage", "local-storage", {"root": str(tmp_path / "data")}, ComponentContext(home=tmp_path))
    else:
        made = request.getfixturevalue("s3_server").make_storage(home=tmp_path)
    yield made
    await made.stop()


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _age(path: Path, seconds: float) -> None:
    """Move a file's mtime into the past (so "newer" comparisons are unambiguous)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


async def test_backends_satisfy_the_protocols(storage):
    assert isinstance(storage, Storage) and isinstance(storage, ControlStorage)


async def test_put_get_stat_overwrite(storage):
    key = layout.agent_file("alice", "notes.md")
    await storage.put(key, b"first")
    assert await storage.get(key) == b"first"
    info = await storage.stat(key)
    assert info["key"] == key and info["size"] == 5 and info["is_dir"] is False
    assert info["mtime"] > 0 and info["etag"]
    await storage.put(key, b"second version")
    assert await storage.get(key) == b"second version"
    assert (await storage.stat(key))["size"] == 14


async def test_missing_objects(storage):
    with pytest.raises(NotFoundError, match=re.escape("no object 'agents/alice/absent.md'")):
        await storage.get("agents/alice/absent.md")
    assert await storage.stat("agents/alice/absent.md") is None
    await storage.delete("agents/alice/absent.md")  # absent is fine
    assert await storage.list("agents/") == []


async def test_list_recursive_folders_and_partial_prefixes(storage):
    for key in ["agents/alice/a.md", "agents/alice/memory/m1.md", "agents/albert/x.md", "shared/tasks/t1/spec.md"]:
        await storage.put(key, key.encode())
    everything = await storage.list("")
    assert [e["key"] for e in everything] == sorted(
        ["agents/albert/x.md", "agents/alice/a.md", "agents/alice/memory/m1.md", "shared/tasks/t1/spec.md"])
    top = await storage.list("", recursive=False)
    assert [(e["key"], e["is_dir"]) for e in top] == [("agents/", True), ("shared/", True)]
    alice = await storage.list("agents/alice/", recursive=False)
    assert [e["key"] for e in alice] == ["agents/alice/a.md", "agents/alice/memory/"]
    assert [e["key"] for e in await storage.list("agents/al", recursive=False)] == ["agents/albert/", "agents/alice/"]
    assert [e["key"] for e in await storage.list("agents/alice/")] == ["agents/alice/a.md", "agents/alice/memory/m1.md"]
    await storage.delete("agents/alice/a.md")
    assert [e["key"] for e in await storage.list("agents/alice/")] == ["agents/alice/memory/m1.md"]


async def test_copy_and_checksum(storage):
    data = os.urandom(70_000)
    await storage.put("shared/tasks/t1/result.md", data)
    await storage.copy("shared/tasks/t1/result.md", "shared/projects/p1/result-copy.md")
    assert await storage.get("shared/projects/p1/result-copy.md") == data
    digest = await storage.checksum("shared/projects/p1/result-copy.md")
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(NotFoundError):
        await storage.copy("shared/tasks/t1/none.md", "shared/tasks/t1/x.md")


async def test_put_file_and_get_file_stream_through_local_files(storage, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    await storage.put_file("agents/alice/workspace/big.bin", source)
    target = tmp_path / "out" / "copy.bin"
    await storage.get_file("agents/alice/workspace/big.bin", target)
    assert target.read_bytes() == source.read_bytes()
    assert not [p for p in target.parent.iterdir() if p.name != "copy.bin"]  # no temporary left behind


@pytest.mark.parametrize("key", ["../escape.md", "/etc/passwd", "agents/a\nb.md", "agents//x.md", "agents/./x.md"])
async def test_every_operation_refuses_bad_keys(storage, key, tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    for operation in (storage.put(key, b"x"), storage.get(key), storage.stat(key), storage.delete(key),
                      storage.put_file(key, tmp_path / "f"), storage.get_file(key, tmp_path / "g"),
                      storage.copy("agents/alice/a.md", key), storage.checksum(key)):
        with pytest.raises(InvalidInputError, match="invalid storage key"):
            await operation
    with pytest.raises(InvalidInputError):
        await storage.list("../")
    assert await storage.list("") == []


async def test_sync_up_detects_changes_filters_and_mirrors(storage, tmp_path):
    src = tmp_path / "src"
    _tree(src, {"a.md": b"alpha", "sub/b.md": b"bravo", "sub/deep/c.md": b"charlie", "debug.log": b"noise"})
    (src / "link.md").symlink_to(src / "a.md")
    for path in src.rglob("*"):
        if path.is_file() and not path.is_symlink():
            _age(path, 60)
    prefix = layout.task_workspace("t1")
    first = await storage.sync(src, prefix, exclude=["*.log"])
    assert first.transferred == ["a.md", "sub/b.md", "sub/deep/c.md"] and first.skipped_links == ["link.md"]
    assert first.bytes == 5 + 5 + 7
    assert await storage.get(prefix + "sub/deep/c.md") == b"charlie"
    assert await storage.stat(prefix + "debug.log") is None

    again = await storage.sync(src, prefix, exclude=["*.log"])
    assert again.transferred == [] and again.unchanged == 3

    (src / "sub/b.md").write_bytes(b"bravo, longer")  # size changes
    (src / "a.md").write_bytes(b"ALPHA")  # same size, newer mtime
    # S3 keeps whole seconds, so "newer" must be at least the next second (see docs/storage.md).
    _age(src / "a.md", -2)
    _age(src / "sub/deep/c.md", -2)  # newer, same content
    by_mtime = await storage.sync(src, prefix, exclude=["*.log"])
    assert by_mtime.transferred == ["a.md", "sub/b.md", "sub/deep/c.md"]
    assert await storage.get(prefix + "a.md") == b"ALPHA"

    _age(src / "sub/deep/c.md", -4)
    by_content = await storage.sync(src, prefix, exclude=["*.log"], checksum=True)
    assert by_content.transferred == [] and by_content.unchanged == 3

    await storage.put(prefix + "keep.log", b"remote only, excluded")
    (src / "sub/b.md").unlink()
    dry = await storage.sync(src, prefix, exclude=["*.log"], delete=True, dry_run=True)
    assert dry.deleted == ["sub/b.md"] and await storage.stat(prefix + "sub/b.md") is not None
    mirrored = await storage.sync(src, prefix, exclude=["*.log"], delete=True)
    assert mirrored.deleted == ["sub/b.md"]
    assert [e["key"] for e in await storage.list(prefix)] == [prefix + k for k in ("a.md", "keep.log", "sub/deep/c.md")]


async def test_sync_down_sets_mtimes_so_nothing_moves_twice(storage, tmp_path):
    prefix = layout.task_dir("t2")
    for rel in ("spec.md", "progress/001.md", "workspace/out/data.csv"):
        await storage.put(prefix + rel, rel.encode() * 3)
    dest = tmp_path / "down"
    first = await storage.sync(dest, prefix, direction="down", include=["*.md"])
    assert first.transferred == ["progress/001.md", "spec.md"]
    assert (dest / "progress/001.md").read_bytes() == b"progress/001.md" * 3
    info = await storage.stat(prefix + "spec.md")
    assert abs((dest / "spec.md").stat().st_mtime - info["mtime"]) < 1e-3
    again = await storage.sync(dest, prefix, direction="down", include=["*.md"])
    assert again.transferred == [] and again.unchanged == 2
    await storage.put(prefix + "spec.md", b"a longer, revised spec")
    (dest / "stale.md").write_bytes(b"not in storage")
    changed = await storage.sync(dest, prefix, direction="down", include=["*.md"], delete=True)
    assert changed.transferred == ["spec.md"] and changed.deleted == ["stale.md"]
    assert (dest / "spec.md").read_bytes() == b"a longer, revised spec" and not (dest / "stale.md").exists()


async def test_sync_refuses_bad_input(storage, tmp_path):
    with pytest.raises(InvalidInputError, match="not a folder"):
        await storage.sync(tmp_path / "missing", "shared/tasks/t1/")
    with pytest.raises(InvalidInputError, match="invalid sync prefix"):
        await storage.sync(tmp_path, "../up/")
    with pytest.raises(InvalidInputError, match="direction"):
        await storage.sync(tmp_path, "shared/tasks/t1/", direction="sideways")


async def test_presign_names_an_existing_object(storage):
    await storage.put("shared/tasks/t1/result.md", b"# Result")
    url = await storage.presign("shared/tasks/t1/result.md", 300)
    assert url.startswith(("file://", "http://")) and "result.md" in url
    with pytest.raises(NotFoundError):
        await storage.presign("shared/tasks/t1/none.md", 300)
    with pytest.raises(InvalidInputError, match="expiry"):
        await storage.presign("shared/tasks/t1/result.md", 0)
