"""Fakes for the failover controller's unit tests (imported by the tests and by conftest.py).

A fake clock, an in-memory lease database with the same semantics as the SQL (on its own clock,
deliberately offset from the hosts' clocks), fake service managers and health checkers, and a
discrete-event simulation that drives several controllers against one fake database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_ha.failover.controller import CallTimeout, Controller
from airflow_ha.failover.decisions import Policy
from airflow_ha.failover.health import HealthReport
from airflow_ha.failover.lease import LeaseState, LeaseStoreError, MemberReport

# ------------------------------------------------------------------------------------------------
# Unit-test fakes


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        assert dt >= 0
        self.t += dt

    def set(self, t: float) -> None:
        self.t = max(self.t, t)


@dataclass
class Row:
    holder: str | None = None
    epoch: int = 0
    expires: float = 0.0
    paused: bool = False
    step_down_epoch: int | None = None
    last_holder: str | None = None


class FakeLeaseDB:
    """The lease row with the semantics of ACQUIRE_SQL/RELEASE_SQL, on its own (database) clock."""

    def __init__(self, clock: Callable[[], float], offset: float = 1_000_000.0) -> None:
        self._host_clock = clock
        self.offset = offset
        self.row = Row(expires=self.now())
        self.members: dict[str, tuple[MemberReport, float]] = {}
        self.history: list[tuple[float, str, str | None, int]] = []  # (db time, what, holder, epoch)

    def now(self) -> float:
        return self._host_clock() + self.offset

    def acquire(self, me: str, ttl: float, may_take: bool) -> LeaseState:
        now = self.now()
        r = self.row
        if r.holder == me or (may_take and not r.paused and (r.holder is None or r.expires <= now)):
            if r.holder != me:
                r.epoch += 1
                r.last_holder = r.holder or r.last_holder
                r.step_down_epoch = None
                r.holder = me
                self.history.append((now, "acquire", me, r.epoch))
            r.expires = now + ttl
            return LeaseState(me, r.epoch, r.expires - now, r.paused, r.step_down_epoch, True, r.last_holder)
        return LeaseState(
            r.holder, r.epoch, r.expires - now, r.paused, r.step_down_epoch, False, r.last_holder
        )

    def release(self, me: str, epoch: int) -> bool:
        r = self.row
        if r.holder == me and r.epoch == epoch:
            r.last_holder, r.holder, r.expires, r.step_down_epoch = me, None, self.now(), None
            self.history.append((self.now(), "release", me, epoch))
            return True
        return False

    def heartbeat(self, report: MemberReport, fresh_within: float) -> int:
        now = self.now()
        self.members[report.host] = (report, now)
        return sum(
            1
            for host, (rep, at) in self.members.items()
            if host != report.host and rep.role == "standby" and rep.healthy and at > now - fresh_within
        )

    def request_step_down(self) -> bool:
        r = self.row
        if r.holder is None or r.expires <= self.now() or r.paused:
            return False
        r.step_down_epoch = r.epoch
        return True

    def set_paused(self, paused: bool) -> None:
        self.row.paused = paused
        if paused:
            self.row.step_down_epoch = None

    def live_holder(self) -> str | None:
        r = self.row
        return r.holder if r.holder is not None and r.expires > self.now() else None


class FakeStore:
    """One controller's connection to the fake database; ``mode`` injects failures."""

    def __init__(self, db: FakeLeaseDB, latency: float = 0.01) -> None:
        self.db = db
        self.mode = "ok"  # "ok" | "error" | "hang"
        self.latency = latency
        self.calls: list[str] = []
        self.abandoned = 0
        self.closed = False

    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.mode == "error":
            raise LeaseStoreError(f"{what}: cannot connect: connection refused")

    def acquire(self, holder: str, ttl: float, may_take: bool) -> LeaseState:
        self._check("acquire")
        return self.db.acquire(holder, ttl, may_take)

    def release(self, holder: str, epoch: int) -> bool:
        self._check("release")
        return self.db.release(holder, epoch)

    def heartbeat(self, report: MemberReport, fresh_within: float) -> int:
        self._check("heartbeat")
        return self.db.heartbeat(report, fresh_within)

    def abandon(self) -> None:
        self.abandoned += 1

    def close(self) -> None:
        self.closed = True


class FakeCaller:
    """Runs calls inline; time passes by the store's latency, or by the whole timeout if it hangs."""

    def __init__(self, clock: FakeClock, store: FakeStore) -> None:
        self.clock = clock
        self.store = store
        self.timeouts: list[float] = []

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        if timeout <= 0:
            raise CallTimeout("no time left")
        if self.store.mode == "hang":
            self.clock.advance(timeout)
            self.timeouts.append(timeout)
            raise CallTimeout(f"no answer within {timeout:.2f}s")
        self.clock.advance(min(self.store.latency, timeout))
        return fn()


