"""Authenticating the proxy to the broker with the appliance's own credentials (sans-io).

SaslHandshake v1 names the mechanism, then SaslAuthenticate v2 carries the
exchange: one message for PLAIN, two round trips for SCRAM (RFC 5802, via
scramp, which also verifies the server's signature), one for OAUTHBEARER
(RFC 7628: `n,,\x01auth=Bearer <token>\x01\x01`). The workload never sees
any of it: it starts before the workload's first request is forwarded.

What to authenticate with comes in ready: a password (`UpstreamCredentials`),
or for OAUTHBEARER the token the token source holds now (`BearerToken`), or
that it holds none (`TokenUnavailable`), in which case `start` fails with the
provider's error, so the session closes with that reason audited. A broker
that rejects the token answers with RFC 7628's error challenge, a JSON object;
the client must acknowledge it with a single 0x01 before the broker sends the
failure, and the failure names both.

KIP-368: a broker that bounds the session (SaslAuthenticate's
`session_lifetime_ms`; Kafka always does for OAUTHBEARER, by the token's
remaining lifetime, and for any mechanism with `connections.max.reauth.ms`)
ends the connection at its first request after that. The session
re-authenticates the connection before then with a fresh authenticator: the
same SaslHandshake and SaslAuthenticate, on the same connection, with the
credential source's current secret. `reauthentication_times` says when.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from typing import Protocol

import scramp
import scramp.core
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_writer

from appliance.broker.credentials import ClientCertificateOnly, UpstreamCredentials
from appliance.broker.oauth_token import BearerToken, TokenUnavailable
from appliance.identity.sasl import format_oauthbearer
from appliance.kafka import apis
from appliance.kafka.codec import DecodeError, decode_entity, response_body_offset, response_correlation_id
from appliance.kafka.framing import frame

MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "OAUTHBEARER")
# What a session authenticates its broker connection with, as the shell hands it over.
UpstreamSecret = UpstreamCredentials | BearerToken | TokenUnavailable | ClientCertificateOnly


class UpstreamCredentialSource(Protocol):
    """What the shell asks, per broker connection, for the secret to authenticate it with:
    `UpstreamCredentials` (itself, always) or the token source (its current token, never waiting)."""

    def current(self, now: float) -> UpstreamSecret: ...

    def refresh_now(self) -> None:
        """A broker refused the secret, or it would not outlive the session it should renew: get a fresh
        one soon (the token source; a password has nothing to refresh)."""


# When to re-authenticate a broker session of `lifetime` seconds (KIP-368): due at 85% of it, and at least
# REAUTH_LEAD_S before it ends. 85%: the token source replaces its token at 80% of the token's life, so by
# then it holds a fresh one and the new session gets nearly a whole token lifetime; the last 15% (45 s of a
# 5-minute token) leaves room to wait for the answers in flight first, and for a token the source is still
# fetching. The renewal starts, with whatever secret there is, no later than REAUTH_MARGIN_S before the end:
# that covers the shell's one-second sweep, the exchange's two round trips, and that the broker starts
# counting the lifetime before its answer reaches the appliance. A session too short for these
# re-authenticates at its half.
REAUTH_AT = 0.85
REAUTH_LEAD_S = 5.0
REAUTH_MARGIN_S = 3.0


def reauthentication_times(authenticated_at: float, lifetime_s: float) -> tuple[float, float]:
    """(due, latest): when to start re-authenticating a session the broker granted `lifetime_s` at
    `authenticated_at`, and the latest moment to start, with whatever secret there is, rather than wait
    for a fresher one."""
    due = max(min(REAUTH_AT * lifetime_s, lifetime_s - REAUTH_LEAD_S), lifetime_s / 2)
    latest = max(lifetime_s - REAUTH_MARGIN_S, due)
    return authenticated_at + due, authenticated_at + latest


def outlives(secret: UpstreamSecret, session_ends_at: float) -> bool:
    """Whether re-authenticating with `secret` would extend a session ending at `session_ends_at`: a password
    always does; a token only if it stays valid well beyond that (Kafka bounds the new session by the
    token's own expiry)."""
    if isinstance(secret, TokenUnavailable):
        return False
    if isinstance(secret, BearerToken):
        return secret.expires_at > session_ends_at + REAUTH_LEAD_S
    return True


# RFC 7628 3.2.2: the client's whole answer to the server's error challenge.
_OAUTHBEARER_ACK = b"\x01"
_MAX_CHALLENGE_TEXT = 300

# scramp derives the salted password afresh in every exchange: PBKDF2 with the
# broker's iteration count, 4096 rounds of SHA-512 by default, 1.7 ms of CPU on
# the event loop per upstream connection. The broker sends the same salt and
# count for the appliance's user every time, so the derivation is kept for the
# life of the process; it is no more secret than the password held anyway.
# scramp offers no hook for this, so its module-level function is wrapped once.
_derive_salted_password = scramp.core.hi


@functools.lru_cache(maxsize=16)
def _salted_password(hf, password: bytes, salt: bytes, iterations: int) -> bytes:
    return _derive_salted_password(hf, password, salt, iterations)


def _cached_hi(hf, password, salt, iterations) -> bytes:
    return _salted_password(hf, bytes(password), bytes(salt), int(iterations))


scramp.core.hi = _cached_hi
_CLIENT_ID = "appliance"


class UpstreamAuthError(RuntimeError):
    """The broker refused the appliance's credentials or broke the exchange."""


def _request(api_key: int, version: int, correlation_id: int, cls: type, entity) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">hhih", api_key, version, correlation_id, len(_CLIENT_ID)))
    out.write(_CLIENT_ID.encode())
    if cls.__flexible__:
        out.write(b"\0")
    entity_writer(cls)(out, entity)
    return frame(out.getvalue())


