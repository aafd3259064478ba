"""Scheduler watchdog for ``active_active`` hosts: restart a unit that runs but is not healthy.

systemd already restarts a scheduler that *dies* (``Restart=always``). What it cannot see is a
scheduler that is still running but no longer works: hung on a lock, stuck in a loop, or frozen
(SIGSTOP). Airflow's own health server (``[scheduler] enable_health_check``, a child process of the
scheduler on port 8974) answers 200 only while this host's newest SchedulerJob has heartbeated
within ``[scheduler] scheduler_health_check_threshold``; a hung scheduler stops heartbeating, so the
server answers 503 about that long after the hang (or nothing at all when the whole unit is frozen).

This daemon polls each watched unit every ``interval`` seconds and decides, with the pure function
:func:`decide`, whether to restart it. The rules, for one unit:

1. A unit that is not ``active`` (stopped by an operator, failed, or in systemd's own restart) is
   left alone: the watchdog never starts a unit, it only restarts one that runs.
2. For ``startup_grace`` seconds after the unit became active (systemd's
   ``ActiveEnterTimestampMonotonic``) failed checks do not count: Airflow needs time to start.
3. After ``failure_threshold`` consecutive failed checks the unit is restarted: ``systemctl stop``
   bounded by ``stop_timeout`` (then SIGKILL to the unit's processes, since a hung process may not
   honour SIGTERM), then ``systemctl start``.
4. Back-off: the n-th restart of a series waits at least ``backoff_initial * 2**(n-2)`` seconds
   (capped at ``backoff_max``) after the previous one, so a scheduler that cannot get healthy (the
   database is down, say) is restarted 1, 2, 4, ... minutes apart rather than in a tight loop. The
   series starts over once the unit has been healthy for ``backoff_reset`` seconds.

Every action is one journal line (``RESTARTED ...`` or ``could not restart ...``); besides those
the daemon logs only changes (first failed check, deferral by back-off, healthy again, unit not
running). It is a ``Type=notify`` service: ``READY=1`` after the first round, ``WATCHDOG=1`` every
round, ``STATUS=`` a one-line summary.

Configuration (TOML, default ``/etc/airflow-ha/watchdog.toml``; every key optional)::

    interval = 5.0            # seconds between rounds
    timeout = 3.0             # one health request; must be below interval
    failure_threshold = 3     # consecutive failed checks before a restart
    startup_grace = 90.0      # seconds after the unit became active before checks count
    stop_timeout = 15.0       # bound on the graceful stop before SIGKILL
    backoff_initial = 60.0    # minimum gap between the first and second restart of a series
    backoff_max = 600.0       # cap of the doubling gap
    backoff_reset = 600.0     # healthy this long ends a series
    dry_run = false           # decide and log, never touch units

    [[watch]]                 # default: the scheduler and its health server
    unit = "airflow-scheduler.service"
    url = "http://127.0.0.1:8974/health"

Usage: ``python -m airflow_ha.failover.watchdog [-c CONFIG] [-v] [run | check-config]``.
Exit codes: 0 clean stop / valid configuration, 2 configuration error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from . import __version__
from .config import ConfigError, _convert_section, normalise_unit
from .health import HealthReport, HttpHealthChecker
from .systemd import (
    DryRunServiceManager,
    ServiceError,
    ServiceManager,
    SystemctlServiceManager,
    sd_notify,
    setup_logging,
    wait_pinging,
    watchdog_interval,
)

log = logging.getLogger("airflow_ha.watchdog")

DEFAULT_CONFIG_PATH = Path("/etc/airflow-ha/watchdog.toml")

# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class WatchTarget:
    unit: str
    url: str


@dataclass(frozen=True)
class WatchdogConfig:
    targets: tuple[WatchTarget, ...] = (
        WatchTarget("airflow-scheduler.service", "http://127.0.0.1:8974/health"),
    )
    interval: float = 5.0
    timeout: float = 3.0
    failure_threshold: int = 3
    startup_grace: float = 90.0
    stop_timeout: float = 15.0
    backoff_initial: float = 60.0
    backoff_max: float = 600.0
    backoff_reset: float = 600.0
    dry_run: bool = False
    systemctl: str = "systemctl"

    def worst_case_detection(self, health_threshold: float = 30.0) -> float:
        """Seconds from a hang to the restart starting, at worst (unit past its start-up grace).

        ``health_threshold``: how long Airflow's health server keeps answering 200 after the last
        heartbeat (``[scheduler] scheduler_health_check_threshold``).
        """
        return health_threshold + self.failure_threshold * self.interval + self.timeout


def watchdog_config_from_mapping(data: Mapping[str, Any], source: str = "<config>") -> WatchdogConfig:
    """Build and validate a configuration from parsed TOML; raises :class:`ConfigError`."""
    problems: list[str] = []
    # Scalar settings are typed by WatchdogConfig's fields, checked like the controller's config.
    scalars = {key: value for key, value in data.items() if key != "watch"}
    values = _convert_section(WatchdogConfig, scalars, {}, "", "", source, problems, skip={"targets"})
    if "watch" in data:
        watch = data["watch"]
        targets: list[WatchTarget] = []
        if not isinstance(watch, list):
            problems.append(f"{source}: watch must be an array of tables ([[watch]])")
            watch = []
        for i, item in enumerate(watch):
            if not isinstance(item, Mapping) or set(item) != {"unit", "url"}:
                problems.append(f"{source}: watch[{i}] must have exactly the keys unit and url")
                continue
            if not isinstance(item["unit"], str) or not isinstance(item["url"], str):
                problems.append(f"{source}: watch[{i}]: unit and url must be strings")
                continue
            targets.append(WatchTarget(normalise_unit(item["unit"]), item["url"]))
        values["targets"] = tuple(targets)
    cfg = replace(WatchdogConfig(), **values)
    problems.extend(validate_watchdog(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def load_watchdog_config(path: str | Path | None = None) -> WatchdogConfig:
    """Read the TOML file; the default path may be missing (defaults apply), a named one may not."""
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not cfg_path.exists():
        if path is not None:
            raise ConfigError([f"{cfg_path}: no such file"])
        return watchdog_config_from_mapping({})
    try:
        with cfg_path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{cfg_path}: {exc}"]) from exc
    return watchdog_config_from_mapping(data, source=str(cfg_path))


def validate_watchdog(cfg: WatchdogConfig) -> list[str]:
    """Every inconsistency in ``cfg`` (empty when valid)."""
    p: list[str] = []
    if not cfg.targets:
        p.append("watch must list at least one unit")
    units = [t.unit for t in cfg.targets]
    if len(set(units)) != len(units):
        p.append("watch lists a unit twice")
    for t in cfg.targets:
        if not t.unit or any(c.isspace() for c in t.unit) or t.unit.startswith("-"):
            p.append(f"unit name {t.unit!r} is not a valid systemd unit name")
        if not t.url.startswith(("http://", "https://")):
            p.append(f"url {t.url!r} of {t.unit} is not an http(s) URL")
    for name in ("interval", "timeout", "stop_timeout", "backoff_initial", "backoff_max"):
        if getattr(cfg, name) <= 0:
            p.append(f"{name} must be > 0 (got {getattr(cfg, name):g})")
    for name in ("startup_grace", "backoff_reset"):
        if getattr(cfg, name) < 0:
            p.append(f"{name} must be >= 0 (got {getattr(cfg, name):g})")
    if cfg.failure_threshold < 1:
        p.append(f"failure_threshold must be >= 1 (got {cfg.failure_threshold})")
    if 0 < cfg.interval <= cfg.timeout:
        p.append(f"timeout ({cfg.timeout:g}) must be below interval ({cfg.interval:g})")
    if 0 < cfg.backoff_max < cfg.backoff_initial:
        p.append(f"backoff_max ({cfg.backoff_max:g}) must be >= backoff_initial ({cfg.backoff_initial:g})")
    return p


# ---------------------------------------------------------------------------------------------
# Decisions (pure)


@dataclass(frozen=True)
class UnitObservation:
    """One round's view of a unit. ``active_for``: seconds since it became active (None: unknown)."""

    active_state: str
    main_pid: int = 0
    active_for: float | None = None
    health: HealthReport | None = None  # None: not probed (the unit is not active)


