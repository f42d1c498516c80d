"""No secret reaches a client or the log at info level or above.

The service runs as `python -m service`, so logging is set up exactly as in production (the
entry point calls configure_logging(AI_LOG_LEVEL, AI_LOG_FORMAT), here "info" and "json",
which writes to stderr); the fake upstream runs in a thread (helpers from test_fuzz.py).
Marker strings stand in for the secrets: both API keys, the prompt and message text, the
system prompt, the upstream's error messages and the upstream's address. A varied set of
requests is sent (answers, every upstream fault the fake can play, bad requests that carry
the prompt, threads, unknown routes, a client that leaves, an unhandled error), then:
no marker is in any answer (body or headers) or in any log line at info or above (debug may
hold them), and every request has its canonical log line with the expected fields.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.conftest import MODELS
from tests.fake_upstream import Scenario
from tests.support.processes import ThreadedUpstream, run_service, service_env

ANTHROPIC_KEY = "sk-ant-LEAKMARKER-anthropic-key-Qz7Wk9"
OPENAI_KEY = "sk-LEAKMARKER-openai-key-Rv4Jm2"
PROMPT = "PROMPT-SECRET-MARKER-only-the-model-may-read-this"
SYSTEM = "SYSTEM-SECRET-MARKER-instructions-for-the-model"
UPSTREAM = "UPSTREAM-SECRET-MARKER-internal-error-detail"
# Text that only an exception (ours or an SDK's) would put in an answer.
EXCEPTION_TEXT = ("Traceback", "Error code:", "ProviderError", "anthropic.", "openai.", "httpx")
MODEL_NAMES = [spec.partition("/")[2] for spec in MODELS.split(",")]
GEN, CHAT, THREAD = "/ai/stream/generate", "/ai/stream/chat", "/ai/threads/leak-thread"
USER_TURN = [{"role": "user", "content": PROMPT}]


def everywhere(**scenario: Any) -> dict[str, Scenario]:
    """The same fault on every model of the chain, with the upstream's message set to the marker."""
    return {name: Scenario(error_message=UPSTREAM, **scenario) for name in MODEL_NAMES}


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    path: str  # may hold a query string
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, Scenario] = field(default_factory=dict)
    status: int | None = 200  # None: not fixed in advance (see the call)
    outcome: str | None = None  # the canonical line's `outcome`
    code: str | None = None  # the canonical line's `error_code`
    allowed: frozenset[str] = frozenset()  # markers this answer holds by design
    leave_early: bool = False  # the client reads one line and goes away


def fault_calls() -> list[Call]:
    """Each upstream fault, streamed (an error event in a 200) and as JSON (a 5xx)."""
    faults = {
        "http-400": (everywhere(kind="http_error", status=400), 502, "invalid_request"),
        "http-401": (everywhere(kind="http_error", status=401), 502, "authentication_failed"),
        "http-404": (everywhere(kind="http_error", status=404), 502, "model_not_found"),
        "http-429": (everywhere(kind="http_error", status=429), 503, "rate_limited"),
        "http-500": (everywhere(kind="http_error", status=500), 503, "upstream_unavailable"),
        "http-529": (everywhere(kind="http_error", status=529), 503, "upstream_unavailable"),
        "in-stream-error": (everywhere(kind="stream_error", error_type="overloaded_error"), 503, "upstream_unavailable"),
        "error-mid-answer": (everywhere(kind="stream_error", error_type="api_error", after_tokens=2), 503, "upstream_unavailable"),
        "drop": (everywhere(kind="drop"), 503, "upstream_unavailable"),
        "drop-mid-answer": (everywhere(kind="drop", after_tokens=1), 503, "upstream_unavailable"),
        "malformed": (everywhere(kind="malformed", after_tokens=1), 502, "upstream_error"),
    }
    calls = []
    for name, (scripts, json_status, code) in faults.items():
        calls.append(Call(f"stream-{name}", "POST", GEN, {"prompt": PROMPT, "system_prompt": SYSTEM}, scripts=scripts,
                          outcome="error", code=code))
        calls.append(Call(f"json-{name}", "POST", CHAT, {"messages": USER_TURN, "system": SYSTEM, "stream": False},
                          scripts=scripts, status=json_status, outcome="error", code=code))
    return calls


