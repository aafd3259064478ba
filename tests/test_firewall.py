"""The firewall role's rules, rendered for the lab inventory and for a small one without load
balancers, read back rule by rule; `nft -c` checks them (in a network namespace of their own);
preflight refuses bad networks and a list that would lock the controller out. No containers."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, ansible_env, tool

ROLE = REPO / "roles" / "firewall"
_spec = importlib.util.spec_from_file_location(
    "firewall_networks", ROLE / "filter_plugins" / "firewall_networks.py"
)
assert _spec is not None
assert _spec.loader is not None
firewall_networks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(firewall_networks)

# The render play: the role with only its render task (tag firewall_render), run on the controller
# for every host of the inventory, writing each host's rules to OUT/<host>.nft.
RENDER_PLAY = """
- name: Render the firewall rules of every host
  hosts: all
  connection: local
  gather_facts: false
  roles:
    - firewall
  tasks:
    - name: Write them
      ansible.builtin.copy:
        content: "{{ __firewall_ruleset }}"
        dest: "{{ out }}/{{ inventory_hostname }}.nft"
        mode: "0644"
      tags: [firewall_render]
"""

PREFLIGHT_PLAY = """
- name: The firewall role's preflight
  hosts: all
  connection: local
  gather_facts: false
  roles:
    - firewall
"""


def defaults(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())


CLUSTER = yaml.safe_load((REPO / "group_vars" / "all" / "cluster.yml").read_text())
PORT = {
    "etcd_client": defaults("etcd")["etcd_client_port"],
    "etcd_peer": defaults("etcd")["etcd_peer_port"],
    "etcd_metrics": defaults("etcd")["etcd_metrics_port"],
    "node_exporter": defaults("exporters")["exporters_node_port"],
    "prometheus": defaults("monitoring")["monitoring_prometheus_port"],
    "alertmanager": defaults("monitoring")["monitoring_alertmanager_port"],
    "postgres": defaults("metadata_db")["metadata_db_port"],
    "patroni": defaults("metadata_db")["metadata_db_patroni_api_port"],
    "redis": defaults("broker")["broker_port"],
    # group_vars/all wires these from the cluster-wide settings.
    "sentinel": CLUSTER["airflow_broker_sentinel_port"],
    "lb_api": CLUSTER["airflow_api_port"],
    "lb_postgres": CLUSTER["airflow_db_proxy_port"],
    "lb_stats": defaults("loadbalancer")["loadbalancer_stats_port"],
    "api_server": defaults("webserver")["webserver_port"],
    "scheduler_health": defaults("scheduler")["scheduler_health_check_port"],
    "worker_log": defaults("airflow_common")["airflow_common_worker_log_server_port"],
    "triggerer_log": 8794,  # Airflow's [logging] trigger_log_server_port default
}

RULE = re.compile(
    r"^\s*(?:ip6? daddr (?P<daddr>\S+) )?(?:tcp dport (?P<port>\d+)|meta l4proto (?P<proto>\d+))"
    r" ip6? saddr (?P<saddr>\{[^}]*\}|\S+) accept",
    re.M,
)


def rules(text: str) -> dict[tuple[str, str], set[str]]:
    """{(what, destination): sources}: what is a TCP port or "proto N", destination "" for any of
    the host's addresses. Rules of both IP versions for the same thing are merged."""
    found: dict[tuple[str, str], set[str]] = {}
    for m in RULE.finditer(text):
        what = m["port"] or f"proto {m['proto']}"
        sources = {s.strip() for s in m["saddr"].strip("{} ").split(",")}
        found.setdefault((what, m["daddr"] or ""), set()).update(sources)
    return found


def render(directory: Path, inventory: Path | str, env: dict[str, str] | None = None) -> dict[str, str]:
    """Every host's rules file, rendered by the role from the inventory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "render.yml").write_text(RENDER_PLAY)
    # The cluster-wide group_vars, as playbooks/ gets them (playbooks/group_vars links there too).
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
            "firewall_render",
            "-e",
            f"out={out}",
            "-e",
            "ansible_become=false",
        ],
        cwd=REPO,
        env=ansible_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return {path.stem: path.read_text() for path in sorted(out.glob("*.nft"))}


@pytest.fixture(scope="module")
def lab_rules(tmp_path_factory) -> dict[str, str]:
    return render(tmp_path_factory.mktemp("lab"), REPO / "inventories" / "lab")


SMALL_INVENTORY = """
all:
  vars:
    broker_port: 6380
    webserver_port: 8081
    firewall_admin_networks: ["192.0.2.0/24"]
    firewall_api_networks: ["198.51.100.0/24"]
  children:
    airflow_metadata_db: {hosts: {db9: {airflow_node_address: 10.9.0.1}}}
    airflow_broker: {hosts: {mq9: {airflow_node_address: 10.9.0.2}}}
    airflow_webserver: {hosts: {api9: {airflow_node_address: 10.9.0.3}}}
    airflow_scheduler: {hosts: {api9: {}}}
    airflow_worker: {hosts: {wk9: {airflow_node_address: "fd00:9::4"}}}
