"""Certificates and keys for the local control plane.

One CA signs the API server's serving certificate and the client certificates of
the admin user; the service-account key pair signs projected tokens. Nothing here
is meant for anything but a loopback-only development cluster.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from hybrid_compute import tls

_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`create_pki` writes."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.folder / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.folder / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.folder / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.folder / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.folder / "sa.pub"


def create_pki(folder: Path, service_ip: str) -> Pki:
    """Writes a fresh CA, serving certificate, admin certificate and SA keys."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(folder)

    ca_key = tls.new_key()
    ca_name = tls.name("hybrid-compute-dev-ca")
    ca_cert = (
        tls.builder(ca_name, ca_name, ca_key.public_key(), _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls.write_key(pki.ca_key, ca_key)
    tls.write_certificate(pki.ca_cert, ca_cert)

    serving_key = tls.new_key()
    hosts = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local", "127.0.0.1", service_ip)
    serving_cert = tls.for_servers(
        tls.builder(tls.name("kube-apiserver"), ca_name, serving_key.public_key(), _VALIDITY),
        hosts,
    ).sign(ca_key, hashes.SHA256())
    tls.write_key(pki.serving_key, serving_key)
    tls.write_certificate(pki.serving_cert, serving_cert)

    admin_key = tls.new_key()
    admin_cert = (
        tls.builder(tls.name("hybrid-compute-admin", "system:masters"), ca_name,
                    admin_key.public_key(), _VALIDITY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls.write_key(pki.admin_key, admin_key)
    tls.write_certificate(pki.admin_cert, admin_cert)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tls.write_key(pki.service_account_key, sa_key)
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
