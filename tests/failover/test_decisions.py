"""The pure decision function: observed state in, actions out (no clock, no I/O)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

import pytest

from airflow_ha.failover.decisions import (
    ControllerState,
    Observation,
    ReleaseLease,
    RestartUnits,
    Role,
    StartUnits,
    StopUnits,
    check_deadline,
    decide,
    may_take_over,
    shutdown,
)
from airflow_ha.failover.health import HealthReport
from airflow_ha.failover.lease import LeaseState

from failover_fakes import UNITS, make_policy

P = make_policy("a")  # ttl 10, renew 2, margin 3, startup grace 30, threshold 3, 1 restart, grace 60
OK = HealthReport(True, "200")
BAD = HealthReport(False, "http://127.0.0.1:8974/health: HTTP 503")
ALL_UP = dict.fromkeys(UNITS, True)
ALL_DOWN = dict.fromkeys(UNITS, False)


def held(
    epoch: int = 1, remaining: float = 10.0, paused: bool = False, step_down_epoch: int | None = None
) -> LeaseState:
    return LeaseState("a", epoch, remaining, paused, step_down_epoch, held=True)


def other(
    holder: str | None = "b", epoch: int = 2, remaining: float = 8.0, paused: bool = False
) -> LeaseState:
    return LeaseState(holder, epoch, remaining, paused, None, held=False)


def obs(now: float, lease: LeaseState | None, sent_at: float | None = None, **kw: Any) -> Observation:
    return Observation(now=now, sent_at=now - 0.01 if sent_at is None else sent_at, lease=lease, **kw)


def leader(now: float = 100.0, epoch: int = 1, **kw: Any) -> ControllerState:
    """A settled leader (started long ago, out of its start-up grace)."""
    values: dict[str, Any] = {
        "role": Role.LEADER,
        "epoch": epoch,
        "deadline": now + 7,
        "leader_since": now - 100,
        "units_started_at": now - 100,
        "seen_holder": "a",
        "seen_epoch": epoch,
        "db_ok": True,
        "healthy": True,
    }
    values.update(kw)
    return ControllerState(**values)


A = TypeVar("A")


def nth(actions: tuple[object, ...], i: int, cls: type[A]) -> A:
    action = actions[i]
    assert isinstance(action, cls), actions
    return action


def fences(actions: tuple[object, ...]) -> bool:
    """The actions start with a fencing stop of every guarded unit."""
    return (
        bool(actions) and isinstance(actions[0], StopUnits) and actions[0].fence and actions[0].units == UNITS
    )


# -- acquisition ---------------------------------------------------------------------------------


def test_acquiring_the_lease_starts_the_units_and_sets_the_deadline() -> None:
    d = decide(ControllerState(role=Role.STANDBY), obs(50.0, held(epoch=4), sent_at=49.5), P)
    assert d.state.role is Role.LEADER
    assert d.state.epoch == 4
    assert d.state.deadline == pytest.approx(49.5 + 10.0 - 3.0)  # send time + remaining - margin
    assert d.actions == (StartUnits(UNITS, d.actions[0].reason),)
    assert "ACQUIRED lease (epoch 4" in d.actions[0].reason


def test_deadline_uses_the_remaining_time_the_database_reported() -> None:
    d = decide(
        leader(), obs(100.0, held(remaining=6.0), sent_at=99.0, units_active=ALL_UP, leader_health=OK), P
    )
    assert d.state.deadline == pytest.approx(99.0 + 6.0 - 3.0)


def test_controller_start_while_already_holding_starts_units_idempotently() -> None:
    d = decide(ControllerState(), obs(10.0, held(epoch=3), units_active=ALL_UP), P)
    assert d.state.role is Role.LEADER
    assert isinstance(d.actions[0], StartUnits)


# -- leader healthy / unhealthy ------------------------------------------------------------------


def test_healthy_leader_does_nothing() -> None:
    d = decide(leader(), obs(100.0, held(), units_active=ALL_UP, leader_health=OK), P)
    assert d.actions == ()
    assert d.state.role is Role.LEADER
    assert d.state.healthy is True


def test_start_up_grace_suspends_judgement() -> None:
    st = leader(units_started_at=95.0)
    d = decide(st, obs(100.0, held(), units_active=ALL_DOWN, leader_health=BAD), P)
    assert d.actions == ()
    assert d.state.failures == 0
    assert "start-up grace" in d.state.detail


def test_unhealthy_leader_restarts_after_threshold_then_steps_down_after_grace() -> None:
    st = leader()
    t = 100.0
    # failures 1 and 2: only counted
    for i in (1, 2):
        d = decide(st, obs(t, held(), units_active=ALL_UP, leader_health=BAD, healthy_standbys=1), P)
        assert d.actions == ()
        assert d.state.failures == i
        st, t = d.state, t + 2
    # third failure: the episode starts with a restart
    d = decide(st, obs(t, held(), units_active=ALL_UP, leader_health=BAD, healthy_standbys=1), P)
    assert [type(a) for a in d.actions] == [RestartUnits]
    assert d.state.unhealthy_since == t
    assert d.state.restarts == 1
    episode_start = t
    st = d.state
    # during the restart's start-up grace nothing is judged
    t += 20
    d = decide(st, obs(t, held(), units_active=ALL_UP, leader_health=BAD, healthy_standbys=1), P)
    assert d.actions == ()
    st = d.state
    # grace over, still unhealthy, restarts used up, episode younger than unhealthy_grace: wait
    t = episode_start + 40
    d = decide(st, obs(t, held(), units_active=ALL_UP, leader_health=BAD, healthy_standbys=1), P)
    assert d.actions == ()
    assert d.state.role is Role.LEADER
    st = d.state
    # unhealthy_grace reached with a ready standby: stop units, then release
    t = episode_start + 60
    d = decide(st, obs(t, held(epoch=1), units_active=ALL_UP, leader_health=BAD, healthy_standbys=1), P)
    assert [type(a) for a in d.actions] == [StopUnits, ReleaseLease]
    assert nth(d.actions, 0, StopUnits).units == UNITS
    assert not nth(d.actions, 0, StopUnits).fence
    assert nth(d.actions, 1, ReleaseLease).epoch == 1
    assert d.state.role is Role.STANDBY
    assert d.state.cooldown_until == pytest.approx(t + P.step_down_cooldown)


def test_dead_unit_counts_as_unhealthy() -> None:
    st = leader(failures=2)
    down = {UNITS[0]: False, UNITS[1]: True}
    d = decide(st, obs(100.0, held(), units_active=down, leader_health=OK, healthy_standbys=1), P)
    assert [type(a) for a in d.actions] == [RestartUnits]
    assert UNITS[0] in d.state.detail


def test_unhealthy_leader_without_a_ready_standby_keeps_restarting_instead_of_stepping_down() -> None:
    st = leader(failures=5, unhealthy_since=0.0, restarts=1, units_started_at=0.0)
    d = decide(st, obs(100.0, held(), units_active=ALL_UP, leader_health=BAD, healthy_standbys=0), P)
    assert [type(a) for a in d.actions] == [RestartUnits]
    assert "no ready standby" in d.actions[0].reason
    assert d.state.role is Role.LEADER


def test_recovery_resets_the_unhealthy_episode() -> None:
    st = leader(failures=4, unhealthy_since=50.0, restarts=1, units_started_at=50.0)
    d = decide(st, obs(100.0, held(), units_active=ALL_UP, leader_health=OK), P)
    assert d.actions == ()
    assert (d.state.failures, d.state.unhealthy_since, d.state.restarts) == (0, None, 0)
    assert any("healthy again" in msg for _, msg in d.notes)


# -- fencing -------------------------------------------------------------------------------------


def test_renew_failure_before_the_deadline_keeps_the_units_running() -> None:
    st = leader(deadline=107.0)
    d = decide(st, obs(104.0, None, error="timeout"), P)
    assert d.actions == ()
    assert d.state.role is Role.LEADER
    assert any("3.0s left before fencing" in msg for _, msg in d.notes)


def test_renew_failure_at_the_deadline_fences() -> None:
    st = leader(deadline=107.0)
    d = decide(st, obs(107.0, None, error="connection refused"), P)
    assert len(d.actions) == 1
    stop = d.actions[0]
    assert isinstance(stop, StopUnits)
    assert stop.fence
    assert stop.units == UNITS
    assert d.state.role is Role.FENCED
    assert d.state.deadline is None


def test_check_deadline_fences_only_leaders_past_their_deadline() -> None:
    assert check_deadline(leader(deadline=107.0), 106.99, P).actions == ()
    d = check_deadline(leader(deadline=107.0), 107.0, P)
    assert fences(d.actions)
    assert check_deadline(ControllerState(role=Role.STANDBY), 1e9, P).actions == ()


def test_renew_that_answers_after_the_new_deadline_still_fences() -> None:
    st = leader(deadline=104.0)
    # sent at 100, answered at 108: 100 + 10 - 3 = 107 < 108
    d = decide(st, obs(108.0, held(remaining=10.0), sent_at=100.0, units_active=ALL_UP), P)
    assert fences(d.actions)
    assert d.state.role is Role.FENCED


def test_fenced_leader_that_gets_its_lease_back_restarts_its_units() -> None:
    st = ControllerState(role=Role.FENCED, epoch=5)
    d = decide(st, obs(100.0, held(epoch=5), units_active=ALL_DOWN), P)
    assert isinstance(d.actions[0], StartUnits)
    assert "REGAINED" in d.actions[0].reason


def test_leader_that_sees_another_holder_fences_immediately() -> None:
    d = decide(leader(), obs(100.0, other("b", epoch=2)), P)
    assert fences(d.actions)
    assert d.state.role is Role.STANDBY
    assert d.state.seen_holder == "b"


def test_starting_without_database_stops_units() -> None:
    d = decide(ControllerState(), obs(1.0, None, error="refused", units_active=ALL_UP), P)
    assert d.state.role is Role.FENCED
    assert isinstance(d.actions[0], StopUnits)


# -- standby -------------------------------------------------------------------------------------


def test_standby_keeps_units_stopped() -> None:
    st = ControllerState(role=Role.STANDBY)
    d = decide(st, obs(1.0, other(), units_active={UNITS[0]: True, UNITS[1]: False}), P)
    assert d.actions == (StopUnits((UNITS[0],), d.actions[0].reason),)
    d = decide(st, obs(1.0, other(), units_active=ALL_DOWN), P)
    assert d.actions == ()
    assert d.state.seen_holder == "b"


def test_standby_does_not_take_over_while_the_lease_is_live() -> None:
    # The SQL decides; the decision just reports what it saw and does not start anything.
    d = decide(ControllerState(role=Role.STANDBY), obs(1.0, other(remaining=0.5), units_active=ALL_DOWN), P)
    assert d.state.role is Role.STANDBY
    assert not any(isinstance(a, StartUnits) for a in d.actions)


def test_may_take_over_requires_readiness_and_no_cooldown() -> None:
    standby = ControllerState(role=Role.STANDBY)
    assert may_take_over(standby, OK, 0.0)
    assert not may_take_over(standby, HealthReport(False, "check failed"), 0.0)
    assert not may_take_over(standby, None, 0.0)
    cooling = replace(standby, cooldown_until=50.0)
    assert not may_take_over(cooling, OK, 49.9)
    assert may_take_over(cooling, OK, 50.0)
    assert may_take_over(leader(), None, 0.0)


def test_standby_in_cooldown_reports_itself_not_ready() -> None:
    st = ControllerState(role=Role.STANDBY, cooldown_until=130.0)
    d = decide(st, obs(100.0, other(), units_active=ALL_DOWN, standby_ready=OK), P)
    assert d.state.healthy is False
    assert "cooling down" in d.state.detail


# -- pause and step-down -------------------------------------------------------------------------


def test_paused_leader_leaves_units_alone() -> None:
    st = leader(failures=10, unhealthy_since=0.0, restarts=5)
    d = decide(
        st, obs(100.0, held(paused=True), units_active=ALL_DOWN, leader_health=BAD, healthy_standbys=3), P
    )
    assert d.actions == ()
    assert d.state.role is Role.LEADER
    assert d.state.paused
    assert any("PAUSED" in msg for _, msg in d.notes)


def test_paused_leader_still_fences_when_it_cannot_renew() -> None:
    st = leader(deadline=107.0, paused=True)
    d = decide(st, obs(107.5, None, error="timeout"), P)
    assert fences(d.actions)


def test_step_down_request_stops_then_releases() -> None:
    d = decide(
        leader(epoch=7),
        obs(100.0, held(epoch=7, step_down_epoch=7), units_active=ALL_UP, leader_health=OK),
        P,
    )
    assert [type(a) for a in d.actions] == [StopUnits, ReleaseLease]
    assert nth(d.actions, 1, ReleaseLease).epoch == 7
    assert d.state.role is Role.STANDBY
    assert d.state.cooldown_until == pytest.approx(100.0 + P.step_down_cooldown)


def test_step_down_request_for_an_older_epoch_is_ignored() -> None:
    d = decide(
        leader(epoch=7),
        obs(100.0, held(epoch=7, step_down_epoch=6), units_active=ALL_UP, leader_health=OK),
        P,
    )
    assert d.actions == ()


def test_step_down_request_is_ignored_while_paused() -> None:
    lease = LeaseState("a", 7, 10.0, True, 7, True)
    d = decide(leader(epoch=7), obs(100.0, lease, units_active=ALL_UP, leader_health=OK), P)
    assert d.actions == ()


# -- shutdown ------------------------------------------------------------------------------------


def test_shutdown_of_the_leader_stops_units_then_releases() -> None:
    d = shutdown(leader(epoch=9), P)
    assert [type(a) for a in d.actions] == [StopUnits, ReleaseLease]
    assert nth(d.actions, 1, ReleaseLease).epoch == 9
    assert d.state.role is Role.STOPPED


def test_shutdown_of_a_standby_only_stops_units() -> None:
    d = shutdown(ControllerState(role=Role.STANDBY), P)
    assert [type(a) for a in d.actions] == [StopUnits]
