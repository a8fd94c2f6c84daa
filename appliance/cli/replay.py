"""`appliance replay SESSION`: a recorded session as a timeline, or a live one as it goes (--follow)."""

from __future__ import annotations

import json
import time

import click

from appliance.cli.audit import _db
from appliance.cli.output import when


@click.command()
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object an entry, a line each.")
@click.option("--follow", is_flag=True, help="Keep printing the session's new entries until it closes.")
@click.option("--interval", default=0.5, show_default=True, help="With --follow: seconds between looks.")
@click.pass_context
def replay(ctx, session_id: str, as_json: bool, follow: bool, interval: float) -> None:
    """Print a session's timeline from the audit: connect, authentication, each request with its
    decision, rule, topics, records and latency, approvals and grants, and the close.

    SESSION is a session id (`appliance audit sessions`) or its first characters.

    \b
    Example:
      appliance replay 3f9c0e2a
      appliance replay 3f9c0e2a --follow
    """
    from appliance.audit.replay import ReplayError, timeline

    db = _db(ctx)
    last = None
    while True:
        try:
            session, entries = timeline(db.conn, session_id, after=last)
        except ReplayError as e:
            raise click.ClickException(str(e)) from None
        if last is None and not as_json:
            click.echo(f"session {session['session_id']} ({session['identity']})")
        for entry in entries:
            if as_json:
                click.echo(json.dumps(entry.as_json(), default=str))
            else:
                click.echo(f"{when(entry.at)}  {entry.kind:<14} {entry.text}")
        if entries:
            last = entries[-1].at
        elif last is None:
            last = session["started_at"]
        if not follow or session["ended_at"] is not None:
            return
        time.sleep(interval)
