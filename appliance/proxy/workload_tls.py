"""Terminating a workload's TLS: the appliance's workload CA, and a server certificate per broker address.

A workload whose enrolment says `workload_tls: terminate` speaks TLS to its
broker address (security.protocol SSL or SASL_SSL); the proxy answers the
handshake itself, as that broker, with a certificate the appliance's own
workload CA issued, and carries the plain Kafka inside into the session like
any plaintext connection. The operator hands the CA's certificate
(`appliance workload-ca`) to the workloads as their trusted CA.

The CA is made once, on the first start (or the first `appliance workload-ca`),
under the state directory: `workload-ca.pem` (the certificate, readable) and
`workload-ca.key` (its key, root-only, mode 0600). Files that exist are used
as they are, never replaced: a bad one stops the start with an error naming
the file, since every client trusting the CA would fail against a new one.

Leaf certificates are short-lived (`LEAF_DAYS`), one per broker address, made
at start for the configured brokers and on first use for any other, carrying
the address as an IP subjectAltName and the broker's DNS name where the
configuration knows one (`upstream_tls.server_names`); each is renewed once
less than `RENEW_BEFORE_S` of it is left. Each lives in an `ssl.SSLContext`
loaded from a memory-only file, so no leaf key ever touches the disk.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.broker.certificates import Authority, load_authority
from appliance.config import BrokerAddress
from appliance.identity import state_file
from appliance.identity.private_file import read_private_file

CA_NAME = "appliance workload CA"
LEAF_DAYS = 2
RENEW_BEFORE_S = 24 * 3600.0
_MAX_PEM_BYTES = 64 * 1024
MODES = ("refuse", "terminate")


class WorkloadCaError(ValueError):
    """A workload CA file that cannot be used, naming the file and the fault."""


@dataclass(frozen=True, slots=True)
class CaFiles:
    cert: Path
    key: Path

    @classmethod
    def under(cls, state_dir: Path) -> CaFiles:
        return cls(state_dir / "workload-ca.pem", state_dir / "workload-ca.key")


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)


def not_after(cert: x509.Certificate) -> datetime.datetime:
    """The certificate's expiry, timezone-aware (cryptography before 42 gives it naive, in UTC)."""
    aware = getattr(cert, "not_valid_after_utc", None)
    return aware if aware is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def load_or_create(files: CaFiles, now: float, *, owner_uid: int | None = None) -> tuple[Authority, bool]:
    """The workload CA from its files, made first if neither exists; (it, whether it was made now).
    Raises WorkloadCaError naming the file when either is missing alone, unreadable, loose, not PEM,
    not a CA, expired, or not a pair."""
    with state_file.locked(files.key):
        authority = existing(files, now, owner_uid=owner_uid)
        if authority is not None:
            return authority, False
        authority = Authority.create(CA_NAME, _utc(now))
        _write(files, authority)
        return authority, True


def existing(files: CaFiles, now: float, *, owner_uid: int | None = None) -> Authority | None:
    """The workload CA if its files exist (None if neither does: the first start makes it), as
    `load_or_create` checks it; for `appliance doctor`, which makes nothing."""
    owner = os.geteuid() if owner_uid is None else owner_uid
    have_cert, have_key = files.cert.exists(), files.key.exists()
    if not have_cert and not have_key:
        return None
    if not have_key:
        raise WorkloadCaError(f"{files.key}: the workload CA's key does not exist beside its certificate "
                              f"{files.cert}; restore it, or remove {files.cert} to make a new CA (every "
                              f"workload must then be given the new certificate)")
    if not have_cert:
        raise WorkloadCaError(f"{files.cert}: the workload CA's certificate does not exist beside its key "
                              f"{files.key}; restore it, or remove {files.key} to make a new CA (every "
                              f"workload must then be given the new certificate)")
    return load(files, now, owner_uid=owner)


