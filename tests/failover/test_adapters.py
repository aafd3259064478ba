"""The thin adapters: systemctl, the HTTP/command health checker, sd_notify, journald logging."""

from __future__ import annotations

import http.server
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_ha.failover.health import HttpHealthChecker
from airflow_ha.failover.systemd import (
    DryRunServiceManager,
    JournalFormatter,
    ServiceError,
    SystemctlServiceManager,
    sd_notify,
    watchdog_interval,
)


class FakeRunner:
    """Stands in for subprocess.run: records argv, answers from a script."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[list[str], float]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((argv, kw["timeout"]))
        answer = self.answers.get(argv[1], (0, ""))
        if isinstance(answer, BaseException):
            raise answer
        rc, out = answer
        return subprocess.CompletedProcess(argv, rc, out, "boom" if rc else "")


def test_systemctl_commands() -> None:
    run = FakeRunner({"show": (0, "active\n")})
    sm = SystemctlServiceManager("/bin/systemctl", stop_timeout=2.0, call_timeout=5.0, runner=run)
    sm.start("airflow-scheduler.service")
    sm.restart("airflow-scheduler.service")
    sm.stop("airflow-scheduler.service")
    assert sm.is_active("airflow-scheduler.service")
    assert run.calls == [
        (["/bin/systemctl", "start", "--no-block", "airflow-scheduler.service"], 5.0),
        (["/bin/systemctl", "restart", "--no-block", "airflow-scheduler.service"], 5.0),
        (["/bin/systemctl", "stop", "airflow-scheduler.service"], 2.0),
        (["/bin/systemctl", "show", "--property=ActiveState", "--value", "airflow-scheduler.service"], 5.0),
    ]


@pytest.mark.parametrize(
    ("state", "running"),
    [
        ("active", True),
        ("activating", True),
        ("deactivating", True),
        ("reloading", True),
        ("inactive", False),
        ("failed", False),
    ],
)
def test_is_active_treats_anything_not_down_as_running(state: str, running: bool) -> None:
    sm = SystemctlServiceManager(runner=FakeRunner({"show": (0, state + "\n")}))
    assert sm.is_active("u.service") is running


def test_stop_that_times_out_escalates_to_sigkill() -> None:
    run = FakeRunner({"stop": subprocess.TimeoutExpired(["systemctl"], 2.0)})
    SystemctlServiceManager(stop_timeout=2.0, runner=run).stop("airflow-scheduler.service")
    assert [argv[1:] for argv, _ in run.calls] == [
        ["stop", "airflow-scheduler.service"],
        ["kill", "--signal=SIGKILL", "airflow-scheduler.service"],
    ]


def test_systemctl_failures_raise_service_error() -> None:
    sm = SystemctlServiceManager(runner=FakeRunner({"start": (5, ""), "stop": (1, ""), "show": (1, "")}))
    with pytest.raises(ServiceError, match=r"start --no-block u\.service: boom"):
        sm.start("u.service")
    with pytest.raises(ServiceError, match=r"stop u\.service"):
        sm.stop("u.service")
    with pytest.raises(ServiceError):
        sm.is_active("u.service")
    missing = SystemctlServiceManager("/nonexistent/systemctl")
    with pytest.raises(ServiceError):
        missing.start("u.service")


def test_dry_run_service_manager_only_pretends(caplog: pytest.LogCaptureFixture) -> None:
    sm = DryRunServiceManager()
    with caplog.at_level(logging.INFO):
        sm.start("u.service")
        assert sm.is_active("u.service")
        sm.stop("u.service")
    assert not sm.is_active("u.service")
    assert "dry-run: would start u.service" in caplog.text


# -- health --------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = 200 if self.path == "/health" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"OK" if code == 200 else b"unhealthy")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_leader_health_over_http(http_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://192.0.2.1:3128")  # must be ignored
    ok = HttpHealthChecker([f"http://127.0.0.1:{http_port}/health"], timeout=1.0).check_leader()
    assert ok.ok
    bad = HttpHealthChecker([f"http://127.0.0.1:{http_port}/other"], timeout=1.0).check_leader()
    assert not bad.ok
    assert "HTTP 503" in bad.detail
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = HttpHealthChecker([f"http://127.0.0.1:{closed}/health"], timeout=0.5).check_leader()
    assert not down.ok
    assert "refused" in down.detail.lower()
    assert HttpHealthChecker([]).check_leader().ok


def test_standby_checks_run_commands_and_cache_the_result(tmp_path: Path) -> None:
    marker = tmp_path / "ready"
    now = [0.0]
    hc = HttpHealthChecker(
        [],
        standby_checks=[f"test -e {marker}"],
        standby_check_interval=10.0,
        clock=lambda: now[0],
    )
    first = hc.check_standby()
    assert not first.ok
    assert f"`test -e {marker}` exited 1" in first.detail
    marker.touch()
    now[0] = 5.0
    assert not hc.check_standby().ok  # cached
    now[0] = 10.0
    assert hc.check_standby().ok
    assert HttpHealthChecker([]).check_standby().ok  # no checks: ready


def test_standby_check_timeout_and_missing_command() -> None:
    slow = HttpHealthChecker([], standby_checks=[f"{sys.executable} -c 'import time; time.sleep(5)'"])
    slow.standby_check_timeout = 0.2
    r = slow.check_standby()
    assert not r.ok
    assert "timed out" in r.detail
    r = HttpHealthChecker([], standby_checks=["/nonexistent/check"]).check_standby()
    assert not r.ok


# -- sd_notify, watchdog, journald ---------------------------------------------------------------


def test_sd_notify_sends_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(1)
        assert sd_notify("READY=1", env={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
    assert not sd_notify("READY=1", env={})
    assert not sd_notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "6000000"}) == 3.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "6000000", "WATCHDOG_PID": "1"}) is None


def test_journal_formatter_prefixes_syslog_priorities() -> None:
    fmt = JournalFormatter("%(message)s")
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "FENCING epoch 3", None, None)
    assert fmt.format(rec) == "<3>FENCING epoch 3"
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "started", None, None)
    assert fmt.format(rec) == "<6>started"
