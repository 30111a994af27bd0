"""``hiclaw fs`` as the admin runs it: the real console script, a fresh $HICLAW_HOME, both backends."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from hiclaw.testing import clean_env


def _env(home, **extra):
    env = clean_env(drop=("S3_",))
    return {**env, "HICLAW_HOME": str(home), **extra}


def run(hiclaw_cli, home, *args, stdin=None, env=None, check=True):
    result = subprocess.run([str(hiclaw_cli), "fs", *args], capture_output=True, env=env or _env(home), input=stdin,
                            timeout=60, check=False)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


def test_fs_round_trip_on_local_storage(hiclaw_cli, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "notes.md").write_text("# notes\n")
    tree = tmp_path / "work"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "main.py").write_text("print('hi')\n")
    (tree / "build.log").write_text("noise\n")

    assert b"uploaded agents/alice/notes.md (8 bytes)" in run(hiclaw_cli, home, "put", str(tmp_path / "notes.md"), "agents/alice/").stdout
    run(hiclaw_cli, home, "put", "-", "shared/tasks/t1/spec.md", stdin=b"# spec\n")
    synced = run(hiclaw_cli, home, "put", str(tree), "shared/tasks/t1/workspace/", "--exclude", "*.log").stdout.decode()
    assert "1 file(s) uploaded" in synced
    assert "0 file(s) uploaded" in run(hiclaw_cli, home, "put", str(tree), "shared/tasks/t1/workspace/", "--exclude", "*.log").stdout.decode()
    assert (home / "data" / "shared/tasks/t1/workspace/src/main.py").read_text() == "print('hi')\n"

    listing = json.loads(run(hiclaw_cli, home, "ls", "-r", "--json").stdout)
    assert [e["key"] for e in listing] == ["agents/alice/notes.md", "shared/tasks/t1/spec.md",
                                          "shared/tasks/t1/workspace/src/main.py"]
    table = run(hiclaw_cli, home, "ls").stdout.decode().splitlines()
    assert table[0].split() == ["SIZE", "MODIFIED", "PATH"] and [row.split()[-1] for row in table[1:]] == ["agents/", "shared/"]
    assert run(hiclaw_cli, home, "cat", "shared/tasks/t1/spec.md").stdout == b"# spec\n"

    run(hiclaw_cli, home, "get", "shared/tasks/t1/", str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "workspace/src/main.py").read_text() == "print('hi')\n"
    run(hiclaw_cli, home, "get", "agents/alice/notes.md", str(tmp_path / "back.md"))
    assert (tmp_path / "back.md").read_text() == "# notes\n"
    assert run(hiclaw_cli, home, "url", "agents/alice/notes.md").stdout.decode().strip().startswith("file://")

    assert json.loads(run(hiclaw_cli, home, "rm", "-r", "shared/tasks/t1/", "--json").stdout)["removed"] == [
        "shared/tasks/t1/spec.md", "shared/tasks/t1/workspace/src/main.py"]
    run(hiclaw_cli, home, "rm", "agents/alice/notes.md")
    assert json.loads(run(hiclaw_cli, home, "ls", "-r", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cat", "../../etc/passwd"], "invalid storage key '../../etc/passwd': contains a '..' segment"),
        (["cat", "/etc/passwd"], "is an absolute path"),
        (["put", "-", "agents/a\tb.md"], "contains a control character"),
        (["cat", "agents/nobody/x.md"], "no object 'agents/nobody/x.md' in storage"),
        (["rm", "-r", ""], "invalid folder to remove"),
        (["ls", "shared/none"], "nothing at 'shared/none'"),
    ],
)
def test_fs_errors_are_one_line_and_exit_1(hiclaw_cli, tmp_path, args, message):
    result = run(hiclaw_cli, tmp_path, *args, stdin=b"x", check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_fs_usage_error_exits_2(hiclaw_cli, tmp_path):
    assert run(hiclaw_cli, tmp_path, "get", check=False).returncode == 2


def test_fs_on_s3_with_root_keys_from_the_environment(hiclaw_cli, tmp_path, s3_server):
    home = tmp_path / "home"
    home.mkdir()
    settings = s3_server.settings()
    (home / "config.toml").write_text(
        f'[storage]\nplugin = "minio"\n\n[storage.settings]\nendpoint = "{settings["endpoint"]}"\nbucket = "{settings["bucket"]}"\n')
    missing = run(hiclaw_cli, home, "ls", check=False)
    assert missing.returncode == 1 and "secret 's3_access_key' is not set" in missing.stderr.decode()
    env = _env(home, S3_ACCESS_KEY=s3_server.access_key, S3_SECRET_KEY=s3_server.secret_key)
    run(hiclaw_cli, home, "put", "-", "shared/projects/p1/plan.md", stdin=b"- [ ] task-001\n", env=env)
    listing = json.loads(run(hiclaw_cli, home, "ls", "shared/projects/p1/", "--json", env=env).stdout)
    assert [(e["key"], e["size"]) for e in listing] == [("shared/projects/p1/plan.md", 15)]
    url = run(hiclaw_cli, home, "url", "shared/projects/p1/plan.md", "--expires", "120", env=env).stdout.decode().strip()
    assert httpx.get(url).content == b"- [ ] task-001\n"


def test_storage_entry_modules_import_no_sdk():
    code = ("import sys, hiclaw.storage, hiclaw.storage.sync, hiclaw.plugins.storage.local, hiclaw.plugins.storage.minio, "
            "hiclaw.cli.fs; print(sorted(m for m in ('minio', 'urllib3', 'nio', 'litellm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
