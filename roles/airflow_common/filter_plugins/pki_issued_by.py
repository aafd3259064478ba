"""Jinja filter `pki_issued_by`: whether a certificate file was signed by a CA certificate file.

Used by tasks/pki_check.yml on the controller. community.crypto reads a certificate's fields
(x509_certificate_info) but no maintained module checks its signature against an issuer (the
`assertonly` provider that did is gone), and comparing names alone accepts a certificate from
another CA with the same name. cryptography, which ansible-core requires, does it in one call.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature


def pki_issued_by(cert_path: str, ca_path: str) -> bool:
    """True when the certificate in `cert_path` carries a valid signature of the CA in `ca_path`
    and names it as its issuer."""
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    with open(ca_path, "rb") as handle:
        ca = x509.load_pem_x509_certificate(handle.read())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class FilterModule:
    def filters(self) -> dict:
        return {"pki_issued_by": pki_issued_by}
