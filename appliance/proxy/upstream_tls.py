"""TLS from the proxy to the brokers: the files checked at load, one SSLContext, and faults in plain words.

    check_files(tls)                 # at config load: TlsFileError naming the key, the file and the fault
    upstream = UpstreamTls.from_config(tls)   # once at start: the context every upstream connection uses
    loop.create_connection(factory, host, port, **upstream.connect_arguments(broker, timeout_s))
    describe_failure(broker, error)  # "TLS to broker 10.0.0.5:9093 failed: certificate verify failed: ..."
    probe(upstream, broker)          # one real handshake, for a health check: None, or the fault

The context verifies the broker's chain against `ca_file` (or the system
store) and, unless `verify_hostname` is off, that the certificate is valid for
the broker's server name: the one `server_names` gives, else the DNS name
its address was reached through (a broker given by name in `brokers`, or
named by host name in a cluster's answer), else its IP literal, which must
then be an IP SAN. The client key is read through the root-only
reader and handed to OpenSSL from memory, so what was checked is what is
loaded. Nothing here retries in plaintext: a failed handshake is the end of
that connection.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import BrokerAddress, UpstreamTlsConfig
from appliance.identity.private_file import read_private_file

MAX_PEM_BYTES = 1 << 20
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsFileError(ValueError):
    """A configured TLS file that cannot be used; `key` is the setting that names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# ---- files, checked at load --------------------------------------------------------------------------------


