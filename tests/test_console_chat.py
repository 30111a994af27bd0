"""Chat in the web console, on a live team (real Synapse): the admin's rooms, the live stream
(server-sent events), sending as the admin with real mentions, and what hostile words become.

The console's chat session is logged in as the admin, so a message sent here is the admin's own:
the Manager obeys it, and a double-submitted form posts once.
"""
from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from test_console import client, log_in

from hiclaw.console.chat import message_html, sse
from hiclaw.models import ChatMessage
from hiclaw.testing.team import running_team, wait_until

#: The Manager answers every turn with this (a turn starts only when it is mentioned).
SCENARIO = {"agents": {"manager": {"default": {"text": "Noted — the plan is in `shared/projects/proj-001/plan.md`."}}}}
HOSTILE = "<script>alert(1)</script> [x](javascript:alert(2)) <img src=x onerror=alert(3)>"


class Stream:
    """A reader of ``/chat/stream``: the server-sent events as they come."""

    def __init__(self, http: aiohttp.ClientSession, path: str) -> None:
        self.http, self.path = http, path
        self.events: list[dict[str, str]] = []
        self.ended = asyncio.Event()
        self.status = 0
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async with self.http.get(self.path) as response:
                self.status = response.status
                event: dict[str, str] = {}
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if not line:
                        if "event" in event:
                            self.events.append(event)
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(": ")
                        event[field] = event[field] + "\n" + value if field == "data" and field in event else value
        finally:
            self.ended.set()

    def messages(self) -> list[str]:
        return [e["data"] for e in self.events if e.get("event") == "message"]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def page_field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field"
    return found.group(1)


async def open_chat(http: aiohttp.ClientSession, room: str | None = None) -> tuple[str, str]:
    async with http.get("/chat" + (f"?room={room}" if room else "")) as response:
        assert response.status == 200, await response.text()
        html = await response.text()
    since = re.search(r'data-since="(\d+)"', html)
    assert since, html[:500]
    return html, since.group(1)


async def send(http: aiohttp.ClientSession, csrf: str, room: str, text: str, nonce: str) -> aiohttp.ClientResponse:
    async with http.post("/chat/send", data={"csrf": csrf, "room": room, "text": text, "nonce": nonce},
                         headers={"Origin": str(http._base_url).rstrip("/")}, allow_redirects=False) as response:
        await response.read()
        return response


