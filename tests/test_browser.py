"""The page at `/` in a real browser: headless Chromium (the Debian package, /usr/bin/chromium)
driven by Playwright, against the service and the fake upstream running on their own event
loop in a thread. Each test loads the page, uses it as a person would, and fails on any
console error or page error it did not expect. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect

from service.app import create_app
from service.settings import load_settings
from tests.conftest import ANTHROPIC_KEY, MODELS, OPENAI_KEY
from tests.fake_upstream import FakeUpstream, Scenario
from tests.support.prompts import conversation, date_context

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
API_KEY = "0123456789abcdef-web"
FAIL_529 = Scenario(kind="http_error", status=529)
SLOW_TOKENS = ["The ", "answer ", "grows ", "one ", "token ", "at ", "a ", "time."]


class LiveService:
    """The fake upstream and the service (built by its factory, on a free port) on an event
    loop of their own in a thread, so that the test's loop is free for the browser."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.fake = FakeUpstream()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-service", daemon=True)
        self.workdir = workdir
        self.overrides = overrides
        self.url = ""
        self._runner: web.AppRunner | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (plain or async) run on the service's loop; its result."""

        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    async def wait_for_disconnect(self) -> Any:
        future = asyncio.run_coroutine_threadsafe(self.fake.wait_for_disconnect(timeout=10), self.loop)
        return await asyncio.wrap_future(future)

    def script(self, model: str, *scenarios: Scenario) -> None:
        self.call(self.fake.script, model, *scenarios)

    def requests_for(self, model: str) -> list[Any]:
        return list(self.call(self.fake.requests_for, model))

    async def _start(self) -> None:
        await self.fake.start()
        values: dict[str, Any] = {
            "models": MODELS,
            "anthropic_api_key": ANTHROPIC_KEY,
            "anthropic_base_url": self.fake.base_url,
            "openai_api_key": OPENAI_KEY,
            "openai_base_url": self.fake.openai_base_url,
            "database_url": f"sqlite:///{self.workdir / 'ai-stream.db'}",
            "first_token_timeout": 5.0,
            "request_timeout": 60.0,
            "shutdown_grace": 0,
            "log_format": "json",
            "shed_loop_lag_ms": 0,  # a test machine's loop lags with whatever else runs on it
            **self.overrides,
        }
        self._runner = web.AppRunner(create_app(load_settings(**values)), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.fake.close()

    def __enter__(self) -> LiveService:
        self.thread.start()
        self.call(self._start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.call(self._stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., LiveService]]:
    services: list[LiveService] = []

    def start(**overrides: Any) -> LiveService:
        service = LiveService(tmp_path, **overrides).__enter__()
        services.append(service)
        return service

    yield start
    for service in services:
        service.__exit__(None, None, None)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """A page with every console error and page error it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.problems.append(message.text))
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))


async def open_page(browser: Browser, url: str, width: int = 1280, height: int = 900, **context: Any) -> Watched:
    page = await (await browser.new_context(viewport={"width": width, "height": height}, **context)).new_page()
    watched = Watched(page)
    response = await page.goto(url + "/")
    assert response is not None and response.status == 200
    await expect(page.locator("#model-status .model-row")).to_have_count(3)  # the status part has loaded
    return watched


async def ask(page: Page, text: str) -> None:
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")


async def answer_done(page: Page) -> None:
    await expect(page.locator("#send")).to_be_visible(timeout=20_000)


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


# --- the playground ------------------------------------------------------------------------


async def test_answer_grows_as_tokens_arrive(browser, start_service):
    live = start_service()
    live.script("claude-primary", Scenario(tokens=SLOW_TOKENS, first_token_delay=0.1, token_delay=0.15))
    watched = await open_page(browser, live.url, timezone_id="Europe/Lisbon")
    page = watched.page
    await expect(page.locator("#timezone")).to_have_value("Europe/Lisbon")  # the browser's zone by default
    await page.fill("#system", "Be brief.")
    await page.fill("#prompt", "line one")
    await page.press("#prompt", "Shift+Enter")  # a new line, not a send
    await page.type("#prompt", "line two")
    assert await page.locator(".message").count() == 0
    await page.press("#prompt", "Enter")

    answer = page.locator(".message.assistant .text").last
    finished = page.locator(".message.assistant .badge.model")
    seen: list[str] = []
    deadline = asyncio.get_running_loop().time() + 30
    while not await finished.count():
        assert asyncio.get_running_loop().time() < deadline, f"the answer never finished; saw {seen}"
        text = await answer.text_content() or ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        await asyncio.sleep(0.02)
    final = await answer.text_content()
    assert final == "".join(SLOW_TOKENS)
    assert len(seen) >= 3, f"the answer should grow over several renders, saw {seen}"
    assert all(later.startswith(earlier) and later != earlier for earlier, later in zip(seen, seen[1:])), seen

    assert await page.locator(".message.user .text").last.text_content() == "line one\nline two"
    meta = page.locator(".message.assistant .meta").last
    await expect(meta.locator(".badge.model")).to_have_text("anthropic/claude-primary")
    assert await meta.locator(".badge.fallback").count() == 0
    figures = await meta.locator(".badge.figure").all_text_contents()
    assert re.fullmatch(r"TTFT \d+ ms", figures[0]), figures
    assert re.fullmatch(r"\d+\.\d tok/s", figures[1]), figures
    assert figures[2] == "in 11 · out 8"

    [sent] = live.requests_for("claude-primary")
    assert conversation(sent.body) == [{"role": "user", "content": "line one\nline two"}]
    assert sent.body["system"] == "Be brief." and "Europe/Lisbon" in (date_context(sent.body) or "")
    await screenshot(page, "answer-1280.png")
    assert watched.problems == []


async def test_second_turn_sends_the_conversation(browser, start_service):
    live = start_service()
    watched = await open_page(browser, live.url)
    page = watched.page
    await ask(page, "first")
    await answer_done(page)
    await ask(page, "second")
    await answer_done(page)
    requests = live.requests_for("claude-primary")
    assert [conversation(r.body) for r in requests][1] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "second"},
    ]
    assert watched.problems == []


async def test_fallback_badge_names_the_failed_model(browser, start_service):
    live = start_service()
    live.script("claude-primary", FAIL_529)
    watched = await open_page(browser, live.url)
    page = watched.page
    await ask(page, "Who answers?")
    await answer_done(page)
    meta = page.locator(".message.assistant .meta").last
    await expect(meta.locator(".badge.model")).to_have_text("anthropic/claude-backup")
    await expect(meta.locator(".badge.fallback")).to_have_text("fallback: anthropic/claude-primary (upstream_unavailable)")
    assert watched.problems == []


async def test_stop_button_ends_a_long_answer(browser, start_service):
    live = start_service()
    tokens = [f"word{n} " for n in range(200)]
    live.script("claude-primary", Scenario(tokens=tokens, token_delay=0.1))
    watched = await open_page(browser, live.url)
    page = watched.page
    await ask(page, "Tell me a long story")
    answer = page.locator(".message.assistant .text").last
    await expect(answer).to_contain_text("word2 ")
    await expect(page.locator("#send")).to_be_hidden()
    await page.click("#stop")
    disconnected = await live.wait_for_disconnect()  # the service let go of the upstream request
    assert disconnected.model == "claude-primary"
    await expect(page.locator(".message.assistant .badge.warn").last).to_have_text("stopped")
    await expect(page.locator("#send")).to_be_visible()
    await expect(page.locator("#stop")).to_be_hidden()
    text = await answer.text_content() or ""
    assert text.startswith("word0 word1 word2 ") and len(text) < len("".join(tokens))
    assert await page.locator(".message.assistant .badge.model").count() == 0
    assert watched.problems == []


async def test_stop_ends_a_stored_threads_answer_too(browser, start_service):
    """A thread's answer is resumable (it would go on without its request): Stop cancels it."""
    live = start_service()
    tokens = [f"word{n} " for n in range(200)]
    live.script("claude-primary", Scenario(tokens=tokens, token_delay=0.1))
    watched = await open_page(browser, live.url)
    page = watched.page
    await page.check("#use-thread")
    await ask(page, "Tell me a long story")
    answer = page.locator(".message.assistant .text").last
    await expect(answer).to_contain_text("word2 ")
    await page.click("#stop")
    disconnected = await live.wait_for_disconnect()  # cancelled: the model's request is closed
    assert disconnected.model == "claude-primary"
    await expect(page.locator(".message.assistant .badge.warn").last).to_have_text("stopped")
    await expect(page.locator("#thread-list button.thread")).to_have_count(1)
    thread_id = await page.locator("#thread-list button.thread").first.get_attribute("data-thread-id")
    for _ in range(50):
        stored = await page.evaluate(f"fetch('/ai/threads/{thread_id}/messages').then((r) => r.json())")
        if stored["messages"][-1]["status"] != "pending":
            break
        await asyncio.sleep(0.1)
    assert stored["messages"][-1]["status"] == "interrupted"
    assert stored["messages"][-1]["content"].startswith("word0 word1 word2 ")
    assert watched.problems == []


async def test_errors_are_shown_as_the_services_sentence(browser, start_service):
    live = start_service()
    for model in ("claude-primary", "claude-backup", "gpt-fallback"):
        live.script(model, FAIL_529)
    watched = await open_page(browser, live.url)
    page = watched.page
    await ask(page, "Anyone?")
    await answer_done(page)
    error = page.locator(".message.assistant .error").last
    await expect(error).to_have_text(re.compile(r"No model could answer \(3 models tried\)\..*"))
    assert watched.problems == []

    await page.fill("#timezone", "Mars/Olympus_Mons")  # refused with a 400 before any model is called
    await ask(page, "What time is it?")
    await answer_done(page)
    await expect(page.locator(".message.assistant .error").last).to_have_text(
        "Invalid request: timezone 'Mars/Olympus_Mons' is not a known IANA time zone, such as 'Europe/Berlin'."
    )
    # The browser notes the 400 itself; nothing else went wrong.
    assert watched.problems == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]


