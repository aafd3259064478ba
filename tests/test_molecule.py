"""Every Molecule scenario: create, converge, idempotence, verify (behaviour), destroy."""

from __future__ import annotations

import subprocess
from contextlib import nullcontext

import pytest

from airflow_ha.testproxy import running_proxy

from helpers import REPO, ansible_env, tool

# The scenario whose worker installs Airflow from a package index through a proxy.
INDEX_SCENARIO = "scheduler_failover_active_standby"
# Cheapest first, so a broken basic role fails the run early.
ORDER = ["metadata_db", "broker", "loadbalancer_ha"]
# Scenarios `make test` leaves out, each with what covers its checks there; `make molecule-failover`
# runs them. active_active: its hung scheduler is the end-to-end test's
# test_watchdog_restarts_a_hung_scheduler_while_the_other_keeps_scheduling (same lab mode, same
# watchdog), its lost scheduler host is `make chaos`'s scheduler-host-crash.
EXTRA = {"scheduler_failover_active_active"}
ALL_SCENARIOS = sorted(
    (p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml")),
    key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name),
)
SCENARIOS = [name for name in ALL_SCENARIOS if name not in EXTRA]


def test_every_scenario_is_listed():
    assert set(ORDER) <= set(SCENARIOS), f"scenarios missing: {set(ORDER) - set(SCENARIOS)}"


def test_every_extra_scenario_exists():
    assert set(ALL_SCENARIOS) >= EXTRA, f"EXTRA names no scenario: {EXTRA - set(ALL_SCENARIOS)}"


@pytest.mark.molecule_extra
@pytest.mark.parametrize("scenario", sorted(EXTRA))
def test_extra_scenario(scenario):
    test_scenario(scenario)


@pytest.mark.molecule
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario):
    env = ansible_env(ANSIBLE_CONFIG="", PY_COLORS="0", ANSIBLE_NOCOLOR="1")
    # That scenario's worker host installs from PyPI through this proxy (its vars.yml).
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
