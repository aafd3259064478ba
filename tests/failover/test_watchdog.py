"""The active_active scheduler watchdog: its decisions, back-off, config, and one log line per action."""

from __future__ import annotations

import itertools
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airflow_ha.failover.config import ConfigError
from airflow_ha.failover.health import HealthReport
from airflow_ha.failover.watchdog import (
    Restart,
    SystemctlObserver,
    UnitObservation,
    UnitState,
    Watchdog,
    WatchdogConfig,
    WatchTarget,
    backoff_gap,
    decide,
    load_watchdog_config,
    main,
    watchdog_config_from_mapping,
)

UNIT = "airflow-scheduler.service"
CFG = WatchdogConfig(
    interval=5.0,
    timeout=3.0,
    failure_threshold=3,
    startup_grace=90.0,
    backoff_initial=60.0,
    backoff_max=600.0,
    backoff_reset=600.0,
)
OK = HealthReport(True, "health checks pass")
BAD = HealthReport(False, "http://127.0.0.1:8974/health: HTTP 503")
HUNG = HealthReport(False, "http://127.0.0.1:8974/health: timed out")


def obs(health: HealthReport | None, *, state: str = "active", pid: int = 100, age: float | None = 1000.0):
    return UnitObservation(state, pid, age, health)


def run(
    rounds: list[UnitObservation], *, start: float = 0.0, step: float = 5.0, state: UnitState | None = None
) -> tuple[UnitState, list[tuple[float, Restart]], list[tuple[int, str]]]:
    """Feed observations one round apart; return the last state, the restarts and every note."""
    st = state or UnitState()
    restarts: list[tuple[float, Restart]] = []
    notes: list[tuple[int, str]] = []
    now = start
    for o in rounds:
        d = decide(UNIT, st, o, CFG, now)
        st = d.state
        notes.extend(d.notes)
        if d.action is not None:
            restarts.append((now, d.action))
        now += step
    return st, restarts, notes


# -- decisions ------------------------------------------------------------------------------------


def test_healthy_unit_is_left_alone():
    st, restarts, notes = run([obs(OK)] * 20)
    assert restarts == []
    assert notes == []
    assert st.status == "healthy"


def test_hung_unit_is_restarted_after_the_threshold_and_once():
    st, restarts, notes = run([obs(OK), obs(HUNG), obs(HUNG), obs(HUNG)])
    assert [(t, r.attempt) for t, r in restarts] == [(15.0, 1)]
    assert "3 failed health checks in a row" in restarts[0][1].reason
    assert "timed out" in restarts[0][1].reason
    assert st.status == "unhealthy"
    assert st.failures == 0
    # exactly one note before the action: the first failed check
    assert [lvl for lvl, _ in notes] == [logging.WARNING]
    assert "(1/3)" in notes[0][1]


def test_a_single_failed_check_does_not_restart():
    _, restarts, notes = run([obs(OK), obs(BAD), obs(OK), obs(BAD), obs(BAD), obs(OK)])
    assert restarts == []
    assert any("healthy again" in m for _, m in notes)


def test_failed_checks_during_start_up_grace_do_not_count():
    young = [obs(BAD, age=a) for a in range(0, 90, 5)]
    st, restarts, _ = run(young)
    assert restarts == []
    assert st.status == "starting"
    assert "start-up grace" in st.detail
    # past the grace, the threshold applies from zero
    st, restarts, _ = run([obs(BAD, age=90.0), obs(BAD, age=95.0), obs(BAD, age=100.0)], state=st)
    assert len(restarts) == 1


def test_healthy_during_grace_counts_as_healthy():
    st, _, _ = run([obs(OK, age=3.0)])
    assert st.status == "healthy"


def test_unit_that_is_not_active_is_never_restarted():
    for state in ("inactive", "failed", "activating", "deactivating"):
        st, restarts, notes = run([obs(None, state=state)] * 10)
        assert restarts == []
        assert st.status == "not-running"
        assert len(notes) == 1  # logged once, not every round
        assert f"is {state}" in notes[0][1]


