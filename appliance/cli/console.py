"""`appliance console`: the web console, served from its own process beside `appliance serve`."""

from __future__ import annotations

import click


@click.command()
@click.option("--check", is_flag=True, help="Check the settings, the secret files and the provider, then exit.")
@click.pass_context
def console(ctx, check: bool) -> None:
    """Serve the web console (docs/console.md): live sessions, the audit, approvals, grants, replay, verify.

    Reads the same state directory as `serve` (the audit read-only, approvals.db, status.json) and lets people
    in by OIDC login with the `console:` settings: the auditor group reads, the approver group also approves,
    denies and revokes. Every action is audited with the person's name. Off unless `console.enabled` is true.

    \b
    Example:
      appliance --config /etc/appliance/appliance.yaml console
      appliance console --check
    """
    from appliance.console.server import ConsoleStartError, prepare, serve

    config = ctx.obj
    try:
        app = prepare(config, check_provider=check)
    except ConsoleStartError as e:
        raise click.ClickException(str(e)) from None
    if check:
        click.echo(f"console settings, secret files and provider {config.console.issuer} are usable; it would "
                   f"listen on {config.console.base_url}")
        return
    serve(config, app)
