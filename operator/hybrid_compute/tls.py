"""Keys and X.509 certificates: the pieces the admission webhook's self-signed
certificate and the local cluster's PKI are built from."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates start a little in the past, so a peer whose clock lags still accepts them.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key, which every TLS peer of the operator accepts."""
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
            validity: datetime.timedelta) -> x509.CertificateBuilder:
    """A certificate valid from now (less the clock skew) for ``validity``, with a
    random serial number, ready for extensions and signing."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + validity)
    )


def alternative_name(host: str) -> x509.GeneralName:
    """An IP address entry for an address, else a DNS name entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def for_servers(certificate: x509.CertificateBuilder, hosts: Iterable[str]
                ) -> x509.CertificateBuilder:
    """The certificate made a TLS server's for ``hosts`` (names or IP addresses)."""
    return (
        certificate
        .add_extension(x509.SubjectAlternativeName([alternative_name(h) for h in hosts]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )


def write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    """The key as unencrypted PKCS#8 PEM, readable by its owner only."""
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
