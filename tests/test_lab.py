"""The lab is read from inventories/lab the way Ansible reads it."""

from __future__ import annotations

from airflow_ha import lab as labmod


def test_lab_inventory_is_read_with_addresses_groups_and_vip():
    lab = labmod.load_lab(labmod.REPO / "inventories" / "lab")
    assert lab.network == "airflow-ha-lab"
    assert lab.subnet == "172.30.10.0/24"
    names = {h.name for h in lab.hosts}
    assert {"lab-infra1", "lab-infra2", "lab-infra3", "lab-worker1", "lab-worker2"} <= names
    assert lab.address("lab-infra2") == "172.30.10.12"
    assert len(lab.groups["airflow_etcd"]) == 3
    # TLS is on by default: HTTPS at the VIP, verified against the inventory's cluster CA.
    assert lab.api_url == "https://172.30.10.10:8080"
    assert lab.api_verify == str(lab.inventory / ".secrets" / "pki" / "ca.crt")
    assert "keepalived VIP" in labmod.summary(lab)


def test_without_tls_the_lab_api_is_plain_http_with_default_verification():
    lab = labmod.load_lab(labmod.REPO / "inventories" / "lab")
    plain = labmod.Lab(**{**lab.__dict__, "tls": False})
    assert plain.api_url == "http://172.30.10.10:8080"
    assert plain.api_verify is True


def test_the_api_client_keeps_the_cluster_ca_when_the_environment_names_another(monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE replace a session's own CA file (psf/requests#3829): the e2e
    suite failed to log in on a machine that sets it. The client given the cluster CA keeps it."""
    from airflow_ha.api import AirflowApi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    api = AirflowApi("https://192.0.2.10:8080", "admin", "pw", verify="/inventory/.secrets/pki/ca.crt")
    settings = api.session.merge_environment_settings(f"{api.base_url}/auth/token", {}, None, None, None)
    assert settings["verify"] == "/inventory/.secrets/pki/ca.crt"
    system = AirflowApi("https://example.org", "admin", "pw")
    assert system.session.merge_environment_settings("https://example.org", {}, None, None, None)[
        "verify"
    ] == ("/etc/ssl/certs/ca-certificates.crt")
