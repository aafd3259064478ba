"""Monitoring (roles monitoring and exporters), without containers: Prometheus' scrape jobs and the
exporters' settings rendered from the lab inventory, Debian's own promtool and amtool checking the
rendered configurations, promtool's rule unit tests firing the alerts from made-up series, the
cluster-facts script's output, and the roles' preflight errors.

promtool and amtool come from Debian 12's prometheus (2.42) and prometheus-alertmanager packages,
the versions the roles install: on PATH, else `apt-get download` into a cache directory and
`dpkg -x` (the build machines reach Debian's archive). The test fails, never skips, without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, ansible_env, load_module, tool

metrics_script = load_module("roles/exporters/files/airflow_ha_metrics.py", "airflow_ha_metrics")

# Two plays: the monitoring role's templates on the monitoring hosts, the exporters' settings on
# every host. The roles' own tasks do not run (none carries the tag); their variables are loaded.
RENDER_PLAY = """
- name: Render the monitoring configuration
  hosts: airflow_monitoring
  connection: local
  gather_facts: false
  roles:
    - monitoring
  tasks:
    - name: Write it
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.template', roles ~ '/monitoring/templates/' ~ item ~ '.j2') }}"
        dest: "{{ out }}/{{ inventory_hostname }}-{{ item }}"
        mode: "0644"
      loop: [prometheus.yml, alertmanager.yml, airflow-ha.rules.yml]
      tags: [monitoring_render]

- name: Render the exporters' settings
  hosts: all
  connection: local
  gather_facts: false
  roles:
    - exporters
  tasks:
    - name: Write them
      ansible.builtin.copy:
        content: >-
          {{ {'enabled': exporters_enabled | bool,
              'metrics': lookup('ansible.builtin.template', roles ~ '/exporters/templates/metrics.json.j2')
                         | from_json} | to_json }}
        dest: "{{ out }}/{{ inventory_hostname }}-exporters.json"
        mode: "0644"
      tags: [monitoring_render]
"""

PREFLIGHT_PLAY = """
- name: The monitoring and exporters preflight
  hosts: all
  connection: local
  gather_facts: false
  roles:
    - monitoring
    - exporters
"""


def render(directory: Path, inventory: Path | str) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "render.yml").write_text(RENDER_PLAY)
    (directory / "group_vars").symlink_to(REPO / "group_vars")
    out = directory / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            tool("ansible-playbook"),
            "-i",
            str(inventory),
            str(directory / "render.yml"),
            "--tags",
            "monitoring_render",
            "-e",
            f"out={out}",
            "-e",
            f"roles={REPO / 'roles'}",
            "-e",
            "ansible_become=false",
        ],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return {path.name: path.read_text() for path in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, str]:
    return render(tmp_path_factory.mktemp("lab"), REPO / "inventories" / "lab")


def _debian_tools() -> Path:
    """A directory holding promtool and amtool from Debian 12's packages."""
    if shutil.which("promtool") and shutil.which("amtool"):
        return Path(shutil.which("promtool") or "").parent
    cache = Path(tempfile.gettempdir()) / "airflow-ha-test-prometheus"
    found = cache / "root" / "usr" / "bin"
    if (found / "promtool").exists() and (found / "amtool").exists():
        return found
    cache.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        ["apt-get", "download", "prometheus", "prometheus-alertmanager"],
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if download.returncode != 0:
        pytest.fail(
            "promtool and amtool are needed: install Debian's prometheus and prometheus-alertmanager, or let "
            f"`apt-get download` reach Debian's archive: {download.stderr[-1000:]}"
        )
    for deb in cache.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(cache / "root")], check=True, timeout=300)
    return found


@pytest.fixture(scope="module")
def tools() -> Path:
    return _debian_tools()


def _jobs(prometheus_yml: str) -> dict[str, dict]:
    config = yaml.safe_load(prometheus_yml)
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _targets(job: dict) -> set[tuple[str, str]]:
    return {(c["labels"]["host"], t) for c in job["static_configs"] for t in c["targets"]}


INFRA = {"lab-infra1": "172.30.10.11", "lab-infra2": "172.30.10.12", "lab-infra3": "172.30.10.13"}
HOSTS = INFRA | {
    "lab-airflow1": "172.30.10.21",
    "lab-airflow2": "172.30.10.22",
    "lab-worker1": "172.30.10.31",
    "lab-worker2": "172.30.10.32",
}


