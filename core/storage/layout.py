"""The shared storage layout (DESIGN section 5) and key validation.

Every key the system writes is built here, so no caller assembles paths by hand::

    agents/<name>/                SOUL.md, AGENTS.md, MEMORY.md, memory/, skills/<skill>/SKILL.md, workspace/
    shared/tasks/<task-id>/       spec.md (manager-owned), result.md, progress/, workspace/
    shared/projects/<proj-id>/    plan.md (rendered from state), meta.json

Keys are ``/``-separated and relative. A *prefix* names a folder and ends with ``/``. Keys are
validated before they reach any backend: no absolute paths, no ``.``/``..`` segments, no empty
segments, no backslashes, no control characters, at most 1024 bytes — the same rules on the
local disk and on S3, so a key that works on one backend works on the other.
"""
from __future__ import annotations

import re
import unicodedata

from hiclaw.errors import InvalidInputError

AGENTS = "agents/"
SHARED = "shared/"
TASKS = "shared/tasks/"
PROJECTS = "shared/projects/"

#: Agent names (contracts): lower-case letter, then letters, digits or '-'; at most 31 chars.
AGENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
#: Task and project ids: "task-001", "proj-7", "2024-q3.report".
ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_KEY_BYTES = 1024
#: Local writes go to temporary files with this name prefix; no key segment may start with it.
TEMP_PREFIX = ".hiclaw-tmp-"


def _refuse(what: str, value: str, problem: str, fix: str) -> InvalidInputError:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return InvalidInputError(f"invalid {what} {shown!r}: {problem}", hint=fix)


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"invalid {what}: expected text, got {type(value).__name__}")
    for char in value:
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            raise _refuse(what, value.encode("unicode_escape").decode(), "contains a control character",
                          "remove tabs, newlines and other control characters")
    if "\\" in value:
        raise _refuse(what, value, "contains a backslash", "use '/' to separate folders")
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise _refuse(what, value, f"longer than {MAX_KEY_BYTES} bytes", "use a shorter path")
    if value.startswith("/"):
        raise _refuse(what, value, "is an absolute path", "give a path relative to the storage root, "
                      "e.g. 'agents/alice/notes.md' (drop the leading '/')")
    return value


def _check_segments(value: str, what: str, segments: list[str]) -> None:
    for segment in segments:
        if segment == "":
            raise _refuse(what, value, "has an empty folder name ('//')", "remove the doubled '/'")
        if segment in (".", ".."):
            raise _refuse(what, value, f"contains a '{segment}' segment", "name the path directly, without '.' or '..'")
        if segment.startswith(TEMP_PREFIX):
            raise _refuse(what, value, f"uses the reserved name prefix '{TEMP_PREFIX}'", "pick another file name")


def validate_key(key: object, *, what: str = "storage key") -> str:
    """Return ``key`` if it names an object; raise :class:`InvalidInputError` otherwise."""
    text = _check_text(key, what)
    if not text:
        raise _refuse(what, text, "is empty", "name an object, e.g. 'agents/alice/notes.md'")
    if text.endswith("/"):
        raise _refuse(what, text, "ends with '/', which names a folder", "name a file inside it")
    _check_segments(text, what, text.split("/"))
    return text


def validate_prefix(prefix: object, *, what: str = "storage prefix") -> str:
    """Return ``prefix`` if it is a valid listing prefix (``""``, a folder ``a/b/`` or a partial name)."""
    text = _check_text(prefix, what)
    if not text:
        return text
    segments = text.split("/")
    if text.endswith("/"):
        segments = segments[:-1]
    _check_segments(text, what, segments)
    return text


def validate_folder(prefix: object, *, what: str = "storage folder") -> str:
    """A folder prefix: non-empty, valid, and ending with ``/`` (appended if missing)."""
    text = validate_prefix(prefix, what=what)
    if not text:
        raise _refuse(what, text, "is empty", "name a folder, e.g. 'shared/tasks/task-001/'")
    return text if text.endswith("/") else text + "/"


