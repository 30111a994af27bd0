"""Attacks on the web console: a hostile agent's words (chat, result.md, file names and contents),
a hostile web page or LAN neighbour (Host and Origin tricks, cross-origin reads of the stream,
framing), and careless admin input (odd forms). Each test asserts the outcome that matters: no
executable markup reaches the page, nothing changes, the page keeps working.

Chat attacks run on a live team (real Synapse); pure functions are tested directly.
"""
from __future__ import annotations

import time
from html.parser import HTMLParser

import aiohttp
import pytest
from test_console import client, log_in
from test_console_chat import Stream, open_chat, page_field, send

from hiclaw.console.chat import message_html
from hiclaw.console.render import markdown_html
from hiclaw.console.server import ConsoleServer
from hiclaw.errors import InvalidInputError
from hiclaw.models import ChatMessage
from hiclaw.state import Task
from hiclaw.storage import layout
from hiclaw.testing.team import running_team, wait_until

QUIET = {"agents": {"manager": {"default": {"text": "ok"}}}}
ME, MANAGER = "@admin:hiclaw.local", "@manager:hiclaw.local"
NAMES = {ME: "admin", MANAGER: "manager"}
#: A YAML header nested deeper than Python's recursion limit (PyYAML's composer recurses).
DEEP_HEADER = "---\n" + "[" * 3000 + "\n---\nbody"
#: Link openers that never close: Python-Markdown scans to the end of the text from each one.
UNCLOSED_LINKS = "[a](" * 5000


class Markup(HTMLParser):
    """What a browser would build from a page: the tags, and every attribute value."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def markup(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Markup()
    parser.feed(html)
    return parser.tags


def assert_inert(html: str, *, forms: bool = False) -> None:
    """No script, no event handler, no script URL, no image or frame load, no attribute broken open
    (``forms``: the console's own forms may be there: a whole page's <main>)."""
    banned = {"script", "iframe", "object", "embed", "base", "meta", "style", "img"} | (set() if forms else {"form"})
    for tag, attrs in markup(html):
        assert tag not in banned, (tag, html)
        for name, value in attrs.items():
            assert not name.startswith("on") and '"' not in name, (tag, name, html)
            if name in ("href", "src", "xlink:href", "action", "formaction"):
                assert "<" not in (value or ""), f"markup inside the attribute {name} of <{tag}>: {html}"
                assert not (value or "").strip().lower().startswith(("javascript:", "data:", "vbscript:")), html


def chat_message(body: str, mentions: tuple[str, ...] = ()) -> ChatMessage:
    return ChatMessage(room_id="!r:hiclaw.local", event_id="$e1", sender=MANAGER, body=body, mentions=mentions)


# ---------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("text", [
    "[x](javascript:alert(1))", "[x][1]\n\n[1]: javascript:alert(1)", "<javascript:alert(1)>",
    "[x](&#106;avascript:alert(1))", "[x](java\tscript:alert(1))", "[x](JaVaScRiPt:alert(1))",
    "[x](data:text/html,<script>alert(1)</script>)", "[x](vbscript:msgbox)", "<a href=javascript:alert(1)>x</a>",
    '![x](https://a "t\\" onerror=alert(1)")', "`shared/a\"b.md` and shared/a\"onmouseover=alert(1).md",
    "*shared/a_b.md* **agents/x/y\"><script>.md**", "---\n'<script>': '<img src=x onerror=alert(1)>'\n---\nbody",
    "```\n</pre><script>alert(1)</script>\n```", "| a |\n|---|\n| <script>x</script> |",
])
def test_agents_markdown_stays_inert(text):
    assert_inert(markdown_html(text))


def test_an_agents_image_loads_nothing():
    """Failed before the fix: an image of the console's own pages (``![](/chat/stream?room=…)``, CSP
    allows 'self') made the admin's browser GET what the agent chose and hold a connection per
    image on the endless stream — a few of them exhaust the browser's connections to the console."""
    html = markdown_html("![the plan](/chat/stream?room=!r:hiclaw.local) ![x](https://example.org/x.png)")
    assert "<img" not in html and "src=" not in html and "the plan" in html


def test_storage_paths_cannot_break_out_of_their_link():
    html = markdown_html('see shared/a?b#c%d.md and `agents/x/"q\'.md`')
    assert 'href="/files?path=shared/a%3Fb%23c%25d.md"' in html
    assert_inert(html)