async def test_cache_figures_are_shown_when_usage_has_them(browser, start_service):
    """Usage may carry prompt-cache figures; the page shows them. The stream here is one the
    service would send with them (the fake upstream reports none)."""
    live = start_service()
    watched = await open_page(browser, live.url)
    page = watched.page
    done = ('{"type":"done","model":"claude-primary","provider":"anthropic","stop_reason":"end_turn",'
            '"usage":{"input_tokens":12,"output_tokens":3,"cache_read_input_tokens":2048,"cache_creation_input_tokens":96}}')
    body = 'data: {"type":"content","text":"Cached."}\n\n' + f"data: {done}\n\n"
    await page.route("**/ai/stream/chat", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    await ask(page, "Again")
    await answer_done(page)
    meta = page.locator(".message.assistant .meta").last
    await expect(meta.locator(".badge.figure").last).to_have_text("in 12 · out 3 · cache read 2048 · cache write 96")
    assert watched.problems == []


# --- threads -------------------------------------------------------------------------------


async def test_stored_thread_is_listed_reopened_and_renamed(browser, start_service):
    live = start_service()
    watched = await open_page(browser, live.url)
    page = watched.page
    await page.check("#use-thread")
    await ask(page, "Plan a day in Lisbon\nwith museums")
    await answer_done(page)
    first = page.locator("#thread-list button.thread").first
    await expect(first.locator(".title")).to_have_text("Plan a day in Lisbon")
    await expect(first.locator(".sub")).to_contain_text("2 messages")
    thread_id = await first.get_attribute("data-thread-id")
    assert thread_id and re.fullmatch(r"t-[0-9a-f]{16}", thread_id)

    await page.click("#new-chat")
    await ask(page, "Something else")
    await answer_done(page)
    await expect(page.locator("#thread-list button.thread")).to_have_count(2)
    await expect(page.locator("#thread-list button.thread .title").first).to_have_text("Something else")

    await page.locator(f'#thread-list button.thread[data-thread-id="{thread_id}"]').click()
    await expect(page.locator(".message")).to_have_count(2)
    await expect(page.locator(".message.user .text")).to_have_text("Plan a day in Lisbon\nwith museums")
    await expect(page.locator(".message.assistant .text")).to_have_text("Hello, world!")
    await expect(page.locator(".message.assistant .badge.model")).to_have_text("anthropic/claude-primary")
    await expect(page.locator("#thread-title")).to_have_text("Plan a day in Lisbon")

    await ask(page, "And in the evening?")  # the reopened thread goes on, with its history
    await answer_done(page)
    assert conversation(live.requests_for("claude-primary")[-1].body) == [
        {"role": "user", "content": "Plan a day in Lisbon\nwith museums"},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "And in the evening?"},
    ]
    await expect(page.locator("#thread-list button.thread .title").first).to_have_text("Plan a day in Lisbon")

    await page.click("#rename")
    await page.fill("#rename-input", "Lisbon, one day")
    await page.press("#rename-input", "Enter")
    await expect(page.locator("#thread-title")).to_have_text("Lisbon, one day")
    await expect(page.locator("#thread-list button.thread.current .title")).to_have_text("Lisbon, one day")
    await screenshot(page, "playground-1280.png")
    assert watched.problems == []


