"""PostgreSQL over TLS, rendered from inventories without containers: the server's settings and
pg_hba (Patroni's and one host's), Patroni's replication verifying the primary, every client URL
with sslmode=verify-full and the host's CA, and the certificates naming the address clients dial.
tests/test_preflight.py has preflight refusing a weaker sslmode. What the running cluster does is
the metadata_db and metadata_db_ha scenarios' verify (a plain connection refused, a wrong name
refused, pg_stat_ssl) and tests/test_e2e_lab.py's."""

from __future__ import annotations

import configparser
import ipaddress
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509

from helpers import HA_INVENTORY, render_role_files, run_playbook

SECRETS = {
    "db_password": "dbpassword0123456789ab",
    "db_celery_password": "celerypassword01234567",
    "db_failover_password": "failoverpassword012345",
    "db_replication_password": "replpassword0123456789",
    "db_superuser_password": "superpassword012345678",
    "db_patroni_api_password": "apipassword01234567890",
    "broker_password": "brokerpassword01234567",
    "broker_sentinel_password": "sentinelpassword012345",
    "broker_admin_password": "brokeradminpassword0123",
    "broker_celery_password": "brokercelerypassword012",
    "broker_replication_password": "brokerreplpassword01234",
    "broker_sentinel_peer_password": "brokerpeerpassword01234",
    "fernet_key": "x" * 43 + "=",
    "jwt_secret": "j" * 48,
    "api_secret_key": "k" * 48,
    "admin_password": "adminpassword012345678",
    "pki_ca_passphrase": "passphrase012345678901",
    "vrrp_password": "vrrp1234",
}

# The roles' own variables, written out per host by tasks tagged `render` after the roles loaded
# (--tags render: none of the roles' tasks run). The CA and certificates are stand-ins: files only.
RENDER_PLAY = """
- name: The database hosts
  hosts: airflow_metadata_db
  connection: local
  gather_facts: false
  roles: [metadata_db]
  tasks:
    - name: Write what the role renders
      ansible.builtin.copy:
        content: "{{ {'patroni': _metadata_db_patroni_config, 'hba': _metadata_db_hba_rules,
                      'one_host_conf': lookup('ansible.builtin.template',
                                              repo ~ '/roles/metadata_db/templates/airflow-ha.conf.j2')}
                     | to_json }}"
        dest: "{{ out }}/{{ inventory_hostname }}.db.json"
        mode: "0644"
      tags: [render]

- name: The Airflow hosts
  hosts: airflow_webserver:airflow_scheduler:airflow_worker
  connection: local
  gather_facts: false
  roles: [airflow_common]
  tasks:
    - name: Write airflow.cfg
      ansible.builtin.copy:
        content: >-
          {{ lookup('ansible.builtin.template', repo ~ '/roles/airflow_common/templates/airflow.cfg.j2') }}
        dest: "{{ out }}/{{ inventory_hostname }}.airflow.cfg"
        mode: "0644"
      tags: [render]

- name: The failover controllers
  hosts: airflow_scheduler
  connection: local
  gather_facts: false
  roles: [scheduler_failover]
  vars:
    scheduler_failover_mode: active_standby
  tasks:
    - name: Write the lease connection's URI
      ansible.builtin.copy:
        content: "{{ _scheduler_failover_dsn }}"
        dest: "{{ out }}/{{ inventory_hostname }}.dsn"
        mode: "0644"
      tags: [render]
"""

ONE_HOST_INVENTORY = """
all:
  children:
    airflow_metadata_db: {hosts: {db9: {airflow_node_address: 10.9.0.1}}}
    airflow_broker: {hosts: {db9: {}}}
    airflow_webserver: {hosts: {api9: {airflow_node_address: 10.9.0.3}}}
    airflow_scheduler: {hosts: {api9: {}}}
    airflow_worker: {hosts: {api9: {}}}
"""


def render(tmp: Path, inventory_text: str, *extra: str, play: str = RENDER_PLAY) -> dict[str, str]:
    """Every host's rendered files (name -> text) for the inventory."""
    return render_role_files(tmp, inventory_text, play, SECRETS, *extra)


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> dict[str, str]:
    return render(tmp_path_factory.mktemp("ha"), HA_INVENTORY)


