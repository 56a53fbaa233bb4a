"""The certificate pieces of :mod:`hybrid_compute.tls`, and the local cluster's PKI
built from them."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from hybrid_compute import tls
from hybrid_compute.dev.pki import create_pki


def test_a_server_certificate_names_addresses_and_hosts(tmp_path: Path) -> None:
    key = tls.new_key()
    subject = tls.name("server", "team")
    certificate = tls.for_servers(
        tls.builder(subject, subject, key.public_key(), datetime.timedelta(days=1)),
        ["localhost", "10.0.0.1", "::1"],
    ).sign(key, hashes.SHA256())

    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificate.not_valid_before_utc < datetime.datetime.now(datetime.UTC)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == datetime.timedelta(days=1, minutes=5)
    assert subject.rfc4514_string() == "O=team,CN=server"

    tls.write_key(tmp_path / "server.key", key)
    tls.write_certificate(tmp_path / "server.crt", certificate)
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")


def test_the_local_cluster_ca_signs_the_serving_and_admin_certificates(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki", "10.96.0.1")

    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for path in (pki.serving_cert, pki.admin_cert):
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        assert certificate.issuer == ca.subject
        certificate.verify_directly_issued_by(ca)
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1", "10.96.0.1"]
    for key in (pki.ca_key, pki.serving_key, pki.admin_key, pki.service_account_key):
        assert oct(key.stat().st_mode & 0o777) == "0o600"
