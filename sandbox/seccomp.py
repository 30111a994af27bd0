"""The seccomp filter of bwrap workers: a classic BPF program, built here in pure Python.

bubblewrap installs it (``--seccomp FD``: the program's bytes, read to EOF) right before it runs
the launcher, so it binds the launcher, the worker and everything they start; nothing inside can
remove it (filters only ever stack).

What it does, in order:

1. ``seccomp_data.arch`` must be x86_64 or aarch64 — the only ABIs with a table below. Any other
   (i386 through ``int 0x80``, 32-bit ARM) kills the process: a foreign ABI has other syscall
   numbers, so a table could not hold. On x86_64 the x32 ABI (numbers with bit 30 set) gets
   ``ENOSYS``, as on kernels built without it.
2. The syscalls no worker needs and that widen the kernel's attack surface or reach past the
   sandbox (:data:`DENIED`) fail with ``EPERM``: the key store, eBPF, perf events, userfaultfd,
   io_uring, every mount call, ptrace and cross-process memory access, kexec, kernel modules,
   namespaces (``setns``, ``unshare``), swap, reboot, accounting, quotas, ``open_by_handle_at``.
3. ``clone`` with a namespace flag fails with ``EPERM`` (its flags are argument 0 on both
   ABIs); ``clone3`` gets ``ENOSYS`` — its flags live in memory a filter cannot read — so the C
   library falls back to ``clone`` (glibc does, for threads and ``posix_spawn``).
4. Everything else is allowed. The reference for "everything else" is Docker's default profile:
   git, Python, Node and pip keep working (``tests/test_sandbox_seccomp.py`` runs them).

No libseccomp binding is needed (nor installed): :func:`program` returns the ``sock_filter``
array as bytes, packed with :mod:`struct`.
"""
from __future__ import annotations

import errno
import os
import struct

# BPF opcodes (linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x05 | 0x10  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x05 | 0x30  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x05 | 0x40  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K

# Return actions (linux/seccomp.h)
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# Offsets in struct seccomp_data {int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];}
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # both ABIs are little-endian: the low half of args[0] comes first

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_SYSCALL_BIT = 0x40000000

#: CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

#: Denied syscalls: name → (x86_64 number, aarch64 number); ``None``: the ABI has no such call.
DENIED: dict[str, tuple[int | None, int | None]] = {
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "move_mount": (429, 429),
    "open_tree": (428, 428), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "setns": (308, 268), "unshare": (272, 97),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89),
    "quotactl": (179, 60), "quotactl_fd": (443, 443), "lookup_dcookie": (212, None),
    "open_by_handle_at": (304, 265),
}
#: ``clone`` (namespace flags filtered) and ``clone3`` (``ENOSYS``).
CLONE: dict[str, tuple[int, int]] = {"clone": (56, 220), "clone3": (435, 435)}
ARCHES = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}


def _errno(code: int) -> int:
    return RET_ERRNO | (code & 0xFFFF)


class _Assembler:
    """Instructions with symbolic jump targets, resolved to BPF's relative offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def bytes(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                offset = target if isinstance(target, int) else self.labels[target] - index - 1
                if not 0 <= offset <= 255:
                    raise ValueError(f"seccomp: jump from {index} to {target!r} out of range")
                offsets.append(offset)
            out += struct.pack("=HBBI", code, offsets[0], offsets[1], k & 0xFFFFFFFF)
        return bytes(out)


def program() -> bytes:
    """The filter as a ``struct sock_filter[]`` (8 bytes per instruction, native byte order)."""
    asm = _Assembler()
    asm.op(_LD_W_ABS, _ARCH)
    for index, (_arch, audit) in enumerate(ARCHES.items()):
        asm.op(_JEQ, audit, jt=f"arch{index}")
    asm.op(_RET, RET_KILL_PROCESS)  # a foreign ABI: its numbers mean other calls
    for index, arch in enumerate(ARCHES):
        asm.label(f"arch{index}")
        asm.op(_LD_W_ABS, _NR)
        if arch == "x86_64":
            asm.op(_JGE, _X32_SYSCALL_BIT, jt="enosys")
        for numbers in DENIED.values():
            number = numbers[index]
            if number is not None:
                asm.op(_JEQ, number, jt="eperm")
        asm.op(_JEQ, CLONE["clone3"][index], jt="enosys")
        asm.op(_JEQ, CLONE["clone"][index], jt="clone")
        asm.op(_RET, RET_ALLOW)
    asm.label("clone")
    asm.op(_LD_W_ABS, _ARG0_LOW)  # every namespace flag lies in the low 32 bits
    asm.op(_JSET, CLONE_NAMESPACE_FLAGS, jt="eperm")
    asm.op(_RET, RET_ALLOW)
    asm.label("eperm")
    asm.op(_RET, _errno(errno.EPERM))
    asm.label("enosys")
    asm.op(_RET, _errno(errno.ENOSYS))
    return asm.bytes()


def supported() -> bool:
    """Whether this machine's ABI is one the filter has a table for."""
    return os.uname().machine in ARCHES


def program_fd() -> int:
    """A pipe's read end holding :func:`program` up to EOF, for ``bwrap --seccomp FD`` (inheritable
    by the child only through ``pass_fds``). The program is far smaller than a pipe's buffer."""
    data = program()
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def describe() -> str:
    """One line for ``hiclaw sandbox check``."""
    return (f"{len(DENIED)} syscalls denied (EPERM), clone with namespace flags denied, clone3 ENOSYS, "
            f"other ABIs than {' and '.join(ARCHES)} killed")