@pytest.fixture(scope="module")
def one_host(tmp_path_factory) -> dict[str, str]:
    return render(tmp_path_factory.mktemp("one"), ONE_HOST_INVENTORY)


def hba_lines(rules: list[dict]) -> list[tuple[str, ...]]:
    return [
        tuple(r.get(k, "") for k in ("contype", "databases", "users", "address", "method"))
        for r in rules
        if "contype" in r
    ]


def patroni_hba(line: str) -> tuple[str, ...]:
    fields = line.split()
    if fields[0] == "local":
        return (fields[0], fields[1], fields[2], "", fields[3])
    return tuple(fields[:5])


def check_hba(lines: list[tuple[str, ...]]) -> None:
    """Unix sockets by peer; plain TCP refused from everywhere before any other TCP rule; every
    other TCP rule hostssl."""
    kinds = [line[0] for line in lines]
    assert kinds[:2] == ["local", "local"], lines
    assert lines[2:4] == [
        ("hostnossl", "all", "all", "0.0.0.0/0", "reject"),
        ("hostnossl", "all", "all", "::/0", "reject"),
    ], lines
    assert set(kinds[4:]) == {"hostssl"}, lines
    assert all(line[4] == "scram-sha-256" for line in lines[4:]), lines


def test_patroni_serves_tls_and_its_replication_verifies_the_primary(ha):
    config = json.loads(ha["i1.db.json"])["patroni"]
    params = config["postgresql"]["parameters"]
    assert params == {
        "unix_socket_directories": "/var/run/postgresql",
        "ssl": "on",
        "ssl_cert_file": "/etc/patroni/tls/patroni.crt",
        "ssl_key_file": "/etc/patroni/tls/patroni.key",
        "ssl_ca_file": "/etc/patroni/tls/ca.crt",
        "ssl_min_protocol_version": "TLSv1.2",
    }
    auth = config["postgresql"]["authentication"]
    for who in ("replication", "superuser"):
        assert (auth[who]["sslmode"], auth[who]["sslrootcert"]) == ("verify-full", "/etc/patroni/tls/ca.crt")
    assert auth["superuser"]["username"] == "postgres"
    assert auth["replication"]["password"] == SECRETS["db_replication_password"]
    # Replicas and pg_rewind dial the member's own address, which its certificate names.
    assert config["postgresql"]["connect_address"] == "10.9.0.11:5432"
    lines = [patroni_hba(line) for line in config["postgresql"]["pg_hba"]]
    check_hba(lines)
    assert ("hostssl", "replication", "replicator", "10.9.0.12/32", "scram-sha-256") in lines
    assert ("hostssl", "airflow", "airflow", "10.9.0.31/32", "scram-sha-256") in lines


def test_one_host_serves_tls_with_its_own_copy_of_the_files(one_host):
    db = json.loads(one_host["db9.db.json"])
    check_hba(hba_lines(db["hba"]))
    conf = db["one_host_conf"]
    tls_dir = "/etc/postgresql/15/main/tls"
    for line in (
        "ssl = 'on'",
        f"ssl_cert_file = '{tls_dir}/server.crt'",
        f"ssl_key_file = '{tls_dir}/server.key'",
        f"ssl_ca_file = '{tls_dir}/ca.crt'",
        "ssl_min_protocol_version = 'TLSv1.2'",
    ):
        assert line in conf.splitlines(), conf


def airflow_urls(cfg_text: str) -> dict[str, str]:
    # Read as Airflow reads it (interpolation: %% is %).
    parser = configparser.ConfigParser()
    parser.read_string(cfg_text)
    return {
        "sql_alchemy_conn": parser.get("database", "sql_alchemy_conn"),
        "result_backend": parser.get("celery", "result_backend"),
    }