def test_prometheus_scrapes_every_exporter_of_the_lab_and_nothing_else(lab):
    assert {
        name.split("-")[0] + "-" + name.split("-")[1] for name in lab if name.endswith("prometheus.yml")
    } == {"lab-infra3"}, "Prometheus is rendered for the airflow_monitoring host only"
    config = yaml.safe_load(lab["lab-infra3-prometheus.yml"])
    assert config["global"]["scrape_interval"] == "5s"  # the lab's short interval
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["172.30.10.13:9093"]
    assert config["rule_files"] == ["/etc/prometheus/rules/airflow-ha.yml"]
    jobs = _jobs(lab["lab-infra3-prometheus.yml"])
    assert set(jobs) == {"node", "patroni", "etcd", "haproxy", "prometheus", "alertmanager"}
    assert _targets(jobs["node"]) == {(h, f"{a}:9100") for h, a in HOSTS.items()}
    assert _targets(jobs["patroni"]) == {(h, f"{a}:8008") for h, a in INFRA.items()}
    assert _targets(jobs["etcd"]) == {(h, f"{a}:2381") for h, a in INFRA.items()}
    lbs = {h: a for h, a in INFRA.items() if h != "lab-infra3"}
    assert _targets(jobs["haproxy"]) == {(h, f"{a}:8404") for h, a in lbs.items()}
    assert _targets(jobs["prometheus"]) == {("lab-infra3", "172.30.10.13:9090")}
    assert _targets(jobs["alertmanager"]) == {("lab-infra3", "172.30.10.13:9093")}
    # Patroni's REST API is TLS with the cluster CA; the others are plain, behind the firewall.
    assert jobs["patroni"]["scheme"] == "https"
    assert jobs["patroni"]["tls_config"] == {"ca_file": "/etc/prometheus/tls/ca.crt"}
    assert all(jobs[j]["scheme"] == "http" and "tls_config" not in jobs[j] for j in set(jobs) - {"patroni"})


def test_each_host_reports_its_own_units_vip_and_scheduler_health(lab):
    settings = {h: json.loads(lab[f"{h}-exporters.json"]) for h in HOSTS}
    assert all(s["enabled"] for s in settings.values())
    metrics = {h: s["metrics"] for h, s in settings.items()}
    assert metrics["lab-worker1"]["units"] == ["airflow-worker.service"]
    assert metrics["lab-airflow1"]["units"] == ["airflow-api-server.service"]
    assert metrics["lab-infra3"]["units"] == []
    assert metrics["lab-airflow2"]["scheduler_health_url"] == "http://127.0.0.1:8974/health"
    assert metrics["lab-worker2"]["scheduler_health_url"] == ""
    assert metrics["lab-infra1"]["vips"] == ["172.30.10.10"]
    assert metrics["lab-infra2"]["vips"] == ["172.30.10.10"]
    assert metrics["lab-infra3"]["vips"] == []
    assert metrics["lab-worker1"]["output"] == "/var/lib/prometheus/node-exporter/airflow_ha.prom"
    assert metrics["lab-infra1"]["sentinel_config"] == "/etc/redis/sentinel.conf"


def test_without_monitoring_hosts_no_exporter_runs(tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        group: {"hosts": {"one": {"airflow_node_address": "10.9.0.1"}}}
                        for group in (
                            "airflow_metadata_db",
                            "airflow_broker",
                            "airflow_webserver",
                            "airflow_scheduler",
                            "airflow_worker",
                        )
                    }
                }
            }
        )
    )
    rendered = render(tmp_path / "play", inventory)
    assert json.loads(rendered["one-exporters.json"])["enabled"] is False
    assert not [name for name in rendered if name.endswith("prometheus.yml")]


