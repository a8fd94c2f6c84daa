"""The workload's side of SASL, terminated by the proxy: message parsers and exchanges (sans-io).

The proxy answers SaslHandshake and SaslAuthenticate itself and decides who
the workload is from what it proves here:

- OAUTHBEARER (RFC 7628): one client message carrying a bearer token, which
  `parse_oauthbearer` takes apart; the token itself is checked by
  `appliance.identity.tokens`. A refusal is the JSON challenge of
  `oauthbearer_error_challenge`; the client answers it with a lone 0x01 and the
  exchange then fails, as Kafka's own broker does it.
- PLAIN (RFC 4616): one message, `parse_plain`.
- SCRAM-SHA-256/512 (RFC 5802): two round trips, `ScramServerExchange`, over
  scramp's server side, with stored keys only (the password never needs to be
  known to the appliance).

Every byte here comes from an unauthenticated client. Each fault raises
`SaslError` with a message that names what was wrong and never echoes a
secret or a whole token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable, Literal

import scramp
from scramp.utils import ServerError

MECHANISMS_OFFERED = ("OAUTHBEARER", "SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")

# The client's answer to an OAUTHBEARER error challenge (RFC 7628 section 3.2.3).
OAUTHBEARER_ERROR_ACK = b"\x01"

DEFAULT_MAX_TOKEN_BYTES = 16 * 1024
_MAX_EXTENSIONS = 32
_MAX_EXTENSION_BYTES = 4096  # all extension keys and values together
_MAX_SASLNAME_BYTES = 255

_KVSEP = "\x01"
_EXTENSION_KEY = re.compile(r"[A-Za-z]+")
# RFC 7628: value = *(VCHAR / SP / HTAB / CR / LF)
_EXTENSION_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")
# RFC 6750: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER = re.compile(r"([A-Za-z]+) +(.*)", re.DOTALL)


class SaslError(ValueError):
    """A SASL message or exchange that fails, with a message safe to send to the client.

    `audit_reason` says, for the audit only, what exactly failed when the
    client must not be told (for SCRAM: unknown user versus wrong password).
    """

    def __init__(self, message: str, *, audit_reason: str | None = None) -> None:
        super().__init__(message)
        self.audit_reason = audit_reason or message


def _shown(text: str, limit: int = 32) -> str:
    """A client-supplied name, quoted and cut short, for an error message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _decode_utf8(data: bytes, what: str) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SaslError(f"{what}: expected bytes, got {type(data).__name__}")
    try:
        return bytes(data).decode("utf-8", "strict")
    except UnicodeDecodeError as e:
        raise SaslError(f"{what}: not valid UTF-8 (byte {e.start})") from None


# --- GS2 header (RFC 5801), shared by OAUTHBEARER and SCRAM --------------------------------------


def _parse_saslname(raw: str, what: str) -> str:
    """RFC 5801 saslname: UTF-8 without NUL, ',' or '=', except '=2C' and '=3D' for ',' and '='."""
    if not raw:
        raise SaslError(f"{what}: the authorization id after 'a=' is empty")
    if len(raw.encode()) > _MAX_SASLNAME_BYTES:
        raise SaslError(f"{what}: the authorization id is longer than {_MAX_SASLNAME_BYTES} bytes")
    if "\x00" in raw:
        raise SaslError(f"{what}: the authorization id contains a NUL character")
    out = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "=":
            escape = raw[i:i + 3]
            if escape == "=2C":
                out.append(",")
            elif escape == "=3D":
                out.append("=")
            else:
                raise SaslError(
                    f"{what}: the authorization id has '=' at position {i} not followed by '2C' or '3D' "
                    "(write ',' as '=2C' and '=' as '=3D')"
                )
            i += 3
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_gs2_header(message: str, what: str) -> tuple[str | None, str]:
    """Split `n,[a=authzid],rest` into (authzid or None, rest); channel binding is refused."""
    if message.startswith("p=") or message.startswith("y,"):
        raise SaslError(f"{what}: channel binding (GS2 flag {message[0]!r}) is not supported; send 'n,'")
    if not message.startswith("n,"):
        raise SaslError(f"{what}: GS2 header must start with 'n,' (no channel binding)")
    end = message.find(",", 2)
    if end < 0:
        raise SaslError(f"{what}: GS2 header is not terminated by ',' (expected 'n,,' or 'n,a=<authzid>,')")
    raw_authzid = message[2:end]
    if raw_authzid == "":
        return None, message[end + 1:]
    if not raw_authzid.startswith("a="):
        raise SaslError(f"{what}: GS2 header's second field must be empty or 'a=<authzid>'")
    return _parse_saslname(raw_authzid[2:], what), message[end + 1:]


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


