"""Pure decision logic of the controller: observed state in, new state and actions out.

Nothing here does I/O or reads a clock; :mod:`.controller` gathers an :class:`Observation`, calls
:func:`decide` (or :func:`check_deadline` / :func:`shutdown`), performs the returned actions in
order and logs the returned notes. Times are the controller's monotonic clock in seconds.

Rules, in order of precedence:

1. Fencing. A leader is leader only until ``deadline = sent_at + remaining - safety_margin``
   (``sent_at``: when the last successful renew statement was sent; ``remaining``: the lease time
   the database reported). At or after the deadline without a newer successful renew it stops
   every guarded unit (``StopUnits(fence=True)``) and becomes ``fenced``. A leader that sees
   someone else holding the lease stops its units the same way.
2. Non-holders keep the guarded units stopped.
3. A host that gets (or gets back) the lease starts the units.
4. The holder honours a step-down request (unless paused): stop units, release, cool down.
5. While paused the holder leaves its units alone (health is observed and reported only).
6. Health on the holder: after ``unhealthy_threshold`` consecutive failed checks an unhealthy
   episode starts. It restarts the units (at most ``max_restarts`` times; after each (re)start
   checks are not judged for ``startup_grace`` seconds). When restarts are used up and the episode
   is at least ``unhealthy_grace`` old, it steps down, provided another host reports itself as a
   ready standby; without one it keeps restarting instead, every ``startup_grace`` seconds.
7. A non-holder may try to take an expired/free lease only if its readiness checks pass and it is
   not cooling down after a step-down.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from .health import HealthReport
from .lease import LeaseState


class Role(StrEnum):
    STARTING = "starting"  # no lease decision yet
    LEADER = "leader"  # holds the lease and may run the units
    STANDBY = "standby"  # someone else (or nobody) holds it; units kept stopped
    FENCED = "fenced"  # could not confirm the lease (database trouble); units stopped
    STOPPED = "stopped"  # controller shut down


@dataclass(frozen=True)
class Policy:
    node: str
    units: tuple[str, ...]
    ttl: float
    renew_interval: float
    safety_margin: float
    startup_grace: float = 45.0
    unhealthy_threshold: int = 3
    max_restarts: int = 1
    unhealthy_grace: float = 60.0
    step_down_cooldown: float = 60.0


@dataclass(frozen=True)
class ControllerState:
    role: Role = Role.STARTING
    epoch: int | None = None
    deadline: float | None = None  # monotonic; meaningful while role is LEADER
    leader_since: float | None = None
    units_started_at: float | None = None
    failures: int = 0
    unhealthy_since: float | None = None
    restarts: int = 0
    cooldown_until: float | None = None
    paused: bool = False
    healthy: bool | None = None  # last judged health (leader) / readiness (others)
    detail: str = ""
    seen_holder: str | None = None
    seen_epoch: int | None = None
    db_ok: bool | None = None

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


@dataclass(frozen=True)
class Observation:
    now: float
    sent_at: float
    lease: LeaseState | None  # None: the statement failed or timed out
    error: str | None = None
    units_active: Mapping[str, bool] | None = None
    leader_health: HealthReport | None = None
    standby_ready: HealthReport | None = None
    healthy_standbys: int = 0


@dataclass(frozen=True)
class StartUnits:
    units: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RestartUnits:
    units: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class StopUnits:
    units: tuple[str, ...]
    reason: str
    fence: bool = False


@dataclass(frozen=True)
class ReleaseLease:
    epoch: int
    reason: str


Action = StartUnits | RestartUnits | StopUnits | ReleaseLease
Note = tuple[int, str]


@dataclass(frozen=True)
class Decision:
    state: ControllerState
    actions: tuple[Action, ...] = ()
    notes: tuple[Note, ...] = ()


def _healthy_reset(state: ControllerState) -> ControllerState:
    return replace(state, failures=0, unhealthy_since=None, restarts=0)


def may_take_over(state: ControllerState, ready: HealthReport | None, now: float) -> bool:
    """Whether a non-holder may take a free/expired lease in this loop."""
    if state.is_leader:
        return True  # it renews its own lease; the SQL ignores the flag for the holder
    if state.cooldown_until is not None and now < state.cooldown_until:
        return False
    return ready is not None and ready.ok


def check_deadline(state: ControllerState, now: float, policy: Policy) -> Decision:
    """Fence if a leader's local deadline has passed (called before and after anything slow)."""
    if state.is_leader and state.deadline is not None and now >= state.deadline:
        return _fence(
            state, now, policy, f"lease not renewed in time (deadline passed {now - state.deadline:.2f}s ago)"
        )
    return Decision(state)


