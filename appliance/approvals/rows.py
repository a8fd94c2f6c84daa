"""Approval requests and grants as flat rows: what `appliance approvals` prints and the console shows."""

from __future__ import annotations

from dataclasses import asdict

from appliance.approvals.model import ApprovalRequest, Grant


def request_row(r: ApprovalRequest) -> dict:
    return {"id": r.id, "state": str(r.state), "identity": r.identity, "rule": r.rule, "api": r.api,
            "needs": "; ".join(n.describe() for n in r.needs), "created_at": r.created_at,
            "expires_at": r.expires_at, "approvals": f"{len(r.approvals)}/{r.approval.approvals}",
            "approvers": ", ".join(r.approval.approver_groups), "session_id": r.session_id,
            "votes": [asdict(v) for v in r.votes], "decided_at": r.decided_at}


def grant_row(g: Grant, now: float) -> dict:
    state = "revoked" if g.revoked_at is not None else "used up" if g.used_up else \
        ("active" if g.active(now) else "ended")
    return {"id": g.id, "state": state, "identity": g.identity, "rule": g.rule, "scope": str(g.scope),
            "uses": "any" if g.uses is None else f"{g.used}/{g.uses}",
            "covers": "; ".join(n.describe() for n in g.needs), "approvers": ", ".join(g.approvers),
            "request": g.request_id, "created_at": g.created_at, "expires_at": g.expires_at,
            "revoked_by": g.revoked_by, "revoke_reason": g.revoke_reason}