@dataclass(frozen=True)
class UnitState:
    status: str = "unknown"  # healthy | starting | failing | unhealthy | not-running | unknown
    failures: int = 0
    restarts: int = 0  # restarts in the current series (see back-off)
    last_restart: float | None = None
    healthy_since: float | None = None
    deferred_logged: bool = False
    pid: int = 0
    pid_seen_at: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Restart:
    unit: str
    reason: str
    attempt: int  # 1 for the first restart of a series
    next_gap: float  # minimum seconds before the next restart of the series


@dataclass(frozen=True)
class WatchDecision:
    state: UnitState
    action: Restart | None = None
    notes: tuple[tuple[int, str], ...] = ()


def backoff_gap(cfg: WatchdogConfig, restarts_done: int) -> float:
    """Minimum gap after the ``restarts_done``-th restart of a series before the next one."""
    if restarts_done < 1:
        return 0.0
    return min(cfg.backoff_initial * 2 ** (restarts_done - 1), cfg.backoff_max)


def decide(
    unit: str, state: UnitState, obs: UnitObservation, cfg: WatchdogConfig, now: float
) -> WatchDecision:
    """What to do about ``unit`` this round. ``now`` is the watchdog's monotonic clock."""
    notes: list[tuple[int, str]] = []
    if obs.main_pid != state.pid:
        state = replace(state, pid=obs.main_pid, pid_seen_at=now)
    if obs.active_state != "active":
        if state.status != "not-running":
            notes.append((logging.INFO, f"{unit} is {obs.active_state}: not watched until it runs again"))
        new = replace(
            state,
            status="not-running",
            failures=0,
            healthy_since=None,
            deferred_logged=False,
            detail=obs.active_state,
        )
        return WatchDecision(new, None, tuple(notes))

    age = obs.active_for
    if age is None:
        age = now - (state.pid_seen_at if state.pid_seen_at is not None else now)
    health = obs.health or HealthReport(False, "not probed")

    if health.ok:
        if state.status in ("failing", "unhealthy"):
            notes.append((logging.INFO, f"{unit} is healthy again (pid {obs.main_pid})"))
        healthy_since = state.healthy_since if state.healthy_since is not None else now
        restarts, last = state.restarts, state.last_restart
        if restarts and now - healthy_since >= cfg.backoff_reset:
            restarts, last = 0, None
        new = replace(
            state,
            status="healthy",
            failures=0,
            healthy_since=healthy_since,
            restarts=restarts,
            last_restart=last,
            deferred_logged=False,
            detail=health.detail,
        )
        return WatchDecision(new, None, tuple(notes))

    if age < cfg.startup_grace:
        left = cfg.startup_grace - age
        new = replace(
            state,
            status="starting",
            failures=0,
            healthy_since=None,
            detail=f"starting ({left:.0f}s of start-up grace left): {health.detail}",
        )
        return WatchDecision(new, None, tuple(notes))

    failures = state.failures + 1
    if failures < cfg.failure_threshold:
        if failures == 1:
            notes.append(
                (logging.WARNING, f"{unit} health check failed (1/{cfg.failure_threshold}): {health.detail}")
            )
        new = replace(state, status="failing", failures=failures, healthy_since=None, detail=health.detail)
        return WatchDecision(new, None, tuple(notes))

    gap = backoff_gap(cfg, state.restarts)
    if state.last_restart is not None and now < state.last_restart + gap:
        wait = state.last_restart + gap - now
        if not state.deferred_logged:
            notes.append(
                (
                    logging.WARNING,
                    f"{unit} still unhealthy after {state.restarts} restart(s); back-off: next restart "
                    f"in {wait:.0f}s at the earliest: {health.detail}",
                )
            )
        new = replace(
            state,
            status="unhealthy",
            failures=failures,
            healthy_since=None,
            deferred_logged=True,
            detail=f"back-off ({wait:.0f}s left): {health.detail}",
        )
        return WatchDecision(new, None, tuple(notes))

    attempt = state.restarts + 1
    reason = f"{failures} failed health checks in a row: {health.detail}"
    new = replace(
        state,
        status="unhealthy",
        failures=0,
        restarts=attempt,
        last_restart=now,
        healthy_since=None,
        deferred_logged=False,
        detail=f"restarted: {reason}",
    )
    return WatchDecision(new, Restart(unit, reason, attempt, backoff_gap(cfg, attempt)), tuple(notes))


