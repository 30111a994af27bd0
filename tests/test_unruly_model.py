"""The unruly model: every misbehaviour as real clients (httpx, the official openai SDK) see it,
streaming and not; the seeded mix, the schedule and max_consecutive; the base scenario played in
between; through the real embedded gateway; the CLI; the config's errors."""
from __future__ import annotations

import json
import re
import subprocess

import httpx
import openai
import pytest
import yaml

from hiclaw.errors import InvalidInputError
from hiclaw.scripted.unruly import KINDS, load_unruly_config, parse_unruly_config
from hiclaw.testing import clean_env
from hiclaw.testing.gateway import running_gateway, start_listening_process
from hiclaw.testing.unruly import running_unruly_model

REPORT = {"task_id": "task-007", "status": "SUCCESS", "summary": "wc.py written", "result_markdown": "Wrote `wc.py`."}
TOOLS = [
    {"type": "function", "function": {"name": "report_result", "parameters": {
        "type": "object", "required": ["task_id", "status", "summary"],
        "properties": {"task_id": {"type": "string"}, "status": {"type": "string"}, "summary": {"type": "string"},
                       "result_markdown": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "write_file", "parameters": {
        "type": "object", "required": ["path", "content"],
        "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}},
]
BASE = {"name": "reporter", "agents": {"*": {"default": {"tool_calls": [{"name": "report_result", "arguments": REPORT}]}}}}
WRITE = {"id": "call_prev_1", "type": "function",
         "function": {"name": "write_file", "arguments": json.dumps({"path": "wc.py", "content": "print(1)\n"})}}
HISTORY = [{"role": "user", "content": "@sam please do task-007: write wc.py"},
           {"role": "assistant", "content": None, "tool_calls": [WRITE]},
           {"role": "tool", "tool_call_id": "call_prev_1", "content": "wrote wc.py (9 bytes)"}]


def always(kind, **params):
    """A schedule that applies ``kind`` to every call of the agent."""
    return {"schedule": {"1-100000": {"kind": kind, **params}}}


AGENTS = {
    "prose": always("text_instead_of_tools"), "planner": always("text_instead_of_tools", style="plan"),
    "templated": always("text_instead_of_tools", text="Finished {{task_id}} with {{tool}}: {{summary}}"),
    "hermes": always("tools_as_text"), "fence": always("tools_as_text", style="fence"),
    "llama": always("tools_as_text", style="llama", preamble="Calling the tool now."),
    "badjson": always("malformed_arguments", mode="invalid_json"),
    "badtypes": always("malformed_arguments", mode="wrong_types"),
    "missing": always("malformed_arguments", mode="missing_required"),
    "unknown": always("unknown_tool"), "named": always("unknown_tool", name="finish_task"),
    "looper": always("loop"), "asker": always("question"), "manager": always("question"),
    "refuser": always("refusal"), "refuser_field": always("refusal", field=True),
    "rambler": always("long_output", chars=50_000),
    "limited": always("http_429", retry_after=2), "fractional": always("http_429", retry_after=0.25),
    "quota": always("http_429", code="insufficient_quota"),
    "broken": always("http_500"), "proxied": always("http_502"), "busy": always("http_503", retry_after=1),
    "hanger": always("timeout", seconds=120), "closer": always("timeout", mode="close"),
    "staller": always("timeout", mode="stall", seconds=120), "cutter": always("timeout", mode="cut"),
    "overflow": always("context_length"), "llamacpp": always("context_length", style="llama_cpp"),
    "vllm": always("context_length", style="vllm"),
    "windowed": {"kinds": {"context_length": {"budget": 300}}},
    "silent": always("empty"), "void": always("empty", null=True),
}


@pytest.fixture(scope="module")
def model():
    with running_unruly_model(BASE, {"name": "every-kind", "agents": AGENTS}) as served:
        yield served


def sdk(model, **options):
    return openai.OpenAI(base_url=model.base_url, api_key="sk-unruly", max_retries=0, **options)


def ask(model, agent, messages=None, *, compare=True, **extra):
    """The same call non-streamed and streamed through the openai SDK; both must agree (unless the
    kind picks a variant per call: ``compare=False``)."""
    client = sdk(model)
    kwargs = {"model": "scripted", "messages": messages or HISTORY, "tools": TOOLS, "user": agent, **extra}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    message = whole.choices[0].message
    whole.streamed = (content, [(c["name"], c["arguments"]) for c in calls.values()])
    if not compare:
        return whole
    assert content == (message.content or "")
    assert whole.streamed[1] == [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    return whole


def http_error(model, agent, *, stream=False, messages=None, **extra):
    body = {"model": "scripted", "messages": messages or HISTORY, "user": agent, "stream": stream, **extra}
    with httpx.Client(base_url=model.base_url, timeout=10) as http:
        return http.post("/chat/completions", json=body)


# --------------------------------------------------------------------------- content misbehaviours


def test_text_instead_of_tools_says_in_prose_what_the_call_would_have_done(model):
    done = ask(model, "prose")
    message = done.choices[0].message
    assert message.tool_calls is None and done.choices[0].finish_reason == "stop"
    assert message.content == ("I have finished the task task-007, here is the result: wc.py written\n\n"
                               "Wrote `wc.py`.")
    planned = ask(model, "planner").choices[0].message.content
    assert planned.startswith("Next, I will use report_result with these arguments: {")
    assert ask(model, "templated").choices[0].message.content == "Finished task-007 with report_result: wc.py written"


def test_tools_as_text_in_hermes_fence_and_llama_styles(model):
    hermes = ask(model, "hermes")
    assert hermes.choices[0].message.tool_calls is None and hermes.choices[0].finish_reason == "stop"
    found = re.fullmatch(r"<tool_call>\n(.*)\n</tool_call>", hermes.choices[0].message.content, flags=re.S)
    assert found and json.loads(found.group(1)) == {"name": "report_result", "arguments": REPORT}
    fence = re.fullmatch(r"```json\n(.*)\n```", ask(model, "fence").choices[0].message.content, flags=re.S)
    assert fence and json.loads(fence.group(1)) == {"name": "report_result", "arguments": REPORT}
    preamble, bare = ask(model, "llama").choices[0].message.content.split("\n\n")
    assert preamble == "Calling the tool now." and json.loads(bare) == {"name": "report_result", "parameters": REPORT}


def test_malformed_arguments_invalid_json_wrong_types_and_missing_fields(model):
    variants = set()
    for _ in range(6):  # each call picks one way of breaking the JSON, from its own seed
        reply = ask(model, "badjson", compare=False)
        call = reply.choices[0].message.tool_calls[0]
        assert call.function.name == "report_result" and call.id.startswith("call_unruly_badjson_")
        for arguments in (call.function.arguments, reply.streamed[1][0][1]):
            with pytest.raises(json.JSONDecodeError):
                json.loads(arguments)
        variants.update(e["detail"]["variant"] for e in model.log("badjson")[-2:])
    assert variants == {"truncated", "single_quotes", "trailing_comma"}
    typed = json.loads(ask(model, "badtypes").choices[0].message.tool_calls[0].function.arguments)
    assert typed == {**REPORT, "task_id": ["task-007"]}  # the first required field, as a list
    missing = json.loads(ask(model, "missing").choices[0].message.tool_calls[0].function.arguments)
    assert "task_id" not in missing and missing["summary"] == "wc.py written"
    assert model.log("missing")[-1]["detail"] == {"mode": "missing_required", "tool": "report_result", "field": "task_id"}


def test_unknown_tool_calls_a_tool_that_was_not_offered(model):
    call = ask(model, "unknown").choices[0].message.tool_calls[0]
    assert call.function.name == "report_results" and json.loads(call.function.arguments) == REPORT
    assert ask(model, "named").choices[0].message.tool_calls[0].function.name == "finish_task"
    offered = {t["function"]["name"] for t in TOOLS}
    assert not {e["detail"]["name"] for e in model.log("unknown")} & offered


def test_loop_repeats_the_previous_call_again_and_again(model):
    first = ask(model, "looper").choices[0].message
    messages = [*HISTORY, first.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "wrote wc.py (9 bytes)"}]
    second = ask(model, "looper", messages=messages).choices[0].message
    for message in (first, second):
        assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [
            ("write_file", WRITE["function"]["arguments"])]
    assert first.tool_calls[0].id != second.tool_calls[0].id
    # Without an earlier tool call there is nothing to repeat: the call is clean (and says why).
    fresh = ask(model, "looper", messages=[{"role": "user", "content": "start"}]).choices[0].message
    assert fresh.tool_calls[0].function.name == "report_result"
    assert model.log("looper")[-1]["reason"] == "skipped" and model.log("looper")[-1]["detail"]["drawn"] == "loop"


def test_question_mentions_the_manager_or_the_admin(model):
    text = ask(model, "asker").choices[0].message.content
    assert text.startswith("@manager Before I go on with task-007:") and text.count("?") == 1
    assert ask(model, "manager").choices[0].message.content.startswith("@admin ")


def test_refusal_as_content_or_in_the_refusal_field(model):
    assert ask(model, "refuser").choices[0].message.content == "I'm sorry, but I can't help with that request."
    message = ask(model, "refuser_field").choices[0].message
    assert message.content is None and message.refusal == "I'm sorry, but I can't help with that request."
    stream = sdk(model).chat.completions.create(model="m", messages=HISTORY, user="refuser_field", stream=True)
    assert "".join(c.choices[0].delta.refusal or "" for c in stream if c.choices) == message.refusal


def test_long_output_is_long_and_cut_by_max_tokens(model):
    reply = ask(model, "rambler")
    assert len(reply.choices[0].message.content) == 50_000 and reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.tool_calls is None and reply.usage.completion_tokens == 12_500
    capped = ask(model, "rambler", max_tokens=100)
    assert len(capped.choices[0].message.content) == 400 and capped.choices[0].finish_reason == "length"


def test_empty_reply_has_no_content_and_no_tool_calls(model):
    for agent, content in (("silent", ""), ("void", None)):
        reply = ask(model, agent)
        assert reply.choices[0].message.content == content and reply.choices[0].message.tool_calls is None
        assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 0


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("stream", [False, True])
def test_http_429_has_retry_after_and_openai_rate_limit_body(model, stream):
    response = http_error(model, "limited", stream=stream)
    assert response.status_code == 429 and response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "2" and response.headers["retry-after-ms"] == "2000"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests" and error["param"] is None
    assert error["message"].startswith("Rate limit reached for scripted in organization") and "try again in 2s" in error["message"]
    assert http_error(model, "fractional").headers["retry-after"] == "1"  # whole seconds, rounded up
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(model).chat.completions.create(model="m", messages=HISTORY, user="limited", stream=stream)
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "2"


def test_http_429_insufficient_quota_has_no_retry_after(model):
    response = http_error(model, "quota")
    assert response.status_code == 429 and "retry-after" not in response.headers
    assert response.json()["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize("stream", [False, True])
def test_server_errors_500_502_503(model, stream):
    broken = http_error(model, "broken", stream=stream)
    assert broken.status_code == 500 and broken.json() == {"error": {
        "message": "The server had an error while processing your request. Sorry about that!", "type": "server_error",
        "param": None, "code": None}}
    proxied = http_error(model, "proxied", stream=stream)
    assert proxied.status_code == 502 and proxied.headers["content-type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in proxied.text
    busy = http_error(model, "busy", stream=stream)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["message"].startswith("That model is currently overloaded")
    client = sdk(model)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=HISTORY, user="broken", stream=stream)
    assert caught.value.status_code == 500
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=HISTORY, user="proxied", stream=stream)
    assert caught.value.status_code == 502


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_in_openai_llama_cpp_and_vllm_shapes(model, stream):
    response = http_error(model, "overflow", stream=stream)
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert re.fullmatch(r"This model's maximum context length is \d+ tokens\. However, your messages resulted in \d+ "
                        r"tokens\. Please reduce the length of the messages\.", error["message"])
    with_max = http_error(model, "overflow", stream=stream, max_tokens=500).json()["error"]["message"]
    assert re.search(r"you requested \d+ tokens \(\d+ in the messages, 500 in the completion\)", with_max)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(model).chat.completions.create(model="m", messages=HISTORY, user="overflow", stream=stream)
    assert caught.value.code == "context_length_exceeded"
    llama = http_error(model, "llamacpp", stream=stream).json()["error"]
    assert llama["type"] == "exceed_context_size_error" and llama["code"] == 400 and llama["n_ctx"] < llama["n_prompt_tokens"]
    assert "exceeds the available context size" in llama["message"]
    vllm = http_error(model, "vllm", stream=stream).json()
    assert vllm["object"] == "error" and vllm["type"] == "BadRequestError" and vllm["code"] == 400
    assert vllm["message"].startswith("This model's maximum context length is")


def test_context_length_budget_fires_only_when_the_prompt_is_too_long(model):
    small = ask(model, "windowed", messages=[{"role": "user", "content": "short"}])
    assert small.choices[0].message.tool_calls[0].function.name == "report_result"
    big = http_error(model, "windowed", messages=[{"role": "user", "content": "x" * 4000}])
    assert big.status_code == 400 and "maximum context length is 300 tokens" in big.json()["error"]["message"]
    entry = model.log("windowed")[-1]
    assert entry["reason"] == "budget" and entry["detail"]["prompt_tokens"] > 300


# --------------------------------------------------------------------------- timeouts and dropped connections


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_hang_outlasts_the_client_timeout(model, stream):
    with pytest.raises(httpx.ReadTimeout):
        http_error_with_timeout(model, "hanger", stream=stream)
    with pytest.raises(openai.APITimeoutError):
        sdk(model, timeout=CLIENT_TIMEOUT).chat.completions.create(model="m", messages=HISTORY, user="hanger",
                                                                   stream=stream)
    assert model.log("hanger")[-1]["status"] is None


CLIENT_TIMEOUT = 1.0  # what a client waits for a read; the hung and stalled calls outlast it


def http_error_with_timeout(model, agent, *, stream, timeout=CLIENT_TIMEOUT):
    body = {"model": "m", "messages": HISTORY, "user": agent, "stream": stream}
    with httpx.Client(base_url=model.base_url, timeout=timeout) as http:
        return http.post("/chat/completions", json=body).read()


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_close_drops_the_connection_without_a_response(model, stream):
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        http_error_with_timeout(model, "closer", stream=stream, timeout=30)
    with pytest.raises(openai.APIConnectionError):
        sdk(model).chat.completions.create(model="m", messages=HISTORY, user="closer", stream=stream)


def test_timeout_stall_starts_the_reply_then_goes_quiet(model):
    body = {"model": "m", "messages": HISTORY, "user": "staller", "stream": True}
    with httpx.Client(base_url=model.base_url, timeout=CLIENT_TIMEOUT) as http, \
            http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = []
        with pytest.raises(httpx.ReadTimeout):
            for line in response.iter_lines():
                lines.append(line)
    assert lines[0].startswith("data: {") and "data: [DONE]" not in lines
    with pytest.raises(httpx.ReadTimeout):
        http_error_with_timeout(model, "staller", stream=False)


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_cut_drops_the_connection_mid_reply(model, stream):
    with pytest.raises(httpx.RemoteProtocolError):
        http_error_with_timeout(model, "cutter", stream=stream, timeout=30)
    client = sdk(model)
    if stream:  # the stream starts, then breaks off
        with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
            list(client.chat.completions.create(model="m", messages=HISTORY, user="cutter", stream=True))
    else:
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="m", messages=HISTORY, user="cutter")


# --------------------------------------------------------------------------- mix, schedule, max_consecutive

MIX = {"agents": {
    "sam": {"kinds": {"text_instead_of_tools": 0.3, "http_429": {"rate": 0.1, "retry_after": 0}}, "max_consecutive": 100},
    "*": {"kinds": {"http_503": 0.2, "empty": 0.05}, "max_consecutive": 100},
}}


def sequence(model, agent, calls, *, other=None):
    with httpx.Client(base_url=model.base_url, timeout=10) as http:
        for _ in range(calls):
            http.post("/chat/completions", json={"model": "m", "messages": HISTORY, "user": agent})
            if other:
                http.post("/chat/completions", json={"model": "m", "messages": HISTORY, "user": other})
    return model.sequence(agent)


def test_the_seeded_mix_is_reproducible_and_independent_of_interleaving():
    with running_unruly_model(BASE, MIX, seed=5) as first, running_unruly_model(BASE, MIX, seed=5) as second, \
            running_unruly_model(BASE, MIX, seed=6) as third:
        alone = sequence(first, "sam", 60)
        interleaved = sequence(second, "sam", 60, other="alex")
        assert alone == interleaved and len(alone) == 60
        assert sequence(third, "sam", 60) != alone
        second.reset()
        assert sequence(second, "sam", 60) == alone  # a reset starts the same sequence again


def test_the_mix_respects_each_agents_rates():
    with running_unruly_model(BASE, MIX, seed=11) as model:
        sam = sequence(model, "sam", 1000, other="alex")
        alex = model.sequence("alex")
    assert abs(sam.count("text_instead_of_tools") / 1000 - 0.3) < 0.05
    assert abs(sam.count("http_429") / 1000 - 0.1) < 0.03
    assert set(sam) == {None, "text_instead_of_tools", "http_429"}
    assert abs(alex.count("http_503") / 1000 - 0.2) < 0.04 and abs(alex.count("empty") / 1000 - 0.05) < 0.02
    assert set(alex) == {None, "http_503", "empty"}


def test_max_consecutive_ends_every_bad_streak():
    mix = {"max_consecutive": 2, "agents": {"*": {"kinds": {"http_500": 1.0}}, "looper": {
        "kinds": {"loop": {"rate": 1.0, "streak": 10}}, "max_consecutive": 3}}}
    with running_unruly_model(BASE, mix) as model:
        assert sequence(model, "bob", 9) == ["http_500", "http_500", None] * 3
        assert [e["reason"] for e in model.log("bob")][:3] == ["random", "random", "max_consecutive"]
        looped = sequence(model, "looper", 8)
        stats = model.stats()
    assert looped == ["loop", "loop", "loop", None] * 2
    assert stats["agents"]["bob"]["longest_streak"] == 2 and stats["agents"]["looper"]["longest_streak"] == 3
    assert stats["agents"]["bob"] == {"calls": 9, "clean": 3, "misbehaved": 6, "kinds": {"http_500": 6},
                                      "consecutive": 0, "longest_streak": 2}


def test_a_streak_repeats_the_kind_that_started_it():
    mix = {"seed": 3, "agents": {"*": {"kinds": {"http_503": {"rate": 0.2, "streak": 3}}, "max_consecutive": 100}}}
    with running_unruly_model(BASE, mix) as model:
        calls = sequence(model, "zoe", 200)
        reasons = "".join({"random": "R", "streak": "s", "clean": "."}[e["reason"]] for e in model.log("zoe"))
    assert re.fullmatch(r"(?:\.|Rss)+", reasons) and reasons.count("R") >= 10  # every draw brings two more
    assert [kind is not None for kind in calls] == [r != "." for r in reasons]


def test_the_schedule_names_exact_calls():
    mix = {"agents": {"alex": {"schedule": {2: "http_429", "5": {"kind": "http_429", "retry_after": 3}, "7-8": "loop"}}}}
    with running_unruly_model(BASE, mix) as model, httpx.Client(base_url=model.base_url, timeout=10) as http:
        statuses = []
        for _ in range(9):
            response = http.post("/chat/completions", json={"model": "m", "messages": HISTORY, "user": "alex"})
            statuses.append((response.status_code, response.headers.get("retry-after")))
        assert model.sequence("alex") == [None, "http_429", None, None, "http_429", None, "loop", "loop", None]
        assert statuses[1] == (429, "1") and statuses[4] == (429, "3") and statuses[0] == (200, None)
        assert {e["reason"] for e in model.log("alex") if e["kind"]} == {"schedule"}
        assert model.sequence("nobody") == [] and model.calls() == 9


# --------------------------------------------------------------------------- the base scenario in between

FLOW = {"name": "flow", "agents": {"manager": {"turns": [
    {"when": {"contains": "build"}, "tool_calls": [{"name": "create_worker", "arguments": {"name": "alice"}}]},
    {"when": {"tool_result": "create_worker"}, "tool_calls": [{"name": "create_project", "arguments": {"title": "WC"}}]},
    {"when": {"tool_result": "create_project"}, "text": "All set."},
]}}}


def _step(http, messages):
    reply = http.post("/chat/completions", json={"model": "m", "messages": messages, "user": "manager"})
    return reply.status_code, (reply.json()["choices"][0]["message"] if reply.status_code == 200 else None)


def _result(message, content):
    return [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": content}]


def test_a_skipped_step_is_offered_again_on_the_next_clean_call():
    mix = {"agents": {"manager": {"schedule": {2: "http_503", 3: "text_instead_of_tools", 4: "empty"}}}}
    with running_unruly_model(FLOW, mix) as model, httpx.Client(base_url=model.base_url, timeout=10) as http:
        chat = [{"role": "user", "content": "please build a word counter"}]
        _, first = _step(http, chat)
        assert first["tool_calls"][0]["function"]["name"] == "create_worker"
        chat += _result(first, "worker alice created")
        assert _step(http, chat)[0] == 503  # a client retries the same request...
        assert "create_project" in _step(http, chat)[1]["content"]  # ...gets prose instead of the call...
        assert _step(http, chat)[1]["content"] == ""  # ...then nothing...
        _, project = _step(http, chat)  # ...and then the step the model skipped
        assert project["tool_calls"][0]["function"]["name"] == "create_project"
        chat += _result(project, "project proj-1 created")
        assert _step(http, chat)[1]["content"] == "All set."
        base = model.base_stats()["agents"]["manager"]
        assert base["calls"] == 3 and base["next_turn"] == 3 and base["unmatched"] == 0
        assert model.calls("manager") == 6
        assert [e["base"] for e in model.log("manager")] == ["turn 1", "turn 2", "turn 2", "turn 2", "turn 2", "turn 3"]


def test_tools_written_as_text_move_the_scenario_on():
    mix = {"agents": {"manager": {"schedule": {2: "tools_as_text"}}}}
    with running_unruly_model(FLOW, mix) as model, httpx.Client(base_url=model.base_url, timeout=10) as http:
        chat = [{"role": "user", "content": "build it"}]
        _, first = _step(http, chat)
        chat += _result(first, "worker alice created")
        _, written = _step(http, chat)
        parsed = json.loads(re.search(r"<tool_call>\n(.*)\n</tool_call>", written["content"], re.S).group(1))
        assert parsed == {"name": "create_project", "arguments": {"title": "WC"}}
        # A client that parses the text runs the tool and sends its result: the scenario has moved on.
        executed = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "parsed-1", "type": "function", "function": {"name": parsed["name"],
                                                               "arguments": json.dumps(parsed["arguments"])}}]}
        chat += _result(executed, "project proj-1 created")
        assert _step(http, chat)[1]["content"] == "All set."


def test_kind_filters_tools_and_when():
    mix = {"agents": {"*": {"kinds": {"text_instead_of_tools": {"rate": 1.0, "tools": ["create_project"]},
                                      "question": {"rate": 0.0}}}}}
    with running_unruly_model(FLOW, mix) as model, httpx.Client(base_url=model.base_url, timeout=10) as http:
        chat = [{"role": "user", "content": "build it"}]
        _, first = _step(http, chat)
        assert first["tool_calls"][0]["function"]["name"] == "create_worker"  # not a filtered tool: clean
        chat += _result(first, "worker alice created")
        assert "create_project" in _step(http, chat)[1]["content"]  # the filtered tool: prose instead
        assert model.sequence("manager") == [None, "text_instead_of_tools"]
    when = {"agents": {"*": {"schedule": {"1-10": {"kind": "refusal", "when": {"contains": "secret"}}}}}}
    with running_unruly_model(BASE, when) as model, httpx.Client(base_url=model.base_url, timeout=10) as http:
        for text in ("hello", "tell me the secret"):
            http.post("/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": text}], "user": "u"})
        assert model.sequence("u") == [None, "refusal"]


