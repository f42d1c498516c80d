"""How requests reach a model's server: the vendor SDK says what a request is, aiohttp carries it.

The SDK stays the source of truth for a request: its URL, its auth, version and beta headers,
an endpoint's own headers, the proxy its HTTP client would use, and the error class of a
failed response. What it costs to ask it is paid once per model, not once per request: its own
public call (`client.messages.create(...)`) is made once with an HTTP client whose transport
keeps the request instead of sending it (`CaptureClient`), and that request becomes the
model's `RequestTemplate`. Every answer then sends the template's URL and headers, with its own
JSON body, on one aiohttp session per endpoint (`Upstream`), and reads the raw body itself.
See the README's "The provider request path" for the parts of the SDK's pipeline this skips.

A model that goes silent mid-answer is given up on by one periodic check of every open body
(`IdleWatchdog`) rather than by a timer that every chunk of every stream re-arms.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, TypeVar

import aiohttp
import httpx2

from providers.codec import loads

Client = TypeVar("Client")

# Telemetry both SDKs add to every request: the host's OS, CPU architecture, Python and SDK
# versions, the client's timeouts and retry count. No API needs them; dropped, the vendor learns
# nothing of the deployment, and each request carries about 400 bytes less.
TELEMETRY_HEADERS = (  # spelled as the SDKs spell them: a client's headers merge case-sensitively
    "X-Stainless-Arch",
    "X-Stainless-Async",
    "X-Stainless-Lang",
    "X-Stainless-OS",
    "X-Stainless-Package-Version",
    "X-Stainless-Read-Timeout",
    "X-Stainless-Retry-Count",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Timeout",
)

# Headers of a captured request that belong to the HTTP library carrying it, not to the API:
# aiohttp writes its own (and decompresses what its own Accept-Encoding asks for).
_CARRIER_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding"})
# Of a response, those that describe bytes aiohttp has already decoded.
_DECODED_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})

# Idle connections to a model's server are kept this long for the next request (the SDKs' figure).
KEEPALIVE_SECONDS = 30.0


class IdleTimeout(TimeoutError):
    """A response body sent nothing for the idle timeout."""


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """One model's request as its SDK builds it, ready to send again with another body."""

    url: str
    headers: Mapping[str, str]
    proxy: str | None
    proxy_auth: aiohttp.BasicAuth | None
    proxy_headers: Mapping[str, str] | None
    ssl: ssl.SSLContext | bool
    # The request the SDK built: never sent, but the SDK's error classes want one.
    sdk_request: httpx2.Request


class _Keep(httpx2.AsyncBaseTransport):
    """A transport that keeps the request it is given and answers an empty 200."""

    def __init__(self, owner: CaptureClient, ssl_context: ssl.SSLContext, proxy: httpx2.Proxy | None) -> None:
        self.owner = owner
        self.ssl_context = ssl_context
        self.proxy = proxy

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.owner.captured = (request, self)
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=b"{}", request=request)


class CaptureClient(httpx2.AsyncClient):
    """The SDK client's HTTP client: it builds requests as the SDK's own would (proxies from the
    environment, TLS settings) and keeps the last one instead of sending it."""

    def __init__(self, **kwargs: Any) -> None:
        self.captured: tuple[httpx2.Request, _Keep] | None = None
        super().__init__(**kwargs)

    def _init_transport(self, verify: Any = True, cert: Any = None, trust_env: bool = True, **_: Any) -> _Keep:
        return _Keep(self, httpx2.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env), None)

    def _init_proxy_transport(
        self, proxy: httpx2.Proxy, verify: Any = True, cert: Any = None, trust_env: bool = True, **_: Any
    ) -> _Keep:
        return _Keep(self, httpx2.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env), proxy)


def create_sdk_client(
    sdk: ModuleType,
    client_class: type[Client],
    *,
    api_key: str,
    base_url: str | None,
    connect_timeout: float,
    idle_timeout: float,
    headers: Mapping[str, Any] | None = None,
) -> tuple[Client, CaptureClient]:
    """A vendor SDK's async client (`sdk`: the `anthropic` or `openai` module, which are built
    alike) as the relay uses it, with the HTTP client that keeps its requests:

    - no retries of its own (`max_retries=0`): the fallback chain decides, so a 529 costs no
      back-off before the next model is tried;
    - no telemetry headers; `headers` (an endpoint's own) with every request.
    """
    http = CaptureClient(follow_redirects=True)
    client = client_class(  # type: ignore[call-arg]
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=sdk.Timeout(idle_timeout, connect=connect_timeout),
        default_headers={**dict.fromkeys(TELEMETRY_HEADERS, sdk.omit), **(headers or {})},
        http_client=http,
    )
    return client, http


