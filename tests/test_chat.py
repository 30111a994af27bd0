"""`hiclaw chat`, driven in a pseudo-terminal as a person over SSH would, against a real Synapse."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time

import pytest
import tomli_w

from hiclaw.testing import clean_env
from hiclaw.testing.matrix import MatrixUser

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A program on a pty: ``expect`` what it prints, ``type`` what a person types."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.screen = ""

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.screen)
            if match:
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {pattern!r} on the terminal; it shows:\n{self.screen[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the program exited and the pty closed
                    data = b""
                if not data and self.proc.poll() is not None:
                    raise TimeoutError(f"program exited ({self.proc.returncode}) before {pattern!r}:\n{self.screen[-2000:]}")
                self.screen += ANSI.sub("", data.decode(errors="replace")).replace("\r\n", "\n")

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)


@pytest.fixture
async def chat_home(synapse, matrix_control, tmp_path):
    """A $HICLAW_HOME whose channel is the session's Synapse, with rooms and an admin password."""
    control = await matrix_control()
    creds = await control.ensure_account("admin", password="admin-secret-pw", admin=True)
    alice = await control.ensure_account("alice")
    await control.ensure_room("manager", name="Manager", members=["admin"], admins=["admin"])
    room = await control.ensure_room("worker-alice", name="Worker: alice", members=["admin", "alice"], admins=["admin"])
    home = tmp_path / "chat-home"
    home.mkdir()
    settings = synapse.channel_settings(control.settings.user_prefix)
    (home / "config.toml").write_text(tomli_w.dumps({"channel": {"plugin": "matrix", "settings": settings}}))
    secrets = home / "secrets.toml"
    secrets.write_text('matrix_admin_password = "admin-secret-pw"\n')
    secrets.chmod(0o600)
    env = clean_env()
    return {"home": home, "env": {**env, "HICLAW_HOME": str(home), "TERM": "xterm"}, "room": room, "control": control,
            "admin": MatrixUser(creds["user_id"], creds["access_token"], creds["device_id"], "admin-secret-pw"),
            "alice": MatrixUser(alice["user_id"], alice["access_token"], alice["device_id"], "")}


async def test_chat_in_a_terminal(synapse, chat_home, hiclaw_cli):
    alice, room = chat_home["alice"], chat_home["room"]
    synapse.send(alice, room, "earlier message from alice")
    term = Terminal([str(hiclaw_cli), "chat"], chat_home["env"])
    try:
        term.expect(r"logged in as @\S+admin:")
        term.expect(r"Manager\s+\(2 members\)")
        term.expect(r"pick a room \[1-2\]: ")
        term.type("Worker: alice")
        term.expect(r"── Worker: alice ──")
        term.expect(r"\] alice: earlier message from alice")  # history

        synapse.send(alice, room, "live from alice")
        term.expect(r"\] alice: live from alice")  # live stream

        term.type("thanks @alice, see **this**")
        term.expect(r"\] you: thanks @alice")
        sent = [e for e in synapse.messages(alice, room) if e["sender"] == chat_home["admin"].user_id]
        content = sent[-1]["content"]
        assert content["body"] == "thanks @alice, see **this**"
        assert content["m.mentions"] == {"user_ids": [alice.user_id]}
        assert f'href="https://matrix.to/#/{alice.user_id}"' in content["formatted_body"]

        term.type("/rooms")
        term.expect(r"2\s+Worker: alice\s+\(3 members\)")
        term.type("/room 1")
        term.expect(r"── Manager ──")
        term.type("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


def test_chat_lists_rooms_as_json_and_reuses_its_session(synapse, chat_home, hiclaw_cli):
    run = [str(hiclaw_cli), "chat", "--list", "--json"]
    first = subprocess.run(run, capture_output=True, text=True, env=chat_home["env"], timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    rooms = json.loads(first.stdout)
    assert [r["name"] for r in rooms] == ["Manager", "Worker: alice"]
    session = json.loads((chat_home["home"] / "channel" / "chat" / "session.json").read_text())
    second = subprocess.run(run, capture_output=True, text=True, env=chat_home["env"], timeout=60, check=False)
    assert json.loads(second.stdout) == rooms
    again = json.loads((chat_home["home"] / "channel" / "chat" / "session.json").read_text())
    assert again["device_id"] == session["device_id"]  # no new device per run


def test_chat_errors_are_one_line(chat_home, hiclaw_cli):
    env = chat_home["env"]
    wrong = subprocess.run([str(hiclaw_cli), "chat", "--list", "--password", "nope"], capture_output=True, text=True,
                           env=env, timeout=60, check=False)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: login as @") and wrong.stderr.count("\n") == 1
    (chat_home["home"] / "secrets.toml").write_text("")
    (chat_home["home"] / "channel" / "chat").mkdir(parents=True, exist_ok=True)
    missing = subprocess.run([str(hiclaw_cli), "chat", "--list"], capture_output=True, text=True, env=env, timeout=60,
                             check=False)
    assert missing.returncode == 1 and "matrix_admin_password" in missing.stderr
    bad_user = subprocess.run([str(hiclaw_cli), "chat", "--user", "Not A Name"], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
    assert bad_user.returncode == 1 and "--user" in bad_user.stderr
