"""The listening sockets: every accepted connection has the dead-peer timeout, and binding
behaves as aiohttp's own would."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

from service import __main__ as entry
from service.listening import LISTEN_BACKLOG, SEND_TIMEOUT_SECONDS, listening_sockets

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")


def _accepted(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    listener.listen()
    client = socket.create_connection(listener.getsockname()[:2], timeout=5)
    accepted, _ = listener.accept()
    return client, accepted


def test_an_accepted_connection_has_the_dead_peer_timeout():
    [listener] = listening_sockets("127.0.0.1", 0)
    with listener:
        client, accepted = _accepted(listener)
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == SEND_TIMEOUT_SECONDS * 1000
            # Only the service's side: the client's connection keeps the kernel's default.
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0


def test_workers_share_a_port_only_with_reuse_port():
    [first] = listening_sockets("127.0.0.1", 0, reuse_port=True)
    with first:
        port = first.getsockname()[1]
        first.listen()
        [second] = listening_sockets("127.0.0.1", port, reuse_port=True)
        second.close()
        with pytest.raises(OSError):
            listening_sockets("127.0.0.1", port)


def test_a_port_in_use_is_an_error_and_leaves_no_socket_behind():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        probe = (
            "import os, sys; from service.listening import listening_sockets\n"
            "before = len(os.listdir('/proc/self/fd'))\n"
            "try:\n    listening_sockets('127.0.0.1', int(sys.argv[1]))\nexcept OSError as exc:\n    print(exc.errno)\n"
            "print(len(os.listdir('/proc/self/fd')) - before)\n"
        )
        port = str(taken.getsockname()[1])
        out = subprocess.run([sys.executable, "-c", probe, port], capture_output=True, text=True, check=True)
        errno_, left_open = out.stdout.split()
        assert int(errno_) == errno.EADDRINUSE and left_open == "0"  # and the failed socket closed


def test_every_address_of_the_host_gets_a_socket():
    sockets = listening_sockets("localhost", 0)
    try:
        families = {sock.family for sock in sockets}
        expected = {info[0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
        assert families == expected
        for sock in sockets:
            if sock.family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in sockets:
            sock.close()


def test_the_service_serves_on_these_sockets(monkeypatch, make_settings):
    """`python -m service` hands aiohttp its own sockets (and backlog), not a host and port."""
    given: dict = {}

    def run_app(app, **kwargs):
        given.update(kwargs)
        kwargs["loop"].close()

    monkeypatch.setattr(entry.web, "run_app", run_app)
    assert entry.serve(make_settings(host="127.0.0.1", port=0)) == 0
    sockets = given.pop("sock")
    try:
        assert "host" not in given and "port" not in given and given["backlog"] == LISTEN_BACKLOG
        [listener] = sockets
        client, accepted = _accepted(listener)
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == SEND_TIMEOUT_SECONDS * 1000
    finally:
        for sock in sockets:
            sock.close()
