"""Each host gets only the secrets its components need (issue 12), rendered from inventories
without containers: a worker-only host's airflow.cfg holds no metadata database password, fernet
key, JWT secret or API secret key; its log server's own config adds the API secret key and holds
no database or broker password; the
api-server and scheduler hosts get the full file; Celery's result backend logs in as its own user
with verify-full, and pg_hba lets that user into its own database only. What the running cluster
does is in the scheduler_failover_active_standby and metadata_db scenarios' verify."""

from __future__ import annotations

import configparser
import json
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from test_postgres_tls import RENDER_PLAY, SECRETS, render

from helpers import HA_INVENTORY

# The metadata database's secrets and the api-server's signing keys: none may be on a worker.
FORBIDDEN_ON_WORKERS = ("db_password", "fernet_key", "jwt_secret", "api_secret_key")

# The worker-only host's files, as the worker and the log server read them.
RENDER_LOG_SERVER = """
- name: The worker-only hosts' log server config
  hosts: airflow_worker
  connection: local
  gather_facts: false
  roles: [airflow_common]
  tasks:
    - name: Write the log server's airflow.cfg
      ansible.builtin.copy:
        content: >-
          {{ lookup('ansible.builtin.template', repo ~ '/roles/airflow_common/templates/airflow.cfg.j2',
                    template_vars={'_airflow_common_cfg_kind': 'log_server'}) }}
        dest: "{{ out }}/{{ inventory_hostname }}.log-server.cfg"
        mode: "0644"
      when: airflow_common_worker_only | bool
      tags: [render]
"""

# A host that runs a worker and the scheduler gets the union: the full file.
UNION_INVENTORY = HA_INVENTORY.replace(
    "airflow_worker: {hosts: {w1: {airflow_node_address: 10.9.0.31}}}",
    "airflow_worker: {hosts: {w1: {airflow_node_address: 10.9.0.31}, a1: {}}}",
)


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return parser


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> dict[str, str]:
    return render(tmp_path_factory.mktemp("ha"), HA_INVENTORY, play=RENDER_PLAY + RENDER_LOG_SERVER)


def test_a_worker_only_host_holds_none_of_the_api_server_and_scheduler_secrets(ha):
    text = ha["w1.airflow.cfg"]
    for key in FORBIDDEN_ON_WORKERS:
        assert SECRETS[key] not in text, key
    cfg = parse(text)
    assert not cfg.has_option("core", "fernet_key")
    assert not cfg.has_option("api", "secret_key")
    assert not cfg.has_section("api_auth")
    # The metadata database URL names its user and no password (nothing on a worker uses it).
    conn = urlsplit(cfg.get("database", "sql_alchemy_conn"))
    assert conn.username == "airflow"
    assert conn.password is None
    # What the worker does need: the broker, the result backend, the Execution API.
    assert SECRETS["broker_celery_password"] in cfg.get("celery", "broker_url")
    assert cfg.get("core", "execution_api_server_url").endswith("/execution/")


@pytest.mark.parametrize("host", ["w1", "a1"])
def test_the_result_backend_logs_in_as_its_own_user_with_verify_full(ha, host):
    backend = urlsplit(parse(ha[f"{host}.airflow.cfg"]).get("celery", "result_backend"))
    assert backend.scheme == "db+postgresql+psycopg2"
    assert backend.username == "airflow_celery"
    assert unquote(backend.password or "") == SECRETS["db_celery_password"]
    assert backend.path == "/airflow_celery"
    assert backend.hostname == "10.9.0.100"
    query = parse_qs(backend.query)
    assert query["sslmode"] == ["verify-full"]
    assert query["sslrootcert"] == ["/etc/airflow/ca.crt"]
    assert SECRETS["db_password"] not in backend.geturl()


def test_the_api_server_and_scheduler_host_gets_every_secret(ha):
    cfg = parse(ha["a1.airflow.cfg"])
    assert cfg.get("core", "fernet_key") == SECRETS["fernet_key"]
    assert cfg.get("api", "secret_key") == SECRETS["api_secret_key"]
    assert cfg.get("api_auth", "jwt_secret") == SECRETS["jwt_secret"]
    assert urlsplit(cfg.get("database", "sql_alchemy_conn")).password == SECRETS["db_password"]
    assert "a1.log-server.cfg" not in ha


def test_the_log_server_config_adds_the_api_secret_key_and_drops_celery(ha):
    worker = parse(ha["w1.airflow.cfg"])
    log_server = parse(ha["w1.log-server.cfg"])
    assert log_server.get("api", "secret_key") == SECRETS["api_secret_key"]
    for key in ("db_password", "fernet_key", "jwt_secret", "db_celery_password", "broker_celery_password"):
        assert SECRETS[key] not in ha["w1.log-server.cfg"], key
    # Otherwise the worker's own settings (the log folder and port it serves), Celery's left out.
    log_server.remove_option("api", "secret_key")
    for section in ("celery", "celery_broker_transport_options"):
        worker.remove_section(section)
    assert {s: dict(log_server[s]) for s in log_server.sections()} == {
        s: dict(worker[s]) for s in worker.sections()
    }
    assert log_server.get("logging", "worker_log_server_port") == "8793"


def test_a_host_with_a_worker_and_a_scheduler_gets_the_union(tmp_path):
    files = render(tmp_path, UNION_INVENTORY)
    cfg = parse(files["a1.airflow.cfg"])
    assert cfg.get("core", "fernet_key") == SECRETS["fernet_key"]
    assert cfg.get("api_auth", "jwt_secret") == SECRETS["jwt_secret"]
    assert SECRETS["db_password"] not in files["w1.airflow.cfg"]


def test_pg_hba_lets_the_celery_user_into_its_own_database_only(ha):
    config = json.loads(ha["i1.db.json"])["patroni"]
    rules = [line.split() for line in config["postgresql"]["pg_hba"]]
    celery = [r for r in rules if "airflow_celery" in r[1:3]]
    assert celery, rules
    assert all(r[:3] == ["hostssl", "airflow_celery", "airflow_celery"] for r in celery), celery
    assert {r[3] for r in celery} >= {"10.9.0.31/32", "10.9.0.21/32"}
    assert all(r[4] == "scram-sha-256" for r in celery)


def test_the_failover_controllers_log_in_as_their_own_user_to_their_schema(ha):
    dsn = urlsplit(ha["a1.dsn"].strip())
    assert dsn.username == "airflow_ha_failover"
    assert unquote(dsn.password or "") == SECRETS["db_failover_password"]
    assert SECRETS["db_password"] not in ha["a1.dsn"]
    assert dsn.path == "/airflow"
    assert parse_qs(dsn.query)["options"] == ["-csearch_path=airflow_ha"]
    # pg_hba: the controllers' role reaches the Airflow database only.
    rules = [line.split() for line in json.loads(ha["i1.db.json"])["patroni"]["postgresql"]["pg_hba"]]
    failover = [r for r in rules if r[2] == "airflow_ha_failover"]
    assert failover, rules
    assert {tuple(r[:2]) for r in failover} == {("hostssl", "airflow")}
