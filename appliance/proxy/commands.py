"""What a session asks the I/O shell to do."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.audit.records import AuditRecord


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToUpstream:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close both sides; `reason` lands in the session's audit row. `delay_s`: stop reading now, close
    after that long (a failed authentication, so the client reads its answer and guessing is slowed)."""

    reason: str
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Audit:
    record: AuditRecord


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # debug | info | warning | error
    message: str


@dataclass(frozen=True, slots=True)
class VerifyToken:
    """Verify the workload's token (the keys may need fetching) and answer with a `TokenVerified` event."""

    token: str

    def __repr__(self) -> str:  # a token is a credential: never in a log line
        return f"VerifyToken(<{len(self.token)} characters>)"


@dataclass(frozen=True, slots=True)
class RefreshUpstreamToken:
    """Ask the credential source for a fresh secret (`refresh_now`): the broker refused the appliance's token,
    or the one held would not outlive the session it should renew. `reason` is for the log."""

    reason: str


Command = SendToClient | SendToUpstream | CloseConnection | Audit | Log | VerifyToken | RefreshUpstreamToken
