"""The Manager's sense of time: now in the team's time zone, and the times people write.

Everything is aware (``zoneinfo``). A time written without an offset is a wall-clock time of the
team's zone (``[team] timezone``), never UTC — "09:00" means 09:00 where the team is.

- :func:`now_line`: the line of the Manager's system prompt that says what time it is.
- :func:`parse_moment`: ``now``, ``today``, ``yesterday``, a duration back from now (``30m``,
  ``24h``, ``7d``, ``2w``), an ISO date (``2026-12-24``) or date and time (``2026-12-24 09:00``,
  ``2026-12-24T09:00+01:00``). As the *end* of a range a date means the end of that day.
- :func:`parse_at`: when a one-shot reminder or run is due: an ISO date and time (a date alone
  is 09:00 that day) or ``in 2h`` / ``+90m`` from now.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hiclaw.errors import InvalidInputError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: A reminder given as a date alone is due at this wall-clock time.
DEFAULT_AT = time(9, 0)
RANGE_HINT = "use e.g. today, yesterday, 24h, 7d, 2026-12-01 or 2026-12-01 09:00 (the team's time zone)"


def now_line(now: datetime, zone: ZoneInfo) -> str:
    """``Now: Thursday 2026-12-24 09:00 in Europe/Paris (UTC+01:00, CET) — the team's time zone.``"""
    local = now.astimezone(zone)
    offset = local.strftime("%z")
    return (f"Now: {local.strftime('%A %Y-%m-%d %H:%M')} in {zone.key} (UTC{offset[:3]}:{offset[3:]}, "
            f"{local.tzname()}) — the team's time zone; times you write without a zone are read in it.")


def _duration(text: str) -> timedelta | None:
    match = _DURATION.match(text)
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def local_midnight(day: datetime, zone: ZoneInfo) -> datetime:
    local = day.astimezone(zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone)


def _iso(text: str, zone: ZoneInfo, what: str, hint: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} is not a time I can read", hint=hint) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def parse_moment(text: object, zone: ZoneInfo, now: datetime, *, end: bool = False, what: str = "since") -> datetime:
    """A moment of a time range (see the module docstring); ``end``: the range's end."""
    raw = " ".join(str(text or "").split()).lower()
    if not raw:
        raise InvalidInputError(f"{what} is empty", hint=RANGE_HINT)
    if raw == "now":
        return now
    if raw in ("today", "yesterday"):
        start = local_midnight(now, zone) - timedelta(days=raw == "yesterday")
        return (start + timedelta(days=1) if end else start).astimezone(UTC)
    gone = _duration(raw)
    if gone is not None:
        return now - gone
    if _DATE.match(raw):
        day = _iso(raw, zone, what, RANGE_HINT)
        return (day + timedelta(days=1) if end else day).astimezone(UTC)
    return _iso(raw.upper().replace(" ", "T", 1), zone, what, RANGE_HINT).astimezone(UTC)


def parse_at(text: object, zone: ZoneInfo, now: datetime) -> datetime:
    """When a one-shot run is due (UTC); refused if not in the future."""
    hint = "give a date and time such as 2026-12-24 09:00 (the team's time zone), or 'in 2h'"
    raw = " ".join(str(text or "").split()).lower()
    relative = raw.removeprefix("in ").removeprefix("+").strip()
    gone = _duration(relative) if raw.startswith(("in ", "+")) else None
    if gone is not None:
        due = now + gone
    elif _DATE.match(raw):
        due = datetime.combine(datetime.fromisoformat(raw).date(), DEFAULT_AT, tzinfo=zone)
    elif raw:
        due = _iso(raw.upper().replace(" ", "T", 1), zone, "at", hint)
    else:
        raise InvalidInputError("the time (at) is empty", hint=hint)
    due = due.astimezone(UTC).replace(microsecond=0)
    if due <= now:
        raise InvalidInputError(f"{due.astimezone(zone).strftime('%Y-%m-%d %H:%M %Z')} is in the past "
                                f"(now: {now.astimezone(zone).strftime('%Y-%m-%d %H:%M %Z')})", hint=hint)
    return due
