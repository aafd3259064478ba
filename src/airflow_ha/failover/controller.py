"""The failover controller daemon: loop, timing, fencing and shutdown.

One controller runs on every scheduler host. Every ``renew_interval`` seconds it sends the single
take-or-renew statement (:data:`.lease.ACQUIRE_SQL`), observes the guarded units and their
health, lets :func:`.decisions.decide` choose actions, performs them, and upserts its member row.

Why a fenced leader is down before anyone else can start (the timing argument)
-------------------------------------------------------------------------------

Notation: ``S`` is the controller's monotonic clock reading taken just *before* it sends a renew
statement that then succeeds; the database evaluates ``now()`` (call it ``N``) when the statement
starts, which is after it was sent, so ``N >= S`` in real time. The row gets
``expires_at = E = N + ttl`` and the statement returns ``remaining = E - N``.

1. The leader considers itself leader only until ``D = S + remaining - safety_margin``. Because
   ``N >= S``, ``S + remaining <= N + remaining = E``, hence ``D <= E - safety_margin``.
2. Nothing the loop does can hold it past ``D``: every database call runs on a helper thread and
   the loop waits at most ``min(db_timeout, D - now)`` for it (a hung TCP connection, a statement
   stuck on a lock or a dead server all end in the same timeout); the sleep between loops ends at
   ``D`` at the latest; the deadline is checked again at the top of every loop. At ``D`` without a
   newer successful renew the leader stops every guarded unit; ``systemctl stop`` is bounded by
   ``stop_timeout < safety_margin`` and followed by SIGKILL, so the units are down by
   ``D + stop_timeout < E``.
3. Any other host can only take the lease with a statement whose ``now()`` is at or after ``E``
   (``expires_at <= now()`` in the same statement that takes it), i.e. in real time after ``E``.
   Its controller starts the units only after that statement has returned.

So the old leader's units are stopped strictly before a new holder can exist, with at least
``safety_margin - stop_timeout - systemctl_timeout`` to spare, whatever the network does (a stop that
outlasts ``stop_timeout`` is followed by ``systemctl kill --signal=SIGKILL``, bounded by
``systemctl_timeout``). Only two clocks are used: the
database's (all lease arithmetic) and each host's monotonic clock (its own deadline); wall-clock
jumps on any host do not matter. The argument assumes that the two clocks run at the same rate to
within a tiny fraction of ``safety_margin`` over ``ttl`` (NTP-disciplined clocks differ by ppm), and
that the controller process is not frozen (SIGSTOP, VM pause, a hung call) - a frozen process
cannot stop anything. systemd covers that case: the unit has ``WatchdogSec=W`` with
``WatchdogSignal=SIGKILL``, the guarded units are bound to it (``BindsTo=``, ``TimeoutStopSec=``
``stop_timeout``), and a leader pings the watchdog only while ``now + W + stop_bound < D +
safety_margin`` (``stop_bound = stop_timeout + systemctl_timeout``; ``D + safety_margin <= E``).
Whenever it hangs, its last ping P satisfies ``P + W + stop_bound < E``: systemd kills it by
``P + W`` and its units are down by ``P + W + stop_bound``, before any other host can hold the
lease. A healthy leader keeps its right to ping when ``W + stop_bound + db_timeout < ttl`` (right
after a renew) and ``renew_interval + db_timeout + stop_bound + max(W/2, db_timeout) < ttl`` (until
the next one returns); config.validate() refuses settings that break either, or a W shorter than
the longest step between two pings.

A leader whose renew fails *before* ``D`` keeps running and retries on the next loop; a renew that
succeeds late (after ``D``) still fences, and the next prompt renew makes it leader again.

Defaults: ``ttl`` 10 s, ``renew_interval`` 2 s, ``safety_margin`` 3 s: a leader tolerates about
7 s without a successful renew (three to four attempts); if it vanishes, its lease expires at most
10 s after its last renew and a standby, polling every 2 s with calls bounded by ``db_timeout``
(2 s), holds the lease at most ``ttl + renew_interval + db_timeout`` = 14 s later.

Shutdown (SIGTERM/SIGINT): stop the guarded units, then release the lease if held (so a standby
takes over at its next loop instead of after expiry), report ``stopped``, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Protocol, TypeVar

from . import __version__, decisions
from .config import FailoverConfig
from .decisions import (
    Action,
    ControllerState,
    Decision,
    Observation,
    Policy,
    ReleaseLease,
    RestartUnits,
    Role,
    StartUnits,
    StopUnits,
)
from .health import HealthChecker, HttpHealthChecker
from .lease import LeaseBackend, LeaseState, LeaseStore, LeaseStoreError, MemberReport
from .systemd import (
    DryRunServiceManager,
    ServiceError,
    ServiceManager,
    SystemctlServiceManager,
    sd_notify,
    wait_pinging,
    watchdog_interval,
)

log = logging.getLogger("airflow_ha.failover")
T = TypeVar("T")


class CallTimeout(Exception):
    """A bounded call did not return in time (it may still be running on its thread)."""


class Caller(Protocol):
    def call(self, fn: Callable[[], T], timeout: float) -> T: ...


class ThreadCaller:
    """Runs each call on a fresh daemon thread and waits at most ``timeout`` seconds for it.

    A call that times out is abandoned (its thread finishes or dies with the process); daemon
    threads never delay the process exit.
    """

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        if timeout <= 0:
            raise CallTimeout("no time left")
        done = threading.Event()
        result: list[T] = []
        error: list[BaseException] = []

        def runner() -> None:
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        threading.Thread(target=runner, daemon=True, name="airflow-ha-db").start()
        if not done.wait(timeout):
            raise CallTimeout(f"no answer within {timeout:.2f}s")
        if error:
            raise error[0]
        return result[0]


def policy_from_config(cfg: FailoverConfig) -> Policy:
    h = cfg.health
    return Policy(
        node=cfg.node_name,
        units=cfg.units,
        ttl=cfg.ttl,
        renew_interval=cfg.renew_interval,
        safety_margin=cfg.safety_margin,
        startup_grace=h.startup_grace,
        unhealthy_threshold=h.unhealthy_threshold,
        max_restarts=h.max_restarts,
        unhealthy_grace=h.unhealthy_grace,
        step_down_cooldown=h.step_down_cooldown,
    )


class Controller:
    def __init__(
        self,
        policy: Policy,
        store: LeaseBackend,
        services: ServiceManager,
        health: HealthChecker,
        *,
        db_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        caller: Caller | None = None,
        notify: Callable[[str], object] = sd_notify,
        watchdog: float | None = None,
        unit_stop_bound: float = 0.0,
    ) -> None:
        self.policy = policy
        self.store = store
        self.services = services
        self.health = health
        self.db_timeout = db_timeout
        self.clock = clock
        self.caller: Caller = caller or ThreadCaller()
        self.notify = notify
        self.watchdog = watchdog  # ping interval: half of the unit's WatchdogSec, or None
        self.unit_stop_bound = unit_stop_bound
        self._ping_withheld = False
        self.state = ControllerState()
        self.healthy_standbys = 0
        self._stop = threading.Event()
        self._started = clock()
        self._status_line = ""
        self._ready_sent = False
        self._heartbeat_failing = False

    @classmethod
    def from_config(cls, cfg: FailoverConfig) -> Controller:
        store = LeaseStore(
            cfg.dsn,
            cfg.lease_name,
            node_name=cfg.node_name,
            connect_timeout=cfg.connect_timeout,
            statement_timeout=cfg.statement_timeout,
            tcp_user_timeout=cfg.ttl,
        )
        services: ServiceManager
        if cfg.dry_run:
            services = DryRunServiceManager()
        else:
            services = SystemctlServiceManager(
                cfg.systemctl, stop_timeout=cfg.stop_timeout, call_timeout=cfg.systemctl_timeout
            )
        h = cfg.health
        health = HttpHealthChecker(
            h.urls,
            timeout=h.timeout,
            standby_checks=h.standby_checks,
            standby_check_timeout=h.standby_check_timeout,
            standby_check_interval=h.standby_check_interval,
        )
        watchdog = watchdog_interval()
        if watchdog is not None and abs(2 * watchdog - cfg.watchdog_sec) > 0.01:
            log.warning(
                "the unit's WatchdogSec is %.1fs but watchdog_sec in the configuration is %.1fs: the timing "
                "checks were made for the configured value; set both to the same",
                2 * watchdog,
                cfg.watchdog_sec,
            )
        return cls(
            policy_from_config(cfg),
            store,
            services,
            health,
            db_timeout=cfg.db_timeout,
            watchdog=watchdog,
            unit_stop_bound=cfg.unit_stop_bound,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Loop until :meth:`request_stop` (or a signal), then shut down cleanly. Returns 0."""
        p = self.policy
        log.info(
            "failover controller %s on %s: units %s, ttl %.1fs, renew every %.1fs, safety margin %.1fs",
            __version__,
            p.node,
            ", ".join(p.units),
            p.ttl,
            p.renew_interval,
            p.safety_margin,
        )
        try:
            while not self._stop.is_set():
                delay = self.run_once()
                self._wait(delay)
        except Exception:
            log.exception("controller loop failed: stopping units and exiting (systemd restarts us)")
            raise
        finally:
            self.shutdown()
        return 0

    def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds (wake on stop), pinging the systemd watchdog meanwhile."""
        wait_pinging(self._stop, self.clock, delay, self.watchdog, self._ping)

    def _ping(self) -> None:
        """Ping the systemd watchdog - as a leader only while a hang from now on would still be
        caught in time: systemd kills us by now + WatchdogSec, the units are down stop_bound later,
        and that must be before the lease can expire (deadline + safety_margin)."""
        if self.watchdog is None:
            return
        st = self.state
        if st.is_leader and st.deadline is not None:
            expiry = st.deadline + self.policy.safety_margin
            if self.clock() + 2 * self.watchdog + self.unit_stop_bound >= expiry:
                if not self._ping_withheld:
                    log.warning(
                        "not pinging the systemd watchdog: the lease expires in %.1fs, too soon for "
                        "systemd to stop this host's units if the controller hung now",
                        expiry - self.clock(),
                    )
                self._ping_withheld = True
                return
        self._ping_withheld = False
        self.notify("WATCHDOG=1")

    # -- one loop ------------------------------------------------------------------------------

    def run_once(self) -> float:
        """One loop; returns how long to sleep before the next one."""
        p = self.policy
        self._apply(decisions.check_deadline(self.state, self.clock(), p))
        self._ping()
        ready = None
        if not self.state.is_leader:
            ready = self.health.check_standby()
            self._ping()
        may_take = decisions.may_take_over(self.state, ready, self.clock())

        sent_at = self.clock()
        timeout = self.db_timeout
        if self.state.is_leader and self.state.deadline is not None:
            timeout = min(timeout, self.state.deadline - sent_at)
        lease, error = self._db(lambda: self.store.acquire(p.node, p.ttl, may_take), timeout, "acquire/renew")
        self._ping()
        held = lease is not None and lease.held and lease.holder == p.node
        units: Mapping[str, bool] | None = None
        leader_health = None
        if held:
            units = self._observe_units(assume=False)
            leader_health = self.health.check_leader()
        elif not self.state.is_leader:
            units = self._observe_units(assume=True)
        obs = Observation(
            now=self.clock(),
            sent_at=sent_at,
            lease=lease,
            error=error,
            units_active=units,
            leader_health=leader_health,
            standby_ready=ready,
            healthy_standbys=self.healthy_standbys,
        )
        self._ping()
        self._apply(decisions.decide(self.state, obs, p))
        self._ping()
        self._heartbeat(lease)
        self._announce()
        return self._next_delay(sent_at)

    def _next_delay(self, sent_at: float) -> float:
        wake = sent_at + self.policy.renew_interval
        if self.state.is_leader and self.state.deadline is not None:
            wake = min(wake, self.state.deadline)
        return max(0.0, wake - self.clock())

    def _db(self, fn: Callable[[], T], timeout: float, what: str) -> tuple[T | None, str | None]:
        if timeout <= 0:
            return None, f"{what}: no time left before the fencing deadline"
        try:
            return self.caller.call(fn, timeout), None
        except CallTimeout:
            self.store.abandon()
            return None, f"{what}: no answer from the database within {timeout:.2f}s"
        except LeaseStoreError as exc:
            return None, str(exc)

    def _observe_units(self, assume: bool) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for unit in self.policy.units:
            try:
                out[unit] = self.services.is_active(unit)
            except ServiceError as exc:
                log.warning(
                    "cannot read the state of %s (assuming %s): %s",
                    unit,
                    "running" if assume else "down",
                    exc,
                )
                out[unit] = assume
        return out

    def _heartbeat(self, lease: LeaseState | None) -> None:
        st = self.state
        report = MemberReport(
            host=self.policy.node,
            role=str(st.role),
            healthy=bool(st.healthy),
            detail=st.detail,
            epoch=st.epoch if st.is_leader else None,
            pid=os.getpid(),
            version=__version__,
            uptime=max(0.0, self.clock() - self._started),
        )
        timeout = self.db_timeout
        if st.is_leader and st.deadline is not None:
            timeout = min(timeout, st.deadline - self.clock())
        if lease is None and timeout > 0:
            timeout = min(timeout, self.policy.renew_interval / 2)  # the database is struggling anyway
        count, error = self._db(
            lambda: self.store.heartbeat(report, self.policy.ttl), timeout, "member report"
        )
        if count is not None:
            self.healthy_standbys = count
            if self._heartbeat_failing:
                log.info("member report works again")
            self._heartbeat_failing = False
        else:
            if not self._heartbeat_failing and lease is not None:
                log.warning("member report failed: %s", error)
            self._heartbeat_failing = True

    def _announce(self) -> None:
        st = self.state
        if st.is_leader:
            line = f"leader, epoch {st.epoch}" + (", failover paused" if st.paused else "")
        elif st.seen_holder:
            line = f"{st.role}, leader is {st.seen_holder} (epoch {st.seen_epoch})"
        else:
            line = f"{st.role}, no leader"
        if line != self._status_line:
            self._status_line = line
            self.notify(f"STATUS={line}")
        if not self._ready_sent:
            self._ready_sent = True
            self.notify("READY=1")
        self._ping()

    # -- actions -------------------------------------------------------------------------------

    def _apply(self, decision: Decision) -> None:
        for level, message in decision.notes:
            log.log(level, "%s", message)
        self.state = decision.state
        for action in decision.actions:
            self._execute(action)

    def _execute(self, action: Action) -> None:
        if isinstance(action, StopUnits):
            self._stop_units(action)
        elif isinstance(action, StartUnits | RestartUnits):
            verb = "start" if isinstance(action, StartUnits) else "restart"
            for unit in action.units:
                try:
                    getattr(self.services, verb)(unit)
                except ServiceError as exc:
                    log.error("could not %s %s: %s", verb, unit, exc)
                else:
                    log.info("%sed %s (%s)", verb, unit, action.reason)
        elif isinstance(action, ReleaseLease):
            node = self.policy.node
            ok, error = self._db(lambda: self.store.release(node, action.epoch), self.db_timeout, "release")
            if ok:
                log.warning("RELEASED lease (epoch %d): %s", action.epoch, action.reason)
            elif ok is None:
                log.error("could not release the lease (epoch %d), it will expire: %s", action.epoch, error)
            else:
                log.warning("lease epoch %d was no longer ours to release", action.epoch)
        else:  # pragma: no cover - exhaustive
            raise TypeError(action)

    def _stop_units(self, action: StopUnits) -> None:
        """Stop the units concurrently: the whole fence takes one ``stop_timeout``, not one per unit."""
        results: dict[str, tuple[ServiceError | None, float]] = {}

        def stop(unit: str) -> None:
            t0 = self.clock()
            try:
                self.services.stop(unit)
            except ServiceError as exc:
                results[unit] = (exc, self.clock() - t0)
            else:
                results[unit] = (None, self.clock() - t0)

        if len(action.units) == 1:
            stop(action.units[0])
        else:
            threads = [threading.Thread(target=stop, args=(u,), name=f"stop-{u}") for u in action.units]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for unit in action.units:
            error, took = results.get(unit, (ServiceError("no result"), 0.0))
            if error is not None:
                level = logging.CRITICAL if action.fence else logging.ERROR
                log.log(level, "could not stop %s (%s): %s", unit, action.reason, error)
            else:
                log.info("stopped %s in %.2fs (%s)", unit, took, action.reason)

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the units, release the lease if held, report ``stopped``. Idempotent."""
        if self.state.role is Role.STOPPED:
            return
        self.notify("STOPPING=1")
        self._apply(decisions.shutdown(self.state, self.policy))
        self._heartbeat(None)
        self.store.close()
        log.info("failover controller stopped")


def run_from_config(cfg: FailoverConfig) -> int:
    """The ``run`` subcommand: a controller with signal handlers, until SIGTERM."""
    controller = Controller.from_config(cfg)
    controller.install_signal_handlers()
    return controller.run()
