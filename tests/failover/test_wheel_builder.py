"""The scheduler_failover role's stdlib wheel builder: the package installs and its commands run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "roles" / "scheduler_failover" / "files" / "build_wheel.py"


def _builder():
    spec = importlib.util.spec_from_file_location("build_wheel", BUILDER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wheel_is_deterministic_and_complete(tmp_path: Path):
    build = _builder().build
    first = build(REPO, tmp_path / "a")
    second = build(REPO, tmp_path / "b")
    assert first.name == "airflow_ha-0.1.0-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        assert "airflow_ha/failover/watchdog.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        entry_points = zf.read("airflow_ha-0.1.0.dist-info/entry_points.txt").decode()
        assert "airflow-ha-failover = airflow_ha.failover.cli:main" in entry_points
        record = zf.read("airflow_ha-0.1.0.dist-info/RECORD").decode().splitlines()
        assert len(record) == len(names)


def test_pip_installs_it_and_the_commands_run(tmp_path: Path):
    wheel = _builder().build(REPO, tmp_path / "dist")
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    assert (target / "bin" / "airflow-ha-failover").exists()
    out = subprocess.run(
        [sys.executable, "-m", "airflow_ha.failover.watchdog", "-c", "/nonexistent.toml", "check-config"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "no such file" in out.stderr
