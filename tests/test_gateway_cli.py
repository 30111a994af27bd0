"""Acceptance, as a new user would do it: start the scripted server and the gateway with the
``hiclaw`` command, mint a token, call with the official ``openai`` SDK, read ``hiclaw usage``,
then revoke / restrict / exhaust — and check that a canary provider key shows up nowhere.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess

import httpx
import openai
import pytest

from hiclaw.testing import clean_env
from hiclaw.testing.gateway import start_listening_process as _start

CANARY = "sk-canary-cli-3f9a2c7e1b4d6f8a0c2e4a6b"
SCENARIO = """\
name: acceptance
agents:
  alice:
    turns:
      - when: {contains: "notes"}
        tool_calls:
          - name: read_file
            arguments: {path: notes.md}
      - when: {tool_result: read_file}
        text: "The notes say: ship it."
    default: {text: "alice here"}
  "*":
    default: {text: "hello {{agent}}"}
"""


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    return proc.wait(timeout=20)


@pytest.fixture
def user_env(tmp_path, hiclaw_cli):
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(drop=("OPENAI",))
    env.update(HICLAW_HOME=str(home), CANARY_KEY=CANARY)
    return home, env


def test_a_new_user_runs_the_gateway_end_to_end(tmp_path, user_env, hiclaw_cli):
    home, env = user_env
    seen: list[str] = []

    def hiclaw(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(hiclaw_cli), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
        seen.extend([result.stdout, result.stderr])
        assert (result.returncode == 0) == ok, result.stderr
        return result

    scenario = tmp_path / "acceptance.yaml"
    scenario.write_text(SCENARIO)
    scripted, scripted_url = _start([str(hiclaw_cli), "model", "serve-scripted", str(scenario), "--port", "0",
                                     "--api-key-env", "CANARY_KEY"], env, tmp_path / "scripted.log")
    try:
        (home / "config.toml").write_text(f"""
[models.smart]
model = "openai/scripted-smart"
api_base = "{scripted_url}"
api_key_secret = "provider_key"
input_cost_per_mtok = 3.0
output_cost_per_mtok = 15.0
[models.fast]
model = "openai/scripted-fast"
api_base = "{scripted_url}"
api_key_secret = "provider_key"
input_cost_per_mtok = 0.5
output_cost_per_mtok = 1.5
""")
        (home / "secrets.toml").write_text(f'provider_key = "{CANARY}"\n')
        (home / "secrets.toml").chmod(0o600)
        gateway, base_url = _start([str(hiclaw_cli), "gateway", "serve", "--port", "0", "--log-level", "debug"], env, tmp_path / "gateway.log")
        try:
            token = hiclaw("gateway", "token", "mint", "alice", "--models", "smart", "--budget", "1").stdout.strip()
            assert token.startswith("hc-") and len(token) >= 43

            def record(response: httpx.Response) -> None:
                response.read()
                seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

            http = httpx.Client(event_hooks={"response": [record]}, timeout=30)
            client = openai.OpenAI(base_url=base_url, api_key=token, http_client=http, max_retries=0)
            task = {"X-Hiclaw-Task": "task-042"}
            tools = [{"type": "function", "function": {"name": "read_file", "parameters": {
                "type": "object", "properties": {"path": {"type": "string"}}}}}]
            messages = [{"role": "user", "content": "summarise my notes"}]
            first = client.chat.completions.create(model="smart", messages=messages, tools=tools, extra_headers=task)
            call = first.choices[0].message.tool_calls[0]
            assert call.function.name == "read_file" and json.loads(call.function.arguments) == {"path": "notes.md"}
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "ship it"}]
            stream = client.chat.completions.create(model="smart", messages=messages, tools=tools, stream=True,
                                                    extra_headers=task)
            chunks = list(stream)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The notes say: ship it."
            assert chunks[-1].usage.total_tokens > 0

            rows = json.loads(hiclaw("usage", "--by", "consumer,task", "--json").stdout)
            (row,) = [r for r in rows if r["consumer"] == "alice" and r["task"] == "task-042"]
            tokens_in = first.usage.prompt_tokens + chunks[-1].usage.prompt_tokens
            tokens_out = first.usage.completion_tokens + chunks[-1].usage.completion_tokens
            assert (row["calls"], row["prompt_tokens"], row["completion_tokens"]) == (2, tokens_in, tokens_out)
            assert row["cost_usd"] == pytest.approx(tokens_in * 3e-6 + tokens_out * 15e-6)
            assert "alice" in hiclaw("usage").stdout  # the table view

            def hits() -> int:
                return httpx.get(scripted_url.removesuffix("/v1") + "/_scripted/stats").json()["requests"]

            upstream_hits = hits()
            assert upstream_hits == 2
            listed = json.loads(hiclaw("gateway", "token", "list", "--json").stdout)
            assert listed[0]["name"] == "alice" and listed[0]["models"] == ["smart"] and listed[0]["budget_usd"] == 1
            assert listed[0]["spent_usd"] == pytest.approx(row["cost_usd"]) and listed[0]["revoked"] is False

            hiclaw("gateway", "token", "revoke", "alice")
            with pytest.raises(openai.AuthenticationError) as revoked:
                client.chat.completions.create(model="smart", messages=messages[:1])
            assert revoked.value.body["code"] == "token_revoked"

            bob = openai.OpenAI(base_url=base_url, http_client=http, max_retries=0,
                                api_key=hiclaw("gateway", "token", "mint", "bob", "--models", "fast").stdout.strip())
            with pytest.raises(openai.PermissionDeniedError):
                bob.chat.completions.create(model="smart", messages=messages[:1])
            carol = openai.OpenAI(base_url=base_url, http_client=http, max_retries=0,
                                  api_key=hiclaw("gateway", "token", "mint", "carol", "--budget", "0.001").stdout.strip())
            with pytest.raises(openai.RateLimitError) as over:
                carol.chat.completions.create(model="smart", messages=messages[:1])
            assert over.value.body["code"] == "budget_exceeded"
            assert hits() == upstream_hits  # none of the refusals reached the provider

            assert "unknown model alias" in hiclaw("gateway", "token", "mint", "dave", "--models", "huge", ok=False).stderr
            assert hiclaw("gateway", "token", "revoke", "nobody", ok=False).stderr.startswith("error: no consumer named")
            http.close()
        finally:
            assert _stop(gateway) == 0
    finally:
        assert _stop(scripted) == 0

    logs = (tmp_path / "gateway.log").read_text()
    assert "alice smart openai/scripted-smart 200" in logs  # the per-call log line
    with sqlite3.connect(home / "gateway" / "gateway.db") as db:
        dump = "\n".join(db.iterdump())
    for text in [*seen, logs, (tmp_path / "scripted.log").read_text(), dump]:
        assert CANARY not in text
    assert token not in dump  # tokens are stored hashed
