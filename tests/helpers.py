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


def render_role_files(
    tmp: Path,
    inventory_text: str,
    play: str,
    secrets: dict[str, str],
    *extra: str,
    facts: dict[str, str] | None = None,
    variables: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run a render play (its tasks tagged `render` write each host's files under `out`) against an
    inventory with the repo's group_vars and stand-in TLS files; return file name -> text."""
    import json

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "hosts.yml").write_text(inventory_text)
    (tmp / "render.yml").write_text(play)
    (tmp / "group_vars").symlink_to(REPO / "group_vars")
    for name in ("ca.crt", "host.crt", "host.key"):
        (tmp / name).write_text(f"-----BEGIN STAND-IN {name}-----\n")
    out = tmp / "out"
    out.mkdir()
    settings = {
        "airflow_secrets": secrets,
        "out": str(out),
        "repo": str(REPO),
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
        "airflow_tls_ca_file": str(tmp / "ca.crt"),
        "airflow_tls_cert_file": str(tmp / "host.crt"),
        "airflow_tls_key_file": str(tmp / "host.key"),
        "ansible_facts": {"default_ipv4": {"address": "10.9.9.9", **(facts or {})}},
        **(variables or {}),
    }
    (tmp / "vars.json").write_text(json.dumps(settings))
    argv = [tool("ansible-playbook"), "-i", str(tmp / "hosts.yml"), str(tmp / "render.yml")]
    proc = subprocess.run(
        [*argv, "--tags", "render", "-e", f"@{tmp / 'vars.json'}", *extra],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return {p.name: p.read_text() for p in sorted(out.iterdir())}