"""


@pytest.fixture(scope="module")
def small_rules(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("small")
    (directory / "hosts.yml").write_text(SMALL_INVENTORY)
    return render(directory / "play", directory / "hosts.yml")


# --- the filters ------------------------------------------------------------------------------------


def test_networks_are_split_by_version_sorted_and_without_inner_entries():
    values = ["10.1.2.3", "172.30.10.0/24", "10.0.0.0/8", "172.30.10.11", "fd00::1", "10.0.0.0/8", "fc00::/7"]
    assert firewall_networks.firewall_networks(values, 4) == ["10.0.0.0/8", "172.30.10.0/24"]
    assert firewall_networks.firewall_networks(values, 6) == ["fc00::/7"]
    assert firewall_networks.firewall_networks(["192.0.2.7/32", "2001:db8::1/128"], 6) == ["2001:db8::1"]
    assert firewall_networks.firewall_networks([], 4) == []


def test_bad_networks_are_named_with_the_reason():
    bad = firewall_networks.firewall_invalid_networks(["10.0.0.1/8", "10.0.0.0/33", "db1.example.com", "", 7])
    assert bad == [
        "'10.0.0.1/8': has host bits set (the network is 10.0.0.0/8)",
        "'10.0.0.0/33': not an IPv4/IPv6 address or CIDR network",
        "'db1.example.com': not an IPv4/IPv6 address or CIDR network",
        "'': not an address or network",
        "7: not an address or network",
    ]
    assert firewall_networks.firewall_invalid_networks("10.0.0.0/8") == [
        "'10.0.0.0/8': not a list (write ['10.0.0.0/8'] for one entry)"
    ]
    assert firewall_networks.firewall_invalid_networks(["10.0.0.0/8", "fd00::/8", "192.0.2.1"]) == []


def test_covers_tells_whether_an_address_is_in_the_networks():
    assert firewall_networks.firewall_covers(["10.0.0.0/8", "fd00::/8"], "10.20.30.40")
    assert firewall_networks.firewall_covers(["10.0.0.0/8", "fd00::/8"], "fd00::5")
    assert not firewall_networks.firewall_covers(["10.0.0.0/8", "nonsense"], "192.0.2.1")
    assert not firewall_networks.firewall_covers(["10.0.0.0/8"], "not-an-address")


# --- the lab's rules ----------------------------------------------------------------------------------

ADMIN = "172.30.10.1"  # inventories/lab/group_vars/all/firewall.yml: the Docker host
SUBNET = "172.30.10.0/24"
VIP = "172.30.10.10"
INFRA = {"172.30.10.11", "172.30.10.12", "172.30.10.13"}
LBS = {"172.30.10.11", "172.30.10.12"}
AIRFLOW = {"172.30.10.21", "172.30.10.22"}  # api-servers and schedulers
WORKERS = {"172.30.10.31", "172.30.10.32"}
MONITORING = {"172.30.10.13"}  # airflow_monitoring: Prometheus scrapes every exporter from here


def p(name: str) -> str:
    return str(PORT[name])


def expected_lab_rules(host: str) -> dict[tuple[str, str], set[str]]:
    # SSH from the lab network (firewall_ssh_networks), which holds the admin address too.
    want: dict[tuple[str, str], set[str]] = {("22", ""): {SUBNET}}
    # The node exporter on every host, for the monitoring host only.
    want[(p("node_exporter"), "")] = {ADMIN} | MONITORING
    if host.startswith("lab-infra"):  # etcd, PostgreSQL with Patroni, Redis with Sentinel
        want |= {
            (p("etcd_client"), ""): {ADMIN} | INFRA,
            (p("etcd_peer"), ""): {ADMIN} | INFRA,
            (p("etcd_metrics"), ""): {ADMIN} | MONITORING,
            (p("postgres"), ""): {ADMIN, VIP} | INFRA,
            (p("patroni"), ""): {ADMIN, VIP} | INFRA | MONITORING,
            (p("redis"), ""): {ADMIN} | INFRA | AIRFLOW | WORKERS,
            (p("sentinel"), ""): {ADMIN} | INFRA | AIRFLOW | WORKERS,
        }
    if host in ("lab-infra1", "lab-infra2"):  # HAProxy and keepalived
        want |= {
            (p("lb_api"), ""): {ADMIN} | AIRFLOW | WORKERS,
            (p("lb_api"), VIP): {SUBNET},
            (p("lb_postgres"), ""): {ADMIN} | AIRFLOW | WORKERS,
            (p("lb_stats"), ""): {ADMIN} | MONITORING,
            ("proto 112", ""): LBS,
        }
    if host == "lab-infra3":  # Prometheus and Alertmanager
        want |= {
            (p("prometheus"), ""): {ADMIN} | MONITORING,
            (p("alertmanager"), ""): {ADMIN} | MONITORING,
        }
    if host.startswith("lab-airflow"):  # api-server, scheduler, triggerer
        want |= {
            (p("api_server"), ""): {ADMIN, VIP} | LBS,
            (p("scheduler_health"), ""): {ADMIN},
            (p("triggerer_log"), ""): {ADMIN} | AIRFLOW,
        }
    if host.startswith("lab-worker"):
        want |= {(p("worker_log"), ""): {ADMIN} | AIRFLOW}
    return want


def test_the_lab_renders_rules_for_every_host(lab_rules):
    assert set(lab_rules) == {
        "lab-infra1",
        "lab-infra2",
        "lab-infra3",
        "lab-airflow1",
        "lab-airflow2",
        "lab-worker1",
        "lab-worker2",
    }


@pytest.mark.parametrize(
    "host",
    ["lab-infra1", "lab-infra2", "lab-infra3", "lab-airflow1", "lab-airflow2", "lab-worker1", "lab-worker2"],
)
def test_each_lab_port_is_open_to_the_groups_that_use_it_only(lab_rules, host):
    assert rules(lab_rules[host]) == expected_lab_rules(host), lab_rules[host]


def test_the_lab_rules_drop_by_default_and_touch_no_other_table(lab_rules):
    for host, text in lab_rules.items():
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "policy drop;" in body, host
        assert "flush" not in body, f"{host}: the rules must never flush anything"
        # Every table statement names the role's own table.
        tables = re.findall(r"^\s*(?:delete )?table (\S+ \S+)", body, re.M)
        assert tables, host
        assert set(tables) == {"inet airflow_ha"}, f"{host}: {tables}"
        assert 'iif "lo" accept' in body, host
        assert "ct state established,related accept" in body, host
        # Nothing filters what the host sends or forwards (Docker's containers on a real host).
        assert "hook output" not in body, host
        assert "hook forward" not in body, host


# --- a small inventory: no load balancer, one database, one broker, an IPv6 worker ---------------------
SMALL_SSH = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "192.0.2.0/24", "fc00::/7"}


def test_without_load_balancers_the_airflow_hosts_reach_postgres_and_the_api_server_directly(small_rules):
    admin = "192.0.2.0/24"
    db, api, worker = "10.9.0.1", "10.9.0.3", "fd00:9::4"
    assert rules(small_rules["db9"]) == {
        ("22", ""): SMALL_SSH,
        # One database: Airflow connects to it, not through HAProxy; no Patroni.
        (p("postgres"), ""): {admin, db, api, worker},
    }
    assert rules(small_rules["mq9"]) == {
        ("22", ""): SMALL_SSH,
        # broker_port from the inventory; one broker host: no Sentinel.
        ("6380", ""): {admin, "10.9.0.2", api, worker},
    }
    assert rules(small_rules["api9"]) == {
        ("22", ""): SMALL_SSH,
        # webserver_port from the inventory; no load balancer: users and workers come straight here.
        ("8081", ""): {admin, "198.51.100.0/24", api, worker},
        (p("scheduler_health"), ""): {admin},
        (p("triggerer_log"), ""): {admin, api},
    }
    assert rules(small_rules["wk9"]) == {
        ("22", ""): SMALL_SSH,
        (p("worker_log"), ""): {admin, api},
    }
    # The IPv6 worker is let in by an ip6 rule.
    assert re.search(r"tcp dport 6380 ip6 saddr fd00:9::4 accept", small_rules["mq9"]), small_rules["mq9"]


# --- nft itself checks the rendered files -------------------------------------------------------------


def _nft() -> str:
    found = shutil.which("nft") or next((c for c in ("/usr/sbin/nft", "/sbin/nft") if Path(c).exists()), None)
    if not found:
        pytest.fail("nft is not installed on this machine; Debian: apt-get install nftables")
    return found


def _in_own_netns(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a new, empty network namespace: nft talks to that namespace's
    netfilter only, never to this machine's ruleset. Root needs only --net; anyone else gets root
    inside a user namespace of their own."""
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    return subprocess.run([*unshare, "sh", "-ec", script], capture_output=True, text=True, timeout=60)


