"""Redis and Sentinel over TLS, rendered from inventories without containers: the broker role's
redis.conf (no plaintext listener, TLS replication), sentinel.conf (the same for Sentinel, and no
drift against what the role wants, also after Sentinel rewrote the file), the fencing script's
redis-cli, and Airflow's broker settings (rediss:// or Sentinel connections with TLS, both
verifying the server against the cluster CA). tests/test_chaos.py covers the lab tooling's TLS
client against a local TLS server. What the running servers do is the broker and broker_ha
scenarios' verify and tests/test_e2e_lab.py's."""

from __future__ import annotations

import configparser
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from helpers import HA_INVENTORY, REPO, render_role_files

_spec = importlib.util.spec_from_file_location(
    "broker_sentinel", REPO / "roles" / "broker" / "filter_plugins" / "broker_sentinel.py"
)
assert _spec is not None
assert _spec.loader is not None
broker_sentinel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(broker_sentinel)

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

# The roles' own templates and variables, written out per host by tasks tagged `render` after the
# roles loaded (--tags render: none of the roles' tasks run).
RENDER_PLAY = """
- name: The broker hosts
  hosts: airflow_broker
  connection: local
  gather_facts: false
  roles: [broker]
  vars:
    # A new cluster: no sentinel.conf yet, the first node is master.
    __broker_master: "{{ broker_nodes | first }}"
    _broker_sentinel_live: >-
      {{ '' | broker_sentinel_state(broker_sentinel_master_name, _broker_sentinel_marker) }}
    templates: "{{ repo }}/roles/broker/templates"
  tasks:
    - name: Write what the role renders
      ansible.builtin.copy:
        content: "{{ {'redis': lookup('ansible.builtin.template', templates ~ '/redis.conf.j2'),
                      'sentinel': (lookup('ansible.builtin.template', templates ~ '/sentinel.conf.j2')
                                   if broker_sentinel_enabled | bool else ''),
                      'reconfig': lookup('ansible.builtin.template', templates ~ '/sentinel-reconfig.sh.j2'),
                      'wanted': _broker_sentinel_wanted, 'cli_tls': _broker_cli_tls,
                      'marker': _broker_sentinel_marker} | to_json }}"
        dest: "{{ out }}/{{ inventory_hostname }}.broker.json"
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
"""

ONE_BROKER_INVENTORY = """
all:
  children:
    airflow_metadata_db: {hosts: {db9: {airflow_node_address: 10.9.0.1}}}
    airflow_broker: {hosts: {rd9: {airflow_node_address: 10.9.0.2}}}
    airflow_webserver: {hosts: {api9: {airflow_node_address: 10.9.0.3}}}
    airflow_scheduler: {hosts: {api9: {}}}
    airflow_worker: {hosts: {api9: {}}}
"""

CA_DEST = "/etc/airflow/ca.crt"


def render(tmp: Path, inventory_text: str, *extra: str) -> dict[str, Any]:
    """Every host's rendered files: name -> parsed JSON (broker hosts) or text (airflow.cfg)."""
    files = render_role_files(tmp, inventory_text, RENDER_PLAY, SECRETS, *extra)
    return {name: json.loads(text) if name.endswith(".json") else text for name, text in files.items()}


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> dict[str, Any]:
    return render(tmp_path_factory.mktemp("ha"), HA_INVENTORY)


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> dict[str, Any]:
    return render(tmp_path_factory.mktemp("one"), ONE_BROKER_INVENTORY)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, Any]:
    return render(tmp_path_factory.mktemp("plain"), HA_INVENTORY, "-e", "airflow_tls_enabled=false")


def directives(conf: str) -> dict[str, list[str]]:
    """A Redis configuration file's directives: name -> every value line (comments skipped)."""
    found: dict[str, list[str]] = {}
    for line in conf.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found.setdefault(name.lower(), []).append(value.strip())
    return found


def test_redis_listens_on_tls_only_and_replicates_over_tls(ha, one):
    for conf in (ha["i2.broker.json"]["redis"], one["rd9.broker.json"]["redis"]):
        d = directives(conf)
        assert d["port"] == ["0"], "a plaintext listener is left"
        assert d["tls-port"] == ["6379"], "the TLS listener is not on the broker's port number"
        assert d["tls-cert-file"] == ["/etc/redis/tls/redis.crt"]
        assert d["tls-key-file"] == ["/etc/redis/tls/redis.key"]
        assert d["tls-ca-cert-file"] == ["/etc/redis/tls/ca.crt"]
        assert d["tls-replication"] == ["yes"]
        assert d["tls-auth-clients"] == ["no"]
        assert d["tls-protocols"] == ['"TLSv1.2 TLSv1.3"']


def test_sentinel_listens_on_tls_only_and_talks_tls_to_redis_and_peers(ha):
    d = directives(ha["i1.broker.json"]["sentinel"])
    assert d["port"] == ["0"]
    assert d["tls-port"] == ["26379"]
    assert d["tls-replication"] == ["yes"]
    assert d["tls-auth-clients"] == ["no"]
    assert d["tls-ca-cert-file"] == ['"/etc/redis/tls/ca.crt"']


@pytest.mark.parametrize("host", ["i1", "i2", "i3"])
def test_the_rendered_sentinel_conf_does_not_drift(ha, host):
    # What the role writes must read back as what it wants, or every run would stop Sentinel and
    # rewrite its file (changed, and Sentinels stopped cluster-wide).
    files = ha[f"{host}.broker.json"]
    state = broker_sentinel.broker_sentinel_state(files["sentinel"], "airflow-broker", files["marker"])
    assert broker_sentinel.broker_sentinel_drift(state, files["wanted"]) == []


