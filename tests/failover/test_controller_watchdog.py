"""The controller's systemd watchdog against its lease (controller.py, ``_ping``).

systemd kills a controller that has not pinged for WatchdogSec (``WatchdogSignal=SIGKILL``), and
the guarded units, bound to it, are down ``stop_timeout`` later. A leader therefore pings only
while a hang from that moment on would still have its units down before the lease can expire.
"""

from __future__ import annotations

import pytest

from airflow_ha.failover.controller import Controller
from airflow_ha.failover.decisions import Role

from failover_fakes import (
    EventLog,
    FakeCaller,
    FakeClock,
    FakeHealth,
    FakeLeaseDB,
    FakeStore,
    RecordingServices,
    make_policy,
)

UNIT = ("airflow-scheduler.service",)
# The role's defaults: WatchdogSec 4 (ping every 2 s), stop_timeout 2 + systemctl_timeout 1.
WATCHDOG_SEC, STOP_BOUND = 4.0, 3.0
TTL, INTERVAL, MARGIN, DB_TIMEOUT = 10.0, 2.0, 4.0, 2.0


class Pinged:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.at: list[float] = []

    def __call__(self, message: str) -> None:
        if message == "WATCHDOG=1":
            self.at.append(self.clock())


def make(
    clock: FakeClock, stop_duration: float = 1.0
) -> tuple[Controller, FakeLeaseDB, FakeStore, EventLog, Pinged]:
    db = FakeLeaseDB(clock)
    store = FakeStore(db)
    log = EventLog()
    pinged = Pinged(clock)
    ctl = Controller(
        make_policy("a", units=UNIT, ttl=TTL, renew_interval=INTERVAL, safety_margin=MARGIN),
        store,
        RecordingServices("a", log, clock, stop_duration=stop_duration, advance=clock.advance),
        FakeHealth(),
        db_timeout=DB_TIMEOUT,
        clock=clock,
        caller=FakeCaller(clock, store),
        notify=pinged,
        watchdog=WATCHDOG_SEC / 2,
        unit_stop_bound=STOP_BOUND,
    )
    return ctl, db, store, log, pinged


def loop(ctl: Controller, clock: FakeClock, seconds: float) -> None:
    """run() without threads: one loop, then the sleep, pinging every WatchdogSec/2 meanwhile."""
    end = clock() + seconds
    while clock() < end:
        delay = ctl.run_once()
        wake = clock() + delay
        while clock() < wake:
            clock.advance(min(ctl.watchdog or delay, wake - clock()))
            ctl._ping()


def test_a_healthy_leader_pings_well_within_the_watchdog(clock: FakeClock) -> None:
    ctl, _db, _store, _log, pinged = make(clock)
    loop(ctl, clock, 60)
    assert ctl.state.is_leader
    gaps = [b - a for a, b in zip(pinged.at, pinged.at[1:], strict=False)]
    assert max(gaps) <= WATCHDOG_SEC / 2 + 0.05


def test_slow_renewals_do_not_starve_the_watchdog(clock: FakeClock) -> None:
    ctl, _db, store, _log, pinged = make(clock)
    store.latency = DB_TIMEOUT - 0.1  # every renew takes almost the whole db_timeout
    loop(ctl, clock, 60)
    assert ctl.state.is_leader
    gaps = [b - a for a, b in zip(pinged.at, pinged.at[1:], strict=False)]
    assert max(gaps) < WATCHDOG_SEC


@pytest.mark.parametrize("fault", ["error", "hang"])
def test_a_leader_that_cannot_renew_stops_pinging_in_time(clock: FakeClock, fault: str) -> None:
    """Were the controller to hang right after any ping it made as a leader with running units,
    systemd would kill it by ping + WatchdogSec and the units would be down STOP_BOUND later:
    always before the lease expires (the database's expiry, in this host's clock)."""
    ctl, db, store, log, pinged = make(clock)
    loop(ctl, clock, 10)
    assert ctl.state.is_leader
    expiry = db.row.expires - db.offset
    before = len(pinged.at)
    store.mode = fault
    loop(ctl, clock, 20)
    assert ctl.state.role is Role.FENCED
    fenced_at = min(e.t for e in log.of("a", "stop"))
    as_leader = [t for t in pinged.at[before:] if t < fenced_at]
    expiry = db.row.expires - db.offset
    assert as_leader, "the leader stopped pinging at once"
    assert max(as_leader) + WATCHDOG_SEC + STOP_BOUND < expiry
    # the controller's own fence is done before the expiry too, and it pings again afterwards
    assert max(e.t for e in log.of("a", "stop")) < expiry
    assert any(t > fenced_at for t in pinged.at)


def test_a_standby_pings_regardless_of_the_lease(clock: FakeClock) -> None:
    db = FakeLeaseDB(clock)
    db.acquire("b", TTL, True)  # another host holds the lease
    ctl, _db, _store, _log, pinged = make(clock)
    ctl.store = FakeStore(db)
    ctl.caller = FakeCaller(clock, ctl.store)
    loop(ctl, clock, 8)
    assert not ctl.state.is_leader
    gaps = [b - a for a, b in zip(pinged.at, pinged.at[1:], strict=False)]
    assert pinged.at
    assert max(gaps) <= WATCHDOG_SEC / 2 + 0.05
