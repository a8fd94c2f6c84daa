"""`appliance detach`: take down the steering a stopped appliance left in the kernel."""

from __future__ import annotations

import json
import os

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="What was removed, as JSON.")
@click.pass_context
def detach(ctx, as_json: bool) -> None:
    """Detach the steering programs and remove the pinned maps a stopped appliance left behind.

    `serve --keep-steering` (how appliance.service runs it) and a crash leave
    the programs attached at the cgroup v2 root and the maps pinned under
    `bpffs_dir`, so connects to the brokers stay refused while the appliance
    is down. This removes them: afterwards nothing steers or refuses those
    connects. Refused while `appliance serve` runs with this configuration.

    \b
    Example:
      systemctl stop appliance && appliance --config /etc/appliance/appliance.yaml detach
    """
    from appliance.service import serving_pid
    from appliance.steering.loader import release

    if os.geteuid() != 0:
        raise click.ClickException("detach must run as root: it detaches BPF programs from the cgroup root")
    config = ctx.obj
    pid = serving_pid(config)
    if pid is not None:
        raise click.ClickException(f"`appliance serve` (pid {pid}) is running with {config.source}; stop it first "
                                   "(systemctl stop appliance), it detaches nothing while it serves")
    removed = release(config.bpffs_dir)
    if as_json:
        click.echo(json.dumps({"bpffs_dir": str(config.bpffs_dir), "removed": removed}, indent=2))
        return
    for line in removed:
        click.echo(f"removed {line}")
    click.echo(f"nothing of the appliance's ({config.bpffs_dir}) is attached" if not removed else
               f"detached: {len(removed)} object(s)")