def test_sentinel_s_own_rewrite_of_the_tls_settings_does_not_drift(ha):
    # CONFIG REWRITE quotes strings and writes the enums as it likes; the values stay the same.
    files = ha["i1.broker.json"]
    lines = []
    for line in files["sentinel"].splitlines():
        name = line.split(" ", 1)[0]
        if name in ("tls-cert-file", "tls-key-file", "tls-ca-cert-file"):
            line = f'{name} "{line.split(" ", 1)[1].strip(chr(34))}"'
        elif name in ("tls-replication", "tls-auth-clients"):
            line = line.upper().replace("TLS-", "tls-")
        lines.append(line)
    state = broker_sentinel.broker_sentinel_state("\n".join(lines), "airflow-broker", files["marker"])
    assert broker_sentinel.broker_sentinel_drift(state, files["wanted"]) == []


def test_a_plain_sentinel_conf_drifts_to_tls(ha, plain):
    # A cluster the role deployed before TLS: this run rewrites sentinel.conf (Sentinel stopped).
    before = plain["i1.broker.json"]
    files = ha["i1.broker.json"]
    state = broker_sentinel.broker_sentinel_state(before["sentinel"], "airflow-broker", files["marker"])
    assert broker_sentinel.broker_sentinel_drift(state, files["wanted"]) == [
        "port",
        "tls_auth_clients",
        "tls_ca_cert_file",
        "tls_cert_file",
        "tls_key_file",
        "tls_port",
        "tls_replication",
    ]


def test_without_tls_nothing_tls_is_rendered(plain):
    files = plain["i1.broker.json"]
    for conf in (files["redis"], files["sentinel"]):
        d = directives(conf)
        assert not [name for name in d if name.startswith("tls-")]
    assert directives(files["redis"])["port"] == ["6379"]
    assert directives(files["sentinel"])["port"] == ["26379"]
    assert files["cli_tls"] == []
    state = broker_sentinel.broker_sentinel_state(files["sentinel"], "airflow-broker", files["marker"])
    assert broker_sentinel.broker_sentinel_drift(state, files["wanted"]) == []


def test_the_fencing_script_pings_over_tls(ha, plain):
    assert ha["i1.broker.json"]["cli_tls"] == ["--tls", "--cacert", "/etc/redis/tls/ca.crt"]
    ping = [line for line in ha["i1.broker.json"]["reconfig"].splitlines() if " PING" in line]
    assert ping
    assert "redis-cli --tls --cacert /etc/redis/tls/ca.crt -h 127.0.0.1 -p 6379 PING" in ping[0]
    plain_ping = [line for line in plain["i1.broker.json"]["reconfig"].splitlines() if " PING" in line]
    assert "--tls" not in plain_ping[0]


def celery(cfg_text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(cfg_text)
    return parser


def test_airflow_uses_rediss_and_verifies_a_single_redis(one):
    cfg = celery(one["api9.airflow.cfg"])
    assert cfg["celery"]["broker_url"].startswith("rediss://celery:")
    assert cfg["celery"]["broker_url"].endswith("@10.9.0.2:6379/0")
    # What the Celery provider (default_celery.py) turns into broker_use_ssl: ssl_cert_reqs
    # required, ssl_ca_certs the cluster CA, no client certificate.
    assert cfg["celery"]["ssl_active"] == "True"
    assert cfg["celery"]["ssl_mutual_tls"] == "False"
    assert cfg["celery"]["ssl_cacert"] == CA_DEST
    assert "sentinel_kwargs" not in cfg["celery_broker_transport_options"]


def test_airflow_verifies_the_sentinels_and_the_master(ha):
    for host in ("a1", "w1"):
        cfg = celery(ha[f"{host}.airflow.cfg"])
        urls = cfg["celery"]["broker_url"].split(";")
        assert [u.rpartition("@")[2] for u in urls] == [f"10.9.0.1{i}:26379/0" for i in (1, 2, 3)]
        assert all(u.startswith("sentinel://celery:") for u in urls)
        # The master connections: kombu's Sentinel channel takes broker_use_ssl (from these) and
        # connects to the master with its SSL connection class.
        assert cfg["celery"]["ssl_active"] == "True"
        assert cfg["celery"]["ssl_cacert"] == CA_DEST
        # The Sentinel connections: redis-py builds them from sentinel_kwargs alone.
        kwargs = json.loads(cfg["celery_broker_transport_options"]["sentinel_kwargs"])
        assert kwargs["ssl"] is True
        assert kwargs["ssl_cert_reqs"] == "required"
        assert kwargs["ssl_ca_certs"] == CA_DEST
        assert kwargs["ssl_check_hostname"] is True
        # The short timeouts stay.
        assert kwargs["socket_timeout"] == 0.5
        assert kwargs["socket_connect_timeout"] == 0.5
        assert kwargs["retry"] is None


def test_without_tls_airflow_speaks_plain_redis(plain):
    cfg = celery(plain["w1.airflow.cfg"])
    assert "ssl_active" not in cfg["celery"]
    kwargs = json.loads(cfg["celery_broker_transport_options"]["sentinel_kwargs"])
    assert not [k for k in kwargs if k.startswith("ssl")]


def test_broker_tls_can_be_turned_off_alone(tmp_path):
    # airflow_broker_tls_enabled: both sides follow it, the other tiers keep TLS.
    files = render(tmp_path, ONE_BROKER_INVENTORY, "-e", "airflow_broker_tls_enabled=false")
    cfg = celery(files["api9.airflow.cfg"])
    assert cfg["celery"]["broker_url"].startswith("redis://")
    assert "ssl_active" not in cfg["celery"]
    assert "sslmode=verify-full" in cfg["database"]["sql_alchemy_conn"]
    assert directives(files["rd9.broker.json"]["redis"])["port"] == ["6379"]
