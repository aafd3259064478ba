"""Health of the guarded services (on the leader) and readiness to take over (on a standby).

The leader's check asks every configured URL (default: the Airflow scheduler's own health server,
``http://127.0.0.1:8974/health``, which answers 200 while the scheduler heartbeats and 503 when it
does not; Airflow enables it with ``[scheduler] enable_health_check = True``). Environment proxy
settings are ignored: these are local URLs.

A standby cannot probe a scheduler it does not run, so its readiness is a list of precondition
commands (run without a shell, each bounded by a timeout; none by default, which means ready).
Their result is cached for ``standby_check_interval`` seconds.
"""

from __future__ import annotations

import shlex
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class HealthReport:
    ok: bool
    detail: str = ""


class HealthChecker(Protocol):
    def check_leader(self) -> HealthReport:
        """Are the running guarded services healthy? (called on the lease holder)"""
        ...

    def check_standby(self) -> HealthReport:
        """May this host take the lease over? (called on non-holders)"""
        ...


class HttpHealthChecker:
    def __init__(
        self,
        urls: Sequence[str] = ("http://127.0.0.1:8974/health",),
        *,
        timeout: float = 1.0,
        standby_checks: Sequence[str] = (),
        standby_check_timeout: float = 5.0,
        standby_check_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.urls = tuple(urls)
        self.timeout = timeout
        self.standby_checks = tuple(shlex.split(c) for c in standby_checks)
        self.standby_check_timeout = standby_check_timeout
        self.standby_check_interval = standby_check_interval
        self._clock = clock
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._standby_cache: tuple[float, HealthReport] | None = None

    def check_leader(self) -> HealthReport:
        for url in self.urls:
            try:
                with self._opener.open(url, timeout=self.timeout) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                return HealthReport(False, f"{url}: {reason}")
            if status != 200:
                return HealthReport(False, f"{url}: HTTP {status}")
        return HealthReport(True, "health checks pass" if self.urls else "no health URL configured")

    def check_standby(self) -> HealthReport:
        now = self._clock()
        if self._standby_cache is not None and now - self._standby_cache[0] < self.standby_check_interval:
            return self._standby_cache[1]
        report = self._run_standby_checks()
        self._standby_cache = (now, report)
        return report

    def _run_standby_checks(self) -> HealthReport:
        for argv in self.standby_checks:
            cmd = shlex.join(argv)
            try:
                proc = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=self.standby_check_timeout,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                return HealthReport(
                    False, f"standby check `{cmd}` timed out after {self.standby_check_timeout:g}s"
                )
            except OSError as exc:
                return HealthReport(False, f"standby check `{cmd}`: {exc.strerror or exc}")
            if proc.returncode != 0:
                out = " ".join((proc.stderr or proc.stdout or "").split())[:200]
                return HealthReport(
                    False, f"standby check `{cmd}` exited {proc.returncode}: {out}".rstrip(": ")
                )
        return HealthReport(True, "ready")


class StaticHealthChecker:
    """Fixed answers; useful for tests and for running without health checks."""

    def __init__(self, leader: HealthReport | None = None, standby: HealthReport | None = None) -> None:
        self.leader = leader or HealthReport(True, "static")
        self.standby = standby or HealthReport(True, "static")

    def check_leader(self) -> HealthReport:
        return self.leader

    def check_standby(self) -> HealthReport:
        return self.standby
