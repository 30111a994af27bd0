"""A hostile worker against the gateway (issue 14, attacks 3 and 8).

Attack 3 — parameter smuggling: litellm takes ``base_url``, ``api_base``, ``api_key``,
``extra_headers``, ``custom_llm_provider``… as keyword arguments, and a gateway that forwards a
caller's unknown fields lets the caller send the real provider key to a URL of its choice. An
attacker's HTTP server on loopback records every request it gets; the provider key is a canary.
Every smuggled field must be refused with 400 naming it, before any upstream contact, on both
upstreams (direct HTTP and litellm), and the attacker's server must receive nothing.

Attack 8 — budget escape: a worker leaves out or forges ``X-Hiclaw-Project``/``X-Hiclaw-Task``.
The gateway must attribute a worker's calls from the control plane's assignments only, so that
no header choice gets a call past a spent project budget, or charges it to someone else's task.

The gateway-only tests drive a real gateway over HTTP; the team tests attack from inside a real
bwrap worker with its own ``run_command`` tool, reading its token from ``HICLAW_WORKER_SPEC``.
"""
from __future__ import annotations

import json
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import pytest_asyncio

from hiclaw.testing.gateway import running_gateway, running_scripted_model, scripted_aliases
from hiclaw.testing.sandbox import bwrap_unavailable
from hiclaw.testing.team import Team, running_team, wait_until

CANARY = "sk-canary-hostile-3f9a0c7e51d24b6a8e0f"
WORKER = "mallory"
OTHER = "bob"


class Recorder:
    """An HTTP server on loopback that records every request it receives and answers like an
    OpenAI-compatible provider: an attacker's server (or, in one test, a provider to look at)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                          "body": body.decode("utf-8", "replace")})
                reply = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "recorded",
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": "recorded"}}],
                                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="recorder", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def text(self) -> str:
        return json.dumps(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def attacker() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.close()


def smuggles(attacker_url: str) -> list[tuple[str, dict[str, Any], str]]:
    """(case, extra body fields, the parameter the 400 must name). Every case also carries
    ``base_url`` = the attacker (after the field under test): litellm lets ``base_url`` win over
    the alias's own ``api_base``, so before the fix each of these sent the key to the attacker."""
    carrier = {"base_url": attacker_url}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("api_base", {"api_base": attacker_url}, "api_base"),
        ("base_url", {"base_url": attacker_url}, "base_url"),
        ("api_key", {"api_key": "sk-attacker-own", **carrier}, "api_key"),
        ("extra_headers", {"extra_headers": {"X-Exfiltrate": "1"}, **carrier}, "extra_headers"),
        ("extra_body", {"extra_body": {"api_base": attacker_url}, **carrier}, "extra_body"),
        ("custom_llm_provider", {"custom_llm_provider": "openai", **carrier}, "custom_llm_provider"),
        ("metadata", {"metadata": {"tag": "x"}, **carrier}, "metadata"),
        ("mock_response", {"mock_response": "free tokens", **carrier}, "mock_response"),
        ("fallbacks", {"fallbacks": [{"model": "openai/x", "api_base": attacker_url}], **carrier}, "fallbacks"),
        ("stream_options nested", {"stream": True, "stream_options": {"include_usage": True, "api_base": attacker_url},
                                   **carrier}, "stream_options.api_base"),
        ("streamed api_base", {"stream": True, "api_base": attacker_url}, "api_base"),
    ]
    return cases


# The team tests come first: litellm formats tracebacks in background threads after a call, and
# Python 3.11's ast state is not thread-safe under pytest's import rewriting, so a team starting
# right after the litellm gateway tests could fail to import its modules ("AST constructor
# recursion depth mismatch") — nothing to do with what is tested.


# --------------------------------------------------------------------------- from inside a real worker

pytestmark_bwrap = pytest.mark.skipif(bwrap_unavailable() is not None, reason=str(bwrap_unavailable()))

