"""The sockets the service listens on, made here rather than by aiohttp so that every accepted
connection starts with the options a streaming service wants.

`TCP_USER_TIMEOUT` (Linux): the kernel aborts a connection whose sent data stays unacknowledged
for that long, so a peer that vanished (a closed laptop, a dropped route) is found by the next
event or keep-alive, long before enough unsent data piles up for a write to block. aiohttp-sse
sets it on each stream's socket and restores it at the end, several system calls per answer (on
uvloop, each through a socket object made anew); set on the listening socket, it is inherited by
every accepted connection: none per request.
"""

from __future__ import annotations

import socket

# aiohttp-sse's own default send timeout, which the keep-alive writes keep as well.
SEND_TIMEOUT_SECONDS = 120
# Connections the kernel holds for the service before it accepts them (capped by the kernel's
# net.core.somaxconn). aiohttp's default of 128 overflows when a burst of clients connects at
# once (thousands of streams opening after a deploy, a reconnect storm): the kernel then drops
# their SYNs or, with SYN cookies, resets connections that the client already sent its request
# on. At 2,250 clients connecting within seconds the relay benchmark's overload phase saw 50 of
# them reset with 128.
LISTEN_BACKLOG = 4096
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)


def listening_sockets(host: str | None, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound (not yet listening: the server listens with LISTEN_BACKLOG) sockets for every
    address `host` stands for (all of this machine's for an empty or no host), as
    `loop.create_server` would make them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    made: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 address has its own
            if _TCP_USER_TIMEOUT is not None and family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, SEND_TIMEOUT_SECONDS * 1000)
            sock.bind(address)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made
