"""bwrap and process backends against the real thing: start, stop, exit codes, bridges, logs,
and (bwrap) what a sandboxed program can and cannot see."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from hiclaw.sandbox.base import SandboxError
from hiclaw.sandbox.spec import Bridge, Mount
from hiclaw.testing import wait_for_async
from hiclaw.testing.sandbox import bwrap_unavailable

PY = sys.executable
needs_bwrap = [pytest.mark.needs_bwrap, pytest.mark.skipif(bool(bwrap_unavailable()), reason=str(bwrap_unavailable()))]
BACKENDS = [pytest.param("bwrap", marks=needs_bwrap), "process"]


def log_lines(backend, name="w1") -> list[str]:
    return [ln for ln in backend.log_path(name).read_text().splitlines() if not ln.startswith("--- hiclaw:")]


async def hello_server(text: bytes = b"hello from the host"):
    async def handle(reader, writer):
        writer.write(text)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("name", BACKENDS)
async def test_exit_code_status_and_log(sandbox_backend, worker_spec, name):
    backend = sandbox_backend(name)
    spec = worker_spec([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    handle = await backend.start(spec)
    assert handle.log_path == backend.control_home / "logs" / "workers" / "w1.log"
    assert await backend.wait("w1") == 3
    status = await backend.status("w1")
    assert status["state"] == "exited" and status["exit_code"] == 3 and status["restarts"] == 0
    assert log_lines(backend) == ["out", "err"]
    text = backend.log_path("w1").read_text()
    assert f"starting worker w1 ({name} sandbox)" in text and "exited with code 3" in text
    assert [line async for line in backend.logs("w1", tail=1)] == [text.splitlines()[-1]]
    assert (await backend.status("nobody"))["state"] == "absent"
    await backend.stop("nobody")  # absent is fine


@pytest.mark.parametrize("name", BACKENDS)
async def test_stop_sends_sigterm_to_the_worker_first(sandbox_backend, worker_spec, name):
    backend = sandbox_backend(name)
    spec = worker_spec([PY, "-c",
                        "import signal, sys, time\n"
                        "def bye(*a): print('graceful', flush=True); sys.exit(0)\n"
                        "signal.signal(signal.SIGTERM, bye); print('ready', flush=True)\n"
                        "while True: time.sleep(1)\n"])
    await backend.start(spec)
    await wait_for_async(lambda: "ready" in log_lines(backend), timeout=30, what="the worker to start")
    with pytest.raises(SandboxError, match="already running"):
        await backend.start(spec)
    assert (await backend.status("w1"))["state"] == "running"
    await backend.stop("w1", timeout=20)
    assert (await backend.status("w1"))["exit_code"] == 0
    assert "graceful" in log_lines(backend)


@pytest.mark.parametrize("name", BACKENDS)
async def test_stop_kills_a_worker_that_ignores_sigterm(sandbox_backend, worker_spec, name):
    backend = sandbox_backend(name)
    spec = worker_spec([PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                                  "print('ready', flush=True); time.sleep(600)"])
    await backend.start(spec)
    await wait_for_async(lambda: "ready" in log_lines(backend), timeout=30, what="the worker to start")
    await backend.stop("w1", timeout=0.5)
    assert (await backend.status("w1"))["exit_code"] == -signal.SIGKILL


@pytest.mark.parametrize("name", BACKENDS)
async def test_environment_is_only_the_workers_own(sandbox_backend, worker_spec, name, monkeypatch):
    monkeypatch.setenv("HICLAW_TEST_HOST_SECRET", "do-not-leak")
    backend = sandbox_backend(name)
    spec = worker_spec([PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))"], env={"HICLAW_WORKER_SPEC": "{}"})
    await backend.start(spec)
    assert await backend.wait("w1") == 0
    env = json.loads(log_lines(backend)[0])
    assert "HICLAW_TEST_HOST_SECRET" not in env and env["HICLAW_WORKER_SPEC"] == "{}"
    assert env["HOME"] == str(spec.home) and env["USER"] == "w1"
    assert set(env) <= {"HICLAW_WORKER_SPEC", "HOME", "USER", "LOGNAME", "PATH", "LANG", "PWD", "TMPDIR",
                        "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


@pytest.mark.parametrize("name", BACKENDS)
async def test_bridge_makes_the_same_url_work_inside(sandbox_backend, worker_spec, name):
    server = await hello_server()
    port = server.sockets[0].getsockname()[1]
    backend = sandbox_backend(name)
    spec = worker_spec([PY, "-c", f"import socket; print(socket.create_connection(('127.0.0.1', {port})).recv(100))"],
                       bridges=[Bridge(name="svc", port=port)])
    await backend.start(spec)
    try:
        assert await backend.wait("w1") == 0, log_lines(backend)
    finally:
        server.close()
    assert log_lines(backend) == ["b'hello from the host'"]


async def test_bridge_to_a_unix_socket_service(sandbox_backend, worker_spec, tmp_path):
    """A service that listens on a unix socket appears as 127.0.0.1:PORT inside (both backends)."""
    async def handle(reader, writer):
        writer.write(b"over unix")
        await writer.drain()
        writer.close()

    sock = tmp_path / "svc.sock"
    server = await asyncio.start_unix_server(handle, path=str(sock))
    program = "import socket; print(socket.create_connection(('127.0.0.1', 18765)).recv(100))"
    backend = sandbox_backend("process")
    await backend.start(worker_spec([PY, "-c", program], bridges=[Bridge(name="svc", port=18765, target_unix=sock)]))
    try:
        assert await backend.wait("w1") == 0, log_lines(backend)
    finally:
        server.close()
    assert log_lines(backend) == ["b'over unix'"]


@pytest.mark.parametrize("name", BACKENDS)
async def test_a_program_that_cannot_run_fails_the_start(sandbox_backend, worker_spec, name):
    backend = sandbox_backend(name)
    with pytest.raises(SandboxError, match=r"did not start \(exit code 127\): hiclaw launch: program not found"):
        await backend.start(worker_spec(["/nonexistent/program"]))
    assert (await backend.status("w1"))["state"] == "absent"


@pytest.mark.parametrize("name", BACKENDS)
async def test_mounts_of_the_control_home_are_refused(sandbox_backend, worker_spec, name):
    backend = sandbox_backend(name)
    for path in (backend.control_home, backend.control_home.parent, backend.control_home / "run"):
        path.mkdir(exist_ok=True)
        with pytest.raises(SandboxError, match="expose the control plane"):
            await backend.start(worker_spec([PY, "-V"], mounts=[Mount(host_path=path)]))
    with pytest.raises(SandboxError, match="does not exist"):
        await backend.start(worker_spec([PY, "-V"], mounts=[Mount(host_path=Path("/nonexistent/dir"))]))


# ----------------------------------------------------------------------------- bwrap only

ISOLATION_PROBE = r"""
import json, os, socket, sys
def can(f):
    try:
        f(); return True
    except OSError:
        return False