#: Python the worker runs with ``run_command``: its token and gateway URL from its own spec, then
#: one request per case; prints ``MARK`` and one JSON line per case.
WORKER_SCRIPT = r'''
import json, os, urllib.error, urllib.request
spec = {}
for pid in os.listdir("/proc"):
    try:
        for item in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
            if item.startswith(b"HICLAW_WORKER_SPEC="):
                spec = json.loads(item.split(b"=", 1)[1])
    except (OSError, ValueError):
        pass
base, token = spec["gateway"]["base_url"].rstrip("/"), spec["gateway"]["token"]
print(MARK)
for name, extra, headers in CASES:
    body = {"model": "smart", "messages": [{"role": "user", "content": "legit call"}], **extra}
    request = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": "Bearer " + token, "Content-Type": "application/json",
                                              **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    except Exception as exc:
        status, text = type(exc).__name__, ""
    error = (json.loads(text).get("error") or {}) if text.startswith("{") else {}
    print(json.dumps({"case": name, "status": status, "param": error.get("param"), "message": error.get("message"),
                      "leak": token in text}))
'''


def worker_command(mark: str, cases: list[tuple[str, dict[str, Any], dict[str, str]]]) -> dict[str, Any]:
    script = f"import json\nMARK = {mark!r}\nCASES = json.loads({json.dumps(cases)!r})\n" + WORKER_SCRIPT
    return {"name": "run_command", "arguments": {"command": f"{sys.executable} - <<'PYEOF'\n{script}\nPYEOF",
                                                 "timeout_seconds": 120}}


def results(team: Team, variable: str) -> dict[str, dict[str, Any]]:
    """The worker's script output, as the model received it in the run_command result."""
    text = json.loads(team.model.engine.stats()["agents"][WORKER]["variables"][variable])["output"]
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return {row["case"]: row for row in rows}


BUDGET_TITLE = "budget attack"


def scenario(attacker_url: str, task_ids: dict[str, str], projects: dict[str, str]) -> dict[str, Any]:
    smuggle_cases = [(name, extra, {}) for name, extra, _param in smuggles(attacker_url)]
    smuggle_cases.append(("control: plain call", {}, {}))
    spent, mine, theirs = task_ids["spent"], task_ids["mine"], task_ids["theirs"]
    budget_cases = [
        ("no header", {}, {}),
        ("forged project: its unspent one", {}, {"X-Hiclaw-Project": projects["open"]}),
        ("forged project: made up", {}, {"X-Hiclaw-Project": "proj-free-money"}),
        ("another worker's task", {}, {"X-Hiclaw-Task": theirs}),
        ("another worker's task + project", {}, {"X-Hiclaw-Task": theirs, "X-Hiclaw-Project": projects["open"]}),
        ("made-up task", {}, {"X-Hiclaw-Task": "task-999"}),
        ("its spent task + other project", {}, {"X-Hiclaw-Task": spent, "X-Hiclaw-Project": projects["open"]}),
        ("legit: its open task, forged project", {}, {"X-Hiclaw-Task": mine, "X-Hiclaw-Project": projects["spent"]}),
    ]
    return {"agents": {WORKER: {"rules": [
        {"when": {"contains": "legit call"}, "text": "fine"},
        {"when": {"role": "user", "contains": "please smuggle"}, "tool_calls": [worker_command("SMUGGLE-RESULTS", smuggle_cases)]},
        {"when": {"role": "user", "contains": BUDGET_TITLE}, "tool_calls": [worker_command("BUDGET-RESULTS", budget_cases)]},
        {"when": {"tool_result": "run_command", "regex": r"(?s)(?P<smuggle_out>\{.*SMUGGLE-RESULTS.*\})"}, "text": "smuggled"},
        {"when": {"tool_result": "run_command", "regex": r"(?s)(?P<budget_out>\{.*BUDGET-RESULTS.*\})"}, "text": "budgeted"},
    ], "default": {"text": "ok"}}, "*": {"default": {"text": "ok"}}}}