def test_a_deeply_nested_yaml_header_does_not_break_the_page():
    """Failed before the fix: RecursionError out of PyYAML, so the task page (or the chat page holding
    such a message) answered 500 — for good, as long as the file or the message stays."""
    html = markdown_html(DEEP_HEADER)
    assert "body" in html and "<dl" not in html


def test_unclosed_links_render_fast():
    """Failed before the fix: 20 kB of ``[a](`` took ~5 s (quadratic), 64 kB (a Matrix message)
    ~50 s, a 1 MiB file hours — all on the control plane's event loop, which stops the whole team."""
    for text in (UNCLOSED_LINKS, "![a](" * 4000, "[a](b" * 4000, "[[a]](" * 3000, UNCLOSED_LINKS * 12,
                 "[a](()" * 1900, "[a](" * 1900 + "x" * 200_000):
        started = time.perf_counter()
        html = markdown_html(text)
        assert time.perf_counter() - started < 1.5, text[:10]
        assert "[a]" in html or "[[a]]" in html
    long_link = "[ok](https://example.org/" + "a" * 1500 + ")"
    assert 'href="https://example.org/aaa' in markdown_html(long_link), "ordinary long links still work"


def test_a_huge_markdown_file_is_shown_as_text_quickly():
    """Failed before the fix (time): markdown past 256 KiB rendered as markdown (seconds per view)."""
    text = "# T\n\n" + "Some *text* [a](https://e.org) `code`.\n\n" * 40_000
    started = time.perf_counter()
    html = markdown_html(text)
    assert time.perf_counter() - started < 1.5
    assert html.startswith("<pre") and "Some *text*" in html


def test_pill_placeholders_cannot_be_spoofed_or_land_in_attributes():
    """Failed before the fix: the placeholder was a fixed ``HICLAWPILL0X``, so an agent's text holding it
    showed a fake pill, and one in a link target or title put the pill's markup inside the attribute
    (quotes and all: the attribute broke open)."""
    body = ('@admin HICLAWPILL0X [site](https://HICLAWPILL0X.example.org "HICLAWPILL0X") [me](@admin) '
            "![HICLAWPILL0X](x)")
    html = message_html(chat_message(body, (ME,)), me=ME, name_of=NAMES.get)
    assert_inert(html)
    assert html.count('class="pill"') == 1, html  # only the real mention at the start
    assert "HICLAWPILL0X" in html


def test_mention_tokens_are_matched_literally():
    names = {ME: "admin", "@a.b+c:hiclaw.local": "a.b+c"}
    html = message_html(chat_message("hi @a.b+c and @aXb+c", ("@a.b+c:hiclaw.local",)), me=ME, name_of=names.get)
    assert html.count('class="pill"') == 1 and "@aXb+c" in html


def test_formatted_body_and_sender_are_never_raw():
    message = ChatMessage(room_id="!r:x", event_id='$e"><script>', sender='@x"><img src=x>:x', body="plain",
                          formatted_body="<script>alert(1)</script><img src=x onerror=alert(1)>")
    html = message_html(message, me=ME, name_of=lambda _: None)
    assert "alert" not in html
    assert_inert(html)


def test_the_plan_graph_escapes_titles_and_ids():
    from hiclaw.console.charts import plan_svg

    task = Task(id="task-001", title='</text><script>alert(1)</script><a href="javascript:x">', assignee="alex")
    svg = plan_svg([task])
    assert_inert(svg)
    assert "<script>" not in svg and [t for t, _ in markup(svg)].count("a") == 1


@pytest.mark.parametrize(("host", "lan", "ok"), [
    ("127.0.0.1:7420", False, True), ("localhost", False, True), ("[::1]:7420", False, True),
    ("evil.example:7420", False, False), ("127.0.0.1.evil.example", False, False), ("localhost.", False, False),
    ("localhost:7420@evil.example", False, False), ("localhost:evil", False, False), ("::1", False, False),
    ("evil.example", True, False), ("10.0.0.5:7420", True, True), ("localhost:1@evil.example", True, False),
    ("127.0.0.1.evil.example", True, False), ("", False, False),
])
def test_host_names(host, lan, ok):
    """``localhost:7420@evil.example`` was accepted before the fix (the part before the last ':')."""
    console = ConsoleServer.__new__(ConsoleServer)
    console.host = "0.0.0.0" if lan else "127.0.0.1"
    assert console.host_ok(host) is ok


