"""A throwaway certificate authority for tests of https to identity providers (cryptography, no openssl CLI).

    ca = TestCa.make("appliance test CA")
    ca.write_cert(tmp / "ca.pem")                                        # what ca_file names
    cert, key = ca.issue_server(tmp / "server.pem", tmp / "server.key")  # for 127.0.0.1 and localhost

Built on the embedded broker's CA (appliance/broker/certificates.py): an
end-entity certificate with the host names and addresses as subjectAltName,
serverAuth, key identifiers, signed by a self-signed CA with basicConstraints
CA:TRUE and keyCertSign. Keys are EC P-256 (fast to generate; Keycloak and
Python's ssl both take them). The CA lives two days, its certificates one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.broker.certificates import Authority


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class TestCa:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    name: str
    authority: Authority

    @classmethod
    def make(cls, name: str) -> "TestCa":
        return cls(name, Authority.create(name, _now(), days=2))

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return self.authority.key

    @property
    def cert(self) -> x509.Certificate:
        return self.authority.certificate

    @property
    def cert_pem(self) -> bytes:
        return self.authority.cert_pem

    def write_cert(self, path: Path) -> Path:
        return _write(Path(path), self.cert_pem)

    def issue_server(self, cert_path: Path, key_path: Path,
                     hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
        """A server certificate for `hosts` (IP addresses or DNS names), its key in PKCS#8 PEM (mode 0600)."""
        issued = self.authority.issue(hosts[0], _now(), hosts=hosts, days=1)
        _write(Path(cert_path), issued.cert_pem)
        _write(Path(key_path), issued.key_pem, 0o600)
        return Path(cert_path), Path(key_path)