class IdleWatchdog:
    """Gives up on responses that receive nothing for `idle_timeout` seconds: a body that stays
    silent, or headers that do not come.

    One task wakes every `interval` (an eighth of the timeout, at most a second) while any is
    watched. It compares the bytes each body has received with what it had at the last change;
    a body silent for the timeout gets `IdleTimeout`, which its reader raises. A wait for headers
    longer than the timeout has its `asyncio.timeout` fired. A timer per stream re-armed on every
    chunk (aiohttp's `sock_read`) would cost a timer handle per token, and a timer per request
    for the headers costs more than the rest of sending it.
    """

    __slots__ = ("idle_timeout", "interval", "_bodies", "_waits", "_task")

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.interval = min(1.0, max(idle_timeout / 8, 0.01))
        self._bodies: dict[aiohttp.StreamReader, list[float]] = {}  # body -> [bytes seen, since]
        self._waits: dict[asyncio.Timeout, float] = {}  # a wait for headers -> since
        self._task: asyncio.Task[None] | None = None

    def watch(self, body: aiohttp.StreamReader) -> None:
        self._bodies[body] = [body.total_bytes, time.monotonic()]
        self._start()

    def unwatch(self, body: aiohttp.StreamReader) -> None:
        self._bodies.pop(body, None)

    def watch_wait(self, wait: asyncio.Timeout) -> None:
        """`wait` (entered, with no deadline of its own) is fired once it has lasted the timeout."""
        self._waits[wait] = time.monotonic()
        self._start()

    def unwatch_wait(self, wait: asyncio.Timeout) -> None:
        self._waits.pop(wait, None)

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def check(self, now: float) -> None:
        """One round: fail the bodies silent, and the waits begun, since `now - idle_timeout`."""
        for body, seen in list(self._bodies.items()):
            total = body.total_bytes
            if total != seen[0]:
                seen[0], seen[1] = total, now
            elif now - seen[1] >= self.idle_timeout:
                del self._bodies[body]
                body.set_exception(IdleTimeout("the model's server sent nothing for the idle timeout"))
        for wait, since in list(self._waits.items()):
            if now - since >= self.idle_timeout:
                del self._waits[wait]
                wait.reschedule(asyncio.get_running_loop().time())  # its task gets TimeoutError at once

    async def _run(self) -> None:
        try:
            while self._bodies or self._waits:
                await asyncio.sleep(self.interval)
                self.check(time.monotonic())
        finally:
            self._task = None

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class Upstream:
    """One endpoint's way to its server: the SDK client that says what a request is, its
    captured requests, and the aiohttp session that sends them.

    `send(template, body)` is the hot path: an `async with` around it gives the response
    body's `StreamReader`; every failure leaves it as the SDK's own error class
    (`APIStatusError` subclasses from the SDK's own factory, `APITimeoutError`,
    `APIConnectionError`), so that `providers.errors.UpstreamErrors` classifies it as before.
    """

    def __init__(
        self, sdk: ModuleType, client: Any, http: CaptureClient, *, connect_timeout: float, idle_timeout: float
    ) -> None:
        self.sdk = sdk
        self.client = client
        self.http = http
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.watchdog = IdleWatchdog(idle_timeout)
        self._templates: dict[str, RequestTemplate] = {}
        self._capturing = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def template(self, key: str, call: Callable[[], Awaitable[object]]) -> RequestTemplate:
        """The request `call` (one of the SDK's own calls) makes, captured the first time `key`
        is asked for; again after the server refused the credentials (see `forget`)."""
        template = self._templates.get(key)
        if template is None:
            async with self._capturing:  # one capture at a time: the client keeps the last request
                self.http.captured = None
                result = await call()
                close = getattr(result, "close", None)
                if close is not None:  # a stream the SDK opened on the empty answer
                    await close()
                assert self.http.captured is not None, "the SDK call sent no request"
                request, transport = self.http.captured
                template = self._templates[key] = _template_of(request, transport)
        return template

    def forget(self) -> None:
        """Capture every request anew: the server refused what the SDK sent."""
        self._templates.clear()

    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            # No cap on connections (every open stream holds one); idle ones are kept for reuse.
            # Proxies come from the captured request, cookies are not kept (the APIs
            # authenticate by header), and only the connect has a timeout of aiohttp's: the
            # idle watchdog and the relay's own deadlines cover the rest.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return session

    def send(self, template: RequestTemplate, body: bytes) -> Exchange:
        return Exchange(self, template, body)

    async def fetch_json(self, template: RequestTemplate, body: bytes) -> Any:
        """A request whose answer is one JSON document (not a stream)."""
        async with self.send(template, body) as reader:
            return loads(await reader.read())

    def status_error(self, template: RequestTemplate, response: aiohttp.ClientResponse, body: bytes) -> Exception:
        """The SDK's own error for a response that is not a success, built by the SDK from an
        `httpx2.Response` holding what aiohttp received."""
        headers = [(name, value) for name, value in response.raw_headers if name.lower() not in _DECODED_HEADERS]
        sdk_response = httpx2.Response(
            response.status, headers=headers, content=body, request=template.sdk_request
        )
        if response.status in (401, 403):
            self.forget()
        return self.client._make_status_error_from_response(sdk_response)  # type: ignore[no-any-return]

    def transport_error(self, template: RequestTemplate, exc: BaseException) -> Exception | None:
        """The SDK's error for a failure of the connection, or None when `exc` is not one."""
        if isinstance(exc, TimeoutError):
            return self.sdk.APITimeoutError(request=template.sdk_request)  # type: ignore[no-any-return]
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return self.sdk.APIConnectionError(request=template.sdk_request)  # type: ignore[no-any-return]
        return None

    async def close(self) -> None:
        await self.watchdog.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.client.close()


