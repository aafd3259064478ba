"""Configuration loading (TOML + environment) and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_ha.failover.config import (
    ConfigError,
    FailoverConfig,
    config_from_mapping,
    load_config,
    redact_dsn,
    validate,
)


def test_defaults_are_valid_and_aim_at_a_15s_takeover() -> None:
    cfg = FailoverConfig(dsn="host=db")
    assert validate(cfg) == []
    assert (cfg.ttl, cfg.renew_interval, cfg.safety_margin) == (10.0, 2.0, 4.0)
    assert cfg.unit_stop_bound == 3.0  # stop_timeout 2 + systemctl_timeout 1 < safety_margin 4
    assert cfg.units == ("airflow-scheduler.service",)
    assert cfg.health.urls == ("http://127.0.0.1:8974/health",)
    assert cfg.worst_case_takeover <= 15.0


def test_load_toml_file(tmp_path: Path) -> None:
    dsn_file = tmp_path / "failover.dsn"
    dsn_file.write_text("postgresql://airflow:s3cret@db.example:5432/airflow\n")
    path = tmp_path / "failover.toml"
    path.write_text(
        f"""
node_name = "sched1"
dsn_file = "{dsn_file}"
units = ["airflow-scheduler", "airflow-dag-processor.service", "airflow-triggerer"]
ttl = 12
renew_interval = 2
safety_margin = 3.5

