"""The models' SDKs are loaded after the service listens, so that /health answers at once.

Importing a vendor SDK takes about a second (the Anthropic SDK alone loads some 3,200 modules),
longer than everything else the service does to start. The configuration is known at once: the
registry's models, their options and circuits exist from the start, and /health and the status
page show them. The SDKs are imported, and their clients made, in a thread of their own; until
that is done, a request that needs a model (a new answer, a token count) waits for it, and
/health says `models_ready: false`. Then the chain gets its models, and the hooks registered
with `after_load` run (the heap is frozen, the summary model found), before any waiting
request goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from providers.circuit import Circuit
from providers.factory import ModelRegistry
from providers.fallback import FallbackChain
from service.app_keys import CHAIN, MODEL_LOADING, REGISTRY, SETTINGS
from service.errors import ApiError
from service.outcome import SHUTDOWN_MESSAGE

log = structlog.get_logger("ai_stream")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Seconds a shutdown during start waits for the SDKs' import to end, to close the clients it makes.
LOAD_WAIT_AT_SHUTDOWN = 5.0


class ModelLoading:
    """Where the loading of the models stands: `ready` once the chain has its models; `failed`
    when the SDKs could not be loaded (the entry point then stops the process, exit status 1)."""

    def __init__(self) -> None:
        self.ready = False
        self.failed = False
        self.seconds: float | None = None  # how long the load took
        self._done = asyncio.Event()
        self._after: list[Callable[[], None]] = []
        self._on_failure: list[Callable[[], None]] = []

    def after_load(self, hook: Callable[[], None]) -> None:
        """Run `hook` once the models are loaded, before any request waiting for them goes on."""
        self._after.append(hook)

    def on_failure(self, hook: Callable[[], None]) -> None:
        """Run `hook` if the models cannot be loaded."""
        self._on_failure.append(hook)

    async def wait(self) -> None:
        """Until the models are loaded; 503 `shutting_down` if they cannot be."""
        await self.wait_settled()
        if not self.ready:  # failed, or the service stops before the models were loaded
            raise ApiError(503, "shutting_down", SHUTDOWN_MESSAGE)

    async def wait_settled(self) -> None:
        """Until the models are loaded, failed to load, or the service stopped waiting for them."""
        await self._done.wait()

    def abandon(self) -> None:
        """The service stops: requests still waiting for the models are answered 503 at once."""
        self._done.set()

    async def load(self, registry: ModelRegistry, chain: FallbackChain) -> None:
        """`registry.load()` in a daemon thread (an import cannot be interrupted, and a shutdown
        need not wait for one), then, on the loop, the chain's models and the hooks."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def in_thread() -> None:
            outcome: BaseException | None = None
            try:
                registry.load()
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which logs it
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: the service has stopped
                loop.call_soon_threadsafe(_settle, finished, outcome)

        started = time.perf_counter()
        threading.Thread(target=in_thread, name="load-models", daemon=True).start()
        try:
            await finished
            if self._done.is_set():
                return  # abandoned meanwhile
            await registry.prepare()  # each model's request built by its SDK once, before any answer
            chain.set_models(registry.models)
            for hook in self._after:
                hook()
        except Exception:
            log.exception("models_failed")
            self.failed = True
            for hook in self._on_failure:
                hook()
        else:
            self.seconds = round(time.perf_counter() - started, 2)
            self.ready = True
            log.info("models_loaded", models=[model.name for model in chain.models], seconds=self.seconds)
        finally:
            self._done.set()


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


async def models_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the registry and the chain, at once and without models; their loading in the
    background; at shutdown, the SDK clients closed (a load still under way is left to itself)."""
    settings = app[SETTINGS]
    registry = app[REGISTRY] = ModelRegistry(
        settings.catalog, connect_timeout=settings.connect_timeout, idle_timeout=settings.idle_timeout, load=False
    )
    app[CHAIN] = FallbackChain(
        (),
        options=registry.options,
        first_token_timeout=settings.first_token_timeout,
        retry_after_max=settings.retry_after_max,
        # The circuits exist from the start, for /health and the status page.
        circuits={name: Circuit(settings.cooldown_failures, settings.cooldown_seconds) for name in registry.usable},
    )
    loading = app[MODEL_LOADING]
    task = asyncio.create_task(loading.load(registry, app[CHAIN]), name="load-models")
    yield
    # Stopped while still loading (see `stop_waiting`): the clients are closed once the thread has
    # made them; an import that takes longer than that is left to itself (nothing used it).
    await asyncio.wait({task}, timeout=LOAD_WAIT_AT_SHUTDOWN)
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    await registry.close()


async def stop_waiting(app: web.Application) -> None:
    """on_shutdown: requests still waiting for the models are answered 503 `shutting_down`."""
    app[MODEL_LOADING].abandon()


def needs_models(handler: Handler) -> Handler:
    """Marks a route that asks a model without opening an answer (a new answer is marked
    `opens_answer`): it waits for the models to be loaded."""
    handler.needs_models = True  # type: ignore[attr-defined]
    return handler


def models_gate() -> Callable[..., Awaitable[web.StreamResponse]]:
    """Holds a request that needs a model until the models are loaded (only right after start).
    Once they are, a plain pass-through: no frame of its own stays alive as long as a stream."""

    @web.middleware
    def gate(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        loading = request.app[MODEL_LOADING]
        if not loading.ready:
            route = request.match_info.handler
            if getattr(route, "opens_answer", False) or getattr(route, "needs_models", False):
                return _when_loaded(loading, request, handler)
        return handler(request)

    return gate


async def _when_loaded(loading: ModelLoading, request: web.Request, handler: Handler) -> web.StreamResponse:
    await loading.wait()
    return await handler(request)
