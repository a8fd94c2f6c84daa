"""A small certificate authority for the embedded broker's TLS listeners (pure but for the clock passed in).

    authority = Authority.create("appliance embedded broker CA", now)
    server = authority.issue("broker", now, hosts=("127.0.0.1", "::1", "localhost"))
    client = authority.issue("appliance", now, client=True)

Keys are ECDSA P-256: quick to make at every broker start, and accepted by
Java's and OpenSSL's TLS alike. Everything is returned as PEM bytes for the
caller to write; Kafka reads PEM keystores and truststores directly
(`ssl.keystore.type=PEM`), so no keytool or PKCS#12 step is needed.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A leaf certificate's default lifetime: the embedded broker makes new ones at every start.
LEAF_DAYS = 30
CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, both PEM (the key unencrypted PKCS#8)."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def chain_pem(self) -> bytes:
        """Certificate then key, the layout of Kafka's `ssl.keystore.location` PEM file."""
        return self.cert_pem + self.key_pem


@dataclass(frozen=True, slots=True)
class Authority:
    """A self-signed CA that issues server and client certificates."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str, now: datetime.datetime, *, days: int = CA_DAYS) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def issue(self, name: str, now: datetime.datetime, *, hosts: tuple[str, ...] = (), client: bool = False,
              days: int = LEAF_DAYS, not_before: datetime.datetime | None = None) -> Issued:
        """A leaf for `name`: a server certificate for `hosts` (IP addresses and DNS names, as
        subjectAltName), or a client one. `not_before` with a small `days` makes one that has expired."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or now - datetime.timedelta(minutes=5)
        sans = [_general_name(h) for h in hosts]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_authority(cert_pem: bytes, key_pem: bytes) -> Authority:
    """The CA made by an earlier start, from its two PEM files."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    return Authority(x509.load_pem_x509_certificate(cert_pem), key)
