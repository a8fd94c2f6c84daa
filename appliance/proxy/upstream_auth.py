"""Authenticating the proxy to the broker with the appliance's own credentials (sans-io).

SaslHandshake v1 names the mechanism, then SaslAuthenticate v2 carries the
exchange: one message for PLAIN, two round trips for SCRAM (RFC 5802, via
scramp, which also verifies the server's signature). The workload never sees
any of it: it starts before the workload's first request is forwarded.
"""

from __future__ import annotations

import functools
import io
import struct

import scramp
import scramp.core
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_authenticate.v2.response import SaslAuthenticateResponse
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.sasl_handshake.v1.response import SaslHandshakeResponse
from kio.serial import entity_writer

from appliance.broker.credentials import UpstreamCredentials
from appliance.kafka import apis
from appliance.kafka.codec import DecodeError, decode_entity, response_body_offset, response_correlation_id
from appliance.kafka.framing import frame

MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")

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


def _error_text(response) -> str:
    code = response.error_code
    name = getattr(code, "name", str(code)).upper()
    message = getattr(response, "error_message", None)
    return f"{name}" + (f": {message}" if message else "")


class UpstreamAuthenticator:
    """Produces the frames to send and consumes the broker's answers until authenticated."""

    def __init__(self, credentials: UpstreamCredentials) -> None:
        if credentials.mechanism not in MECHANISMS:
            raise UpstreamAuthError(
                f"upstream mechanism {credentials.mechanism!r} is not supported; use one of {', '.join(MECHANISMS)}"
            )
        self.credentials = credentials
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
        return self._send(apis.SASL_HANDSHAKE, 1, SaslHandshakeRequest, SaslHandshakeRequest(mechanism=self.credentials.mechanism))

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
            response_correlation_id(response_frame)
        except DecodeError as e:
            raise UpstreamAuthError(str(e)) from None
        if self._step == "handshake":
            response = self._read(SaslHandshakeResponse, response_frame, apis.SASL_HANDSHAKE, 1)
            if int(response.error_code.value) != 0:
                raise UpstreamAuthError(
                    f"broker refused SASL mechanism {self.credentials.mechanism}: {_error_text(response)}; "
                    f"it offers {', '.join(response.mechanisms) or 'none'}"
                )
            creds = self.credentials
            if creds.mechanism == "PLAIN":
                self._step = "final"
                return self._authenticate(f"\0{creds.username}\0{creds.password}".encode())
            self._scram = scramp.ScramClient([creds.mechanism], creds.username, creds.password)
            self._step = "server-first"
            return self._authenticate(self._scram.get_client_first().encode())
        response = self._read(SaslAuthenticateResponse, response_frame, apis.SASL_AUTHENTICATE, 2)
        if int(response.error_code.value) != 0:
            raise UpstreamAuthError(
                f"broker refused the appliance's {self.credentials.mechanism} credentials for user "
                f"{self.credentials.username!r}: {_error_text(response)}"
            )
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