CALLS = [
    Call("generate-stream", "POST", GEN, {"prompt": PROMPT, "system_prompt": SYSTEM}, outcome="done"),
    Call("chat-stream", "POST", CHAT, {"system": SYSTEM, "messages": [{"role": "system", "content": SYSTEM}, *USER_TURN,
                                       {"role": "assistant", "content": PROMPT}, *USER_TURN]}, outcome="done"),
    Call("generate-json", "POST", GEN, {"prompt": PROMPT, "system_prompt": SYSTEM, "stream": False}, outcome="done"),
    *fault_calls(),
    Call("client-leaves", "POST", GEN, {"prompt": PROMPT, "system_prompt": SYSTEM}, status=None, outcome="client_gone",
         scripts={MODEL_NAMES[0]: Scenario(tokens=["a"] * 40, token_delay=0.05)}, leave_early=True),
    # Bad requests whose bodies carry the secret text.
    Call("bad-max-tokens", "POST", GEN, {"prompt": PROMPT, "system_prompt": SYSTEM, "max_tokens": 0}, status=400,
         code="validation_error"),
    Call("bad-role", "POST", CHAT, {"messages": [{"role": "tool", "content": PROMPT}], "system": SYSTEM}, status=400,
         code="validation_error"),
    Call("bad-types", "POST", CHAT, {"messages": [*USER_TURN, PROMPT], "system": [SYSTEM], "stream": PROMPT}, status=400,
         code="validation_error"),
    Call("bad-thread-id", "POST", CHAT, {"messages": USER_TURN, "thread_id": "no spaces"}, status=400, code="validation_error"),
    Call("prompt-not-string", "POST", GEN, {"prompt": [PROMPT], "system_prompt": {"text": SYSTEM}}, status=400,
         code="validation_error"),
    Call("invalid-json", "POST", GEN, data=f'{{"prompt": "{PROMPT}", "system_prompt": "{SYSTEM}",'.encode(),
         headers={"Content-Type": "application/json"}, status=400, code="invalid_json"),
    Call("invalid-utf8", "POST", CHAT, data=b'{"messages": "\xff' + PROMPT.encode(),
         headers={"Content-Type": "application/json"}, status=400, code="invalid_json"),
    Call("json-array", "POST", GEN, [PROMPT, SYSTEM], status=400, code="invalid_json"),
    Call("form-body", "POST", GEN, data=f"prompt={PROMPT}".encode(), headers={"Content-Type": "text/plain"},
         status=415, code="unsupported_media_type"),
    Call("body-too-large", "POST", GEN, {"prompt": PROMPT * 25_000}, status=413, code="body_too_large"),
    # Threads: the stored messages are the prompt (allowed in their listing), never the system prompt.
    Call("thread-turn", "POST", CHAT, {"thread_id": "leak-thread", "user_id": "leak-user", "system": SYSTEM,
                                       "messages": [{"role": "system", "content": SYSTEM}, *USER_TURN]}, outcome="done"),
    Call("thread-read", "GET", THREAD + "/messages?user_id=leak-user", allowed=frozenset({"prompt"})),
    Call("thread-stranger", "GET", THREAD + "/messages?user_id=someone-else", status=404, code="not_found"),
    Call("thread-delete", "DELETE", THREAD + "?user_id=leak-user", status=204),
    Call("thread-gone", "GET", THREAD + "/messages?user_id=leak-user", status=404, code="not_found"),
    Call("unknown-route", "GET", "/ai/nothing-here", status=404, code="not_found"),
    Call("wrong-method", "PUT", GEN, {"prompt": PROMPT}, status=405, code="method_not_allowed"),
    Call("metrics", "GET", "/metrics", status=None),  # whatever it answers (being built), after all the above
    # An unhandled exception (a bug, reported separately): `limit` passes str.isdigit() but not int().
    Call("unhandled-error", "GET", THREAD + "/messages?limit=%C2%B2", status=None),
]


def send(base_url: str, upstream: ThreadedUpstream, call: Call, request_id: str, seen: list[Any]) -> requests.Response:
    """Send `call` with the fake scripted for it; what the fake received is added to `seen`."""
    seen += upstream.call(list, upstream.fake.requests)
    upstream.call(upstream.fake.reset)
    for model, scenario in call.scripts.items():
        upstream.call(upstream.fake.script, model, scenario)
    kwargs: dict[str, Any] = {"headers": {**call.headers, "X-Request-ID": request_id}, "timeout": 30}
    kwargs["json" if call.data is None else "data"] = call.json if call.data is None else call.data
    if not call.leave_early:
        return requests.request(call.method, base_url + call.path, **kwargs)
    with requests.request(call.method, base_url + call.path, stream=True, **kwargs) as response:
        next(response.iter_lines())  # the first event, then the client hangs up
    return response