# ---------------------------------------------------------------------------------------------
# I/O adapters


class UnitObserver(Protocol):
    def observe(self, unit: str) -> tuple[str, int, float | None]:
        """(ActiveState, MainPID, seconds since the unit became active or None)."""
        ...


class SystemctlObserver:
    """``systemctl show``; systemd's monotonic timestamps share CLOCK_MONOTONIC with Python."""

    def __init__(
        self,
        systemctl: str = "systemctl",
        *,
        timeout: float = 5.0,
        runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.systemctl = systemctl
        self.timeout = timeout
        self._run = runner
        self._clock = clock

    def observe(self, unit: str) -> tuple[str, int, float | None]:
        argv = [
            self.systemctl,
            "show",
            "--property=ActiveState,MainPID,ActiveEnterTimestampMonotonic",
            unit,
        ]
        try:
            proc = self._run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"systemctl show {unit}: {exc}") from exc
        if proc.returncode != 0:
            raise ServiceError(f"systemctl show {unit}: {(proc.stderr or '').strip() or proc.returncode}")
        props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        state = props.get("ActiveState", "")
        try:
            pid = int(props.get("MainPID", "0") or 0)
        except ValueError:
            pid = 0
        try:
            entered = int(props.get("ActiveEnterTimestampMonotonic", "0") or 0)
        except ValueError:
            entered = 0
        age = max(0.0, self._clock() - entered / 1e6) if entered > 0 else None
        return state, pid, age


class Prober(Protocol):
    def probe(self, url: str) -> HealthReport: ...


