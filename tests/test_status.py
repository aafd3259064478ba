"""playbooks/status.yml's judge (the collection's cluster_status filter), over recorded outputs.

The inputs are shaped like the real tools' outputs in the lab (patronictl 4.1.5 `list -f json`,
etcdctl 3.4 `endpoint health|status -w json`, redis-cli 7.0 `INFO replication` and Sentinel's
`get-master-addr-by-name`, `ip -o addr`, HAProxy 2.6's `/stats;csv`, the playbook's Airflow probe).
A healthy lab gives no problem; one fault per tier gives the right problem, host and runbook. The
last tests run the playbook itself against hosts that cannot be reached and one local host.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, load_module, run_playbook

status = load_module(
    "collections/ansible_collections/airflow_ha/cluster/plugins/filter/cluster_status.py", "cluster_status"
)

NOW = datetime(2026, 11, 28, tzinfo=UTC).timestamp()
SETTINGS = {
    "vip": "172.30.10.10",
    "db_replicated": True,
    "broker_replicated": True,
    "failover_mode": "active_active",
    "max_replica_lag_mb": 16,
    "certificate_min_days": 30,
    "now": NOW,
}
ADDRESSES = {
    "lab-infra1": "172.30.10.11",
    "lab-infra2": "172.30.10.12",
    "lab-infra3": "172.30.10.13",
    "lab-airflow1": "172.30.10.21",
    "lab-airflow2": "172.30.10.22",
    "lab-worker1": "172.30.10.31",
    "lab-worker2": "172.30.10.32",
}
INFRA = ["airflow_metadata_db", "airflow_etcd", "airflow_broker"]
GROUPS = {
    "lab-infra1": [*INFRA, "airflow_loadbalancer"],
    "lab-infra2": [*INFRA, "airflow_loadbalancer"],
    "lab-infra3": INFRA,
    "lab-airflow1": ["airflow_webserver", "airflow_scheduler"],
    "lab-airflow2": ["airflow_webserver", "airflow_scheduler"],
    "lab-worker1": ["airflow_worker"],
    "lab-worker2": ["airflow_worker"],
}
UNITS = {
    "airflow_etcd": ["etcd.service"],
    "airflow_metadata_db": ["patroni.service"],
    "airflow_broker": ["redis-server.service", "redis-sentinel.service"],
    "airflow_loadbalancer": ["haproxy.service", "keepalived.service"],
    "airflow_webserver": ["airflow-api-server.service"],
    "airflow_scheduler": [
        "airflow-scheduler.service",
        "airflow-dag-processor.service",
        "airflow-triggerer.service",
        "airflow-ha-watchdog.service",
    ],
    "airflow_worker": ["airflow-worker.service"],
}
ETCD_IDS = {"lab-infra1": 9372538179322589801, "lab-infra2": 10501334649042878790, "lab-infra3": 1}

PATRONI = [
    {
        "Cluster": "airflow",
        "Member": "lab-infra1",
        "Host": "172.30.10.11",
        "Role": "Leader",
        "State": "running",
        "TL": 3,
    },
    {
        "Cluster": "airflow",
        "Member": "lab-infra2",
        "Host": "172.30.10.12",
        "Role": "Sync Standby",
        "State": "streaming",
        "TL": 3,
        "Receive LSN": "0/5000148",
        "Receive Lag": 0,
        "Replay LSN": "0/5000148",
        "Replay Lag": 0,
    },
    {
        "Cluster": "airflow",
        "Member": "lab-infra3",
        "Host": "172.30.10.13",
        "Role": "Replica",
        "State": "streaming",
        "TL": 3,
        "Receive LSN": "0/5000148",
        "Receive Lag": 0,
        "Replay LSN": "0/5000100",
        "Replay Lag": 0,
    },
]

HAPROXY_HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
    "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,"
    "type,rate,rate_lim,rate_max,check_status,"
)


def haproxy_row(proxy: str, server: str, state: str) -> str:
    fields = [proxy, server] + [""] * 15 + [state, "1", "1", "0", "0", "0", "5", "0", "", "1", "2", "1", ""]
    return ",".join([*fields, "", "2", "0", "", "1", "L7OK", ""])


def haproxy_csv(api: dict[str, str], pg: dict[str, str]) -> str:
    rows = [HAPROXY_HEADER, haproxy_row("stats", "FRONTEND", "OPEN")]
    rows += [haproxy_row("airflow_api", s, st) for s, st in api.items()]
    rows += [haproxy_row("airflow_api", "BACKEND", "UP")]
    rows += [haproxy_row("postgres", s, st) for s, st in pg.items()]
    return "\n".join(rows) + "\n"


def redis_master(offset: int = 123456) -> str:
    return (
        "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"
        f"slave0:ip=172.30.10.12,port=6379,state=online,offset={offset},lag=0\r\n"
        f"slave1:ip=172.30.10.13,port=6379,state=online,offset={offset},lag=1\r\n"
        f"master_failover_state:no-failover\r\nmaster_repl_offset:{offset}\r\n"
    )


def redis_replica(master: str = "172.30.10.11", link: str = "up", offset: int = 123456) -> str:
    return (
        f"# Replication\r\nrole:slave\r\nmaster_host:{master}\r\nmaster_port:6379\r\n"
        f"master_link_status:{link}\r\nmaster_last_io_seconds_ago:1\r\nslave_repl_offset:{offset}\r\n"
    )


def airflow_probe(host: str, alive: bool = True, workers: list[str] | None = None) -> str:
    jobs = {
        kind: {
            "state": "running",
            "alive": alive,
            "latest_heartbeat": "2026-11-28T00:00:00+00:00",
            "age": 2.5,
        }
        for kind in ("SchedulerJob", "DagProcessorJob", "TriggererJob")
    }
    out: dict[str, Any] = {"hostname": host, "jobs": jobs}
    out["workers"] = ["celery@lab-worker1", "celery@lab-worker2"] if workers is None else workers
    return "[2026-11-28T00:00:00] {settings.py} INFO - some log\nAIRFLOW_HA_STATUS " + json.dumps(out) + "\n"


def healthy() -> dict[str, dict[str, Any]]:
    hosts: dict[str, dict[str, Any]] = {}
    for host, groups in GROUPS.items():
        expected = ["chrony.service", "airflow-ha-firewall.service"]
        for group in groups:
            expected += UNITS[group]
        probe = f"fqdn {host}\naddresses {ADDRESSES[host]}\n" + "".join(
            f"unit {u} active\n" for u in expected
        )
        data: dict[str, Any] = {
            "groups": groups,
            "address": ADDRESSES[host],
            "reachable": True,
            "error": "",
            "probe": probe,
            "expected_units": expected,
            "guarded_units": [],
            "certificates": {"/etc/airflow/ca.crt": "20361125000000Z"},
        }
        if "airflow_metadata_db" in groups:
            data["patroni"] = json.dumps(PATRONI)
            data["certificates"] = {"/etc/patroni/tls/patroni.crt": "20281127000000Z"}
        if "airflow_etcd" in groups:
            data["etcd_health"] = json.dumps(
                [{"endpoint": "https://127.0.0.1:2379", "health": True, "took": "9ms"}]
            )
            header = {
                "cluster_id": 17237436991929493444,
                "member_id": ETCD_IDS[host],
                "revision": 1520,
                "raft_term": 4,
            }
            data["etcd_status"] = json.dumps(
                [
                    {
                        "Endpoint": "https://127.0.0.1:2379",
                        "Status": {
                            "header": header,
                            "version": "3.4.23",
                            "leader": ETCD_IDS["lab-infra2"],
                            "raftTerm": 4,
                        },
                    }
                ]
            )
        if "airflow_broker" in groups:
            data["redis"] = redis_master() if host == "lab-infra1" else redis_replica()
            data["sentinel"] = "172.30.10.11\n6379\n"
        if "airflow_loadbalancer" in groups:
            holds = host == "lab-infra1"
            data["vip"] = (
                "2: eth0    inet 172.30.10.10/24 scope global secondary eth0\\       valid_lft forever"
                if holds
                else ""
            )
            data["haproxy"] = haproxy_csv(
                {"172.30.10.21:8080": "UP", "172.30.10.22:8080": "UP"},
                {"pg_172.30.10.11": "UP", "pg_172.30.10.12": "DOWN", "pg_172.30.10.13": "DOWN"},
            )
        if "airflow_scheduler" in groups:
            data["airflow"] = airflow_probe(host)
        hosts[host] = data
    return hosts


def judge(hosts: dict[str, dict[str, Any]], **settings: Any) -> dict[str, Any]:
    return status.cluster_status(hosts, {**SETTINGS, **settings})


def only_problem(result: dict[str, Any]) -> dict[str, str]:
    errors = [p for p in result["problems"] if p["severity"] == "error"]
    assert len(errors) == 1, "\n".join(result["lines"])
    return errors[0]


def test_a_healthy_lab_has_no_problem_and_names_every_host_and_leader():
    result = judge(healthy())
    text = "\n".join(result["lines"])
    assert result["problems"] == [], text
    assert result["errors"] == 0
    for host in GROUPS:
        assert host in text
    assert "lab-infra1  172.30.10.11  Leader" in text
    assert "Sync Standby" in text
    assert "Redis (master lab-infra1, 172.30.10.11:6379)" in text
    assert (
        "Celery workers online (ping from lab-airflow1, lab-airflow2): celery@lab-worker1, celery@lab-worker2"
        in text
    )
    assert "2028-11-27" in text
    assert text.endswith("Problems: none")


def test_an_unreachable_host_is_a_finding_not_a_crash():
    hosts = healthy()
    hosts["lab-infra3"] = {
        "groups": GROUPS["lab-infra3"],
        "reachable": False,
        "error": "Failed to connect to the host via ssh: Connection timed out",
    }
    result = judge(hosts)
    found = [p for p in result["problems"] if p["host"] == "lab-infra3"]
    assert found[0]["runbook"] == "docs/runbooks/frozen-or-partitioned-host.md"
    assert "unreachable" in found[0]["what"]
    assert "lab-infra3" in "\n".join(result["lines"])


def test_a_stopped_worker_names_the_worker_and_its_runbook():
    hosts = healthy()
    hosts["lab-worker1"]["probe"] = hosts["lab-worker1"]["probe"].replace(
        "airflow-worker.service active", "airflow-worker.service inactive"
    )
    for host in ("lab-airflow1", "lab-airflow2"):
        hosts[host]["airflow"] = airflow_probe(host, workers=["celery@lab-worker2"])
    result = judge(hosts)
    problems = [p for p in result["problems"] if p["host"] == "lab-worker1"]
    assert {p["runbook"] for p in problems} == {"docs/runbooks/worker-failure.md"}
    assert any("airflow-worker is inactive" in p["what"] for p in problems)
    assert any("Celery worker does not answer" in p["what"] for p in problems)


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ({"lab-infra1": "Replica", "lab-infra2": "Sync Standby"}, "0 Patroni leaders"),
        ({"lab-infra2": "Leader"}, "2 Patroni leaders"),
    ],
)
def test_patroni_needs_exactly_one_leader(roles, expected):
    hosts = healthy()
    members = copy.deepcopy(PATRONI)
    for m in members:
        m["Role"] = roles.get(m["Member"], m["Role"])
    for host in ("lab-infra1", "lab-infra2", "lab-infra3"):
        hosts[host]["patroni"] = json.dumps(members)
    result = judge(hosts)
    problem = next(p for p in result["problems"] if "Patroni leaders" in p["what"])
    assert expected in problem["what"]
    assert {p["runbook"] for p in result["problems"]} == {"docs/runbooks/database-failover.md"}


def test_patroni_without_a_sync_standby_or_with_a_lagging_replica():
    hosts = healthy()
    members = copy.deepcopy(PATRONI)
    members[1]["Role"] = "Replica"
    members[2]["Replay Lag"] = 40
    for host in ("lab-infra1", "lab-infra2", "lab-infra3"):
        hosts[host]["patroni"] = json.dumps(members)
    result = judge(hosts)
    whats = [p["what"] for p in result["problems"]]
    assert any("no synchronous standby" in w for w in whats), whats
    assert any("lags 40 MB" in w for w in whats), whats
    assert {p["runbook"] for p in result["problems"]} == {"docs/runbooks/database-failover.md"}
    assert not judge(hosts, max_replica_lag_mb=64)["problems"][1:]


def test_patroni_is_read_from_the_next_host_when_the_first_cannot_answer():
    hosts = healthy()
    hosts["lab-infra1"]["patroni"] = ""
    result = judge(hosts)
    assert result["problems"] == []
    assert "PostgreSQL (Patroni, as lab-infra2 sees it)" in result["lines"]


def test_an_unhealthy_etcd_member_and_a_split_leader():
    hosts = healthy()
    hosts["lab-infra3"]["etcd_health"] = json.dumps(
        [{"endpoint": "https://127.0.0.1:2379", "health": False, "error": "context deadline exceeded"}]
    )
    hosts["lab-infra3"]["etcd_status"] = ""
    result = judge(hosts)
    whats = {p["what"] for p in result["problems"]}
    assert "etcd member is not healthy: context deadline exceeded" in whats
    assert any("do not agree on one leader" in w for w in whats)
    assert {p["runbook"] for p in result["problems"]} == {"docs/runbooks/database-failover.md"}
    assert "  lab-infra1  healthy    lab-infra2  4" in result["lines"]


def test_sentinels_that_disagree_and_two_redis_masters():
    hosts = healthy()
    hosts["lab-infra3"]["sentinel"] = "172.30.10.13\n6379\n"
    hosts["lab-infra3"]["redis"] = redis_master()
    result = judge(hosts)
    whats = [p["what"] for p in result["problems"]]
    assert any("this Sentinel names lab-infra3" in w for w in whats), whats
    assert any("2 Redis nodes say they are master" in w for w in whats), whats
    assert {p["runbook"] for p in result["problems"]} == {"docs/runbooks/broker-failover.md"}


def test_no_sentinel_answers_and_a_replica_link_down():
    hosts = healthy()
    for host in ("lab-infra1", "lab-infra2", "lab-infra3"):
        hosts[host]["sentinel"] = "NOAUTH Authentication required.\n"
    hosts["lab-infra2"]["redis"] = redis_replica(link="down")
    result = judge(hosts)
    whats = [p["what"] for p in result["problems"]]
    assert "no Sentinel names a Redis master" in whats
    assert "Redis replica's link to its master is down" in whats
    assert all(p["runbook"] == "docs/runbooks/broker-failover.md" for p in result["problems"])


@pytest.mark.parametrize("holders", [[], ["lab-infra1", "lab-infra2"]])
def test_exactly_one_load_balancer_holds_the_vip(holders):
    hosts = healthy()
    for host in ("lab-infra1", "lab-infra2"):
        hosts[host]["vip"] = (
            "2: eth0    inet 172.30.10.10/24 scope global secondary eth0" if host in holders else ""
        )
    problem = only_problem(judge(hosts))
    assert f"{len(holders)} load balancers hold the VIP 172.30.10.10" in problem["what"]
    assert problem["runbook"] == "docs/runbooks/loadbalancer-failover.md"


def test_haproxy_backends_api_down_warns_and_no_postgres_primary_fails():
    hosts = healthy()
    hosts["lab-infra2"]["haproxy"] = haproxy_csv(
        {"172.30.10.21:8080": "DOWN", "172.30.10.22:8080": "UP"},
        {"pg_172.30.10.11": "DOWN", "pg_172.30.10.12": "DOWN", "pg_172.30.10.13": "DOWN"},
    )
    result = judge(hosts)
    warning = next(p for p in result["problems"] if p["severity"] == "warning")
    assert warning["runbook"] == "docs/runbooks/api-server-failure.md"
    assert "172.30.10.21:8080=DOWN" in warning["what"]
    problem = only_problem(result)
    assert problem["host"] == "lab-infra2"
    assert "0 PostgreSQL servers UP" in problem["what"]


def test_a_scheduler_that_stopped_heartbeating():
    hosts = healthy()
    hosts["lab-airflow2"]["airflow"] = airflow_probe("lab-airflow2", alive=False)
    result = judge(hosts)
    problems = [p for p in result["problems"] if p["host"] == "lab-airflow2"]
    assert {p["runbook"] for p in problems} == {"docs/runbooks/scheduler-failure.md"}
    assert any(p["what"].startswith("scheduler has not heartbeated") for p in problems)
    assert any(p["what"].startswith("triggerer has not heartbeated") for p in problems)


def test_active_standby_expects_the_guarded_scheduler_on_the_leader_only():
    hosts = healthy()
    for host in ("lab-airflow1", "lab-airflow2"):
        data = hosts[host]
        data["expected_units"] = [
            u
            for u in data["expected_units"]
            if u not in ("airflow-scheduler.service", "airflow-ha-watchdog.service")
        ] + ["airflow-ha-failover.service"]
        data["guarded_units"] = ["airflow-scheduler.service"]
        state = "active" if host == "lab-airflow1" else "inactive"
        data["probe"] = (
            data["probe"]
            .replace("unit airflow-ha-watchdog.service active", "unit airflow-ha-failover.service active")
            .replace("unit airflow-scheduler.service active", f"unit airflow-scheduler.service {state}")
        )
        data["failover"] = json.dumps(
            {"lease": {"holder": "lab-airflow1"}, "live_holder": "lab-airflow1", "members": []}
        )
    hosts["lab-airflow2"]["airflow"] = airflow_probe("lab-airflow2").replace(
        '"SchedulerJob": {"state": "running", "alive": true',
        '"SchedulerJob": {"state": "success", "alive": false',
    )
    result = judge(hosts, failover_mode="active_standby")
    assert result["problems"] == [], "\n".join(result["lines"])
    for host in ("lab-airflow1", "lab-airflow2"):
        hosts[host]["failover"] = json.dumps({"lease": None, "live_holder": None, "members": []})
    result = judge(hosts, failover_mode="active_standby")
    whats = {(p["host"], p["what"], p["runbook"]) for p in result["problems"]}
    assert whats == {
        (
            "lab-airflow1,lab-airflow2",
            "the failover controller has no live leader (airflow-ha-failover status)",
            "docs/runbooks/failover-controller.md",
        ),
        (
            "lab-airflow1",
            "airflow-scheduler runs on a standby (the leader is none)",
            "docs/runbooks/failover-controller.md",
        ),
    }


def test_a_certificate_close_to_expiry():
    hosts = healthy()
    hosts["lab-worker2"]["certificates"] = {"/etc/airflow/ca.crt": "20261210000000Z"}
    problem = only_problem(judge(hosts))
    assert problem["host"] == "lab-worker2"
    assert "expires in 12 days" in problem["what"]
    assert problem["runbook"] == "docs/runbooks/deploy-or-update.md"
    assert judge(hosts, certificate_min_days=7)["problems"] == []


def test_a_stopped_unit_points_at_its_tier_runbook():
    hosts = healthy()
    hosts["lab-infra2"]["probe"] = hosts["lab-infra2"]["probe"].replace(
        "keepalived.service active", "keepalived.service failed"
    )
    problem = only_problem(judge(hosts))
    assert (problem["host"], problem["what"]) == ("lab-infra2", "keepalived is failed")
    assert problem["runbook"] == "docs/runbooks/loadbalancer-failover.md"


def test_every_runbook_named_exists():
    pages = set(status.UNIT_RUNBOOKS.values()) | {
        "frozen-or-partitioned-host.md",
        "deploy-or-update.md",
        "failover-controller.md",
    }
    for page in pages:
        assert (REPO / "docs" / "runbooks" / page).exists(), page


# --- the playbook itself -----------------------------------------------------------------------------


def test_the_playbook_reports_unreachable_hosts_and_a_stopped_unit_and_fails(tmp_path: Path):
    """No SSH anywhere: three hosts at a closed port (unreachable), and this machine as a worker and
    scheduler (a local connection), whose units do not run here. The VIP and the failover mode come
    from the groups' own vars, which the summary play on localhost does not read itself."""
    inventory = tmp_path / "hosts.yml"
    unreachable = {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_user": "nobody"}
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "gone-db": unreachable,
                        "gone-broker": unreachable,
                        "gone-lb": {**unreachable, "loadbalancer_vip": "10.9.9.9/24"},
                        "here-worker": {
                            "ansible_connection": "local",
                            "ansible_become": False,
                        },
                    },
                    "children": {
                        "airflow_metadata_db": {"hosts": {"gone-db": None}},
                        "airflow_broker": {"hosts": {"gone-broker": None}},
                        "airflow_worker": {"hosts": {"here-worker": None}},
                        "airflow_loadbalancer": {"hosts": {"gone-lb": None}},
                        "airflow_scheduler": {
                            "hosts": {"here-worker": None},
                            "vars": {"scheduler_failover_mode": "active_standby"},
                        },
                    },
                }
            }
        )
    )
    result = run_playbook(inventory, "playbooks/status.yml", timeout=120)
    out = result.stdout
    assert result.returncode == 2, out + result.stderr
    assert "UNREACHABLE" in out
    assert "gone-db: unreachable over SSH" in out, out
    assert "docs/runbooks/frozen-or-partitioned-host.md" in out
    assert "here-worker: airflow-worker is" in out, out
    assert "docs/runbooks/worker-failure.md" in out
    assert "Load balancers (VIP 10.9.9.9)" in out
    assert "gone-lb: 0 load balancers hold the VIP 10.9.9.9" in out
    assert "failover leader NONE" in out
    assert "here-worker: the failover controller has no live leader" in out
    assert set(re.findall(r"\bchanged=(\d+)", out)) == {"0"}, out