def parse_log(lines: list[str]) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(level, fields, text) per line; a line that is not JSON (stdlib logging, a bare
    traceback) counts as a warning."""
    parsed = []
    for line in lines:
        try:
            fields = json.loads(line)
        except ValueError:
            fields = None
        level = fields.get("level", "info") if isinstance(fields, dict) else "warning"
        parsed.append((level, fields if isinstance(fields, dict) else None, line))
    return parsed


def test_no_secret_in_answers_or_info_logs(tmp_path: Path) -> None:
    ids = {call.name: f"leak-{i:02d}-{call.name}" for i, call in enumerate(CALLS)}
    with ThreadedUpstream() as upstream:
        markers = {"anthropic key": ANTHROPIC_KEY, "anthropic key tail": ANTHROPIC_KEY[-6:], "openai key": OPENAI_KEY,
                   "openai key tail": OPENAI_KEY[-6:], "prompt": PROMPT, "system prompt": SYSTEM, "upstream error": UPSTREAM,
                   "upstream address": upstream.fake.base_url.removeprefix("http://")}
        env = service_env(upstream.fake, tmp_path, AI_MODELS=MODELS, ANTHROPIC_API_KEY=ANTHROPIC_KEY,
                          OPENAI_API_KEY=OPENAI_KEY, AI_LOG_LEVEL="info", AI_LOG_FORMAT="json",
                          AI_COOLDOWN_SECONDS="0")  # no circuit kept open: each fault reaches the fake as scripted
        with run_service(env, tmp_path) as service:
            seen: list[Any] = []  # the requests the fake received
            answers = {call.name: send(service.base_url, upstream, call, ids[call.name], seen) for call in CALLS}
            deadline = time.monotonic() + 10  # canonical lines of streams come once the handler is done
            while not all(f'"{rid}"' in "\n".join(service.log_lines()) for rid in ids.values()):
                assert time.monotonic() < deadline, "some requests have no log line"
                time.sleep(0.05)
        log = parse_log(service.log_lines())  # complete: the service has shut down

    # The secrets did reach the upstream (else nothing below would prove anything).
    for key in (ANTHROPIC_KEY, OPENAI_KEY):
        assert any(key in " ".join(r.headers.values()) for r in seen), "an API key never reached the fake"
    assert any(PROMPT in json.dumps(r.body) and SYSTEM in json.dumps(r.body) for r in seen)

    problems: list[str] = []
    for call in CALLS:
        resp = answers[call.name]
        if call.status is not None and resp.status_code != call.status:
            problems.append(f"{call.name}: status {resp.status_code}, expected {call.status}: {resp.text[:300]}")
        body = "" if call.leave_early else resp.content.decode("utf-8", "replace")
        headers = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        for what, marker in markers.items():
            if marker in headers or (what not in call.allowed and marker in body):
                problems.append(f"{call.name}: the {what} is in the answer: {headers}\n\n{body[:500]}")
        problems += [f"{call.name}: {text!r} in the answer: {body[:500]}" for text in EXCEPTION_TEXT if text in body]

    for level, fields, text in log:
        if level != "debug":
            problems += [f"the {what} is logged at {level}: {text[:500]}" for what, marker in markers.items() if marker in text]
        if level == "info" and "Traceback" in text:
            problems.append(f"exception text logged at info: {text[:500]}")

    requests_logged = {f["request_id"]: f for _, f, _ in log if f and f.get("event") == "request" and "request_id" in f}
    for call in CALLS:
        line = requests_logged.get(ids[call.name])
        if line is None:
            problems.append(f"{call.name}: no canonical log line with request_id {ids[call.name]}")
            continue
        expected = {"method": call.method, "route": call.path.partition("?")[0], "outcome": call.outcome, "error_code": call.code}
        if not call.leave_early:
            expected["status"] = answers[call.name].status_code
        wrong = {k: line.get(k) for k, v in expected.items() if v is not None and line.get(k) != v}
        if wrong:
            problems.append(f"{call.name}: the canonical log line has {wrong}, expected {expected}: {line}")

    # The unhandled error (while the bug lasts; then a 400): a generic 500, its traceback logged
    # at error with the request id.
    unhandled = answers["unhandled-error"]
    assert unhandled.status_code in (400, 500), unhandled.text
    if unhandled.status_code == 500:
        assert unhandled.json() == {"error": "Something went wrong on our side.", "code": "internal_error", "details": []}
        assert any(f and f.get("event") == "unhandled_error" and f.get("request_id") == ids["unhandled-error"]
                   and level == "error" for level, f, _ in log), "the unhandled error is not logged with its request id"
        assert requests_logged[ids["unhandled-error"]]["level"] == "warning"
    assert not problems, "\n\n".join(problems)
