"""`python -m service [--workers N]`: read settings, set up logging once, serve."""

from __future__ import annotations

import argparse
import gc
import sys

from aiohttp import web

from service.app import create_app
from service.log import configure_logging
from service.protocol_errors import answer_protocol_errors_in_json
from service.settings import ConfigError, Settings, load_settings


async def _freeze_heap(app: web.Application) -> None:
    """After startup, move everything alive into the collector's permanent generation: the SDKs'
    modules and types are some 170,000 objects that a full collection would otherwise walk
    (about 100 ms, a pause every open stream feels) and that live as long as the process."""
    gc.collect()
    gc.freeze()


def server_app(settings: Settings) -> web.Application:
    """The application as a server process runs it: `create_app` plus process-wide tuning."""
    answer_protocol_errors_in_json()
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)  # after the cleanup contexts: the SDK clients exist by then
    return app


def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    app = server_app(settings)
    # handler_cancellation: a client that goes away cancels its handler, which closes the
    # upstream request at once instead of at the next write. The grace period of a shutdown
    # happens in on_shutdown; shutdown_timeout only bounds the handlers' last writes after it.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port or None,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_write_timeout,
        access_log=None,
        print=None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve ai-stream.")
    parser.add_argument("--workers", type=int, default=None, help="processes serving the port (default: AI_WORKERS or 1)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by the supervisor
    args = parser.parse_args(argv)
    try:
        settings = load_settings(**({"workers": args.workers} if args.workers is not None else {}))
    except ConfigError as exc:
        print(f"ai-stream: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.worker:
        serve(settings, reuse_port=True)
        return 0
    if settings.workers > 1:
        from service.workers import Supervisor

        stop_timeout = settings.shutdown_grace + settings.shutdown_write_timeout + 10
        return Supervisor(settings.workers, stop_timeout).run()
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
