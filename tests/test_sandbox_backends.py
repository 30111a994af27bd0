"""bwrap and process backends against the real thing: start, stop, exit codes, bridges, logs,
and (bwrap) what a sandboxed program can and cannot see."""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from hiclaw.sandbox.base import SandboxError
from hiclaw.sandbox.spec import Bridge, Mount
from hiclaw.testing import wait_until
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
    await wait_until(lambda: "ready" in log_lines(backend), timeout=30, what="the worker to start")
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
    await wait_until(lambda: "ready" in log_lines(backend), timeout=30, what="the worker to start")
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
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--new-session", "--as-pid-1", "--cap-drop"):
        assert flag in bwrap_part
    assert "--die-with-parent" not in bwrap_part  # it outlives a crash of the control plane (adoption)
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


STARTER = """
import asyncio, json, sys
from pathlib import Path
from types import SimpleNamespace
from hiclaw.sandbox.backends.bwrap import BwrapBackend
from hiclaw.sandbox.settings import BwrapSettings
from hiclaw.sandbox.spec import WorkerSpec
async def main():
    args = json.loads(sys.argv[1])
    backend = BwrapBackend(BwrapSettings(survive_crash=args["survive"]), ctx=SimpleNamespace(home=Path(args["ctl"])))
    await backend.start(WorkerSpec.model_validate(args["spec"]))
    print((await backend.status(args["spec"]["name"]))["launcher_pid"], flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""
#: A sandboxed program that says hello through its bridge, and again on SIGUSR1 (as a worker reconnects).
GREETER = ("import signal, socket, time\n"
           "def hello(text):\n"
           "    with socket.create_connection(('127.0.0.1', {port})) as s: s.sendall(text)\n"
           "signal.signal(signal.SIGUSR1, lambda *_: hello(b'hello again'))\n"
           "hello(b'hello')\n"
           "while True: time.sleep(600)\n")


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def crash_after_start(tmp_path: Path, spec, *, survive: bool, started: asyncio.Event | None = None) -> int:
    """Start ``spec`` from a separate control-plane process (and wait for ``started``), then kill -9
    that process; the launcher's pid."""
    args = {"survive": survive, "ctl": str(tmp_path / "ctl"), "spec": spec.model_dump(mode="json")}
    proc = await asyncio.create_subprocess_exec(PY, "-c", STARTER, json.dumps(args), stdout=asyncio.subprocess.PIPE)
    launcher_pid = int(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert Path(f"/proc/{launcher_pid}").exists()
    if started is not None:
        await asyncio.wait_for(started.wait(), 30)
    proc.kill()
    await proc.wait()
    return launcher_pid


@pytest.fixture
def crash_spec(tmp_path):
    from hiclaw.sandbox.spec import WorkerSpec

    def make(argv, **extra):
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        return WorkerSpec(name="w1", home=home, argv=argv, **extra)
    return make


async def crashed_sleeper(tmp_path: Path, crash_spec) -> tuple:
    """A sleeping worker whose control plane crashed: (its spec, the launcher's pid, a new bwrap backend)."""
    if reason := bwrap_unavailable():
        pytest.skip(reason)
    from types import SimpleNamespace

    from hiclaw.sandbox.backends.bwrap import BwrapBackend

    spec = crash_spec([PY, "-c", "import time; time.sleep(600)"], fingerprint="fp-1")
    launcher_pid = await crash_after_start(tmp_path, spec, survive=True)
    return spec, launcher_pid, BwrapBackend(ctx=SimpleNamespace(home=tmp_path / "ctl"))


async def test_bwrap_sandbox_dies_with_its_parent_unless_it_survives_crashes(tmp_path, crash_spec):
    """``survive_crash = false``: kill -9 the process that started a sandbox and the worker dies too."""
    if reason := bwrap_unavailable():
        pytest.skip(reason)
    launcher_pid = await crash_after_start(tmp_path, crash_spec([PY, "-c", "import time; time.sleep(600)"]),
                                           survive=False)
    await wait_until(lambda: process_gone(launcher_pid), timeout=20, what="the sandbox to die with its parent")


async def test_bwrap_sandbox_survives_a_crash_and_is_adopted(tmp_path, crash_spec):
    """Kill -9 the control plane: the sandbox keeps running; a new backend adopts it (same
    fingerprint) with new host bridges on the same sockets, signals it, watches and stops it."""
    if reason := bwrap_unavailable():
        pytest.skip(reason)
    from types import SimpleNamespace

    from hiclaw.sandbox.backends.bwrap import BwrapBackend

    greetings: list[bytes] = []
    greeted, greeted_again = asyncio.Event(), asyncio.Event()

    async def handle(reader, writer):
        greetings.append(await reader.read())
        (greeted_again if greeted.is_set() else greeted).set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    spec = crash_spec([PY, "-c", GREETER.format(port=port)], bridges=[Bridge(name="svc", port=port)],
                      fingerprint="fp-1")
    launcher_pid = await crash_after_start(tmp_path, spec, survive=True, started=greeted)
    assert not process_gone(launcher_pid)  # outlived the crash

    backend = BwrapBackend(ctx=SimpleNamespace(home=tmp_path / "ctl"))
    assert backend.recorded() == ["w1"]
    handle = await backend.adopt(spec)
    assert handle is not None
    status = await backend.status("w1")
    assert status["state"] == "running" and status["adopted"] and status["launcher_pid"] == launcher_pid
    assert await backend.signal("w1", signal.SIGUSR1)
    await asyncio.wait_for(greeted_again.wait(), 20)  # through the new host bridge
    assert greetings == [b"hello", b"hello again"]
    assert "adopted by a new control plane" in backend.log_path("w1").read_text()

    await backend.stop("w1", timeout=5)
    assert process_gone(launcher_pid)
    assert (await backend.status("w1"))["state"] == "exited" and await backend.wait("w1") is None  # not our child
    assert backend.recorded() == []
    server.close()


async def test_bwrap_run_with_another_fingerprint_is_stopped_not_adopted(tmp_path, crash_spec):
    spec, launcher_pid, backend = await crashed_sleeper(tmp_path, crash_spec)
    assert await backend.adopt(spec.model_copy(update={"fingerprint": "fp-2"})) is None
    assert process_gone(launcher_pid) and backend.recorded() == []
    assert (await backend.status("w1"))["state"] == "absent"


async def test_stop_leftovers_stops_what_a_crash_left(tmp_path, crash_spec):
    """What ``hiclaw down`` does: runs nobody adopted are stopped; a stale record is just removed."""
    _, launcher_pid, backend = await crashed_sleeper(tmp_path, crash_spec)
    stale = backend._record_path("w1").with_name("gone.run.json")
    record = json.loads(backend._record_path("w1").read_text()) | {"name": "gone", "pid_start": 1}
    stale.write_text(json.dumps(record))  # same pids, wrong start time: a pid that was reused
    assert await backend.stop_leftovers() == ["w1"]
    assert process_gone(launcher_pid) and backend.recorded() == []
    assert "left by a crashed control plane" in backend.log_path("w1").read_text()


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


async def test_starting_a_worker_stops_the_run_a_crash_left_of_it(tmp_path, crash_spec):
    """Never two sandboxes of one worker: a start (not an adoption) first stops what a crash left."""
    spec, launcher_pid, backend = await crashed_sleeper(tmp_path, crash_spec)
    await backend.start(spec)
    assert process_gone(launcher_pid)
    status = await backend.status("w1")
    assert status["state"] == "running" and status["launcher_pid"] != launcher_pid and not status["adopted"]
    assert backend.recorded() == ["w1"]  # the new run's record
    await backend.stop("w1", timeout=5)
    assert backend.recorded() == []
