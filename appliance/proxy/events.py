"""What can happen to a proxied connection, as the session sees it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    """The TCP connection to the original broker address is open.

    `authenticated`: it comes from the pool, already authenticated with the
    appliance's credentials, so the session relays at once. `authenticated_at`
    and `session_lifetime_s`: when, and for how long the broker granted that
    authentication (KIP-368; None: no limit), so the session renews it in time.
    `pooled` False with `authenticated`: the session's own connection, which
    the TLS client certificate authenticated (no SASL with the brokers).
    """

    authenticated: bool = False
    authenticated_at: float | None = None
    session_lifetime_s: float | None = None
    pooled: bool = True


@dataclass(frozen=True, slots=True)
class ClientData:
    data: bytes


@dataclass(frozen=True, slots=True)
class UpstreamData:
    data: bytes


@dataclass(frozen=True, slots=True)
class ClientClosed:
    reason: str = "client closed the connection"


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    reason: str = "broker closed the connection"


@dataclass(frozen=True, slots=True)
class Revoked:
    """The workload's enrolment was withdrawn (or its identity otherwise revoked)."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """A deadline the shell keeps (connect, SASL, idle, request) ran out; the reason names which and how long."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientTlsFailed:
    """The workload's TLS, which the shell terminates, failed: in the handshake, or a bad record after it."""

    reason: str


@dataclass(frozen=True, slots=True)
class TokenVerified:
    """The shell's answer to a `VerifyToken` command: a `ValidToken` or a `TokenRejected`."""

    result: object


@dataclass(frozen=True, slots=True)
class UpstreamReauthenticationDue:
    """The appliance's own SASL session on the broker connection is due for renewal (the session's
    `upstream_reauthenticate_at` passed); `secret` is what the credential source holds now."""

    secret: object

    def __repr__(self) -> str:  # a password or a token: never in a log line
        return f"UpstreamReauthenticationDue(<{type(self.secret).__name__}>)"


@dataclass(frozen=True, slots=True)
class DiscoveryFailed:
    """A `SteerBrokers` could not be carried out (the kernel refused an endpoint, a name did not resolve in
    time): the answer naming them was not delivered, and the session ends with this reason."""

    reason: str


Event = UpstreamConnected | ClientData | UpstreamData | ClientClosed | UpstreamClosed | Revoked | DeadlinePassed | ClientTlsFailed | TokenVerified | UpstreamReauthenticationDue | DiscoveryFailed


@dataclass(frozen=True, slots=True)
class ApprovalDecided:
    """The shell's answer to `HoldForApproval`. `refusal`: None when every need was approved (the request is
    decided again and goes on under its grants); otherwise the reason what is not granted is refused with
    (denied, by whom and why; or still pending, with the request's id and how to approve it)."""

    refusal: str | None
