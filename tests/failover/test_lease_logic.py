"""The controller loop against a fake lease database, on a fake clock.

The fake database implements the SQL's semantics on its own clock (offset by a million seconds
from the hosts' clocks), so these tests check the timing rules end to end: renew cadence, fencing
before the lease can move, expiry-based takeover, pause, step-down, health-driven step-down and
SIGTERM. The real SQL is exercised by test_integration_pg.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from airflow_ha.failover.controller import CallTimeout, Controller, ThreadCaller
from airflow_ha.failover.decisions import Role
from airflow_ha.failover.health import HealthReport

from failover_fakes import (
    UNITS,
    EventLog,
    FakeCaller,
    FakeClock,
    FakeHealth,
    FakeLeaseDB,
    FakeStore,
    RecordingServices,
    Sim,
    make_policy,
)

TTL, INTERVAL, MARGIN = 10.0, 2.0, 3.0


def first(sim: Sim, node: str, kind: str) -> float:
    events = sim.log.of(node, kind)
    assert events, f"no {kind} event for {node}: {sim.log.events}"
    return events[0].t


def test_single_controller_acquires_starts_units_and_renews_every_interval(sim: Sim) -> None:
    a = sim.add("a")
    sim.run_for(0.5)
    assert sim.leaders() == ["a"]
    assert a.services.active == dict.fromkeys(UNITS, True)
    assert sim.db.row.epoch == 1
    calls_before = a.store.calls.count("acquire")
    sim.run_for(20.0)
    renewals = a.store.calls.count("acquire") - calls_before
    assert renewals == pytest.approx(20.0 / INTERVAL, abs=1)
    assert sim.db.row.epoch == 1  # renewals never bump the epoch
    # the deadline is the last renew's send time + remaining - margin
    st = a.ctl.state
    assert st.deadline is not None
    assert sim.clock() < st.deadline <= sim.clock() + TTL - MARGIN


def test_two_controllers_racing_leave_exactly_one_leader(sim: Sim) -> None:
    sim.add("a")
    sim.add("b")
    sim.add("c")
    sim.run_for(0.1)
    for _ in range(300):  # 60 simulated seconds, checked after every step
        sim.run_for(0.2)
        assert len(sim.leaders()) == 1
        assert len(sim.running_nodes()) == 1
    assert sim.max_leaders_seen == 1
    assert sim.log.max_concurrent_nodes() == 1
    assert sim.db.row.epoch == 1
    standbys = [n for n in sim.nodes.values() if n.ctl.state.role is Role.STANDBY]
    assert len(standbys) == 2


def test_standby_takes_over_only_after_expiry_and_within_ttl_plus_interval(sim: Sim) -> None:
    sim.add("a")
    sim.run_for(0.5)
    b = sim.add("b")
    sim.run_for(7.0)
    assert sim.leaders() == ["a"]
    last_expiry_db = sim.db.row.expires
    crash_at = sim.clock()
    sim.crash("a")
    # nothing may happen before the lease expires on the database clock
    while sim.db.now() < last_expiry_db - 0.01:
        sim.run_for(0.1)
        assert b.services.active == {}
    sim.run_for(TTL + INTERVAL)
    acquired = [h for h in sim.db.history if h[1] == "acquire" and h[2] == "b"]
    assert acquired
    assert acquired[0][0] >= last_expiry_db  # database clock: after expiry
    takeover = first(sim, "b", "start") - crash_at
    assert takeover <= TTL + INTERVAL + 0.1
    assert sim.db.row.epoch == 2


def test_renew_failures_fence_the_leader_before_anyone_else_acquires(sim: Sim) -> None:
    a = sim.add("a")
    sim.run_for(0.5)
    b = sim.add("b")
    sim.run_for(5.0)
    last_renew_sent = max(t for t in [a.ctl.state.deadline] if t is not None) - TTL + MARGIN
    a.store.mode = "error"  # the leader alone loses the database
    sim.run_for(TTL + 2 * INTERVAL)
    fence_t = first(sim, "a", "stop")
    start_b = first(sim, "b", "start")
    assert a.ctl.state.role is Role.FENCED
    # fenced at its deadline: last successful renew send time + ttl - margin
    assert fence_t == pytest.approx(last_renew_sent + TTL - MARGIN, abs=0.05)
    assert fence_t < start_b
    assert start_b - fence_t >= MARGIN - 0.05
    assert sim.log.max_concurrent_nodes() == 1
    assert b.ctl.state.role is Role.LEADER


def test_hung_database_calls_are_cut_at_the_deadline(sim: Sim) -> None:
    a = sim.add("a", db_timeout=2.0)
    sim.run_for(0.5)
    sim.add("b")
    sim.run_for(5.0)
    deadline = a.ctl.state.deadline
    assert deadline is not None
    a.store.mode = "hang"  # every call blocks until its timeout
    sim.run_for(TTL + 2 * INTERVAL)
    fence_t = first(sim, "a", "stop")
    assert fence_t == pytest.approx(deadline, abs=0.05)  # a hung renew cannot push fencing past it
    assert max(a.caller.timeouts) <= 2.0
    assert a.store.abandoned >= 1
    assert fence_t < first(sim, "b", "start")
    assert sim.log.max_concurrent_nodes() == 1


def test_leader_keeps_leadership_through_a_short_database_outage(sim: Sim) -> None:
    a = sim.add("a")
    sim.add("b")
    sim.run_for(1.0)
    assert sim.leaders() == ["a"]
    a.store.mode = "error"
    sim.nodes["b"].store.mode = "error"
    sim.run_for(4.0)  # shorter than ttl - margin
    a.store.mode = sim.nodes["b"].store.mode = "ok"
    sim.run_for(4.0)
    assert sim.leaders() == ["a"]
    assert sim.log.of("a", "stop") == []
    assert sim.db.row.epoch == 1


def test_leader_regains_the_lease_after_fencing_if_nobody_took_it(sim: Sim) -> None:
    a = sim.add("a")
    sim.run_for(1.0)
    a.store.mode = "error"
    sim.run_for(TTL - MARGIN + INTERVAL)
    assert a.ctl.state.role is Role.FENCED
    assert not a.services.running
    a.store.mode = "ok"
    sim.run_for(2 * INTERVAL)
    assert a.ctl.state.role is Role.LEADER
    assert a.services.running
    assert sim.db.row.epoch == 1  # still its lease: same epoch


def test_host_clock_values_do_not_matter(clock: FakeClock) -> None:
    # Database clock far behind the hosts' monotonic clocks: only differences are used.
    sim = Sim(clock, FakeLeaseDB(clock, offset=-1e9))
    sim.add("a")
    sim.add("b")
    sim.run_for(30.0)
    assert len(sim.leaders()) == 1
    sim.crash(sim.leaders()[0])
    sim.run_for(TTL + INTERVAL + 0.5)
    assert len(sim.leaders()) == 1
    assert sim.log.max_concurrent_nodes() == 1


def test_paused_failover_blocks_takeover_until_resumed(sim: Sim) -> None:
    a = sim.add("a")
    sim.run_for(0.5)
    b = sim.add("b")
    sim.run_for(3.0)
    sim.db.set_paused(True)
    sim.run_for(3.0)
    assert a.ctl.state.paused
    # while paused the leader keeps renewing and leaves its units alone, even if they die
    a.services.crash(UNITS[0])
    a.health.leader = HealthReport(False, "HTTP 503")
    sim.run_for(30.0)
    assert sim.leaders() == ["a"]
    assert not a.services.active[UNITS[0]]
    assert sim.log.of("a", "restart") == []
    # the leader vanishes: nobody takes over while paused
    sim.crash("a")
    sim.run_for(3 * TTL)
    assert sim.db.live_holder() is None
    assert b.services.active == {}
    sim.db.set_paused(False)
    sim.run_for(INTERVAL + 0.5)
    assert sim.leaders() == ["b"]


def test_step_down_request_is_honoured_within_one_loop(sim: Sim) -> None:
    a = sim.add("a")
    sim.run_for(0.5)
    sim.add("b")
    sim.run_for(5.0)
    assert sim.db.request_step_down()
    asked = sim.clock()
    sim.run_for(INTERVAL + 0.1)
    assert not a.services.running
    assert sim.db.row.holder in (None, "b")
    released = [h for h in sim.db.history if h[1] == "release"]
    assert released
    sim.run_for(INTERVAL + 0.1)
    assert sim.leaders() == ["b"]
    assert first(sim, "b", "start") - asked <= 2 * INTERVAL + 0.2
    assert first(sim, "a", "stop") < first(sim, "b", "start")
    assert sim.db.row.epoch == 2
    # the old leader cools down and does not grab it back, even when b goes away briefly
    sim.crash("b")
    sim.run_for(TTL + INTERVAL)
    assert a.ctl.state.role is Role.STANDBY
    assert sim.db.live_holder() is None
    sim.run_for(60.0)
    assert a.ctl.state.role is Role.LEADER  # after the cool-down it takes over again


def test_unhealthy_leader_restarts_then_steps_down_to_a_healthy_standby(sim: Sim) -> None:
    a = sim.add("a", startup_grace=10.0, unhealthy_grace=30.0)
    sim.run_for(0.5)
    b = sim.add("b", startup_grace=10.0, unhealthy_grace=30.0)
    sim.run_for(15.0)  # past a's start-up grace
    a.health.leader = HealthReport(False, "http://127.0.0.1:8974/health: HTTP 503")
    sick_at = sim.clock()
    sim.run_for(3 * INTERVAL + 0.1)
    assert len(sim.log.of("a", "restart")) == len(UNITS)  # one restart of every unit
    sim.run_for(40.0)
    assert sim.leaders() == ["b"]
    step_down_t = first(sim, "a", "stop")
    assert step_down_t - sick_at >= 30.0
    assert first(sim, "a", "stop") < first(sim, "b", "start")
    assert b.ctl.state.epoch == 2
    assert sim.log.max_concurrent_nodes() == 1


def test_unhealthy_standby_does_not_take_over(sim: Sim) -> None:
    sim.add("a")
    sim.run_for(0.5)
    b = sim.add("b")
    b.health.standby = HealthReport(False, "standby check `test -x /opt/airflow/bin/airflow` exited 1")
    sim.run_for(2.0)
    sim.crash("a")
    sim.run_for(3 * TTL)
    assert sim.db.live_holder() is None
    assert b.services.active == {}
    assert sim.db.members["b"][0].healthy is False
    b.health.standby = HealthReport(True, "ready")
    sim.run_for(INTERVAL + 0.5)
    assert sim.leaders() == ["b"]


def test_member_reports_carry_role_health_and_epoch(sim: Sim) -> None:
    sim.add("a")
    sim.run_for(0.5)
    sim.add("b")
    sim.run_for(4.0)
    ra = sim.db.members["a"][0]
    rb = sim.db.members["b"][0]
    assert (ra.role, ra.epoch, rb.role, rb.epoch) == ("leader", 1, "standby", None)
    assert rb.healthy
    assert sim.nodes["a"].ctl.healthy_standbys == 1


def test_stop_that_takes_time_still_finishes_before_the_lease_can_move(sim: Sim) -> None:
    one = (UNITS[0],)
    a = sim.add("a", stop_duration=2.9, units=one)  # almost the whole safety margin
    sim.run_for(0.5)
    sim.add("b", units=one)
    sim.run_for(5.0)
    a.store.mode = "hang"
    sim.run_for(TTL + 3 * INTERVAL)
    stops = sim.log.of("a", "stop")
    assert stops
    assert max(e.t for e in stops) < first(sim, "b", "start")
    assert sim.log.max_concurrent_nodes() == 1


# -- the real thread-based caller ----------------------------------------------------------------


def test_thread_caller_returns_raises_and_times_out() -> None:
    caller = ThreadCaller()
    assert caller.call(lambda: 42, 1.0) == 42
    with pytest.raises(ZeroDivisionError):
        caller.call(lambda: 1 / 0, 1.0)
    t0 = time.monotonic()
    with pytest.raises(CallTimeout):
        caller.call(lambda: time.sleep(2), 0.2)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(CallTimeout):
        caller.call(lambda: 1, 0)


# -- SIGTERM -------------------------------------------------------------------------------------


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.usefixtures("restore_signals")
def test_sigterm_stops_units_releases_the_lease_and_returns_zero() -> None:
    clock = time.monotonic
    db = FakeLeaseDB(clock)
    store = FakeStore(db, latency=0.0)
    log = EventLog()
    services = RecordingServices("a", log, clock)
    health = FakeHealth()
    messages: list[str] = []
    ctl = Controller(
        make_policy("a", ttl=1.0, renew_interval=0.1, safety_margin=0.3),
        store,
        services,
        health,
        db_timeout=0.2,
        caller=ThreadCaller(),
        notify=messages.append,
    )
    ctl.install_signal_handlers()

    def kill_when_leading() -> None:
        end = time.monotonic() + 5
        while time.monotonic() < end and not services.running:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_leading, daemon=True).start()
    t0 = time.monotonic()
    rc = ctl.run()
    assert rc == 0
    assert time.monotonic() - t0 < 3
    assert ctl.state.role is Role.STOPPED
    assert not services.running
    assert db.row.holder is None  # released, not left to expire
    release_t = next(h[0] for h in db.history if h[1] == "release") - db.offset
    assert max(e.t for e in log.of("a", "stop")) <= release_t  # units down before the release
    assert db.members["a"][0].role == "stopped"
    assert store.closed
    assert "READY=1" in messages
    assert "STOPPING=1" in messages


def test_controller_waits_bounded_by_the_deadline(clock: FakeClock) -> None:
    db = FakeLeaseDB(clock)
    store = FakeStore(db)
    log = EventLog()
    ctl = Controller(
        make_policy("a"),
        store,
        RecordingServices("a", log, clock, advance=clock.advance),
        FakeHealth(),
        clock=clock,
        caller=FakeCaller(clock, store),
        notify=lambda _m: None,
    )
    delay = ctl.run_once()
    assert delay == pytest.approx(INTERVAL, abs=0.05)
    store.mode = "error"
    # keep looping while renewals fail: the sleep never overshoots the deadline
    deadline = ctl.state.deadline
    assert deadline is not None
    wakes = []
    while ctl.state.is_leader:
        clock.advance(ctl.run_once())
        wakes.append(clock())
    assert ctl.state.role is Role.FENCED
    assert max(wakes[:-1]) <= deadline + 0.05  # the loop woke up at the deadline, not after it
    assert [e.t for e in log.of("a", "stop")] == [pytest.approx(deadline, abs=0.05)] * len(UNITS)


def test_units_are_stopped_concurrently_so_fencing_takes_one_stop_time() -> None:
    units = ("airflow-scheduler.service", "airflow-dag-processor.service", "airflow-triggerer.service")
    clock = time.monotonic
    db = FakeLeaseDB(clock)
    store = FakeStore(db, latency=0.0)
    log = EventLog()
    services = RecordingServices("a", log, clock, stop_duration=0.3)
    ctl = Controller(
        make_policy("a", units=units, ttl=1.0, renew_interval=0.1, safety_margin=0.5),
        store,
        services,
        FakeHealth(),
        db_timeout=0.2,
        notify=lambda _m: None,
    )
    ctl.run_once()
    assert services.running
    store.mode = "error"
    t0 = time.monotonic()
    while ctl.state.is_leader:
        time.sleep(ctl.run_once())
    fenced = log.of("a", "stop")
    assert len(fenced) == 3
    assert max(e.t for e in fenced) - min(e.t for e in fenced) < 0.2  # in parallel, not 3 x 0.3 s
    assert time.monotonic() - t0 < 1.0 + 0.3
