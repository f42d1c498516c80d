"""What aiohttp refuses before any handler runs is answered by the real server process in the
service's JSON shape, never echoing what was sent, and logged as one JSON line without it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests

from tests.support.processes import (
    RunningService,
    ThreadedUpstream,
    run_service,
    service_env,
)

KEY = "frontend-0123456789abcdef"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("protocol")
    with ThreadedUpstream() as upstream:
        env = service_env(upstream.fake, workdir, AI_API_KEYS=f"frontend:{KEY}")
        with run_service(env, workdir) as running:
            yield running


def send(service: RunningService, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = service.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_an_oversized_authorization_header_is_a_json_4xx_without_echo(service: RunningService) -> None:
    secret = "sk-" + "s3cr3t" * 1700  # over aiohttp's 8 KB header limit, and nothing like a valid key
    status, headers, body = send(
        service, b"POST /ai/stream/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret.encode() + b"\r\n\r\n"
    )
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert set(answer) == {"error", "code", "details"} and answer["code"] in ("bad_request", "headers_too_large")
    assert b"s3cr3t" not in body
    log = service.log_lines()
    assert not any("s3cr3t" in line for line in log)
    refused = [json.loads(line) for line in log if '"request_refused"' in line]
    assert refused and refused[-1]["status"] == status and refused[-1]["level"] == "warning"


def test_a_malformed_request_line_is_json_too(service: RunningService) -> None:
    status, headers, body = send(service, b"GET /\x01\x02 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["code"] == "bad_request"


def test_every_log_line_is_one_json_object(service: RunningService) -> None:
    send(service, b"POST /ai/stream/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"x" * 9000 + b"\r\n\r\n")
    requests.get(f"{service.base_url}/health", timeout=10)
    for line in service.log_lines():
        assert isinstance(json.loads(line), dict), line


def test_the_service_keeps_serving_after_refused_requests(service: RunningService, tmp_path: Path) -> None:
    send(service, b"NOT-HTTP\r\n\r\n")
    assert requests.get(f"{service.base_url}/health", timeout=10).status_code == 200


def test_a_broken_body_encoding_is_one_warning_line_without_a_traceback(service: RunningService) -> None:
    body = b"this is not deflate"
    status, headers, answer = send(
        service,
        b"POST /ai/stream/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: deflate\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    )
    assert status == 400 and json.loads(answer)["code"] == "invalid_body"
    requests.get(f"{service.base_url}/health", timeout=10)
    events = [json.loads(line) for line in service.log_lines()]
    assert not [e for e in events if "exception" in e or "Traceback" in json.dumps(e)]
    assert any("request body unreadable" in e.get("event", "") and e["level"] == "warning" for e in events)
