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


@dataclass(frozen=True, slots=True)
class SteerBrokers:
    """Before any later `SendToClient` of this session reaches the workload: add `steer` to the kernel's
    steered brokers, mark `outside` refused for enrolled workloads (when discovery says so), and resolve
    `names` ((host name, port)), deciding each address through discovery; client bytes are held until
    then. A failure answers with a `DiscoveryFailed` event, and what was held is never sent."""

    steer: tuple[tuple[str, int], ...] = ()
    outside: tuple[tuple[str, int], ...] = ()
    names: tuple[tuple[str, int], ...] = ()


Command = SendToClient | SendToUpstream | CloseConnection | Audit | Log | VerifyToken | RefreshUpstreamToken | SteerBrokers


@dataclass(frozen=True, slots=True)
class HoldForApproval:
    """A request `effect: approve` rules hold: file (or join) the approval requests for `needs` and answer the
    session with `ApprovalDecided` once they are decided or the hold runs out. Until then the session
    sends nothing more upstream for the workload: its later requests wait behind this one."""

    needs: tuple  # approvals.model.Need
    api: str


@dataclass(frozen=True, slots=True)
class GrantsUsed:
    """A request went on under these approvals' grants: the shell audits each grant's first use per session."""

    grants: tuple
