"""Scheduled tasks, unit level: cron rules in time zones (DST), validation, the missed-run policy
and exactly-once runs, with an injected clock.

The state DB, local storage and the control chat's outbox (ControlChat) are the real ones; only
the Matrix channel underneath is a recorder (it ignores idempotency keys on purpose, so the
outbox is what must prevent a second post). The same flow runs on real Synapse and a real worker
in tests/test_schedule_team.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hiclaw.control.chat import ControlChat
from hiclaw.control.cron import CronRule, ManualClock
from hiclaw.control.schedule_tools import schedule_tools
from hiclaw.control.scheduler import ScheduleBook, Scheduler, run_output, run_record
from hiclaw.errors import HiclawError, InvalidInputError, NotFoundError
from hiclaw.plugins.storage.local.backend import LocalStorage
from hiclaw.state import StateDB, Worker
from hiclaw.testing import wait_until


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class RecordingChannel:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, tuple[str, ...]]] = []

    async def send(self, room_id: str, text: str, *, mentions=(), idempotency_key=None) -> str:
        self.sent.append((room_id, text, tuple(mentions)))
        return f"$event{len(self.sent)}"

    async def ensure_room(self, key: str, **kwargs: Any) -> str:
        return f"!{key}"


@dataclass
class Plane:
    home: Path
    state: StateDB
    storage: LocalStorage
    channel: RecordingChannel = field(default_factory=RecordingChannel)
    admin: str = "admin"
    lines: list[str] = field(default_factory=list)
    tool_factories: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chat = ControlChat(self.channel, self.state, admin=self.admin)

    def scheduler(self, clock: Any) -> Scheduler:
        """A scheduler on this plane's parts, its tools registered, as the control plane wires it."""
        scheduler = Scheduler(state=self.state, storage=self.storage, chat=self.chat, admin=self.admin,
                              progress=self.progress, clock=clock)
        self.add_manager_tools(lambda: schedule_tools(scheduler))
        return scheduler

    def progress(self, line: str) -> None:
        self.lines.append(line)

    def add_manager_tools(self, factory: Any) -> None:
        self.tool_factories.append(factory)

    def tools(self) -> dict[str, Any]:
        return {tool.name: tool for factory in self.tool_factories for tool in factory()}


@pytest.fixture
def plane(tmp_path):
    state = StateDB(tmp_path / "state.db")
    state.upsert_worker(Worker(name="jordan", role="analyst", model="smart"))
    yield Plane(tmp_path, state, LocalStorage(tmp_path / "data", fsync=False))
    state.close()


async def read(plane: Plane, key: str) -> str:
    return (await plane.storage.get(key)).decode()


# --------------------------------------------------------------------------- time rules


def runs(rule: CronRule, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        after = rule.next_after(after)
        found.append(after)
    return found


def test_next_run_keeps_the_wall_clock_time_across_dst():
    rule = CronRule("0 9 * * *", "Europe/Paris")
    # 09:00 Paris is 08:00 UTC in winter (CET) and 07:00 UTC from 30 March (CEST).
    assert runs(rule, utc(2025, 3, 28, 12), 3) == [utc(2025, 3, 29, 8), utc(2025, 3, 30, 7), utc(2025, 3, 31, 7)]
    assert rule.next_after(utc(2025, 10, 25, 12)) == utc(2025, 10, 26, 8)  # back to CET
    new_york = CronRule("30 8 * * MON-FRI", "America/New_York")
    assert new_york.next_after(utc(2025, 3, 7, 14)) == utc(2025, 3, 10, 12, 30)  # Friday → Monday, now EDT


def test_times_skipped_or_repeated_by_dst_run_once():
    at_half_past_two = CronRule("30 2 * * *", "Europe/Paris")
    # 30 March 2025: 02:00 → 03:00. The skipped 02:30 runs at 03:00 local (01:00 UTC), once.
    assert at_half_past_two.next_after(utc(2025, 3, 29, 12)) == utc(2025, 3, 30, 1)
    assert at_half_past_two.next_after(utc(2025, 3, 30, 1)) == utc(2025, 3, 31, 0, 30)
    # 26 October 2025: 03:00 → 02:00. 02:30 happens twice; a job at a named hour runs once.
    first = at_half_past_two.next_after(utc(2025, 10, 25, 12))
    assert first == utc(2025, 10, 26, 0, 30)
    assert at_half_past_two.next_after(first) == utc(2025, 10, 27, 1, 30)
    assert at_half_past_two.latest_at_or_before(utc(2025, 10, 26, 2)) == first
    # ... while an every-30-minutes job runs in both copies of the repeated hour.
    every_half_hour = CronRule("*/30 * * * *", "Europe/Paris")
    assert runs(every_half_hour, utc(2025, 10, 25, 23, 50), 4) == [utc(2025, 10, 26, 0), utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 1), utc(2025, 10, 26, 1, 30)]


