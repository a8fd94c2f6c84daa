"""Static workload credentials for the migration to tokens: a root-only YAML file.

While workloads move to OIDC tokens, some still log in with a username and a
password (PLAIN or SCRAM). This file says which identity each such login is:

    credentials:
      - mechanism: SCRAM-SHA-512
        username: orders
        password: "..."            # keys derived once, at load
        identity: orders
        groups: [payments]
      - mechanism: SCRAM-SHA-256
        username: billing
        salt: "base64"             # or the stored keys, as kafka-configs shows them
        stored_key: "base64"
        server_key: "base64"
        iterations: 8192
        identity: billing
      - mechanism: PLAIN
        username: legacy
        password: "..."
        identity: legacy-batch

The file holds secrets, so it must belong to root and be readable by nobody
else (mode 600); anything else is refused before a byte is parsed. Errors name
the file, the entry's index and the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import scramp
import yaml
from scramp.utils import ScramException, saslprep

from appliance.identity.enrollment import NAME_RULE, EnrollmentError, validate_group, validate_identity
from appliance.identity.private_file import read_private_file
from appliance.identity.sasl import SCRAM_DIGESTS, ScramShape, StoredScram

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MAX_FILE_BYTES = 1 << 20
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 1_000_000
MAX_FIELD_BYTES = 255
_SCRAM_KEY_FIELDS = ("salt", "stored_key", "server_key", "iterations")
_COMMON_FIELDS = ("mechanism", "username", "identity", "groups")


class StaticCredentialsError(ValueError):
    """A credentials file that cannot be used, naming the file, the entry and the key."""


@dataclass(frozen=True, slots=True)
class StaticIdentity:
    """Who a static login is."""

    identity: str
    groups: tuple[str, ...]
    mechanism: str
    username: str


@dataclass(frozen=True, slots=True)
class _PlainEntry:
    password_digest: bytes = field(repr=False)
    who: StaticIdentity


@dataclass(frozen=True, slots=True)
class _ScramEntry:
    stored: StoredScram
    who: StaticIdentity


# Compared against when the username is unknown, so that the check costs the same.
_ABSENT_DIGEST = hashlib.sha256(os.urandom(32)).digest()


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    path: str
    plain: Mapping[str, _PlainEntry] = field(repr=False)
    scram: Mapping[tuple[str, str], _ScramEntry] = field(repr=False)

    def __len__(self) -> int:
        return len(self.plain) + len(self.scram)

    def check_plain(self, username: str, password: str) -> StaticIdentity | None:
        """The identity for a PLAIN login, or None when the username or password is wrong."""
        entry = self.plain.get(username)
        given = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
        matches = hmac.compare_digest(given, entry.password_digest if entry else _ABSENT_DIGEST)
        return entry.who if entry is not None and matches else None

    def scram_lookup(self, mechanism: str) -> "ScramLookupOf":
        """The `lookup` a `ScramServerExchange` for this mechanism needs (it also carries the users' shape)."""
        if mechanism not in SCRAM_DIGESTS:
            raise ValueError(f"{mechanism!r} is not a SCRAM mechanism; use SCRAM-SHA-256 or SCRAM-SHA-512")
        return ScramLookupOf(self, mechanism, self.unknown_user_shape(mechanism))

    def unknown_user_shape(self, mechanism: str) -> ScramShape:
        """The most common iteration count and salt length among this mechanism's users.

        Given to `ScramServerExchange`, it makes an unknown user's made-up
        credential look like a real one when the file uses other than the defaults.
        """
        shapes = Counter(
            (e.stored.iterations, len(e.stored.salt)) for (m, _), e in self.scram.items() if m == mechanism
        )
        if not shapes:
            return ScramShape()
        (iterations, salt_bytes), _ = shapes.most_common(1)[0]
        return ScramShape(iterations=iterations, salt_bytes=salt_bytes)

    def identity(self, mechanism: str, username: str) -> StaticIdentity | None:
        """Who a login that has already been verified is (for SCRAM, after the exchange succeeded)."""
        if mechanism == "PLAIN":
            entry = self.plain.get(username)
        else:
            entry = self.scram.get((mechanism, username))
        return entry.who if entry is not None else None


@dataclass(frozen=True, slots=True)
class ScramLookupOf:
    """username -> StoredScram | None for one mechanism; `unknown_user_shape` is read by ScramServerExchange."""

    credentials: StaticCredentials = field(repr=False)
    mechanism: str
    unknown_user_shape: ScramShape

    def __call__(self, username: str) -> StoredScram | None:
        entry = self.credentials.scram.get((self.mechanism, username))
        return entry.stored if entry is not None else None


def _read_private_file(path: Path, owner_uid: int) -> bytes:
    return read_private_file(path, owner_uid=owner_uid, max_bytes=MAX_FILE_BYTES, name="static credentials file",
                             readable="its secrets", error=StaticCredentialsError)


def load_static_credentials(path: str | os.PathLike, *, owner_uid: int = 0) -> StaticCredentials:
    """Read, check and index the file; SCRAM passwords become stored keys here, once.

    `owner_uid` is root in production; tests that cannot create root-owned files pass their own.
    """
    path = Path(path)
    data = _read_private_file(path, owner_uid)
    try:
        document = yaml.safe_load(data.decode("utf-8", "strict"))
    except UnicodeDecodeError as e:
        raise StaticCredentialsError(f"{path}: is not valid UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise StaticCredentialsError(f"{path}: YAML error{where}: {problem}") from None
    if document is None:
        document = {"credentials": []}
    if not isinstance(document, dict) or set(document) != {"credentials"}:
        raise StaticCredentialsError(f"{path}: must be a mapping with exactly one key, 'credentials' (a list)")
    entries = [] if document["credentials"] is None else document["credentials"]
    if not isinstance(entries, list):
        raise StaticCredentialsError(f"{path}: 'credentials' must be a list of entries")

    plain: dict[str, _PlainEntry] = {}
    scram: dict[tuple[str, str], _ScramEntry] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(entries):
        where = f"{path}: credentials[{index}]"
        mechanism, username, who, secret = _parse_entry(raw, where)
        key = (mechanism, username)
        if key in first_seen:
            raise StaticCredentialsError(
                f"{where}: {mechanism} user {username!r} is already defined by credentials[{first_seen[key]}]"
            )
        first_seen[key] = index
        if mechanism == "PLAIN":
            plain[username] = _PlainEntry(hashlib.sha256(secret.encode()).digest(), who)
        else:
            scram[key] = _ScramEntry(secret, who)
    return StaticCredentials(str(path), MappingProxyType(plain), MappingProxyType(scram))


def _text(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if value is None:
        raise StaticCredentialsError(f"{where}: key {key!r} is missing")
    if not isinstance(value, str):
        raise StaticCredentialsError(f"{where}: key {key!r} must be a string, got {type(value).__name__} (quote it)")
    if not value or len(value.encode()) > MAX_FIELD_BYTES or "\x00" in value:
        raise StaticCredentialsError(f"{where}: key {key!r} must be 1-{MAX_FIELD_BYTES} bytes without NUL")
    return value


def _parse_entry(raw: Any, where: str) -> tuple[str, str, StaticIdentity, Any]:
    if not isinstance(raw, dict):
        raise StaticCredentialsError(f"{where}: must be a mapping, got {type(raw).__name__}")
    mechanism = raw.get("mechanism")
    if mechanism not in MECHANISMS:
        raise StaticCredentialsError(f"{where}: key 'mechanism' is {mechanism!r}; use one of {', '.join(MECHANISMS)}")
    has_keys = [k for k in _SCRAM_KEY_FIELDS if k in raw]
    if mechanism == "PLAIN":
        allowed = (*_COMMON_FIELDS, "password")
    else:
        allowed = (*_COMMON_FIELDS, "password", *_SCRAM_KEY_FIELDS)
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise StaticCredentialsError(f"{where}: unknown key {unknown[0]!r} for {mechanism}; expected {', '.join(allowed)}")

    username = _text(raw, "username", where)
    identity = _text(raw, "identity", where)
    try:
        validate_identity(identity)
    except EnrollmentError as e:
        raise StaticCredentialsError(f"{where}: key 'identity': {e}") from None
    groups = raw.get("groups") or []
    if not isinstance(groups, list):
        raise StaticCredentialsError(f"{where}: key 'groups' must be a list of group names")
    for g in groups:
        try:
            validate_group(g if isinstance(g, str) else "")
        except EnrollmentError:
            raise StaticCredentialsError(f"{where}: key 'groups': {g!r} is not a valid group name ({NAME_RULE})") from None

    if mechanism == "PLAIN":
        secret: Any = _text(raw, "password", where)
    else:
        try:
            username = saslprep(username)  # as the SCRAM exchange will present it
        except ScramException as e:
            raise StaticCredentialsError(f"{where}: key 'username' cannot be used with SCRAM ({e.args[0]})") from None
        if "password" in raw and has_keys:
            raise StaticCredentialsError(f"{where}: give either 'password' or the stored keys ({', '.join(_SCRAM_KEY_FIELDS)}), not both")
        if "password" in raw:
            secret = _derive(mechanism, _text(raw, "password", where), where)
        else:
            secret = _stored_keys(mechanism, raw, where)
    who = StaticIdentity(identity=identity, groups=tuple(dict.fromkeys(groups)), mechanism=mechanism, username=username)
    return mechanism, username, who, secret


def _derive(mechanism: str, password: str, where: str) -> StoredScram:
    try:
        salt, stored_key, server_key, iterations = scramp.ScramMechanism(mechanism).make_auth_info(password)
    except ScramException as e:
        raise StaticCredentialsError(f"{where}: key 'password' cannot be used with SCRAM ({e.args[0]})") from None
    return StoredScram(salt, stored_key, server_key, iterations)


def _stored_keys(mechanism: str, raw: dict, where: str) -> StoredScram:
    missing = [k for k in _SCRAM_KEY_FIELDS if k not in raw]
    if missing:
        raise StaticCredentialsError(
            f"{where}: key {missing[0]!r} is missing; a {mechanism} entry needs 'password' or all of {', '.join(_SCRAM_KEY_FIELDS)}"
        )
    digest_size = SCRAM_DIGESTS[mechanism]().digest_size
    decoded = {}
    for key in ("salt", "stored_key", "server_key"):
        value = raw[key]
        if not isinstance(value, str):
            raise StaticCredentialsError(f"{where}: key {key!r} must be a base64 string")
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise StaticCredentialsError(f"{where}: key {key!r} is not valid base64") from None
    if not 8 <= len(decoded["salt"]) <= 128:
        raise StaticCredentialsError(f"{where}: key 'salt' must decode to 8-128 bytes, got {len(decoded['salt'])}")
    for key in ("stored_key", "server_key"):
        if len(decoded[key]) != digest_size:
            raise StaticCredentialsError(
                f"{where}: key {key!r} must decode to {digest_size} bytes for {mechanism}, got {len(decoded[key])}"
            )
    iterations = raw["iterations"]
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise StaticCredentialsError(
            f"{where}: key 'iterations' must be a whole number from {MIN_ITERATIONS} to {MAX_ITERATIONS}, got {iterations!r}"
        )
    return StoredScram(decoded["salt"], decoded["stored_key"], decoded["server_key"], iterations)
