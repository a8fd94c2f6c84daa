"""`appliance policy check|explain`: validate a policy file, and ask it why a request would be allowed or denied."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.identity.enrollment import EnrollmentError, EnrollmentStore
from appliance.policy.model import Operation, Policy, Principal, ResourceType, describe_resource
from appliance.policy.parser import PolicyError, load_policy

_PATH = click.Path(dir_okay=False, path_type=Path)


@click.group()
def policy() -> None:
    """Check a policy file, and explain the decision it makes for a request.

    The policy language is described in docs/policy.md.

    \b
    Example:
      appliance policy check appliance/policy/embedded.yaml
      appliance policy explain --policy appliance/policy/embedded.yaml --identity orders --operation produce --topic demo-orders
    """


@policy.command()
@click.argument("file", type=_PATH)
@click.pass_context
def check(ctx: click.Context, file: Path) -> None:
    """Validate the policy FILE: print a summary, or the first error (with its line and key) and exit 1.

    \b
    Example:
      appliance policy check /etc/appliance/policy.yaml
    """
    try:
        loaded = load_policy(file)
    except PolicyError as e:
        click.echo(str(e), err=True)
        ctx.exit(1)
    click.echo(f"{file}: {len(loaded.rules)} rules, {len(loaded.immutable_topics)} immutable topic patterns: OK")


@policy.command()
@click.option("--identity", required=True, help="The workload identity making the request.")
@click.option("--member-of", "member_of", multiple=True,
              help="A group of the identity (repeatable). Default: the groups it is enrolled with.")
@click.option("--operation", required=True, type=click.Choice([o.value for o in Operation]),
              help="The operation requested.")
@click.option("--topic", help="The request is on this topic.")
@click.option("--group", help="The request is on this consumer group.")
@click.option("--transactional-id", "transactional_id", help="The request is on this transactional id.")
@click.option("--cluster", is_flag=True, help="The request is on the cluster.")
@click.option("--policy", "policy_file", type=_PATH,
              help="The policy file (default: policy_file from the configuration).")
@click.option("--json", "as_json", is_flag=True, help="The decision as a JSON object.")
@click.pass_context
def explain(ctx: click.Context, identity: str, member_of: tuple[str, ...], operation: str, topic: str | None,
            group: str | None, transactional_id: str | None, cluster: bool, policy_file: Path | None,
            as_json: bool) -> None:
    """Print whether the policy allows a request and which rule (or default) decided it.

    Give exactly one of --topic, --group, --transactional-id or --cluster.
    Without --member-of the identity's groups come from its enrolment.

    \b
    Example:
      appliance policy explain --identity orders --operation produce --topic demo-orders
      appliance policy explain --identity orders --member-of payments --operation group --group demo-orders --json
      appliance policy explain --policy policy.yaml --identity ops --operation admin --cluster
    """
    chosen = [(t, n) for t, n, given in ((ResourceType.TOPIC, topic, topic is not None),
                                         (ResourceType.GROUP, group, group is not None),
                                         (ResourceType.TRANSACTIONAL_ID, transactional_id, transactional_id is not None),
                                         (ResourceType.CLUSTER, None, cluster)) if given]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --topic, --group, --transactional-id or --cluster")
    resource_type, name = chosen[0]
    loaded = _load(ctx, policy_file)
    principal = Principal(identity, frozenset(member_of) if member_of else _enrolled_groups(ctx, identity))
    decision = loaded.decide(principal, Operation(operation), resource_type, name)
    rule = loaded.rule_named(decision.rule)
    if as_json:
        click.echo(json.dumps({
            "allowed": decision.allowed, "rule": decision.rule, "rule_line": rule.line if rule else None,
            "reason": decision.reason, "identity": identity, "groups": sorted(principal.groups),
            "operation": operation, "resource_type": str(resource_type), "resource": name, "policy": loaded.source,
        }, indent=2))
        return
    verdict = "ALLOW" if decision.allowed else "DENY"
    decided_by = f"rule {decision.rule!r}" if rule else decision.rule
    click.echo(f"{verdict} {operation} on {describe_resource(resource_type, name)} for {principal} — "
               f"{decided_by} ({decision.reason})")


def _load(ctx: click.Context, policy_file: Path | None) -> Policy:
    path = policy_file or getattr(ctx.obj, "policy_file", None)
    if path is None:
        raise click.UsageError("no policy file: pass --policy FILE, or set policy_file in the configuration")
    try:
        return load_policy(Path(path))
    except PolicyError as e:
        raise click.ClickException(str(e)) from None


def _enrolled_groups(ctx: click.Context, identity: str) -> frozenset[str]:
    """The groups `identity` is enrolled with; an error if its enrolments disagree (say which to pass)."""
    path = getattr(ctx.obj, "enrollments_file", None)
    try:
        records = [r for r in EnrollmentStore(path).load().values() if r.identity == identity] if path else []
    except EnrollmentError as e:
        raise click.ClickException(f"{e}; or give the groups with --member-of") from None
    if not records:
        click.echo(f"note: {identity} is not enrolled; evaluating with no groups (give them with --member-of)",
                   err=True)
        return frozenset()
    sets = {frozenset(r.groups) for r in records}
    if len(sets) > 1:
        listed = "; ".join(f"{r.cgroup_path}: {', '.join(r.groups) or 'no groups'}" for r in records)
        raise click.UsageError(f"{identity} is enrolled with different groups in different cgroups ({listed}); "
                               f"say which with --member-of")
    return sets.pop()