def check_files(tls: UpstreamTlsConfig, now: datetime.datetime | None = None) -> None:
    """Every file `tls` names exists, parses, is in date, and the client key matches its certificate."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if tls.ca_file is not None:
        cas = _certificates(tls.ca_file, "ca_file", "CA file")
        for cert in cas:
            _in_date(cert, tls.ca_file, "ca_file", "a CA certificate", now)
    if tls.client_cert is not None:
        chain = _certificates(tls.client_cert, "client_cert", "client certificate file")
        _in_date(chain[0], tls.client_cert, "client_cert", "the client certificate", now)
        key = _private_key(tls.client_key)
        if _public(key.public_key()) != _public(chain[0].public_key()):
            raise TlsFileError("client_key", f"{tls.client_key}: this private key does not belong to the "
                               f"certificate in {tls.client_cert} (their public keys differ); give the key "
                               "the certificate was issued for")
    try:
        UpstreamTls.from_config(tls)  # anything OpenSSL itself refuses, named the same way
    except ssl.SSLError as e:
        raise TlsFileError("ca_file" if tls.client_cert is None else "client_cert",
                           f"OpenSSL refuses the TLS files: {e.reason or e}") from None


def _read(path: Path, key: str, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(key, f"{path}: the {what} does not exist") from None
    except IsADirectoryError:
        raise TlsFileError(key, f"{path}: is a directory; name a PEM file") from None
    except OSError as e:
        raise TlsFileError(key, f"{path}: cannot read the {what}: {e.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsFileError(key, f"{path}: is more than the {MAX_PEM_BYTES} bytes a PEM file may have")
    return data


def _certificates(path: Path, key: str, what: str) -> list[x509.Certificate]:
    data = _read(path, key, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsFileError(key, f"{path}: holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)")
    certs = []
    for block in data.split(b"-----BEGIN CERTIFICATE-----")[1:]:
        pem = b"-----BEGIN CERTIFICATE-----" + block.split(b"-----END CERTIFICATE-----")[0] + \
            b"-----END CERTIFICATE-----\n"
        try:
            certs.append(x509.load_pem_x509_certificate(pem))
        except ValueError as e:
            raise TlsFileError(key, f"{path}: certificate {len(certs) + 1} is not a valid PEM certificate "
                               f"({e})") from None
    return certs


def _in_date(cert: x509.Certificate, path: Path, key: str, what: str, now: datetime.datetime) -> None:
    naive = now.astimezone(datetime.timezone.utc).replace(tzinfo=None)  # cryptography 38 gives naive UTC
    subject = cert.subject.rfc4514_string() or "(no subject)"
    if cert.not_valid_after < naive:
        raise TlsFileError(key, f"{path}: {what} ({subject}) expired on {cert.not_valid_after:%Y-%m-%d %H:%M:%S} "
                           f"UTC (valid from {cert.not_valid_before:%Y-%m-%d %H:%M:%S}); it is now "
                           f"{naive:%Y-%m-%d %H:%M:%S} UTC")
    if cert.not_valid_before > naive:
        raise TlsFileError(key, f"{path}: {what} ({subject}) is not valid before "
                           f"{cert.not_valid_before:%Y-%m-%d %H:%M:%S} UTC; it is now {naive:%Y-%m-%d %H:%M:%S} UTC")


def _read_key(path: Path) -> bytes:
    return read_private_file(path, owner_uid=0, max_bytes=MAX_PEM_BYTES, name="client key file",
                             readable="the appliance's private key", error=_KeyFileError)


class _KeyFileError(ValueError):
    pass


def _private_key(path: Path):
    try:
        data = _read_key(path)
    except _KeyFileError as e:
        raise TlsFileError("client_key", str(e)) from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsFileError("client_key", f"{path}: the private key is encrypted; give it unencrypted (the file "
                           "itself is root-only)") from None
    except ValueError:
        raise TlsFileError("client_key", f"{path}: holds no PEM private key the appliance can read "
                           "(expected '-----BEGIN PRIVATE KEY-----' or an RSA/EC key block)") from None


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---- the context -------------------------------------------------------------------------------------------


def build_context(tls: UpstreamTlsConfig) -> ssl.SSLContext:
    """The client context for every upstream connection (raises ssl.SSLError / TlsFileError on bad files)."""
    try:
        context = ssl.create_default_context(cafile=None if tls.ca_file is None else str(tls.ca_file))
    except ssl.SSLError:
        raise
    except OSError as e:
        raise TlsFileError("ca_file", f"{tls.ca_file}: cannot read the CA file: {e.strerror}") from None
    context.minimum_version = _VERSIONS[tls.min_version]
    context.check_hostname = tls.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED  # also with verify_hostname off: the chain is always checked
    if tls.client_cert is not None:
        try:
            key = _read_key(tls.client_key)
        except _KeyFileError as e:
            raise TlsFileError("client_key", str(e)) from None
        # OpenSSL loads keys only from a path: a memory file holds exactly the bytes checked above.
        fd = os.memfd_create("appliance-client-key", os.MFD_CLOEXEC)
        try:
            os.write(fd, key)
            context.load_cert_chain(str(tls.client_cert), f"/proc/self/fd/{fd}")
        except ssl.SSLError:
            raise
        except OSError as e:
            raise TlsFileError("client_cert", f"{tls.client_cert}: cannot read the client certificate: "
                               f"{e.strerror}") from None
        finally:
            os.close(fd)
    return context


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """The context built once from the configuration, and the name each broker is verified against."""

    config: UpstreamTlsConfig
    context: ssl.SSLContext

    @classmethod
    def from_config(cls, tls: UpstreamTlsConfig) -> UpstreamTls:
        return cls(tls, build_context(tls))

    def connect_arguments(self, broker: BrokerAddress, timeout_s: float, name: str | None = None) -> dict:
        """`create_connection` keywords for a TLS connection to `broker`; `name`: the DNS name its address
        was reached through, if any (`UpstreamTlsConfig.server_name`)."""
        return {"ssl": self.context, "server_hostname": self.config.server_name(broker, name),
                "ssl_handshake_timeout": timeout_s}

    @property
    def trust(self) -> str:
        return f"{self.config.ca_file}" if self.config.ca_file is not None else "the system store"


def upstream_tls(tls: UpstreamTlsConfig | None) -> UpstreamTls | None:
    """The upstream TLS of a configuration, or None when the brokers are reached in plaintext."""
    return None if tls is None or not tls.enabled else UpstreamTls.from_config(tls)


# ---- faults in plain words ---------------------------------------------------------------------------------

# OpenSSL's X509_V_ERR_* codes that have a plainer explanation than its own text.
_VERIFY_HINTS = {
    10: "the broker's certificate has expired",
    9: "the broker's certificate is not valid yet",
    18: "the broker's certificate is self-signed and not in {trust}",
    19: "the broker's certificate chain ends in a CA that is not in {trust}",
    20: "the broker's certificate is not signed by a CA in {trust}; set upstream_tls.ca_file to its CA",
    62: "the broker's certificate does not carry the name {name!r}; set upstream_tls.server_names for this "
        "broker to a name it carries",
    64: "the broker's certificate does not carry the IP address {name!r}; set upstream_tls.server_names for "
        "this broker to the DNS name it carries",
}
# The alerts a broker sends when it demands a client certificate and the appliance has none (Java sends
# bad_certificate, OpenSSL servers certificate_required).
_NO_CLIENT_CERTIFICATE = ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
                          "SSLV3_ALERT_HANDSHAKE_FAILURE")
# OpenSSL reasons (alerts from the broker, or what this side saw) and what they mean here.
_REASON_HINTS = {
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the broker ended the handshake: it shares no cipher with the appliance, "
                                     "or wants a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the broker refused the appliance's client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the broker does not trust the CA of the appliance's client certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the broker says the appliance's client certificate has expired",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the broker and the appliance share no TLS version; see upstream_tls.min_version",
    "UNSUPPORTED_PROTOCOL": "the broker and the appliance share no TLS version; see upstream_tls.min_version",
    "WRONG_VERSION_NUMBER": "the broker does not speak TLS on this port (a plaintext listener?)",
    "RECORD_LAYER_FAILURE": "the broker does not speak TLS on this port (a plaintext listener?)",
}


def is_tls_failure(error: BaseException | None) -> bool:
    return isinstance(error, (ssl.SSLError, ssl.CertificateError))


def describe_failure(broker: BrokerAddress | str, error: BaseException, tls: UpstreamTls | None = None) -> str:
    """`TLS to broker B failed: <OpenSSL's words>: <what it means>`, for the audit and the log."""
    head = f"TLS to broker {broker} failed"
    trust = tls.trust if tls is not None else "the configured trust store"
    if isinstance(error, ssl.SSLCertVerificationError):
        said = error.verify_message or error.reason or str(error)
        name = _name_in(said)
        hint = _VERIFY_HINTS.get(error.verify_code, "").format(trust=trust, name=name)
        return f"{head}: certificate verify failed: {said.rstrip('.')}" + (f" ({hint})" if hint else "")
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)):
        return f"{head}: the broker closed the connection during the TLS handshake (is the port a plaintext listener?)"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if reason in _NO_CLIENT_CERTIFICATE and tls is not None and tls.config.client_cert is None:
            hint = ("the broker demands a client certificate and the appliance has none; set "
                    "upstream_tls.client_cert and client_key")
        else:
            hint = _REASON_HINTS.get(reason)
        said = reason.lower().replace("_", " ") if reason else str(error)
        return f"{head}: {said}" + (f" ({hint})" if hint else "")
    if isinstance(error, (TimeoutError, ConnectionAbortedError)):
        return f"{head}: the handshake did not finish in time ({str(error) or 'connect_timeout_s'})"
    return f"{head}: {type(error).__name__}: {error}"


def _name_in(message: str) -> str:
    """The name in OpenSSL's "... certificate is not valid for 'NAME'." messages."""
    start = message.find("'")
    end = message.rfind("'")
    return message[start + 1:end] if 0 <= start < end else ""


