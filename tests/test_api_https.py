"""HTTPS for the API and UI, rendered from inventories without containers: HAProxy terminating
TLS at the VIP and re-encrypting to the api-servers (verified against the CA, for each one's name),
the api-servers serving HTTPS, every Airflow component's API client trusting the cluster CA only,
and the front hosts' certificates naming the VIP and the operator's DNS name. tests/test_preflight.py
has preflight refusing a plain-http API URL. What the running cluster does is the loadbalancer_ha
and scheduler_failover_active_standby scenarios' verify and tests/test_e2e_lab.py's."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest

from test_postgres_tls import ONE_HOST_INVENTORY, SECRETS

from helpers import HA_INVENTORY, REPO, render_role_files

# Each role's rendered files, written per host by tasks tagged `render` (--tags render: none of
# the roles' own tasks run). The CA and certificates are stand-ins: files only.
RENDER_PLAY = """
- name: The load balancers
  hosts: airflow_loadbalancer
  connection: local
  gather_facts: false
  roles: [loadbalancer]
  tasks:
    - name: Write haproxy.cfg
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.template', roles ~ '/loadbalancer/templates/haproxy.cfg.j2') }}"
        dest: "{{ out }}/{{ inventory_hostname }}.haproxy.cfg"
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
          {{ lookup('ansible.builtin.template', roles ~ '/airflow_common/templates/airflow.cfg.j2') }}
        dest: "{{ out }}/{{ inventory_hostname }}.airflow.cfg"
        mode: "0644"
      tags: [render]

- name: The api-servers
  hosts: airflow_webserver
  connection: local
  gather_facts: false
  roles: [airflow_common, webserver]
  tasks:
    - name: Write the unit and the health URL
      ansible.builtin.copy:
        content: >-
          {{ {'unit': lookup('ansible.builtin.template',
                             repo ~ '/roles/webserver/templates/airflow-api-server.service.j2'),
              'health': _webserver_health_url} | to_json }}
        dest: "{{ out }}/{{ inventory_hostname }}.webserver.json"
        mode: "0644"
      tags: [render]

- name: Every host's certificate names
  hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: Write the names the host's certificate carries
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.vars', 'airflow_common_pki_addresses') | to_json }}|{{
                     lookup('ansible.builtin.vars', 'airflow_common_pki_extra_sans') | to_json }}"
        dest: "{{ out }}/{{ inventory_hostname }}.sans"
        mode: "0644"
      tags: [render]
"""


def render(tmp: Path, inventory_text: str, *extra: str) -> dict[str, str]:
    """Every host's rendered files (name -> text) for the inventory."""
    return render_role_files(
        tmp,
        inventory_text,
        RENDER_PLAY,
        SECRETS,
        *extra,
        facts={"interface": "eth0"},
        variables={"roles": str(REPO / "roles")},
    )


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> dict[str, str]:
    return render(
        tmp_path_factory.mktemp("ha"), HA_INVENTORY, "-e", "airflow_api_dns_name=airflow.example.com"
    )


def section(cfg: str, header: str) -> list[str]:
    """The stripped, non-comment lines of one haproxy.cfg section (up to the next header)."""
    lines: list[str] = []
    inside = False
    for raw in cfg.splitlines():
        if raw and not raw[0].isspace() and not raw.startswith("#"):
            inside = raw.strip() == header
            continue
        if inside and raw.strip() and not raw.strip().startswith("#"):
            lines.append(raw.strip())
    return lines