#: Task and project ids: in the spent project the other worker's task and the worker's own (which
#: waits for it), then the worker's task in the open project.
TASKS = {"theirs": "task-001", "spent": "task-002", "mine": "task-003"}
PROJECTS = {"spent": "proj-001", "open": "proj-002"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def team(tmp_path_factory, attacker) -> AsyncIterator[Team]:
    """One live team for the module: every alias goes through litellm (the path that leaked),
    the provider key is the canary, and the projects' ids are fixed by creating them first."""
    if bwrap_unavailable() is not None:
        pytest.skip(str(bwrap_unavailable()))
    home = tmp_path_factory.mktemp("team") / "home"
    async with running_team(home, scenario(attacker.url, TASKS, PROJECTS), sandbox="bwrap", provider_key=CANARY,
                            gateway_settings={"direct_openai": False}) as live:
        created = [await live.plane.engine.create_project(title) for title in ("Spent project", "Open project")]
        assert [p.id for p in created] == [PROJECTS["spent"], PROJECTS["open"]]
        await live.plane.provisioner.create_worker(WORKER, role="tester")
        yield live


@pytestmark_bwrap
@pytest.mark.asyncio(loop_scope="module")
async def test_a_worker_cannot_smuggle_provider_parameters(team, attacker):
    plane = team.plane
    room = await plane.chat.worker_room(WORKER)
    await wait_until(lambda: room in team.admin.room_names, what="the admin in the worker's room")
    attacker.requests.clear()
    await team.admin.send(room, f"@{WORKER} please smuggle", mention=team.user_id(WORKER))
    await team.wait_for_message("smuggled", sender=WORKER, timeout=120)
    seen = results(team, "smuggle_out")
    expected = {name: param for name, _extra, param in smuggles(attacker.url)}
    assert set(seen) == {*expected, "control: plain call"}, seen
    assert seen["control: plain call"]["status"] == 200  # the path works: the provider got the canary key
    for name, param in expected.items():
        row = seen[name]
        assert (row["status"], row["param"]) == (400, param), row
        assert row["message"].startswith(f"unsupported parameter {param!r}"), row
    assert attacker.requests == [], f"the attacker's server got: {attacker.text()[:2000]}"
    assert CANARY not in team.model.engine.stats()["agents"][WORKER]["variables"]["smuggle_out"]
    assert not any(CANARY in m.body for m in team.admin.messages)


@pytestmark_bwrap
@pytest.mark.asyncio(loop_scope="module")
async def test_a_worker_cannot_escape_a_spent_project_budget(team):
    plane, projects = team.plane, PROJECTS
    await plane.provisioner.create_worker(OTHER, role="bystander")
    await plane.gateway.set_budget(project=projects["spent"], usd=0.0)  # spent: $0 of $0
    marker = max((row["id"] for row in await plane.gateway.ledger(1)), default=0)

    # The worker is on the spent project (its task there waits for the other worker's), and works
    # on a task of the open project: that turn attacks.
    await plane.engine.propose_plan(projects["spent"], [
        {"id": TASKS["theirs"], "title": "their work", "assignee": OTHER},
        {"id": TASKS["spent"], "title": "spent work", "assignee": WORKER, "depends_on": [TASKS["theirs"]]}])
    await plane.engine.confirm_plan(projects["spent"])
    await team.wait_for_message("budget exhausted for project", sender=OTHER, timeout=60)  # its turn: refused
    await plane.engine.propose_plan(projects["open"], [{"id": TASKS["mine"], "title": BUDGET_TITLE, "assignee": WORKER}])
    await plane.engine.confirm_plan(projects["open"])
    assert {t.id: t.state.value for t in plane.state.tasks(assignee=WORKER)} == {
        TASKS["spent"]: "pending", TASKS["mine"]: "in_progress"}
    await team.wait_for_message("budgeted", sender=WORKER, timeout=120)

    seen = results(team, "budget_out")
    refusal = f"budget exhausted for project {projects['spent']!r}"
    legit = "legit: its open task, forged project"
    for name, row in seen.items():
        if name != legit:
            assert row["status"] == 429 and refusal in row["message"], (name, row)
    assert seen[legit]["status"] == 200, seen[legit]
    assert len(seen) == 8

    rows = [row for row in await plane.gateway.ledger(500) if row["id"] > marker and row["consumer"] == WORKER]
    assert rows and all(row["cost_usd"] == 0 for row in rows if row["status"] != 200)
    charged = {(row["task"], row["project"]) for row in rows if row["status"] == 200}
    assert charged == {(TASKS["mine"], projects["open"])}, charged  # its turn's calls and the legit one
    assert not [row for row in rows if row["task"] in (TASKS["theirs"], "task-999")
                or row["project"] not in (None, projects["spent"], projects["open"])]
    budgets = {(b["scope"], b["name"]): b for b in await plane.gateway.list_budgets()}
    assert budgets[("project", projects["spent"])]["spent_usd"] == 0


# --------------------------------------------------------------------------- the gateway alone


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, attacker) -> Iterator[dict[str, Any]]:
    """Two real gateways in front of the scripted model (which requires the canary key): one sends
    everything through litellm, one calls OpenAI-compatible providers directly. Aliases: ``cheap``
    (with its own ``api_base``), ``hosted`` (a hosted provider: no ``api_base``, litellm only) and
    ``recorded`` (a provider that records what it gets)."""
    provider = Recorder()
    with running_scripted_model(api_key=CANARY) as model:
        models: dict[str, Any] = {"cheap": scripted_aliases(model.base_url)["cheap"],
                                  "recorded": {"model": "openai/recorded", "api_base": provider.url,
                                               "api_key_secret": "scripted_api_key", "input_cost_per_mtok": 1,
                                               "output_cost_per_mtok": 1}}
        hosted = {"hosted": {"model": "anthropic/claude-3-5-haiku-20241022", "api_key_secret": "scripted_api_key"}}
        secrets = {"scripted_api_key": CANARY}
        with running_gateway(tmp_path_factory.mktemp("litellm"), models={**models, **hosted}, secrets_values=secrets,
                             settings={"direct_openai": False, "upstream_timeout_seconds": 5}) as via_litellm, \
                running_gateway(tmp_path_factory.mktemp("direct"), models=models, secrets_values=secrets,
                                settings={"upstream_timeout_seconds": 5}) as direct:
            yield {"litellm": via_litellm, "direct": direct, "model": model, "provider": provider}
    provider.close()