def test_promtool_and_amtool_accept_the_rendered_configurations(lab, tools, tmp_path):
    rules = tmp_path / "airflow-ha.yml"
    rules.write_text(lab["lab-infra3-airflow-ha.rules.yml"])
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    # The same file with the host's paths pointing at the copies here.
    prometheus = tmp_path / "prometheus.yml"
    prometheus.write_text(
        lab["lab-infra3-prometheus.yml"]
        .replace("/etc/prometheus/rules/airflow-ha.yml", str(rules))
        .replace("/etc/prometheus/tls/ca.crt", str(ca))
    )
    alertmanager = tmp_path / "alertmanager.yml"
    alertmanager.write_text(lab["lab-infra3-alertmanager.yml"])
    for command in (
        [str(tools / "promtool"), "check", "rules", str(rules)],
        [str(tools / "promtool"), "check", "config", str(prometheus)],
        [str(tools / "amtool"), "check-config", str(alertmanager)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    # And a rule file promtool must refuse, so the check above can fail.
    rules.write_text(lab["lab-infra3-airflow-ha.rules.yml"].replace("expr: up == 0", "expr: up ==== 0"))
    done = subprocess.run(
        [str(tools / "promtool"), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert done.returncode != 0


def test_every_alert_names_an_existing_runbook_page(lab):
    groups = yaml.safe_load(lab["lab-infra3-airflow-ha.rules.yml"])["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 12
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/runbooks/"), (rule["alert"], url)
        page = url.split("#")[0]
        assert (REPO / page).is_file(), f"{rule['alert']}: {page} does not exist"
        anchor = url.partition("#")[2]
        if anchor:
            headings = [
                line.lstrip("#").strip().lower().replace(" ", "-")
                for line in (REPO / page).read_text().splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"{rule['alert']}: no heading for #{anchor} in {page}"
        assert rule.get("for", "15s") in ("15s",), f"{rule['alert']}: the lab's for: is 15s"


def _alert(name: str, labels: dict[str, str], summary: str, page: str) -> dict:
    return {
        "alertname": name,
        "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary, "runbook_url": page}}],
    }


SENTINEL = 'airflow_ha_sentinel_master{{name="airflow-broker",master="{master}",host="{host}",job="node"}}'
WORKER = 'airflow_ha_unit_active{{unit="airflow-worker.service",host="{host}",job="node"}}'

LAG_SUMMARY = "The replica on lab-infra2 has replayed 32.42MiB less WAL than the primary wrote"

# promtool's rule unit tests (promtool test rules): made-up series at the lab's 5 s interval.
RULE_TESTS = {
    "evaluation_interval": "5s",
    "tests": [
        {  # A worker's unit stops at 10 s: nothing before `for:` (15 s) has passed, the alert after.
            "interval": "5s",
            "input_series": [
                {
                    "series": WORKER.format(host="lab-worker1"),
                    "values": "1 1 0x20",
                },
                {
                    "series": WORKER.format(host="lab-worker2"),
                    "values": "1x22",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "20s", "alertname": "AirflowHaWorkerOffline", "exp_alerts": []},
                _alert(
                    "AirflowHaWorkerOffline",
                    {
                        "severity": "critical",
                        "unit": "airflow-worker.service",
                        "host": "lab-worker1",
                        "job": "node",
                    },
                    "The Celery worker on lab-worker1 is not running",
                    "docs/runbooks/worker-failure.md",
                )
                | {"eval_time": "30s"},
            ],
        },
        {  # The VIP moves from infra1 to infra2 at 15 s; no VIP anywhere on another cluster.
            "interval": "5s",
            "input_series": [
                {
                    "series": 'airflow_ha_vip_held{vip="172.30.10.10",host="lab-infra1"}',
                    "values": "1 1 1 0x10",
                },
                {
                    "series": 'airflow_ha_vip_held{vip="172.30.10.10",host="lab-infra2"}',
                    "values": "0 0 0 1x10",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10s", "alertname": "AirflowHaVipMoved", "exp_alerts": []},
                _alert(
                    "AirflowHaVipMoved",
                    {"severity": "warning", "vip": "172.30.10.10"},
                    "The VIP 172.30.10.10 moved between load balancers in the last 10 minutes",
                    "docs/runbooks/loadbalancer-failover.md",
                )
                | {"eval_time": "20s"},
                {"eval_time": "20s", "alertname": "AirflowHaVipNotHeld", "exp_alerts": []},
            ],
        },
        {  # Sentinels name infra1 until 15 s, then infra2 (a failover); one lags behind for 10 s.
            "interval": "5s",
            "input_series": [
                {
                    "series": SENTINEL.format(host="lab-infra1", master="172.30.10.11:6379"),
                    "values": "1 1 1 stale",
                },
                {
                    "series": SENTINEL.format(host="lab-infra1", master="172.30.10.12:6379"),
                    "values": "_ _ _ 1x20",
                },
                {
                    "series": SENTINEL.format(host="lab-infra2", master="172.30.10.11:6379"),
                    "values": "1 1 1 stale",
                },
                {
                    "series": SENTINEL.format(host="lab-infra2", master="172.30.10.12:6379"),
                    "values": "_ _ _ 1x20",
                },
                {
                    "series": SENTINEL.format(host="lab-infra3", master="172.30.10.11:6379"),
                    "values": "1x4 stale",
                },
                {
                    "series": SENTINEL.format(host="lab-infra3", master="172.30.10.12:6379"),
                    "values": "_x4 1x18",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "10s", "alertname": "AirflowHaBrokerMasterChanged", "exp_alerts": []},
                _alert(
                    "AirflowHaBrokerMasterChanged",
                    {"severity": "warning", "name": "airflow-broker"},
                    "The Sentinels named more than one Redis master for airflow-broker in the last 10 "
                    "minutes (a broker failover)",
                    "docs/runbooks/broker-failover.md",
                )
                | {"eval_time": "30s"},
                # infra3 named the old master from 15 to 20 s only: shorter than for:, no alert.
                {"eval_time": "30s", "alertname": "AirflowHaBrokerSentinelsDisagree", "exp_alerts": []},
            ],
        },
        {  # The primary (infra1) is killed at 10 s; infra2 is promoted at 40 s on a new timeline.
            "interval": "5s",
            "input_series": [
                {"series": 'up{job="patroni",host="lab-infra1"}', "values": "1 1 0x20"},
                {"series": 'up{job="patroni",host="lab-infra2"}', "values": "1x22"},
                {"series": 'up{job="patroni",host="lab-infra3"}', "values": "1x22"},
                {"series": 'patroni_primary{job="patroni",host="lab-infra1"}', "values": "1 1 stale"},
                {"series": 'patroni_primary{job="patroni",host="lab-infra2"}', "values": "0x7 1x14"},
                {"series": 'patroni_primary{job="patroni",host="lab-infra3"}', "values": "0x22"},
                {"series": 'patroni_sync_standby{job="patroni",host="lab-infra2"}', "values": "1x7 0x14"},
                {"series": 'patroni_sync_standby{job="patroni",host="lab-infra3"}', "values": "0x7 1x14"},
                {
                    "series": 'patroni_postgres_timeline{job="patroni",host="lab-infra2"}',
                    "values": "3x7 4x14",
                },
                {
                    "series": 'patroni_postgres_timeline{job="patroni",host="lab-infra3"}',
                    "values": "3x9 4x12",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "5s", "alertname": "AirflowHaDatabaseNoPrimary", "exp_alerts": []},
                _alert(
                    "AirflowHaDatabaseNoPrimary",
                    {"severity": "critical"},
                    "No Patroni member is the PostgreSQL primary (writes fail)",
                    "docs/runbooks/database-failover.md",
                )
                | {"eval_time": "35s"},
                _alert(
                    "AirflowHaDatabaseMemberDown",
                    {"severity": "critical", "job": "patroni", "host": "lab-infra1"},
                    "PostgreSQL/Patroni on lab-infra1 is down",
                    "docs/runbooks/database-failover.md",
                )
                | {"eval_time": "35s"},
                {"eval_time": "35s", "alertname": "AirflowHaDatabasePrimaryChanged", "exp_alerts": []},
                {"eval_time": "60s", "alertname": "AirflowHaDatabaseNoPrimary", "exp_alerts": []},
                _alert(
                    "AirflowHaDatabasePrimaryChanged",
                    {"severity": "warning"},
                    "A new PostgreSQL primary was promoted in the last 10 minutes (the old one was lost or "
                    "switched over)",
                    "docs/runbooks/database-failover.md",
                )
                | {"eval_time": "60s"},
                {"eval_time": "60s", "alertname": "AirflowHaDatabaseNoSyncStandby", "exp_alerts": []},
            ],
        },
        {  # After a failover the new leader's replayed location is old: no alert for it; a replica
            # 32 MiB behind raises one.
            "interval": "5s",
            "input_series": [
                {
                    "series": 'patroni_xlog_location{job="patroni",instance="a",host="lab-infra3"}',
                    "values": "90000000x10",
                },
                {
                    "series": 'patroni_xlog_replayed_location{job="patroni",instance="a",host="lab-infra3"}',
                    "values": "1000x10",
                },
                {"series": 'patroni_replica{job="patroni",instance="a",host="lab-infra3"}', "values": "0x10"},
                {
                    "series": 'patroni_xlog_replayed_location{job="patroni",instance="b",host="lab-infra1"}',
                    "values": "89999000x10",
                },
                {"series": 'patroni_replica{job="patroni",instance="b",host="lab-infra1"}', "values": "1x10"},
                {
                    "series": 'patroni_xlog_replayed_location{job="patroni",instance="c",host="lab-infra2"}',
                    "values": "56000000x10",
                },
                {"series": 'patroni_replica{job="patroni",instance="c",host="lab-infra2"}', "values": "1x10"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30s",
                    "alertname": "AirflowHaDatabaseReplicaLagging",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "job": "patroni",
                                "instance": "c",
                                "host": "lab-infra2",
                            },
                            "exp_annotations": {
                                "summary": LAG_SUMMARY,
                                "runbook_url": "docs/runbooks/database-failover.md",
                            },
                        }
                    ],
                },
            ],
        },
    ],
}


def test_the_alert_rules_fire_when_their_condition_holds_for_long_enough(lab, tools, tmp_path):
    (tmp_path / "airflow-ha.yml").write_text(lab["lab-infra3-airflow-ha.rules.yml"])
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["airflow-ha.yml"]} | RULE_TESTS))
    done = subprocess.run(
        [str(tools / "promtool"), "test", "rules", "tests.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_facts_script_writes_metrics_the_node_exporter_accepts(tools, tmp_path):
    text = metrics_script.render(
        {"airflow-worker.service": False, "airflow-api-server.service": True},
        True,
        {"172.30.10.10": True},
        {'/etc/etcd/tls/"odd".crt': 1_830_000_000.0},
        time.time(),
    )
    assert 'airflow_ha_unit_active{unit="airflow-worker.service"} 0' in text
    assert 'airflow_ha_unit_active{unit="airflow-api-server.service"} 1' in text
    assert "airflow_ha_scheduler_healthy 1" in text
    assert 'airflow_ha_vip_held{vip="172.30.10.10"} 1' in text
    assert (
        'airflow_ha_certificate_expiry_timestamp_seconds{path="/etc/etcd/tls/\\"odd\\".crt"} 1830000000'
        in text
    )
    done = subprocess.run(
        [str(tools / "promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # No health line while the scheduler's unit is not active.
    assert "airflow_ha_scheduler_healthy" not in metrics_script.render({}, None, {}, {}, 0.0)


def test_the_facts_script_reads_openssl_and_ip(tmp_path):
    sentinel_conf = (
        "port 26379\nsentinel monitor airflow-broker 172.30.10.12 6379 2\n"
        "sentinel down-after-milliseconds airflow-broker 5000\n"
        "sentinel known-replica airflow-broker 172.30.10.11 6379\n"
    )
    assert metrics_script.sentinel_masters(sentinel_conf) == {"airflow-broker": "172.30.10.12:6379"}
    assert (
        'airflow_ha_sentinel_master{name="airflow-broker",master="172.30.10.12:6379"} 1'
        in metrics_script.render({}, None, {}, {}, 0.0, {"airflow-broker": "172.30.10.12:6379"})
    )
    assert metrics_script.not_after("notAfter=Nov  8 02:50:48 2027 GMT\n") == 1825642248.0
    assert metrics_script.not_after("garbage") is None
    held = metrics_script.held_addresses(
        "2: eth0    inet 172.30.10.11/24 brd 172.30.10.255 scope global eth0\\       valid_lft forever\n"
        "2: eth0    inet 172.30.10.10/32 scope global eth0\\       valid_lft forever\n"
        "2: eth0    inet6 fe80::42:acff:fe1e:a0b/64 scope link \\       valid_lft forever\n"
    )
    assert held == {"172.30.10.11", "172.30.10.10", "fe80::42:acff:fe1e:a0b"}
    # A real certificate, read by the real openssl, end to end through main().
    cert = tmp_path / "tls" / "host.crt"
    cert.parent.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(cert),
            "-days",
            "3",
            "-subj",
            "/CN=test",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    settings = tmp_path / "metrics.json"
    output = tmp_path / "airflow_ha.prom"
    settings.write_text(
        json.dumps(
            {
                "output": str(output),
                "units": [],
                "scheduler_unit": "airflow-scheduler.service",
                "scheduler_health_url": "",
                "vips": [],
                "certificate_globs": [str(tmp_path / "*" / "*.crt")],
                "sentinel_config": str(tmp_path / "sentinel.conf"),
            }
        )
    )
    assert metrics_script.main(["airflow_ha_metrics.py", str(settings)]) == 0
    assert "airflow_ha_sentinel_master" not in output.read_text(), "a Sentinel metric without sentinel.conf"
    # The master the Sentinel's own file names (Sentinel rewrites it at each failover).
    (tmp_path / "sentinel.conf").write_text("port 0\nsentinel monitor airflow-broker 192.0.2.7 6379 2\n")
    assert metrics_script.main(["airflow_ha_metrics.py", str(settings)]) == 0
    assert 'airflow_ha_sentinel_master{name="airflow-broker",master="192.0.2.7:6379"} 1' in output.read_text()
    line = next(x for x in output.read_text().splitlines() if x.startswith("airflow_ha_certificate_expiry"))
    assert str(cert) in line
    assert abs(float(line.split()[-1]) - (time.time() + 3 * 86400)) < 300
    assert oct(os.stat(output).st_mode & 0o777) == "0o644"


def _preflight(tmp_path: Path, extra: dict) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(PREFLIGHT_PLAY)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": extra}}}))
    return subprocess.run(
        [
            tool("ansible-playbook"),
            "-i",
            str(inventory),
            str(tmp_path / "play.yml"),
            "--tags",
            "monitoring_preflight,exporters_preflight",
            "-e",
            "ansible_become=false",
        ],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_preflight_passes_the_defaults(tmp_path):
    done = _preflight(tmp_path, {})
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"monitoring_webhook_url": "alerts.example.internal"},
            "monitoring_webhook_url=alerts.example.internal",
        ),
        ({"monitoring_alert_for": "2 minutes"}, "must be Prometheus durations"),
        (
            {"monitoring_scrape_jobs": [{"name": "x", "scheme": "https", "targets": []}]},
            "monitoring_tls_ca_file",
        ),
        ({"exporters_units": ["airflow-worker"]}, "must list systemd service names ending in .service"),
        ({"exporters_scheduler_health_url": "127.0.0.1:8974"}, "must be empty or an http(s) URL"),
    ],
)
def test_the_preflight_refuses_bad_settings_with_the_reason(tmp_path, extra, message):
    done = _preflight(tmp_path, extra)
    assert done.returncode != 0, done.stdout[-3000:]
    assert message in done.stdout.replace("\\n", " "), done.stdout[-3000:]


@pytest.mark.parametrize("role", ["monitoring", "exporters"])
def test_every_variable_is_documented_in_defaults_and_argument_specs_alike(role):
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    only_defaults, only_specs = set(defaults) - set(options), set(options) - set(defaults)
    assert not only_defaults, f"{role}: only in defaults/main.yml: {only_defaults}"
    assert not only_specs, f"{role}: only in meta/argument_specs.yml: {only_specs}"
    assert all(name.startswith(f"{role}_") for name in defaults)
    for name, value in defaults.items():
        assert options[name].get("default") == value, f"{role}: {name} defaults differ"
        assert options[name].get("description"), f"{role}: {name} has no description"
    etcd = yaml.safe_load((REPO / "roles" / "etcd" / "meta" / "argument_specs.yml").read_text())
    assert etcd["argument_specs"]["main"]["options"]["etcd_metrics_port"]["default"] == 2381


def test_the_grafana_dashboard_is_valid_and_its_queries_parse(tools, tmp_path):
    """roles/monitoring/files/airflow-ha-dashboard.json: Grafana's import shape (title, uid, panels with
    a Prometheus data source variable), and every panel's PromQL parsed by promtool (as recording rules)."""
    dashboard = json.loads(
        (REPO / "roles" / "monitoring" / "files" / "airflow-ha-dashboard.json").read_text()
    )
    assert dashboard["uid"]
    assert dashboard["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [str(tools / "promtool"), "check", "rules", str(tmp_path / "dashboard.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
