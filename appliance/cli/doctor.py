"""`appliance doctor`: check that this host has what `appliance serve` needs, and say how to fix what it lacks."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The findings as a JSON array (check, status, detail, fix).")
@click.pass_context
def doctor(ctx, as_json: bool) -> None:
    """Check the host and the configuration for `appliance serve`, one line per check.

    Checks: root; the kernel's version and BPF options; that the kernel loads
    sock_addr, sock_ops and sk_lookup programs; bcc; the cgroup v2 mount;
    that bpffs_dir is on a bpf filesystem; BTF; kernel headers for bcc; the
    proxy's listen ports; that each credentials file is root's alone; a TCP
    connect to each configured broker (from the proxy's own cgroup, as the
    proxy would connect); whether the clock is synchronized; that the
    policy loads. Each line reads ok, warn, FAIL or unknown, and every one
    that is not ok says how to fix it.

    Exits 1 if any check FAILs, 0 otherwise (warn and unknown do not fail).

    \b
    Example:
      appliance --config /etc/appliance/appliance.yaml doctor
      appliance doctor --json
    """
    from appliance.doctor.checks import Status, evaluate, failed
    from appliance.doctor.facts import collect

    findings = evaluate(collect(ctx.obj))
    if as_json:
        click.echo(json.dumps([{"check": f.check, "status": f.status.value, "detail": f.detail, "fix": f.fix}
                               for f in findings], indent=2))
    else:
        colours = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "red", Status.UNKNOWN: "yellow"}
        width = max(len(f.check) for f in findings)
        for f in findings:
            line = f"{click.style(f'{f.status.value:<7}', fg=colours[f.status])} {f.check:<{width}}  {f.detail}"
            if f.fix and f.status is not Status.OK:
                line += f" — fix: {f.fix}"
            click.echo(line)
    ctx.exit(1 if failed(findings) else 0)
