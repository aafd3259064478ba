"""The lab tooling's Redis client (chaos_lab.redis_call) over TLS, against a local TLS server that
answers RESP: it verifies the server against the CA and the address dialled, and refuses a server
signed by another CA or a certificate naming another address. The sampler's redis-cli gets the
same TLS options."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from airflow_ha import chaos_lab, chaos_probes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(directory: Path, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _server_cert(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, ip: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("broker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = directory / "server.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


class RespServer:
    """A TLS server on 127.0.0.1 that answers AUTH with +OK and any other command with the bulk
    string "pong:<command>"; it records the commands it got."""

    def __init__(self, cert_chain: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_chain)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.commands: list[list[bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    stream = conn.makefile("rwb")
                    while True:
                        command = chaos_lab.read_reply(stream)
                        self.commands.append(command)
                        reply = (
                            b"+OK\r\n"
                            if command[0].upper() == b"AUTH"
                            else b"$%d\r\npong:%s\r\n"
                            % (
                                len(command[0]) + 5,
                                command[0],
                            )
                        )
                        stream.write(reply)
                        stream.flush()
            except (OSError, chaos_lab.ChaosError):
                continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, ca_key, ca_path = _ca(tmp_path, "cluster-ca")
    _, _, other_ca = _ca(tmp_path, "other-ca")
    (tmp_path / "right").mkdir()
    (tmp_path / "wrong").mkdir()
    return {
        "ca": ca_path,
        "other_ca": other_ca,
        "right": _server_cert(tmp_path / "right", ca, ca_key, "127.0.0.1"),
        "wrong_name": _server_cert(tmp_path / "wrong", ca, ca_key, "127.0.0.2"),
    }


@pytest.fixture
def server(request: pytest.FixtureRequest, pki: dict[str, Path]) -> Iterator[RespServer]:
    srv = RespServer(pki[request.param])
    yield srv
    srv.close()


@pytest.mark.parametrize("server", ["right"], indirect=True)
def test_redis_call_speaks_tls_verified_against_the_ca(server, pki):
    reply = chaos_lab.redis_call(
        "127.0.0.1", server.port, "pw", "PING", username="admin", ca_file=str(pki["ca"]), timeout=5
    )
    assert reply == b"pong:PING"
    assert server.commands == [[b"AUTH", b"admin", b"pw"], [b"PING"]]


@pytest.mark.parametrize("server", ["right"], indirect=True)
def test_redis_call_refuses_a_server_another_ca_signed(server, pki):
    with pytest.raises(ssl.SSLCertVerificationError):
        chaos_lab.redis_call("127.0.0.1", server.port, "pw", "PING", ca_file=str(pki["other_ca"]), timeout=5)
    assert server.commands == []  # the password never left


@pytest.mark.parametrize("server", ["wrong_name"], indirect=True)
def test_redis_call_refuses_a_certificate_for_another_address(server, pki):
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        chaos_lab.redis_call("127.0.0.1", server.port, "pw", "PING", ca_file=str(pki["ca"]), timeout=5)
    assert server.commands == []


@pytest.mark.parametrize("server", ["right"], indirect=True)
def test_plain_redis_call_gets_no_answer_from_a_tls_server(server):
    # What a plaintext client meets at the broker's port: the TLS server never answers RESP.
    with pytest.raises((OSError, chaos_lab.ChaosError)):
        chaos_lab.redis_call("127.0.0.1", server.port, "", "PING", timeout=2)
    assert server.commands == []


@pytest.mark.parametrize("server", ["right"], indirect=True)
def test_sentinel_master_is_none_when_verification_fails(server, pki):
    found = chaos_lab.sentinel_master(
        "127.0.0.1", server.port, "pw", "airflow-broker", timeout=5, ca_file=str(pki["other_ca"])
    )
    assert found is None


def test_the_sampler_s_redis_cli_uses_tls_when_given_a_ca():
    script = chaos_probes.redis_sampler_script(6379, user="admin", ca_file="/etc/redis/tls/ca.crt")
    assert "redis-cli --tls --cacert /etc/redis/tls/ca.crt -p 6379 --user admin INFO replication" in script
    assert "--tls" not in chaos_probes.redis_sampler_script(6379, user="admin")


def test_lab_ops_verify_redis_with_the_inventory_ca(tmp_path):
    pki = tmp_path / ".secrets" / "pki"
    pki.mkdir(parents=True)
    (pki / "ca.crt").write_text("stand-in")
    tls = chaos_lab.ControlTls.for_inventory(tmp_path)
    ops = chaos_lab.LabOps.__new__(chaos_lab.LabOps)
    ops.tls, ops.redis_tls = tls, True
    assert ops.redis_ca == str(pki / "ca.crt")
    assert ops.redis_host_ca == "/etc/redis/tls/ca.crt"
    ops.redis_tls = False
    assert ops.redis_ca is None
    assert ops.redis_host_ca == ""