def test_due_slots_and_the_exact_boundary():
    rule = CronRule("0 9 * * *", "UTC")
    assert rule.latest_at_or_before(utc(2025, 1, 2, 9)) == utc(2025, 1, 2, 9)  # a slot exactly now counts
    assert rule.latest_at_or_before(utc(2025, 1, 2, 8, 59)) == utc(2025, 1, 1, 9)
    assert rule.due(utc(2025, 1, 1, 9), utc(2025, 1, 2, 8, 59)) is None
    assert rule.due(utc(2025, 1, 1, 9), utc(2025, 1, 2, 9)) == (utc(2025, 1, 2, 9), utc(2025, 1, 2, 9))
    # Four days down: one run, for the latest slot; the first missed one is reported.
    assert rule.due(utc(2025, 1, 1, 9), utc(2025, 1, 5, 12)) == (utc(2025, 1, 5, 9), utc(2025, 1, 2, 9))


@pytest.mark.parametrize(("cron", "tz", "needle", "fix"), [
    ("0 9 * *", "UTC", "4 field(s), expected exactly 5", "minute hour day-of-month month day-of-week"),
    ("0 9 * * * *", "UTC", "6 field(s), expected exactly 5", "e.g. '0 9 * * *'"),
    ("", "UTC", "0 field(s)", "e.g."),
    ("@daily", "UTC", "nicknames such as @daily are not supported", "'@daily' is '0 0 * * *'"),
    ("61 9 * * *", "UTC", "the minute field '61' is not valid", "0-59"),
    ("0 24 * * *", "UTC", "the hour field '24' is not valid", "0-23"),
    ("0 9 * 13 *", "UTC", "the month field '13' is not valid", "1-12 or JAN-DEC"),
    ("0 9 * * FUN", "UTC", "the day-of-week field 'FUN' is not valid", "SUN-SAT"),
    ("0 0 30 2 *", "UTC", "never matches a date", "30 February"),
    ("0 9 * * *", "Europe/Pari", "unknown time zone 'Europe/Pari'", "Europe/Paris"),
    ("0 9 * * *", "../../etc/passwd", "unknown time zone", "IANA name"),
    ("0 9 * * *", "", "unknown time zone ''", "IANA name"),
])
def test_invalid_cron_and_time_zones_get_one_line_errors(cron, tz, needle, fix):
    with pytest.raises(InvalidInputError) as caught:
        CronRule(cron, tz)
    text = str(caught.value)
    assert needle in text and fix in text.split(" — ", 1)[1]
    assert "\n" not in text


def test_book_validates_everything_before_writing(plane):
    book = ScheduleBook(plane.state, ManualClock(utc(2025, 6, 1)))
    bad = [
        (("Daily Metrics", "0 9 * * *", "UTC", "m", "jordan"), "invalid schedule name"),
        (("metrics", "0 9 * * *", "UTC", "   ", "jordan"), "message is empty"),
        (("metrics", "0 9 * * *", "UTC", "x" * 5000, "jordan"), "5000 characters"),
        (("metrics", "0 9 * * *", "UTC", "m", "sam"), "no worker named 'sam'"),
        (("metrics", "0 9 * * *", "UTC", "m", "Not A Name"), "invalid agent name"),
        (("metrics", "0 9 * *", "UTC", "m", "jordan"), "expected exactly 5"),
    ]
    for args, needle in bad:
        with pytest.raises(InvalidInputError, match=needle):
            book.add(*args)
    assert plane.state.schedules() == []
    view = book.add("metrics", " 0  9 * *  * ", "Europe/Paris", "post yesterday's metrics", "jordan")
    assert view["cron"] == "0 9 * * *" and view["next_run"] == "2025-06-01T07:00:00+00:00"
    assert view["next_run_local"] == "2025-06-01T09:00:00+02:00" and view["last_run"] is None
    with pytest.raises(InvalidInputError, match="a schedule named 'metrics' exists"):
        book.add("metrics", "0 10 * * *", "UTC", "m", "jordan")
    assert book.add("metrics", "0 10 * * *", "UTC", "m", "jordan", replace=True)["cron"] == "0 10 * * *"
    assert book.remove("metrics") == {"removed": "metrics", "records_kept": "shared/schedules/metrics/"}
    with pytest.raises(NotFoundError):
        book.remove("metrics")