@dataclass
class Event:
    t: float
    node: str
    kind: str  # start | restart | stop | crash
    unit: str


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def add(self, ev: Event) -> None:
        with self.lock:
            self.events.append(ev)

    def of(self, node: str | None = None, kind: str | None = None) -> list[Event]:
        with self.lock:
            return [
                e
                for e in self.events
                if (node is None or e.node == node) and (kind is None or e.kind == kind)
            ]

    def max_concurrent_nodes(self) -> int:
        """Highest number of nodes that had any guarded unit running at the same time."""
        active: dict[str, set[str]] = {}
        worst = 0
        with self.lock:
            events = list(self.events)
        for e in events:  # in execution order
            units = active.setdefault(e.node, set())
            if e.kind in ("start", "restart"):
                units.add(e.unit)
            else:
                units.discard(e.unit)
            worst = max(worst, sum(1 for u in active.values() if u))
        return worst


class RecordingServices:
    """A ServiceManager that records every operation with a timestamp from ``clock``."""

    def __init__(
        self,
        node: str,
        log: EventLog,
        clock: Callable[[], float],
        stop_duration: float = 0.0,
        advance: Callable[[float], None] | None = None,
    ) -> None:
        self.node = node
        self.log = log
        self.clock = clock
        self.stop_duration = stop_duration
        self._advance = advance or time.sleep
        self.active: dict[str, bool] = {}
        self.lock = threading.Lock()

    def _record(self, kind: str, unit: str) -> None:
        self.log.add(Event(self.clock(), self.node, kind, unit))

    def start(self, unit: str) -> None:
        with self.lock:
            if not self.active.get(unit):
                self.active[unit] = True
                self._record("start", unit)

    def restart(self, unit: str) -> None:
        with self.lock:
            self.active[unit] = True
            self._record("restart", unit)

    def stop(self, unit: str) -> None:
        with self.lock:
            if not self.active.get(unit):
                return
        if self.stop_duration:
            self._advance(self.stop_duration)  # outside the lock: stops of several units overlap
        with self.lock:
            self.active[unit] = False
            self._record("stop", unit)

    def is_active(self, unit: str) -> bool:
        with self.lock:
            return self.active.get(unit, False)

    def crash(self, unit: str | None = None) -> None:
        """The unit's process dies (or the whole host vanishes) without the controller doing it."""
        with self.lock:
            for u in [unit] if unit else list(self.active):
                if self.active.get(u):
                    self.active[u] = False
                    self._record("crash", u)

    @property
    def running(self) -> bool:
        with self.lock:
            return any(self.active.values())


class FakeHealth:
    def __init__(self) -> None:
        self.leader = HealthReport(True, "ok")
        self.standby = HealthReport(True, "ready")
        self.leader_checks = 0

    def check_leader(self) -> HealthReport:
        self.leader_checks += 1
        return self.leader

    def check_standby(self) -> HealthReport:
        return self.standby


UNITS = ("airflow-scheduler.service", "airflow-dag-processor.service")


def make_policy(node: str, **overrides: Any) -> Policy:
    values: dict[str, Any] = {
        "node": node,
        "units": UNITS,
        "ttl": 10.0,
        "renew_interval": 2.0,
        "safety_margin": 3.0,
        "startup_grace": 30.0,
        "unhealthy_threshold": 3,
        "max_restarts": 1,
        "unhealthy_grace": 60.0,
        "step_down_cooldown": 60.0,
    }
    values.update(overrides)
    return Policy(**values)


@dataclass
class SimNode:
    name: str
    ctl: Controller
    store: FakeStore
    services: RecordingServices
    health: FakeHealth
    caller: FakeCaller
    next_wake: float
    alive: bool = True


@dataclass
class Sim:
    """Discrete-event simulation: controllers share a fake clock and a fake lease database."""

    clock: FakeClock
    db: FakeLeaseDB
    log: EventLog = field(default_factory=EventLog)
    nodes: dict[str, SimNode] = field(default_factory=dict)
    max_leaders_seen: int = 0

    def add(self, name: str, db_timeout: float = 2.0, stop_duration: float = 0.0, **policy: Any) -> SimNode:
        store = FakeStore(self.db)
        services = RecordingServices(name, self.log, self.clock, stop_duration, advance=self.clock.advance)
        health = FakeHealth()
        caller = FakeCaller(self.clock, store)
        ctl = Controller(
            make_policy(name, **policy),
            store,
            services,
            health,
            db_timeout=db_timeout,
            clock=self.clock,
            caller=caller,
            notify=lambda _msg: None,
        )
        node = SimNode(name, ctl, store, services, health, caller, next_wake=self.clock())
        self.nodes[name] = node
        return node

    def step(self) -> SimNode:
        node = min((n for n in self.nodes.values() if n.alive), key=lambda n: n.next_wake)
        self.clock.set(node.next_wake)
        delay = node.ctl.run_once()
        node.next_wake = self.clock() + delay
        self.max_leaders_seen = max(self.max_leaders_seen, len(self.running_nodes()))
        return node

    def run_until(self, t: float) -> None:
        while True:
            alive = [n for n in self.nodes.values() if n.alive]
            if not alive or min(n.next_wake for n in alive) > t:
                break
            self.step()
        self.clock.set(t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.clock() + dt)

    def running_nodes(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.services.running]

    def leaders(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.alive and n.ctl.state.is_leader]

    def crash(self, name: str) -> None:
        """The host vanishes: its controller stops looping and its units are gone."""
        node = self.nodes[name]
        node.alive = False
        node.services.crash()
