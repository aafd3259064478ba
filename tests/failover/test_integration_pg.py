"""The failover controller against a real PostgreSQL 15 that the session starts itself.

Controllers run on threads with fake service managers that record every start/stop with a
monotonic timestamp (one clock for all of them, since they share the process), so the tests can
check orderings exactly: a fenced leader's stop happens before the next holder's start.
Short timings: ttl 3 s, renew every 0.5 s, safety margin 1 s, database calls bounded at 0.8 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from airflow_ha.failover import cli
from airflow_ha.failover.controller import Controller
from airflow_ha.failover.lease import LeaseStore, LeaseStoreError, MemberReport

from conftest import PgServer, TcpProxy
from failover_fakes import EventLog, FakeHealth, RecordingServices, make_policy

pytestmark = pytest.mark.integration

TTL, INTERVAL, MARGIN, DB_TIMEOUT = 3.0, 0.5, 1.0, 0.8
UNIT = "airflow-scheduler.service"


def app_dsn(pg: PgServer, port: int | None = None) -> str:
    return f"host=127.0.0.1 port={port or pg.port} user=airflow password=airflow-pw dbname=airflow"


@pytest.fixture
def lease_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


class Runner:
    """One controller looping on its own thread (what ``Controller.run`` does, minus signals)."""

    def __init__(self, ctl: Controller, services: RecordingServices) -> None:
        self.ctl = ctl
        self.services = services
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"ctl-{ctl.policy.node}")
        self.errors: list[BaseException] = []

    def _loop(self) -> None:
        try:
            while not self._halt.is_set():
                self._halt.wait(self.ctl.run_once())
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)
            raise

    def start(self) -> Runner:
        self._thread.start()
        return self

    def crash(self) -> float:
        """The host vanishes: no more loops, no release, its units are gone."""
        self._halt.set()
        self._thread.join(5)
        t = time.monotonic()
        self.services.crash()
        return t

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(10)
        self.ctl.shutdown()

    @property
    def name(self) -> str:
        return self.ctl.policy.node

    @property
    def leading(self) -> bool:
        return self.ctl.state.is_leader


@dataclass
class Cluster:
    pg: PgServer
    lease_name: str
    log: EventLog = field(default_factory=EventLog)
    runners: list[Runner] = field(default_factory=list)
    samples: list[tuple[float, list[str]]] = field(default_factory=list)
    _sampling: threading.Event = field(default_factory=threading.Event)

    def add(self, node: str, port: int | None = None, **policy: float) -> Runner:
        store = LeaseStore(
            app_dsn(self.pg, port),
            self.lease_name,
            node_name=node,
            connect_timeout=2,
            statement_timeout=0.3,
            tcp_user_timeout=TTL,
        )
        services = RecordingServices(node, self.log, time.monotonic, stop_duration=0.05)
        values = {"ttl": TTL, "renew_interval": INTERVAL, "safety_margin": MARGIN, "units": (UNIT,)}
        values.update(policy)
        ctl = Controller(
            make_policy(node, **values),
            store,
            services,
            FakeHealth(),
            db_timeout=DB_TIMEOUT,
            notify=lambda _m: None,
        )
        runner = Runner(ctl, services)
        self.runners.append(runner)
        return runner

    def start_sampling(self, every: float = 0.02) -> None:
        def sample() -> None:
            while not self._sampling.is_set():
                self.samples.append((time.monotonic(), [r.name for r in self.runners if r.leading]))
                time.sleep(every)

        threading.Thread(target=sample, daemon=True, name="sampler").start()

    def leaders(self) -> list[str]:
        return [r.name for r in self.runners if r.leading]

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return time.monotonic()
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; events: {self.log.events}")

    def first(self, node: str, kind: str) -> float:
        events = self.log.of(node, kind)
        assert events, f"no {kind} by {node}: {self.log.events}"
        return events[0].t

    def close(self) -> None:
        self._sampling.set()
        for r in self.runners:
            r._halt.set()
        for r in self.runners:
            r._thread.join(5)
            r.ctl.store.close()
        for r in self.runners:
            assert not r.errors, r.errors

    def lease_row(self) -> tuple[str | None, int]:
        rows = admin_query(
            self.pg, "SELECT holder, epoch FROM airflow_ha_lease WHERE name = %s", self.lease_name
        )
        assert rows
        holder, epoch = rows[0]
        return holder, epoch  # type: ignore[return-value]


@pytest.fixture
def cluster(postgres_server: PgServer, lease_name: str) -> Iterator[Cluster]:
    c = Cluster(postgres_server, lease_name)
    yield c
    c.close()


def admin_query(pg: PgServer, sql: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(pg.admin_dsn.replace("dbname=postgres", "dbname=airflow"), autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


# ------------------------------------------------------------------------------------------------
# The SQL itself


def test_lease_sql_semantics(postgres_server: PgServer, lease_name: str) -> None:
    a = LeaseStore(app_dsn(postgres_server), lease_name, node_name="a")
    b = LeaseStore(app_dsn(postgres_server), lease_name, node_name="b")
    try:
        # a standby that may not take over does not even create the lease
        s = b.acquire("b", 2.0, may_take=False)
        assert not s.held
        s = a.acquire("a", 2.0, may_take=True)
        assert (s.held, s.holder, s.epoch) == (True, "a", 1)
        assert 1.9 < s.remaining <= 2.0  # database clock
        # renewing keeps the epoch; others cannot take a live lease
        assert a.acquire("a", 2.0, may_take=False).epoch == 1
        s = b.acquire("b", 2.0, may_take=True)
        assert (s.held, s.holder, s.epoch) == (False, "a", 1)
        # after expiry (database clock) b takes it, with a new epoch
        time.sleep(2.1)
        s = b.acquire("b", 2.0, may_take=True)
        assert (s.held, s.holder, s.epoch, s.last_holder) == (True, "b", 2, "a")
        # a's renew now fails: it is not the holder any more
        s = a.acquire("a", 2.0, may_take=True)
        assert (s.held, s.holder) == (False, "b")
        # pause: nobody takes over, the holder keeps renewing
        b.set_paused(True, "tester", "maintenance")
        time.sleep(2.1)
        assert not a.acquire("a", 2.0, may_take=True).held
        s = b.acquire("b", 2.0, may_take=True)
        assert (s.held, s.paused) == (True, True)
        assert b.request_step_down("tester") is None  # refused while paused
        b.set_paused(False, "tester")
        # step-down request targets the current epoch
        assert b.request_step_down("tester") == ("b", 2)
        s = b.acquire("b", 2.0, may_take=True)
        assert s.step_down_requested
        # release: stale epochs cannot release, the real one can; re-acquiring bumps the epoch
        assert not b.release("b", 1)
        assert b.release("b", 2)
        s = b.acquire("b", 2.0, may_take=True)
        assert (s.held, s.epoch, s.step_down_requested) == (True, 3, False)
        info = a.read()
        assert info is not None
        assert (info.holder, info.epoch, info.live_holder, info.paused) == ("b", 3, "b", False)
        assert info.renewed_ago is not None
        assert info.renewed_ago < 1
        # member reports: count of OTHER fresh, healthy standbys
        assert a.heartbeat(MemberReport("a", "standby", True, "ready", None, 1, "t", 5.0), 3.0) == 0
        assert b.heartbeat(MemberReport("b", "leader", True, "ok", 3, 2, "t", 5.0), 3.0) == 1
        members = {m.host: m for m in a.members()}
        assert members["a"].role == "standby"
        assert members["b"].epoch == 3
        assert members["b"].uptime == pytest.approx(5.0, abs=1.0)
    finally:
        a.close()
        b.close()


def test_schema_creation_is_idempotent_and_safe_when_hosts_start_together(postgres_server: PgServer) -> None:
    admin_query(postgres_server, "DROP TABLE IF EXISTS airflow_ha_lease, airflow_ha_member")
    errors: list[BaseException] = []
    stores = [LeaseStore(app_dsn(postgres_server), f"s{i}", node_name=f"n{i}") for i in range(6)]

    def go(store: LeaseStore) -> None:
        try:
            store.ensure_schema()
            store.ensure_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert not errors
    rows = admin_query(postgres_server, "SELECT count(*) FROM airflow_ha_lease WHERE name LIKE 's_'")
    assert rows == [(6,)]


def test_unreachable_database_is_a_clean_error(lease_name: str) -> None:
    store = LeaseStore("host=127.0.0.1 port=1 user=x dbname=x", lease_name, connect_timeout=2)
    with pytest.raises(LeaseStoreError, match="cannot connect"):
        store.acquire("a", 3.0, may_take=True)


# ------------------------------------------------------------------------------------------------
# Controllers racing, fencing, restarts


def test_racing_controllers_exactly_one_leader_at_every_instant(cluster: Cluster) -> None:
    runners = [cluster.add(n) for n in ("a", "b", "c")]
    cluster.start_sampling()
    for r in runners:
        r.start()
    t_first = cluster.wait_for(lambda: len(cluster.leaders()) == 1, 5, "a leader")
    time.sleep(3.0)
    steady = [names for t, names in cluster.samples if t > t_first + 0.1]
    assert len(steady) > 50
    assert all(len(names) == 1 for names in steady), steady
    assert all(len(names) <= 1 for _, names in cluster.samples)
    assert cluster.log.max_concurrent_nodes() == 1
    holder, epoch = cluster.lease_row()
    assert (holder, epoch) == (cluster.leaders()[0], 1)


def test_terminated_backend_alone_does_not_cost_leadership(cluster: Cluster) -> None:
    a = cluster.add("a").start()
    cluster.wait_for(lambda: a.leading, 5, "a leads")
    b = cluster.add("b").start()
    time.sleep(1.0)
    killed = admin_query(
        cluster.pg,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        "airflow-ha-failover:a",
    )
    assert killed
    assert all(row[0] for row in killed)
    time.sleep(TTL + 2 * INTERVAL)  # long enough for the lease to have moved, had a lost it
    assert a.leading
    assert not b.leading
    assert cluster.log.of("a", "stop") == []
    assert cluster.lease_row() == ("a", 1)


@pytest.mark.parametrize("cut", ["terminate+refuse", "blackhole"])
def test_cut_leader_fences_before_the_standby_acquires(
    cluster: Cluster, proxy_factory: Callable[[], TcpProxy], cut: str
) -> None:
    proxy = proxy_factory()
    a = cluster.add("a", port=proxy.port).start()
    cluster.wait_for(lambda: a.leading, 5, "a leads")
    b = cluster.add("b").start()
    cluster.start_sampling()
    time.sleep(1.5)
    if cut == "blackhole":
        proxy.set_mode("blackhole")  # packets vanish: the renew hangs until our own timeout
    else:
        proxy.set_mode("refuse")  # no reconnects...
        admin_query(  # ...and its session is killed server-side
            cluster.pg,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            "airflow-ha-failover:a",
        )
    t_cut = time.monotonic()
    cluster.wait_for(lambda: b.leading, TTL + 3 * INTERVAL + 2, "b takes over")
    time.sleep(0.3)
    fence = cluster.first("a", "stop")
    start_b = cluster.first("b", "start")
    assert fence < start_b, (fence, start_b)
    assert start_b - fence >= MARGIN - 0.3  # the margin really is there
    assert fence - t_cut <= TTL - MARGIN + 0.3  # fenced at its deadline, not later
    assert start_b - t_cut <= TTL + INTERVAL + DB_TIMEOUT + 0.5
    assert cluster.log.max_concurrent_nodes() == 1
    assert all(len(names) <= 1 for _, names in cluster.samples)
    assert a.ctl.state.role.value == "fenced"
    assert cluster.lease_row() == ("b", 2)
    # the network comes back: a stays a standby
    proxy.set_mode("pass")
    time.sleep(2 * INTERVAL + DB_TIMEOUT)
    assert cluster.leaders() == ["b"]
    assert a.ctl.state.role.value == "standby"


def test_database_restart_never_gives_two_leaders(cluster: Cluster) -> None:
    a = cluster.add("a").start()
    cluster.wait_for(lambda: a.leading, 5, "a leads")
    cluster.add("b").start()
    cluster.start_sampling()
    time.sleep(1.0)
    cluster.pg.restart()
    time.sleep(TTL + 2 * INTERVAL)
    assert all(len(names) <= 1 for _, names in cluster.samples)
    assert cluster.log.max_concurrent_nodes() == 1
    assert len(cluster.leaders()) == 1
    holder, epoch = cluster.lease_row()
    assert holder == cluster.leaders()[0]
    if epoch == 1:  # kept leadership across the restart: it never stopped its units
        assert holder == "a"
        assert cluster.log.of("a", "stop") == []
    else:  # or it fenced first, then someone (maybe a again) took over
        assert cluster.log.of("a", "stop")


def test_expiry_based_takeover_time(cluster: Cluster) -> None:
    a = cluster.add("a").start()
    cluster.wait_for(lambda: a.leading, 5, "a leads")
    b = cluster.add("b").start()
    time.sleep(1.2)
    t_crash = a.crash()
    expires = admin_query(
        cluster.pg, "SELECT expires_at FROM airflow_ha_lease WHERE name = %s", cluster.lease_name
    )[0][0]
    t_b = cluster.wait_for(lambda: b.leading, TTL + INTERVAL + 2, "b takes over")
    acquired = admin_query(
        cluster.pg, "SELECT acquired_at FROM airflow_ha_lease WHERE name = %s", cluster.lease_name
    )[0][0]
    takeover = t_b - t_crash
    print(f"takeover after leader vanished: {takeover:.2f}s (ttl {TTL}, interval {INTERVAL})")
    assert isinstance(acquired, datetime)
    assert isinstance(expires, datetime)
    assert acquired >= expires  # database clock: not before the old lease expired
    assert takeover <= TTL + INTERVAL + 0.3
    assert takeover >= TTL - INTERVAL - 0.3  # not early either
    assert cluster.lease_row() == ("b", 2)


# ------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def config_file(tmp_path: Path, postgres_server: PgServer, lease_name: str) -> Path:
    path = tmp_path / "failover.toml"
    path.write_text(
        f"""
