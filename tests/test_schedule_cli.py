"""``hiclaw schedule`` against a home whose team is not running: it edits the state DB directly
(the control plane picks the schedules up when it starts). The path through the control API of
a running team is in tests/test_schedule_team.py."""
from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from hiclaw.state import Schedule, StateDB, Worker
from hiclaw.testing import clean_env


def run(cli, home, *args, code=0):
    env = clean_env(home, TZ="UTC")  # schedules without --tz are in the team's zone, by default the machine's
    result = subprocess.run([str(cli), "schedule", *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == code, result.stdout + result.stderr
    return result


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    state = StateDB(home / "state.db")
    state.upsert_worker(Worker(name="jordan", role="analyst", model="smart"))
    state.close()
    return home


def test_add_list_remove_without_a_running_team(hiclaw_cli, home):
    added = run(hiclaw_cli, home, "add", "metrics", "--cron", "0 9 * * *", "--tz", "Europe/Paris", "--assignee",
                "jordan", "--message", "post yesterday's metrics").stdout
    assert added.startswith("schedule metrics: `0 9 * * *` in Europe/Paris for jordan; next run ")
    assert added.rstrip().endswith(("CET", "CEST"))
    run(hiclaw_cli, home, "add", "weekly", "--cron", "30 8 * * MON", "--assignee", "jordan", "--message", "sum up")

    listing = json.loads(run(hiclaw_cli, home, "list", "--json").stdout)
    assert [(s["name"], s["cron"], s["timezone"], s["assignee"], s["last_run"], s["missed"]) for s in listing] == [
        ("metrics", "0 9 * * *", "Europe/Paris", "jordan", None, False),
        ("weekly", "30 8 * * MON", "UTC", "jordan", None, False)]
    nxt = datetime.fromisoformat(listing[0]["next_run_local"])
    assert (nxt.hour, nxt.minute) == (9, 0) and datetime.fromisoformat(listing[0]["next_run"]) > datetime.now(UTC)

    table = run(hiclaw_cli, home, "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "CRON", "TZ", "ASSIGNEE", "NEXT", "RUN", "LAST", "RUN", "MESSAGE"]
    assert table[1].startswith("metrics") and "09:00 CE" in table[1] and table[1].endswith("post yesterday's metrics")

    assert json.loads(run(hiclaw_cli, home, "remove", "weekly", "--json").stdout) == {
        "removed": "weekly", "records_kept": "shared/schedules/weekly/"}
    assert "removed schedule metrics" in run(hiclaw_cli, home, "remove", "metrics").stdout
    assert json.loads(run(hiclaw_cli, home, "list", "--json").stdout) == []


def test_a_run_missed_while_down_is_shown(hiclaw_cli, home):
    state = StateDB(home / "state.db")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    state.upsert_schedule(Schedule(name="metrics", cron="0 9 * * *", timezone="UTC", message="m", assignee="jordan",
                                   created_at=two_days_ago))
    state.close()
    assert json.loads(run(hiclaw_cli, home, "list", "--json").stdout)[0]["missed"] is True
    assert "(a run was missed: runs once at start-up)" in run(hiclaw_cli, home, "list").stdout


BAD_INPUT = [
    (["--cron", "0 9 * *"], "error: invalid cron '0 9 * *': 4 field(s), expected exactly 5 — give minute hour"),
    (["--cron", "0 9 * * *", "--tz", "Europe/Pari"], "error: unknown time zone 'Europe/Pari' — use an IANA name"),
    (["--cron", "0 9 * * *", "--assignee", "sam"], "error: no worker named 'sam' to assign the schedule to — create"),
    (["--cron", "61 9 * * *"], "error: invalid cron '61 9 * * *': the minute field '61' is not valid — the minute"),
]


def test_bad_input_is_one_line_and_changes_nothing(hiclaw_cli, home):
    for args, message in BAD_INPUT:
        options = {"--assignee": "jordan", "--message": "m", **dict(zip(args[::2], args[1::2], strict=True))}
        result = run(hiclaw_cli, home, "add", "metrics", *[x for pair in options.items() for x in pair], code=1)
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert json.loads(run(hiclaw_cli, home, "list", "--json").stdout) == []


def test_usage_errors_and_a_home_without_a_team(hiclaw_cli, home, tmp_path):
    assert "Missing option '--cron'" in run(hiclaw_cli, home, "add", "metrics", "--assignee", "jordan",
                                            "--message", "m", code=2).stderr
    assert run(hiclaw_cli, home, "remove", "nope", code=1).stderr == (
        "error: no schedule named 'nope' — see `hiclaw schedule list`\n")
    empty = tmp_path / "empty"
    assert json.loads(run(hiclaw_cli, empty, "list", "--json").stdout) == []
    stderr = run(hiclaw_cli, empty, "add", "m", "--cron", "0 9 * * *", "--assignee", "jordan", "--message", "m",
                 code=1).stderr
    assert stderr.startswith(f"error: no team state in {empty} — start the team once with `hiclaw up`")
    assert not (empty / "state.db").exists()
