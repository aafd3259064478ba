"""End to end: the lab cluster, built over SSH by site.yml, runs the sample DAG through HAProxy.

Creates the lab containers from inventories/lab and removes them afterwards. If a lab from
`make lab` is already running the test stops with a message, unless AIRFLOW_HA_E2E_REUSE_LAB=1
says to deploy onto it and leave it running.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from airflow_ha import chaos_lab, docker_hosts
from airflow_ha import lab as labmod
from airflow_ha.api import AirflowApi, ApiError
from airflow_ha.chaos import CI_FAULTS, ci_settings, run_chaos

pytestmark = pytest.mark.e2e
DAG = "airflow_ha_sample"


@pytest.fixture(scope="module")
def lab():
    the_lab = labmod.load_lab(labmod.REPO / "inventories" / "lab")
    reuse = os.environ.get("AIRFLOW_HA_E2E_REUSE_LAB") == "1"
    existed = labmod.lab_exists(the_lab)
    if existed and not reuse:
        pytest.fail(
            "a lab from `make lab` is running and this test would replace it: run `make lab-destroy` "
            "first, or set AIRFLOW_HA_E2E_REUSE_LAB=1 to deploy onto it and leave it running"
        )
    try:
        labmod.create_hosts(the_lab)
        result = labmod.run_playbook(the_lab)
        assert result.returncode == 0, "site.yml failed on the lab (output above)"
        yield the_lab
    finally:
        if not existed:
            labmod.destroy(the_lab)


@pytest.fixture(scope="module")
def api(lab):
    secrets = yaml.safe_load(lab.secrets_file.read_text())
    client = AirflowApi(lab.api_url, "admin", secrets["admin_password"])
    client.login()
    return client


def _run_sample(api: AirflowApi) -> tuple[str, list[dict]]:
    api.wait_for_dag(DAG)
    api.unpause(DAG)
    run_id = api.trigger(DAG)
    run = api.wait_for_run(DAG, run_id)
    assert run["state"] == "success", f"{run_id} ended {run['state']}"
    return run_id, api.task_instances(DAG, run_id)


def test_sample_dag_runs_on_both_workers_through_the_load_balancer(lab, api):
    workers = set(lab.groups["airflow_worker"])
    seen: set[str] = set()
    for _ in range(3):
        run_id, tis = _run_sample(api)
        assert tis
        assert all(ti["state"] == "success" for ti in tis)
        seen |= {ti["hostname"] for ti in tis}
        if workers <= seen:
            break
    assert workers <= seen, f"tasks ran on {sorted(seen)}, expected every worker {sorted(workers)}"
    # The api-server fetches the task's log from the worker that ran it (port 8793).
    ti = next(t for t in tis if t["task_id"] == "report_host")
    text = api.task_log(DAG, run_id, "report_host", ti["try_number"], ti["map_index"])
    assert f"ran on {ti['hostname']}" in text, text[-2000:]


def test_a_task_builds_its_own_virtualenv_from_the_package_index(lab, api):
    """pip in a task's virtualenv verifies the index with the system CA store (/etc/pip.conf), which
    holds the lab's extra CA bundle: Certifi's bundle alone would refuse it."""
    dag = "airflow_ha_virtualenv"
    api.wait_for_dag(dag)
    api.unpause(dag)
    run_id = api.trigger(dag)
    run = api.wait_for_run(dag, run_id)
    (ti,) = api.task_instances(dag, run_id)
    text = api.task_log(dag, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
    assert run["state"] == "success", f"{run_id} ended {run['state']}: {text[-3000:]}"
    line = next((x for x in text.splitlines() if "six 1.17.0 from " in x), "")
    assert line, f"the task did not import six: {text[-3000:]}"
    assert "/opt/airflow/venv/" not in line, f"six came from Airflow's own virtualenv: {line}"


PROBE_DAG_ID = "airflow_ha_delivery_probe"
PROBE_DAG = f"""
import pendulum
from airflow.sdk import DAG, task

