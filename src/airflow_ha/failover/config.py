"""Configuration of the failover controller: a small TOML file plus environment overrides.

File (default ``/etc/airflow-ha/failover.toml``, or ``$AIRFLOW_HA_FAILOVER_CONFIG``, or ``-c PATH``)::

    mode = "active_standby"            # the only mode so far
    node_name = "sched1"               # default: the host name; must be unique per host
    lease_name = "scheduler"           # one lease per set of guarded units
    dsn_file = "/etc/airflow-ha/failover.dsn"   # libpq conninfo/URI in a 0600 file (or `dsn = "..."`)
    units = ["airflow-scheduler.service"]      # run only on the lease holder
    ttl = 10.0                         # lease length (database clock), seconds
    renew_interval = 2.0               # loop period: renew (leader) / try to acquire (standby)
    safety_margin = 4.0                # the leader fences this long before its lease can expire
    stop_timeout = 2.0                 # `systemctl stop` bound, then SIGKILL
    systemctl_timeout = 1.0            # bound of every other systemctl call (the SIGKILL included);
                                       # stop_timeout + systemctl_timeout must be < safety_margin
    watchdog_sec = 4.0                 # the unit's WatchdogSec (0: none); see validate() for its rules
    statement_timeout = 1.0            # server-side statement/lock timeout
    db_timeout = 2.0                   # client-side bound on one database call, (re)connect included
    connect_timeout = 2                # libpq connect_timeout (integer seconds, libpq's minimum is 2)
    dry_run = false                    # take leases and log, but never touch systemd units

    [health]
    urls = ["http://127.0.0.1:8974/health"]   # leader health: every URL must answer 200
    timeout = 1.0
    startup_grace = 45.0               # after a start/restart, health failures are not judged
    unhealthy_threshold = 3            # consecutive failed checks before the leader acts
    max_restarts = 1                   # restarts per unhealthy episode before stepping down
    unhealthy_grace = 60.0             # minimum unhealthy time before stepping down
    step_down_cooldown = 60.0          # after stepping down, do not take the lease back for this long
    standby_checks = []                # commands (no shell) that must exit 0 before a standby may take over
    standby_check_timeout = 5.0
    standby_check_interval = 10.0      # cache standby check results this long

Every key can be overridden by the environment: ``AIRFLOW_HA_FAILOVER_<KEY>`` for top-level keys
and ``AIRFLOW_HA_FAILOVER_HEALTH_<KEY>`` for ``[health]`` keys (lists: comma-separated or a JSON
list; booleans: true/false/1/0/yes/no). ``AIRFLOW_HA_FAILOVER_DSN`` is the usual way to pass the
connection string from a systemd ``EnvironmentFile=``.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/airflow-ha/failover.toml")
ENV_PREFIX = "AIRFLOW_HA_FAILOVER_"
MODES = ("active_standby",)


class ConfigError(ValueError):
    """The configuration cannot be loaded or is inconsistent; ``problems`` lists every finding."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid failover configuration:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class HealthConfig:
    urls: tuple[str, ...] = ("http://127.0.0.1:8974/health",)
    timeout: float = 1.0
    startup_grace: float = 45.0
    unhealthy_threshold: int = 3
    max_restarts: int = 1
    unhealthy_grace: float = 60.0
    step_down_cooldown: float = 60.0
    standby_checks: tuple[str, ...] = ()
    standby_check_timeout: float = 5.0
    standby_check_interval: float = 10.0


