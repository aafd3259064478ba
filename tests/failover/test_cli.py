"""The command line without a database: argument handling, config errors, status rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_ha.failover import cli
from airflow_ha.failover.lease import LeaseInfo, MemberInfo


def info(**kw: object) -> LeaseInfo:
    values: dict[str, object] = {
        "name": "scheduler",
        "holder": "sched1",
        "epoch": 4,
        "remaining": 8.5,
        "renewed_ago": 1.5,
        "held_for": 300.0,
        "last_holder": "sched2",
        "released_ago": None,
        "paused": False,
        "paused_by": None,
        "paused_ago": None,
        "pause_reason": None,
        "step_down_epoch": None,
        "step_down_requested_by": None,
    }
    values.update(kw)
    return LeaseInfo(**values)  # type: ignore[arg-type]


MEMBERS = [
    MemberInfo("sched1", "leader", True, "health checks pass", 4, 101, "0.1.0", 0.4, 3600.0),
    MemberInfo("sched2", "standby", True, "ready", None, 202, "0.1.0", 1.2, 60.0),
]


def test_status_of_a_healthy_cluster() -> None:
    out = cli.format_status("scheduler", info(), MEMBERS)
    lines = out.splitlines()
    assert lines[0] == (
        "lease 'scheduler': leader sched1, epoch 4, held for 300.0s, renewed 1.5s ago, "
        "expires in 8.5s (database clock)"
    )
    assert lines[1] == "failover: active"
    assert lines[3].split() == ["HOST", "ROLE", "HEALTHY", "REPORTED", "EPOCH", "UPTIME", "DETAIL"]
    assert lines[4].split()[:5] == ["sched1", "leader", "yes", "0.4s", "ago"]
    assert lines[5].endswith("ready")


def test_status_without_leader_paused_and_pending_step_down() -> None:
    out = cli.format_status("scheduler", info(remaining=-3.0), [])
    assert "NO LEADER - sched1's lease (epoch 4) expired 3.0s ago" in out
    assert "no host has reported yet" in out
    out = cli.format_status("scheduler", info(holder=None, released_ago=2.0), [])
    assert "NO LEADER - free (epoch 4, last holder sched2, released 2.0s ago)" in out
    out = cli.format_status(
        "scheduler", info(paused=True, paused_by="ops@h", paused_ago=9.0, pause_reason="upgrade"), []
    )
    assert "failover: PAUSED by ops@h 9.0s ago: upgrade" in out
    out = cli.format_status("scheduler", info(step_down_epoch=4, step_down_requested_by="ops@h"), [])
    assert "step-down: requested by ops@h (pending)" in out


def test_config_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIRFLOW_HA_FAILOVER_DSN", raising=False)
    cfg = tmp_path / "f.toml"
    cfg.write_text("ttl = 5\n")
    assert cli.main(["-c", str(cfg), "status"]) == 2
    err = capsys.readouterr().err
    assert "no database connection" in err
    assert "ttl (5) must be greater than" in err


def test_check_config_prints_the_effective_config_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text('dsn = "postgresql://airflow:hunter2@db/airflow"\nnode_name = "s1"\n')
    assert cli.main(["-c", str(cfg), "check-config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dsn"] == "postgresql://airflow:***@db/airflow"
    assert data["node_name"] == "s1"
    assert data["health"]["urls"] == ["http://127.0.0.1:8974/health"]
    assert cli.main(["-c", str(cfg), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "worst-case takeover after the leader vanishes: 14s" in out


def test_database_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text('dsn = "host=127.0.0.1 port=1 user=x dbname=x"\n')
    assert cli.main(["-c", str(cfg), "status"]) == 2
    assert "database error" in capsys.readouterr().err


def test_usage() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
