"""Cron expressions in a time zone, and clocks: the time rules of scheduled tasks.

Expressions have exactly 5 fields (minute hour day-of-month month day-of-week) and are parsed by
``croniter``; time zones are IANA names read by ``zoneinfo``. Every datetime in and out of
:class:`CronRule` is aware (out: UTC). Daylight saving time: a wall-clock time skipped when
clocks go forward runs at the first minute after the gap (croniter's rule); a time that occurs
twice when clocks go back runs once if the hour field names hours, and on both occurrences if it
contains ``*`` (``*`` or ``*/2``) — like Vixie cron.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from hiclaw.errors import InvalidInputError

FIELDS = (("minute", "0-59"), ("hour", "0-23"), ("day-of-month", "1-31"), ("month", "1-12 or JAN-DEC"),
          ("day-of-week", "0-7 or SUN-SAT (0 and 7 are Sunday)"))
EXAMPLE = "e.g. '0 9 * * *' for 09:00 every day or '30 8 * * MON-FRI' for 08:30 on weekdays"


def check_cron(cron: object) -> str:
    """The expression with single spaces, or a one-line error naming the bad field."""
    text = " ".join(str(cron or "").split())
    if text.startswith("@"):
        raise InvalidInputError(f"invalid cron {text!r}: nicknames such as {text.split()[0]} are not supported",
                                hint=f"write the 5 fields instead, {EXAMPLE} ('@daily' is '0 0 * * *')")
    fields = text.split(" ") if text else []
    if len(fields) != 5:
        raise InvalidInputError(f"invalid cron {text!r}: {len(fields)} field(s), expected exactly 5",
                                hint=f"give minute hour day-of-month month day-of-week, {EXAMPLE}")
    for index, (field, allowed) in enumerate(FIELDS):
        probe = ["*"] * 5
        probe[index] = fields[index]
        if not croniter.is_valid(" ".join(probe)):
            raise InvalidInputError(f"invalid cron {text!r}: the {field} field {fields[index]!r} is not valid",
                                    hint=f"the {field} takes {allowed}, '*', lists (1,15), ranges (1-5) "
                                         "and steps (*/15)")
    if not croniter.is_valid(text):
        raise InvalidInputError(f"invalid cron {text!r}", hint=f"give minute hour day-of-month month day-of-week, {EXAMPLE}")
    return text


def check_timezone(name: object) -> ZoneInfo:
    try:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(name)
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise InvalidInputError(f"unknown time zone {name!r}",
                                hint="use an IANA name such as Europe/Paris, America/New_York or UTC") from None


# --------------------------------------------------------------------------- time


class CronRule:
    """A validated cron expression in a time zone; every datetime in and out is aware (out: UTC)."""

    def __init__(self, cron: str, tz: str) -> None:
        self.cron = check_cron(cron)
        self.timezone = tz.strip() if isinstance(tz, str) else tz
        self.zone = check_timezone(tz)
        hours = self.cron.split(" ")[1]
        # Repeated wall-clock times (clocks going back) run once for jobs at named hours.
        self._once_per_wall_time = "*" not in hours
        try:
            self.next_after(datetime(2000, 1, 1, tzinfo=UTC))
        except CroniterBadDateError:
            raise InvalidInputError(f"cron {self.cron!r} never matches a date",
                                    hint="check the day-of-month and month fields (e.g. 30 February does not exist)") from None

    def _repeat(self, slot: datetime) -> bool:
        return self._once_per_wall_time and slot.astimezone(self.zone).fold == 1

    def next_after(self, when: datetime) -> datetime:
        """The first run time strictly after ``when``."""
        it = croniter(self.cron, when.astimezone(self.zone))
        for _ in range(1000):
            slot = it.get_next(datetime).astimezone(UTC)
            if slot > when and not self._repeat(slot):
                return slot
        raise CroniterBadDateError(f"no run time after {when.isoformat()}")

    def latest_at_or_before(self, when: datetime) -> datetime:
        it = croniter(self.cron, when.astimezone(self.zone))
        slot = it.get_prev(datetime).astimezone(UTC)
        for _ in range(1000):
            if slot <= when and not self._repeat(slot):
                break
            slot = it.get_prev(datetime).astimezone(UTC)
        following = self.next_after(slot)  # get_prev is strict: a slot exactly at `when` comes next
        return following if following <= when else slot

    def due(self, anchor: datetime, now: datetime) -> tuple[datetime, datetime] | None:
        """``(slot to run, first slot missed)`` if a run is due after ``anchor``, else None."""
        first = self.next_after(anchor)
        if first > now:
            return None
        return max(first, self.latest_at_or_before(now)), first


class OneShot:
    """A single run time (aware, stored in UTC) in a time zone, with :class:`CronRule`'s interface:
    it is due once, when ``at`` has come and nothing ran at or after it (``anchor``)."""

    cron = ""

    def __init__(self, at: datetime | str, tz: str) -> None:
        self.at = (parse_time(at) if isinstance(at, str) else at).astimezone(UTC)
        self.timezone = tz.strip() if isinstance(tz, str) else tz
        self.zone = check_timezone(tz)

    def next_after(self, when: datetime) -> datetime | None:
        return self.at if self.at > when else None

    def latest_at_or_before(self, when: datetime) -> datetime | None:
        return self.at if self.at <= when else None

    def due(self, anchor: datetime, now: datetime) -> tuple[datetime, datetime] | None:
        return (self.at, self.at) if anchor < self.at <= now else None


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stamp(slot: datetime) -> str:
    return slot.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def local_text(when: datetime, zone: ZoneInfo) -> str:
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock tests move by hand; moving it wakes whoever subscribed (the scheduler)."""

    def __init__(self, start: datetime) -> None:
        self._now = start.astimezone(UTC)
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        return self._now

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)
        for listener in list(self._listeners):
            listener()

    def advance(self, **delta: float) -> datetime:
        self.set(self._now + timedelta(**delta))
        return self._now