@dataclass(frozen=True)
class FailoverConfig:
    dsn: str = field(default="", repr=False)
    dsn_file: str = ""
    mode: str = "active_standby"
    node_name: str = field(default_factory=socket.gethostname)
    lease_name: str = "scheduler"
    units: tuple[str, ...] = ("airflow-scheduler.service",)
    ttl: float = 10.0
    renew_interval: float = 2.0
    safety_margin: float = 4.0
    stop_timeout: float = 2.0
    systemctl_timeout: float = 1.0
    watchdog_sec: float = 0.0
    statement_timeout: float = 1.0
    db_timeout: float = 2.0
    connect_timeout: int = 2
    dry_run: bool = False
    systemctl: str = "systemctl"
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def worst_case_takeover(self) -> float:
        """Seconds from the leader vanishing to a standby holding the lease, at worst."""
        return self.ttl + self.renew_interval + self.db_timeout

    @property
    def unit_stop_bound(self) -> float:
        """Seconds a fence may take: ``systemctl stop`` (bounded), then ``systemctl kill`` (SIGKILL)."""
        return self.stop_timeout + self.systemctl_timeout

    @property
    def longest_step(self) -> float:
        """The longest the loop may go without a chance to ping the systemd watchdog: one database
        call, one fence, or the leader's look at its units and health URLs (standby checks too)."""
        h = self.health
        return max(
            self.db_timeout,
            self.unit_stop_bound,
            h.timeout * len(h.urls) + self.systemctl_timeout * len(self.units),
            h.standby_check_timeout * len(h.standby_checks),
        )

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, with the DSN's password hidden."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "dsn":
                value = redact_dsn(value)
            elif f.name == "health":
                value = {h.name: _plain(getattr(value, h.name)) for h in fields(HealthConfig)}
            out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def redact_dsn(dsn: str) -> str:
    """Hide a password in a libpq URI (``postgresql://u:pw@h/db``) or key/value conninfo."""
    if "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        if "@" in rest:
            cred, host = rest.rsplit("@", 1)
            if ":" in cred:
                cred = cred.split(":", 1)[0] + ":***"
            rest = f"{cred}@{host}"
        dsn = f"{scheme}://{rest}"
    parts = []
    for token in dsn.split():
        if token.lower().startswith("password="):
            token = "password=***"
        parts.append(token)
    return " ".join(parts) if parts else dsn


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> FailoverConfig:
    """Load the file (if any), apply environment overrides, read ``dsn_file``, validate.

    ``path`` None means ``$AIRFLOW_HA_FAILOVER_CONFIG`` or the default path; the default path may
    be missing (everything then comes from the environment), an explicitly named file may not.
    """
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(ENV_PREFIX + "CONFIG"))
    cfg_path = Path(path) if path is not None else Path(env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            with cfg_path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"{cfg_path}: {exc}"]) from exc
    elif explicit:
        raise ConfigError([f"{cfg_path}: no such file"])
    return config_from_mapping(data, env=env, source=str(cfg_path))


