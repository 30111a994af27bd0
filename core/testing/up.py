"""`hiclaw up` as a real child process, for tests and benchmarks (crash it, restart it, ask it).

    up = UpProcess(home)          # home holds config.toml
    seconds = up.start_and_wait() # until it prints that it is up (every worker ready)
    up.cli("worker", "create", "bob", "--role", "tester")
    up.kill()                     # SIGKILL: a crash
    await up.start_and_wait_async()
    up.stop()                     # Ctrl-C; also stops what a crash left running (hiclaw down)

A crash at an exact point, without sleeps: ``up.crash_after("outbox:assign:task-002")`` before
``start()`` makes that `hiclaw up` SIGKILL itself right after it commits the outbox entry
``assign:task-002`` (or ``assign:task-002:<n>``) — a state change recorded, its message not yet
posted (:func:`hiclaw.control.outbox.crash_hook_for_tests`); ``await up.wait_for_crash()`` then
returns once it died. The hook needs both the variable and a marker file in the home, and it
removes the marker when it fires, so it fires once and never outside a test.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from hiclaw.testing.env import clean_env

READY_LINE = "hiclaw is up"


class UpProcess:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = clean_env(home)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.home / f"up-{self.starts - 1}.log"

    def start(self) -> None:
        self.starts += 1
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "hiclaw", "up"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def is_up(self) -> bool:
        """True once it said it is up; raises if it exited instead."""
        assert self.proc is not None
        text = self.log.read_text(errors="replace")
        if self.proc.poll() is not None:
            raise RuntimeError(f"hiclaw up exited with {self.proc.returncode}: {text[-2000:]}")
        return READY_LINE in text

    def start_and_wait(self, timeout: float = 300) -> float:
        started = time.perf_counter()
        self.start()
        while not self.is_up():
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"hiclaw up was not up within {timeout:.0f}s")
            time.sleep(0.02)  # polling its output with a deadline
        return time.perf_counter() - started

    async def start_and_wait_async(self, timeout: float = 300) -> float:
        started = time.perf_counter()
        self.start()
        while not self.is_up():
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"hiclaw up was not up within {timeout:.0f}s")
            await asyncio.sleep(0.05)  # polling its output with a deadline
        return time.perf_counter() - started

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hiclaw", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def crash_after(self, point: str) -> None:
        """Arm the test-only crash hook for the next start (see the module docstring)."""
        from hiclaw.control.outbox import CRASH_ENV, CRASH_FILE

        marker = self.home / CRASH_FILE
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(point)
        self.env[CRASH_ENV] = point

    async def wait_for_crash(self, timeout: float = 300) -> int:
        """Wait until the armed hook killed the process; its exit code (−SIGKILL)."""
        from hiclaw.control.outbox import CRASH_ENV

        assert self.proc is not None
        started = time.perf_counter()
        while self.proc.poll() is None:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"hiclaw up did not crash at {self.env.get(CRASH_ENV)} within {timeout:.0f}s")
            await asyncio.sleep(0.05)  # polling the child with a deadline
        self.env.pop(CRASH_ENV, None)
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C, as a user stops it; returns its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.interrupt(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # After a crash the team's homeserver and workers keep running (by design); leave nothing behind.
        self.cli("down", timeout=120)
