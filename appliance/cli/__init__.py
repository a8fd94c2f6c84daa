"""The `appliance` command line: thin commands over the library, each with help and an example."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from appliance.config import ConfigError, load_config


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="APPLIANCE_CONFIG",
              help="YAML configuration file (default: the embedded defaults; env APPLIANCE_CONFIG).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """An identity-aware, Kafka-aware enforcement point between workloads and their brokers.

    \b
    Example:
      appliance broker start && appliance serve &
      appliance enroll /orders --identity orders --group payments
      appliance audit operations --identity orders
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ctx.obj = load_config(config_path)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def _register() -> None:
    from appliance.cli import audit, broker, doctor, identity, idp, policy, revoke, serve, steering

    main.add_command(serve.serve)
    main.add_command(serve.status)
    main.add_command(serve.demo)
    main.add_command(identity.enroll)
    main.add_command(identity.unenroll)
    main.add_command(identity.workloads)
    main.add_command(identity.run)
    main.add_command(audit.audit)
    main.add_command(broker.broker)
    main.add_command(idp.idp)
    main.add_command(policy.policy)
    main.add_command(revoke.revoke)
    main.add_command(steering.detach)
    main.add_command(doctor.doctor)


_register()