def test_dead_then_running_again_resets_the_failure_count():
    rounds = [obs(BAD), obs(BAD), obs(None, state="activating", pid=0), obs(BAD, pid=101, age=1.0)]
    st, restarts, _ = run(rounds)
    assert restarts == []
    assert st.status == "starting"


def test_unknown_active_time_falls_back_to_when_the_pid_was_first_seen():
    st, restarts, _ = run([obs(BAD, age=None, pid=7)] * 18)  # 85 s of rounds: inside the grace
    assert restarts == []
    assert st.status == "starting"
    st, restarts, _ = run([obs(BAD, age=None, pid=7)] * 3, start=90.0, state=st)
    assert len(restarts) == 1


def test_back_off_doubles_and_is_capped():
    assert [backoff_gap(CFG, n) for n in range(7)] == [0.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0]


def test_a_unit_that_stays_unhealthy_is_restarted_with_back_off():
    # The restarted scheduler keeps failing (database down, say). Each restart gets a new pid and a
    # fresh start-up grace of 90 s; after it the back-off decides.
    st = UnitState()
    now = 0.0
    pid = 100
    started = -1000.0
    times: list[float] = []
    notes: list[tuple[int, str]] = []
    while now < 2000:
        d = decide(UNIT, st, obs(BAD, pid=pid, age=now - started), CFG, now)
        st = d.state
        notes.extend(d.notes)
        if d.action is not None:
            times.append(now)
            pid += 1
            started = now
        now += 5.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 10.0
    # the first gap is set by the grace and the threshold (90 + 2 * 5 s > 60 s back-off), then the
    # doubling back-off wins
    assert gaps[0] == 100.0
    assert gaps[1] >= 120.0
    assert gaps[2] >= 240.0
    assert gaps[3] >= 480.0
    assert all(g <= 600.0 + 5.0 for g in gaps[3:])
    deferred = [m for _, m in notes if "back-off" in m]
    # one line per deferral episode, not one per round: before every restart from the third on, and
    # once more after the last one (the run ends inside its back-off)
    assert len(deferred) == len(times) - 1


def test_back_off_series_resets_after_being_healthy_long_enough():
    st = UnitState(status="healthy", restarts=3, last_restart=0.0)
    st, _, _ = run([obs(OK)] * 121, start=10.0, state=st)  # 600 s healthy
    assert st.restarts == 0
    assert st.last_restart is None
    st2 = UnitState(status="healthy", restarts=3, last_restart=0.0)
    st2, _, _ = run([obs(OK)] * 50, start=10.0, state=st2)  # only 245 s
    assert st2.restarts == 3


# -- configuration -------------------------------------------------------------------------------


def test_config_defaults_and_file(tmp_path: Path):
    assert WatchdogConfig().targets == (WatchTarget(UNIT, "http://127.0.0.1:8974/health"),)
    f = tmp_path / "w.toml"
    f.write_text(
        'interval = 4\nfailure_threshold = 2\n[[watch]]\nunit = "airflow-scheduler"\n'
        'url = "http://127.0.0.1:8974/health"\n[[watch]]\nunit = "other.service"\nurl = "http://x/h"\n'
    )
    cfg = load_watchdog_config(f)
    assert cfg.interval == 4.0
    assert cfg.failure_threshold == 2
    assert cfg.targets == (
        WatchTarget("airflow-scheduler.service", "http://127.0.0.1:8974/health"),
        WatchTarget("other.service", "http://x/h"),
    )


