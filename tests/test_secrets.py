"""Secrets are generated once per inventory, kept 0600, vault-encrypted when a vault password is set."""

from __future__ import annotations

import re
import stat
import subprocess

import yaml

from helpers import REPO, ansible_env, tool

# The secrets play only runs on the controller (include_vars, set_fact, delegate_to localhost):
# these hosts are never contacted.
INVENTORY = """
all:
  children:
    airflow_metadata_db: {hosts: {db1: {ansible_host: 192.0.2.1}}}
    airflow_worker: {hosts: {wk1: {ansible_host: 192.0.2.2}}}
"""
KEYS = {"fernet_key", "jwt_secret", "api_secret_key", "db_password", "broker_password", "admin_password"}


def run_secrets(inventory_dir, **env):
    proc = subprocess.run(
        [
            tool("ansible-playbook"),
            "-i",
            str(inventory_dir / "hosts.yml"),
            str(REPO / "playbooks/secrets.yml"),
        ],
        cwd=REPO,
        env=ansible_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sum(int(n) for n in re.findall(r"changed=(\d+)", proc.stdout))


def test_generated_once_and_kept_private(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    secrets = tmp_path / ".secrets" / "airflow-secrets.yml"
    assert run_secrets(tmp_path) > 0
    first = yaml.safe_load(secrets.read_text())
    assert set(first) >= KEYS
    assert len(first["fernet_key"]) == 44
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    # A second run changes nothing and keeps every value.
    assert run_secrets(tmp_path) == 0
    assert yaml.safe_load(secrets.read_text()) == first


def test_encrypted_with_vault_when_a_vault_password_is_set(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    password = tmp_path / "vault-pass"
    password.write_text("correct horse battery staple\n")
    secrets = tmp_path / ".secrets" / "airflow-secrets.yml"
    run_secrets(tmp_path, ANSIBLE_VAULT_PASSWORD_FILE=str(password))
    text = secrets.read_text()
    assert text.startswith("$ANSIBLE_VAULT;")
    assert "fernet_key" not in text
    # Read back through the vault on the next run: nothing regenerated, nothing rewritten.
    assert run_secrets(tmp_path, ANSIBLE_VAULT_PASSWORD_FILE=str(password)) == 0
    assert secrets.read_text() == text