# --------------------------------------------------------------------------- firing


async def test_missed_runs_run_once_at_start_up_then_on_schedule(plane):
    clock = ManualClock(utc(2025, 6, 1, 6))
    ScheduleBook(plane.state, clock).add("metrics", "0 9 * * *", "Europe/Paris", "post yesterday's metrics", "jordan")
    clock.set(utc(2025, 6, 4, 10, 15))  # the control plane was down for four 09:00 runs (1st to 4th)
    scheduler = plane.scheduler(clock)
    await scheduler.start()
    try:
        assert len(plane.channel.sent) == 1
        room, text, mentions = plane.channel.sent[0]
        assert room == "!worker-jordan" and mentions == ("jordan",)
        assert text.startswith("@jordan scheduled task **metrics** (2025-06-04 09:00 CEST): post yesterday's metrics")
        slot = utc(2025, 6, 4, 7)
        assert f"`{run_output('jordan', 'metrics', slot)}`" in text
        assert run_output("jordan", "metrics", slot) == "agents/jordan/schedules/metrics/run-20250604T070000Z.md"
        assert [i["key"] for i in await plane.storage.list("shared/schedules/")] == [
            "shared/schedules/metrics/run-20250604T070000Z.md"]
        record = await read(plane, run_record("metrics", slot))
        meta = yaml.safe_load(record.split("---")[1])
        assert meta["late"] is True and meta["skipped_missed_runs"] is True and meta["assignee"] == "jordan"
        assert meta["scheduled_for"] == "2025-06-04T09:00:00+02:00"
        assert "runs from 2025-06-01 09:00 CEST on were folded into this one" in record
        assert record.rstrip().endswith("post yesterday's metrics")
        assert plane.state.schedule("metrics").last_run == slot.isoformat()
        assert "schedules: ran 1 missed run(s)" in plane.lines[0]

        await scheduler.run_due()  # nothing more is due until tomorrow 09:00
        assert len(plane.channel.sent) == 1
        clock.set(utc(2025, 6, 5, 7))  # moving the clock wakes the scheduler's loop
        await wait_until(lambda: len(plane.channel.sent) == 2, what="the 5 June run")
        record = await read(plane, run_record("metrics", utc(2025, 6, 5, 7)))
        assert "late: false" in record and "skipped_missed_runs: false" in record
    finally:
        await scheduler.stop()


async def test_a_run_posts_once_even_when_the_plane_crashed_before_bookkeeping(plane):
    clock = ManualClock(utc(2025, 6, 1, 8, 59))
    ScheduleBook(plane.state, clock).add("metrics", "0 9 * * *", "UTC", "post metrics", "jordan")
    clock.set(utc(2025, 6, 1, 9))
    assert await plane.scheduler(clock).run_due() == ["shared/schedules/metrics/run-20250601T090000Z.md"]
    record = await read(plane, run_record("metrics", utc(2025, 6, 1, 9)))
    # Crash after the post but before last_run was written: the restarted plane sees the run due again.
    plane.state.set_schedule_last_run("metrics", None)
    clock.set(utc(2025, 6, 1, 9, 30))
    restarted = Plane(plane.home, plane.state, plane.storage, channel=plane.channel)
    assert await restarted.scheduler(clock).run_due() == ["shared/schedules/metrics/run-20250601T090000Z.md"]
    assert len(plane.channel.sent) == 1  # the outbox key schedule:metrics:20250601T090000Z held
    assert await read(plane, run_record("metrics", utc(2025, 6, 1, 9))) == record  # not rewritten
    assert plane.state.schedule("metrics").last_run == "2025-06-01T09:00:00+00:00"
    assert [e["data"]["slot"] for e in plane.state.events(kind="schedule.run")] == ["2025-06-01T09:00:00+00:00"] * 2


