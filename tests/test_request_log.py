"""The canonical request line at the configured level: above info it is not written (nor
built), while a failure's warning line still is, with the answer's fields."""

from __future__ import annotations

from structlog.testing import capture_logs

from service import log as service_log
from service.log import writes_info
from tests.fake_upstream import Scenario


def test_only_debug_and_info_write_info_lines():
    assert writes_info("debug") and writes_info("info") and writes_info("INFO")
    assert not writes_info("warning") and not writes_info("error")


async def test_at_info_every_request_has_its_line(client):
    with capture_logs() as logs:
        await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()
        assert (await client.post("/ai/stream/generate", json={"prompt": ""})).status == 400
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert [(line["log_level"], line["status"]) for line in lines] == [("info", 200), ("info", 400)]
    assert lines[0]["outcome"] == "done"


async def test_above_info_only_failures_have_a_line(make_client, fake_upstream, monkeypatch):
    client = await make_client(models="anthropic/claude-primary")
    monkeypatch.setattr(service_log, "info_enabled", False)  # as configure_logging("warning") sets it
    fake_upstream.script("claude-primary", Scenario(), Scenario(kind="http_error", status=500))
    with capture_logs() as logs:
        await (await client.post("/ai/stream/generate", json={"prompt": "x"})).read()  # answered: no line
        assert (await client.post("/ai/stream/generate", json={"prompt": ""})).status == 400  # no line
        failed = await client.post("/ai/stream/generate", json={"prompt": "x", "stream": False})
        assert failed.status >= 500
    [line] = [entry for entry in logs if entry["event"] == "request"]
    assert line["log_level"] == "warning" and line["status"] == failed.status
    assert line["outcome"] == "error" and line["error_code"]  # the answer's own fields are there