with DAG(dag_id="{PROBE_DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):

    @task
    def noop() -> None:
        pass

    noop()
"""


def test_a_dag_file_synced_with_the_dags_tag_is_visible_within_seconds(lab, api):
    """docs/runbooks/deploy-or-update.md: `site.yml --tags airflow_common_dags` syncs a new DAG file;
    the dag-processor looks for new files every airflow_common_dag_refresh_interval (10 s; Airflow's
    default, 300 s, would fail this)."""
    path = labmod.REPO / "dags" / f"{PROBE_DAG_ID}.py"
    path.write_text(PROBE_DAG)
    try:
        result = labmod.run_playbook(lab, "site.yml", "--tags", "airflow_common_dags")
        assert result.returncode == 0, "the DAG sync failed (output above)"
        synced = time.monotonic()
        api.wait_for_dag(PROBE_DAG_ID, wait=120)
        took = time.monotonic() - synced
        print(f"{PROBE_DAG_ID} visible through the API {took:.1f} s after the sync ended")
        assert took < 60, f"{PROBE_DAG_ID} took {took:.0f} s to appear"
    finally:
        path.unlink(missing_ok=True)
        probe_on_host = f"/opt/airflow/dags/{PROBE_DAG_ID}.py"
        for host in lab.groups["airflow_scheduler"] + lab.groups["airflow_worker"]:
            docker_hosts.exec_in(host, "rm", "-f", probe_on_host, check=False)


def test_every_scheduler_is_alive(lab, api):
    assert api.alive_scheduler_hosts() >= set(lab.groups["airflow_scheduler"])
    for host in lab.groups["airflow_scheduler"]:
        for unit in ("scheduler", "dag-processor", "triggerer"):
            assert _sh(host, f"systemctl is-active airflow-{unit}") == "active", f"{host}: airflow-{unit}"
        # The scheduler's health server, and its job in the jobs table.
        _sh(host, "curl -sf http://127.0.0.1:8974/health")
        _sh(host, "/usr/local/bin/airflow jobs check --job-type SchedulerJob --hostname $(hostname -f)", 90)


def test_status_is_healthy_then_names_a_stopped_worker(lab):
    """playbooks/status.yml (`make status`, docs/runbooks/cluster-status.md) over SSH like any inventory:
    the healthy lab exits 0 and its table names every host and the Patroni leader; with one worker's
    unit stopped it exits non-zero naming that host, the problem and its runbook page. One fault only
    (time): tests/test_status.py judges every tier's faults from recorded outputs."""
    # The runbook's command for the lab, as written.
    result = subprocess.run(["make", "status"], cwd=labmod.REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"make status found a problem in the healthy lab: {result.stdout[-4000:]}"
    for host in lab.hosts:
        assert f'"  {host.name} ' in result.stdout, f"{host.name} is not in the table"
    leaders = re.findall(r'^\s*"  (\S+)\s+\S+\s+Leader\s+running\s', result.stdout, re.M)
    assert len(leaders) == 1, f"the table names {leaders} as Patroni leader"
    assert leaders[0] in lab.groups["airflow_metadata_db"]
    assert "Problems: none" in result.stdout

    worker = lab.groups["airflow_worker"][0]
    subprocess.run(["docker", "exec", worker, "systemctl", "stop", "airflow-worker"], check=True, timeout=660)
    try:
        result = labmod.run_playbook(lab, "playbooks/status.yml")
        assert result.returncode != 0, "status.yml did not fail with a worker stopped"
        assert re.search(rf"ERROR {worker}: airflow-worker is (inactive|failed)", result.stdout), (
            result.stdout[-3000:]
        )
        assert f"ERROR {worker}: its Celery worker does not answer a ping" in result.stdout
        assert "docs/runbooks/worker-failure.md" in result.stdout
        others = [f"ERROR {h}:" for h in lab.groups["airflow_worker"][1:]]
        assert not [o for o in others if o in result.stdout], "another worker was reported too"
    finally:
        subprocess.run(
            ["docker", "exec", worker, "systemctl", "start", "airflow-worker"], check=True, timeout=60
        )


def test_logins_and_tokens_work_the_same_on_every_api_server(lab):
    """Users live in the database and tokens are signed with the shared JWT secret: a token one
    api-server issued is good on the other; a wrong password and a missing token are refused."""
    password = yaml.safe_load(lab.secrets_file.read_text())["admin_password"]
    servers = [f"http://{lab.address(host)}:8080" for host in lab.groups["airflow_webserver"]]
    tokens = []

    def login(url: str, secret: str) -> requests.Response:
        return requests.post(f"{url}/auth/token", json={"username": "admin", "password": secret}, timeout=10)

    for url in servers:
        answer = login(url, password)
        assert answer.status_code in (200, 201), f"{url}: {answer.status_code} {answer.text[:200]}"
        tokens.append(answer.json()["access_token"])
        wrong = login(url, "not-it")
        assert wrong.status_code in (401, 403), f"{url}: a wrong password got {wrong.status_code}"
        assert requests.get(f"{url}/api/v2/dags", timeout=10).status_code == 401
    for token, url in zip(tokens, reversed(servers), strict=True):
        dags = requests.get(f"{url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert dags.status_code == 200, f"{url}: {dags.status_code}"
        assert DAG in {d["dag_id"] for d in dags.json()["dags"]}


def _sh(host: str, script: str, timeout: float = 30) -> str:
    done = subprocess.run(
        ["docker", "exec", host, "bash", "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{host}: {script!r} failed: {done.stderr}"
    return done.stdout.strip()


def _db_primary(lab) -> str:
    for host in lab.groups["airflow_metadata_db"]:
        psql = ["runuser", "-u", "postgres", "--", "psql", "-tAc", "SELECT pg_is_in_recovery()"]
        if docker_hosts.exec_in(host, *psql, check=False).strip() == "f":
            return host
    raise AssertionError("no PostgreSQL primary among the database hosts")


def test_housekeeping_deletes_what_is_past_retention_and_keeps_the_rest(lab, api):
    """The airflow-db-clean timer's service (on the first scheduler host only) deletes a DAG run older
    than airflow_common_db_retention_days and keeps a recent one; airflow-log-clean deletes a log file
    older than airflow_common_log_retention_days and keeps a new one; the journal is capped."""
    cleaner, *others = lab.groups["airflow_scheduler"]
    assert _sh(cleaner, "systemctl is-enabled airflow-db-clean.timer") == "enabled"
    for host in others:
        assert _sh(host, "systemctl is-enabled airflow-db-clean.timer || true") == "disabled", host
    old_run, _ = _run_sample(api)
    new_run, _ = _run_sample(api)
    age = (
        "UPDATE dag_run SET start_date = start_date - interval '400 days', end_date = end_date - interval "
        f"'400 days' WHERE run_id = '{old_run}' RETURNING run_id"
    )
    aged = _sh(_db_primary(lab), f'runuser -u postgres -- psql -d airflow -tAc "{age}"')
    assert old_run in aged, aged
    _sh(cleaner, "systemctl start airflow-db-clean.service", 300)
    with pytest.raises(ApiError, match="HTTP 404"):
        api.get(f"/api/v2/dags/{DAG}/dagRuns/{old_run}")
    assert api.get(f"/api/v2/dags/{DAG}/dagRuns/{new_run}")["state"] == "success"

    worker = lab.groups["airflow_worker"][0]
    probe = "/opt/airflow/logs/housekeeping-probe"
    _sh(
        worker,
        f"runuser -u airflow -- mkdir -p {probe} && cd {probe} && runuser -u airflow -- touch new.log old.log"
        " && touch -d '40 days ago' old.log",
    )
    _sh(worker, "systemctl start airflow-log-clean.service", 120)
    assert _sh(worker, f"ls {probe}") == "new.log"
    _sh(worker, f"rm -rf {probe}")

    config = _sh(worker, "systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=1G" in config, config


def test_watchdog_restarts_a_hung_scheduler_while_the_other_keeps_scheduling(lab, api):
    """site.yml puts the active_active watchdog on every scheduler host (scheduler_failover role)."""
    hosts = lab.groups["airflow_scheduler"]
    for host in hosts:
        assert _sh(host, "systemctl is-active airflow-ha-watchdog") == "active"
    frozen = hosts[-1]
    old = _sh(frozen, "systemctl show -p MainPID --value airflow-scheduler")
    since = _sh(frozen, "date '+%Y-%m-%d %H:%M:%S'")
    _sh(frozen, f"kill -STOP {old}")
    # While it hangs, the other scheduler runs the sample DAG.
    _run_sample(api)
    # Health answers 503 after 30 s without a heartbeat, then 3 failed checks 5 s apart, then the
    # restart (docs/runbooks/scheduler-failure.md); allow twice that.
    deadline = time.monotonic() + 150
    new = old
    while time.monotonic() < deadline:
        new = _sh(frozen, "systemctl show -p MainPID --value airflow-scheduler")
        if new not in (old, "0"):
            break
        time.sleep(2)
    journal = _sh(frozen, f"journalctl -u airflow-ha-watchdog --since '{since}' -o cat")
    assert new not in (old, "0"), f"scheduler on {frozen} not restarted; watchdog journal:\n{journal}"
    assert journal.count("RESTARTED") == 1, journal
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and frozen not in api.alive_scheduler_hosts():
        time.sleep(3)
    assert api.alive_scheduler_hosts() >= set(hosts)


def test_load_balancer_answers_with_one_api_server_stopped(lab, api):
    stopped = lab.groups["airflow_webserver"][0]
    subprocess.run(["docker", "exec", stopped, "systemctl", "stop", "airflow-api-server"], check=True)
    try:
        time.sleep(5)  # HAProxy's health check takes the backend out within ~4 s
        answers = [requests.get(f"{lab.api_url}/api/v2/monitor/health", timeout=5) for _ in range(20)]
        assert [r.status_code for r in answers] == [200] * 20
        assert api.get(f"/api/v2/dags/{DAG}")["dag_id"] == DAG
    finally:
        subprocess.run(["docker", "exec", stopped, "systemctl", "start", "airflow-api-server"], check=True)


def test_every_database_connection_over_the_network_is_tls(lab, api):
    """Airflow's (through HAProxy), the failover controllers' and the replicas' connections, as each
    member's pg_stat_ssl sees them: all TLS (pg_hba admits nothing else; clients verify-full)."""
    _run_sample(api)
    query = (
        "SELECT a.usename, a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
        " WHERE a.client_addr IS NOT NULL"
    )
    rows = []
    for host in lab.groups["airflow_metadata_db"]:
        out = docker_hosts.exec_in(
            host, "runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-c", query
        )
        rows += [(host, *line.split("|")) for line in out.splitlines() if line.strip()]
    assert any(r[1] == "airflow" and r[2] == "client backend" for r in rows), rows
    assert any(r[2] == "walsender" for r in rows), rows
    assert [r for r in rows if r[3] != "t"] == [], rows


def test_every_broker_connection_is_tls(lab, api):
    """Redis and the Sentinels answer only TLS verified against the inventory's CA (plain TCP gets
    no answer; the controller's check of each certificate for the host's address passes), every
    replica streams from its master (no plaintext listener exists, so over TLS), and after a DAG
    run the Celery connections (Celery's user, from the Airflow hosts) are on the master."""
    _run_sample(api)
    secrets = yaml.safe_load(lab.secrets_file.read_text())
    password = secrets["broker_admin_password"]
    ca = chaos_lab.ControlTls.for_inventory(lab.inventory).ca
    assert ca, "the lab inventory has no cluster CA"
    brokers = lab.groups["airflow_broker"]
    ports = [6379, 26379] if len(brokers) > 1 else [6379]
    for host in brokers:
        address = lab.address(host)
        for port in ports:
            with socket.create_connection((address, port), timeout=5) as sock:
                sock.sendall(b"PING\r\n")
                sock.settimeout(3)
                try:
                    answer = sock.recv(64)
                except TimeoutError:
                    answer = b""
                except ConnectionResetError:
                    answer = b""
            assert not answer.startswith((b"+PONG", b"-NOAUTH")), (host, port, answer)
            # redis_call checks the chain and that the certificate names the address dialled.
            assert (
                chaos_lab.redis_call(address, port, password, "PING", username="admin", ca_file=ca) == "PONG"
            )
        info = chaos_lab.redis_call(
            address, 6379, password, "INFO", "replication", username="admin", ca_file=ca
        )
        text = info.decode() if isinstance(info, bytes) else str(info)
        assert "role:master" in text or "master_link_status:up" in text, (host, text)
        port_conf = chaos_lab.redis_call(
            address, 6379, password, "CONFIG", "GET", "port", username="admin", ca_file=ca
        )
        assert port_conf == [b"port", b"0"], (host, port_conf)
    masters = [
        h
        for h in brokers
        if "role:master"
        in chaos_lab.redis_call(
            lab.address(h), 6379, password, "INFO", "replication", username="admin", ca_file=ca
        ).decode()
    ]
    assert len(masters) == 1, masters
    clients = chaos_lab.redis_call(
        lab.address(masters[0]), 6379, password, "CLIENT", "LIST", username="admin", ca_file=ca
    ).decode()
    airflow_addresses = {
        lab.address(h) for g in ("airflow_scheduler", "airflow_worker") for h in lab.groups[g]
    }
    celery = [line for line in clients.splitlines() if " user=celery " in line]
    assert {line.split(" addr=")[1].rsplit(":", 1)[0] for line in celery} & airflow_addresses, clients


def test_planned_database_switchover_fails_no_task(lab, api):
    """playbooks/db-switchover.yml while DAG runs are in flight (docs/runbooks/database-switchover.md)."""
    api.wait_for_dag(DAG)
    api.unpause(DAG)
    run_ids = [api.trigger(DAG) for _ in range(2)]
    result = labmod.run_playbook(lab, "playbooks/db-switchover.yml")
    assert result.returncode == 0, "db-switchover.yml failed (output above)"
    moved = re.search(r"The primary moved from (\S+) to (\S+)\.", result.stdout)
    assert moved, "no switchover report in the output"
    assert moved.group(1) != moved.group(2)
    run_ids.append(api.trigger(DAG))
    for run_id in run_ids:
        run = api.wait_for_run(DAG, run_id)
        assert run["state"] == "success", f"{run_id} ended {run['state']}"
        tis = api.task_instances(DAG, run_id)
        failed = [(t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis]
        failed = [t for t in failed if t[2] != "success" or t[3] != 1]
        assert not failed, f"{run_id}: tasks failed or retried across the switchover: {failed}"


def test_chaos_pass_under_load_keeps_every_invariant(lab):
    """The CI chaos pass (docs/benchmarks.md has the full `make chaos`): the database primary's host
    frozen, a worker cut off the network, the broker master's host killed, each held 60 s under a
    steady DAG load; every acknowledged run succeeds, no work runs twice, every acknowledged commit
    is read back, never two primaries (database or broker), every host back in its role."""
    outcome = run_chaos(lab, CI_FAULTS, ci_settings())
    # How fast each tier recovered is `make chaos`'s figure (docs/benchmarks.md); the test asserts
    # that it recovered and that nothing was lost, doubled or written by two primaries.
    print(outcome.table())
    assert not outcome.invariant_failures, outcome.table() + "\n" + "\n".join(outcome.invariant_failures)


RUNBOOK_BLOCK = re.compile(r"^```sh on=(\w+)\n(.*?)^```", re.M | re.S)


def runbook_commands() -> list[tuple[str, str, str]]:
    """(page, inventory group, command) for every line of every ```sh on=<group> block."""
    found = []
    for page in sorted((labmod.REPO / "docs" / "runbooks").glob("*.md")):
        for group, block in RUNBOOK_BLOCK.findall(page.read_text()):
            found += [(page.name, group, line) for line in block.splitlines() if line.strip()]
    return found


def test_runbook_checks_run_as_written(lab):
    """Every command a runbook gives in a ```sh on=<group> block runs, exactly as written, as root on
    the group's hosts of the lab, and succeeds (the page says what its output must show)."""
    commands = runbook_commands()
    assert commands, "no runbook command blocks found"
    for page, group, command in commands:
        assert lab.groups.get(group), f"{page}: no lab host in group {group}"
        for host in lab.groups[group]:
            done = subprocess.run(
                ["docker", "exec", host, "bash", "-c", command], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, f"{page} on {host}: {command!r} failed: {done.stdout}{done.stderr}"


def test_second_site_run_changes_nothing(lab):
    result = labmod.run_playbook(lab)
    assert result.returncode == 0
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", result.stdout, re.M)
    assert recap, "no play recap in the output"
    changed = {host: int(n) for host, n in recap if int(n)}
    assert not changed, f"second run changed something: {changed}"


# Every service port the lab's roles open somewhere (docs/security.md, "Host firewall"), tried on
# every host and the VIP besides the ports each host's own rules name.
SERVICE_PORTS = {22, 2379, 2380, 5432, 5433, 6379, 8008, 8080, 8404, 8793, 8794, 8974, 26379}

# Run inside the outsider container: TCP connects to every (address, port) of argv[1], all at
# once, 3 s each (a dropped SYN times out, a closed port is refused); prints those that answered.
OUTSIDER_PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
targets = [tuple(t) for t in json.loads(sys.argv[1])]
def answers(target):
    try:
        with socket.create_connection(target, timeout=3):
            return True
    except OSError:
        return False
with ThreadPoolExecutor(64) as pool:
    print(json.dumps([t for t, ok in zip(targets, pool.map(answers, targets)) if ok]))
"""


def _answers(target: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(target, timeout=3):
            return True
    except OSError:
        return False


def test_the_firewall_lets_a_host_outside_the_cluster_reach_only_ssh_and_the_api_at_the_vip(lab):
    """The host firewall (role firewall) seen from a container on the lab network that is no cluster
    host and not in firewall_admin_networks: SSH (the lab lets its network in) on every host and the
    VIP, and the API at the VIP, answer; no other service port of any host or of the VIP does. From
    the Docker host (firewall_admin_networks) every port a host's rules open answers, so the services
    listen there and only the firewall keeps the outsider out."""
    vip = lab.vip.split("/")[0]
    assert vip, "the lab has no VIP (loadbalancer_vip)"
    listed = {host.name: _sh(host.name, "nft list table inet airflow_ha") for host in lab.hosts}
    opened = {n: {int(p) for p in re.findall(r"\btcp dport (\d+) ", t)} for n, t in listed.items()}
    assert all(22 in ports for ports in opened.values()), opened
    every_port = SERVICE_PORTS | set().union(*opened.values())
    targets = sorted(
        {(host.address, port) for host in lab.hosts for port in SERVICE_PORTS | opened[host.name]}
        | {(vip, port) for port in every_port}
    )
    taken = {host.address for host in lab.hosts} | {vip}
    network = ipaddress.ip_network(lab.subnet)
    address = next(str(a) for a in reversed(list(network.hosts())) if str(a) not in taken)
    name = f"{lab.network}-outsider"
    docker_hosts.docker("rm", "-f", name, check=False)
    run = ["run", "-d", "--name", name, "--network", lab.network, "--ip", address, "--label", lab.label]
    docker_hosts.docker(*run, lab.image, "sleep", "600")
    try:
        out = docker_hosts.docker(
            "exec", name, "python3", "-c", OUTSIDER_PROBE, json.dumps(targets), timeout=120
        ).stdout
    finally:
        docker_hosts.docker("rm", "-f", name, check=False)
    answered = {(a, int(p)) for a, p in json.loads(out)}
    expected = {(host.address, 22) for host in lab.hosts} | {(vip, 22), (vip, 8080)}
    assert answered == expected, (
        f"from {address}: answered but should not {sorted(answered - expected)}; "
        f"should answer but did not {sorted(expected - answered)}"
    )
    admin_targets = sorted({(lab.address(host), port) for host, ports in opened.items() for port in ports})
    with ThreadPoolExecutor(64) as pool:
        silent = [t for t, ok in zip(admin_targets, pool.map(_answers, admin_targets), strict=True) if not ok]
    assert not silent, f"ports the rules open that do not answer the Docker host: {silent}"