@pytest.mark.parametrize(
    ("which", "host", "address"), [("ha", "a1", "10.9.0.100:5433"), ("one", "api9", "10.9.0.1:5432")]
)
def test_airflow_and_the_failover_controller_verify_the_server(ha, one_host, which, host, address):
    files = ha if which == "ha" else one_host
    for name, url in airflow_urls(files[f"{host}.airflow.cfg"]).items():
        parts = urlsplit(url)
        assert parts.netloc.endswith(f"@{address}"), (name, parts.netloc.split("@")[-1])
        query = parse_qs(parts.query)
        assert query["sslmode"] == ["verify-full"], name
        assert query["sslrootcert"] == ["/etc/airflow/ca.crt"], name
        assert query["keepalives_idle"] == ["5"], name
    dsn = urlsplit(files[f"{host}.dsn"])
    assert dsn.netloc.endswith(f"@{address}")
    assert parse_qs(dsn.query) == {
        "options": ["-csearch_path=airflow_ha"],
        "sslmode": ["verify-full"],
        "sslrootcert": ["/etc/airflow/ca.crt"],
    }


def test_without_tls_nothing_changes_for_the_clients_and_pg_hba(tmp_path):
    files = render(tmp_path, HA_INVENTORY, "-e", "airflow_tls_enabled=false")
    for url in airflow_urls(files["a1.airflow.cfg"]).values():
        assert "sslmode" not in url
        assert "sslrootcert" not in url
    assert "ssl" not in files["a1.dsn"]
    config = json.loads(files["i1.db.json"])["patroni"]
    assert "ssl" not in config["postgresql"]["parameters"]
    assert "sslmode" not in config["postgresql"]["authentication"]["replication"]
    kinds = {patroni_hba(line)[0] for line in config["postgresql"]["pg_hba"]}
    assert kinds == {"local", "host"}


# --- The certificates name the address clients dial ----------------------------------------------
PKI_INVENTORY = """
all:
  vars: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
  children:
    airflow_metadata_db:
      hosts: {db1: {ansible_host: 192.0.2.11, airflow_node_address: 192.0.2.11},
              db2: {ansible_host: 192.0.2.12, airflow_node_address: 192.0.2.12}}
    airflow_loadbalancer: {hosts: {lb1: {ansible_host: 192.0.2.21, airflow_node_address: 192.0.2.21}}}
    airflow_worker: {hosts: {wk1: {ansible_host: 192.0.2.31, airflow_node_address: 192.0.2.31}}}
"""


def ip_names(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(a) for a in names.get_values_for_type(x509.IPAddress)}


def issue(inventory_dir: Path, *extra: str) -> int:
    proc = run_playbook(inventory_dir / "hosts.yml", "playbooks/certificates.yml", *extra, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return sum(int(n) for n in re.findall(r"changed=(\d+)", proc.stdout))


def test_database_certificates_name_the_front_address_and_follow_it(tmp_path):
    (tmp_path / "hosts.yml").write_text(PKI_INVENTORY)
    hosts = tmp_path / ".secrets" / "pki" / "hosts"
    issue(tmp_path)
    # No VIP: Airflow dials the first load balancer, so the database hosts' certificates name it.
    assert ip_names(hosts / "db1.crt") == {"127.0.0.1", "192.0.2.11", "192.0.2.21"}
    assert ip_names(hosts / "db2.crt") == {"127.0.0.1", "192.0.2.12", "192.0.2.21"}
    assert ip_names(hosts / "wk1.crt") == {"127.0.0.1", "192.0.2.31"}
    before = {p.name: p.read_bytes() for p in hosts.glob("*.crt")}
    # A VIP added later: the database hosts' certificates are issued again, naming it, and the load
    # balancer's, which serves the API at the VIP over HTTPS (tests/test_api_https.py); no other.
    assert issue(tmp_path, "-e", "loadbalancer_vip=192.0.2.100") > 0
    assert ip_names(hosts / "db1.crt") == {"127.0.0.1", "192.0.2.11", "192.0.2.100"}
    after = {p.name: p.read_bytes() for p in hosts.glob("*.crt")}
    assert {n for n in after if after[n] != before[n]} == {"db1.crt", "db2.crt", "lb1.crt"}
    assert issue(tmp_path, "-e", "loadbalancer_vip=192.0.2.100") == 0
    assert ip_names(hosts / "lb1.crt") == {"127.0.0.1", "192.0.2.21", "192.0.2.100"}
    assert ipaddress.ip_address("192.0.2.100") not in {
        ipaddress.ip_address(a) for a in ip_names(hosts / "wk1.crt")
    }
