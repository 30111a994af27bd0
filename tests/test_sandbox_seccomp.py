"""The seccomp filter of bwrap workers, on real bubblewrap sandboxes.

Inside a real sandbox, a program calls every denied syscall through ``ctypes`` ``syscall()`` —
with arguments that are harmless either way (bad descriptors, NULL pointers, no-op flags) — and
reports each errno. With the filter every one fails with ``EPERM`` (``clone3``: ``ENOSYS``, so the C
library falls back to ``clone``, whose namespace flags are then refused). The negative control
runs the same program with ``seccomp = false``: there the calls reach the kernel and fail (or
succeed) for their own reasons — so the test would fail without the filter. Ordinary work still
runs under it: Python, threads, a shell pipeline, ``git``, ``pip``, Node.
"""
from __future__ import annotations

import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest

from hiclaw.sandbox import seccomp
from hiclaw.testing.sandbox import bwrap_unavailable

PY = sys.executable
pytestmark = [pytest.mark.needs_bwrap, pytest.mark.skipif(bool(bwrap_unavailable()), reason=str(bwrap_unavailable()))]

#: Runs inside the sandbox; prints {"name": errno (0: it succeeded)} as JSON.
PROBE = r"""
import ctypes, json, os, platform
from hiclaw.sandbox.seccomp import CLONE, DENIED
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
arch = 0 if platform.machine() == "x86_64" else 1
NULL, BAD_FD = 0, -1
pid = os.getpid()
ARGS = {  # harmless with or without the filter: bad fds, NULL pointers, no-op flags, no capabilities
    "keyctl": (0, -3, 0), "add_key": (NULL, NULL, NULL, 0, 0), "request_key": (NULL, NULL, NULL, 0),
    "bpf": (9999, NULL, 0), "perf_event_open": (NULL, 0, -1, -1, 0), "userfaultfd": (0xFFFF,),
    "io_uring_setup": (1, NULL), "io_uring_enter": (BAD_FD, 0, 0, 0, NULL, 0),
    "io_uring_register": (BAD_FD, 0, NULL, 0), "mount": (NULL, NULL, NULL, 0, NULL), "umount2": (NULL, 0),
    "pivot_root": (NULL, NULL), "move_mount": (BAD_FD, NULL, BAD_FD, NULL, 0), "open_tree": (BAD_FD, NULL, 0),
    "fsopen": (NULL, 0), "fsconfig": (BAD_FD, 0, NULL, NULL, 0), "fsmount": (BAD_FD, 0, 0),
    "fspick": (BAD_FD, NULL, 0), "mount_setattr": (BAD_FD, NULL, 0, NULL, 0),
    "open_tree_attr": (BAD_FD, NULL, 0, NULL, 0), "ptrace": (-1, 999999, 0, 0),
    "process_vm_readv": (pid, NULL, 0, NULL, 0, 0), "process_vm_writev": (pid, NULL, 0, NULL, 0, 0),
    "kexec_load": (0, 0, NULL, 0), "kexec_file_load": (BAD_FD, BAD_FD, 0, NULL, 0),
    "init_module": (NULL, 0, NULL), "finit_module": (BAD_FD, NULL, 0), "delete_module": (NULL, 0),
    "setns": (BAD_FD, 0), "unshare": (0,), "swapon": (NULL, 0), "swapoff": (NULL,), "reboot": (0, 0, 0, NULL),
    "acct": (NULL,), "quotactl": (0, NULL, 0, NULL), "quotactl_fd": (BAD_FD, 0, 0, NULL),
    "lookup_dcookie": (0, NULL, 0), "open_by_handle_at": (BAD_FD, NULL, 0),
}
def call(number, args):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    if result == 0 and number == CLONE["clone"][arch]:
        os._exit(0)  # a child (the call went through): it must not run on
    if result > 0 and number == CLONE["clone"][arch]:
        os.waitpid(result, 0)
    return ctypes.get_errno() if result == -1 else 0
seen = {name: call(numbers[arch], ARGS[name]) for name, numbers in DENIED.items() if numbers[arch] is not None}
SIGCHLD = 17
seen["clone(CLONE_NEWUTS)"] = call(CLONE["clone"][arch], (0x04000000 | SIGCHLD, 0, 0, 0, 0))
seen["clone(CLONE_NEWUSER)"] = call(CLONE["clone"][arch], (0x10000000 | SIGCHLD, 0, 0, 0, 0))
seen["clone(CLONE_NEWNET)"] = call(CLONE["clone"][arch], (0x40000000 | SIGCHLD, 0, 0, 0, 0))
seen["clone3"] = call(CLONE["clone3"][arch], (NULL, 0))
seen["getpid"] = 0 if libc.syscall(ctypes.c_long(39 if arch == 0 else 172)) > 0 else ctypes.get_errno()
print(json.dumps(seen))
"""

