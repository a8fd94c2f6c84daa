"""The upstream credentials the appliance authenticates to Kafka with, and their file.

The file is JSON, readable by its owner only, in one of two forms:

    {"mechanism": "SCRAM-SHA-512", "username": "appliance", "password": "..."}
    {"mechanism": "OAUTHBEARER", "token_endpoint": "https://idp/realms/r/protocol/openid-connect/token",
     "client_id": "appliance-upstream", "client_secret": "...", "scope": "kafka", "ca_file": "/etc/appliance/idp-ca.pem"}

The first (also SCRAM-SHA-256 or PLAIN) is a password the broker checks; the
second is an OAuth 2 client the appliance uses to obtain its own access tokens
by the client_credentials grant (appliance/broker/token_source.py), which it
then presents to the broker over SASL/OAUTHBEARER. `scope` is optional;
`ca_file` (optional, absolute) names a PEM file of the CAs an https token
endpoint's certificate is verified against instead of the system store, and
is loaded when the file is, so that a wrong one fails here, naming both files.

The embedded broker writes a SCRAM one when it formats its data directory; for
a real cluster the operator writes it. `load_credentials` refuses a file that
group or other can read, because whoever reads it can act as the appliance.
Neither form's secret appears in repr() or in any error message.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from appliance.identity.provider_http import CaFileError, tls_context

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
OAUTHBEARER = "OAUTHBEARER"
_KEYS = ("mechanism", "username", "password")
_OAUTH_KEYS = ("mechanism", "token_endpoint", "client_id", "client_secret")
_OAUTH_OPTIONAL = ("scope", "ca_file")
# RFC 6749 appendix A: client ids and secrets are printable ASCII (VSCHAR); a scope is
# space-separated NQCHAR tokens. Nothing else may reach an HTTP request from this file.
_VSCHAR = re.compile(r"[\x20-\x7e]+")
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")


class CredentialsError(ValueError):
    """A credentials file that cannot be used, naming the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class UpstreamCredentials:
    """A SASL mechanism, user name and password; the password stays out of repr()."""

    mechanism: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise CredentialsError(f"mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if not self.username or not self.password:
            raise CredentialsError("username and password must not be empty")

    def to_json(self) -> str:
        return json.dumps({"mechanism": self.mechanism, "username": self.username, "password": self.password}, indent=2) + "\n"


    def current(self, now: float) -> "UpstreamCredentials":
        """What to authenticate a new broker connection with: a password does not change."""
        return self

    def refresh_now(self) -> None:
        """A password has nothing to refresh (the token source's counterpart fetches a new token)."""


@dataclass(frozen=True, slots=True)
class OAuthBearerCredentials:
    """An OAuth 2 client of an OIDC provider; the appliance's tokens come from its token endpoint.

    The secret stays out of repr(); `scope` None asks for the client's default scopes; `ca_file` None
    verifies an https endpoint against the system CA store.
    """

    token_endpoint: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    mechanism: str = OAUTHBEARER
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        problem = oauth_problem(self.token_endpoint, self.client_id, self.client_secret, self.scope)
        if problem is not None:
            raise CredentialsError(f"key {problem[0]!r} {problem[1]}")


def oauth_problem(token_endpoint, client_id, client_secret, scope) -> tuple[str, str] | None:
    """The first key of an OAUTHBEARER credentials form that is wrong, and what is wrong with it; None if none."""
    if not isinstance(token_endpoint, str) or not token_endpoint:
        return "token_endpoint", "must be a non-empty string"
    parts = urlsplit(token_endpoint)
    if parts.scheme not in ("https", "http") or not parts.hostname or not _VSCHAR.fullmatch(token_endpoint) \
            or " " in token_endpoint:
        return "token_endpoint", f"must be an http:// or https:// URL with a host, got {token_endpoint[:200]!r}"
    if parts.username is not None or parts.password is not None or parts.fragment:
        return "token_endpoint", "must not carry user information or a fragment (the secret goes in client_secret)"
    for key, value in (("client_id", client_id), ("client_secret", client_secret)):
        if not isinstance(value, str) or not value:
            return key, "must be a non-empty string"
        if len(value) > 1024 or not _VSCHAR.fullmatch(value):
            return key, "must be 1-1024 printable ASCII characters (RFC 6749)"
    if scope is not None and (not isinstance(scope, str) or len(scope) > 4096 or not _SCOPE.fullmatch(scope)):
        return "scope", "must be space-separated scope names of printable ASCII without quotes or backslashes (RFC 6749 3.3)"
    return None


@dataclass(frozen=True, slots=True)
class ClientCertificateOnly:
    """No SASL at all (`upstream_credentials: null`): the broker's SSL listener knows the appliance by its
    TLS client certificate (`upstream_tls.client_cert`), whose subject is the principal."""

    certificate: Path
    mechanism = "TLS client certificate"  # what `appliance status` shows as the upstream authentication

    def current(self, now: float) -> "ClientCertificateOnly":
        return self

    def refresh_now(self) -> None:
        """A certificate is renewed by replacing its file and restarting, not by asking."""


AnyCredentials = UpstreamCredentials | OAuthBearerCredentials


def _load_oauth(path: Path, data: dict) -> OAuthBearerCredentials:
    for key in _OAUTH_KEYS:
        if key not in data:
            raise CredentialsError(
                f"{path}: key {key!r} is missing; an OAUTHBEARER credentials file needs {', '.join(_OAUTH_KEYS)}")
    allowed = _OAUTH_KEYS + _OAUTH_OPTIONAL
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise CredentialsError(f"{path}: key {unknown[0]!r} is not known for OAUTHBEARER; valid keys are "
                               f"{', '.join(allowed)}")
    problem = oauth_problem(data["token_endpoint"], data["client_id"], data["client_secret"], data.get("scope"))
    if problem is not None:
        raise CredentialsError(f"{path}: key {problem[0]!r} {problem[1]}")
    ca_file = data.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str) or not ca_file.startswith("/"):
            raise CredentialsError(f"{path}: key 'ca_file' must be an absolute path to a PEM file of CA certificates, "
                                   f"got {str(ca_file)[:200]!r}")
        try:
            tls_context(ca_file)
        except CaFileError as e:
            raise CredentialsError(f"{path}: key 'ca_file': {e}") from None
        ca_file = Path(ca_file)
    return OAuthBearerCredentials(data["token_endpoint"], data["client_id"], data["client_secret"], data.get("scope"),
                                  ca_file=ca_file)


