"""The upstream credentials the appliance authenticates to Kafka with, and their file.

The file is JSON, readable by its owner only:

    {"mechanism": "SCRAM-SHA-512", "username": "appliance", "password": "..."}

The embedded broker writes one when it formats its data directory; for a real
cluster the operator writes it. `load_credentials` refuses a file that group or
other can read, because whoever reads it can act as the appliance.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
_KEYS = ("mechanism", "username", "password")


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


def load_credentials(path: Path) -> UpstreamCredentials:
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
            f"{path}: mechanism {data['mechanism']!r} is not supported; use one of {', '.join(MECHANISMS)}"
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
