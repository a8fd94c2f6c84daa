"""The realm's RS256 signing key: generated once into the state directory (0600) and handed to every start.

Keycloak would make a new key at every start of an in-memory database, and a
token issued before a restart would then fail to verify although it has not
expired. With the key kept, the JWKS (and its `kid`) stays the same across
restarts, as a real provider's does between rotations.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from appliance.idp.client_secrets import write_private
from appliance.idp.errors import IdpError

_KEY_BITS = 2048
_CERT_DAYS = 3650


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A PKCS#8 private key and a self-signed certificate for it, both as PEM text."""

    private_key_pem: str
    certificate_pem: str


def _pem_body(pem: str) -> str:
    """The base64 between the BEGIN and END lines, on one line: how Keycloak's realm files carry keys."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def keycloak_form(key: SigningKey) -> tuple[str, str]:
    return _pem_body(key.private_key_pem), _pem_body(key.certificate_pem)


def _generate(subject: str) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .sign(private, hashes.SHA256())
    )
    return SigningKey(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )


def ensure_signing_key(path: Path, subject: str) -> SigningKey:
    """The key and certificate in `path` (one PEM file), generated on first use; IdpError if the file is damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        key = _generate(subject)
        write_private(path, key.private_key_pem + key.certificate_pem)
        return key
    try:
        private = serialization.load_pem_private_key(text.encode(), password=None)
        certificate = x509.load_pem_x509_certificate(text[text.index("-----BEGIN CERTIFICATE-----"):].encode())
    except ValueError as e:
        raise IdpError(f"{path} does not hold a PEM private key followed by its certificate ({e}); "
                       "delete it to generate a new signing key") from None
    if not isinstance(private, rsa.RSAPrivateKey) or certificate.public_key().public_numbers() != private.public_key().public_numbers():
        raise IdpError(f"{path}: the key is not RSA or the certificate is not for it; delete it to generate a new one")
    return SigningKey(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )
