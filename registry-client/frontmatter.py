"""SKILL.md frontmatter: parse and validate per the Agent Skills specification.

Rules (https://agentskills.io/specification): ``name`` 1–64 characters of ``[a-z0-9-]``, no
leading, trailing or double hyphen, equal to the skill's folder; ``description`` 1–1024
characters; optional ``license`` (string), ``compatibility`` (≤ 500 characters), ``metadata``
(a mapping of string keys to scalar values) and ``allowed-tools`` (space-separated string).
Other keys are tolerated (real skills carry e.g. ``version``) but never trusted.

Control characters and terminal escapes are stripped from every metadata string before it is
shown or stored, so a skill cannot paint over the terminal or smuggle fake lines into a prompt.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from hiclaw.registry.errors import UnsafeSkillError

SKILL_FILE = "SKILL.md"
NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_NAME = 64
MAX_DESCRIPTION = 1024
MAX_COMPATIBILITY = 500
_FRONTMATTER_RE = re.compile(r"^\ufeff?---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)(.*)$", re.S)
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """Remove terminal escapes and control characters; fold line breaks into spaces."""
    text = _ANSI_RE.sub("", text)
    text = re.sub(r"[\r\n\t]+", " ", text)
    return _CONTROL_RE.sub("", text).strip()


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid skill name, or ``None``."""
    if not isinstance(name, str) or not name:
        return "name is missing"
    if len(name) > MAX_NAME:
        return f"name is {len(name)} characters (at most {MAX_NAME})"
    if not NAME_RE.match(name):
        return f"name {strip_controls(name)[:70]!r} must be lower-case letters, digits and single hyphens, not starting or ending with '-'"
    return None


@dataclass
class SkillMeta:
    """Validated, sanitised frontmatter of one SKILL.md."""

    name: str
    description: str
    license: str | None = None
    compatibility: str | None = None
    allowed_tools: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    body: str = ""


def split_frontmatter(text: str) -> tuple[dict[str, Any], str] | None:
    """``(frontmatter, body)`` or ``None`` when the file has no YAML frontmatter block."""
    match = _FRONTMATTER_RE.match(text)
    if not match:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        raise UnsafeSkillError(f"SKILL.md frontmatter is not valid YAML{where}", hint="fix the YAML between the --- lines") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UnsafeSkillError("SKILL.md frontmatter must be a YAML mapping", hint="write `name: …` and `description: …` lines")
    return data, match.group(2)


def _optional_string(data: dict[str, Any], key: str, where: str, limit: int | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UnsafeSkillError(f"{where}: '{key}' must be a string", hint=f"quote the value of {key}")
    value = strip_controls(value)
    if limit is not None and not 1 <= len(value) <= limit:
        raise UnsafeSkillError(f"{where}: '{key}' must be 1–{limit} characters (got {len(value)})")
    return value


def _metadata(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UnsafeSkillError(f"{where}: 'metadata' must be a mapping of keys to values")
    clean: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise UnsafeSkillError(f"{where}: metadata keys must be strings (got {key!r})")
        if isinstance(item, str):
            item = strip_controls(item)
        elif not (item is None or isinstance(item, bool | int | float)):
            raise UnsafeSkillError(f"{where}: metadata value of {strip_controls(key)!r} must be a string, number or boolean")
        clean[strip_controls(key)] = item
    return clean


def parse_skill_md(text: str | bytes, *, folder: str | None = None, where: str = "SKILL.md") -> SkillMeta:
    """Validate a SKILL.md. ``folder`` is the name of the folder holding it (must equal ``name``)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeSkillError(f"{where} is not UTF-8 text", hint="save SKILL.md as UTF-8") from None
    parsed = split_frontmatter(text)
    if parsed is None:
        raise UnsafeSkillError(
            f"{where} has no frontmatter", hint="start the file with a --- block holding name and description"
        )
    data, body = parsed
    problem = name_problem(data.get("name"))
    if problem:
        raise UnsafeSkillError(f"{where}: {problem}", hint="use a name like 'pdf-tools' (Agent Skills spec)")
    name = data["name"]
    if folder is not None and folder != name:
        raise UnsafeSkillError(
            f"{where}: name {name!r} does not match its folder {strip_controls(folder)[:70]!r}",
            hint="rename the folder or the name so they are equal (Agent Skills spec)",
        )
    description = data.get("description")
    if not isinstance(description, str) or not strip_controls(description):
        raise UnsafeSkillError(f"{where}: description is missing", hint="add `description: what it does and when to use it`")
    description = strip_controls(description)
    if len(description) > MAX_DESCRIPTION:
        raise UnsafeSkillError(f"{where}: description is {len(description)} characters (at most {MAX_DESCRIPTION})")
    allowed_tools = data.get("allowed-tools")
    if isinstance(allowed_tools, list) and all(isinstance(t, str) for t in allowed_tools):
        allowed_tools = " ".join(allowed_tools)  # a common variant; normalise to the spec's form
    return SkillMeta(
        name=name,
        description=description,
        license=_optional_string(data, "license", where),
        compatibility=_optional_string(data, "compatibility", where, MAX_COMPATIBILITY),
        allowed_tools=_optional_string({"allowed-tools": allowed_tools}, "allowed-tools", where),
        metadata=_metadata(data.get("metadata"), where),
        body=body,
    )
