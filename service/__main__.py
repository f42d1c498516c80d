"""`python -m service`: read settings, set up logging once, serve."""

from __future__ import annotations

import sys

from aiohttp import web

from service.app import create_app
from service.log import configure_logging
from service.settings import ConfigError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ai-stream: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # handler_cancellation: a client that goes away cancels its handler, which closes the
    # upstream request at once instead of at the next write.
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        handler_cancellation=True,
        access_log=None,
        print=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
