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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

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
    client = AirflowApi(lab.api_url, "admin", secrets["admin_password"], verify=lab.api_verify)
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


def _status_roles(stdout: str) -> tuple[str, str, str]:
    """The Patroni leader, the Redis master and the VIP holder, as the status table names them."""
    leaders = re.findall(r'^\s*"  (\S+)\s+\S+\s+Leader\s+running\s', stdout, re.M)
    assert len(leaders) == 1, f"the table names {leaders} as Patroni leader"
    master = re.search(r'"Redis \(master (\S+),', stdout)
    holder = re.search(r'^\s*"  (\S+)\s+holds\s', stdout, re.M)
    assert master, f"no Redis master in the table: {stdout[-3000:]}"
    assert holder, f"no VIP holder in the table: {stdout[-3000:]}"
    return leaders[0], master.group(1), holder.group(1)


def _status_faults(lab, leader: str, master: str, holder: str) -> list[tuple[str, str, str]]:
    """One stopped unit per tier, on hosts chosen so that no leader, master or VIP holder is hit:
    (host, unit, runbook page). The database member loses Patroni and etcd together, so no Patroni
    leans on the etcd that is down."""
    db = next(h for h in reversed(lab.groups["airflow_metadata_db"]) if h not in (leader, master))
    broker = next(h for h in lab.groups["airflow_broker"] if h not in (master, db))
    backup_lb = next(h for h in lab.groups["airflow_loadbalancer"] if h != holder)
    schedulers, api_servers = lab.groups["airflow_scheduler"], lab.groups["airflow_webserver"]
    return [
        (db, "patroni", "database-failover.md"),
        (db, "etcd", "database-failover.md"),
        (broker, "redis-server", "broker-failover.md"),
        (backup_lb, "haproxy", "loadbalancer-failover.md"),
        (schedulers[-1], "airflow-triggerer", "scheduler-failure.md"),
        (api_servers[0], "airflow-api-server", "api-server-failure.md"),
        (lab.groups["airflow_worker"][0], "airflow-worker", "worker-failure.md"),
    ]


