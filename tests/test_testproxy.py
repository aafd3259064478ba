"""The test proxy tunnels CONNECT requests, records them, and refuses anything else."""

from __future__ import annotations

import socket
import socketserver
import threading

import pytest

from airflow_ha.testproxy import running_proxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data.upper())


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _ask(port: int, request: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1024)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def test_connect_is_tunnelled_and_recorded(echo_server):
    with running_proxy(("127.0.0.1", 0)) as proxy:
        target = f"127.0.0.1:{echo_server}"
        sock, answer = _ask(proxy.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        with sock:
            assert answer.startswith(b"HTTP/1.1 200")
            sock.sendall(b"hello")
            assert sock.recv(1024) == b"HELLO"
        assert proxy.tunnels == [target]


def test_plain_requests_are_refused():
    with running_proxy(("127.0.0.1", 0)) as proxy:
        sock, answer = _ask(proxy.port, b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n")
        sock.close()
        assert answer.startswith(b"HTTP/1.1 405")
        assert proxy.tunnels == []


def test_an_unreachable_target_answers_502_and_is_recorded():
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with running_proxy(("127.0.0.1", 0)) as proxy:
        sock, answer = _ask(proxy.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        sock.close()
        assert answer.startswith(b"HTTP/1.1 502")
        assert proxy.refused == [f"127.0.0.1:{port}"]