async def test_schedules_written_by_another_process_are_picked_up(plane):
    clock = ManualClock(utc(2025, 6, 1, 8))
    scheduler = plane.scheduler(clock)
    await scheduler.start()
    try:
        other = StateDB(plane.home / "state.db")  # `hiclaw schedule add` while the plane runs its loop
        ScheduleBook(other, clock).add("hourly", "0 * * * *", "UTC", "check the queue", "jordan")
        other.close()
        clock.advance(hours=1)
        await wait_until(lambda: plane.channel.sent, what="the hourly run")
        assert "check the queue" in plane.channel.sent[0][1]
    finally:
        await scheduler.stop()


async def test_a_failing_run_is_retried_and_does_not_hold_up_the_others(plane):
    clock = ManualClock(utc(2025, 6, 1, 8, 59))
    book = ScheduleBook(plane.state, clock)
    book.add("broken", "0 9 * * *", "UTC", "first", "jordan")
    book.add("metrics", "0 9 * * *", "UTC", "second", "jordan")
    blocker = plane.home / "data" / "shared" / "schedules" / "broken"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the records folder should be")  # storage refuses the record
    clock.set(utc(2025, 6, 1, 9))
    scheduler = plane.scheduler(clock)
    assert await scheduler.run_due() == ["shared/schedules/metrics/run-20250601T090000Z.md"]
    assert scheduler._failed and plane.state.schedule("broken").last_run is None
    assert [text.split(": ", 1)[1].split("\n")[0] for _, text, _ in plane.channel.sent] == ["second"]
    blocker.unlink()
    assert await scheduler.run_due() == ["shared/schedules/broken/run-20250601T090000Z.md"]
    assert not scheduler._failed and len(plane.channel.sent) == 2


async def test_a_run_for_a_removed_worker_is_recorded_as_skipped(plane):
    clock = ManualClock(utc(2025, 6, 1, 8, 59))
    ScheduleBook(plane.state, clock).add("metrics", "0 9 * * *", "UTC", "post metrics", "jordan")
    plane.state.set_worker_state("jordan", "removed")
    clock.set(utc(2025, 6, 1, 9))
    await plane.scheduler(clock).run_due()
    assert plane.channel.sent == []
    record = await read(plane, run_record("metrics", utc(2025, 6, 1, 9)))
    assert "status: 'skipped: the assignee no longer exists'" in record
    assert plane.state.events(kind="schedule.skipped")[0]["subject"] == "metrics"


async def test_manager_tools_and_admin_actions(plane):
    clock = ManualClock(utc(2025, 6, 1, 6))
    scheduler = plane.scheduler(clock)
    tools = plane.tools()
    assert sorted(tools) == ["schedule_add", "schedule_list", "schedule_remove"]
    assert tools["schedule_add"].parameters["required"] == ["name", "cron", "timezone", "message", "assignee"]
    added = await tools["schedule_add"].handler({"name": "metrics", "cron": "0 9 * * *", "timezone": "Europe/Paris",
                                                 "message": "post yesterday's metrics", "assignee": "jordan"})
    assert added["next_run_local"] == "2025-06-01T09:00:00+02:00"
    with pytest.raises(HiclawError, match="unknown time zone 'Paris'"):
        await tools["schedule_add"].handler({"name": "other", "cron": "0 9 * * *", "timezone": "Paris",
                                             "message": "m", "assignee": "jordan"})
    with pytest.raises(InvalidInputError, match="cron: required"):  # the tool's schema, before the scheduler
        await tools["schedule_add"].handler({"name": "other", "message": "m", "assignee": "jordan"})
    listed = await tools["schedule_list"].handler({})
    assert [(v["name"], v["assignee"], v["missed"]) for v in listed] == [("metrics", "jordan", False)]
    assert (await scheduler.admin_action("schedule-list", {}))["schedules"] == listed
    assert await tools["schedule_remove"].handler({"name": "metrics"}) == {
        "removed": "metrics", "records_kept": "shared/schedules/metrics/"}
    with pytest.raises(HiclawError, match="unknown admin action 'schedule-pause'"):
        await scheduler.admin_action("schedule-pause", {})