# ---------------------------------------------------------------------- on a live team

async def raw_get(console, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.get(console.url + path, headers=headers,
                                                         allow_redirects=False) as response:
        return response.status, dict(response.headers), await response.text()


async def test_hostile_chat_messages_on_the_page_and_the_stream(tmp_path):
    async with running_team(tmp_path / "home", QUIET) as team:
        plane, console = team.plane, team.plane.console
        room = plane.chat.manager_room
        async with client(console.url) as http:
            await log_in(http, console)
            _, since = await open_chat(http)
            stream = Stream(http, f"/chat/stream?room={room}&since={since}")
            try:
                await wait_until(lambda: stream.status == 200, timeout=10, what="the stream to open")
                hostile = [
                    "@admin HICLAWPILL0X [x](https://HICLAWPILL0X.example.org \"HICLAWPILL0X\")",
                    f"![stream](/chat/stream?room={room}) ![out](https://example.org/x.png)",
                    DEEP_HEADER,
                    UNCLOSED_LINKS,
                    "last one",
                ]
                for text in hostile:
                    await plane.chat.post(room, text, mentions=["admin"] if "@admin" in text else [])
                await wait_until(lambda: any("last one" in m for m in stream.messages()), timeout=30,
                                 what="every hostile message on the stream")
                async with http.get("/chat") as response:
                    assert response.status == 200, "a hostile message broke the chat page"
                    html = await response.text()
            finally:
                await stream.close()
            assert len(stream.messages()) >= len(hostile)  # and the Manager's own words, if any
            for shown in [*stream.messages(), html.split("<main>", 1)[1]]:
                assert_inert(shown, forms=shown.startswith("<h1>"))
            assert html.count('class="pill"') == 1

            # The stream is not readable from another origin and cannot be framed.
            _, since = await open_chat(http)
            async with http.get(f"/chat/stream?room={room}&since={since}",
                                headers={"Origin": "http://evil.example"}) as response:
                assert response.status == 200
                assert "Access-Control-Allow-Origin" not in response.headers
                assert response.headers["X-Frame-Options"] == "DENY"
                assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_careless_admin_input_to_chat_send(tmp_path):
    async with running_team(tmp_path / "home", QUIET) as team:
        plane, console = team.plane, team.plane.console
        room = plane.chat.manager_room
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            html, _ = await open_chat(http)
            nonce = page_field(html, "nonce")
            origin = {"Origin": console.url}

            # A file in the text field (a multipart form): refused, not sent as its Python repr.
            form = aiohttp.FormData()
            for name, value in (("csrf", csrf), ("room", room), ("nonce", nonce)):
                form.add_field(name, value)
            form.add_field("text", b"\x00\xffbinary", filename="x.bin", content_type="application/octet-stream")
            async with http.post("/chat/send", data=form, headers=origin) as response:
                assert response.status == 409, await response.text()

            # A long message of non-Latin text, within the form's maxlength: sent (before the fix:
            # 413, its percent-encoded form was more than the app's 64 KiB).
            long_text = "漢" * 19_999
            response = await send(http, csrf, room, long_text, nonce)
            assert response.status == 303, response.status

            # The same form sent again with another text (back, edit, send): the new text is
            # posted, not silently dropped as a "resubmission" (failed before the fix).
            other = page_field((await open_chat(http))[0], "nonce")
            assert (await send(http, csrf, room, "first words", other)).status == 303
            assert (await send(http, csrf, room, "second words", other)).status == 303
            assert (await send(http, csrf, room, "second words", other)).status == 303  # a resubmission

            async def bodies() -> list[str]:
                return [str((e.get("content") or {}).get("body", "")) for e in await team.admin.room_messages(room)]

            found = await bodies()
            assert found.count("first words") == 1 and found.count("second words") == 1, found
            assert sum(b.count("漢") for b in found) >= 19_999  # (a long message may go in parts)
            assert not any("FileField" in b or "binary" in b for b in found)

            # A room id with odd characters: one line, nothing sent.
            for odd in ("<script>", "!x:y\r\nSet-Cookie: a=b", "../../login", "%00"):
                response = await send(http, csrf, odd, "odd room", other)
                assert response.status == 409
            assert "odd room" not in await bodies()


async def test_hostile_web_pages_and_lan_neighbours(tmp_path, monkeypatch):
    async with running_team(tmp_path / "home", QUIET) as team:
        plane, console = team.plane, team.plane.console
        room = plane.chat.manager_room
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            cookie = next(iter(http.cookie_jar)).value
            session = {"Cookie": f"hiclaw_console={cookie}"}

            # DNS rebinding and Host tricks: 421, with the security headers, nothing served.
            port = console.port
            for host in ("evil.example", f"127.0.0.1.evil.example:{port}", f"localhost:{port}@evil.example"):
                status, headers, text = await raw_get(console, "/", {**session, "Host": host})
                assert status == 421, host
                assert headers["X-Frame-Options"] == "DENY" and "csrf" not in text

            # A cross-site form (or a sandboxed frame: Origin null) with the session cookie and even
            # the right token: refused, nothing sent.
            for bad in ("http://evil.example", "null", f"http://127.0.0.1:{port}.evil.example", ""):
                headers = {"Origin": bad} if bad else {}
                async with http.post("/chat/send", headers=headers, data={
                        "csrf": csrf, "room": room, "text": "forged", "nonce": "n" * 24}) as response:
                    assert response.status == 403, bad
            assert not [e for e in await team.admin.room_messages(room)
                        if (e.get("content") or {}).get("body") == "forged"]

            # Nothing changes state on GET; 404 and 405 carry the headers too.
            for method, path, status in (("GET", "/logout", 405), ("GET", "/chat/send", 405),
                                         ("GET", "/nowhere", 404)):
                async with http.request(method, path, allow_redirects=False) as response:
                    assert response.status == status, path
                    assert response.headers["X-Frame-Options"] == "DENY"
                    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
            async with http.get("/") as response:
                assert response.status == 200, "GET /logout logged us out"

            # The script and the stream are not served without a session.
            for path in ("/console.js", f"/chat/stream?room={room}"):
                status, _, _ = await raw_get(console, path, {})
                assert status == 303

            # A crash inside a page (a bug, or something an agent found): 500 with the security
            # headers and without the exception's words (failed before the fix: aiohttp's bare 500).
            async def broken(*args, **kwargs):
                raise RuntimeError("secret detail of the crash")

            monkeypatch.setattr(plane, "status", broken)
            async with http.get("/") as response:
                assert response.status == 500
                assert response.headers.get("X-Frame-Options") == "DENY"
                assert "Content-Security-Policy" in response.headers
                assert "secret detail" not in await response.text()


async def test_hostile_files_and_results_on_the_pages(tmp_path):
    async with running_team(tmp_path / "home", QUIET) as team:
        plane, console = team.plane, team.plane.console
        await plane.provisioner.create_worker("alex", role='<img src=x onerror=alert("role")>')
        project = await plane.engine.create_project('<svg onload=alert("p")>')
        await plane.engine.propose_plan(project.id, [{"id": "task-001", "title": "</text><script>alert(1)</script>",
                                                      "assignee": "alex"}])
        await plane.storage.put(layout.task_result("task-001"), DEEP_HEADER.encode())
        names = ['shared/evil/"><img src=x onerror=alert(1)>.md', "shared/evil/x.md?y#z", "shared/evil/%2e%2e.md"]
        stored = []
        for name in names:
            try:
                await plane.storage.put(name, b"[x](javascript:alert(1)) " + UNCLOSED_LINKS[:400].encode())
                stored.append(name)
            except InvalidInputError:
                pass
        async with client(console.url) as http:
            await log_in(http, console)
            pages = ["/", f"/projects/{project.id}", "/tasks/task-001", "/files?path=shared/evil/"]
            pages += [f"/files?path={aiohttp.helpers.quote(n, safe='/')}" for n in stored]
            for path in pages:
                async with http.get(path) as response:
                    assert response.status == 200, path
                    html = await response.text()
                assert_inert(html.split("<main>", 1)[1], forms=True)
                assert "alert(1)</script>" not in html and "<img src=x" not in html, path
            async with http.get("/tasks/task-001") as response:
                assert "body" in await response.text()


def test_sse_carries_no_field_from_an_agent():
    from hiclaw.console.chat import sse

    raw = sse("message", "x\r\nevent: reload\rid: 99\n\ndata: y\u2028z", 5).decode()
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert [line.split(":", 1)[0] for line in lines if line] == ["id", "event", "data", "data", "data", "data", "data"]