home, other, ro, secret, port = sys.argv[1:6]
print(json.dumps({
    "pid": os.getpid(),
    "hostname": socket.gethostname(),
    "see_other_home": os.path.exists(other),
    "read_secret": can(lambda: open(secret).read()),
    "write_home": can(lambda: open(os.path.join(home, "f"), "w").write("x")),
    "read_ro": can(lambda: open(os.path.join(ro, "spec.md")).read()),
    "write_ro": can(lambda: open(os.path.join(ro, "new"), "w").write("x")),
    "write_usr": can(lambda: open("/usr/hiclaw-test", "w").write("x")),
    "connect_host_port": can(lambda: socket.create_connection(("127.0.0.1", int(port)), timeout=2)),
    "interfaces": [n for _, n in socket.if_nameindex()],
    "uid_caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0],
    "processes": len([p for p in os.listdir("/proc") if p.isdigit()]),
}))
"""


@pytest.mark.parametrize("network", [False, True])
async def test_bwrap_isolation(sandbox_backend, worker_spec, tmp_path, network):
    backend = sandbox_backend("bwrap")
    other = tmp_path / "agents" / "other"
    other.mkdir(parents=True)
    ro = tmp_path / "shared"
    ro.mkdir()
    (ro / "spec.md").write_text("task")
    secret = backend.control_home / "secrets.toml"
    secret.write_text("key = 'x'")
    server = await hello_server()
    port = server.sockets[0].getsockname()[1]
    spec = worker_spec([PY, "-c", ISOLATION_PROBE, "HOME", str(other), str(ro), str(secret), str(port)],
                       mounts=[Mount(host_path=ro, read_only=True)], network=network)
    spec = spec.model_copy(update={"argv": [a if a != "HOME" else str(spec.home) for a in spec.argv]})
    await backend.start(spec)
    try:
        assert await backend.wait("w1") == 0, log_lines(backend)
    finally:
        server.close()
    seen = json.loads(log_lines(backend)[-1])
    assert seen["pid"] <= 3 and seen["processes"] <= 3  # its own pid namespace: launcher, worker
    assert seen["hostname"] == "w1"
    assert seen["uid_caps"] == "0000000000000000"
    assert not seen["see_other_home"] and not seen["read_secret"]
    assert seen["write_home"] and (spec.home / "f").read_text() == "x"
    assert seen["read_ro"] and not seen["write_ro"] and not (ro / "new").exists()
    assert not seen["write_usr"]
    if network:  # --share-net: the host's network, as documented
        assert seen["connect_host_port"] and len(seen["interfaces"]) > 1
    else:
        assert not seen["connect_host_port"] and seen["interfaces"] == ["lo"]


async def test_bwrap_command_line_order_and_contents(sandbox_backend, worker_spec, tmp_path):
    backend = sandbox_backend("bwrap")
    spec = worker_spec([PY, "-V"], mounts=[Mount(host_path=tmp_path / "shared", read_only=False)],
                       bridges=[Bridge(name="gateway", port=4000)])
    run_dir = backend._socket_dir("w1")
    argv = backend.command(spec, run_dir, {"gateway": run_dir / "gateway.sock"}, status_fd=9)
    bwrap_part = argv[:argv.index("--")]
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--as-pid-1", "--cap-drop"):
        assert flag in bwrap_part
    assert "--share-net" not in bwrap_part
    tmpfs = bwrap_part.index("/tmp", bwrap_part.index("--tmpfs"))
    binds = [i for i, a in enumerate(bwrap_part) if a in ("--bind", "--ro-bind")]
    under_tmp = [i for i in binds if bwrap_part[i + 2].startswith("/tmp/")]
    assert under_tmp and all(i > tmpfs for i in under_tmp)  # --tmpfs /tmp before binds under /tmp
    sources = {bwrap_part[i + 1] for i in binds}
    assert str(spec.home) in sources and str(tmp_path / "shared") in sources
    assert not any(s == str(backend.control_home) or s.startswith(str(backend.control_home) + "/logs") for s in sources)
    assert str(run_dir) in sources  # only the worker's own socket folder, read-only
    assert bwrap_part[bwrap_part.index(str(run_dir)) - 1] == "--ro-bind"
    launcher = argv[argv.index("--") + 1:]
    assert launcher[:3] == [backend.python, "-m", "hiclaw.sandbox.launch"]
    assert "4000=unix:/run/hiclaw/gateway.sock" in launcher and launcher[-2:] == [PY, "-V"]


async def test_bwrap_setup_failure_is_one_clear_error(sandbox_backend, worker_spec, tmp_path):
    backend = sandbox_backend("bwrap")
    (tmp_path / "data").mkdir()
    # /usr is bound read-only before the mounts, so bwrap cannot create the mount point.
    spec = worker_spec([PY, "-V"], mounts=[Mount(host_path=tmp_path / "data", sandbox_path=Path("/usr/hiclaw-x"))])
    with pytest.raises(SandboxError, match=r"did not start \(exit code 1\): bwrap: Can't mkdir /usr/hiclaw-x"):
        await backend.start(spec)


async def test_missing_bwrap_names_the_fix(sandbox_backend, worker_spec):
    backend = sandbox_backend("bwrap", bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxError, match=r"not installed .*apt-get install bubblewrap"):
        await backend.start(worker_spec([PY, "-V"]))


async def test_bwrap_sandbox_dies_with_its_parent(tmp_path):
    """Kill -9 the process that started a sandbox: the sandboxed worker must not survive."""
    if reason := bwrap_unavailable():
        pytest.skip(reason)
    pid_file = tmp_path / "inner.pid"
    starter = f"""