[health]
startup_grace = 20
standby_checks = ["test -x /opt/airflow/venv/bin/airflow"]
"""
    )
    cfg = load_config(path, env={})
    assert cfg.node_name == "sched1"
    assert cfg.dsn == "postgresql://airflow:s3cret@db.example:5432/airflow"
    assert cfg.units == (
        "airflow-scheduler.service",
        "airflow-dag-processor.service",
        "airflow-triggerer.service",
    )
    assert cfg.ttl == 12.0
    assert isinstance(cfg.ttl, float)
    assert cfg.health.startup_grace == 20.0
    assert cfg.health.standby_checks == ("test -x /opt/airflow/venv/bin/airflow",)
    assert cfg.redacted()["dsn"] == "postgresql://airflow:***@db.example:5432/airflow"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "failover.toml"
    path.write_text('dsn = "host=file"\nttl = 10\n')
    env = {
        "AIRFLOW_HA_FAILOVER_DSN": "host=env",
        "AIRFLOW_HA_FAILOVER_TTL": "11.5",
        "AIRFLOW_HA_FAILOVER_UNITS": "airflow-scheduler, airflow-triggerer",
        "AIRFLOW_HA_FAILOVER_DRY_RUN": "yes",
        "AIRFLOW_HA_FAILOVER_HEALTH_URLS": '["http://127.0.0.1:8974/health", "http://127.0.0.1:9999/x"]',
        "AIRFLOW_HA_FAILOVER_HEALTH_MAX_RESTARTS": "3",
    }
    cfg = load_config(path, env=env)
    assert cfg.dsn == "host=env"
    assert cfg.ttl == 11.5
    assert cfg.units == ("airflow-scheduler.service", "airflow-triggerer.service")
    assert cfg.dry_run is True
    assert cfg.health.urls == ("http://127.0.0.1:8974/health", "http://127.0.0.1:9999/x")
    assert cfg.health.max_restarts == 3


def test_missing_default_file_is_fine_with_env_but_an_explicit_one_is_not(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="no such file"):
        load_config(missing, env={"AIRFLOW_HA_FAILOVER_DSN": "host=x"})
    env = {"AIRFLOW_HA_FAILOVER_DSN": "host=x", "AIRFLOW_HA_FAILOVER_NODE_NAME": "n1"}
    cfg = config_from_mapping({}, env=env)
    assert cfg.node_name == "n1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"ttl": 6}, "ttl (6) must be greater than 2 * renew_interval (2) + safety_margin (4) = 8"),
        (
            {"stop_timeout": 3},
            "stop_timeout (3) + systemctl_timeout (1) = 4 must be less than safety_margin (4)",
        ),
        ({"systemctl_timeout": 0}, "systemctl_timeout must be > 0"),
        ({"watchdog_sec": -1}, "watchdog_sec must be >= 0"),
        ({"statement_timeout": 2}, "statement_timeout (2) must be less than renew_interval (2)"),
        ({"db_timeout": 4}, "one hung database call cannot use up the whole lease"),
        ({"db_timeout": 0.5}, "db_timeout (0.5) must be at least statement_timeout (1)"),
        ({"connect_timeout": 1}, "connect_timeout (1) must be >= 2"),
        ({"ttl": -1}, "ttl must be > 0"),
        ({"mode": "active_active"}, "mode 'active_active' is not supported"),
        ({"units": []}, "units must list at least one systemd unit"),
        ({"units": ["a b"]}, "is not a valid systemd unit name"),
        ({"node_name": "has space"}, "node_name 'has space' must be 1-200 characters"),
        ({"health": {"timeout": 5}}, "health.timeout (5) must be > 0 and below renew_interval"),
        ({"health": {"urls": ["ftp://x"]}}, "is not an http(s) URL"),
        ({"health": {"unhealthy_threshold": 0}}, "health.unhealthy_threshold must be >= 1"),
        ({"health": {"standby_checks": ["echo 'unterminated"]}}, "cannot parse"),
        ({"tll": 10}, "unknown key tll"),
        ({"health": {"url": "x"}}, "unknown key health.url"),
        ({"ttl": "ten"}, "ttl: expected a number"),
        ({"dry_run": "yes"}, "dry_run: expected a boolean"),
        ({"units": "airflow-scheduler"}, "units: expected a list of strings"),
    ],
)
def test_validation_errors_are_clear(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"dsn": "host=db", **data})
    assert any(message in p for p in err.value.problems), err.value.problems


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"ttl": 5, "stop_timeout": 4})
    text = str(err.value)
    assert "no database connection" in text
    assert "ttl (5)" in text
    assert "stop_timeout (4)" in text


def test_missing_dsn_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dsn_file"):
        config_from_mapping({"dsn_file": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h user=u password=pw dbname=db", "host=h user=u password=*** dbname=db"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


# -- the systemd watchdog against the lease ---------------------------------------------------------


def test_the_role_defaults_with_a_4s_watchdog_are_valid() -> None:
    cfg = config_from_mapping({"dsn": "host=db", "watchdog_sec": 4})
    # a hung leader is killed and its units are down before the lease can pass: 4 + 3 + 2 < 10
    assert cfg.watchdog_sec + cfg.unit_stop_bound + cfg.db_timeout < cfg.ttl
    assert cfg.longest_step == 3.0  # the fence: stop_timeout 2 + systemctl_timeout 1


def test_a_watchdog_longer_than_the_lease_is_refused() -> None:
    # the setting the role had before: WatchdogSec 15 against a 10 s lease
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"dsn": "host=db", "watchdog_sec": 15})
    assert any(
        "watchdog_sec (15) + stop_timeout + systemctl_timeout (3) + db_timeout (2) = 20 "
        "must be less than ttl (10)" in p
        for p in err.value.problems
    ), err.value.problems


def test_a_watchdog_shorter_than_a_fence_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"dsn": "host=db", "watchdog_sec": 2.5})
    assert any(
        "watchdog_sec (2.5) must exceed the longest step between two watchdog pings (3 s" in p
        for p in err.value.problems
    ), err.value.problems


def test_standby_checks_count_in_the_longest_step() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(
            {
                "dsn": "host=db",
                "watchdog_sec": 4,
                "health": {"standby_checks": ["true"], "standby_check_timeout": 5},
            }
        )
    assert any("longest step between two watchdog pings (5 s" in p for p in err.value.problems)


def test_slow_renewals_must_not_starve_the_watchdog() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping(
            {"dsn": "host=db", "ttl": 12, "renew_interval": 3.9, "db_timeout": 3, "watchdog_sec": 5}
        )
    assert any(
        "or a healthy leader whose renewals are slow would lose its watchdog" in p for p in err.value.problems
    )


def test_no_watchdog_needs_no_watchdog_rules() -> None:
    assert validate(FailoverConfig(dsn="host=db", watchdog_sec=0)) == []
