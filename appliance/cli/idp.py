"""`appliance idp start|stop|status`: the local identity provider (Keycloak), run as a daemon."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from appliance.config import Config, load_config
from appliance.idp import DEFAULT_PORT, DEMO_REALM, IdpError, LocalKeycloak, RealmError
from appliance.idp.server import IdpStatus

_STATE_DIR_HELP = "The identity provider's state directory (default: <state_dir>/idp of the configuration)."


def _config(ctx: click.Context) -> Config:
    return ctx.obj if isinstance(ctx.obj, Config) else load_config(None)


def _keycloak(ctx: click.Context, state_dir: Path | None, port: int = DEFAULT_PORT,
              audience: str | None = None) -> LocalKeycloak:
    config = _config(ctx)
    try:
        realm = dataclasses.replace(DEMO_REALM, audience=audience) if audience else DEMO_REALM
        return LocalKeycloak(state_dir or config.state_dir / "idp", port=port, realm=realm,
                             jar_cache=config.embedded_broker.jar_cache)
    except (IdpError, RealmError) as e:
        raise click.UsageError(str(e)) from None


@click.group()
def idp() -> None:
    """Run the local identity provider (Keycloak) that issues workloads' tokens.

    A Keycloak server in development mode on 127.0.0.1, serving the realm
    `appliance`: one confidential client with a service account per demo
    workload (orders, ledger, platform-reader, short-lived) and one for the
    appliance itself (appliance-upstream). Their client_credentials access
    tokens carry `aud` kafka-appliance and a `groups` claim. See
    docs/identity.md.

    The distribution comes from scripts/setup; client secrets are generated
    into the state directory (client-secrets.json, mode 0600) and kept.

    \b
    Example:
      appliance idp start
      appliance idp status
      appliance idp stop
    """


@idp.command()
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="HTTP port on 127.0.0.1.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_DIR_HELP)
@click.option("--audience", help=f"The `aud` of every token (default {DEMO_REALM.audience}).")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the realm to be served.")
@click.pass_context
def start(ctx: click.Context, port: int, state_dir: Path | None, audience: str | None, timeout: float) -> None:
    """Start Keycloak and wait until the realm's OIDC discovery answers.

    A no-op if this state directory's server already runs on this port. The
    first start copies the distribution into the state directory and runs
    Keycloak's build step (about 45 s); later starts take about 20-25 s.
    Fails with the tail of the log if Keycloak exits or does not answer
    within --timeout.

    \b
    Example:
      appliance idp start
      appliance idp start --port 18081 --state-dir /tmp/idp-try
    """
    keycloak = _keycloak(ctx, state_dir, port, audience)
    try:
        status = keycloak.start(timeout=timeout)
    except IdpError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"identity provider running (pid {status.pid}); issuer {status.endpoints.issuer}")
    click.echo(f"client secrets: {status.secrets_file}; log: {status.log_path}")


@idp.command()
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_DIR_HELP)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait after SIGTERM before SIGKILL.")
@click.pass_context
def stop(ctx: click.Context, state_dir: Path | None, timeout: float) -> None:
    """Stop Keycloak.

    Sends SIGTERM, and SIGKILL if it has not exited within --timeout; a
    no-op if it is not running. Client secrets stay in the state directory.

    \b
    Example:
      appliance idp stop
    """
    try:
        _keycloak(ctx, state_dir).stop(timeout=timeout)
    except IdpError as e:
        raise click.ClickException(str(e)) from None
    click.echo("identity provider stopped")


def _describe(s: IdpStatus) -> list[str]:
    if not s.running:
        state = "not running"
    elif s.answering:
        state = f"running (pid {s.pid}, up {s.uptime_s:.0f} s)"
    else:
        state = f"running (pid {s.pid}) but not serving its realm yet"
    lines = [f"identity provider: {state}"]
    if s.endpoints is not None:
        what = "" if s.running else "last "
        lines += [
            f"{what}realm: {s.realm} (audience {s.audience})",
            f"issuer: {s.endpoints.issuer}",
            f"discovery: {s.endpoints.discovery}",
            f"token endpoint: {s.endpoints.token}",
            f"JWKS URI: {s.endpoints.jwks}",
        ]
        for c in s.clients:
            groups = ",".join(c.groups) or "-"
            lines.append(f"client: {c.client_id}  groups {groups}  sub {c.sub}  token lifespan {c.token_lifespan_s} s")
    lines += [f"client secrets: {s.secrets_file} (JSON, client id -> secret, mode 0600)",
              f"log: {s.log_path}", f"state: {s.state_dir}"]
    return lines


@idp.command()
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="The status as JSON.")
@click.pass_context
def status(ctx: click.Context, state_dir: Path | None, as_json: bool) -> None:
    """Show whether Keycloak runs, its issuer, endpoints, clients and where their secrets are.

    Exits 0 when the server runs and serves its realm, 3 otherwise.

    \b
    Example:
      appliance idp status
      appliance idp status --json
    """
    s = _keycloak(ctx, state_dir).status()
    if as_json:
        click.echo(json.dumps(s.as_dict(), indent=2))
    else:
        for line in _describe(s):
            click.echo(line)
    ctx.exit(0 if s.running and s.answering else 3)
