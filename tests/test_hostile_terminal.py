"""A hostile worker against the admin's terminal (issue 14, attack 10).

What a worker writes — chat messages, its log, its result.md — is printed by `hiclaw chat`,
`hiclaw worker logs`, `hiclaw task show`. Before the fix, escape sequences went out raw: a
worker could set the admin's window title (OSC 0), clear the screen (CSI 2J), overwrite a line
with ``\\r`` or reorder it with a bidi override, making the admin read what it wanted. Here a
worker in a live team does all of that, and the bytes the CLI prints hold none of it.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from hiclaw.cli.app import terminal_safe
from hiclaw.testing import clean_env
from hiclaw.testing.team import running_team, wait_until

#: Each is something a terminal acts on instead of showing.
TITLE, CLEAR, OVERWRITE, BIDI = "\x1b]0;pwned\x07", "\x1b[2J\x1b[H", "all tests passed\rFAILED", "\u202eevil\u202c"
HOSTILE = f"status {TITLE}{CLEAR} {OVERWRITE} {BIDI} \x1b[31mred\x1b[0m \x9b2J \x08\x08end-of-message"
FORBIDDEN = [b"\x1b", b"\x07", b"\r", b"\x08", "\u202e".encode(), "\u202c".encode(), "\u009b".encode()]


def hostile_bytes(output: bytes) -> list[bytes]:
    return [b for b in FORBIDDEN if b in output]


@pytest.mark.parametrize("text", [
    TITLE, CLEAR, OVERWRITE, BIDI, "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\", "\x1bc", "\x1b(0",
    "\x9d0;title\x9c", "\x1bP+q\x1b\\", "a\x00b\x7fc\x85d", "\u2066iso\u2069 \u200fmark", "back\x08\x08\x08",
])
def test_terminal_safe_leaves_nothing_a_terminal_would_act_on(text):
    safe = terminal_safe(text)
    assert not hostile_bytes(safe.encode())
    assert all(ch in "\n\t" or (ord(ch) >= 0x20 and not 0x7f <= ord(ch) <= 0x9f) for ch in safe), repr(safe)


def test_terminal_safe_keeps_ordinary_text():
    text = "Résumé · 中文 · emoji 🎉\n\tindented — «quoted» ✓"
    assert terminal_safe(text) == text
    assert terminal_safe("line one\r\nline two") == "line one\nline two"
    assert terminal_safe("a\nb\tc", one_line=True) == "a b c"
    assert terminal_safe("all tests passed\rFAILED") == "all tests passedFAILED"  # both halves stay visible


def cli(home, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "hiclaw", *args], capture_output=True, env=clean_env(home),
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


ATTACK_LOG = (  # its log is its own stdout/stderr: it writes there what the admin's terminal would act on
    "printf '%b\\n' 'log: \\033]0;pwned\\007\\033[2J all good\\rFAILED \\342\\200\\256evil end-of-log' "
    ">> /proc/$PPID/fd/1; echo wrote-the-log"
)


def _call(name: str, **arguments):
    return {"name": name, "arguments": arguments}


SCENARIO = {"agents": {
    "mallory": {"rules": [
        {"when": {"role": "user", "regex": r"@mallory \*\*task-\d+\*\*"},
         "tool_calls": [_call("report_result", task_id="task-001", status="SUCCESS", summary=f"done {TITLE}",
                              result_markdown=f"# Result\n{HOSTILE}")]},
        {"when": {"tool_result": "report_result"}, "text": "reported"},
        {"when": {"role": "user", "regex": "show me"},
         "tool_calls": [_call("run_command", command=ATTACK_LOG)]},
        {"when": {"tool_result": "run_command", "contains": "wrote-the-log"}, "text": HOSTILE},
    ]},
    "*": {"default": {"text": "ok"}},
}}


async def test_what_a_worker_writes_reaches_the_admins_terminal_without_escapes(tmp_path):
    home = tmp_path / "home"
    async with running_team(home, SCENARIO) as team:
        plane = team.plane
        await plane.provisioner.create_worker("mallory", role=f"tester {TITLE}")
        room = await plane.chat.worker_room("mallory")
        await wait_until(lambda: room in team.admin.room_names, what="the admin in mallory's room")
        await team.admin.send(room, "@mallory show me", mention=team.user_id("mallory"))
        await team.wait_for_message("end-of-message", sender="mallory")
        task = await plane.engine.assign_adhoc("mallory", "look busy", spec="Do something.")
        await wait_until(lambda: plane.state.task(task.id).result_status is not None, what="mallory's report")
        raw = next(m.body for m in team.admin.messages if "end-of-message" in m.body)
        assert "\x1b]0;pwned\x07" in raw and "\r" in raw  # what the worker sent really is hostile

        chat, logs, show = await asyncio.gather(
            asyncio.to_thread(cli, home, "chat", "--room", "Worker: mallory", "--history", "50"),
            asyncio.to_thread(cli, home, "worker", "logs", "mallory"),
            asyncio.to_thread(cli, home, "task", "show", task.id))
        listing = await asyncio.to_thread(cli, home, "worker", "list")

    for run, needle in ((chat, b"end-of-message"), (logs, b"end-of-log"), (show, b"end-of-message"),
                        (listing, b"tester")):
        assert run.returncode == 0, (run.args, run.stderr.decode(errors="replace"))
        assert needle in run.stdout, (run.args, run.stdout[-2000:])  # the text is shown …
        assert hostile_bytes(run.stdout + run.stderr) == [], (run.args, run.stdout[-2000:])  # … and nothing else
    assert b"all tests passedFAILED" in chat.stdout  # the overwrite trick is plain to see
    assert b"all goodFAILED" in logs.stdout or (b"all good\n" in logs.stdout and b"FAILED" in logs.stdout)