def test_nft_accepts_every_ruleset_and_replacing_it_keeps_other_tables(lab_rules, small_rules, tmp_path):
    """`nft -c` (what the role runs before a file replaces the old one) sends the transaction to the
    kernel, which checks it and throws it away: it needs CAP_NET_ADMIN, so it runs in a namespace of
    its own. Then each file is applied twice over another table, which must survive."""
    nft = _nft()
    probe = _in_own_netns(f"{nft} list ruleset")
    if probe.returncode != 0:
        pytest.fail(
            "cannot check the rules with `nft -c`: it needs CAP_NET_ADMIN in a network namespace, and "
            f"`unshare` could not make one here ({probe.stderr.strip() or probe.returncode}); run the "
            "tests as root or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
        )
    for name, text in {**lab_rules, **small_rules}.items():
        path = tmp_path / f"{name}.nft"
        path.write_text(text)
        done = _in_own_netns(
            f"""
            {nft} -c -f {path}
            test -z "$({nft} list ruleset)"   # -c left nothing behind
            {nft} add table ip someone_else
            {nft} -f {path}
            {nft} -f {path}                   # again: the file replaces its own table
            {nft} list tables
            """
        )
        assert done.returncode == 0, f"{name}: {done.stderr}\n{text}"
        assert done.stdout.split("\n")[:2] == ["table ip someone_else", "table inet airflow_ha"], done.stdout


