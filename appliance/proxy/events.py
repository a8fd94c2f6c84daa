"""What can happen to a proxied connection, as the session sees it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    """The TCP connection to the original broker address is open.

    `authenticated`: it comes from the pool, already authenticated with the
    appliance's credentials, so the session relays at once.
    """

    authenticated: bool = False


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
class TokenVerified:
    """The shell's answer to a `VerifyToken` command: a `ValidToken` or a `TokenRejected`."""

    result: object


Event = UpstreamConnected | ClientData | UpstreamData | ClientClosed | UpstreamClosed | Revoked | DeadlinePassed | TokenVerified
