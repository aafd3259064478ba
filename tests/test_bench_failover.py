"""The failover benchmark's timing loop and table, with a fake lab and a fake clock."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_ha.bench_failover import (
    OutageTrial,
    Result,
    Sample,
    Tier,
    measure,
    patroni_member_caught_up,
    render_section,
    run,
    wait_until,
)
from airflow_ha.chaos_faults import ChaosError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeLab:
    """A tier that answers except between a kill and `outage` seconds later; the host rejoins
    `rejoin` seconds after its start."""

    def __init__(self, clock: FakeClock, outage: float, rejoin: float = 10.0) -> None:
        self.clock, self.outage, self.rejoin = clock, outage, rejoin
        self.killed_at: float | None = None
        self.started_at: float | None = None
        self.events: list[str] = []

    def host_down(self, host: str) -> None:
        self.killed_at = self.clock.now
        self.events.append(f"down {host}")

    def host_up(self, host: str) -> None:
        self.started_at = self.clock.now
        self.events.append(f"up {host}")

    def log(self, message: str) -> None:
        self.events.append(message)

    def serving(self) -> bool:
        return self.killed_at is None or self.clock.now - self.killed_at >= self.outage

    def rejoined(self, host: str) -> bool:
        return self.started_at is not None and self.clock.now - self.started_at >= self.rejoin

    def tier(self, target: float = 20) -> Tier:
        return Tier(
            "database",
            "primary killed",
            "a write commits",
            target,
            lambda: "db1",
            self.serving,
            self.rejoined,
        )


def test_wait_until_counts_time_and_gives_up():
    clock = FakeClock()
    assert wait_until(lambda: clock.now >= 3, 10, 0.5, clock, clock.sleep) == 3.0
    assert wait_until(lambda: False, 2, 0.5, clock, clock.sleep) is None


def test_measure_times_the_outage_and_waits_for_the_host_to_rejoin():
    clock = FakeClock()
    lab = FakeLab(clock, outage=15.0, rejoin=12.0)
    sample = measure(lab.tier(), lab, poll=0.25, clock=clock, sleep=clock.sleep)
    assert sample.victim == "db1"
    assert sample.recovered == pytest.approx(15.0, abs=0.3)
    assert sample.rejoined == pytest.approx(12.0, abs=1.0)
    assert [e for e in lab.events if e.startswith(("down", "up"))] == ["down db1", "up db1"]


def test_no_recovery_is_reported_not_hidden():
    clock = FakeClock()
    lab = FakeLab(clock, outage=1e9)
    sample = measure(lab.tier(), lab, timeout=30, clock=clock, sleep=clock.sleep)
    assert sample.recovered is None
    result = Result(lab.tier(), [sample])
    assert result.missed() == ["database: no recovery in time after killing db1"]


def test_a_tier_that_does_not_answer_before_the_fault_is_an_error():
    clock = FakeClock()
    lab = FakeLab(clock, outage=0)
    tier = Tier("api", "holder killed", "health 200", 5, lambda: "lb1", lambda: False, lab.rejoined)
    with pytest.raises(ChaosError, match="does not answer before the fault"):
        measure(tier, lab, clock=clock, sleep=clock.sleep)
    assert not [e for e in lab.events if e.startswith("down")]


def test_a_host_that_never_rejoins_stops_the_benchmark():
    clock = FakeClock()
    lab = FakeLab(clock, outage=2, rejoin=1e9)
    with pytest.raises(ChaosError, match="did not rejoin"):
        measure(lab.tier(), lab, rejoin_timeout=60, clock=clock, sleep=clock.sleep)


def test_repetitions_median_worst_and_targets():
    clock = FakeClock()
    lab = FakeLab(clock, outage=4.0)
    results = run([lab.tier(target=5)], lab, 3, clock=clock, sleep=clock.sleep)
    assert len(results[0].samples) == 3
    assert results[0].missed() == []
    slow = Result(
        lab.tier(target=5), [Sample("db1", 4.0, 9.0), Sample("db2", 6.5, 9.0), Sample("db1", 5.0, 8)]
    )
    assert slow.missed() == ["database: 1 of 3 repetitions over the 5 s target (worst 6.5 s)"]
    text = render_section([slow], "python -m airflow_ha.bench_failover", dt.datetime(2026, 1, 2, 3, 4), 2)
    row = next(line for line in text.splitlines() if line.startswith("| database"))
    assert "| 5.0 s | 6.5 s | 3 | 9.0 s |" in row
    assert "Missed: database: 1 of 3" in text


def test_outage_trials_are_tabled():
    trials = [OutageTrial(15, 8, 8, "success"), OutageTrial(60, 8, 0, "failed")]
    text = render_section([], "cmd", dt.datetime(2026, 1, 2), 2, trials)
    assert "| 15 s | 8 of 8 | success |" in text
    assert "| 60 s | 0 of 8 | failed |" in text


def _member(name, role, timeline=9, lag=0, state="running"):
    return {"name": name, "role": role, "state": state, "timeline": timeline, "lag": lag}


def test_a_returned_database_host_counts_only_once_it_has_caught_up():
    leader = {"name": "db3", "role": "leader", "state": "running", "timeline": 9}
    caught_up = {"members": [_member("db1", "sync_standby"), _member("db2", "replica"), leader]}
    assert patroni_member_caught_up(caught_up, "db2")
    # Just started after pg_rewind: still on the old timeline, or lagging, or no sync standby yet.
    assert not patroni_member_caught_up(
        {"members": [_member("db1", "sync_standby"), _member("db2", "replica", 8), leader]}, "db2"
    )
    assert not patroni_member_caught_up(
        {"members": [_member("db1", "sync_standby"), _member("db2", "replica", lag="unknown"), leader]}, "db2"
    )
    assert not patroni_member_caught_up(
        {"members": [_member("db1", "replica"), _member("db2", "replica"), leader]}, "db2"
    )
    assert not patroni_member_caught_up({"members": [_member("db1", "sync_standby"), leader]}, "db2")