def test_the_unit_loads_and_removes_only_the_role_table():
    unit = (ROLE / "templates" / "airflow-ha-firewall.service.j2").read_text()
    execs = dict(re.findall(r"^(Exec\w+)=(.*)$", unit, re.M))
    assert execs == {
        "ExecStart": "{{ _firewall_nft }} -f {{ _firewall_rules_file }}",
        "ExecReload": "{{ _firewall_nft }} -f {{ _firewall_rules_file }}",
        "ExecStop": "-{{ _firewall_nft }} delete table inet {{ _firewall_table }}",
    }


# --- preflight --------------------------------------------------------------------------------------


def preflight(tmp_path: Path, host_vars: dict, ssh_connection: str = "") -> subprocess.CompletedProcess[str]:
    """The role's preflight on this machine (connection local) for a one-host inventory."""
    inventory = {
        "all": {
            "hosts": {"fw9": {"airflow_node_address": "10.9.0.9", "ansible_become": False, **host_vars}},
            "children": {
                g: {"hosts": {"fw9": None}}
                for g in ("airflow_metadata_db", "airflow_broker", "airflow_webserver", "airflow_scheduler")
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "preflight.yml").write_text(PREFLIGHT_PLAY)
    (tmp_path / "group_vars").symlink_to(REPO / "group_vars")
    env = ansible_env()
    env.pop("SSH_CONNECTION", None)  # the connection under test, not the one pytest may run in
    if ssh_connection:
        env["SSH_CONNECTION"] = ssh_connection
    return subprocess.run(
        [
            tool("ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.yml"),
            str(tmp_path / "preflight.yml"),
            "--tags",
            "firewall_preflight",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_preflight_refuses_bad_networks_with_the_reason(tmp_path):
    proc = preflight(tmp_path, {"firewall_ssh_networks": ["10.0.0.1/8"], "firewall_admin_networks": ["ten"]})
    assert proc.returncode != 0
    assert "firewall_ssh_networks must be a list of IPv4/IPv6 addresses or CIDR networks" in proc.stdout
    assert "has host bits set (the network is 10.0.0.0/8)" in proc.stdout, proc.stdout
    assert "firewall_admin_networks must be a list" in proc.stdout, proc.stdout


def test_preflight_refuses_to_lock_the_controller_out(tmp_path):
    proc = preflight(tmp_path, {}, ssh_connection="203.0.113.9 50022 10.9.0.9 22")
    assert proc.returncode != 0
    assert "Ansible connects to fw9 from 203.0.113.9, which neither" in proc.stdout, proc.stdout


def test_preflight_passes_when_the_controller_is_an_admin_network(tmp_path):
    admin = {"firewall_admin_networks": ["203.0.113.0/24"]}
    proc = preflight(tmp_path, admin, ssh_connection="203.0.113.9 50022 10.9.0.9 22")
    assert proc.returncode == 0, proc.stdout[-3000:]
