"""`appliance revoke`: cut off a token subject, token id, identity or client id, now and from then on."""

from __future__ import annotations

import json
import os
import pwd
import time

import click

from appliance.cli.output import parse_until
from appliance.identity.revocations import RevocationError, RevocationStore


def _operator() -> str:
    uid = os.getuid()
    login = os.environ.get("SUDO_USER") or (pwd.getpwuid(uid).pw_name if uid >= 0 else "?")
    return f"{login} (uid {uid})"


@click.command()
@click.option("--subject", help="A token subject (sub claim): every token for it.")
@click.option("--jti", help="One token, by its id (jti claim).")
@click.option("--identity", help="A workload identity: its sessions, whatever it authenticated with.")
@click.option("--client-id", "client_id", help="An identity provider client (azp claim): every token it was issued.")
@click.option("--until", "until", help="When the revocation lapses: a time from now (30m, 12h, 7d) or ISO-8601. "
                                       "Default: until withdrawn.")
@click.option("--reason", default="revoked by an operator", show_default=True, help="Why; recorded in the audit.")
@click.option("--withdraw", is_flag=True, help="Lift the revocation of what is named instead.")
@click.pass_context
def revoke(ctx, subject, jti, identity, client_id, until, reason, withdraw) -> None:
    """End the live sessions of what is named within a second, and refuse its credentials from then on.

    Exactly one of --subject, --jti, --identity or --client-id. The revocation
    is kept (root-only) across restarts until it lapses or is withdrawn, and
    is audited with who made it and why. A session that re-authenticates
    with a revoked credential is closed too.

    \b
    Example:
      appliance revoke --subject 2f6d7a1e-... --reason "laptop stolen"
      appliance revoke --client-id ci-runner --until 12h
      appliance revoke --subject 2f6d7a1e-... --withdraw
    """
    named = [(k, v) for k, v in (("subject", subject), ("jti", jti), ("identity", identity),
                                 ("client_id", client_id)) if v is not None]
    if len(named) != 1:
        raise click.UsageError("name exactly one of --subject, --jti, --identity or --client-id")
    kind, value = named[0]
    revocations = RevocationStore(ctx.obj.revocations_file)
    by = _operator()
    try:
        if withdraw:
            removed = revocations.withdraw(kind, value)
            if not removed:
                raise click.ClickException(f"{kind.replace('_', ' ')} {value!r} is not revoked")
            message = f"revocation of {kind.replace('_', ' ')} {value!r} withdrawn by {by}"
        else:
            ends = None if until is None else parse_until(until)
            record = revocations.revoke(kind, value, by=by, reason=reason, until=ends)
            message = record.describe()
    except RevocationError as e:
        raise click.ClickException(str(e)) from None
    # Only now: the revocation is in force once its file is written, and sqlite-utils takes a
    # noticeable part of the second the command promises to import.
    from appliance.audit import store
    from appliance.audit.records import Event

    store.record_event(ctx.obj.audit_db, Event(
        at=time.time(), kind="revoke", message=message, identity=value if kind == "identity" else None,
        detail=json.dumps({"kind": kind, "value": value, "by": by, "reason": reason, "until": until,
                           "withdrawn": withdraw})))
    click.echo(message)