class Exchange:
    """One request in flight (`async with upstream.send(...) as body`): the response's body
    reader once its headers are in and its status is a success. Leaving returns the connection
    to the pool when the body was read to its end, and closes it otherwise."""

    __slots__ = ("upstream", "template", "body", "response")

    def __init__(self, upstream: Upstream, template: RequestTemplate, body: bytes) -> None:
        self.upstream = upstream
        self.template = template
        self.body = body
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.StreamReader:
        upstream, template = self.upstream, self.template
        # Not kept while the answer streams: an idle stream would hold its whole prompt (and
        # orjson's output takes a 4 KB block however short it is).
        body, self.body = self.body, b""
        watchdog = upstream.watchdog
        try:
            # Until the headers are in (or an error's body), within the idle timeout, which the
            # watchdog keeps: it fires this `timeout`, which has no timer of its own.
            async with asyncio.timeout(None) as waiting:
                watchdog.watch_wait(waiting)
                try:
                    response = self.response = await upstream.session().post(
                        template.url,
                        data=body,
                        headers=template.headers,
                        proxy=template.proxy,
                        proxy_auth=template.proxy_auth,
                        proxy_headers=template.proxy_headers,
                        ssl=template.ssl,
                    )
                    if not 200 <= response.status < 300:
                        body = await response.read()
                        response.release()
                        raise upstream.status_error(template, response, body)
                finally:
                    watchdog.unwatch_wait(waiting)
        except BaseException as exc:
            if self.response is not None:
                self.response.close()
            mapped = upstream.transport_error(template, exc)
            if mapped is not None:
                raise mapped from exc
            raise
        watchdog.watch(response.content)
        return response.content

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        response = self.response
        assert response is not None
        self.upstream.watchdog.unwatch(response.content)
        if exc is None:
            response.release()
            return
        response.close()
        mapped = self.upstream.transport_error(self.template, exc)
        if mapped is not None:
            raise mapped from exc


def _template_of(request: httpx2.Request, transport: _Keep) -> RequestTemplate:
    proxy = transport.proxy
    proxy_auth = aiohttp.BasicAuth(*proxy.auth) if proxy is not None and proxy.auth else None
    return RequestTemplate(
        url=str(request.url),
        headers={name: value for name, value in request.headers.items() if name.lower() not in _CARRIER_HEADERS},
        proxy=str(proxy.url) if proxy is not None else None,
        proxy_auth=proxy_auth,
        proxy_headers=dict(proxy.headers) if proxy is not None and proxy.headers else None,
        ssl=transport.ssl_context,
        sdk_request=request,
    )