def test_status_is_healthy_then_names_one_fault_in_every_tier(lab):
    """`make status` (docs/runbooks/cluster-status.md) on the healthy lab exits 0 and its table names
    every host and one Patroni leader. Then one unit per tier is stopped at once (a database member's
    Patroni and etcd, a Redis replica, the backup load balancer's HAProxy, a triggerer, an api-server,
    a worker): it exits non-zero naming each host, unit and runbook page, and no other host; the API
    at the VIP answers every request; Alertmanager fires AirflowHaWorkerOffline for that worker alone
    and AirflowHaDatabaseMemberDown for that member. Once the units are started again it reports the
    cluster healthy: every member back in its role."""
    # The runbook's command for the lab, as written.
    result = subprocess.run(["make", "status"], cwd=labmod.REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"make status found a problem in the healthy lab: {result.stdout[-4000:]}"
    for host in lab.hosts:
        assert f'"  {host.name} ' in result.stdout, f"{host.name} is not in the table"
    leader, master, holder = _status_roles(result.stdout)
    assert leader in lab.groups["airflow_metadata_db"]
    assert "Problems: none" in result.stdout

    faults = _status_faults(lab, leader, master, holder)
    try:
        for host, unit, _ in faults:
            docker_hosts.exec_in(host, "systemctl", "stop", unit)
        result = subprocess.run(
            ["make", "status"], cwd=labmod.REPO, capture_output=True, text=True, timeout=600
        )
        assert result.returncode != 0, "make status did not fail with a unit stopped in every tier"
        for host, unit, page in faults:
            line = re.search(
                rf"ERROR {host}: {unit} is (inactive|failed) \(see docs/runbooks/{page}\)", result.stdout
            )
            assert line, f"{host}'s stopped {unit} is not reported with {page}: {result.stdout[-4000:]}"
        db, api_server = faults[0][0], faults[-2][0]
        member = re.search(
            rf"ERROR {db}: (Patroni member is stopped|not a member of the Patroni cluster)", result.stdout
        )
        assert member, f"the database section does not name {db}: {result.stdout[-4000:]}"
        assert f"ERROR {faults[-1][0]}: its Celery worker does not answer a ping" in result.stdout
        # The VIP holder's HAProxy sees the stopped api-server: a warning on that host, the only
        # problem allowed on a host where nothing was stopped.
        backend = re.escape(lab.address(api_server))
        assert re.search(
            rf"WARNING {holder}: HAProxy: api-server backends not UP: \S*{backend}", result.stdout
        )
        hit = {host for host, _, _ in faults} | {holder}
        named = set(re.findall(r"(?:ERROR|WARNING) ([^\s:,]+)[:,]", result.stdout))
        assert named <= hit, f"hosts with nothing stopped were reported: {sorted(named - hit)}"
        # With one api-server stopped, the VIP still answers every request (HAProxy took it out).
        answers = [
            requests.get(f"{lab.api_url}/api/v2/monitor/health", timeout=5, verify=lab.api_verify)
            for _ in range(20)
        ]
        assert [r.status_code for r in answers] == [200] * 20
        # Alertmanager (docs/runbooks/monitoring.md) names the stopped worker and database member.
        worker = faults[-1][0]
        _wait_for(
            f"AirflowHaWorkerOffline for {worker}",
            lambda: _firing(lab, "AirflowHaWorkerOffline", host=worker),
            90,
        )
        others = {a["labels"]["host"] for a in _firing(lab, "AirflowHaWorkerOffline")} - {worker}
        assert not others, f"workers with nothing stopped reported offline: {others}"
        _wait_for(
            f"AirflowHaDatabaseMemberDown for {db}",
            lambda: _firing(lab, "AirflowHaDatabaseMemberDown", host=db),
            90,
        )
    finally:
        for host, unit, _ in reversed(faults):
            docker_hosts.exec_in(host, "systemctl", "start", unit, check=False)
    # Let the restarted replica catch up before asking (Patroni's /health is 200 once it streams),
    # so the check below usually takes one status run.
    db = faults[0][0]
    health = f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /etc/patroni/tls/ca.crt https://{lab.address(db)}:8008/health"
    deadline = time.monotonic() + 120
    while docker_hosts.exec_in(db, "bash", "-c", health, check=False).strip() != "200":
        assert time.monotonic() < deadline, f"Patroni on {db} is not healthy 120 s after its restart"
        time.sleep(2)
    deadline = time.monotonic() + 180
    while True:
        result = subprocess.run(
            ["make", "status"], cwd=labmod.REPO, capture_output=True, text=True, timeout=600
        )
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert result.returncode == 0, (
        f"the cluster is not whole again 180 s after the restarts: {result.stdout[-4000:]}"
    )
    assert _status_roles(result.stdout)[0] == leader, "the Patroni leader changed"


def _postgres_checks_down(lb: str, server: str) -> int:
    """How many times HAProxy on `lb` has taken `server` of its postgres backend out (chkdown)."""
    csv = docker_hosts.exec_in(lb, "curl", "-s", "http://127.0.0.1:8404/stats;csv")
    header, *rows = csv.lstrip("# ").splitlines()
    names = header.split(",")
    for row in rows:
        fields = dict(zip(names, row.split(","), strict=False))
        if fields.get("pxname") == "postgres" and fields.get("svname") == server:
            return int(fields["chkdown"] or 0)
    raise AssertionError(f"{lb}: no postgres server {server} in HAProxy's stats: {csv[:1000]}")


def test_a_slow_patroni_answer_keeps_the_primary_in_rotation(lab):
    """A leader whose Patroni REST API stalls for 4 s (SIGSTOP, then SIGCONT) stays in HAProxy's
    postgres backend on every load balancer: a check may wait loadbalancer_postgres_check_timeout for
    the answer. Taken out, every database session of the cluster would be cut (on-marked-down
    shutdown-sessions), which once crashed the lab's triggerers and dag-processors under load."""
    leader = _db_primary(lab)
    server = "pg_" + lab.address(leader)
    lbs = lab.groups["airflow_loadbalancer"]
    before = {lb: _postgres_checks_down(lb, server) for lb in lbs}
    pid = docker_hosts.exec_in(leader, "systemctl", "show", "-p", "MainPID", "--value", "patroni").strip()
    assert pid not in ("", "0"), f"no Patroni process on {leader}"
    docker_hosts.exec_in(leader, "kill", "-STOP", pid)
    try:
        time.sleep(4)
    finally:
        docker_hosts.exec_in(leader, "kill", "-CONT", pid)
    time.sleep(5)  # the checks that were waiting finish
    after = {lb: _postgres_checks_down(lb, server) for lb in lbs}
    assert after == before, f"HAProxy took the primary {leader} out during a 4 s stall: {before} -> {after}"


def test_logins_and_tokens_work_the_same_on_every_api_server(lab):
    """Users live in the database and tokens are signed with the shared JWT secret: a token one
    api-server issued is good on the other; a wrong password and a missing token are refused."""
    password = yaml.safe_load(lab.secrets_file.read_text())["admin_password"]
    servers = [f"{lab.api_scheme}://{lab.address(host)}:8080" for host in lab.groups["airflow_webserver"]]
    tokens = []
    verify = lab.api_verify

    def login(url: str, secret: str) -> requests.Response:
        return requests.post(
            f"{url}/auth/token", json={"username": "admin", "password": secret}, timeout=10, verify=verify
        )

    for url in servers:
        answer = login(url, password)
        assert answer.status_code in (200, 201), f"{url}: {answer.status_code} {answer.text[:200]}"
        tokens.append(answer.json()["access_token"])
        wrong = login(url, "not-it")
        assert wrong.status_code in (401, 403), f"{url}: a wrong password got {wrong.status_code}"
        assert requests.get(f"{url}/api/v2/dags", timeout=10, verify=verify).status_code == 401
    for token, url in zip(tokens, reversed(servers), strict=True):
        dags = requests.get(
            f"{url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=10, verify=verify
        )
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


# On a worker, as the airflow user that runs tasks: the Execution API client's own SSL context
# (task-sdk's Client, built from airflow.cfg) verifies chain and name and trusts the cluster CA
# alone, and a call through it to the VIP succeeds.
WORKER_API_CLIENT = """
import ssl, sys
from airflow.sdk.api import client
ctx = client.Client._get_ssl_context_cached(client.API_SSL_CA_FILE_PATH, client.API_SSL_CERT_PATH)
assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname, "no verification"
assert len(ctx.get_ca_certs()) == 1, f"trusts {len(ctx.get_ca_certs())} CAs"
api = sys.argv[1]
with client.Client(base_url=api + "/execution/", token="none") as c:
    print(c.get(api + "/api/v2/monitor/health").status_code)
"""


def test_the_api_is_https_only_and_verified_against_the_cluster_ca(lab, api):
    """HTTPS at the VIP with a certificate the cluster CA vouches for (for the VIP's address), not
    the system's CAs; plain HTTP gets no API at the VIP nor at any api-server; a worker's Execution
    API client verifies the server against the cluster CA only."""
    assert lab.api_url.startswith("https://")
    health = f"{lab.api_url}/api/v2/monitor/health"
    assert requests.get(health, timeout=10, verify=lab.api_verify).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(health, timeout=10)
    vip = lab.api_url.split("//")[1].rsplit(":", 1)[0]
    for address in [vip] + [lab.address(h) for h in lab.groups["airflow_webserver"]]:
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{address}:8080/api/v2/monitor/health", timeout=5)
        if address != vip:  # each api-server itself: HTTPS with its own certificate
            url = f"https://{address}:8080/api/v2/monitor/health"
            assert requests.get(url, timeout=10, verify=lab.api_verify).status_code == 200
    worker = lab.groups["airflow_worker"][0]
    script = WORKER_API_CLIENT.replace("'", "'\\''")
    out = _sh(
        worker,
        f"cd /tmp && runuser -u airflow -- env AIRFLOW_HOME=/opt/airflow /opt/airflow/venv/bin/python"
        f" -c '{script}' {lab.api_url}",
        timeout=120,
    )
    assert out.splitlines()[-1] == "200", out


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


def test_a_worker_holds_none_of_the_api_servers_or_schedulers_secrets(lab, api):
    """Issue 12: as `airflow` (the user tasks run as) on each worker, no readable file under /etc or
    /opt holds the metadata DB password, the fernet key, the JWT secret or the API secret key (root
    finds the API key in the log server's own file alone); the result backend's user reaches its
    own database and is refused the metadata database; tasks run and their logs are fetched."""
    secrets = yaml.safe_load(lab.secrets_file.read_text())
    patterns = "".join(
        secrets[k] + "\n" for k in ("db_password", "fernet_key", "jwt_secret", "api_secret_key")
    )
    run_id, tis = _run_sample(api)
    ti = next(t for t in tis if t["task_id"] == "report_host")
    run = quote(run_id, safe="")
    log = api.get(
        f"/api/v2/dags/{DAG}/dagRuns/{run}/taskInstances/report_host/logs/{ti['try_number']}",
        map_index=ti.get("map_index", -1),
        full_content="true",
    )
    assert f"ran on {ti['hostname']}" in json.dumps(log), "the api-server did not fetch the task's log"

    def grep(host: str, *user: str, paths: tuple[str, ...] = ("/etc", "/opt")) -> list[str]:
        done = subprocess.run(
            ["docker", "exec", "-i", *user, host, "grep", "-rlsF", "-f", "-", *paths],
            input=patterns,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.stdout.split()

    connect = (
        "import configparser, psycopg2\n"
        "c = configparser.ConfigParser(interpolation=None); c.read('/opt/airflow/airflow.cfg')\n"
        "url = c['celery']['result_backend'].removeprefix('db+postgresql+psycopg2://').replace('%%', '%')\n"
        "base, q, query = url.partition('?')\n"
        "psycopg2.connect('postgresql://' + url).close()\n"
        "print('own database: connected', flush=True)\n"
        "psycopg2.connect('postgresql://' + base.rsplit('/', 1)[0] + '/airflow' + q + query)\n"
    )
    for host in lab.groups["airflow_worker"]:
        assert grep(host, "-u", "airflow") == [], host
        assert grep(host, paths=("/etc/airflow", "/etc/airflow-logs", "/opt/airflow")) == [
            "/etc/airflow-logs/airflow.cfg"
        ], host
        done = subprocess.run(
            ["docker", "exec", "-u", "airflow", host, "/opt/airflow/venv/bin/python", "-c", connect],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "own database: connected" in done.stdout, (host, done.stderr[-600:])
        assert done.returncode != 0, host
        assert "no pg_hba.conf entry" in done.stderr or "permission denied for database" in done.stderr, (
            host,
            done.stderr[-600:],
        )


def test_the_airflow_database_user_cannot_touch_the_failover_lease(lab):
    """Issue 12: on each scheduler host, as `airflow` with airflow.cfg's database login, the
    failover controllers' schema is refused (it exists in either mode); in active_standby the
    controllers log in as their own user."""
    script = (
        "import configparser, psycopg2\n"
        "c = configparser.ConfigParser(interpolation=None); c.read('/opt/airflow/airflow.cfg')\n"
        "url = c['database']['sql_alchemy_conn'].removeprefix('postgresql+psycopg2://').replace('%%', '%')\n"
        "conn = psycopg2.connect('postgresql://' + url); conn.autocommit = True\n"
        "print('connected', flush=True)\n"
        "conn.cursor().execute('UPDATE airflow_ha.airflow_ha_lease SET paused = true')\n"
    )
    for host in lab.groups["airflow_scheduler"]:
        done = subprocess.run(
            ["docker", "exec", "-u", "airflow", host, "/opt/airflow/venv/bin/python", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "connected" in done.stdout, (host, done.stderr[-600:])
        assert done.returncode != 0, host
        assert "permission denied for schema airflow_ha" in done.stderr, (host, done.stderr[-600:])
        # The controller's DSN (active_standby only; the lab's default mode has none).
        dsn = docker_hosts.exec_in(host, "cat", "/etc/airflow-ha/failover.dsn", check=False)
        assert dsn == "" or dsn.startswith("postgresql://airflow_ha_failover:"), host


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
    # CLIENT LIST fields: "id=59 addr=172.30.10.31:37802 laddr=... user=celery ...".
    sources = {line.split(" addr=")[1].split()[0].rsplit(":", 1)[0] for line in celery}
    assert sources & airflow_addresses, clients


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


def _monitoring_url(lab: labmod.Lab, port: int) -> str:
    # The Docker host is in the lab's firewall_admin_networks: it reaches both directly.
    return f"http://{lab.address(lab.groups['airflow_monitoring'][0])}:{port}"


def _prometheus_query(lab: labmod.Lab, expr: str) -> list[dict]:
    answer = requests.get(f"{_monitoring_url(lab, 9090)}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]["result"]


def _firing(lab: labmod.Lab, alertname: str, **labels: str) -> list[dict]:
    """Alertmanager's active alerts of that name whose labels include these (its v2 API)."""
    filters = [f'alertname="{alertname}"'] + [f'{k}="{v}"' for k, v in labels.items()]
    answer = requests.get(
        f"{_monitoring_url(lab, 9093)}/api/v2/alerts",
        params={"filter": filters, "active": "true"},
        timeout=10,
    )
    answer.raise_for_status()
    return [a for a in answer.json() if a["status"]["state"] == "active"]


def _wait_for(what: str, check: Callable[[], object], timeout: float) -> float:
    """Poll check() every 2 s until it is true; return the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(2)
    took = time.monotonic() - start
    print(f"[monitoring] {what}: {took:.0f} s", flush=True)
    return took


def _fired(lab: labmod.Lab, alertname: str, window: str = "30m") -> set[str]:
    """The hosts (or "" for a cluster-wide alert) for which the alert fired within the window."""
    expr = f'max_over_time(ALERTS{{alertname="{alertname}",alertstate="firing"}}[{window}])'
    return {r["metric"].get("host", "") for r in _prometheus_query(lab, expr)}


def test_monitoring_scrapes_every_target_and_alerted_on_the_chaos_pass(lab):
    """Prometheus on the airflow_monitoring host (roles monitoring, exporters; docs/runbooks/monitoring.md)
    scrapes every exporter of the lab and all answer. The alerts were fired by the faults the suite
    already makes (no fault of its own: the wall time): the chaos pass before this test froze the
    database primary (AirflowHaDatabaseMemberDown for a database host, AirflowHaDatabasePrimaryChanged
    once a replica took over) and crashed the Redis master (AirflowHaBrokerMasterChanged), as
    Prometheus's ALERTS series records; the status test fired AirflowHaWorkerOffline and MemberDown
    for what it stopped. The cluster whole again, none of them is still firing. The lab's intervals
    are short (5 s scrape, 15 s for:)."""
    expected = (
        {("node", host.name) for host in lab.hosts}
        | {("patroni", h) for h in lab.groups["airflow_metadata_db"]}
        | {("etcd", h) for h in lab.groups["airflow_etcd"]}
        | {("haproxy", h) for h in lab.groups["airflow_loadbalancer"]}
        | {(job, h) for job in ("prometheus", "alertmanager") for h in lab.groups["airflow_monitoring"]}
    )

    def targets(expr: str) -> set[tuple[str, str]]:
        return {(r["metric"]["job"], r["metric"]["host"]) for r in _prometheus_query(lab, expr)}

    _wait_for("every scrape target up", lambda: targets("up == 1") == expected, 90)
    assert targets("up") == expected, "Prometheus scrapes targets the inventory does not name"

    member_down = _fired(lab, "AirflowHaDatabaseMemberDown")
    assert member_down & set(lab.groups["airflow_metadata_db"]), (
        f"no database member reported down: {member_down}"
    )
    assert _fired(lab, "AirflowHaDatabasePrimaryChanged"), "the chaos pass's new primary raised no alert"
    assert _fired(lab, "AirflowHaBrokerMasterChanged"), "the chaos pass's new Redis master raised no alert"
    alerts = ("AirflowHaWorkerOffline", "AirflowHaDatabaseMemberDown", "AirflowHaDatabaseNoPrimary")
    _wait_for(f"{', '.join(alerts)} resolved", lambda: not any(_firing(lab, name) for name in alerts), 90)


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
SERVICE_PORTS = {
    22,
    2379,
    2380,
    2381,
    5432,
    5433,
    6379,
    8008,
    8080,
    8404,
    8793,
    8794,
    8974,
    9090,
    9093,
    9100,
    26379,
}

# Run inside the outsider container: TCP connects to every (address, port) of argv[1], all at
# once, 3 s each (a dropped SYN times out, a closed port is refused); prints those that answered.
OUTSIDER_PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote
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
