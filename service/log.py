"""structlog set-up, done once by the entry point."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp import http_exceptions, web_protocol

# What a client's broken or cut request body raises inside aiohttp.
_CLIENT_FAULTS = (web_protocol.RequestPayloadError, http_exceptions.ContentEncodingError)


# Whether info lines are written (False once configured above info): the canonical request line
# is then not even built.
info_enabled = True


def writes_info(level: str) -> bool:
    return logging.getLevelNamesMapping()[level.upper()] <= logging.INFO


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    global info_enabled
    info_enabled = writes_info(level)
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Other libraries' log records (aiohttp, asyncio) are rendered the same way, one line each;
    # aiohttp's access log repeats the canonical request line, so only warnings are kept.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_client_faults_as_warnings)


def _client_faults_as_warnings(record: logging.LogRecord) -> bool:
    """aiohttp logs a body it could not read (a broken Content-Encoding, a connection cut
    mid-body) as an unhandled exception with a traceback after the client already got its
    400: a fault of the client's, logged as one warning line without the traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, _CLIENT_FAULTS):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = f"request body unreadable ({type(exc).__name__})", ()
        record.exc_info = record.exc_text = None
    return True
