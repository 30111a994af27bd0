"""Local backend specifics: grants as bind mounts (checked in a real bubblewrap sandbox), worker
scope, atomic writes under concurrent readers and under a writer killed mid-write."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from hiclaw.errors import ConfigError, InvalidInputError, PluginError
from hiclaw.host import ComponentContext
from hiclaw.plugins.storage.local import make_local_storage
from hiclaw.plugins.storage.local.settings import LocalStorageSettings
from hiclaw.storage import AccessDeniedError, layout
from hiclaw.testing import wait_for


@pytest.fixture
async def control(tmp_path):
    storage = make_local_storage(LocalStorageSettings(), ComponentContext(home=tmp_path))
    await storage.put(layout.task_spec("t1"), b"# do the thing")
    await storage.put(layout.agent_file("bob", "MEMORY.md"), b"bob's memory")
    await storage.put(layout.task_spec("t2"), b"# not yours")
    return storage


def test_default_root_is_hiclaw_home_data(tmp_path):
    storage = make_local_storage(LocalStorageSettings(), ComponentContext(home=tmp_path))
    assert storage.root == (tmp_path / "data").resolve()
    relative = make_local_storage(LocalStorageSettings(root="store"), ComponentContext(home=tmp_path))
    assert relative.root == (tmp_path / "store").resolve()
    with pytest.raises(ConfigError, match=re.escape("needs settings.root")):
        make_local_storage(LocalStorageSettings(), ComponentContext(home=tmp_path, side="worker"))


async def test_grant_returns_identical_path_mounts_parents_first(control):
    access = await control.grant("alice", rw=[layout.task_dir("t1")], ro=[layout.task_spec("t1")])
    root = control.root
    assert [(str(m.host_path), m.read_only) for m in access.mounts] == [
        (str(root / "agents/alice"), False),
        (str(root / "agents/alice/skills"), True),  # skills are installed by the control plane only
        (str(root / "shared/tasks/t1"), False),
        (str(root / "shared/tasks/t1/spec.md"), True),
    ]
    assert all(m.host_path == m.sandbox_path and m.beneath == root for m in access.mounts)  # bound by descriptor
    assert (root / "agents/alice").is_dir()  # created so it can be bound
    assert access.settings["root"] == str(root) and access.plugin == "local-storage"
    assert access.read_write == ["agents/alice/", "shared/tasks/t1/"]
    assert access.read_only == ["agents/alice/skills/", "shared/tasks/t1/spec.md"]
    with pytest.raises(InvalidInputError, match="no such file yet"):
        await control.grant("alice", ro=["shared/tasks/t9/spec.md"])
    with pytest.raises(InvalidInputError, match="invalid agent name"):
        await control.revoke("Alice")
    await control.revoke("alice")  # nothing to take back: the mounts end with the sandbox


async def test_worker_side_storage_reports_ungranted_paths_clearly(control, tmp_path):
    access = await control.grant("alice", rw=[layout.task_dir("t1")], ro=[layout.task_spec("t1")])
    worker = make_local_storage(LocalStorageSettings.model_validate(access.settings),
                                ComponentContext(home=tmp_path, side="worker", agent="alice"))
    await worker.put(layout.agent_file("alice", "notes.md"), b"mine")
    await worker.put(layout.task_result("t1"), b"done")
    assert await worker.get(layout.task_spec("t1")) == b"# do the thing"
    for denied in (worker.get(layout.agent_file("bob", "MEMORY.md")), worker.put(layout.task_spec("t1"), b"x"),
                   worker.get(layout.task_spec("t2")), worker.delete(layout.agent_file("bob", "MEMORY.md"))):
        with pytest.raises(AccessDeniedError, match="this worker may not"):
            await denied
    with pytest.raises(PluginError, match="control-plane operation"):
        await worker.grant("alice")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
async def test_mounts_isolate_a_real_bubblewrap_sandbox(control):
    access = await control.grant("alice", rw=[layout.task_dir("t1")], ro=[layout.task_spec("t1")])
    binds = []
    for mount in access.mounts:
        binds += ["--ro-bind" if mount.read_only else "--bind", str(mount.host_path), str(mount.sandbox_path)]
    script = (
        "cd \"$ROOT\"; echo mine > agents/alice/notes.md && echo home-ok; echo r > shared/tasks/t1/result.md && echo task-ok;"
        " (echo x > shared/tasks/t1/spec.md) 2>/dev/null || echo spec-read-only; cat shared/tasks/t1/spec.md; echo;"
        " cat agents/bob/MEMORY.md 2>/dev/null || echo bob-invisible; cat shared/tasks/t2/spec.md 2>/dev/null || echo t2-invisible"
    )
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--setenv", "ROOT", str(control.root),
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *binds, "/bin/sh", "-c", script]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert out.stdout.split() == ["home-ok", "task-ok", "spec-read-only", "#", "do", "the", "thing", "bob-invisible", "t2-invisible"], out.stderr
    assert await control.get(layout.task_result("t1")) == b"r\n"


async def test_readers_never_see_a_half_written_file(control):
    key = layout.task_result("t1")
    versions = [b"a" * (2 * 1024 * 1024), b"b" * (1024 * 1024 + 3)]
    await control.put(key, versions[0])
    path = control.local_path(key)
    seen: set[int] = set()
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = path.read_bytes()
            if data in versions:
                seen.add(len(data))
            else:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            await control.put(key, versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert bad == [] and seen  # every read was one whole version


WRITER = """
import asyncio, sys
from hiclaw.plugins.storage.local.backend import LocalStorage
asyncio.run(LocalStorage(sys.argv[1]).put_file(sys.argv[2], sys.argv[3]))
"""


async def test_a_writer_killed_mid_write_leaves_the_old_version_and_nothing_visible(control, tmp_path):
    key = layout.task_result("t1")
    await control.put(key, b"old, complete result")
    fifo = tmp_path / "upload.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(control.root), key, str(fifo)])

    def open_feed() -> int | None:
        assert proc.poll() is None, "the writer died before reading"
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the writer opens its end
        except OSError:
            return None

    try:
        fd = wait_for(open_feed, timeout=20, what="the writer to open the pipe")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as feed:
            feed.write(b"x" * (1024 * 1024))
            feed.flush()
            folder = control.local_path(key).parent
            wait_for(lambda: any(p.name.startswith(layout.TEMP_PREFIX) and p.stat().st_size >= 1024 * 1024
                                 for p in folder.iterdir()), what="the writer's temporary file to fill")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    except BrokenPipeError:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
    assert await control.get(key) == b"old, complete result"
    assert [e["key"] for e in await control.list(layout.task_dir("t1"))] == [key, layout.task_spec("t1")]
    assert any(p.name.startswith(layout.TEMP_PREFIX) for p in control.local_path(key).parent.iterdir())  # left on disk, unseen


async def test_paths_never_escape_the_root_through_links(control, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (control.root / "agents/alice").mkdir(parents=True)
    (control.root / "agents/alice/escape").symlink_to(outside)  # as a worker could plant in its home
    with pytest.raises(AccessDeniedError, match="a symbolic link is on its path, and links are never followed"):
        await control.put("agents/alice/escape/pwned.txt", b"x")
    assert list(outside.iterdir()) == []
    (control.root / "agents/alice/passwd").symlink_to("/etc/passwd")
    assert await control.stat("agents/alice/passwd") is None
    assert [e["key"] for e in await control.list("agents/alice/")] == []


async def test_names_a_folder_or_file_clash_clearly(control):
    await control.put("shared/tasks/t1/workspace/out.txt", b"x")
    with pytest.raises(InvalidInputError, match="a folder with that name exists"):
        await control.put("shared/tasks/t1/workspace", b"x")
    with pytest.raises(InvalidInputError, match="a file stands where a folder"):
        await control.put("shared/tasks/t1/workspace/out.txt/inner", b"x")
    url = await control.presign("shared/tasks/t1/workspace/out.txt")
    assert url == control.local_path("shared/tasks/t1/workspace/out.txt").as_uri()
