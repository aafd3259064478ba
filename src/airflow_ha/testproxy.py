"""A small HTTPS (CONNECT) forward proxy for tests: proves that hosts install through a proxy.

The Molecule scenario that installs Airflow from a package index points the hosts' pip at this
proxy (``airflow_common_https_proxy``); the test then checks which hosts the proxy tunnelled to.
It only handles ``CONNECT host:port`` (what pip sends for https:// URLs) and answers anything
else with 405. Not for production use: no authentication, no access control.
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_MAX_HEADER = 16384


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(client, selectors.EVENT_READ, upstream)
    sel.register(upstream, selectors.EVENT_READ, client)
    try:
        while True:
            for key, _ in sel.select(timeout=300):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()


class _Handler(socketserver.BaseRequestHandler):
    server: ConnectProxy

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _MAX_HEADER:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target, *_ = [*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""]
        if method != "CONNECT" or ":" not in target:
            self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except (OSError, ValueError) as exc:
            self.server.record(target, ok=False)
            self.request.sendall(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}".encode())
            return
        self.server.record(target, ok=True)
        with upstream:
            upstream.settimeout(None)
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            _relay(self.request, upstream)


class ConnectProxy(socketserver.ThreadingTCPServer):
    """Listens on ``address``; ``tunnels`` lists each ``host:port`` a client asked for."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int] = ("0.0.0.0", 0)) -> None:
        super().__init__(address, _Handler)
        self._lock = threading.Lock()
        self.tunnels: list[str] = []
        self.refused: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def record(self, target: str, *, ok: bool) -> None:
        with self._lock:
            (self.tunnels if ok else self.refused).append(target)


@contextmanager
def running_proxy(address: tuple[str, int] = ("0.0.0.0", 0)) -> Iterator[ConnectProxy]:
    """Serve a :class:`ConnectProxy` in a background thread for the duration of the block."""
    proxy = ConnectProxy(address)
    thread = threading.Thread(target=proxy.serve_forever, name="connect-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)
