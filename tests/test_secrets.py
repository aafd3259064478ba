"""Secrets are generated once per inventory, kept 0600, vault-encrypted when a vault password is set."""

from __future__ import annotations

import base64
import math
import re
import stat
import string
import subprocess

import pytest
import yaml
from cryptography.fernet import Fernet

from helpers import REPO, ansible_env, load_module, tool

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


# Every generated secret but the Fernet key (bytes, checked on its own) and VRRP's (8 characters at
# most, by the protocol).
PASSWORDS = {
    "jwt_secret",
    "api_secret_key",
    "db_password",
    "db_celery_password",
    "db_failover_password",
    "broker_password",
    "admin_password",
    "db_replication_password",
    "db_patroni_api_password",
    "db_superuser_password",
    "broker_sentinel_password",
    "broker_admin_password",
    "broker_celery_password",
    "broker_replication_password",
    "broker_sentinel_peer_password",
}
ALNUM = set((string.ascii_letters + string.digits).encode())
PRINTABLE = set(string.printable.encode())


def assert_real_fernet_key(key: str) -> None:
    raw = base64.urlsafe_b64decode(key.encode("ascii"))
    assert len(raw) == 32, key
    token = Fernet(key).encrypt(b"airflow")
    assert Fernet(key).decrypt(token) == b"airflow"
    # Random bytes, not base64 of characters: 32 random bytes are all printable ASCII with a
    # probability of (100/256)**32, about 1e-13. Base64 of a password always is.
    assert not set(raw) <= PRINTABLE, f"{key} decodes to printable characters only: {raw!r}"


def vault_view(path, password_file) -> str:
    proc = subprocess.run(
        [tool("ansible-vault"), "view", str(path)],
        cwd=REPO,
        env=ansible_env(ANSIBLE_VAULT_PASSWORD_FILE=str(password_file)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_fernet_key_is_32_random_bytes_that_fernet_accepts(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    run_secrets(tmp_path)
    key = yaml.safe_load((tmp_path / ".secrets" / "airflow-secrets.yml").read_text())["fernet_key"]
    assert_real_fernet_key(key)


def test_the_fernet_key_lookup_makes_a_new_key_each_call():
    plugin = load_module(
        "collections/ansible_collections/airflow_ha/cluster/plugins/lookup/fernet_key.py", "fernet_key"
    )
    keys = {plugin.fernet_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert_real_fernet_key(key)


def test_passwords_hold_at_least_128_bits(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    run_secrets(tmp_path)
    secrets = yaml.safe_load((tmp_path / ".secrets" / "airflow-secrets.yml").read_text())
    assert set(secrets) >= PASSWORDS | {"vrrp_password"}
    for name in PASSWORDS:
        value = secrets[name]
        # Letters and digits only: every file and URL the values go into takes them unquoted.
        assert set(value.encode()) <= ALNUM, name
        bits = len(value) * math.log2(len(ALNUM))
        assert bits >= 128, f"{name}: {len(value)} characters, {bits:.0f} bits"
    assert re.fullmatch(r"[A-Za-z0-9]{8}", secrets["vrrp_password"])


@pytest.mark.parametrize("vault", [False, True], ids=["plain", "vault"])
def test_stored_values_never_change_missing_ones_are_added(tmp_path, vault):
    """An older secrets file (fewer keys, a Fernet key of the old kind) keeps every value."""
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    env = {}
    secrets = tmp_path / ".secrets" / "airflow-secrets.yml"
    secrets.parent.mkdir(mode=0o700)
    old = {
        "fernet_key": base64.urlsafe_b64encode(b"A" * 32).decode(),
        "db_password": "short",
        "admin_password": "kept-as-it-is",
    }
    secrets.write_text("---\n" + yaml.safe_dump(old))
    secrets.chmod(0o600)
    if vault:
        password = tmp_path / "vault-pass"
        password.write_text("correct horse battery staple\n")
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(password)
        subprocess.run(
            [tool("ansible-vault"), "encrypt", str(secrets)],
            cwd=REPO,
            env=ansible_env(**env),
            check=True,
            capture_output=True,
        )
    assert run_secrets(tmp_path, **env) > 0
    text = secrets.read_text()
    assert text.startswith("$ANSIBLE_VAULT;") == vault
    merged = yaml.safe_load(vault_view(secrets, password) if vault else text)
    assert set(merged) >= KEYS | PASSWORDS
    assert {k: merged[k] for k in old} == old
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    # Nothing is missing any more: the next run leaves the file alone.
    assert run_secrets(tmp_path, **env) == 0
    assert secrets.read_text() == text


def test_a_plain_secrets_file_gets_encrypted_once_a_vault_password_is_set(tmp_path):
    """A complete plain file (nothing to generate) is encrypted in place, its text kept as it was."""
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    secrets = tmp_path / ".secrets" / "airflow-secrets.yml"
    run_secrets(tmp_path)
    plain = "# Edited by hand.\n" + secrets.read_text()
    secrets.write_text(plain)
    password = tmp_path / "vault-pass"
    password.write_text("correct horse battery staple\n")
    assert run_secrets(tmp_path, ANSIBLE_VAULT_PASSWORD_FILE=str(password)) > 0
    text = secrets.read_text()
    assert text.startswith("$ANSIBLE_VAULT;")
    assert vault_view(secrets, password) == plain
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    # Encrypted now: the next run reports no change and leaves the file as it is.
    assert run_secrets(tmp_path, ANSIBLE_VAULT_PASSWORD_FILE=str(password)) == 0
    assert secrets.read_text() == text
