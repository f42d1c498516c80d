"""`python -m service [--workers N]`: read settings, set up logging once, serve."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import sys

import structlog
from aiohttp import web

from service.app import create_app
from service.app_keys import MODEL_LOADING, REGISTRY, SETTINGS, STORAGE
from service.asking import NO_MODELS
from service.listening import LISTEN_BACKLOG, listening_sockets
from service.log import configure_logging
from service.protocol_errors import answer_protocol_errors_in_json
from service.settings import ConfigError, Settings, load_settings

log = structlog.get_logger("ai_stream")


# The collector's thresholds once the heap is frozen: its youngest generation is collected after
# this many new container objects instead of CPython's 700. An answer leaves no reference cycle
# behind (tests/test_gc.py), so these passes find nothing to free: at 700 one ran every couple of
# one-token answers, a few per cent of the CPU for nothing. Memory waiting for a pass stays
# small (at most some MB of the objects of error paths, which do make cycles).
GC_THRESHOLDS = (10_000, 20, 20)


def _freeze_heap() -> None:
    """Once the models are loaded, move everything alive into the collector's permanent
    generation: the SDKs' modules and types are some 170,000 objects that a full collection
    would otherwise walk (about 100 ms, a pause every open stream feels) and that live as long
    as the process. Then the collector runs less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _stop() -> None:
    """A process whose SDKs cannot be loaded cannot answer: it stops (exit status 1), so that
    whatever runs it starts it again, rather than serving 503s."""
    asyncio.get_running_loop().call_soon(_graceful_exit)


def _graceful_exit() -> None:
    raise web.GracefulExit()


def event_loop_kind(choice: str | None) -> str:
    """`uvloop` (libuv: transports, timers and the scheduler in C, a drop-in that aiohttp
    supports) unless `AI_EVENT_LOOP=asyncio`, or when it is not installed and was not asked for.
    Raises ConfigError when it was asked for and is not installed."""
    if choice == "asyncio":
        return "asyncio"
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if choice == "uvloop":
        raise ConfigError("invalid setting AI_EVENT_LOOP: uvloop is not installed")
    return "asyncio"


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _announce(app: web.Application) -> None:
    """One start-up line: where the service listens, which models can answer, which store it uses;
    and a warning when no model can (every answer would be a 503)."""
    settings = app[SETTINGS]
    info = app[REGISTRY].info
    log.info(
        "service_started",
        address=f"http://{settings.host}:{settings.port}",
        models=[m.name for m in info if m.has_credentials],
        models_without_credentials=[m.name for m in info if not m.has_credentials],
        store=app[STORAGE].store.backend,
        store_ok=app[STORAGE].ok,
        event_loop=_loop_name(asyncio.get_running_loop()),
    )
    if not any(m.has_credentials for m in info):
        log.warning("no_model_has_credentials", hint=NO_MODELS)


def server_app(settings: Settings) -> web.Application:
    """The application as a server process runs it: `create_app` plus process-wide tuning."""
    answer_protocol_errors_in_json()
    app = create_app(settings)
    # After the cleanup contexts: the store exists by then (the SDK clients come after, see
    # service/model_loading.py).
    app.on_startup.append(_announce)
    app[MODEL_LOADING].after_load(_freeze_heap)
    app[MODEL_LOADING].on_failure(_stop)
    return app


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    loop = new_event_loop(event_loop_kind(settings.event_loop))
    app = server_app(settings)
    # handler_cancellation: a client that goes away cancels its handler, which closes the
    # upstream request at once instead of at the next write. The grace period of a shutdown
    # happens in on_shutdown; shutdown_timeout only bounds the handlers' last writes after it.
    web.run_app(
        app,
        sock=listening_sockets(settings.host, settings.port, reuse_port=reuse_port),
        backlog=LISTEN_BACKLOG,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_write_timeout,
        access_log=None,
        print=None,
        loop=loop,
    )
    return 1 if app[MODEL_LOADING].failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve ai-stream.")
    parser.add_argument("--workers", type=int, default=None, help="processes serving the port (default: AI_WORKERS or 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by the supervisor
    args = parser.parse_args(argv)
    try:
        settings = load_settings(**({"workers": args.workers} if args.workers is not None else {}))
        event_loop_kind(settings.event_loop)  # a loop that cannot be had stops the start here
    except ConfigError as exc:
        print(f"ai-stream: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.worker:
        return serve(settings, reuse_port=True)
    if settings.workers > 1:
        from service.workers import Supervisor

        stop_timeout = settings.shutdown_grace + settings.shutdown_write_timeout + 10
        return Supervisor(settings.workers, stop_timeout).run()
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