ROUTES = [("litellm", "cheap"), ("litellm", "hosted"), ("direct", "cheap")]


def _post(gw: Any, token: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {token}", **(headers or {})})


def test_controls_the_recorder_records_and_a_plain_call_reaches_the_provider(gateways, attacker):
    """Positive controls: the attacker's server does record what reaches it, and the same call
    without smuggled fields is answered by the provider (which needs the canary key)."""
    httpx.get(f"{attacker.url}/probe", timeout=10)
    assert [r["path"] for r in attacker.requests] == ["/v1/probe"]
    attacker.requests.clear()
    for kind in ("litellm", "direct"):
        gw = gateways[kind]
        response = _post(gw, gw.mint().token, {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200, response.text
        assert CANARY not in response.text
    assert attacker.requests == []


@pytest.mark.parametrize(("kind", "alias"), ROUTES, ids=[f"{k}-{a}" for k, a in ROUTES])
@pytest.mark.parametrize("case", [c[0] for c in smuggles("http://x")])
def test_a_smuggled_parameter_is_refused_before_any_upstream_contact(gateways, attacker, kind, alias, case):
    gw, model = gateways[kind], gateways["model"]
    _name, extra, param = next(c for c in smuggles(attacker.url) if c[0] == case)
    me = gw.mint()
    hits = model.hits()
    response = _post(gw, me.token, {"model": alias, "messages": [{"role": "user", "content": "hi"}], **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert error["message"].startswith(f"unsupported parameter {param!r}") and "\n" not in error["message"]
    assert attacker.requests == [], f"the attacker's server got: {attacker.text()[:2000]}"
    assert model.hits() == hits  # no upstream contact at all
    assert CANARY not in response.text and CANARY not in json.dumps(dict(response.headers))
    assert [r["status"] for r in gw.ledger() if r["consumer"] == me.name] == [400]


@pytest.mark.parametrize(("extra", "param"), [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 7}, "temperature"),
    ({"max_tokens": True}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"tools": [{"type": "mcp", "server_url": "http://127.0.0.1:1/"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "f"}, "server_url": "http://127.0.0.1:1/"}]},
     "tools[0].server_url"),
    ({"tool_choice": {"type": "function", "function": {"name": "f", "api_base": "http://127.0.0.1:1/"}}},
     "tool_choice.function.api_base"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s"}, "api_key": "k"}}, "response_format.api_key"),
    ({"logit_bias": {"50256": 1000}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "hi", "api_base": "http://127.0.0.1:1/"}]}, "messages[0].api_base"),
    ({"messages": [{"role": "root", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}]},
     "messages[0].content[0].image_url.url"),
])
def test_parameter_values_are_type_checked(gateways, extra, param):
    """Allowed parameters with values of the wrong type or shape (including a URL a provider or
    litellm would fetch from inside the network) are refused too, naming the offending path."""
    gw, model = gateways["litellm"], gateways["model"]
    hits = model.hits()
    response = _post(gw, gw.mint().token, {"model": "cheap", "messages": [{"role": "user", "content": "hi"}], **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
    assert model.hits() == hits


ALLOWED = {"tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
           "tool_choice": "auto", "parallel_tool_calls": True, "temperature": 0.5, "top_p": 0.9, "max_tokens": 50,
           "stop": ["\n\n"], "n": 1, "presence_penalty": 0.1, "frequency_penalty": 0.1, "seed": 7,
           "response_format": {"type": "text"}, "logprobs": True, "top_logprobs": 2, "logit_bias": {"50256": -100},
           "user": "somebody-else"}


@pytest.mark.parametrize("kind", ["direct", "litellm"])
def test_every_allowed_parameter_reaches_the_provider_and_nothing_else(gateways, kind):
    gw, provider = gateways[kind], gateways["provider"]
    provider.requests.clear()
    me = gw.mint()
    response = _post(gw, me.token, {"model": "recorded", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}], **ALLOWED})
    assert response.status_code == 200, response.text
    (seen,) = provider.requests
    body = json.loads(seen["body"])
    assert seen["headers"]["authorization"] == f"Bearer {CANARY}"  # the real key goes to the alias's provider
    assert "somebody-else" not in seen["body"]  # `user` is the gateway's: the consumer's name
    expected = set(ALLOWED) | {"model", "messages"}
    if kind == "direct":
        assert set(body) == expected and body["user"] == me.name
    else:  # litellm passes `user` on only where it knows the provider takes it; the header always
        assert seen["headers"]["x-hiclaw-consumer"] == me.name and body.get("user", me.name) == me.name
        assert set(body) == expected - {"user"}