def join(*parts: str) -> str:
    """Join key parts with ``/`` and validate the result as a key (or folder if it ends in ``/``)."""
    text = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if parts and parts[-1].endswith("/"):
        return validate_folder(text)
    return validate_key(text)


def relative(key: str, prefix: str) -> str:
    """``key`` without ``prefix`` (which it must start with)."""
    if not key.startswith(prefix):
        raise ValueError(f"{key!r} is not under {prefix!r}")
    return key[len(prefix):]


# --------------------------------------------------------------------------- names


def check_agent(name: object) -> str:
    if not isinstance(name, str) or not AGENT_NAME.match(name):
        raise InvalidInputError(
            f"invalid agent name {name!r}",
            hint="use a lower-case letter followed by up to 30 lower-case letters, digits or '-'",
        )
    return name


def _check_id(value: object, kind: str) -> str:
    if not isinstance(value, str) or not ITEM_ID.match(value) or ".." in value:
        raise InvalidInputError(
            f"invalid {kind} id {value!r}",
            hint="use letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit)",
        )
    return value


# --------------------------------------------------------------------------- agents


def agent_home(name: str) -> str:
    """``agents/<name>/`` — the agent's own folder (read-write for that worker only)."""
    return f"{AGENTS}{check_agent(name)}/"


def agent_file(name: str, rel: str) -> str:
    """A file in the agent's home, e.g. ``agent_file("alice", "memory/2024-06-01.md")``."""
    return validate_key(agent_home(name) + validate_key(rel, what="path inside the agent's home"))


def agent_soul(name: str) -> str:
    return agent_home(name) + "SOUL.md"


def agent_rules(name: str) -> str:
    return agent_home(name) + "AGENTS.md"


def agent_memory(name: str) -> str:
    return agent_home(name) + "MEMORY.md"


def agent_memory_dir(name: str) -> str:
    return agent_home(name) + "memory/"


def agent_skills_dir(name: str) -> str:
    return agent_home(name) + "skills/"


def agent_skill(name: str, skill: str) -> str:
    """``agents/<name>/skills/<skill>/SKILL.md``."""
    return agent_skills_dir(name) + _check_id(skill, "skill") + "/SKILL.md"


def agent_workspace(name: str) -> str:
    return agent_home(name) + "workspace/"


# --------------------------------------------------------------------------- tasks


def task_dir(task_id: str) -> str:
    """``shared/tasks/<task-id>/``."""
    return f"{TASKS}{_check_id(task_id, 'task')}/"


def task_spec(task_id: str) -> str:
    """``shared/tasks/<task-id>/spec.md`` — written by the Manager, read-only for the worker."""
    return task_dir(task_id) + "spec.md"


def task_result(task_id: str) -> str:
    return task_dir(task_id) + "result.md"


def task_progress_dir(task_id: str) -> str:
    return task_dir(task_id) + "progress/"


def task_workspace(task_id: str) -> str:
    return task_dir(task_id) + "workspace/"


# --------------------------------------------------------------------------- projects


def project_dir(project_id: str) -> str:
    """``shared/projects/<proj-id>/``."""
    return f"{PROJECTS}{_check_id(project_id, 'project')}/"


def project_plan(project_id: str) -> str:
    """``plan.md`` — rendered from state, never parsed back."""
    return project_dir(project_id) + "plan.md"


def project_meta(project_id: str) -> str:
    return project_dir(project_id) + "meta.json"


def owner_of(key: str) -> tuple[str, str] | None:
    """``("agent", name)``, ``("task", id)`` or ``("project", id)`` for a key in the layout, else ``None``."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] == "agents":
        return ("agent", parts[1])
    if len(parts) >= 4 and parts[0] == "shared" and parts[1] in ("tasks", "projects"):
        return ("task" if parts[1] == "tasks" else "project", parts[2])
    return None