class HttpProber:
    """One GET; 200 is healthy, anything else (or no answer within ``timeout``) is not."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._checkers: dict[str, HttpHealthChecker] = {}

    def probe(self, url: str) -> HealthReport:
        checker = self._checkers.get(url)
        if checker is None:
            checker = self._checkers[url] = HttpHealthChecker((url,), timeout=self.timeout)
        return checker.check_leader()


# ---------------------------------------------------------------------------------------------
# The daemon


@dataclass
class Watchdog:
    cfg: WatchdogConfig
    observer: UnitObserver
    prober: Prober
    services: ServiceManager
    clock: Callable[[], float] = time.monotonic
    notify: Callable[[str], object] = sd_notify
    watchdog_every: float | None = None
    states: dict[str, UnitState] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._ready_sent = False
        self._status = ""

    @classmethod
    def from_config(cls, cfg: WatchdogConfig) -> Watchdog:
        services: ServiceManager = (
            DryRunServiceManager()
            if cfg.dry_run
            else SystemctlServiceManager(cfg.systemctl, stop_timeout=cfg.stop_timeout)
        )
        return cls(
            cfg,
            SystemctlObserver(cfg.systemctl),
            HttpProber(cfg.timeout),
            services,
            watchdog_every=watchdog_interval(),
        )

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run_once(self) -> None:
        """One round over every watched unit."""
        for target in self.cfg.targets:
            self._watch(target)
        summary = ", ".join(f"{t.unit}: {self.states[t.unit].status}" for t in self.cfg.targets)
        if summary != self._status:
            self._status = summary
            self.notify(f"STATUS={summary}")
        if not self._ready_sent:
            self._ready_sent = True
            self.notify("READY=1")
        self._ping()

    def _watch(self, target: WatchTarget) -> None:
        state = self.states.get(target.unit, UnitState())
        try:
            active_state, pid, age = self.observer.observe(target.unit)
        except ServiceError as exc:
            if state.status != "unknown":
                log.warning("cannot read the state of %s: %s", target.unit, exc)
            self.states[target.unit] = replace(state, status="unknown", failures=0, detail=str(exc))
            return
        health = self.prober.probe(target.url) if active_state == "active" else None
        decision = decide(
            target.unit, state, UnitObservation(active_state, pid, age, health), self.cfg, self.clock()
        )
        for level, message in decision.notes:
            log.log(level, "%s", message)
        self.states[target.unit] = decision.state
        if decision.action is not None:
            self._restart(decision.action, pid)

    def _restart(self, action: Restart, pid: int) -> None:
        unit = action.unit
        started = self.clock()
        try:
            self.services.stop(unit)
            self._ping()
            self._wait_down(unit)
            self.services.start(unit)
        except ServiceError as exc:
            log.error("could not restart %s (pid %d, attempt %d): %s", unit, pid, action.attempt, exc)
            return
        log.warning(
            "RESTARTED %s (pid %d, attempt %d, stop took %.1fs; next restart not before %.0fs): %s",
            unit,
            pid,
            action.attempt,
            self.clock() - started,
            action.next_gap,
            action.reason,
        )

    def _wait_down(self, unit: str, limit: float = 5.0) -> None:
        """After a stop that ended in SIGKILL, wait (bounded) until systemd saw the processes go."""
        end = self.clock() + limit
        while self.services.is_active(unit) and self.clock() < end:
            time.sleep(0.2)

    def _ping(self) -> None:
        if self.watchdog_every is not None:
            self.notify("WATCHDOG=1")

    def run(self) -> int:
        log.info(
            "scheduler watchdog %s: %s; every %.0fs, restart after %d failed checks, start-up grace %.0fs",
            __version__,
            ", ".join(f"{t.unit} <- {t.url}" for t in self.cfg.targets),
            self.cfg.interval,
            self.cfg.failure_threshold,
            self.cfg.startup_grace,
        )
        while not self._stop.is_set():
            began = self.clock()
            self.run_once()
            self._wait(max(0.0, began + self.cfg.interval - self.clock()))
        self.notify("STOPPING=1")
        log.info("scheduler watchdog stopped")
        return 0

    def _wait(self, delay: float) -> None:
        wait_pinging(self._stop, self.clock, delay, self.watchdog_every, self._ping)


def _install_signal_handlers(dog: Watchdog) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        dog.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_ha.failover.watchdog",
        description="Restart scheduler units that run but fail their health check (active_active mode).",
    )
    parser.add_argument("-c", "--config", help=f"TOML config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "check-config"])
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_watchdog_config(args.config)
    except ConfigError as exc:
        print(f"airflow-ha watchdog: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for key, value in sorted(vars(cfg).items()):
            print(f"{key} = {value!r}")
        worst = cfg.worst_case_detection()
        print(f"# worst case from a hang to the restart (30 s health threshold): {worst:g}s")
        return 0
    dog = Watchdog.from_config(cfg)
    _install_signal_handlers(dog)
    return dog.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