#: Ordinary work, inside the same filter.
WORKLOAD = r"""
set -e
python3=PYTHON
$python3 -c 'import hashlib, json, sqlite3; sqlite3.connect(":memory:").execute("select 1"); print("python ok")'
$python3 -c '
import concurrent.futures, subprocess, threading
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    assert sum(pool.map(lambda n: n * n, range(100))) == 328350
out = subprocess.run("seq 1 1000 | sort -rn | head -n 1", shell=True, capture_output=True, text=True).stdout
assert out.strip() == "1000", out
print("threads and a pipeline ok")'
mkdir repo && cd repo && git init -q && echo hi > f && git add f
git -c user.name=w -c user.email=w@example.invalid commit -q -m first && git log --oneline | wc -l
$python3 -m pip --version | cut -c1-3
if command -v node > /dev/null; then node -e 'require("child_process").execSync("true"); console.log("node ok")'; else echo "node ok"; fi
"""


def log_lines(backend, name="w1") -> list[str]:
    return [ln for ln in backend.log_path(name).read_text().splitlines() if not ln.startswith("--- hiclaw:")]


async def run_probe(backend, worker_spec) -> dict[str, int]:
    await backend.start(worker_spec([PY, "-c", PROBE]))
    assert await backend.wait("w1") == 0, log_lines(backend)
    return json.loads(log_lines(backend)[-1])


async def test_every_denied_syscall_fails_with_eperm(sandbox_backend, worker_spec):
    seen = await run_probe(sandbox_backend("bwrap"), worker_spec)
    expected = {name for name, numbers in seccomp.DENIED.items() if numbers[_arch_index()] is not None}
    assert expected <= set(seen) and len(expected) >= 37
    wrong = {name: os.strerror(code) for name, code in seen.items()
             if name not in ("clone3", "getpid") and code != 1}  # EPERM
    assert not wrong, f"not refused with EPERM: {wrong}"
    assert seen["clone3"] == 38  # ENOSYS: libc falls back to clone, whose flags the filter can read
    assert seen["getpid"] == 0


async def test_without_the_filter_the_same_calls_reach_the_kernel(sandbox_backend, worker_spec):
    """Negative control: ``seccomp = false`` — the kernel answers these for its own reasons."""
    seen = await run_probe(sandbox_backend("bwrap", seccomp=False), worker_spec)
    assert seen["unshare"] == 0 and seen["process_vm_readv"] == 0  # no-ops that succeed
    assert seen["setns"] == 9 and seen["io_uring_enter"] == 9  # EBADF
    assert seen["io_uring_setup"] == 14  # EFAULT
    assert seen["clone3"] == 22  # EINVAL, not ENOSYS
    assert seen["keyctl"] != 1 and seen["bpf"] != 1


async def test_ordinary_work_runs_under_the_filter(sandbox_backend, worker_spec):
    backend = sandbox_backend("bwrap")
    assert backend.settings.seccomp  # the default
    await backend.start(worker_spec(["/bin/bash", "-c", WORKLOAD.replace("PYTHON", PY)]))
    assert await backend.wait("w1") == 0, log_lines(backend)
    assert log_lines(backend) == ["python ok", "threads and a pipeline ok", "1", "pip", "node ok"]


async def test_the_filter_is_on_the_command_line_only_when_asked(sandbox_backend, worker_spec):
    spec = worker_spec([PY, "-V"])
    for enabled in (True, False):
        backend = sandbox_backend("bwrap", seccomp=enabled)
        plan = backend._plan(spec, backend._socket_dir("w1"), {}, ready_fd=9)
        try:
            assert ("--seccomp" in plan.argv) is enabled
            if enabled:
                fd = int(plan.argv[plan.argv.index("--seccomp") + 1])
                assert fd in plan.pass_fds and os.read(fd, 1 << 16) == seccomp.program()
        finally:
            plan.close()


def _arch_index() -> int:
    return list(seccomp.ARCHES).index(os.uname().machine)


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text() if path.exists() else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)\b", text)}


@pytest.mark.parametrize("arch, header", [
    (0, "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    (1, "/usr/include/asm-generic/unistd.h"),  # aarch64 uses the generic table
])
def test_syscall_numbers_match_the_kernel_headers(arch, header):
    """The tables are checked against the kernel's own headers (where installed)."""
    numbers = _header_numbers(Path(header))
    if not numbers:
        pytest.skip(f"{header} is not installed (linux-libc-dev)")
    table = {**seccomp.DENIED, **seccomp.CLONE}
    checked = {name: own[arch] for name, own in table.items() if own[arch] is not None and name in numbers}
    assert len(checked) >= 30  # a header too old for the newest calls is fine (open_tree_attr)
    assert {n: numbers[n] for n in checked} == checked


def test_the_program_is_well_formed():
    """Each instruction is 8 bytes; every jump lands inside; the first checks the architecture."""
    data = seccomp.program()
    assert len(data) % 8 == 0 and 20 < len(data) // 8 < 4096  # BPF_MAXINSNS
    code = [struct.unpack("=HBBI", data[i:i + 8]) for i in range(0, len(data), 8)]
    assert code[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    for index, (op, jt, jf, _) in enumerate(code):
        if op & 0x07 == 0x05:  # a jump
            assert index + 1 + max(jt, jf) < len(code)
    assert all(op == 0x06 for op, *_ in code[-3:])  # ends in returns