def test_a_managed_consumer_is_tagged_from_its_assignments_never_from_its_headers(gateways):
    """The gateway's side of attack 8, over HTTP: once the control plane has set a consumer's
    assignments, its headers only pick one of its own tasks; anything else counts toward every
    project it is on. A consumer nobody manages (a token minted by hand) keeps its own tags."""
    gw = gateways["direct"]
    me, hand_minted = gw.mint(), gw.mint()
    gw.thread.run(gw.gateway.set_assignments(me.name, {"t-spent": "p-spent", "t-open": "p-open", "t-adhoc": None}))
    gw.set_budget(project="p-spent", usd=0.0)
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"X-Hiclaw-Project": "p-open"}, {"X-Hiclaw-Task": "t-someone-elses"},
                    {"X-Hiclaw-Task": "t-spent", "X-Hiclaw-Project": "p-open"}):
        refused = _post(gw, me.token, body, headers)
        assert refused.status_code == 429, (headers, refused.text)
        assert "budget exhausted for project 'p-spent'" in refused.json()["error"]["message"]
    for headers, expected in [({"X-Hiclaw-Task": "t-open", "X-Hiclaw-Project": "p-spent"}, ("t-open", "p-open")),
                              ({"X-Hiclaw-Task": "t-adhoc", "X-Hiclaw-Project": "p-x"}, ("t-adhoc", None))]:
        assert _post(gw, me.token, body, headers).status_code == 200
        row = gw.ledger(1)[0]
        assert (row["consumer"], row["task"], row["project"]) == (me.name, *expected)
    rows = [r for r in gw.ledger() if r["consumer"] == me.name]
    assert {r["project"] for r in rows} <= {"p-spent", "p-open", None} and not [r for r in rows if r["task"] == "t-someone-elses"]
    # A hand-minted token tags as it likes (it is the admin's own script), as before.
    assert _post(gw, hand_minted.token, body, {"X-Hiclaw-Task": "t-mine", "X-Hiclaw-Project": "p-open"}).status_code == 200
    assert (gw.ledger(1)[0]["task"], gw.ledger(1)[0]["project"]) == ("t-mine", "p-open")
    # On two projects with budget left, an untagged call is charged to the one with the least left.
    gw.set_budget(project="p-roomy", usd=10.0)
    gw.set_budget(project="p-tight", usd=1.0)
    gw.thread.run(gw.gateway.set_assignments(me.name, {"t-1": "p-roomy", "t-2": "p-tight"}))
    assert _post(gw, me.token, body).status_code == 200
    assert (gw.ledger(1)[0]["task"], gw.ledger(1)[0]["project"]) == (None, "p-tight")
    # Its work done, the worker's untagged calls count toward no project any more.
    gw.thread.run(gw.gateway.set_assignments(me.name, {}))
    assert _post(gw, me.token, body).status_code == 200
    assert gw.ledger(1)[0]["project"] is None