# --------------------------------------------------------------------------- the real gateway in front


def test_the_gateway_passes_provider_errors_through_as_a_real_providers(tmp_path):
    mix = {"agents": {"*": {"schedule": {1: {"kind": "http_429", "retry_after": 3}, 2: "context_length",
                                         3: {"kind": "context_length", "style": "llama_cpp"}, 4: "http_503"}}}}
    with running_unruly_model(BASE, mix) as model, running_gateway(tmp_path, model.base_url,
                                                                   settings={"retries": 1}) as gateway:
        token = gateway.mint("sam")
        client = openai.OpenAI(base_url=gateway.base_url, api_key=token.token, max_retries=0)
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="cheap", messages=HISTORY, tools=TOOLS)
        assert limited.value.response.headers["retry-after"] == "3"  # the caller can back off as asked
        with pytest.raises(openai.BadRequestError) as overflow:
            client.chat.completions.create(model="cheap", messages=HISTORY, tools=TOOLS, stream=True)
        assert overflow.value.code == "context_length_exceeded" and "maximum context length" in overflow.value.message
        with pytest.raises(openai.BadRequestError) as llama:
            client.chat.completions.create(model="cheap", messages=HISTORY, tools=TOOLS)
        assert llama.value.status_code == 400 and "exceeds the available context size" in llama.value.message
        # A 503 is the gateway's to retry: the caller gets the next, clean answer.
        reply = client.chat.completions.create(model="cheap", messages=HISTORY, tools=TOOLS)
        assert reply.choices[0].message.tool_calls[0].function.name == "report_result"
        assert model.sequence("sam") == ["http_429", "context_length", "context_length", "http_503", None]
        assert [e["status"] for e in model.log("sam")] == [429, 400, 400, 503, 200]