# ---- a health check ----------------------------------------------------------------------------------------


def probe(tls: UpstreamTls | UpstreamTlsConfig, broker: BrokerAddress, *, timeout_s: float = 5.0,
          name: str | None = None) -> str | None:
    """One TLS handshake with `broker` as the proxy makes it: None if it succeeds, else the fault in plain words.
    `name`: the DNS name the address was reached through (a broker given by name), verified as serve does.

    `tls` is the context serve built, or the configuration's `upstream_tls` (a health check outside serve
    builds the same context from it). A TLS 1.3 broker refuses a missing client certificate only after the
    handshake (its alert follows the client's Finished), so the probe waits briefly for anything the broker
    says before calling it good."""
    if isinstance(tls, UpstreamTlsConfig):
        try:
            tls = UpstreamTls.from_config(tls)
        except (TlsFileError, ssl.SSLError) as e:
            return f"TLS to broker {broker} cannot be tried: {e}"
    try:
        raw = socket.create_connection((broker.host, broker.port), timeout=timeout_s)
    except OSError as e:
        return f"cannot reach broker {broker}: {e.strerror or e}"
    try:
        with tls.context.wrap_socket(raw, server_hostname=tls.config.server_name(broker, name)) as conn:
            conn.settimeout(min(timeout_s, 1.0))
            try:
                conn.recv(1)  # a Kafka broker says nothing unasked: silence is success
            except TimeoutError:
                pass
            return None
    except (ssl.SSLError, ssl.CertificateError, ConnectionResetError, BrokenPipeError, TimeoutError) as e:
        return describe_failure(broker, e, tls)
    except OSError as e:
        return f"TLS to broker {broker} failed: {e.strerror or e}"
    finally:
        raw.close()
