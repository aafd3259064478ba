"""Fixtures for the failover controller tests.

Unit tests: ``clock`` and ``sim`` (see failover_fakes.py).

Integration tests: a real PostgreSQL 15 server started for the session (installed with apt-get if
missing), run as an unprivileged user on a free localhost port, plus a TCP proxy that can cut or
black-hole one controller's connections.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from failover_fakes import FakeClock, FakeLeaseDB, Sim


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Sim:
    return Sim(clock, FakeLeaseDB(clock))


# ------------------------------------------------------------------------------------------------
# A real PostgreSQL server for the integration tests

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")


def _ensure_postgres_installed() -> None:
    if (PG_BIN / "initdb").exists():
        return
    if os.geteuid() != 0:
        pytest.fail(
            f"{PG_BIN / 'initdb'} is missing and this user cannot install it: "
            f"run `apt-get install postgresql-{PG_VERSION}` as root, then the tests again"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    conf = Path("/etc/postgresql-common/createcluster.conf")
    if not conf.exists():  # do not let the package create and start a 15/main cluster
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("create_main_cluster = false\n")
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", f"postgresql-{PG_VERSION}"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            output = f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            pytest.fail(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{output}")
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"postgresql-{PG_VERSION} installed but {PG_BIN / 'initdb'} is still missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    datadir: Path
    port: int
    run_as: str | None
    admin_dsn: str
    app_dsn: str
    logfile: Path

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        cmd = self._cmd(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), *args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}\n--- server log ---\n{tail}"
            )

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast", "-w", "-t", "30", "-o", self._options())

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=60"
        )

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.admin_dsn, autocommit=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    _ensure_postgres_installed()
    run_as: str | None = None
    if os.geteuid() == 0:
        for candidate in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(candidate)
                run_as = candidate
                break
        if run_as is None:
            pytest.fail(
                "running as root but neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL"
            )
    base = Path(tempfile.mkdtemp(prefix="airflow-ha-pg-"))
    datadir = base / "data"
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    server = PgServer(
        datadir=datadir,
        port=port,
        run_as=run_as,
        admin_dsn=f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
        app_dsn=f"host=127.0.0.1 port={port} user=airflow password=airflow-pw dbname=airflow",
        logfile=base / "server.log",
    )
    initdb = server._cmd(
        str(PG_BIN / "initdb"),
        "-D",
        str(datadir),
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
    )
    proc = subprocess.run(initdb, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {proc.stdout}{proc.stderr}")
    try:
        server.pg_ctl("start", "-w", "-t", "30", "-o", server._options())
    except RuntimeError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(str(exc))
    try:
        with server.admin() as conn:
            conn.execute("CREATE ROLE airflow LOGIN PASSWORD 'airflow-pw'")
            conn.execute("CREATE DATABASE airflow OWNER airflow")
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# A TCP proxy that can cut or black-hole connections


class TcpProxy:
    """127.0.0.1:<port> -> target. Modes: ``pass``; ``blackhole`` (accept, forward nothing, never
    answer: a dead network); ``refuse`` (close every connection at once: a cut cable + RST)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.mode = "pass"
        self._closed = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept").start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "blackhole", "refuse")
        self.mode = mode
        if mode == "refuse":
            self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            socks, self._socks = set(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                s.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            with self._lock:
                self._socks.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        while self.mode == "blackhole" and not self._closed:
            time.sleep(0.05)  # hold the connection, never connect upstream
        if self.mode != "pass" or self._closed:
            with contextlib.suppress(OSError):
                client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks.add(upstream)
        pair = {client: upstream, upstream: client}
        try:
            while not self._closed:
                if self.mode == "refuse":
                    return
                if self.mode == "blackhole":
                    time.sleep(0.05)  # read nothing, forward nothing
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.05)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        self._close_all()


@pytest.fixture
def proxy_factory(postgres_server: PgServer) -> Iterator[Callable[[], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make() -> TcpProxy:
        p = TcpProxy(postgres_server.port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()