def _fence(state: ControllerState, now: float, policy: Policy, why: str) -> Decision:
    new = replace(
        _healthy_reset(state),
        role=Role.FENCED,
        deadline=None,
        leader_since=None,
        units_started_at=None,
        healthy=None,
        detail=f"fenced: {why}",
    )
    return Decision(
        new,
        (StopUnits(policy.units, f"fencing: {why}", fence=True),),
        ((logging.ERROR, f"FENCING epoch {state.epoch}: {why}; stopping {', '.join(policy.units)}"),),
    )


def decide(state: ControllerState, obs: Observation, policy: Policy) -> Decision:
    """The controller's decision for one loop, after the acquire/renew statement."""
    if obs.lease is None:
        return _lease_unknown(state, obs, policy)
    lease = obs.lease
    if lease.held and lease.holder == policy.node:
        deadline = obs.sent_at + lease.remaining - policy.safety_margin
        if deadline <= obs.now:
            late = f"renew answered too late ({obs.now - obs.sent_at:.2f}s after it was sent)"
            return _lease_unknown(state, replace(obs, lease=None, error=late), policy)
        return _as_holder(state, obs, lease, deadline, policy)
    return _as_non_holder(state, obs, lease, policy)


def _units_running(obs: Observation) -> tuple[str, ...]:
    if obs.units_active is None:
        return ()
    return tuple(u for u, active in obs.units_active.items() if active)


def _lease_unknown(state: ControllerState, obs: Observation, policy: Policy) -> Decision:
    err = obs.error or "unknown database error"
    notes: list[Note] = []
    if state.db_ok is not False:
        notes.append((logging.WARNING, f"lease statement failed: {err}"))
    state = replace(state, db_ok=False)
    if state.is_leader:
        assert state.deadline is not None
        if obs.now >= state.deadline:
            d = _fence(state, obs.now, policy, f"could not renew the lease: {err}")
            return Decision(d.state, d.actions, (*notes, *d.notes))
        left = state.deadline - obs.now
        notes.append((logging.WARNING, f"leader: renew failed, {left:.1f}s left before fencing"))
        return Decision(state, (), tuple(notes))
    actions: list[Action] = []
    running = _units_running(obs)
    if state.role is Role.STARTING:
        # Unknown lease at start-up: we may not run anything we cannot prove we own.
        state = replace(state, role=Role.FENCED)
        actions.append(StopUnits(policy.units, "start-up without lease information", fence=True))
        notes.append((logging.WARNING, "cannot read the lease at start-up: keeping guarded units stopped"))
    elif running:
        actions.append(StopUnits(running, "not the lease holder (database unreachable)"))
    return Decision(
        replace(state, healthy=False, detail=f"database unreachable: {err}"), tuple(actions), tuple(notes)
    )


