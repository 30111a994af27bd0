"""HTML for the console: escaping, agents' markdown made safe, and the page frame.

Every string an agent (or a model) wrote is untrusted: it goes through :func:`esc` or, for
markdown, :func:`markdown_html`, which escapes raw HTML, loads no images and drops links whose
target is not http(s), mailto, an anchor or a relative path (``javascript:`` and friends).
"""
from __future__ import annotations

import html
import re
import unicodedata
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote

import markdown
import yaml
from markdown.extensions import Extension
from markdown.inlinepatterns import (
    IMAGE_LINK_RE,
    IMAGE_REFERENCE_RE,
    LINK_RE,
    LinkInlineProcessor,
    ReferenceInlineProcessor,
    ShortReferenceInlineProcessor,
)
from markdown.treeprocessors import Treeprocessor

SAFE_SCHEMES = ("http", "https", "mailto")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def safe_url(url: str) -> bool:
    """Whether a link target from an agent may be followed: no script or data URLs, whatever
    the spelling (entities, control characters and spaces are removed before the scheme check)."""
    text = "".join(c for c in html.unescape(url) if unicodedata.category(c)[0] != "C" and not c.isspace())
    found = _SCHEME.match(text)
    return found is None or found.group(1).lower() in SAFE_SCHEMES


#: A storage path in an agent's words (``shared/tasks/task-001/result.md``): linked to the file viewer.
STORAGE_PATH = re.compile(r"^(?:agents|shared)/[^\s<>\"'`]+$")
#: The same path in running text (not ending in the sentence's punctuation or a closing bracket).
BARE_PATH = re.compile(r"(?<![\w/.-])((?:agents|shared)/[^\s<>\"'`()\[\]]*[^\s<>\"'`()\[\].,;:!?*_])")
UNLINKED = ("pre", "code", "a")


def _files_link(path: str) -> ET.Element:
    return ET.Element("a", href="/files?path=" + quote(path))


def _split_paths(text: str | None) -> tuple[str | None, list[ET.Element]]:
    """``text`` up to its first storage path, and a link for each path (its ``tail`` the text after)."""
    if not text or not BARE_PATH.search(text):
        return text, []
    pieces = BARE_PATH.split(text)
    head, anchors = pieces[0], list[ET.Element]()
    for path, after in zip(pieces[1::2], pieces[2::2], strict=True):
        if ".." in path.split("/"):  # stays text (the viewer would refuse it anyway)
            if anchors:
                anchors[-1].tail = (anchors[-1].tail or "") + path + after
            else:
                head += path + after
            continue
        anchor = _files_link(path)
        anchor.text, anchor.tail = path, after
        anchors.append(anchor)
    return head, anchors


def _link_bare_paths(element: ET.Element, inside: bool = False) -> None:
    """Storage paths written in running text become links to the file viewer (not in code,
    preformatted text or an existing link)."""
    inside = inside or element.tag in UNLINKED
    children = list(element)
    for child in children:
        _link_bare_paths(child, inside)
    if inside:
        return
    element.text, rebuilt = _split_paths(element.text)
    for child in children:
        child.tail, after = _split_paths(child.tail)
        rebuilt += [child, *after]
    element[:] = rebuilt


class _SafeLinks(Treeprocessor):
    def run(self, root: ET.Element) -> None:
        for parent in list(root.iter()):
            if parent.tag in ("pre", "a"):
                continue
            for index, child in enumerate(list(parent)):
                if child.tag == "code" and STORAGE_PATH.match(child.text or "") and ".." not in (child.text or ""):
                    anchor = _files_link(child.text or "")
                    anchor.tail, child.tail = child.tail, None
                    parent.remove(child)
                    anchor.append(child)
                    parent.insert(index, anchor)
        _link_bare_paths(root)
        for element in root.iter():
            for attribute in ("href", "src"):
                value = element.get(attribute)
                if value is not None and not safe_url(value):
                    del element.attrib[attribute]
            if element.tag == "a" and element.get("href"):
                element.set("rel", "noopener noreferrer nofollow")


#: Markdown past this many characters, or with more link openers ``](`` than MAX_LINKS, is shown as
#: plain text: Python-Markdown scans from every opener for its ``)`` (quadratic), on the event loop.
MAX_MARKDOWN = 256 * 1024
MAX_LINKS = 2000
#: A link target longer than this is no link (bounds each of those scans).
MAX_LINK_TARGET = 2048