import asyncio, sys
from pathlib import Path
from types import SimpleNamespace
from hiclaw.sandbox.backends.bwrap import BwrapBackend
from hiclaw.sandbox.spec import WorkerSpec
async def main():
    backend = BwrapBackend(ctx=SimpleNamespace(home=Path({str(tmp_path / 'ctl')!r})))
    home = Path({str(tmp_path / 'home')!r}); home.mkdir()
    await backend.start(WorkerSpec(name="w1", home=home, argv=[sys.executable, "-c", "import time; time.sleep(600)"]))
    print((await backend.status("w1"))["launcher_pid"], flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(PY, "-c", starter, stdout=asyncio.subprocess.PIPE)
    launcher_pid = int(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert Path(f"/proc/{launcher_pid}").exists()
    proc.kill()
    await proc.wait()

    def gone() -> bool:
        try:
            return Path(f"/proc/{launcher_pid}/stat").read_text().split()[2] == "Z"
        except OSError:
            return True

    await wait_for_async(gone, timeout=20, what="the sandbox to die with its parent")
    pid_file.write_text(str(launcher_pid))
    assert not os.path.exists(f"/proc/{launcher_pid}/cmdline") or gone()


async def test_last_words_reach_the_host_after_the_worker_exits(sandbox_backend, worker_spec):
    """A worker that sends and exits at once: the launcher and the host bridge drain the relays."""
    received: list[int] = []
    done = asyncio.Event()

    async def handle(reader, writer):
        received.append(len(await reader.read()))
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = sandbox_backend("bwrap")
    program = f"import socket; socket.create_connection(('127.0.0.1', {port})).sendall(b'x' * 4_000_000)"
    await backend.start(worker_spec([PY, "-c", program], bridges=[Bridge(name="svc", port=port)]))
    try:
        assert await backend.wait("w1") == 0
        await asyncio.wait_for(done.wait(), 30)
    finally:
        server.close()
    assert received == [4_000_000]


async def test_exit_is_not_held_up_by_an_answer_the_worker_no_longer_waits_for(sandbox_backend, worker_spec):
    """A long-poll in flight (the service never answers) must not delay the sandbox's end."""
    connected = asyncio.Event()
    release = asyncio.Event()

    async def never_answers(reader, writer):
        connected.set()
        await release.wait()
        writer.close()

    server = await asyncio.start_server(never_answers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = sandbox_backend("bwrap")
    program = (f"import socket, threading; s = socket.create_connection(('127.0.0.1', {port})); s.sendall(b'GET');"
               "threading.Thread(target=s.recv, args=(1,), daemon=True).start()")  # exits while waiting
    await backend.start(worker_spec([PY, "-c", program], bridges=[Bridge(name="svc", port=port)]))
    try:
        await asyncio.wait_for(connected.wait(), 30)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(backend.wait("w1"), 30) == 0
        assert asyncio.get_running_loop().time() - started < 2.5  # neither drain (3 s, 2 s) waited for it
    finally:
        release.set()
        server.close()