def _as_holder(
    state: ControllerState, obs: Observation, lease: LeaseState, deadline: float, policy: Policy
) -> Decision:
    notes: list[Note] = []
    if state.db_ok is False:
        notes.append((logging.INFO, "database reachable again"))
    new_term = not state.is_leader or state.epoch != lease.epoch
    base = replace(
        state,
        role=Role.LEADER,
        epoch=lease.epoch,
        deadline=deadline,
        paused=lease.paused,
        cooldown_until=None,
        seen_holder=policy.node,
        seen_epoch=lease.epoch,
        db_ok=True,
    )
    if new_term:
        if state.role is Role.FENCED and state.epoch == lease.epoch:
            how = f"lease REGAINED after fencing (epoch {lease.epoch})"
        else:
            how = f"ACQUIRED lease (epoch {lease.epoch}, previous holder {lease.last_holder or 'none'})"
        notes.append((logging.WARNING, f"{how}: starting {', '.join(policy.units)}"))
        new = replace(
            _healthy_reset(base),
            leader_since=obs.now,
            units_started_at=obs.now,
            healthy=None,
            detail="starting units",
        )
        return Decision(new, (StartUnits(policy.units, how),), tuple(notes))

    if lease.paused != state.paused:
        notes.append(
            (logging.WARNING, "failover PAUSED: leaving units alone" if lease.paused else "failover resumed")
        )

    if lease.step_down_requested and not lease.paused:
        return _step_down(base, obs, policy, "step-down requested", notes)

    judged, health_detail = _judge(base, obs, policy)
    if lease.paused:
        return Decision(
            replace(_healthy_reset(base), healthy=judged, detail=f"paused; {health_detail}"), (), tuple(notes)
        )
    if judged is None:  # start-up grace
        return Decision(replace(base, detail=health_detail), (), tuple(notes))
    if judged:
        if base.unhealthy_since is not None:
            notes.append((logging.INFO, f"healthy again after {obs.now - base.unhealthy_since:.0f}s"))
        return Decision(replace(_healthy_reset(base), healthy=True, detail=health_detail), (), tuple(notes))

    # unhealthy
    st = replace(base, failures=base.failures + 1, healthy=False, detail=health_detail)
    if st.failures < policy.unhealthy_threshold:
        notes.append(
            (
                logging.WARNING,
                f"health check failed ({st.failures}/{policy.unhealthy_threshold}): {health_detail}",
            )
        )
        return Decision(st, (), tuple(notes))
    unhealthy_since = obs.now if st.unhealthy_since is None else st.unhealthy_since
    if st.unhealthy_since is None:
        st = replace(st, unhealthy_since=unhealthy_since)
        notes.append((logging.WARNING, f"UNHEALTHY: {health_detail}"))
    elapsed = obs.now - unhealthy_since
    if st.restarts < policy.max_restarts or obs.healthy_standbys == 0:
        why = f"unhealthy for {elapsed:.0f}s: {health_detail}"
        if st.restarts >= policy.max_restarts:
            why += " (no ready standby to hand over to)"
        st = replace(st, restarts=st.restarts + 1, units_started_at=obs.now)
        notes.append(
            (logging.WARNING, f"RESTARTING {', '.join(policy.units)} (attempt {st.restarts}): {why}")
        )
        return Decision(st, (RestartUnits(policy.units, why),), tuple(notes))
    if elapsed >= policy.unhealthy_grace:
        why = (
            f"unhealthy for {elapsed:.0f}s after {st.restarts} restart(s), "
            f"{obs.healthy_standbys} ready standby(s): {health_detail}"
        )
        return _step_down(st, obs, policy, why, notes)
    notes.append(
        (
            logging.WARNING,
            f"still unhealthy ({elapsed:.0f}s of {policy.unhealthy_grace:.0f}s): {health_detail}",
        )
    )
    return Decision(st, (), tuple(notes))