dsn = "{app_dsn(postgres_server)}"
node_name = "cli-node"
lease_name = "{lease_name}"
units = ["{UNIT}"]
ttl = {TTL}
renew_interval = {INTERVAL}
safety_margin = {MARGIN}
stop_timeout = 0.5
systemctl_timeout = 0.3
statement_timeout = 0.3
db_timeout = {DB_TIMEOUT}
dry_run = true

[health]
urls = []
timeout = 0.3
"""
    )
    return path


def test_cli_status_pause_resume_and_step_down(
    cluster: Cluster, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["-c", str(config_file)]
    assert cli.main([*cfg, "status"]) == 1  # no controller yet
    capsys.readouterr()
    a = cluster.add("a", step_down_cooldown=30.0).start()
    cluster.wait_for(lambda: a.leading, 5, "a leads")
    b = cluster.add("b", step_down_cooldown=30.0).start()
    time.sleep(1.0)
    assert cli.main([*cfg, "status"]) == 0
    out = capsys.readouterr().out
    assert f"lease {cluster.lease_name!r}: leader a, epoch 1" in out
    assert "failover: active" in out
    assert "a     leader" in out
    assert "b     standby" in out
    assert cli.main([*cfg, "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["live_holder"] == "a"
    assert {m["host"] for m in data["members"]} == {"a", "b"}

    # pause: the leader vanishes and nobody takes over
    assert cli.main([*cfg, "pause", "--reason", "upgrade"]) == 0
    assert "failover paused" in capsys.readouterr().out
    assert cli.main([*cfg, "step-down"]) == 1  # refused while paused
    assert "paused" in capsys.readouterr().err
    a.crash()
    time.sleep(TTL + 2 * INTERVAL)
    assert not b.leading
    assert cli.main([*cfg, "status"]) == 1
    out = capsys.readouterr().out
    assert "NO LEADER" in out
    assert "PAUSED" in out
    # resume: b takes over at its next loop
    assert cli.main([*cfg, "resume"]) == 0
    capsys.readouterr()
    cluster.wait_for(lambda: b.leading, 2 * INTERVAL + 1, "b takes over after resume")

    # step-down: b hands over to a fresh standby c
    c = cluster.add("c").start()
    time.sleep(1.0)
    t0 = time.monotonic()
    assert cli.main([*cfg, "step-down", "--wait", "5"]) == 0
    out = capsys.readouterr().out
    assert "asked b (epoch 2) to step down" in out
    assert "new leader: c (epoch 3)" in out
    assert time.monotonic() - t0 < 3 * INTERVAL + 2
    assert c.leading
    assert cluster.first("b", "stop") < cluster.first("c", "start")
    assert cluster.log.max_concurrent_nodes() == 1


def test_daemon_exits_zero_on_sigterm_and_releases(
    postgres_server: PgServer, config_file: Path, lease_name: str
) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    env = dict(os.environ, PYTHONPATH=str(src))
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_ha.failover", "-c", str(config_file), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        store = LeaseStore(app_dsn(postgres_server), lease_name)
        end = time.monotonic() + 15
        info = None
        while time.monotonic() < end:
            try:
                info = store.read()
            except LeaseStoreError:
                info = None
            if info is not None and info.live_holder == "cli-node":
                break
            time.sleep(0.1)
        assert info is not None
        assert info.live_holder == "cli-node"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        output = proc.stdout.read() if proc.stdout else ""
        assert rc == 0, output
        info = store.read()
        assert info is not None
        assert info.holder is None  # released, not left to expire
        assert info.last_holder == "cli-node"
        assert "ACQUIRED lease (epoch 1" in output
        assert "dry-run: would start airflow-scheduler.service" in output
        assert "dry-run: would stop airflow-scheduler.service" in output
        assert "RELEASED lease (epoch 1)" in output
        members = {m.host: m for m in store.members()}
        assert members["cli-node"].role == "stopped"
        store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
