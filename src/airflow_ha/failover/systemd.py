"""systemd glue: the ServiceManager protocol and its implementations, sd_notify, journald logging.

``SystemctlServiceManager`` semantics:

- ``start``/``restart`` queue the job (``--no-block``) so the control loop never waits for a slow
  start; a unit that fails to start shows up as not active / unhealthy on the next loop.
- ``stop`` waits for the stop job at most ``stop_timeout`` seconds; if the unit is still not down,
  its processes get SIGKILL (``systemctl kill --signal=SIGKILL``). That bound is what lets a
  fencing leader be down before its lease can expire.
- ``is_active`` is True unless the unit is ``inactive`` or ``failed``: ``activating`` (also
  ``auto-restart``), ``reloading`` and ``deactivating`` count as running, so a standby stops them.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess[str]]


class ServiceError(RuntimeError):
    """A unit operation failed."""


class ServiceManager(Protocol):
    def start(self, unit: str) -> None: ...

    def stop(self, unit: str) -> None: ...

    def restart(self, unit: str) -> None: ...

    def is_active(self, unit: str) -> bool: ...


class SystemctlServiceManager:
    """Units through ``systemctl``; every call is bounded by a timeout."""

    def __init__(
        self,
        systemctl: str = "systemctl",
        *,
        stop_timeout: float = 2.0,
        call_timeout: float = 5.0,
        runner: Runner = subprocess.run,
    ) -> None:
        self.systemctl = systemctl
        self.stop_timeout = stop_timeout
        self.call_timeout = call_timeout
        self._run = runner

    def _systemctl(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return self._run(
            [self.systemctl, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def _checked(self, args: Sequence[str], timeout: float) -> None:
        try:
            proc = self._systemctl(args, timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"systemctl {' '.join(args)}: {exc}") from exc
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout or "").strip() or f"exit status {proc.returncode}"
            raise ServiceError(f"systemctl {' '.join(args)}: {msg}")

    def start(self, unit: str) -> None:
        self._checked(["start", "--no-block", unit], self.call_timeout)

    def restart(self, unit: str) -> None:
        self._checked(["restart", "--no-block", unit], self.call_timeout)

    def stop(self, unit: str) -> None:
        try:
            proc = self._systemctl(["stop", unit], self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.1fs: sending SIGKILL", unit, self.stop_timeout)
            self._checked(["kill", "--signal=SIGKILL", unit], self.call_timeout)
            return
        except OSError as exc:
            raise ServiceError(f"systemctl stop {unit}: {exc}") from exc
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout or "").strip() or f"exit status {proc.returncode}"
            raise ServiceError(f"systemctl stop {unit}: {msg}")

    def is_active(self, unit: str) -> bool:
        try:
            proc = self._systemctl(["show", "--property=ActiveState", "--value", unit], self.call_timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"systemctl show {unit}: {exc}") from exc
        if proc.returncode != 0:
            raise ServiceError(f"systemctl show {unit}: {(proc.stderr or '').strip() or proc.returncode}")
        return proc.stdout.strip() not in {"inactive", "failed", ""}


class DryRunServiceManager:
    """Pretends: logs what it would do and remembers the pretended state (``dry_run = true``)."""

    def __init__(self) -> None:
        self.active: dict[str, bool] = {}

    def start(self, unit: str) -> None:
        log.info("dry-run: would start %s", unit)
        self.active[unit] = True

    def restart(self, unit: str) -> None:
        log.info("dry-run: would restart %s", unit)
        self.active[unit] = True

    def stop(self, unit: str) -> None:
        log.info("dry-run: would stop %s", unit)
        self.active[unit] = False

    def is_active(self, unit: str) -> bool:
        return self.active.get(unit, False)


# ---------------------------------------------------------------------------------------------
# sd_notify


def sd_notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd if ``$NOTIFY_SOCKET`` is set; never raises."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify(%s) failed: %s", message, exc)
        return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings systemd expects (half of WatchdogSec), or None."""
    env = dict(os.environ) if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Logging

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<prio>message``: journald takes the priority from the prefix and adds time and unit."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald (systemd sets ``$JOURNAL_STREAM=dev:ino``)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(verbose: bool = False) -> None:
    """One line per event on stderr; under systemd the journal gets priorities and timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("psycopg").setLevel(logging.WARNING)


def wait_pinging(
    stop: threading.Event,
    clock: Callable[[], float],
    delay: float,
    every: float | None,
    ping: Callable[[], None],
) -> None:
    """Sleep ``delay`` seconds of ``clock``, waking early when ``stop`` is set, calling ``ping``
    (the systemd watchdog) every ``every`` seconds meanwhile (never when ``every`` is None)."""
    end = clock() + delay
    while not stop.is_set():
        left = end - clock()
        if left <= 0:
            return
        step = left if every is None else min(left, every)
        if stop.wait(step):
            return
        ping()
