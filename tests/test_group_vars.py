"""Cluster-wide settings in group_vars/ reach playbooks in playbooks/ whatever the inventory."""

from __future__ import annotations

import json
import re

import pytest

from helpers import HA_INVENTORY, REPO, run_playbook

INVENTORY = """
all:
  children:
    airflow_metadata_db: {hosts: {db9: {airflow_node_address: 10.9.0.1}}}
    airflow_broker: {hosts: {mq9: {airflow_node_address: 10.9.0.2}}}
    airflow_webserver: {hosts: {api9: {airflow_node_address: 10.9.0.3}}}
    airflow_scheduler: {hosts: {api9: {}}}
    airflow_worker: {hosts: {wk9: {airflow_node_address: 10.9.0.4}}}
"""


def _shown(stdout: str) -> dict:
    match = re.search(r'"msg": (\{.*?\n    \})', stdout, re.S)
    assert match, f"no debug output in:\n{stdout}"
    return json.loads(match.group(1))


@pytest.mark.parametrize("playbook", ["playbooks/show-config.yml"])
def test_cluster_vars_loaded_for_a_fresh_inventory(tmp_path, playbook):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(INVENTORY)
    proc = run_playbook(inventory, playbook)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = _shown(proc.stdout)
    assert shown["cluster_vars_loaded"] is True
    assert "airflow_worker" in shown["required_groups"]
    # Derived from the inventory by group_vars/all/cluster.yml: no load balancer, so the first api-server.
    assert shown["api_url"] == "https://10.9.0.3:8080"
    assert shown["db_host"] == "10.9.0.1"
    assert shown["broker_host"] == "10.9.0.2"


def test_cluster_vars_loaded_for_the_lab_inventory():
    proc = run_playbook(REPO / "inventories" / "lab", "playbooks/show-config.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = _shown(proc.stdout)
    assert shown["cluster_vars_loaded"] is True
    # The lab has load balancers sharing a VIP: the API and PostgreSQL go through it.
    assert shown["api_url"] == "https://172.30.10.10:8080"
    assert shown["db_host"] == "172.30.10.10"


def test_ha_inventory_goes_through_the_vip_and_the_sentinels(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(HA_INVENTORY)
    proc = run_playbook(inventory, "playbooks/show-config.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = _shown(proc.stdout)
    assert shown["api_url"] == "https://10.9.0.100:8080"
    # PostgreSQL through HAProxy on the VIP, on its own port (not 5432: it may share a host).
    assert shown["db_host"] == "10.9.0.100"
    assert int(shown["db_port"]) == 5433
    assert shown["broker_sentinels"] == ["10.9.0.11:26379", "10.9.0.12:26379", "10.9.0.13:26379"]
