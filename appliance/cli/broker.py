"""`appliance broker start|stop|status`: the embedded single-node Kafka, run as a daemon."""

from __future__ import annotations

import json

import click

from appliance.broker.credentials import CredentialsError
from appliance.broker.embedded import BrokerError, EmbeddedBroker
from appliance.config import Config, load_config


def _broker(ctx: click.Context) -> EmbeddedBroker:
    config = ctx.obj if isinstance(ctx.obj, Config) else load_config(None)
    return EmbeddedBroker(config.embedded_broker)


@click.group()
def broker() -> None:
    """Run the embedded Kafka broker the appliance defaults to.

    One Apache Kafka 4.1 node (KRaft, broker and controller in one JVM).

    Its data, logs and credentials live in the `embedded_broker.data_dir` of the
    configuration (default /var/lib/appliance/broker). The JVM runs detached, in
    the cgroup `embedded_broker.cgroup`, so steering can exempt it.

    \b
    Example:
      appliance broker start
      appliance broker status
      appliance broker stop
    """


@broker.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker to answer.")
@click.pass_context
def start(ctx: click.Context, timeout: float) -> None:
    """Start the broker and wait until it answers.

    A no-op if it is already running. Waits until every client listener
    answers an ApiVersions request, and fails with the tail of the log if the
    JVM exits or does not answer within --timeout.

    The first start formats the data directory and writes the appliance's
    credentials (appliance-credentials.json, mode 0600) next to it.

    \b
    Example:
      appliance broker start
      appliance --config /etc/appliance/appliance.yaml broker start --timeout 120
    """
    embedded = _broker(ctx)
    try:
        embedded.start(timeout=timeout)
    except (BrokerError, CredentialsError) as e:
        raise click.ClickException(str(e)) from None
    status = embedded.status()
    click.echo(f"broker running (pid {status.pid}) on {', '.join(status.client_addresses)}; log: {status.log_path}")


@broker.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait after SIGTERM before SIGKILL.")
@click.pass_context
def stop(ctx: click.Context, timeout: float) -> None:
    """Stop the broker.

    Sends SIGTERM, and SIGKILL if it has not exited within --timeout; a no-op
    if it is not running.

    \b
    Example:
      appliance broker stop
    """
    embedded = _broker(ctx)
    try:
        embedded.stop(timeout=timeout)
    except BrokerError as e:
        raise click.ClickException(str(e)) from None
    click.echo("broker stopped")


@broker.command()
@click.option("--json", "as_json", is_flag=True, help="The status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show whether the broker runs, its addresses and its log.

    Prints the client addresses as HOST:PORT ([ADDR]:PORT for IPv6), the log
    file and the data directory.

    Exits 0 when the broker is running and answering, 3 otherwise.

    \b
    Example:
      appliance broker status
      appliance broker status --json
    """
    s = _broker(ctx).status()
    if as_json:
        click.echo(json.dumps({
            "running": s.running, "answering": s.answering, "pid": s.pid,
            "client_addresses": list(s.client_addresses), "log": str(s.log_path), "data_dir": str(s.data_dir),
            "oauth_address": s.oauth_address, "tls_listeners": dict(s.tls_listeners),
            "tls_ca": None if s.tls_ca is None else str(s.tls_ca),
        }, indent=2))
    else:
        if not s.running:
            state = "not running"
        elif s.answering:
            state = f"running (pid {s.pid})"
        else:
            state = f"running (pid {s.pid}) but not answering yet"
        click.echo(f"broker: {state}")
        for address in s.client_addresses:
            click.echo(f"client address: {address}")
        if s.oauth_address is not None:
            click.echo(f"OAUTHBEARER address: {s.oauth_address}")
        for name, address in s.tls_listeners:
            click.echo(f"TLS listener {name}: {address}")
        if s.tls_ca is not None:
            click.echo(f"TLS CA (upstream_tls.ca_file): {s.tls_ca}")
        click.echo(f"log: {s.log_path}")
        click.echo(f"data: {s.data_dir}")
    ctx.exit(0 if s.running and s.answering else 3)