# --- status --------------------------------------------------------------------------------


async def test_status_shows_a_circuit_opening(browser, start_service):
    live = start_service(cooldown_failures=2, cooldown_seconds=300, openai_api_key=None)
    live.script("claude-primary", FAIL_529)
    watched = await open_page(browser, live.url)
    page = watched.page
    await page.check("#use-thread")
    primary = page.locator('#model-status .model-row[data-model="anthropic/claude-primary"]')
    await expect(primary.locator(".circuit")).to_have_text("closed")
    await expect(page.locator('#model-status .model-row[data-model="openai/gpt-fallback"] .cred')).to_have_text("no key")
    await expect(page.locator("#storage-state")).to_have_text("sqlite · ok")
    for question in ("What is a circuit breaker?", "Why did the first model fail?"):
        await ask(page, question)
        await answer_done(page)
    await expect(primary.locator(".circuit.circuit-open")).to_have_text(re.compile(r"open, retry in \d+ s"))
    await expect(page.locator('#model-status .model-row[data-model="anthropic/claude-backup"] .circuit')).to_have_text("closed")
    await expect(page.locator("#chart-answers rect")).not_to_have_count(0)
    await expect(page.locator("#chart-fallbacks rect")).not_to_have_count(0)
    await expect(page.locator("#chart-answers-max")).to_have_text(re.compile(r"max [12]"))
    await expect(page.locator("#open-streams")).to_have_text("0")
    await expect(page.locator("#thread-list button.thread .sub")).to_contain_text("4 messages")  # one thread, two turns
    await screenshot(page, "status-1280.png")
    assert watched.problems == []


