"""Matrix message content, settings and the channel store (no server needed)."""
from __future__ import annotations

import stat

import pytest
from pydantic import ValidationError

from hiclaw.plugins.channels.matrix.formatting import (
    detect_mentions,
    render,
    split_text,
    strip_reply_fallback,
    with_mention_prefix,
)
from hiclaw.plugins.channels.matrix.settings import MatrixSettings
from hiclaw.plugins.channels.matrix.store import ChannelStore

ALICE = "@alice:hiclaw.local"
BOB = "@bob:hiclaw.local"


def resolve(local: str) -> str | None:
    return f"@{local}:hiclaw.local"


# --------------------------------------------------------------------------- outgoing


def test_render_mention_has_plain_body_pill_and_m_mentions():
    content = render("@alice please review **task-001**", [(ALICE, "alice")], mark_mentions=True)
    assert content["body"] == "@alice please review **task-001**"
    assert content["format"] == "org.matrix.custom.html"
    assert '<a href="https://matrix.to/#/@alice:hiclaw.local">alice</a>' in content["formatted_body"]
    assert "<strong>task-001</strong>" in content["formatted_body"]
    assert content["m.mentions"] == {"user_ids": [ALICE]}


def test_render_plain_text_has_no_html_and_empty_mentions():
    content = render("just words", [], mark_mentions=True)
    assert content == {"msgtype": "m.text", "body": "just words", "m.mentions": {}}


def test_render_unmarked_part_keeps_pill_but_wakes_nobody():
    content = render("@alice first part", [(ALICE, "alice")], mark_mentions=False)
    assert "matrix.to/#/@alice" in content["formatted_body"]
    assert content["m.mentions"] == {}


def test_render_does_not_pill_a_longer_name_or_an_email():
    content = render("@alicebot and alice@example.org", [(ALICE, "alice")], mark_mentions=True)
    assert "matrix.to" not in content.get("formatted_body", "")


def test_mention_prefix_added_only_when_missing():
    assert with_mention_prefix("please look", [(ALICE, "alice"), (BOB, "bob")]) == "@alice @bob please look"
    assert with_mention_prefix("@alice please look", [(ALICE, "alice")]) == "@alice please look"
    assert with_mention_prefix("ask @bob:hiclaw.local", [(BOB, None)]) == "ask @bob:hiclaw.local"


def test_split_text_respects_limit_and_prefers_paragraphs():
    text = ("a" * 150 + "\n\n") * 5
    parts = split_text(text, 400)
    assert all(len(p) <= 400 for p in parts)
    assert "".join(parts).replace("\n", "") == text.replace("\n", "")
    assert split_text("x" * 1000, 300)[0] == "x" * 300  # no break point: hard cut
    assert split_text("short", 300) == ["short"]


# --------------------------------------------------------------------------- incoming


def test_detects_each_of_the_three_forms():
    by_field = {"body": "hey", "m.mentions": {"user_ids": [ALICE]}}
    by_pill = {"body": "alice: hey", "format": "org.matrix.custom.html",
               "formatted_body": '<a href="https://matrix.to/#/%40alice%3Ahiclaw.local">alice</a>: hey'}
    by_body = {"body": "@alice hey, and @bob:hiclaw.local too"}
    assert detect_mentions(by_field, resolve) == (ALICE,)
    assert detect_mentions(by_pill, resolve) == (ALICE,)
    assert detect_mentions(by_body, resolve) == (ALICE, BOB)


def test_m_mentions_is_authoritative_when_present():
    # A client that sets m.mentions said whom it means: body text alone does not mention.
    content = {"body": "@bob said hi", "m.mentions": {}}
    assert detect_mentions(content, resolve) == ()
    assert detect_mentions({"body": "x", "m.mentions": {"room": True}}, resolve) == ()


def test_matrix_uri_pill_and_reply_fallbacks():
    uri = {"body": "hi", "format": "org.matrix.custom.html", "formatted_body": '<a href="matrix:u/bob:hiclaw.local">bob</a>'}
    assert detect_mentions(uri, resolve) == (BOB,)
    reply = {"body": "> <@alice:hiclaw.local> @bob look\n\nthanks", "format": "org.matrix.custom.html",
             "formatted_body": '<mx-reply><a href="https://matrix.to/#/@alice:hiclaw.local">a</a></mx-reply>thanks'}
    assert detect_mentions(reply, resolve) == ()
    assert strip_reply_fallback(reply["body"]) == "thanks"


def test_email_addresses_are_not_mentions():
    assert detect_mentions({"body": "mail bob@example.org"}, resolve) == ()


# --------------------------------------------------------------------------- settings


def test_settings_names_and_aliases():
    settings = MatrixSettings(user_prefix="t1-", server_name="example.org")
    assert settings.user_id_of("alice") == "@t1-alice:example.org"
    assert settings.user_id_of("@x:y.org") == "@x:y.org"
    assert settings.name_of("@t1-alice:example.org") == "alice"
    assert settings.name_of("@alice:example.org") is None
    assert settings.room_alias("worker-alice") == "hiclaw-t1-worker-alice"
    assert MatrixSettings().url == "http://127.0.0.1:18008"
    with pytest.raises(ValueError, match="not an agent name"):
        settings.user_id_of("Alice Smith")


def test_settings_errors_name_the_problem():
    with pytest.raises(ValidationError, match="homeserver_url"):
        MatrixSettings(embedded=False)
    with pytest.raises(ValidationError, match="http"):
        MatrixSettings(homeserver_url="matrix.example.org")
    with pytest.raises(ValidationError, match="extra"):
        MatrixSettings(prot=1)


# --------------------------------------------------------------------------- store


def test_store_persists_and_is_private(tmp_path):
    store = ChannelStore(tmp_path / "s")
    store.set("next_batch", "s1_2")
    store.mark_seen("$a")
    store.record_sent("key", "$e")
    store.set_allowed_senders("!r", {ALICE})
    store.close()
    again = ChannelStore(tmp_path / "s")
    assert again.get("next_batch") == "s1_2" and again.seen("$a") and not again.seen("$b")
    assert again.sent_event("key") == "$e" and again.allowed_senders("!r") == {ALICE}
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "s" / "channel.sqlite3").stat().st_mode) == 0o600
