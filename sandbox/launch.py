"""In-sandbox launcher: start the bridges' forwarders, run the worker, pass signals and exit code.

Usage (the backends build this line; it is not meant for people)::

    python -m hiclaw.sandbox.launch [--bridge PORT=unix:PATH | PORT=tcp:HOST:PORT]...
        [--rlimit-as BYTES] [--rlimit-nofile N] [--rlimit-nproc N] [--max-connections N]
        [--parent-pid PID] [--ready-fd FD] -- PROGRAM [ARGS...]

1. Applies resource limits (inherited by the worker; soft = hard, so it cannot raise them).
   ``--rlimit-nproc`` is given only inside a sandbox's own user namespace, where the kernel
   counts the processes of that namespace alone (see :mod:`hiclaw.sandbox.limits`).
2. Listens on ``127.0.0.1:PORT`` for every ``--bridge`` (see :mod:`hiclaw.sandbox.bridge`), so
   the listeners are up before the worker starts — no readiness race. ``--max-connections``:
   connections per bridge relayed at once (more are closed on arrival, as the host would).
3. Spawns PROGRAM as its child (then writes one byte to ``--ready-fd`` and closes it, so the
   host knows the sandbox is set up and the worker runs), forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
   to it, and exits with its exit code (``128 + N`` if killed by signal N). PROGRAM starts with
   SIGUSR1 ignored (the reconnect signal: install a handler to get it).
4. When it is PID 1 of a sandbox (bwrap ``--as-pid-1``, containers) it also reaps orphans.

Exit codes of its own: 125 bad usage or a bridge port that cannot be bound, 126 PROGRAM not
executable, 127 PROGRAM not found. Stdlib only, threads only: it starts in a few milliseconds.
"""
from __future__ import annotations

import os
import signal
import sys

from hiclaw.sandbox.bridge import SandboxForwarder, parse_target

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_IN_CHILD = tuple(s for s in FORWARDED_SIGNALS if s != signal.SIGUSR1)
EXIT_USAGE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127
#: After the worker exits, how long relays still in flight may take to finish.
DRAIN_SECONDS = 3.0
_PR_SET_PDEATHSIG = 1


def _fail(code: int, message: str) -> int:
    print(f"hiclaw launch: {message}", file=sys.stderr, flush=True)
    return code


def _parse(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    if "--" not in argv:
        raise ValueError("missing '--' before the program to run")
    split = argv.index("--")
    options: dict[str, list[str]] = {"--bridge": [], "--rlimit-as": [], "--rlimit-nofile": [], "--rlimit-nproc": [],
                                     "--max-connections": [], "--parent-pid": [], "--ready-fd": []}
    head = argv[:split]
    i = 0
    while i < len(head):
        name = head[i]
        if name not in options or i + 1 >= len(head):
            raise ValueError(f"unknown or incomplete option {name!r}")
        options[name].append(head[i + 1])
        i += 2
    program = argv[split + 1:]
    if not program:
        raise ValueError("no program given after '--'")
    return options, program


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the process that started us dies (the process backend has no bwrap)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _limits(options: dict[str, list[str]]) -> None:
    import resource

    for option, which in (("--rlimit-as", resource.RLIMIT_AS), ("--rlimit-nofile", resource.RLIMIT_NOFILE),
                          ("--rlimit-nproc", resource.RLIMIT_NPROC)):
        for value in options[option]:
            limit = int(value)
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(which, (limit, limit))


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    try:
        options, program = _parse(list(sys.argv[1:] if argv is None else argv))
        targets = [parse_target(text) for text in options["--bridge"]]
        ready_fds = [int(fd) for fd in options["--ready-fd"]]
        cap = int(options["--max-connections"][-1]) if options["--max-connections"] else None
        for fd in ready_fds:
            os.set_inheritable(fd, False)  # the worker must not hold it
        _limits(options)
    except (ValueError, OSError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    if options["--parent-pid"]:
        _die_with_parent(int(options["--parent-pid"][0]))

    child_pid = 0
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child_pid:
            try:
                os.kill(child_pid, signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    # SIGUSR1 is the control plane's "I am back" to a worker it adopted after a crash: the worker
    # starts with it ignored (inherited through exec) until it installs its handler, so one sent
    # during its start-up is dropped instead of killing it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    forwarders = []
    for port, target in targets:
        try:
            forwarders.append(SandboxForwarder(port, target, max_connections=cap).start())
        except OSError as exc:
            return _fail(EXIT_USAGE, f"cannot listen on 127.0.0.1:{port} for a bridge: {exc.strerror}")

    try:
        # Python ignores SIGPIPE and SIGXFSZ; like subprocess's restore_signals, give the worker
        # the defaults back (else `yes | head` in its shell commands would never end).
        child_pid = os.posix_spawnp(program[0], program, os.environ,
                                    setsigdef=(*DEFAULT_IN_CHILD, signal.SIGPIPE, signal.SIGXFSZ))
    except FileNotFoundError:
        return _fail(EXIT_NOT_FOUND, f"program not found: {program[0]}")
    except OSError as exc:
        return _fail(EXIT_NOT_EXECUTABLE, f"cannot run {program[0]}: {exc.strerror}")
    for fd in ready_fds:
        try:
            os.write(fd, b"1")
            os.close(fd)
        except OSError:
            pass  # the host went away; the worker runs anyway
    signal.signal(signal.SIGUSR1, forward)
    for queued in pending:
        forward(queued, None)

    reap_all = os.getpid() == 1  # PID 1 inherits every orphan of the sandbox
    while True:
        try:
            pid, status = os.waitpid(-1 if reap_all else child_pid, 0)
        except ChildProcessError:
            return _fail(1, "lost track of the worker process")
        if pid == child_pid:
            for forwarder in forwarders:  # let the worker's last messages reach the host
                forwarder.drain(DRAIN_SECONDS)
            return _exit_code(status)


if __name__ == "__main__":
    sys.exit(main())