# --- OAUTHBEARER (RFC 7628) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OAuthBearerInitial:
    token: str = field(repr=False)  # a credential: never in a repr or a log line
    authzid: str | None
    extensions: dict[str, str]


def parse_oauthbearer(initial: bytes, *, max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> OAuthBearerInitial:
    """The client's initial response: GS2 header, then 0x01-separated key=value pairs, then 0x01 0x01."""
    what = "OAUTHBEARER initial response"
    limit = max_token_bytes + _MAX_EXTENSION_BYTES + _MAX_SASLNAME_BYTES + 64
    if isinstance(initial, (bytes, bytearray, memoryview)) and len(initial) > limit:
        raise SaslError(f"{what}: {len(initial)} bytes is more than the {limit} allowed (token limit {max_token_bytes} bytes)")
    message = _decode_utf8(initial, what)
    authzid, rest = parse_gs2_header(message, what)
    if not rest.startswith(_KVSEP):
        raise SaslError(f"{what}: the GS2 header must be followed by 0x01")
    if not rest.endswith(_KVSEP * 2) or len(rest) < 3:
        raise SaslError(f"{what}: must end with 0x01 0x01 after the last key=value pair")
    pairs = rest[1:-2].split(_KVSEP)
    token: str | None = None
    extensions: dict[str, str] = {}
    extension_bytes = 0
    for index, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SaslError(f"{what}: pair {index} has no '=' (expected key=value)")
        if not _EXTENSION_KEY.fullmatch(key):
            raise SaslError(f"{what}: pair {index} has key {_shown(key)}; keys are ASCII letters only")
        if key == "auth":
            if token is not None:
                raise SaslError(f"{what}: 'auth' is given more than once")
            token = _parse_bearer(value, what, max_token_bytes)
            continue
        if key in extensions:
            raise SaslError(f"{what}: extension {key!r} is given more than once")
        if not _EXTENSION_VALUE.fullmatch(value):
            raise SaslError(f"{what}: extension {key!r} has a control or non-ASCII character in its value")
        extension_bytes += len(key) + len(value)
        if len(extensions) >= _MAX_EXTENSIONS or extension_bytes > _MAX_EXTENSION_BYTES:
            raise SaslError(f"{what}: more than {_MAX_EXTENSIONS} extensions or {_MAX_EXTENSION_BYTES} bytes of them")
        extensions[key] = value
    if token is None:
        raise SaslError(f"{what}: no 'auth=Bearer <token>' pair")
    return OAuthBearerInitial(token=token, authzid=authzid, extensions=extensions)


def _parse_bearer(value: str, what: str, max_token_bytes: int) -> str:
    match = _BEARER.fullmatch(value)
    if match is None or match.group(1).lower() != "bearer":
        raise SaslError(f"{what}: 'auth' must be 'Bearer <token>' (scheme 'Bearer', a space, then the token)")
    token = match.group(2)
    if not token:
        raise SaslError(f"{what}: the bearer token is empty")
    if len(token) > max_token_bytes:
        raise SaslError(f"{what}: the bearer token is {len(token)} bytes, more than the {max_token_bytes} allowed")
    if not _B64TOKEN.fullmatch(token):
        bad = next((i for i, ch in enumerate(token) if not re.fullmatch(r"[A-Za-z0-9\-._~+/=]", ch)), None)
        where = f"a character outside the b64token set at position {bad}" if bad is not None else "'=' before its end"
        raise SaslError(f"{what}: the bearer token has {where} (RFC 6750 b64token: A-Z a-z 0-9 - . _ ~ + / then '=' padding)")
    return token


def format_oauthbearer(token: str, authzid: str | None = None, extensions: dict[str, str] | None = None) -> bytes:
    """The client's initial response, as RFC 7628 writes it (for tests and tools)."""
    gs2 = "n," + (f"a={_escape_saslname(authzid)}" if authzid else "") + ","
    pairs = [f"auth=Bearer {token}"] + [f"{k}={v}" for k, v in (extensions or {}).items()]
    return (gs2 + _KVSEP + _KVSEP.join(pairs) + _KVSEP * 2).encode()


_STATUS = re.compile(r"[\x21-\x7e]{1,64}")


def oauthbearer_error_challenge(
    status: str = "invalid_token", scope: str | None = None, openid_configuration: str | None = None
) -> bytes:
    """The server's error message (RFC 7628 section 3.2.2), a JSON object the client acknowledges with 0x01."""
    if not _STATUS.fullmatch(status):
        raise ValueError(f"OAUTHBEARER error status {status!r} must be 1-64 printable ASCII characters")
    body: dict[str, str] = {"status": status}
    if scope is not None:
        body["scope"] = scope
    if openid_configuration is not None:
        body["openid-configuration"] = openid_configuration
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


# --- PLAIN (RFC 4616) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    authzid: str | None
    username: str
    password: str = field(repr=False)


_PLAIN_FIELD_LIMIT = 255  # RFC 4616: each of authzid, authcid and passwd is at most 255 octets


def parse_plain(data: bytes, *, max_field_bytes: int = _PLAIN_FIELD_LIMIT) -> PlainCredentials:
    """`[authzid] NUL authcid NUL passwd`, each field UTF-8 without NUL and at most 255 bytes."""
    what = "PLAIN message"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SaslError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > 3 * max_field_bytes + 2:
        raise SaslError(f"{what}: {len(data)} bytes is more than the {3 * max_field_bytes + 2} allowed")
    fields = data.split(b"\x00")
    if len(fields) != 3:
        raise SaslError(f"{what}: must have exactly two NUL separators ([authzid] NUL username NUL password), found {len(fields) - 1}")
    names = ("authorization id", "username", "password")
    decoded = []
    for name, raw in zip(names, fields):
        if len(raw) > max_field_bytes:
            raise SaslError(f"{what}: the {name} is {len(raw)} bytes, more than the {max_field_bytes} allowed")
        try:
            decoded.append(raw.decode("utf-8", "strict"))
        except UnicodeDecodeError as e:
            raise SaslError(f"{what}: the {name} is not valid UTF-8 (byte {e.start})") from None
    authzid, username, password = decoded
    if not username:
        raise SaslError(f"{what}: the username is empty")
    if not password:
        raise SaslError(f"{what}: the password is empty")
    return PlainCredentials(authzid=authzid or None, username=username, password=password)


# --- SCRAM (RFC 5802) ---------------------------------------------------------------------------

ScramMechanismName = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]
SCRAM_DIGESTS = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
_MAX_SCRAM_MESSAGE_BYTES = 2048


