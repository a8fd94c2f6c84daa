"""The workload's own SASL, terminated by the proxy (pure): SaslHandshake and SaslAuthenticate v0-v2.

The proxy always answers these itself; they never reach the broker, which the
appliance authenticates to with its own credentials. A workload proves who
it is with an OIDC token (OAUTHBEARER, RFC 7628) or, while it migrates, with
a static credential from the root-only migration file (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512). What it proves is then bound to its cgroup's enrolment
(`appliance.identity.binding`): a valid proof that disagrees with the
enrolment is a mismatch and is refused.

A token is verified by the shell (its keys may need fetching):
`authenticate` returns `VerifyToken`, and the shell hands the result to
`token_verified`. Every other step answers at once with a `Reply`.

Every failure answers SASL_AUTHENTICATION_FAILED with a message a person can
act on (never a secret, never the token), after which the session closes, as
Kafka's broker does. Success answers the session lifetime (KIP-368): the
lesser of the token's remaining life and `max_lifetime_s`; the workload must
re-authenticate on the same connection before it runs out, as the same
identity, or the session is closed as expired. `finished` holds the outcome
of the exchange that ended last, for the audit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from kio.schema.errors import ErrorCode

from appliance.identity import sasl
from appliance.identity.binding import Binding, Bound, Mismatch, Proof, bind
from appliance.identity.enrollment import validate_group, validate_identity
from appliance.policy.model import Principal

# The mechanisms the proxy offers, in the order it prefers them.
MECHANISMS = sasl.MECHANISMS_OFFERED
_STATIC = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_ACCEPTS = "OAUTHBEARER with a token from the configured identity provider, or a static migration credential"


@dataclass(frozen=True, slots=True)
class Reply:
    """The SaslAuthenticate answer: bytes for the client, an error (NONE to go on), and the session lifetime."""

    auth_bytes: bytes = b""
    error: ErrorCode = ErrorCode.none
    message: str | None = None
    lifetime_ms: int = 0

    @property
    def failed(self) -> bool:
        return self.error != ErrorCode.none


@dataclass(frozen=True, slots=True)
class VerifyToken:
    """The shell must verify `token` and give the result to `WorkloadSasl.token_verified`."""

    token: str


@dataclass(frozen=True, slots=True)
class Finished:
    """How an exchange ended, for the audit."""

    kind: str  # initial | reauth
    mechanism: str
    ok: bool
    reason: str
    proof: Proof | None = None
    principal: Principal | None = None
    expires_at: float | None = None  # when the session must have re-authenticated by


# (identity) -> the reason static credentials are refused for it, or None
StaticPolicy = Callable[[str], str | None]
# (proof, the session's identity, now) -> the revocation that covers it, described, or None
Revocations = Callable[[Proof, str, float], str | None]


class WorkloadSasl:
    def __init__(self, binding: Binding, *, statics=None, static_refused: StaticPolicy | None = None,
                 revoked: Revocations | None = None, tokens_configured: bool = False,
                 max_lifetime_s: float = 3600.0, identity_of=None) -> None:
        self.binding = binding
        self._statics = statics  # an appliance.identity.static_credentials.StaticCredentials, or None
        self._static_refused = static_refused or (lambda identity: None)
        self._revoked = revoked or (lambda proof, identity, now: None)
        self._tokens_configured = tokens_configured
        self.max_lifetime_s = max_lifetime_s
        # (ValidToken) -> Proof: how the token's claims name the workload (the verifier's configuration).
        self._identity_of = identity_of or _proof_of_token
        self.principal: Principal | None = None if binding.mode.requires_proof else binding.principal
        self.proof: Proof | None = None
        self.expires_at: float | None = None  # re-authenticate by then, or the session ends
        self.finished: Finished | None = None
        self._mechanism: str | None = None
        self._scram = None
        self._waiting_token = False
        self._authzid: str | None = None  # what the client asked to act as (GS2 'a=' / PLAIN authzid), if anything

    # ---- what the session asks ------------------------------------------------------

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    @property
    def in_exchange(self) -> bool:
        return self._mechanism is not None

    @property
    def _kind(self) -> str:
        return "reauth" if self.proof is not None else "initial"

    def handshake(self, mechanism: str, version: int = 1) -> tuple[ErrorCode, tuple[str, ...]]:
        """The SaslHandshake answer: (error, the mechanisms offered).

        SaslHandshake v0 is answered UNSUPPORTED_VERSION: after it a client sends its SASL tokens raw, with
        no request header, and the proxy reads SASL only in SaslAuthenticate requests (every client that
        knows SaslAuthenticate sends v1). v0 stays in the ApiVersions answer: librdkafka's feature check
        wants it there before it will do SASL at all.
        """
        if version == 0:
            return ErrorCode.unsupported_version, MECHANISMS
        if self._waiting_token or self._scram is not None:
            self._mechanism = None
            return ErrorCode.illegal_sasl_state, MECHANISMS
        if mechanism not in MECHANISMS:
            return ErrorCode.unsupported_sasl_mechanism, MECHANISMS
        if self.proof is not None and mechanism != self.proof.mechanism:
            # Kafka, too, re-authenticates only with the mechanism the connection authenticated with.
            return ErrorCode.unsupported_sasl_mechanism, (self.proof.mechanism,)
        self._mechanism = mechanism
        return ErrorCode.none, MECHANISMS

    def authenticate(self, auth_bytes: bytes, now: float) -> Reply | VerifyToken:
        mechanism = self._mechanism
        if mechanism is None:
            return self._fail("?", "SaslAuthenticate arrived before a SaslHandshake chose a mechanism")
        try:
            if mechanism == "OAUTHBEARER":
                return self._oauthbearer(auth_bytes)
            if mechanism == "PLAIN":
                return self._plain(auth_bytes, now)
            return self._scram_step(mechanism, auth_bytes, now)
        except sasl.SaslError as e:
            message = str(e)
            if mechanism.startswith("SCRAM") and e.audit_reason:
                # The same words for an unknown user and a wrong password: nothing tells which.
                message = f"{message}; the appliance accepts {_ACCEPTS}"
            return self._fail(mechanism, message, e.audit_reason)

    def token_verified(self, result, now: float) -> Reply:
        """The verifier's answer for the token `authenticate` asked about: a ValidToken or a TokenRejected."""
        self._waiting_token = False
        reason = getattr(result, "reason", None)
        if reason is not None:
            return self._fail("OAUTHBEARER", f"the token was refused: {reason}")
        try:
            proof = self._identity_of(result)
        except ValueError as e:
            return self._fail("OAUTHBEARER", f"the token was refused: {e}")
        return self._accept(proof, now)

    # ---- mechanisms ---------------------------------------------------------------------

    def _oauthbearer(self, auth_bytes: bytes) -> Reply | VerifyToken:
        if not self._tokens_configured:
            return self._fail("OAUTHBEARER", "no identity provider is configured on the appliance, so no token "
                                             "can be validated; ask its operator to configure identity.providers")
        initial = sasl.parse_oauthbearer(auth_bytes)
        self._authzid = initial.authzid
        self._waiting_token = True
        return VerifyToken(initial.token)

    def _plain(self, auth_bytes: bytes, now: float) -> Reply:
        credentials = sasl.parse_plain(auth_bytes)
        entry = None if self._statics is None else self._statics.check_plain(credentials.username,
                                                                             credentials.password)
        if entry is None:
            return self._unknown_static("PLAIN", credentials.username)
        if credentials.authzid is not None and credentials.authzid != credentials.username:
            # As Kafka's PlainSaslServer: a PLAIN login may not ask to act as someone else.
            return self._fail("PLAIN", f"the authorization id {_shown(credentials.authzid)} is not the username "
                                       f"{_shown(credentials.username)}; leave it empty (NUL username NUL password)")
        return self._accept(_proof_of_static("PLAIN", entry), now)

    def _scram_step(self, mechanism: str, auth_bytes: bytes, now: float) -> Reply:
        if self._scram is None:
            if self._statics is None:
                return self._unknown_static(mechanism, None)
            self._scram = sasl.ScramServerExchange(mechanism, self._statics.scram_lookup(mechanism))
            return Reply(self._scram.first(auth_bytes))
        exchange, self._scram = self._scram, None
        server_final = exchange.final(auth_bytes)
        entry = self._statics.identity(mechanism, exchange.username)
        return self._accept(_proof_of_static(mechanism, entry), now, server_final)

    # ---- ends ------------------------------------------------------------------------------

    def _unknown_static(self, mechanism: str, username: str | None) -> Reply:
        who = f" for user {username!r}" if username else ""
        return self._fail(mechanism, f"{mechanism} credentials{who} are not known to the appliance; it accepts "
                                     f"{_ACCEPTS}", "unknown static credential")

    def _accept(self, proof: Proof, now: float, server_bytes: bytes = b"") -> Reply:
        mechanism, kind = self._mechanism or proof.mechanism, self._kind
        authzid, self._authzid = self._authzid, None
        if authzid is not None and authzid != proof.identity:
            # As Kafka's OAuthBearerSaslServer: the client asked to act as someone the token does not name.
            return self._fail(mechanism, f"the authorization id {_shown(authzid)} in the GS2 header is not the "
                                         f"token's identity {_shown(proof.identity)}; send 'n,,' (no authorization "
                                         f"id) or 'n,a={proof.identity},'")
        if proof.method == "static":
            refused = self._static_refused(proof.identity)
            if refused is not None:
                return self._fail(mechanism, f"static credentials are not accepted for identity "
                                             f"{proof.identity!r}: {refused}; authenticate with OAUTHBEARER")
        bound = bind(self.binding, proof)
        if isinstance(bound, Mismatch):
            return self._fail(mechanism, f"identity mismatch: {bound.reason}", "mismatch")
        assert isinstance(bound, Bound)
        revoked = self._revoked(proof, bound.principal.identity, now)
        if revoked is not None:
            return self._fail(mechanism, f"the credential is revoked: {revoked}", "revoked")
        if self.proof is not None and bound.principal.identity != self.principal.identity:
            return self._fail(mechanism, f"re-authentication as {bound.principal.identity!r} on a session of "
                                         f"{self.principal.identity!r}: the identity may not change mid-session",
                              "identity changed")
        lifetime = self.max_lifetime_s
        if proof.expires_at is not None:
            lifetime = min(lifetime, proof.expires_at - now)
        if lifetime <= 0:
            return self._fail(mechanism, "the token has expired")
        self.principal, self.proof = bound.principal, proof
        self.expires_at = now + lifetime
        self._mechanism = None
        said = f"authenticated as {bound.principal}"
        if proof.method == "static":  # flagged, so the migration's last users can be found
            said = f"static credential presented ({mechanism} user {proof.username!r}); {said}"
        self.finished = Finished(kind, mechanism, True, said, proof, bound.principal, self.expires_at)
        return Reply(server_bytes, lifetime_ms=max(1, math.floor(lifetime * 1000)))

    def _fail(self, mechanism: str, message: str, audit_reason: str | None = None) -> Reply:
        self._mechanism, self._scram, self._waiting_token, self._authzid = None, None, False, None
        reason = message if audit_reason is None else f"{message} ({audit_reason})"
        self.finished = Finished(self._kind, mechanism, False, reason)
        return Reply(error=ErrorCode.sasl_authentication_failed,
                     message=f"authentication failed ({mechanism}): {message}")


def _shown(name: str, limit: int = 64) -> str:
    """A client-supplied name, quoted (control characters escaped) and cut short, for a message."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _proof_of_token(token) -> Proof:
    """A ValidToken as a proof: its identity claim (`TokenRules.subject_claim`) names the workload."""
    validate_identity(token.subject, what="the token's identity claim")
    for group in token.groups:
        validate_group(group, what="a group in the token's groups claim")
    subject = token.claims.get("sub") if isinstance(token.claims.get("sub"), str) else token.subject
    return Proof("token", "OAUTHBEARER", token.subject, tuple(token.groups), subject=subject,
                 issuer=token.issuer, client_id=token.client_id, jti=token.jti, issued_at=token.issued_at,
                 expires_at=token.expires_at)


def _proof_of_static(mechanism: str, entry) -> Proof:
    return Proof("static", mechanism, entry.identity, tuple(entry.groups), username=entry.username)