class _BoundedLink(LinkInlineProcessor):
    def getLink(self, data: str, index: int) -> tuple[str, str | None, int, bool]:
        return super().getLink(data[:index + MAX_LINK_TARGET], index)


class _Untrusted(Extension):
    def extendMarkdown(self, md: markdown.Markdown) -> None:
        md.preprocessors.deregister("html_block")  # raw HTML stays text: it is escaped
        md.inlinePatterns.deregister("html")
        md.inlinePatterns.register(_BoundedLink(LINK_RE, md), "link", 160)
        # No images: outside ones are blocked by the CSP anyway, and one of the console's own
        # URLs would be a GET the agent chose, made by the admin's browser (the endless
        # /chat/stream holds a connection per image). ``![alt](url)`` is a link to url instead.
        md.inlinePatterns.register(_BoundedLink(IMAGE_LINK_RE, md), "image_link", 150)
        md.inlinePatterns.register(ReferenceInlineProcessor(IMAGE_REFERENCE_RE, md), "image_reference", 140)
        md.inlinePatterns.register(ShortReferenceInlineProcessor(IMAGE_REFERENCE_RE, md), "short_image_ref", 125)
        md.treeprocessors.register(_SafeLinks(md), "hiclaw_safe_links", 0)


class _PlainYaml(yaml.SafeLoader):
    """YAML without aliases: a header of a few lines has no need of them, and they are how a
    small document becomes an enormous one (the "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed here")
        return super().compose_node(parent, index)


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """A ``---`` YAML header (as result.md and spec.md have) and the rest; ``{}`` if none parses."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0 or end > 16 * 1024:
        return {}, text
    try:
        data = yaml.load(text[4:end], Loader=_PlainYaml)  # noqa: S506 - a SafeLoader, without aliases
    except (yaml.YAMLError, RecursionError):  # nested deeper than Python recurses
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    return data, text[end + 4:].lstrip("-").lstrip("\n")


def markdown_html(text: str) -> str:
    """An agent's markdown (spec.md, result.md) as HTML with its raw HTML escaped; a YAML front
    matter becomes a small table. Text too big or too odd to render (see MAX_MARKDOWN) is shown as
    it is, escaped: an agent's words never break or stall a page."""
    plain = f'<pre class="md-text">{esc(text)}</pre>'
    if len(text) > MAX_MARKDOWN or text.count("](") > MAX_LINKS:
        return plain
    header, body = front_matter(text)
    renderer = markdown.Markdown(extensions=[_Untrusted(), "fenced_code", "tables"])
    facts = "".join(f"<dt>{esc(key)}</dt><dd>{esc(str(value)[:500])}</dd>" for key, value in header.items())
    try:
        return (f'<dl class="front">{facts}</dl>' if facts else "") + renderer.convert(body)
    except RecursionError:  # nested deeper than Python-Markdown recurses
        return plain


NAV = (("/", "Team"), ("/chat", "Chat"), ("/projects", "Projects"), ("/usage", "Usage"), ("/files", "Files"))


def page(title: str, body: str, *, csrf: str | None = None, active: str = "", refresh: int | None = None,
         script: bool = False) -> str:
    """A whole page: ``body`` is HTML already made safe; ``csrf`` (logged in) adds the menu;
    ``script`` loads /console.js (the live chat; every page works without it)."""
    nav = ""
    if csrf is not None:
        links = "".join(f'<a href="{href}"{" class=on" if href == active else ""}>{name}</a>' for href, name in NAV)
        nav = (f'<nav><b>hiclaw</b>{links}<form method="post" action="/logout" class="logout">'
               f'<input type="hidden" name="csrf" value="{esc(csrf)}"><button>Log out</button></form></nav>')
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    if script:
        meta += '<script src="/console.js" defer></script>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)} · hiclaw</title><link rel="stylesheet" href="/console.css"></head>'
            f'<body>{nav}<main><h1>{esc(title)}</h1>{body}</main></body></html>')


def table(headers: list[str], rows: list[list[str]], *, empty: str = "nothing yet") -> str:
    """``rows`` of cells that are HTML already made safe."""
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def link(href: str, text: Any) -> str:
    """A link to a console page: ``href`` is built by the console (its parts escaped here)."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def badge(state: Any) -> str:
    value = esc(state)
    return f'<span class="badge s-{value}">{value}</span>'


def money(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