def api_settings(cfg_text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(cfg_text)
    return dict(parser.items("api")) | {
        "execution_api_server_url": parser.get("core", "execution_api_server_url")
    }


def test_haproxy_terminates_tls_at_the_vip_and_reencrypts_to_verified_api_servers(ha):
    cfg = ha["i1.haproxy.cfg"]
    front = section(cfg, "frontend airflow_api")
    assert front[0] == "bind *:8080 ssl crt /etc/haproxy/tls/api.pem alpn h2,http/1.1", front
    # Only the TLS bind: no plain-HTTP listener on the API port (or any other) for the API.
    assert [line for line in front if line.startswith("bind")] == [front[0]]
    assert "http-request set-header X-Forwarded-Proto https" in front
    back = section(cfg, "backend airflow_api")
    default = next(line for line in back if line.startswith("default-server"))
    assert default.endswith(" ssl verify required ca-file /etc/haproxy/tls/ca.crt"), default
    # The api-server's certificate must name its inventory name (HAProxy checks DNS names).
    assert "server 10.9.0.21:8080 10.9.0.21:8080 verifyhost a1" in back, back
    glob = section(cfg, "global")
    assert "ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets" in glob
    assert "ssl-default-server-options ssl-min-ver TLSv1.2 no-tls-tickets" in glob
    ciphers = next(line for line in glob if line.startswith("ssl-default-bind-ciphers "))
    assert all("GCM" in c or "CHACHA20" in c for c in ciphers.split()[1].split(":")), ciphers
    assert all(c.startswith("ECDHE-") for c in ciphers.split()[1].split(":")), ciphers


def test_the_stats_page_stays_on_the_nodes_own_addresses_and_read_only(ha):
    stats = section(ha["i1.haproxy.cfg"], "frontend stats")
    binds = [line for line in stats if line.startswith("bind")]
    # Loopback and the address of the default route's interface (10.9.9.9 in these facts), never "*".
    assert binds == ["bind 127.0.0.1:8404", "bind 10.9.9.9:8404"], binds
    assert not any(line.startswith("stats admin") for line in stats), stats


def test_the_api_servers_serve_https_with_their_host_certificate(ha):
    web = json.loads(ha["a1.webserver.json"])
    exec_start = next(line for line in web["unit"].splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(
        " --ssl-cert /etc/airflow/api-server-tls/api-server.crt"
        " --ssl-key /etc/airflow/api-server-tls/api-server.key"
    ), exec_start
    assert web["health"] == "https://127.0.0.1:8080/api/v2/monitor/health"


@pytest.mark.parametrize("host", ["a1", "w1"])
def test_every_airflow_component_calls_the_api_over_https_trusting_the_cluster_ca_only(ha, host):
    api = api_settings(ha[f"{host}.airflow.cfg"])
    assert api["base_url"] == "https://10.9.0.100:8080"
    assert api["execution_api_server_url"] == "https://10.9.0.100:8080/execution/"
    # task-sdk's Client builds its SSL context from ssl_ca_file, adds certifi's public CAs unless
    # client_use_public_certs is off, and trusts [api] ssl_cert as well when that is set.
    assert api["ssl_ca_file"] == "/etc/airflow/ca.crt"
    assert api["client_use_public_certs"] == "False"
    assert "ssl_cert" not in api


def test_the_front_hosts_certificates_name_the_vip_and_the_dns_name(ha):
    addresses, extra = (json.loads(part) for part in ha["i1.sans"].split("|"))
    assert "10.9.0.100" in addresses
    assert "10.9.0.11" in addresses
    assert extra == ["DNS:airflow.example.com"]
    # Hosts that do not answer at the VIP do not carry its names (i3, a database host that is no
    # load balancer, names the VIP for PostgreSQL through HAProxy, not for the API).
    for host in ("i3", "a1", "w1"):
        addresses, extra = (json.loads(part) for part in ha[f"{host}.sans"].split("|"))
        assert ("10.9.0.100" in addresses) == (host == "i3"), host
        assert extra == [], host


def test_without_load_balancers_the_first_api_server_names_the_api_host(tmp_path):
    files = render(tmp_path, ONE_HOST_INVENTORY)
    addresses, _ = (json.loads(part) for part in files["api9.sans"].split("|"))
    assert "10.9.0.3" in addresses
    assert api_settings(files["api9.airflow.cfg"])["base_url"] == "https://10.9.0.3:8080"


def test_without_tls_the_api_is_plain_http_everywhere(tmp_path):
    files = render(tmp_path, HA_INVENTORY, "-e", '{"airflow_tls_enabled": false}')
    cfg = files["i1.haproxy.cfg"]
    assert section(cfg, "frontend airflow_api")[0] == "bind *:8080"
    assert " ssl" not in "\n".join(section(cfg, "backend airflow_api"))
    assert "ssl-default-bind" not in cfg
    web = json.loads(files["a1.webserver.json"])
    assert "--ssl-cert" not in web["unit"]
    api = api_settings(files["w1.airflow.cfg"])
    assert api["base_url"] == "http://10.9.0.100:8080"
    assert "ssl_ca_file" not in api
