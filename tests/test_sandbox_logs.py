"""`hiclaw worker logs NAME [-f] [-n N]` and the log reader behind it."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from hiclaw.sandbox.logs import read_log_lines, worker_log_path
from hiclaw.testing import wait_for


def run(cli: Path, home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {"HICLAW_HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(cli), "worker", "logs", *args], capture_output=True, text=True, env=env, check=False, **kwargs)


def write_log(home: Path, name: str, text: str) -> Path:
    path = worker_log_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_logs_prints_the_log_and_its_tail(hiclaw_cli, tmp_path):
    write_log(tmp_path, "alice", "one\n\nthree\nfour\n")
    assert run(hiclaw_cli, tmp_path, "alice").stdout == "one\n\nthree\nfour\n"
    assert run(hiclaw_cli, tmp_path, "alice", "-n", "2").stdout == "three\nfour\n"


def test_logs_errors(hiclaw_cli, tmp_path):
    missing = run(hiclaw_cli, tmp_path, "bob")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no log for worker 'bob'")
    assert missing.stderr.count("\n") == 1
    bad = run(hiclaw_cli, tmp_path, "Bad_Name")
    assert bad.returncode == 2 and "is not a worker name" in bad.stderr


def test_logs_follow_prints_new_lines(hiclaw_cli, tmp_path):
    path = write_log(tmp_path, "alice", "old\n")
    proc = subprocess.Popen([str(hiclaw_cli), "worker", "logs", "alice", "-f"], stdout=subprocess.PIPE, text=True,
                            env={"HICLAW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "old\n" in lines, timeout=30, what="the existing line")
        with open(path, "a") as fh:
            fh.write("new\n")
        wait_for(lambda: "new\n" in lines, timeout=30, what="the appended line")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_reader_survives_rotation_and_partial_lines(tmp_path):
    path = tmp_path / "w.log"
    path.write_text("a\npart")
    lines = read_log_lines(path, follow=True, interval=0)
    assert next(lines) == "a"
    assert next(lines) is None  # idle: "part" is not a whole line yet
    with open(path, "a") as fh:
        fh.write("ial\n")
    assert next(lines) == "partial"
    os.replace(path, tmp_path / "w.log.1")
    path.write_text("fresh\n")
    assert next(line for line in lines if line is not None) == "fresh"