async def test_status_counts_an_open_stream(browser, start_service):
    live = start_service()
    live.script("claude-primary", Scenario(tokens=[f"t{n} " for n in range(100)], token_delay=0.2))
    watched = await open_page(browser, live.url)
    page = watched.page
    await ask(page, "long")
    await expect(page.locator(".message.assistant .text").last).to_contain_text("t1 ")
    other = await open_page(browser, live.url)  # a second tab sees the first one's answer in progress
    await expect(other.page.locator("#open-streams")).to_have_text("1")
    await page.click("#stop")
    await live.wait_for_disconnect()
    assert watched.problems == [] and other.problems == []


# --- keys, settings, headers, small screens -------------------------------------------------


async def test_key_is_asked_for_and_kept_in_session_storage_only(browser, start_service):
    live = start_service(api_keys=f"web:{API_KEY}")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watched = Watched(page)
    await page.goto(live.url + "/")
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible()
    await page.fill("#key-input", "not-the-right-key-at-all")
    await page.press("#key-input", "Enter")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#key-error")).to_have_text("A valid API key is required: send Authorization: Bearer <key> (or x-api-key: <key>).")
    await page.fill("#key-input", API_KEY)
    await page.press("#key-input", "Enter")
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#model-status .model-row")).to_have_count(3)
    assert await page.evaluate("sessionStorage.getItem('ai-stream.api-key')") == API_KEY
    assert await page.evaluate("localStorage.length") == 0
    assert API_KEY not in await page.evaluate("document.cookie")
    await ask(page, "With a key")
    await answer_done(page)
    await expect(page.locator(".message.assistant .badge.model")).to_have_text("anthropic/claude-primary")
    [sent] = live.requests_for("claude-primary")
    assert API_KEY not in str(sent.headers)  # the service's key went no further than the service
    # Without the key and then with a wrong one, the browser noted two 401s; nothing else.
    assert watched.problems == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"] * 2

    await page.reload()  # the same tab keeps its key
    await expect(page.locator("#model-status .model-row")).to_have_count(3)
    await expect(dialog).to_be_hidden()
    assert len(watched.problems) == 2

    fresh = await (await browser.new_context()).new_page()  # another session has no key
    await fresh.goto(live.url + "/")
    await expect(fresh.locator("#key-dialog")).to_be_visible()


async def test_playground_false_answers_404(browser, start_service):
    live = start_service(playground=False)
    page = await (await browser.new_context()).new_page()
    response = await page.goto(live.url + "/")
    assert response is not None and response.status == 404
    assert (await response.json())["code"] == "not_found"
    script = await page.goto(live.url + "/assets/playground.js")
    assert script is not None and script.status == 404


async def test_page_is_served_with_a_policy_the_browser_enforces(browser, start_service):
    live = start_service()
    page = await (await browser.new_context()).new_page()
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    response = await page.goto(live.url + "/")
    assert response is not None
    headers = await response.all_headers()
    assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self';")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    await expect(page.locator("#model-status .model-row")).to_have_count(3)
    assert problems == []
    # An injected inline script does not run: the policy allows only the page's own files.
    ran = await page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.injected = true';
                   document.head.append(s); return window.injected === true; }"""
    )
    assert ran is False
    assert len(problems) == 1 and "Content Security Policy" in problems[0]


async def test_small_screen_fits_and_works(browser, start_service):
    live = start_service()
    live.script("claude-primary", FAIL_529)
    watched = await open_page(browser, live.url, width=360, height=740)
    page = watched.page
    await ask(page, "A question asked on a phone, long enough to wrap over a few lines of the screen")
    await answer_done(page)
    await expect(page.locator(".message.assistant .badge.fallback")).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360  # nothing sticks out sideways
    for part in ("#prompt", "#send", "#thread-list", "#model-status"):
        box = await page.locator(part).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, part
    await screenshot(page, "playground-360.png")
    assert watched.problems == []
