"""The `appliance` command line: thin commands over the library, each with help and an example."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from appliance.config import ConfigError, load_config


# Each command's module is imported only when that command runs: importing them all (the Kafka
# message classes, sqlite-utils, rich) took over a second, and `appliance revoke` promises its
# effect within one.
_COMMANDS = {
    "serve": "serve:serve", "status": "serve:status", "demo": "serve:demo",
    "enroll": "identity:enroll", "unenroll": "identity:unenroll", "workloads": "identity:workloads",
    "run": "identity:run", "audit": "audit:audit", "broker": "broker:broker", "idp": "idp:idp",
    "policy": "policy:policy", "revoke": "revoke:revoke", "detach": "steering:detach", "doctor": "doctor:doctor",
    "workload-ca": "workload_ca:workload_ca", "approvals": "approvals:approvals", "replay": "replay:replay",
    "console": "console:console",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        return getattr(importlib.import_module(f"appliance.cli.{module}"), attribute)


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