def _printable(text: str, limit: int = _MAX_CHALLENGE_TEXT) -> str:
    """Text from the broker made fit for one log line and audit reason."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _error_text(response) -> str:
    code = response.error_code
    name = getattr(code, "name", str(code)).upper()
    message = getattr(response, "error_message", None)
    return f"{name}" + (f": {_printable(message)}" if message else "")


def _challenge_text(challenge: bytes) -> str:
    """The broker's RFC 7628 error challenge, read defensively: its status (and scope), or its bytes."""
    try:
        data = json.loads(challenge)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("status"), str):
        text = f"status {data['status']}"
        if isinstance(data.get("scope"), str):
            text += f", scope {data['scope']}"
        return _printable(text)
    return "an error challenge that is not RFC 7628 JSON: " + _printable(challenge.decode("utf-8", "replace"))


class UpstreamAuthenticator:
    """Produces the frames to send and consumes the broker's answers until authenticated."""

    def __init__(self, credentials: UpstreamSecret) -> None:
        if isinstance(credentials, ClientCertificateOnly):
            self.mechanism = "none"  # the shell hands such connections over as authenticated; start() is a backstop
        elif isinstance(credentials, (BearerToken, TokenUnavailable)):
            self.mechanism = "OAUTHBEARER"
        elif credentials.mechanism in MECHANISMS[:3]:
            self.mechanism = credentials.mechanism
        elif credentials.mechanism == "OAUTHBEARER":
            raise UpstreamAuthError("OAUTHBEARER authenticates with the token source's current token "
                                    "(BearerToken), not with the credentials file's client")
        else:
            raise UpstreamAuthError(
                f"upstream mechanism {credentials.mechanism!r} is not supported; use one of {', '.join(MECHANISMS)}"
            )
        self.credentials = credentials
        self._challenge: str | None = None  # the broker's OAUTHBEARER error challenge, once acknowledged
        self.done = False
        self._step = "handshake"
        self._scram: scramp.ScramClient | None = None
        self._next_correlation = 1
        # How long the broker will honour this authentication (KIP-368); None: no limit.
        self.session_lifetime_s: float | None = None

    def _send(self, api_key: int, version: int, cls: type, entity) -> bytes:
        correlation_id = self._next_correlation
        self._next_correlation += 1
        return _request(api_key, version, correlation_id, cls, entity)

    def start(self) -> bytes:
        if isinstance(self.credentials, TokenUnavailable):
            raise UpstreamAuthError(f"the appliance holds no valid OAUTHBEARER token for the broker: "
                                    f"{self.credentials.reason}")
        if isinstance(self.credentials, ClientCertificateOnly):
            raise UpstreamAuthError("the appliance uses no SASL with the brokers (upstream_credentials is null); "
                                    f"its client certificate {self.credentials.certificate} names it")
        return self._send(apis.SASL_HANDSHAKE, 1, SaslHandshakeRequest, SaslHandshakeRequest(mechanism=self.mechanism))

    def _whose(self) -> str:
        if isinstance(self.credentials, BearerToken):
            return "the appliance's OAUTHBEARER token"
        return f"the appliance's {self.credentials.mechanism} credentials for user {self.credentials.username!r}"

    def _authenticate(self, payload: bytes) -> bytes:
        return self._send(apis.SASL_AUTHENTICATE, 2, SaslAuthenticateRequest, SaslAuthenticateRequest(auth_bytes=payload))

    @staticmethod
    def _read(cls: type, response_frame: bytes, api_key: int, version: int):
        """The broker's answer, bounds-checked and decoded; a frame that is not one is an authentication failure."""
        what = f"{apis.api_name(api_key)} v{version} response during upstream authentication"
        try:
            return decode_entity(cls, response_frame, response_body_offset(response_frame, api_key, version), what)
        except DecodeError as e:
            raise UpstreamAuthError(str(e)) from None

    def receive(self, response_frame: bytes) -> bytes | None:
        """Consume one broker frame; return the next frame to send, or None when done."""
        try:
            correlation_id = response_correlation_id(response_frame)
        except DecodeError as e:
            raise UpstreamAuthError(str(e)) from None
        if correlation_id != self._next_correlation - 1:
            raise UpstreamAuthError(f"broker answered correlation id {correlation_id}; the appliance's own SASL "
                                    f"request had {self._next_correlation - 1}")
        if self.done:
            raise UpstreamAuthError("broker sent another answer after authentication completed")
        if self._step == "handshake":
            response = self._read(SaslHandshakeResponse, response_frame, apis.SASL_HANDSHAKE, 1)
            if int(response.error_code.value) != 0:
                raise UpstreamAuthError(
                    f"broker refused SASL mechanism {self.mechanism}: {_error_text(response)}; "
                    f"it offers {', '.join(_printable(m, 40) for m in response.mechanisms[:16]) or 'none'}"
                )
            creds = self.credentials
            if isinstance(creds, BearerToken):
                self._step = "oauthbearer"
                return self._authenticate(format_oauthbearer(creds.value))
            if creds.mechanism == "PLAIN":
                self._step = "final"
                return self._authenticate(f"\0{creds.username}\0{creds.password}".encode())
            self._scram = scramp.ScramClient([creds.mechanism], creds.username, creds.password)
            self._step = "server-first"
            return self._authenticate(self._scram.get_client_first().encode())
        response = self._read(SaslAuthenticateResponse, response_frame, apis.SASL_AUTHENTICATE, 2)
        if int(response.error_code.value) != 0:
            challenge = f" (its error challenge: {self._challenge})" if self._challenge is not None else ""
            raise UpstreamAuthError(f"broker refused {self._whose()}: {_error_text(response)}{challenge}")
        if self._step == "oauthbearer-acknowledged":
            raise UpstreamAuthError(f"broker sent an OAUTHBEARER error challenge ({self._challenge}) and then "
                                    "reported success; the token is not taken as accepted")
        if self._step == "oauthbearer" and response.auth_bytes:
            # RFC 7628 3.2.2: a non-empty server message after the token is an error; acknowledge it,
            # and the broker answers with the failure itself.
            self._challenge = _challenge_text(bytes(response.auth_bytes))
            self._step = "oauthbearer-acknowledged"
            return self._authenticate(_OAUTHBEARER_ACK)
        try:
            if self._step == "server-first":
                self._scram.set_server_first(response.auth_bytes.decode("utf-8", "strict"))
                self._step = "final"
                return self._authenticate(self._scram.get_client_final().encode())
            if self._scram is not None:
                self._scram.set_server_final(response.auth_bytes.decode())
        except (scramp.ScramException, UnicodeDecodeError) as e:
            raise UpstreamAuthError(f"SCRAM exchange with the broker failed: {e}") from None
        lifetime = response.session_lifetime.total_seconds()
        self.session_lifetime_s = lifetime if lifetime > 0 else None
        self.done = True
        return None
