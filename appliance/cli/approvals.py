"""`appliance approvals`: the requests `effect: approve` rules hold, their decisions, and the grants they made.

The CLI votes as the local root operator (`operator:root`), who may approve
any rule's requests, and is audited as such with the login that ran it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import click

from appliance.approvals.model import OPERATOR, ApprovalError, Approver, State
from appliance.approvals.decisions import refused_revoke_event, refused_vote_event, revoke_event, vote_event
from appliance.approvals.rows import grant_row, request_row
from appliance.approvals.store import ApprovalStore
from appliance.cli.output import emit
from appliance.cli.revoke import _operator


def _store(ctx) -> ApprovalStore:
    return ApprovalStore(ctx.obj.approvals_db)


def _audit(ctx, kind: str, message: str, *, identity: str | None = None, session_id: str | None = None,
           **detail) -> None:
    from appliance.audit import store
    from appliance.audit.records import Event

    store.record_event(ctx.obj.audit_db, Event(at=time.time(), kind=kind, message=message, identity=identity,
                                               session_id=session_id, detail=json.dumps(detail, default=str)))


@click.group()
def approvals() -> None:
    """Requests held for a person's approval (policy rules with `effect: approve`), and their grants.

    \b
    Example:
      appliance approvals list
      appliance approvals approve apr-3f9c0e2a71 --reason "ticket OPS-112"
      appliance approvals deny apr-3f9c0e2a71 --reason "not during the freeze"
      appliance approvals grants
    """


@approvals.command("list")
@click.option("--all", "everything", is_flag=True, help="Decided and expired requests too, newest first.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@click.pass_context
def list_requests(ctx, everything: bool, limit: int, as_json: bool) -> None:
    """Pending requests (all of them with --all).

    \b
    Example:
      appliance approvals list --all --json
    """
    store = _store(ctx)
    rows = [request_row(r) for r in store.requests(state=None if everything else State.PENDING, limit=limit)]
    emit(rows, as_json=as_json, title="approval requests", times=("created_at", "expires_at"),
         columns=("id", "state", "identity", "needs", "rule", "approvals", "approvers", "created_at", "expires_at"))


@approvals.command()
@click.argument("request_id")
@click.pass_context
def show(ctx, request_id: str) -> None:
    """One request, whole, as JSON: what it needs, who asked, every vote.

    \b
    Example:
      appliance approvals show apr-3f9c0e2a71
    """
    try:
        request = _store(ctx).get(request_id)
    except ApprovalError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps({**request_row(request), "groups": list(request.groups), "cgroup_path": request.cgroup_path,
                           "hold_until": request.hold_until, "approval": asdict(request.approval)},
                          indent=2, default=str))


def _vote(ctx, request_id: str, approve: bool, reason: str) -> None:
    by = _operator()
    store = _store(ctx)
    try:
        request, grant = store.vote(request_id, Approver(OPERATOR), approve, reason, time.time())
    except ApprovalError as e:
        kind, message, detail = refused_vote_event(request_id, who=by, approve=approve, fault=str(e))
        _audit(ctx, kind, message, **detail, as_approver=OPERATOR)
        raise click.ClickException(str(e)) from None
    kind, message, detail = vote_event(request, grant, who=f"{OPERATOR} ({by})", approve=approve, reason=reason)
    _audit(ctx, kind, message, identity=request.identity, session_id=request.session_id, **detail)
    click.echo(message)


@approvals.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why; recorded in the audit.")
@click.pass_context
def approve(ctx, request_id: str, reason: str) -> None:
    """Approve a pending request as the local root operator; enough approvals make its grant.

    \b
    Example:
      appliance approvals approve apr-3f9c0e2a71 --reason "ticket OPS-112"
    """
    _vote(ctx, request_id, True, reason)


@approvals.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why; the workload's refusal names it, and the audit records it.")
@click.pass_context
def deny(ctx, request_id: str, reason: str) -> None:
    """Deny a pending request: the held request is refused with who denied it and why.

    \b
    Example:
      appliance approvals deny apr-3f9c0e2a71 --reason "not during the freeze"
    """
    _vote(ctx, request_id, False, reason)


@approvals.command()
@click.option("--all", "everything", is_flag=True, help="Ended and revoked grants too.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
@click.pass_context
def grants(ctx, everything: bool, as_json: bool) -> None:
    """The grants approvals made: active ones (all with --all).

    \b
    Example:
      appliance approvals grants --all
    """
    now = time.time()
    rows = [grant_row(g, now) for g in _store(ctx).grants(active_at=None if everything else now)]
    emit(rows, as_json=as_json, title="grants", times=("created_at", "expires_at"),
         columns=("id", "state", "identity", "covers", "scope", "uses", "approvers", "request", "expires_at"))


@approvals.command()
@click.argument("grant_id")
@click.option("--reason", required=True, help="Why; recorded in the audit.")
@click.pass_context
def revoke(ctx, grant_id: str, reason: str) -> None:
    """End a grant early: what it let through is decided (and held) afresh from the next request on.

    \b
    Example:
      appliance approvals revoke grt-81d04c5b3e --reason "done with the migration"
    """
    by = f"{OPERATOR} ({_operator()})"
    try:
        grant = _store(ctx).revoke(grant_id, by, reason, time.time())
    except ApprovalError as e:
        kind, message, detail = refused_revoke_event(grant_id, who=by, fault=str(e))
        _audit(ctx, kind, message, **detail)
        raise click.ClickException(str(e)) from None
    kind, message, detail = revoke_event(grant, who=by, reason=reason)
    _audit(ctx, kind, message, identity=grant.identity, **detail)
    click.echo(message)