def load(files: CaFiles, now: float, *, owner_uid: int) -> Authority:
    key_pem = read_private_file(files.key, owner_uid=owner_uid, max_bytes=_MAX_PEM_BYTES,
                                name="workload CA key", readable="the CA's private key", error=WorkloadCaError)
    try:
        cert_pem = files.cert.read_bytes()
    except OSError as e:
        raise WorkloadCaError(f"{files.cert}: cannot read the workload CA certificate ({e.strerror})") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise WorkloadCaError(f"{files.cert}: is not a PEM certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise WorkloadCaError(f"{files.key}: is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise WorkloadCaError(f"{files.key}: is not an EC private key (the appliance makes P-256 keys)")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise WorkloadCaError(f"{files.cert}: is not a CA certificate (no basicConstraints CA:TRUE)")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise WorkloadCaError(f"{files.key}: is not the key of the certificate {files.cert}")
    if not_after(cert) <= _utc(now):
        raise WorkloadCaError(f"{files.cert}: the workload CA expired at {not_after(cert):%Y-%m-%dT%H:%M:%SZ}; "
                              f"remove both files to make a new CA and give it to every workload")
    return load_authority(cert_pem, key_pem)


def _write(files: CaFiles, authority: Authority) -> None:
    files.key.parent.mkdir(parents=True, exist_ok=True)
    state_file.replace_private(files.key, authority.key_pem().decode())
    tmp = files.cert.with_suffix(".tmp")
    tmp.write_bytes(authority.cert_pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, files.cert)


def describe(authority: Authority, files: CaFiles) -> dict:
    """What `appliance workload-ca` shows: where the certificate is, and which one it is."""
    cert = authority.certificate
    return {"certificate": str(files.cert), "key": str(files.key), "subject": cert.subject.rfc4514_string(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
            "not_after": f"{not_after(cert):%Y-%m-%dT%H:%M:%SZ}"}


@dataclass(slots=True)
class _Leaf:
    context: ssl.SSLContext
    renew_at: float
    names: tuple[str, ...]


def _context(cert_pem: bytes, key_pem: bytes, min_version: ssl.TLSVersion) -> ssl.SSLContext:
    """A server context for one leaf, loaded through a memory-only file (memfd): no key on disk."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    fd = os.memfd_create("appliance-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem + key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class WorkloadTls:
    """Server-side TLS contexts for terminated workload connections, one per broker address, renewed
    before they expire. `names(broker)` gives the DNS names the broker is known by besides its address."""

    def __init__(self, authority: Authority, *, names: Callable[[BrokerAddress], tuple[str, ...]] = lambda b: (),
                 min_version: str = "TLSv1.2", leaf_days: float = LEAF_DAYS,
                 renew_before_s: float = RENEW_BEFORE_S) -> None:
        self.authority = authority
        self.names = names
        self.min_version = ssl.TLSVersion.TLSv1_3 if min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
        self.leaf_days = leaf_days
        self.renew_before_s = renew_before_s
        self._leaves: dict[BrokerAddress, _Leaf] = {}
        self.issued = 0

    def context_for(self, broker: BrokerAddress, now: float) -> ssl.SSLContext:
        leaf = self._leaves.get(broker)
        if leaf is None or now >= leaf.renew_at:
            leaf = self._issue(broker, now)
        return leaf.context

    def _issue(self, broker: BrokerAddress, now: float) -> _Leaf:
        hosts = (broker.host, *(n for n in self.names(broker) if n != broker.host))
        issued = self.authority.issue(f"{broker} (appliance workload TLS)", _utc(now), hosts=hosts,
                                      days=self.leaf_days)
        expires = now + self.leaf_days * 86400.0
        leaf = _Leaf(_context(issued.cert_pem, issued.key_pem, self.min_version),
                     max(now, expires - self.renew_before_s), hosts)
        self._leaves[broker] = leaf
        self.issued += 1
        return leaf

    def names_for(self, broker: BrokerAddress) -> tuple[str, ...]:
        leaf = self._leaves.get(broker)
        return leaf.names if leaf is not None else ()


# OpenSSL's reasons when the first bytes are no TLS record: a plaintext Kafka request starts with its size.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
            "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNEXPECTED_RECORD")
# Alerts a client sends when it does not trust the certificate it was shown.
_DISTRUST = ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
             "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_ACCESS_DENIED")
_FIX_CA = "give the client the appliance's workload CA certificate (appliance workload-ca) as its trusted CA"


def handshake_failure(error: BaseException, broker: str, timeout_s: float) -> str:
    """The audited reason a terminated workload TLS handshake with `broker` failed, and what would fix it."""
    reason = getattr(error, "reason", None) or ""
    if isinstance(error, ssl.SSLError) and reason in _NOT_TLS:
        return (f"workload sent plaintext, not a TLS handshake, but its enrolment terminates TLS "
                f"(workload_tls terminate): set the client's security.protocol to SSL (SASL_SSL with SASL) and "
                f"{_FIX_CA}, or enrol it with --workload-tls refuse ({reason})")
    if isinstance(error, ssl.SSLError) and reason in _DISTRUST:
        return (f"workload refused the appliance's certificate for {broker} in the TLS handshake "
                f"({reason}): {_FIX_CA}")
    if isinstance(error, (TimeoutError, ConnectionAbortedError)) and "longer" in str(error):
        return f"workload TLS handshake deadline: not finished within {timeout_s:g} s (connect_timeout_s)"
    if isinstance(error, (ConnectionResetError, BrokenPipeError, EOFError)) or \
            isinstance(error, ssl.SSLError) and reason in ("UNEXPECTED_EOF_WHILE_READING",):
        return (f"workload closed the connection in the TLS handshake with {broker} (a client that does not "
                f"trust the certificate may close without an alert: {_FIX_CA})")
    return f"workload TLS handshake with {broker} failed: {reason or type(error).__name__}: {error}"


def session_failure(error: BaseException) -> str:
    """The audited reason an established terminated TLS connection ended with `error`."""
    reason = getattr(error, "reason", None) or type(error).__name__
    return f"workload's TLS connection failed: {reason}: {error}"
