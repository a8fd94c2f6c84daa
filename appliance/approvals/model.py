"""Approval requests, votes and grants as pure data and pure rules (no clock, no file).

A request is filed for one workload identity and one `effect: approve` rule,
naming what it needs (operation, resource type, resource name). People vote:
an approver must be the local root operator (the CLI) or in one of the rule's
approver groups, never the requester, at most once. A denial decides at once;
`approvals` distinct approvals approve it and make a grant. A request nobody
decided by its `expires_at` expires. A grant covers its identity, rule and
operation on the resources it names (`scope: requested`) or on whatever the
rule matches (`scope: rule`), until it ends or is revoked.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from enum import StrEnum

from appliance.policy.model import Approval, GrantScope

OPERATOR = "operator:root"  # the local root operator, as the CLI votes


class ApprovalError(ValueError):
    """A vote or revocation that cannot be taken; the message says why, for the person and the audit."""


class State(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True, order=True)
class Need:
    """One decision an approve rule made: this operation on this resource needs a person's approval."""

    rule: str
    operation: str
    resource: str  # a ResourceType value
    name: str | None

    def describe(self) -> str:
        return f"{self.operation} on {self.resource} {self.name!r}" if self.name is not None else \
            f"{self.operation} on the {self.resource}"


@dataclass(frozen=True, slots=True)
class Approver:
    """Who votes: `name` as audited, the groups the identity provider gave them, and whether it is the operator."""

    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_operator(self) -> bool:
        return self.name == OPERATOR


@dataclass(frozen=True, slots=True)
class Vote:
    approver: str
    approve: bool
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    id: str
    rule: str
    identity: str
    groups: tuple[str, ...]
    needs: tuple[Need, ...]
    api: str  # the Kafka API that asked, e.g. CreateTopics
    session_id: str
    cgroup_path: str | None
    created_at: float
    hold_until: float
    expires_at: float
    approval: Approval
    state: State = State.PENDING
    votes: tuple[Vote, ...] = ()
    decided_at: float | None = None

    @property
    def approvals(self) -> tuple[str, ...]:
        return tuple(v.approver for v in self.votes if v.approve)

    def describe(self) -> str:
        return f"{self.identity}: {', '.join(n.describe() for n in self.needs)} ({self.api}, rule {self.rule})"


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    request_id: str
    identity: str
    rule: str
    scope: GrantScope
    needs: tuple[Need, ...]  # what the request named; with scope rule, only their operations count
    approvers: tuple[str, ...]
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    uses: int | None = None  # requests it lets through at most; None: any number
    used: int = 0  # requests it let through so far

    def active(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires_at and not self.used_up

    @property
    def used_up(self) -> bool:
        return self.uses is not None and self.used >= self.uses

    def covers(self, identity: str, need: Need, now: float) -> bool:
        if not self.active(now) or identity != self.identity or need.rule != self.rule:
            return False
        if self.scope == GrantScope.RULE:
            return any(n.operation == need.operation and n.resource == need.resource for n in self.needs)
        return need in self.needs


def new_id(prefix: str) -> str:
    """A request or grant id a person can type: the prefix and 10 hex digits."""
    return f"{prefix}-{secrets.token_hex(5)}"


def file_request(*, rule: str, approval: Approval, identity: str, groups: tuple[str, ...], needs: tuple[Need, ...],
                 api: str, session_id: str, cgroup_path: str | None, now: float) -> ApprovalRequest:
    return ApprovalRequest(id=new_id("apr"), rule=rule, identity=identity, groups=tuple(sorted(groups)),
                           needs=tuple(sorted(needs, key=lambda n: (n.rule, n.operation, n.resource, n.name or ""))),
                           api=api, session_id=session_id, cgroup_path=cgroup_path, created_at=now,
                           hold_until=now + approval.hold_s, expires_at=now + approval.pending_s, approval=approval)


def expired(request: ApprovalRequest, now: float) -> bool:
    return request.state == State.PENDING and now >= request.expires_at


def vote(request: ApprovalRequest, approver: Approver, approve: bool, reason: str,
         now: float) -> tuple[ApprovalRequest, Grant | None]:
    """The request after this vote, and the grant it made (if it was the approval that decided it).

    Raises ApprovalError naming why the vote is refused: the request is not
    pending (decided, or expired), the approver is the requester, is in none
    of the rule's approver groups, or has already voted.
    """
    reason = reason.strip()
    if not reason:
        raise ApprovalError("a reason is required: say why, for the audit")
    if len(reason) > 1000:
        raise ApprovalError(f"the reason is {len(reason)} characters; at most 1000")
    if request.state != State.PENDING:
        raise ApprovalError(f"request {request.id} is already {request.state}"
                            + (f" (at {request.decided_at:.0f})" if request.decided_at else ""))
    if expired(request, now):
        raise ApprovalError(f"request {request.id} expired at {request.expires_at:.0f}; the workload's next "
                            "attempt files a new one")
    if approver.name == request.identity or approver.name == f"identity:{request.identity}":
        raise ApprovalError(f"{approver.name} asked for request {request.id} and cannot approve or deny their own "
                            "request")
    if not approver.is_operator and not set(approver.groups) & set(request.approval.approver_groups):
        raise ApprovalError(f"{approver.name} is in none of rule {request.rule}'s approver groups "
                            f"({', '.join(request.approval.approver_groups)})")
    if any(v.approver == approver.name for v in request.votes):
        raise ApprovalError(f"{approver.name} has already voted on request {request.id}")
    votes = request.votes + (Vote(approver.name, approve, reason, now),)
    if not approve:
        return replace(request, votes=votes, state=State.DENIED, decided_at=now), None
    approvals = sum(1 for v in votes if v.approve)
    if approvals < request.approval.approvals:
        return replace(request, votes=votes), None
    decided = replace(request, votes=votes, state=State.APPROVED, decided_at=now)
    grant = Grant(id=new_id("grt"), request_id=request.id, identity=request.identity, rule=request.rule,
                  scope=request.approval.grant_scope, needs=request.needs, approvers=decided.approvals,
                  created_at=now, expires_at=now + request.approval.grant_ttl_s, uses=request.approval.grant_uses)
    return decided, grant