def load_credentials(path: Path) -> AnyCredentials:
    """Read and check a credentials file; every error names the file and the problem."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CredentialsError(f"{path}: credentials file does not exist") from None
    except OSError as e:
        raise CredentialsError(f"{path}: cannot read the credentials file: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise CredentialsError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or other read the credentials; "
            f"it must be readable by its owner only (chmod 600 {path})"
        )
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CredentialsError(f"{path}: cannot read the credentials file: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise CredentialsError(f"{path}{where}: not valid JSON: {getattr(e, 'msg', e)}") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path}: must hold a JSON object with keys {', '.join(_KEYS)}, not {type(data).__name__}")
    if data.get("mechanism") == OAUTHBEARER:
        return _load_oauth(path, data)
    for key in _KEYS:
        if key not in data:
            raise CredentialsError(f"{path}: key {key!r} is missing; a credentials file needs {', '.join(_KEYS)}")
        if not isinstance(data[key], str) or not data[key]:
            raise CredentialsError(f"{path}: key {key!r} must be a non-empty string")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise CredentialsError(f"{path}: key {unknown[0]!r} is not known; valid keys are {', '.join(_KEYS)}")
    if data["mechanism"] not in MECHANISMS:
        raise CredentialsError(
            f"{path}: mechanism {data['mechanism']!r} is not supported; use one of "
            f"{', '.join(MECHANISMS + (OAUTHBEARER,))}"
        )
    return UpstreamCredentials(data["mechanism"], data["username"], data["password"])


def generate(username: str, mechanism: str = "SCRAM-SHA-512") -> UpstreamCredentials:
    """New credentials with a random password (URL-safe characters, so it needs no quoting anywhere)."""
    return UpstreamCredentials(mechanism, username, secrets.token_urlsafe(24))


def write_credentials(path: Path, credentials: UpstreamCredentials) -> None:
    """Write the file atomically with mode 0600, so it is never readable by others, even briefly."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, credentials.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
