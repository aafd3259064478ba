"""Test helpers: the repository, the venv's tools, and running playbooks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


# A replicated cluster: three DB/etcd/broker hosts (two also load balancers), an api-server and
# scheduler host and a worker, with a VIP. Rendering tests use it as their inventory.
HA_INVENTORY = """
all:
  vars: {loadbalancer_vip: 10.9.0.100}
  children:
    airflow_metadata_db:
      hosts: {i1: {airflow_node_address: 10.9.0.11}, i2: {airflow_node_address: 10.9.0.12},
              i3: {airflow_node_address: 10.9.0.13}}
    airflow_etcd: {hosts: {i1: {}, i2: {}, i3: {}}}
    airflow_broker: {hosts: {i1: {}, i2: {}, i3: {}}}
    airflow_loadbalancer: {hosts: {i1: {}, i2: {}}}
    airflow_webserver: {hosts: {a1: {airflow_node_address: 10.9.0.21}}}
    airflow_scheduler: {hosts: {a1: {}}}
    airflow_worker: {hosts: {w1: {airflow_node_address: 10.9.0.31}}}
"""


def tool(name: str) -> str:
    """A command from the project's venv (the one running pytest)."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: run `make venv`")
    return str(path)


def ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_playbook(inventory: Path | str, playbook: str, *args: str, timeout: float = 600):
    """Run ansible-playbook from the repo root; return the completed process (output in stdout)."""
    return subprocess.run(
        [tool("ansible-playbook"), "-i", str(inventory), str(REPO / playbook), *args],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_module(relative_path: str, name: str) -> ModuleType:
    """A Python file of the repo (a plugin that is not importable as a package), loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative_path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
