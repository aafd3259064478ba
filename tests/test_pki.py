"""The cluster's certificates (playbooks/certificates.yml): a CA created once per inventory, a
certificate per host naming its addresses, the clientAuth usage only where etcd and Patroni accept
clients, nothing reissued on a rerun, and a certificate about to expire reissued."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from helpers import run_playbook

# Local connections: the play only gathers facts on the hosts; everything else runs on the
# controller. Each host says its address, as an inventory's host_vars would.
INVENTORY = """
all:
  vars: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
  children:
    airflow_etcd: {hosts: {db1: {ansible_host: 192.0.2.11, airflow_node_address: 192.0.2.11}}}
    airflow_metadata_db: {hosts: {db1: {}}}
    airflow_worker: {hosts: {wk1: {ansible_host: 192.0.2.31, airflow_node_address: 192.0.2.31}}}
"""


def issue(inventory_dir: Path, *extra: str) -> int:
    proc = run_playbook(inventory_dir / "hosts.yml", "playbooks/certificates.yml", *extra, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return sum(int(n) for n in re.findall(r"changed=(\d+)", proc.stdout))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def usages(cert: x509.Certificate) -> set:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_and_host_certificates(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    pki = tmp_path / ".secrets" / "pki"
    assert issue(tmp_path) > 0

    ca = load(pki / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (pki / "ca.key").stat().st_mode & 0o077 == 0, "the CA key is readable by others"
    # Encrypted with the secrets file's passphrase, so a vault protects it too.
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)

    for host, address, client in [("db1", "192.0.2.11", True), ("wk1", "192.0.2.31", False)]:
        cert = load(pki / "hosts" / f"{host}.crt")
        # Signed by the CA (raises if not).
        ca_key = ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        digest = cert.signature_hash_algorithm
        assert digest is not None
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(digest))
        assert cert.issuer == ca.subject
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address(address) in names.get_values_for_type(x509.IPAddress)
        assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
        assert host in names.get_values_for_type(x509.DNSName)
        assert ExtendedKeyUsageOID.SERVER_AUTH in usages(cert)
        # Only database and etcd hosts may be clients of etcd and of Patroni's changing calls.
        assert (ExtendedKeyUsageOID.CLIENT_AUTH in usages(cert)) is client, host

    admin = load(pki / "clients" / "admin.crt")
    assert usages(admin) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert admin.issuer == ca.subject

    # A rerun keeps every file as it is.
    before = {p: p.read_bytes() for p in pki.rglob("*") if p.is_file()}
    assert issue(tmp_path) == 0
    assert {p: p.read_bytes() for p in pki.rglob("*") if p.is_file()} == before


def test_a_certificate_about_to_expire_is_reissued(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    pki = tmp_path / ".secrets" / "pki"
    # Certificates valid for 10 days: inside the 30-day renewal window from the start.
    issue(tmp_path, "-e", "airflow_common_pki_cert_days=10")
    short = load(pki / "hosts" / "wk1.crt")
    ca_before = (pki / "ca.crt").read_bytes()
    assert issue(tmp_path) > 0
    renewed = load(pki / "hosts" / "wk1.crt")
    assert renewed.serial_number != short.serial_number
    assert (renewed.not_valid_after_utc - short.not_valid_after_utc).days > 300
    # The CA stays: every certificate already installed keeps verifying.
    assert (pki / "ca.crt").read_bytes() == ca_before
    assert issue(tmp_path) == 0


# --- The operator's own CA (airflow_common_pki_generate: false) ------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])


def _own_pki(directory: Path) -> dict[str, Path]:
    """An operator's CA with certificates for db1 (right), an expired one, and one naming another
    address, written as PEM files; returns their paths."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Example Corp CA"))
        .issuer_name(_name("Example Corp CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True)
    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    files["key"] = directory / "db1.key"
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    variants = {
        "good": ("192.0.2.11", now + dt.timedelta(days=90)),
        "expired": ("192.0.2.11", now - dt.timedelta(hours=1)),
        "misnamed": ("192.0.2.99", now + dt.timedelta(days=90)),
    }
    for variant, (address, not_after) in variants.items():
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("db1"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(not_after)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("db1"), x509.IPAddress(ipaddress.ip_address(address))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        files[variant] = directory / f"db1-{variant}.pem"
        files[variant].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


OWN_INVENTORY = """
all:
  vars: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
  children:
    airflow_etcd: {hosts: {db1: {ansible_host: 192.0.2.11, airflow_node_address: 192.0.2.11}}}
"""


def run_certificates(inventory_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_playbook(
        inventory_dir / "hosts.yml",
        "playbooks/certificates.yml",
        "-e",
        "airflow_common_pki_generate=false",
        *extra,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("good", None),
        ("expired", "The certificate of db1 ("),
        ("misnamed", "does not name IP:192.0.2.11"),
    ],
)
def test_the_operators_own_certificates_are_checked(tmp_path, variant, message):
    (tmp_path / "hosts.yml").write_text(OWN_INVENTORY)
    files = _own_pki(tmp_path / "own")
    proc = run_certificates(
        tmp_path,
        "-e",
        f"airflow_tls_ca_file={files['ca']}",
        "-e",
        f"airflow_tls_cert_file={files[variant]}",
        "-e",
        f"airflow_tls_key_file={files['key']}",
    )
    if message is None:
        assert proc.returncode == 0, proc.stdout[-3000:]
    else:
        assert proc.returncode != 0
        assert message in proc.stdout, proc.stdout[-3000:]
        if variant == "expired":
            assert "expired on" in proc.stdout
    # Nothing was issued: the operator brings the files.
    assert not (tmp_path / ".secrets" / "pki").exists()


def test_a_certificate_of_another_ca_or_key_is_refused(tmp_path):
    (tmp_path / "hosts.yml").write_text(OWN_INVENTORY)
    ours = _own_pki(tmp_path / "ours")
    theirs = _own_pki(tmp_path / "theirs")
    cases = [
        (ours["ca"], theirs["good"], theirs["key"], "not by the CA in"),  # signed by another CA
        (ours["ca"], ours["good"], theirs["key"], "does not belong to the key"),  # another key
    ]
    for ca, cert, key, message in cases:
        proc = run_certificates(
            tmp_path,
            "-e",
            f"airflow_tls_ca_file={ca}",
            "-e",
            f"airflow_tls_cert_file={cert}",
            "-e",
            f"airflow_tls_key_file={key}",
        )
        assert proc.returncode != 0
        assert message in proc.stdout, proc.stdout[-3000:]
