"""Bad inventories and variables stop site.yml with a clear message before any host changes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from airflow_ha import docker_hosts

from helpers import run_playbook

IMAGE = "airflow-ha/debian12-systemd:latest"
GROUPS = ("airflow_metadata_db", "airflow_broker", "airflow_webserver", "airflow_scheduler", "airflow_worker")


def write_inventory(directory: Path, hosts: dict[str, dict], groups: dict[str, list[str]]) -> Path:
    inventory = {
        "all": {
            "hosts": hosts,
            "children": {group: {"hosts": {h: None for h in members}} for group, members in groups.items()},
        }
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return directory


# The controller may write the inventory's secrets file (tasks on localhost); no host may change.
CONTROLLER_TASKS = {"Secrets | Create the secrets directory", "Secrets | Write the secrets file"}


def assert_nothing_changed(proc: subprocess.CompletedProcess[str], inventory: Path) -> None:
    assert proc.returncode != 0
    assert re.search(r"changed=\d+", proc.stdout), proc.stdout
    changed_tasks = set()
    task = ""
    for line in proc.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") :].split("]")[0].split(" : ", 1)[-1]
        elif line.startswith("changed:"):
            changed_tasks.add(task)
            assert "-> localhost" in line, f"{task} changed a host: {line}"
    assert changed_tasks <= CONTROLLER_TASKS, f"tasks changed something: {changed_tasks - CONTROLLER_TASKS}"


def test_empty_required_group_is_refused_before_anything(tmp_path):
    # The hosts do not exist: the inventory check must fail before any connection is tried.
    hosts = {"h1": {"ansible_host": "192.0.2.1"}}
    groups = {g: ["h1"] for g in GROUPS} | {"airflow_worker": []}
    inventory = write_inventory(tmp_path / "inv", hosts, groups)
    proc = run_playbook(inventory, "site.yml")
    assert "Inventory group 'airflow_worker' is missing or empty" in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)
    assert not (inventory / ".secrets").exists(), "secrets were generated before the inventory was valid"


def test_even_etcd_group_is_refused_before_anything(tmp_path):
    hosts = {f"h{i}": {"ansible_host": f"192.0.2.{i}"} for i in range(1, 5)}
    groups = {g: ["h1"] for g in GROUPS} | {
        "airflow_metadata_db": ["h1", "h2"],
        "airflow_etcd": ["h1", "h2", "h3", "h4"],
        "airflow_loadbalancer": ["h3"],
    }
    inventory = write_inventory(tmp_path / "inv", hosts, groups)
    proc = run_playbook(inventory, "site.yml")
    assert "That needs an odd number (3 or more) of hosts in airflow_etcd (it has 4)" in proc.stdout, (
        proc.stdout
    )
    assert_nothing_changed(proc, inventory)


def test_two_broker_hosts_are_refused_before_anything(tmp_path):
    hosts = {f"h{i}": {"ansible_host": f"192.0.2.{i}"} for i in range(1, 3)}
    groups = {g: ["h1"] for g in GROUPS} | {"airflow_broker": ["h1", "h2"]}
    inventory = write_inventory(tmp_path / "inv", hosts, groups)
    proc = run_playbook(inventory, "site.yml")
    assert "airflow_broker has 2 hosts" in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)


@pytest.fixture(scope="module")
def containers():
    """Two throwaway hosts from the base image: a Debian 12 one and one that says it is Ubuntu."""
    label = f"airflow-ha.test=preflight-{uuid.uuid4().hex[:8]}"
    names = {"debian": f"pf-debian-{uuid.uuid4().hex[:6]}", "ubuntu": f"pf-ubuntu-{uuid.uuid4().hex[:6]}"}
    try:
        for name in names.values():
            docker_hosts.docker(
                "run", "-d", "--name", name, "--label", label, *docker_hosts.SYSTEMD_FLAGS, IMAGE
            )
        os_release = 'NAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=jammy\n'
        docker_hosts.exec_in(
            names["ubuntu"],
            "sh",
            "-c",
            f"rm -f /etc/os-release /etc/debian_version && printf '{os_release}' > /etc/os-release",
        )
        yield names
    finally:
        docker_hosts.remove_labelled(label)


def _container_inventory(tmp_path: Path, name: str) -> Path:
    hosts = {name: {"ansible_connection": "community.docker.docker"}}
    return write_inventory(tmp_path / "inv", hosts, {g: [name] for g in GROUPS})


@pytest.mark.containers
def test_non_debian_12_host_is_refused(tmp_path, containers):
    inventory = _container_inventory(tmp_path, containers["ubuntu"])
    proc = run_playbook(inventory, "site.yml")
    assert "airflow-ha supports Debian 12 (bookworm) only" in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)


@pytest.mark.containers
def test_unknown_airflow_version_is_refused(tmp_path, containers):
    inventory = _container_inventory(tmp_path, containers["debian"])
    proc = run_playbook(inventory, "site.yml", "-e", "airflow_common_version=9.9.9")
    assert "Unknown Airflow version 9.9.9" in proc.stdout, proc.stdout
    assert "Supported: 3.3.2" in proc.stdout
    assert_nothing_changed(proc, inventory)


@pytest.mark.containers
def test_badly_typed_variable_is_refused_by_the_argument_specs(tmp_path, containers):
    inventory = _container_inventory(tmp_path, containers["debian"])
    proc = run_playbook(inventory, "site.yml", "-e", "worker_concurrency=lots")
    assert "argument 'worker_concurrency' is of type str" in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)


def test_host_with_a_skewed_clock_is_refused(tmp_path, monkeypatch):
    # One host reached with the local connection, whose `date` (the only command the clock check
    # runs there) reports the time 30 s ahead. preflight.yml alone: nothing after it could run.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_date = fake_bin / "date"
    # To the nanosecond: whole seconds alone would make it 29 to 30 s ahead, and the lower bound the
    # check reports could fall under 29 s on a loaded machine.
    fake_date.write_text(
        '#!/bin/sh\nnow=$(/bin/date +%s.%N)\nexec /bin/date -d "@$(( ${now%.*} + 30 )).${now#*.}" "$@"\n'
    )
    fake_date.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    hosts = {"skewed": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["skewed"] for g in GROUPS})
    proc = run_playbook(inventory, "playbooks/preflight.yml")
    match = re.search(r"The clock of skewed is off by \+(\d+\.\d+) s \(between", proc.stdout)
    assert match, proc.stdout
    assert 29.0 < float(match.group(1)) < 31.0
    assert "airflow_max_clock_skew_seconds = 1.0 s" in proc.stdout
    assert_nothing_changed(proc, inventory)
    assert not (inventory / ".secrets").exists(), "secrets were generated before the clocks were checked"


def test_hosts_sharing_an_address_are_refused(tmp_path):
    # Two hosts on the local connection that the inventory gives one address. preflight.yml alone.
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "db1": local | {"airflow_node_address": "192.0.2.7"},
        "web1": local | {"airflow_node_address": "192.0.2.7"},
    }
    groups = {g: ["db1"] for g in GROUPS} | {"airflow_webserver": ["web1"]}
    inventory = write_inventory(tmp_path / "inv", hosts, groups)
    proc = run_playbook(inventory, "playbooks/preflight.yml")
    assert "Hosts share an address: 192.0.2.7 is the address of db1 and web1" in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)


def test_a_vip_equal_to_a_host_address_is_refused(tmp_path):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"h1": local | {"airflow_node_address": "192.0.2.8", "loadbalancer_vip": "192.0.2.8/24"}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS})
    proc = run_playbook(inventory, "playbooks/preflight.yml")
    assert "loadbalancer_vip 192.0.2.8 is the address of a host (h1)" in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)


def test_db_clean_on_a_host_that_is_no_scheduler_is_refused(tmp_path):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "db1": local | {"airflow_node_address": "192.0.2.9", "airflow_common_db_clean_host": "web1"},
        "web1": local | {"airflow_node_address": "192.0.2.10", "airflow_common_db_clean_host": "web1"},
    }
    groups = {g: ["db1"] for g in GROUPS} | {"airflow_webserver": ["web1"]}
    inventory = write_inventory(tmp_path / "inv", hosts, groups)
    proc = run_playbook(inventory, "playbooks/preflight.yml")
    message = "airflow_common_db_clean_host 'web1' is not a host of airflow_scheduler (db1)"
    assert message in proc.stdout, proc.stdout
    assert_nothing_changed(proc, inventory)


# With TLS to the database (on by default), a weaker sslmode than verify-full anywhere Airflow's
# URLs are built: refused by the shared host checks, before the secrets. A URL's password is not shown.
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"airflow_common_db_connect_params": {"connect_timeout": 5, "sslmode": "require"}},
            "but airflow_common_db_connect_params sets sslmode=require. Remove sslmode from it",
        ),
        (
            {
                "airflow_common_config_extra": {
                    "celery": {"result_backend": "db+postgresql://u:pw@h/a?sslmode=prefer"}
                }
            },
            "but airflow_common_config_extra sets [celery] result_backend without sslmode=verify-full",
        ),
        (
            {
                "airflow_common_config_extra": {
                    "database": {"sql_alchemy_conn": "postgresql://u:secretpw@h/a"}
                }
            },
            "but airflow_common_config_extra sets [database] sql_alchemy_conn without sslmode=verify-full",
        ),
    ],
)
def test_an_sslmode_weaker_than_verify_full_is_refused(tmp_path, override, message):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"h1": local | {"airflow_node_address": "192.0.2.9"}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS})
    (tmp_path / "override.json").write_text(json.dumps(override))
    proc = run_playbook(inventory, "playbooks/preflight.yml", "-e", f"@{tmp_path / 'override.json'}")
    assert message in proc.stdout, proc.stdout[-4000:]
    assert "secretpw" not in proc.stdout
    assert_nothing_changed(proc, inventory)
    assert not (inventory / ".secrets").exists(), "secrets were generated before the settings were checked"


# With TLS to the broker (on by default), Celery may not be put back on plain TCP by the inventory.
@pytest.mark.parametrize(
    "celery",
    [{"broker_url": "redis://celery:secretpw@10.0.0.1:6379/0"}, {"ssl_active": "False"}],
)
def test_a_plain_broker_connection_is_refused_while_broker_tls_is_on(tmp_path, celery):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"h1": local | {"airflow_node_address": "192.0.2.9"}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS})
    (tmp_path / "override.json").write_text(json.dumps({"airflow_common_config_extra": {"celery": celery}}))
    proc = run_playbook(inventory, "playbooks/preflight.yml", "-e", f"@{tmp_path / 'override.json'}")
    message = (
        "TLS to the broker is on (airflow_broker_tls_enabled), so Redis and the Sentinels accept nothing"
    )
    assert message in proc.stdout, proc.stdout[-4000:]
    assert "secretpw" not in proc.stdout
    assert_nothing_changed(proc, inventory)
    # The same settings pass with the broker's TLS off.
    proc = run_playbook(
        inventory,
        "playbooks/preflight.yml",
        "-e",
        f"@{tmp_path / 'override.json'}",
        "-e",
        "airflow_broker_tls_enabled=false",
    )
    assert "TLS to the broker is on" not in proc.stdout, proc.stdout[-4000:]


def test_verify_full_set_by_the_inventory_passes_the_sslmode_checks(tmp_path):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"h1": local | {"airflow_node_address": "192.0.2.9"}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS})
    url = "db+postgresql://u:pw@h/a?sslmode=verify-full&sslrootcert=/x.crt"
    override = {
        "airflow_common_db_connect_params": {"sslmode": "verify-full"},
        "airflow_common_config_extra": {"celery": {"result_backend": url}},
    }
    (tmp_path / "override.json").write_text(json.dumps(override))
    proc = run_playbook(inventory, "playbooks/preflight.yml", "-e", f"@{tmp_path / 'override.json'}")
    # The shared checks ran (they report every failure they find) and found no sslmode to refuse.
    assert "Checks shared by the Airflow roles" in proc.stdout, proc.stdout[-4000:]
    assert "TLS to the database is on" not in proc.stdout, proc.stdout[-4000:]


# Each host gets only the secrets its components need: a worker-only host's airflow.cfg must not
# get a secret back through airflow_common_config_extra; the result backend needs its own user.
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"airflow_common_config_extra": {"core": {"fernet_key": "secretpw"}}},
            "w1 runs only a Celery worker, where task code can read airflow.cfg, but "
            "airflow_common_config_extra sets [core] fernet_key there",
        ),
        (
            {"airflow_common_config_extra": {"api_auth": {"jwt_secret": "secretpw"}}},
            "airflow_common_config_extra sets [api_auth] jwt_secret there",
        ),
        (
            {"airflow_common_celery_db_user": "airflow"},
            "must differ from airflow_common_db_user/_name (airflow, airflow)",
        ),
        (
            {"airflow_common_log_server_user": "airflow"},
            "airflow_common_log_server_user is 'airflow': the worker's log server holds the API secret key",
        ),
    ],
)
def test_a_secret_for_a_worker_only_host_is_refused(tmp_path, override, message):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "h1": local | {"airflow_node_address": "192.0.2.9"},
        "w1": local | {"airflow_node_address": "192.0.2.10"},
    }
    inventory = write_inventory(
        tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS} | {"airflow_worker": ["w1"]}
    )
    (tmp_path / "override.json").write_text(json.dumps(override))
    proc = run_playbook(inventory, "playbooks/preflight.yml", "-e", f"@{tmp_path / 'override.json'}")
    assert message in proc.stdout, proc.stdout[-4000:]
    assert "secretpw" not in proc.stdout
    assert_nothing_changed(proc, inventory)


def test_a_plain_http_api_url_with_tls_on_is_refused(tmp_path):
    # TLS on (the default) and an inventory that sets the API URL to http://: refused by the shared
    # host checks, before the secrets and before any host changes.
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"h1": local | {"airflow_node_address": "192.0.2.9"}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS})
    (tmp_path / "override.json").write_text(json.dumps({"airflow_api_url": "HTTP://192.0.2.9:8080"}))
    proc = run_playbook(inventory, "playbooks/preflight.yml", "-e", f"@{tmp_path / 'override.json'}")
    message = "TLS on the API is on (airflow_tls_enabled), but the API URL is 'HTTP://192.0.2.9:8080'"
    assert message in proc.stdout, proc.stdout[-4000:]
    assert_nothing_changed(proc, inventory)
    assert not (inventory / ".secrets").exists(), "secrets were generated before the settings were checked"


def test_the_default_https_api_url_passes_the_api_check(tmp_path):
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {"h1": local | {"airflow_node_address": "192.0.2.9"}}
    inventory = write_inventory(tmp_path / "inv", hosts, {g: ["h1"] for g in GROUPS})
    proc = run_playbook(inventory, "playbooks/preflight.yml")
    assert "Checks shared by the Airflow roles" in proc.stdout, proc.stdout[-4000:]
    assert "TLS on the API is on" not in proc.stdout, proc.stdout[-4000:]
