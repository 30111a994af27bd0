"""Message content: Markdown → HTML, mention pills, splitting, and incoming mention detection.

Outgoing mentions carry all three forms clients and Synapse's push rules understand: the name
in the plain ``body``, a pill ``<a href="https://matrix.to/#/@user:server">name</a>`` in
``formatted_body``, and ``m.mentions: {"user_ids": [...]}``.

Incoming, a message mentions a user when (in this order of authority):

1. it has ``m.mentions`` — then only its ``user_ids`` count (intentional mentions, MSC3952:
   a client that sets ``m.mentions`` said exactly whom it means; ``@room`` wakes nobody);
2. otherwise a pill to the user in ``formatted_body`` (``matrix.to`` or ``matrix:u/`` link);
3. otherwise ``@name`` or ``@name:server`` in the plain ``body``.

Reply fallbacks (quoted ``> <@user> …`` lines, ``<mx-reply>``) are stripped first, so replying
to a message that mentioned someone does not mention them again.
"""
from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import markdown

HTML_FORMAT = "org.matrix.custom.html"
PILL = re.compile(r"""href=["'](https://matrix\.to/#/|matrix:u/)([^"'?]+)""", re.I)
PLAIN_MENTION = re.compile(r"(?<![\w.@/])@([a-z0-9._=/+-]+)(?::([A-Za-z0-9.-]+(?::[0-9]+)?))?")
MX_REPLY = re.compile(r"<mx-reply>.*?</mx-reply>", re.S | re.I)


# --------------------------------------------------------------------------- outgoing


def markdown_to_html(text: str) -> str:
    return markdown.markdown(text, extensions=["fenced_code", "tables", "sane_lists", "nl2br"]).strip()


def mention_tokens(user_id: str, name: str | None) -> list[str]:
    """How a mention of ``user_id`` may be written in text, longest first."""
    local = user_id[1:].split(":", 1)[0]
    tokens = {user_id, f"@{local}"}
    if name:
        tokens.add(f"@{name}")
    return sorted(tokens, key=len, reverse=True)


def render(text: str, mentions: Sequence[tuple[str, str | None]], *, mark_mentions: bool) -> dict[str, Any]:
    """Event content for ``text``. ``mentions`` are ``(user_id, agent name or None)``.

    ``mark_mentions=False`` still draws pills (readers see who is meant) but leaves
    ``m.mentions`` empty — used for all but the last part of a split message, so the
    mentioned agent wakes once, with the earlier parts as its context."""
    placeholders: dict[str, str] = {}
    marked = text
    for index, (user_id, name) in enumerate(mentions):
        label = name or user_id[1:].split(":", 1)[0]
        pill = f'<a href="https://matrix.to/#/{html.escape(user_id)}">{html.escape(label)}</a>'
        for token in mention_tokens(user_id, name):
            pattern = re.compile(rf"(?<![\w.@/]){re.escape(token)}(?![\w:-])")
            key = f"HICLAWMENTION{index}X"
            if pattern.search(marked):
                marked = pattern.sub(key, marked)
                placeholders[key] = pill
    rendered = markdown_to_html(marked)
    for key, pill in placeholders.items():
        rendered = rendered.replace(key, pill)
    content: dict[str, Any] = {"msgtype": "m.text", "body": text}
    plain_paragraph = f"<p>{html.escape(text, quote=False)}</p>"
    if placeholders or rendered != plain_paragraph:
        content["format"] = HTML_FORMAT
        content["formatted_body"] = rendered
    content["m.mentions"] = {"user_ids": [uid for uid, _ in mentions]} if mark_mentions and mentions else {}
    return content


def with_mention_prefix(text: str, mentions: Sequence[tuple[str, str | None]]) -> str:
    """Prefix ``@name`` for every mentioned user the text does not name yet (readers see whom)."""
    missing = []
    for user_id, name in mentions:
        if not any(re.search(rf"(?<![\w.@/]){re.escape(t)}(?![\w:-])", text) for t in mention_tokens(user_id, name)):
            missing.append(f"@{name}" if name else user_id)
    return f"{' '.join(missing)} {text}" if missing else text


def split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` characters, at paragraph, line or word ends."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind("\n\n"), 0)
        if cut < limit // 2:
            cut = window.rfind("\n")
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut < limit // 2:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n ")
    parts.append(rest)
    return [p for p in parts if p] or [""]


# --------------------------------------------------------------------------- incoming


def strip_reply_fallback(body: str) -> str:
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    index = 0
    while index < len(lines) and lines[index].startswith(">"):
        index += 1
    return "\n".join(lines[index:]).lstrip("\n")


def detect_mentions(content: dict[str, Any], resolve_local: Callable[[str], str | None]) -> tuple[str, ...]:
    """User ids ``content`` mentions (see the module docstring for the rules).

    ``resolve_local("alice")`` maps a bare ``@alice`` to a user id (or ``None``)."""
    mentions = content.get("m.mentions")
    if isinstance(mentions, dict):
        ids = mentions.get("user_ids")
        return tuple(dict.fromkeys(u for u in ids if isinstance(u, str))) if isinstance(ids, list) else ()
    found: list[str] = []
    formatted = content.get("formatted_body")
    if content.get("format") == HTML_FORMAT and isinstance(formatted, str):
        for scheme, rest in PILL.findall(MX_REPLY.sub("", formatted)):
            target = urllib.parse.unquote(rest)
            if scheme.startswith("matrix:"):
                target = f"@{target}"
            if target.startswith("@"):
                found.append(target)
    body = content.get("body")
    if isinstance(body, str):
        for local, server in PLAIN_MENTION.findall(strip_reply_fallback(body)):
            user_id = f"@{local}:{server}" if server else resolve_local(local.rstrip("."))
            if user_id:
                found.append(user_id)
    return tuple(dict.fromkeys(found))