def _judge(state: ControllerState, obs: Observation, policy: Policy) -> tuple[bool | None, str]:
    """(True/False, detail), or (None, detail) while (re)started units are in their grace time."""
    units = obs.units_active or {}
    down = [u for u in policy.units if not units.get(u, False)]
    health = obs.leader_health
    started = state.units_started_at
    if started is not None and obs.now - started < policy.startup_grace:
        left = policy.startup_grace - (obs.now - started)
        if not down and health is not None and health.ok:
            return True, health.detail
        return None, f"starting ({left:.0f}s of start-up grace left)"
    if down:
        return False, f"not running: {', '.join(down)}"
    if health is not None and not health.ok:
        return False, health.detail
    return True, health.detail if health is not None else "units active"


def _step_down(
    state: ControllerState, obs: Observation, policy: Policy, why: str, notes: list[Note]
) -> Decision:
    assert state.epoch is not None
    notes.append((logging.WARNING, f"STEPPING DOWN from epoch {state.epoch}: {why}"))
    new = replace(
        _healthy_reset(state),
        role=Role.STANDBY,
        deadline=None,
        leader_since=None,
        units_started_at=None,
        cooldown_until=obs.now + policy.step_down_cooldown,
        seen_holder=None,
        healthy=False,
        detail=f"stepped down: {why}",
    )
    return Decision(
        new,
        (StopUnits(policy.units, f"step-down: {why}"), ReleaseLease(state.epoch, why)),
        tuple(notes),
    )


def _as_non_holder(state: ControllerState, obs: Observation, lease: LeaseState, policy: Policy) -> Decision:
    notes: list[Note] = []
    actions: list[Action] = []
    if state.db_ok is False:
        notes.append((logging.INFO, "database reachable again"))
    holder = lease.live_holder
    if state.is_leader:
        why = f"lease LOST: now held by {holder or 'nobody'} (epoch {lease.epoch})"
        d = _fence(state, obs.now, policy, why)
        new = replace(d.state, role=Role.STANDBY, seen_holder=holder, seen_epoch=lease.epoch, db_ok=True)
        return Decision(new, d.actions, (*notes, *d.notes))
    if (holder, lease.epoch) != (state.seen_holder, state.seen_epoch):
        if holder is None:
            msg = "lease is free" + (" but failover is PAUSED: nobody will take it" if lease.paused else "")
        else:
            msg = f"standby: {holder} is leader (epoch {lease.epoch})"
        notes.append((logging.INFO, msg))
    elif lease.paused != state.paused:
        notes.append((logging.INFO, "failover paused" if lease.paused else "failover resumed"))
    running = _units_running(obs)
    if running:
        actions.append(StopUnits(running, f"standby: {holder or 'nobody'} holds the lease"))
    ready = obs.standby_ready
    healthy: bool | None
    if state.cooldown_until is not None and obs.now < state.cooldown_until:
        healthy, detail = False, f"cooling down after step-down ({state.cooldown_until - obs.now:.0f}s left)"
    elif ready is None:
        healthy, detail = state.healthy, state.detail
    else:
        healthy, detail = ready.ok, ready.detail
    new = replace(
        state,
        role=Role.STANDBY,
        epoch=None,
        deadline=None,
        paused=lease.paused,
        seen_holder=holder,
        seen_epoch=lease.epoch,
        db_ok=True,
        healthy=healthy,
        detail=detail,
    )
    return Decision(new, tuple(actions), tuple(notes))


def shutdown(state: ControllerState, policy: Policy) -> Decision:
    """SIGTERM: stop the units (always), then release the lease if we hold it."""
    actions: list[Action] = [StopUnits(policy.units, "controller shutting down")]
    notes: list[Note] = []
    if state.is_leader and state.epoch is not None:
        actions.append(ReleaseLease(state.epoch, "controller shutting down"))
        notes.append((logging.WARNING, f"shutting down: stopping units and releasing epoch {state.epoch}"))
    else:
        notes.append((logging.INFO, "shutting down (not the leader)"))
    new = replace(state, role=Role.STOPPED, deadline=None, healthy=False, detail="controller stopped")
    return Decision(new, tuple(actions), tuple(notes))