@dataclass(frozen=True, slots=True)
class StoredScram:
    """What a server keeps for one SCRAM user: enough to verify a proof, not to make one."""

    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    iterations: int


ScramLookup = Callable[[str], "StoredScram | None"]

# An unknown user gets a made-up credential of the usual shape, so that the
# exchange runs to the proof check and fails there exactly as a wrong password
# does. Its salt is derived from the name with a per-process secret, so asking
# twice for the same unknown user gives the same salt, as a real one would.
_FAKE_SALT_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class ScramShape:
    """What an unknown user's made-up credential looks like: that of most real users."""

    iterations: int = 4096  # scramp's and Kafka's default
    salt_bytes: int = 32  # as scramp makes salts


def _fake_credential(mechanism: str, username: str, shape: ScramShape) -> StoredScram:
    digest = SCRAM_DIGESTS[mechanism]().digest_size
    seed = hmac.new(_FAKE_SALT_SECRET, f"{mechanism}\0{username}".encode(), hashlib.sha512).digest()
    salt = (seed * (shape.salt_bytes // len(seed) + 1))[: shape.salt_bytes]
    return StoredScram(salt, secrets.token_bytes(digest), secrets.token_bytes(digest), shape.iterations)


class ScramServerExchange:
    """One SCRAM exchange with a workload: `first()` then `final()`; `username` once it succeeded.

    Proof failures raise a generic `SaslError` (the message Kafka's broker
    gives) whose `audit_reason` says whether the user was unknown or the proof
    wrong; malformed messages raise a specific one. After any failure the
    exchange is over.
    """

    def __init__(
        self,
        mechanism: ScramMechanismName,
        lookup: ScramLookup,
        *,
        unknown_user_shape: ScramShape | None = None,
        server_nonce: str | None = None,
    ) -> None:
        if mechanism not in SCRAM_DIGESTS:
            raise ValueError(f"SCRAM mechanism {mechanism!r} is not supported; use SCRAM-SHA-256 or SCRAM-SHA-512")
        self.mechanism = mechanism
        self._lookup = lookup
        # A lookup may say what its users look like (the static credentials' lookup does).
        self._unknown_user_shape = unknown_user_shape or getattr(lookup, "unknown_user_shape", None) or ScramShape()
        self._server = scramp.ScramMechanism(mechanism).make_server(self._auth_info, s_nonce=server_nonce)
        self._stage = "first"
        self._claimed_user: str | None = None
        self._user_known = False
        self._lookup_error: str | None = None
        self.username: str | None = None  # set when the proof has been verified

    @property
    def generic_failure(self) -> str:
        return f"Authentication failed during authentication due to invalid credentials with SASL mechanism {self.mechanism}"

    def _auth_info(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        self._claimed_user = username
        try:
            stored = self._lookup(username)
        except Exception as e:  # the lookup is the caller's; its fault must not look like a client's
            self._lookup_error = f"credential lookup failed: {type(e).__name__}"
            stored = None
        self._user_known = stored is not None
        if stored is None:
            stored = _fake_credential(self.mechanism, username, self._unknown_user_shape)
        return stored.salt, stored.stored_key, stored.server_key, stored.iterations

    def _fail(self, message: str, audit_reason: str | None = None) -> SaslError:
        self._stage = "failed"
        return SaslError(message, audit_reason=audit_reason)

    def _message(self, data: bytes, what: str) -> str:
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > _MAX_SCRAM_MESSAGE_BYTES:
            raise self._fail(f"{what}: {len(data)} bytes is more than the {_MAX_SCRAM_MESSAGE_BYTES} allowed")
        try:
            return _decode_utf8(data, what)
        except SaslError as e:
            raise self._fail(str(e)) from None

    def first(self, client_first: bytes) -> bytes:
        """The client-first message in, the server-first message (salt, iterations, nonce) out."""
        what = f"{self.mechanism} client-first message"
        if self._stage != "first":
            raise self._fail(f"{what} sent twice or after the exchange ended")
        message = self._message(client_first, what)
        try:
            authzid, bare = parse_gs2_header(message, what)
        except SaslError as e:
            raise self._fail(str(e)) from None
        if authzid is not None:
            # A SCRAM user may not ask to act as someone else; scramp takes no authzid at all.
            raise self._fail(f"{what}: an authorization id ('a=' in the GS2 header) is not supported; send 'n,,'")
        if any(part.startswith("tokenauth=") for part in bare.split(",")):
            raise self._fail(f"{what}: delegation tokens (tokenauth) are not supported")
        try:
            self._server.set_client_first(message)
            server_first = self._server.get_server_first()
        except scramp.ScramException as e:
            raise self._fail(f"{what}: {e.args[0] if e.args else 'malformed'}") from None
        self._stage = "final"
        return server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        """The client-final message (with the proof) in, the server-final message (server signature) out."""
        what = f"{self.mechanism} client-final message"
        if self._stage != "final":
            raise self._fail(f"{what} sent before the client-first message or after the exchange ended")
        message = self._message(client_final, what)
        user = _shown(self._claimed_user or "", 64)
        try:
            self._server.set_client_final(message)
            server_final = self._server.get_server_final()
        except scramp.ScramException as e:
            if e.server_error == ServerError.INVALID_PROOF:
                if self._lookup_error:
                    reason = f"{self._lookup_error} for user {user}"
                elif not self._user_known:
                    reason = f"unknown user {user}"
                else:
                    reason = f"bad proof (wrong password) for user {user}"
                raise self._fail(self.generic_failure, audit_reason=reason) from None
            detail = e.args[0] if e.args else "malformed"
            if "nonce" in str(detail).lower():
                detail = "the nonce is not the one this exchange started with"
            raise self._fail(f"{what}: {detail}", audit_reason=f"malformed {what} from user {user}: {detail}") from None
        self._stage = "done"
        self.username = self._claimed_user
        return server_final.encode()