# --------------------------------------------------------------------------- config, CLI, docs


@pytest.mark.parametrize("data, message", [
    ({"agents": {"a": {"kinds": {"http_429": 1.5}}}}, r"agents\.a\.kinds\.http_429\.rate: .*less than or equal to 1"),
    ({"agents": {"a": {"kinds": {"teleport": 0.1}}}}, r"agents\.a\.kinds\.teleport: unknown key \(kinds: text_instead"),
    ({"agents": {"a": {"kinds": {"http_429": 0.6, "http_500": 0.6}}}}, r"agents\.a\.kinds: the rates add up to 1\.2"),
    ({"agents": {"a": {"schedule": {"x": "loop"}}}}, r"schedule key 'x' must be a call number or a range"),
    ({"agents": {"a": {"schedule": {"2": "loop", "1-3": "empty"}}}}, r"call 2 is scheduled twice"),
    ({"agents": {"a": {"schedule": {"2": "teleport"}}}}, r"agents\.a\.schedule\.2: unknown kind"),
    ({"agents": {"a": {"schedule": {"2": {"kind": "http_429", "retry_after": -1}}}}},
     r"agents\.a\.schedule\.2\.retry_after: .*greater than or equal to 0"),
    ({"agents": {"a": {"kinds": {"timeout": {"rate": 0.1, "mode": "explode"}}}}}, r"agents\.a\.kinds\.timeout\.mode"),
    ({"max_consecutive": 0}, r"max_consecutive: .*greater than or equal to 1"),
    ([1], "must be a mapping"),
])
def test_invalid_configs_name_the_place(data, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_unruly_config(data, source="chaos.yaml")


def test_config_files_with_a_scenario_path(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "chaos.yaml").write_text("seed: 9\nscenario: base.yaml\nagents:\n  '*': {schedule: {1: refusal}}\n")
    (tmp_path / "chaos.json").write_text(json.dumps({"seed": 9, "scenario": "base.yaml",
                                                     "agents": {"*": {"schedule": {"1": "refusal"}}}}))
    config = load_unruly_config(tmp_path / "chaos.yaml")
    assert config.scenario == str(tmp_path / "base.yaml") and config == load_unruly_config(tmp_path / "chaos.json")
    with running_unruly_model(None, tmp_path / "chaos.yaml") as model:
        assert model.stats()["seed"] == 9
        replies = [http_error(model, "x").json()["choices"][0]["message"] for _ in range(2)]
        assert replies[0]["content"] == "I'm sorry, but I can't help with that request."  # from the config's file
        assert replies[1]["tool_calls"][0]["function"]["name"] == "report_result"  # from the scenario's file
        assert httpx.get(f"{model.url}/_unruly/stats").json()["agents"]["x"]["kinds"] == {"refusal": 1}
        assert httpx.get(f"{model.url}/_unruly/log", params={"agent": "x"}).json()["calls"][0]["kind"] == "refusal"
        assert httpx.post(f"{model.url}/_unruly/reset").json() == {"ok": True} and model.calls() == 0
    (tmp_path / "bad.yaml").write_text("agents: [\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_unruly_config(tmp_path / "bad.yaml")


def test_cli_serve_unruly_as_a_real_process(tmp_path, hiclaw_cli):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "chaos.yaml").write_text("agents:\n  sam: {schedule: {1: {kind: http_429, retry_after: 4}}}\n")
    help_text = subprocess.run([str(hiclaw_cli), "model", "serve-unruly", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--scenario" in help_text and "--seed" in help_text and "text instead of tools" in " ".join(help_text.split())
    proc, url = start_listening_process([str(hiclaw_cli), "model", "serve-unruly", str(tmp_path / "chaos.yaml"),
                                         "--scenario", str(tmp_path / "base.yaml"), "--port", "0", "--seed", "42",
                                         "--api-key-env", "UNRULY_KEY"],
                                        {**clean_env(), "UNRULY_KEY": "sk-unruly-cli"}, tmp_path / "unruly.log")
    try:
        client = openai.OpenAI(base_url=url, api_key="sk-unruly-cli", max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=HISTORY, user="sam")
        assert caught.value.response.headers["retry-after"] == "4"
        assert client.chat.completions.create(model="m", messages=HISTORY, user="sam").choices[0].finish_reason == "tool_calls"
        stats = httpx.get(url.removesuffix("/v1") + "/_unruly/stats").json()
        assert stats["seed"] == 42 and stats["agents"]["sam"] == {
            "calls": 2, "clean": 1, "misbehaved": 1, "kinds": {"http_429": 1}, "consecutive": 0, "longest_streak": 1}
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    (tmp_path / "bad.yaml").write_text("agents: {a: {kinds: {teleport: 1}}}\n")
    result = subprocess.run([str(hiclaw_cli), "model", "serve-unruly", str(tmp_path / "bad.yaml"), "--port", "0"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "teleport: unknown key" in result.stderr


def test_documented_config_and_kinds():
    from conftest import ROOT

    text = (ROOT / "docs" / "scripted-model.md").read_text()
    section = text[text.index("## The unruly model"):]
    block = re.search(r"### Config format.*?```yaml\n(.*?)```", section, flags=re.S).group(1)
    config = parse_unruly_config(yaml.safe_load(block), source="docs/scripted-model.md")
    assert config.agents["sam"].kinds.http_429.retry_after == 2 and config.agents["alex"].scheduled(8).kind == "loop"
    documented = re.findall(r"^\| `([a-z_0-9]+)`", section.split("### The kinds", 1)[1], flags=re.M)
    assert documented == list(KINDS)  # every kind has a row, in the order the draw walks them


async def test_a_team_runs_on_the_unruly_model(tmp_path):
    from hiclaw.testing.team import running_team

    scenario = {"agents": {"manager": {"default": {"text": "Hello, admin."}}}}
    mix = {"agents": {"manager": {"schedule": {1: "http_500"}}}}
    async with running_team(tmp_path / "home", scenario, unruly=mix) as team:
        await team.tell_manager("@manager hi")
        await team.wait_for_message("Hello, admin.")  # the gateway retried the 500 for it
        assert team.model.log("manager")[:2] == [
            {**team.model.log("manager")[0], "kind": "http_500", "status": 500},
            {**team.model.log("manager")[1], "kind": None, "status": 200}]
        assert team.model_calls("manager") >= 2 and team.model.engine.stats()["agents"]["manager"]["calls"] >= 1
