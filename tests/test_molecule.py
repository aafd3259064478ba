"""Every Molecule scenario: create, converge, idempotence, verify (behaviour), destroy."""

from __future__ import annotations

import subprocess
from contextlib import nullcontext

import pytest

from airflow_ha.testproxy import running_proxy

from helpers import REPO, ansible_env, tool

# The scenario whose worker installs Airflow from a package index through a proxy.
INDEX_SCENARIO = "worker"
# Cheapest first, so a broken basic role fails the run early.
ORDER = ["metadata_db", "broker", "loadbalancer", "scheduler", "webserver", "worker"]
SCENARIOS = sorted(
    (p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml")),
    key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name),
)


def test_every_scenario_is_listed():
    assert set(ORDER) <= set(SCENARIOS), f"scenarios missing: {set(ORDER) - set(SCENARIOS)}"


@pytest.mark.molecule
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario):
    env = ansible_env(ANSIBLE_CONFIG="", PY_COLORS="0", ANSIBLE_NOCOLOR="1")
    # The worker scenario's worker host installs from PyPI through this proxy (its vars.yml).
    with running_proxy() if scenario == INDEX_SCENARIO else nullcontext() as proxy:
        if proxy:
            env["AIRFLOW_HA_TEST_PROXY_PORT"] = str(proxy.port)
        proc = subprocess.run(
            [tool("molecule"), "test", "-s", scenario],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-200:])
        pytest.fail(f"molecule test -s {scenario} failed ({proc.returncode}):\n{tail}")
    if proxy:
        # pip fetched the index pages and the wheels through the proxy, and nothing was refused.
        assert {"pypi.org:443", "files.pythonhosted.org:443"} <= set(proxy.tunnels), proxy.tunnels
        assert not proxy.refused, proxy.refused
