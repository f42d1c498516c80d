"""Small helpers shared by the benchmark's processes (kept free of heavy imports)."""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
from collections.abc import Callable
from types import FrameType

LOOPS = ("asyncio", "uvloop")


def raise_nofile_limit() -> int:
    """Raise the open-file limit to the hard limit (1,000 idle streams need ~2,000 fds); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (and SIGHUP) act like Ctrl-C, so that cleanup in `finally` blocks runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)


def new_event_loop(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the event loop `name` (`asyncio`: the standard library's default loop;
    `uvloop`: libuv's, from the `uvloop` package); SystemExit with the fix when it is missing."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name != "uvloop":
        raise SystemExit(f"unknown event loop {name!r}: choose one of {', '.join(LOOPS)}")
    try:
        import uvloop
    except ImportError:
        raise SystemExit("the uvloop event loop was asked for but uvloop is not installed: pip install uvloop") from None
    return uvloop.new_event_loop