def test_config_reports_every_problem():
    with pytest.raises(ConfigError) as exc:
        watchdog_config_from_mapping(
            {
                "interval": 2,
                "timeout": 3,
                "failure_threshold": 0,
                "bogus": 1,
                "watch": [{"unit": "u", "url": "x"}],
            }
        )
    text = str(exc.value)
    assert "timeout (3) must be below interval (2)" in text
    assert "failure_threshold must be >= 1" in text
    with pytest.raises(ConfigError, match="unknown key bogus"):
        watchdog_config_from_mapping({"bogus": 1})
    with pytest.raises(ConfigError, match="not an http"):
        watchdog_config_from_mapping({"watch": [{"unit": "u", "url": "ftp://x"}]})
    with pytest.raises(ConfigError, match="expected a number"):
        watchdog_config_from_mapping({"interval": "5"})
    with pytest.raises(ConfigError, match="no such file"):
        load_watchdog_config("/nonexistent/watchdog.toml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    f = tmp_path / "w.toml"
    f.write_text("interval = 5\n")
    assert main(["-c", str(f), "check-config"]) == 0
    assert "worst case" in capsys.readouterr().out
    f.write_text("interval = 0\n")
    assert main(["-c", str(f), "check-config"]) == 2


# -- adapters and the daemon round -----------------------------------------------------------------


def test_systemctl_observer_parses_show_output():
    def runner(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        out = "ActiveState=active\nMainPID=4242\nActiveEnterTimestampMonotonic=100000000\n"
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert SystemctlObserver(runner=runner, clock=lambda: 130.0).observe(UNIT) == ("active", 4242, 30.0)

    def never(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            argv, 0, "ActiveState=inactive\nMainPID=0\nActiveEnterTimestampMonotonic=0\n", ""
        )

    assert SystemctlObserver(runner=never).observe(UNIT) == ("inactive", 0, None)


class FakeUnits:
    """Observer and ServiceManager in one: a unit with a pid, restarted by stop + start."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.state = "active"
        self.pid = 100
        self.since = -1000.0
        self.calls: list[str] = []

    def observe(self, unit: str) -> tuple[str, int, float | None]:
        return self.state, self.pid, self.clock[0] - self.since

    def stop(self, unit: str) -> None:
        self.calls.append(f"stop {unit}")
        self.state = "inactive"

    def start(self, unit: str) -> None:
        self.calls.append(f"start {unit}")
        self.state, self.pid, self.since = "active", self.pid + 1, self.clock[0]

    def restart(self, unit: str) -> None:  # pragma: no cover - not used by the watchdog
        raise AssertionError

    def is_active(self, unit: str) -> bool:
        return self.state == "active"


class FakeProber:
    def __init__(self) -> None:
        self.answer = OK

    def probe(self, url: str) -> HealthReport:
        return self.answer


def test_daemon_round_restarts_with_one_log_line_and_notifies(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    units = FakeUnits(now)
    prober = FakeProber()
    sent: list[str] = []
    dog = Watchdog(CFG, units, prober, units, clock=lambda: now[0], notify=sent.append, watchdog_every=10.0)
    with caplog.at_level(logging.INFO, logger="airflow_ha.watchdog"):
        dog.run_once()
        assert "READY=1" in sent
        prober.answer = HUNG
        for _ in range(3):
            now[0] += 5.0
            dog.run_once()
    assert units.calls == [f"stop {UNIT}", f"start {UNIT}"]
    assert units.pid == 101
    restarted = [r for r in caplog.records if "RESTARTED" in r.getMessage()]
    assert len(restarted) == 1
    assert "pid 100" in restarted[0].getMessage()
    assert restarted[0].levelno == logging.WARNING
    assert "WATCHDOG=1" in sent
    assert any(s.startswith("STATUS=airflow-scheduler.service: unhealthy") for s in sent)
    # the new process is in its start-up grace: no second restart while it starts
    for _ in range(10):
        now[0] += 5.0
        dog.run_once()
    assert units.calls == [f"stop {UNIT}", f"start {UNIT}"]


def test_daemon_logs_a_failed_restart_once(caplog: pytest.LogCaptureFixture):
    from airflow_ha.failover.systemd import ServiceError

    now = [0.0]
    units = FakeUnits(now)

    def broken_stop(unit: str) -> None:
        raise ServiceError("systemctl stop: Access denied")

    units.stop = broken_stop  # type: ignore[method-assign]
    prober = FakeProber()
    prober.answer = BAD
    dog = Watchdog(CFG, units, prober, units, clock=lambda: now[0], notify=lambda m: None)
    with caplog.at_level(logging.INFO, logger="airflow_ha.watchdog"):
        for _ in range(3):
            dog.run_once()
            now[0] += 5.0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "could not restart" in errors[0].getMessage()