def config_from_mapping(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> FailoverConfig:
    """Build and validate a config from parsed TOML data plus environment overrides."""
    env = {} if env is None else env
    problems: list[str] = []
    data = dict(data)
    health_data = data.pop("health", {})
    if not isinstance(health_data, Mapping):
        problems.append(f"{source}: [health] must be a table")
        health_data = {}
    top = _convert_section(FailoverConfig, data, env, ENV_PREFIX, "", source, problems, skip={"health"})
    hea = _convert_section(
        HealthConfig, dict(health_data), env, ENV_PREFIX + "HEALTH_", "health.", source, problems
    )
    if problems:
        raise ConfigError(problems)
    cfg = replace(FailoverConfig(), **top, health=replace(HealthConfig(), **hea))
    if not cfg.dsn and cfg.dsn_file:
        try:
            cfg = replace(cfg, dsn=Path(cfg.dsn_file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError([f"dsn_file {cfg.dsn_file}: {exc.strerror or exc}"]) from exc
    cfg = replace(cfg, units=tuple(normalise_unit(u) for u in cfg.units))
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def normalise_unit(name: str) -> str:
    """``airflow-scheduler`` -> ``airflow-scheduler.service``; names with a suffix are kept."""
    name = name.strip()
    return name if "." in name else f"{name}.service"


def _convert_section(
    cls: type,
    data: dict[str, Any],
    env: Mapping[str, str],
    env_prefix: str,
    key_prefix: str,
    source: str,
    problems: list[str],
    skip: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)} - set(skip)
    out: dict[str, Any] = {}
    for key in sorted(set(data) - known):
        problems.append(f"{source}: unknown key {key_prefix}{key!s}")
    for name in sorted(known):
        env_key = env_prefix + name.upper()
        if env_key in env:
            raw: Any = env[env_key]
            where = f"${env_key}"
            from_env = True
        elif name in data:
            raw = data[name]
            where = f"{source}: {key_prefix}{name}"
            from_env = False
        else:
            continue
        try:
            out[name] = _coerce(raw, hints[name], from_env)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
    return out


def _coerce(raw: Any, hint: Any, from_env: bool) -> Any:
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off", ""}:
                return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if from_env and isinstance(raw, str):
            return int(raw.strip())
        raise ValueError(f"expected an integer, got {raw!r}")
    if hint is float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        if isinstance(raw, int | float):
            return float(raw)
        if from_env and isinstance(raw, str):
            return float(raw.strip())
        raise ValueError(f"expected a number, got {raw!r}")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise ValueError(f"expected a string, got {raw!r}")
    origin = typing.get_origin(hint)
    if origin is tuple:
        if from_env and isinstance(raw, str):
            text = raw.strip()
            raw = (
                json.loads(text)
                if text.startswith("[")
                else [p.strip() for p in text.split(",") if p.strip()]
            )
        if not isinstance(raw, list | tuple) or not all(isinstance(x, str) for x in raw):
            raise ValueError(f"expected a list of strings, got {raw!r}")
        return tuple(raw)
    raise TypeError(f"unsupported field type {hint}")


# ---------------------------------------------------------------------------------------------
# Validation


def _watchdog_problems(cfg: FailoverConfig) -> list[str]:
    """The systemd watchdog (WatchdogSec = ``watchdog_sec``) against the lease.

    A leader pings the watchdog only while ``now + watchdog_sec + unit_stop_bound`` is before its
    lease's expiry (controller.py), so a controller that hangs at any moment is killed by systemd,
    and its units (bound to it, TimeoutStopSec = stop_timeout) are down, before the lease can pass.
    That only works if a healthy leader may ping at all, and never goes ``watchdog_sec`` without.
    """
    p: list[str] = []
    w, stop, db = cfg.watchdog_sec, cfg.unit_stop_bound, cfg.db_timeout
    if w + stop + db >= cfg.ttl:
        p.append(
            f"watchdog_sec ({w:g}) + stop_timeout + systemctl_timeout ({stop:g}) + db_timeout ({db:g}) = "
            f"{w + stop + db:g} must be less than ttl ({cfg.ttl:g}): systemd must kill a hung leader and its "
            "units must be down before its lease can pass to another host; lower watchdog_sec or raise ttl"
        )
    elif cfg.renew_interval + db + stop + max(w / 2, db) >= cfg.ttl:
        p.append(
            f"renew_interval ({cfg.renew_interval:g}) + db_timeout ({db:g}) + stop_timeout + "
            f"systemctl_timeout ({stop:g}) + max(watchdog_sec / 2, db_timeout) ({max(w / 2, db):g}) must be "
            f"less than ttl "
            f"({cfg.ttl:g}), or a healthy leader whose renewals are slow would lose its watchdog"
        )
    if w <= cfg.longest_step:
        p.append(
            f"watchdog_sec ({w:g}) must exceed the longest step between two watchdog pings "
            f"({cfg.longest_step:g} s: a database call, a fence, or the units and health checks), or systemd "
            "kills a healthy controller"
        )
    return p


def validate(cfg: FailoverConfig) -> list[str]:
    """Every inconsistency in ``cfg``, as readable sentences (empty when valid)."""
    p: list[str] = []
    h = cfg.health
    if cfg.mode not in MODES:
        p.append(f"mode {cfg.mode!r} is not supported (supported: {', '.join(MODES)})")
    if not cfg.dsn:
        p.append(f"no database connection: set dsn, dsn_file or ${ENV_PREFIX}DSN")
    if not cfg.node_name.strip() or len(cfg.node_name) > 200 or any(c.isspace() for c in cfg.node_name):
        p.append(f"node_name {cfg.node_name!r} must be 1-200 characters without spaces")
    if not cfg.lease_name.strip():
        p.append("lease_name must not be empty")
    if not cfg.units:
        p.append("units must list at least one systemd unit to guard")
    for unit in cfg.units:
        if not unit or any(c.isspace() for c in unit) or unit.startswith("-"):
            p.append(f"unit name {unit!r} is not a valid systemd unit name")
    if len(set(cfg.units)) != len(cfg.units):
        p.append("units contains duplicates")
    non_positive = [
        name
        for name in (
            "ttl",
            "renew_interval",
            "safety_margin",
            "stop_timeout",
            "systemctl_timeout",
            "statement_timeout",
            "db_timeout",
        )
        if getattr(cfg, name) <= 0
    ]
    if non_positive:
        p.extend(f"{name} must be > 0 (got {getattr(cfg, name)})" for name in non_positive)
        return p  # the relations below assume positive numbers
    if cfg.ttl <= 2 * cfg.renew_interval + cfg.safety_margin:
        p.append(
            f"ttl ({cfg.ttl:g}) must be greater than 2 * renew_interval ({cfg.renew_interval:g}) + "
            f"safety_margin ({cfg.safety_margin:g}) = {2 * cfg.renew_interval + cfg.safety_margin:g}, "
            "so that a leader gets at least two renewal attempts before it has to fence"
        )
    if cfg.ttl <= 2 * cfg.db_timeout + cfg.safety_margin:
        p.append(
            f"ttl ({cfg.ttl:g}) must be greater than 2 * db_timeout ({cfg.db_timeout:g}) + safety_margin "
            f"({cfg.safety_margin:g}), so that one hung database call cannot use up the whole lease"
        )
    if cfg.unit_stop_bound >= cfg.safety_margin:
        p.append(
            f"stop_timeout ({cfg.stop_timeout:g}) + systemctl_timeout ({cfg.systemctl_timeout:g}) = "
            f"{cfg.unit_stop_bound:g} must be less than safety_margin ({cfg.safety_margin:g}): "
            "a fenced leader must have stopped (or SIGKILLed) its units before its lease expires"
        )
    if cfg.watchdog_sec < 0:
        p.append(f"watchdog_sec must be >= 0 (got {cfg.watchdog_sec:g}; 0 means no systemd watchdog)")
    elif cfg.watchdog_sec > 0:
        p.extend(_watchdog_problems(cfg))
    if cfg.statement_timeout >= cfg.renew_interval:
        p.append(
            f"statement_timeout ({cfg.statement_timeout:g}) must be less than renew_interval "
            f"({cfg.renew_interval:g})"
        )
    if cfg.db_timeout < cfg.statement_timeout:
        p.append(
            f"db_timeout ({cfg.db_timeout:g}) must be at least statement_timeout ({cfg.statement_timeout:g})"
        )
    if cfg.connect_timeout < 2:
        p.append(f"connect_timeout ({cfg.connect_timeout}) must be >= 2 (libpq treats smaller values as 2)")
    # health
    if not 0 < h.timeout < cfg.renew_interval:
        p.append(
            f"health.timeout ({h.timeout:g}) must be > 0 and below renew_interval ({cfg.renew_interval:g})"
        )
    for url in h.urls:
        if not url.startswith(("http://", "https://")):
            p.append(f"health.urls: {url!r} is not an http(s) URL")
    for name in ("startup_grace", "unhealthy_grace", "step_down_cooldown", "standby_check_interval"):
        if getattr(h, name) < 0:
            p.append(f"health.{name} must be >= 0 (got {getattr(h, name)})")
    if h.standby_check_timeout <= 0:
        p.append(f"health.standby_check_timeout must be > 0 (got {h.standby_check_timeout})")
    if h.unhealthy_threshold < 1:
        p.append(f"health.unhealthy_threshold must be >= 1 (got {h.unhealthy_threshold})")
    if h.max_restarts < 0:
        p.append(f"health.max_restarts must be >= 0 (got {h.max_restarts})")
    for cmd in h.standby_checks:
        try:
            if not shlex.split(cmd):
                p.append("health.standby_checks contains an empty command")
        except ValueError as exc:
            p.append(f"health.standby_checks: cannot parse {cmd!r}: {exc}")
    return p
