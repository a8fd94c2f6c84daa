"""The audit event each decision makes, as data (pure): the CLI and the console record the same words.

    kind, message, detail = vote_event(request, grant, who="alice (console)", approve=True, reason="OPS-112")

`who` is how the decider is named in the audit: `operator:root (login)` from
the CLI, `<person> (console)` from the console. The caller adds `identity`
and `session_id` from the request and writes the event.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.approvals.model import ApprovalRequest, Grant


def vote_event(request: ApprovalRequest, grant: Grant | None, *, who: str, approve: bool,
               reason: str) -> tuple[str, str, dict[str, Any]]:
    """`approval-denied`, `approval-vote` (an approval that did not yet decide) or `approval-approved`."""
    detail: dict[str, Any] = {"request": request.id, "by": who, "reason": reason}
    if not approve:
        return ("approval-denied", f"approval request {request.id} ({request.describe()}) denied by {who}: {reason}",
                detail)
    if grant is None:
        return ("approval-vote", f"approval request {request.id}: approved by {who} ({len(request.approvals)} of "
                                 f"{request.approval.approvals} approvals)", detail)
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(grant.expires_at))
    return ("approval-approved", f"approval request {request.id} ({request.describe()}) approved by {who}: "
                                 f"{reason}; grant {grant.id} until {until}",
            {**detail, "grant": grant.id, "grant_expires_at": grant.expires_at})


def refused_vote_event(request_id: str, *, who: str, approve: bool, fault: str) -> tuple[str, str, dict[str, Any]]:
    return ("approval-refused", f"{'approval' if approve else 'denial'} of {request_id} by {who} refused: {fault}",
            {"request": request_id, "by": who})


def revoke_event(grant: Grant, *, who: str, reason: str) -> tuple[str, str, dict[str, Any]]:
    return ("grant-revoked", f"grant {grant.id} ({grant.identity}, request {grant.request_id}) revoked by {who}: "
                             f"{reason}", {"grant": grant.id, "request": grant.request_id, "by": who, "reason": reason})


def refused_revoke_event(grant_id: str, *, who: str, fault: str) -> tuple[str, str, dict[str, Any]]:
    return "approval-refused", f"revocation of grant {grant_id} by {who} refused: {fault}", {"grant": grant_id,
                                                                                          "by": who}