async def test_chat_lists_the_admins_rooms_streams_live_and_sends_with_real_mentions(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane, console = team.plane, team.plane.console
        manager_room, manager = plane.chat.manager_room, team.user_id("manager")
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            html, since = await open_chat(http)
            assert f'data-room="{manager_room}"' in html, "the Manager's room opens first"
            assert "<script src=\"/console.js\" defer></script>" in html
            async with http.get("/console.js") as response:
                assert response.status == 200 and "EventSource" in await response.text()
            stream = Stream(http, f"/chat/stream?room={manager_room}&since={since}")
            try:
                # Someone else's message arrives live, rendered: Markdown, a storage path linked.
                await plane.chat.post(manager_room, "**Plan** ready: see shared/projects/proj-001/plan.md now",
                                      mentions=["admin"])
                await wait_until(lambda: any("Plan" in m for m in stream.messages()), timeout=30,
                                 what="the Manager's message on the stream")
                live = next(m for m in stream.messages() if "Plan" in m)
                assert "<strong>Plan</strong>" in live and 'href="/files?path=shared/projects/proj-001/plan.md"' in live
                assert 'class="msg to-me"' in live and '<span class="pill"' in live, live

                # Sending as the admin: a real mention, which wakes the Manager — its answer streams in.
                nonce = page_field(html, "nonce")
                response = await send(http, csrf, manager_room, "@manager what is the plan?", nonce)
                assert response.status == 303 and response.headers["Location"] == f"/chat?room={manager_room}"
                await wait_until(lambda: any("Noted" in m for m in stream.messages()), timeout=60,
                                 what="the Manager's answer to the console's mention")
                assert any("what is the plan?" in m and "mine" in m for m in stream.messages())
                # The same form again (a reload, a double click): posted once.
                again = await send(http, csrf, manager_room, "@manager what is the plan?", nonce)
                assert again.status == 303
                # On the homeserver: one event, from the admin, with a pill and m.mentions.
                raw = [e for e in await team.admin.room_messages(manager_room)
                       if "what is the plan?" in str((e.get("content") or {}).get("body", ""))]
                assert len(raw) == 1, raw
                content = raw[0]["content"]
                assert raw[0]["sender"] == team.user_id("admin")
                assert content["m.mentions"] == {"user_ids": [manager]}
                assert f'href="https://matrix.to/#/{manager}"' in content["formatted_body"]
                reply = team.said("manager", "Noted")
                assert reply is not None, "the Manager answered the admin's console message"
            finally:
                await stream.close()

            # The page reloaded shows it all, once, with the pill and the file link.
            html, _ = await open_chat(http, manager_room)
            assert html.count("what is the plan?") == 1
            assert '<span class="pill" title="' + manager + '">@manager</span>' in html


async def test_chat_refuses_bad_input_and_escapes_hostile_words(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane, console = team.plane, team.plane.console
        room = plane.chat.manager_room
        async with client(console.url) as http:
            # Nothing without a session: the page asks for a login, the stream and sending refuse.
            async with http.get("/chat", allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/login"
            async with http.get(f"/chat/stream?room={room}", allow_redirects=False) as response:
                assert response.status == 303
            csrf = await log_in(http, console)
            html, _ = await open_chat(http)
            nonce = page_field(html, "nonce")
            origin = {"Origin": console.url}
            async with http.post("/chat/send", data={"room": room, "text": "no token", "nonce": nonce},
                                 headers=origin) as response:
                assert response.status == 403
            refused = {
                "": "the message is empty",
                "x" * 20_001: "more than 20,000",
            }
            for text, problem in refused.items():
                async with http.post("/chat/send", data={"csrf": csrf, "room": room, "text": text, "nonce": nonce},
                                     headers=origin) as response:
                    assert response.status == 409 and problem in await response.text()
            async with http.post("/chat/send", data={"csrf": csrf, "room": "!nowhere:hiclaw.local", "text": "hi",
                                                     "nonce": nonce}, headers=origin) as response:
                assert response.status == 409 and "you are in no room" in await response.text()
            async with http.post("/chat/send", data={"csrf": csrf, "room": room, "text": "hi", "nonce": "x"},
                                 headers=origin) as response:
                assert response.status == 409 and "reload the page" in await response.text()
            async with http.get("/chat?room=!nowhere:hiclaw.local") as response:
                assert response.status == 404
            async with http.get("/chat/stream?room=!nowhere:hiclaw.local") as response:
                assert response.status == 404
            async with http.get(f"/chat/stream?room={room}&since=soon") as response:
                assert response.status == 400
            assert not [m for m in await console.chat.history(room, 50) if m.body in ("hi", "no token")]

            # Hostile words from an agent: escaped on the page and on the stream.
            _, since = await open_chat(http)
            stream = Stream(http, f"/chat/stream?room={room}&since={since}")
            try:
                await plane.chat.post(room, HOSTILE)
                await wait_until(stream.messages, timeout=30, what="the hostile message on the stream")
            finally:
                await stream.close()
            html, _ = await open_chat(http)
            for shown in (stream.messages()[0], html):
                assert "<script>alert" not in shown and "<img src=x" not in shown and "javascript:" not in shown
                assert "&lt;script&gt;" in shown

            # Logging out ends the live stream: nothing more reaches it.
            _, since = await open_chat(http)
            stream = Stream(http, f"/chat/stream?room={room}&since={since}")
            try:
                await wait_until(lambda: stream.status == 200, timeout=10, what="the stream to open")
                async with http.post("/logout", data={"csrf": csrf}, headers=origin, allow_redirects=False) as response:
                    assert response.status == 303
                await plane.chat.post(room, "after the logout")
                await asyncio.wait_for(stream.ended.wait(), timeout=30)
                assert not any("after the logout" in m for m in stream.messages())
            finally:
                await stream.close()


async def test_a_console_stopping_ends_its_streams_at_once(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        console = team.plane.console
        room = team.plane.chat.manager_room
        async with client(console.url) as http:
            await log_in(http, console)
            _, since = await open_chat(http)
            stream = Stream(http, f"/chat/stream?room={room}&since={since}")
            await wait_until(lambda: stream.status == 200, timeout=10, what="the stream to open")
            loop = asyncio.get_running_loop()
            started = loop.time()
            await console.stop()
            await asyncio.wait_for(stream.ended.wait(), timeout=10)
            assert loop.time() - started < 5, "the open stream held the console's stop"


def test_message_html_pills_paths_and_escaping():
    me, manager = "@admin:hiclaw.local", "@manager:hiclaw.local"
    names = {me: "admin", manager: "manager"}
    message = ChatMessage(room_id="!r:hiclaw.local", event_id="$e1", sender=manager, mentions=(me,),
                          body="@admin see agents/sam/notes.md and `shared/x.md` <b>bold</b> shared/../secrets")
    html = message_html(message, me=me, name_of=names.get)
    assert '<span class="pill" title="@admin:hiclaw.local">@admin</span>' in html
    assert 'href="/files?path=agents/sam/notes.md"' in html and 'href="/files?path=shared/x.md"' in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "/files?path=shared/../" not in html
    assert 'class="msg to-me"' in html and '<span class="who">manager</span>' in html


@pytest.mark.parametrize("data", ["one line", "two\nlines", "<li>x</li>\n\n", "x\revent: reload\r\ndata: y"])
def test_server_sent_events_keep_every_line_of_the_data(data):
    raw = sse("message", data, 7).decode()
    assert raw.startswith("id: 7\nevent: message\n") and raw.endswith("\n\n")
    lines = re.split(r"\r\n|\r|\n", raw.strip("\n"))  # as a browser splits them
    assert lines[:2] == ["id: 7", "event: message"] and all(line.startswith("data: ") for line in lines[2:])
    assert [line[6:] for line in lines[2:]] == re.split(r"\r\n|\r|\n", data)


async def test_replan_from_a_project_page_asks_the_manager_as_the_admin(tmp_path):
    async with running_team(tmp_path / "home", SCENARIO) as team:
        plane, console = team.plane, team.plane.console
        room, manager = plane.chat.manager_room, team.user_id("manager")
        await plane.provisioner.create_worker("alex", role="writer")
        project = await plane.engine.create_project("Launch")
        await plane.engine.propose_plan(project.id, [{"id": "task-001", "title": "Draft", "assignee": "alex"}])
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            async with http.get(f"/projects/{project.id}") as response:
                html = await response.text()
            assert f'action="/projects/{project.id}/replan"' in html
            nonce, version = page_field(html, "nonce"), re.search(r'name="version" value="(\d+)"', html).group(1)
            origin = {"Origin": console.url}
            for data, problem in (({"change": " ", "version": version}, "say what should change"),
                                  ({"change": "add a FAQ", "version": ""}, "lost the plan version")):
                async with http.post(f"/projects/{project.id}/replan", data={"csrf": csrf, "nonce": nonce, **data},
                                     headers=origin) as response:
                    assert response.status == 409 and problem in await response.text()
            async with http.post(f"/projects/{project.id}/replan",
                                 data={"csrf": csrf, "nonce": nonce, "version": version, "change": "add a FAQ task for taylor"},
                                 headers=origin, allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"].startswith("/chat?room=")
            # Mentioned in another room (alex's) while the Manager's room is open: a notice links there.
            _, since = await open_chat(http)
            stream = Stream(http, f"/chat/stream?room={room}&since={since}")
            try:
                alex_room = await plane.chat.worker_room("alex")
                await plane.chat.post(alex_room, "alex needs your call on the tone", mentions=["admin"])
                await plane.chat.post(alex_room, "chatter that names nobody")
                await wait_until(lambda: [e for e in stream.events if e.get("event") == "mention"], timeout=30,
                                 what="the mention notice")
            finally:
                await stream.close()
            (notice,) = [e["data"] for e in stream.events if e.get("event") == "mention"]
            assert "mentioned you in" in notice and "alex needs your call" in notice and "/chat?room=" in notice
            assert not [m for m in stream.messages() if "chatter" in m or "alex needs" in m]
        await team.wait_for_message("Noted")  # the Manager was woken by the admin's mention
        asked = [e for e in await team.admin.room_messages(room)
                 if "please change the plan" in str((e.get("content") or {}).get("body", ""))]
        assert len(asked) == 1 and asked[0]["sender"] == team.user_id("admin")
        assert f"as of plan version {version}: add a FAQ task for taylor" in asked[0]["content"]["body"]
        assert asked[0]["content"]["m.mentions"] == {"user_ids": [manager]}


async def test_a_page_opened_right_after_sending_shows_the_message(tmp_path):
    """The homeserver's history is read from where the console's session last synced: what came
    after (the admin's own message, just sent) is shown from what the session has seen."""
    async with running_team(tmp_path / "home", {"agents": {"manager": {"default": {"text": "ok"}}}}) as team:
        console = team.plane.console
        room = team.plane.chat.manager_room
        async with client(console.url) as http:
            csrf = await log_in(http, console)
            for number in range(5):
                html, _ = await open_chat(http)
                async with http.post("/chat/send", data={"csrf": csrf, "room": room, "text": f"note {number} for later",
                                                         "nonce": page_field(html, "nonce")},
                                     headers={"Origin": console.url}) as response:  # follows the redirect
                    assert response.status == 200
                    page = await response.text()
                assert page.count(f"note {number} for later") == 1, f"message {number} missing from the page"
