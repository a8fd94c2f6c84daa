"""`appliance enroll|unenroll|workloads|run`: which cgroups are which workload identity."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time

import click

from appliance.audit import store
from appliance.audit.records import Event
from appliance.cli.output import emit
from appliance.identity import cgroups, containers
from appliance.identity.enrollment import EnrollmentError, EnrollmentStore

_RUN_PARENT = "appliance-run"


def _record(ctx, kind: str, message: str, **fields) -> None:
    store.record_event(ctx.obj.audit_db, Event(at=time.time(), kind=kind, message=message, **fields))


def _enroll(ctx, cgroup: cgroups.Cgroup, identity: str, groups: tuple[str, ...], auth: str = "cgroup",
            accepts: tuple[str, ...] = (), detail: dict | None = None, workload_tls: str = "refuse"):
    try:
        record = EnrollmentStore(ctx.obj.enrollments_file).enroll(
            identity=identity, groups=groups, cgroup_path=cgroup.path, cgroup_id=cgroup.id, auth=auth,
            accepts=accepts, workload_tls=workload_tls)
    except EnrollmentError as e:
        raise click.ClickException(str(e)) from None
    _record(ctx, "enroll", f"enrolled cgroup {cgroup.path} as {identity} (auth {record.auth})", identity=identity,
            cgroup_id=cgroup.id, cgroup_path=cgroup.path,
            detail=json.dumps({"groups": list(groups), "auth": record.auth, "accepts": list(record.accepts),
                               "workload_tls": record.workload_tls, **(detail or {})}))
    return record


_AUTH_HELP = ("How its sessions authenticate: cgroup (the enrolment alone), token (an OIDC token or a static "
              "migration credential over SASL), cgroup+token (both, and they must agree). Default: cgroup.")
_WORKLOAD_TLS_HELP = ("A workload client that speaks TLS to its broker address (security.protocol SSL or SASL_SSL): "
                      "refuse it with a TLS alert and an audited reason, or terminate its TLS with a certificate "
                      "from the appliance's workload CA (appliance workload-ca; docs/tls.md). With terminate, a "
                      "plaintext client is closed with an audited reason.")
_ACCEPT_HELP = ("A token identity, subject or group (name, prefix:NAME or glob:PATTERN) this cgroup may present "
                "(repeatable); see docs/identity.md.")


def _unenroll(ctx, path: str):
    try:
        record = EnrollmentStore(ctx.obj.enrollments_file).unenroll(path)
    except EnrollmentError as e:
        raise click.ClickException(str(e)) from None
    _record(ctx, "unenroll", f"unenrolled cgroup {record.cgroup_path} ({record.identity})",
            identity=record.identity, cgroup_id=record.cgroup_id, cgroup_path=record.cgroup_path)
    return record


def _resolve(name: str) -> cgroups.Cgroup:
    try:
        return cgroups.resolve(name)
    except cgroups.CgroupError as e:
        raise click.ClickException(str(e)) from None


@click.command()
@click.argument("cgroup")
@click.option("--identity", help="The workload identity its connections are attributed to (required unless "
              "--identity-from is given).")
@click.option("--group", "groups", multiple=True, help="A group the identity belongs to (repeatable).")
@click.option("--auth", type=click.Choice(["cgroup", "token", "cgroup+token"]), default="cgroup", show_default=True,
              help=_AUTH_HELP)
@click.option("--accept", "accepts", multiple=True, metavar="PATTERN", help=_ACCEPT_HELP)
@click.option("--container", "is_container", is_flag=True,
              help="CGROUP is a container id (12 or more hex digits) of Docker, Podman, containerd or CRI-O: "
                   "its cgroup is found and enrolled.")
@click.option("--glob", "is_glob", is_flag=True,
              help="CGROUP is a pattern such as '/system.slice/docker-*.scope': every cgroup it matches, now "
                   "or later, is enrolled (within a second of appearing).")
@click.option("--identity-from", "identity_from", metavar="SOURCE",
              help="With --glob: each matched cgroup's identity is its unit name without the suffix (unit), what "
                   "the pattern's first * matched (match), or a container label (label:KEY).")
@click.option("--workload-tls", "workload_tls", type=click.Choice(["refuse", "terminate"]), default="refuse",
              show_default=True, help=_WORKLOAD_TLS_HELP)
@click.pass_context
def enroll(ctx, cgroup: str, identity: str | None, groups: tuple[str, ...], auth: str, accepts: tuple[str, ...],
           is_container: bool, is_glob: bool, identity_from: str | None, workload_tls: str) -> None:
    """Enrol CGROUP (and every cgroup below it) as a workload identity.

    CGROUP is a path under the cgroup v2 root, an absolute path, a systemd
    unit name, a container id (--container) or a pattern (--glob). New
    connections from it are steered within a second; the enrolment persists
    across restarts.

    \b
    Example:
      appliance enroll /orders --identity orders --group payments
      appliance enroll orders.service --identity orders
      appliance enroll /ci --identity ci --auth cgroup+token --accept 'prefix:ci-'
      appliance enroll --container 3f4e9a1c2b7d --identity billing
      appliance enroll --glob '/system.slice/docker-*.scope' --identity-from label:appliance.identity
      appliance enroll --glob '/system.slice/app-*.service' --identity-from match
      appliance enroll payments.service --identity payments --workload-tls terminate
    """
    if is_container and is_glob:
        raise click.ClickException("--container and --glob name CGROUP in two different ways; give one")
    if identity_from and not is_glob:
        raise click.ClickException("--identity-from takes each cgroup's identity from a pattern's matches: "
                                   "it needs --glob")
    if bool(identity) == bool(identity_from):
        raise click.ClickException("give --identity, or --identity-from with --glob (not both)")
    if is_glob:
        _enroll_glob(ctx, cgroup, identity or "", groups, auth, accepts, identity_from or "", workload_tls)
        return
    detail = {}
    if is_container:
        try:
            found = containers.find_container(cgroup, cgroups.cgroup2_root())
        except containers.ContainerError as e:
            raise click.ClickException(str(e)) from None
        detail = {"container": found.container_id, "runtime": found.runtime}
        cgroup = found.path
    cg = _resolve(cgroup)
    if cg.path == "/":
        raise click.ClickException("refusing to enrol the root cgroup: every process on the host would be steered")
    record = _enroll(ctx, cg, identity, groups, auth, accepts, detail=detail, workload_tls=workload_tls)
    what = f"container {detail['container'][:12]} ({detail['runtime']}): " if detail else ""
    click.echo(f"enrolled {what}{cg.path} (cgroup id {cg.id}) as {identity}"
               + (f" in {', '.join(groups)}" if groups else "")
               + ("" if record.auth == "cgroup" else f", auth {record.auth}")
               + ("" if record.workload_tls == "refuse" else f", workload TLS {record.workload_tls}"))


def _enroll_glob(ctx, pattern: str, identity: str, groups, auth, accepts, identity_from: str,
                 workload_tls: str = "refuse") -> None:
    try:
        glob = containers.CgroupGlob.parse(pattern)
        record = EnrollmentStore(ctx.obj.enrollments_file).enroll(
            identity=identity, groups=groups, cgroup_path=glob.pattern, cgroup_id=0, auth=auth, accepts=accepts,
            kind="glob", identity_from=identity_from, workload_tls=workload_tls)
        matched = glob.matches(cgroups.cgroup2_root())
    except (containers.ContainerError, EnrollmentError) as e:
        raise click.ClickException(str(e)) from None
    who = f"identity from {identity_from}" if identity_from else identity
    _record(ctx, "enroll", f"enrolled cgroups matching {glob.pattern} as {who} (auth {record.auth})",
            identity=identity or None, cgroup_path=glob.pattern,
            detail=json.dumps({"groups": list(groups), "auth": record.auth, "accepts": list(record.accepts),
                               "pattern": glob.pattern, "identity_from": identity_from,
                               "workload_tls": record.workload_tls}))
    click.echo(f"enrolled cgroups matching {glob.pattern} as {who}; {len(matched)} match now")


@click.command()
@click.argument("cgroup")
@click.pass_context
def unenroll(ctx, cgroup: str) -> None:
    """Withdraw CGROUP's enrolment; its live sessions are closed and new connects refused.

    \b
    Example:
      appliance unenroll /orders
    """
    try:
        path = cgroups.resolve(cgroup).path
    except cgroups.CgroupError:
        path = cgroups.normalize(cgroup)  # a cgroup already removed can still be unenrolled by path
    record = _unenroll(ctx, path)
    click.echo(f"unenrolled {record.cgroup_path} ({record.identity})")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by field name.")
@click.pass_context
def workloads(ctx, as_json: bool) -> None:
    """List enrolled workloads: identity, groups, cgroup path and id.

    \b
    Example:
      appliance workloads --json
    """
    try:
        records = EnrollmentStore(ctx.obj.enrollments_file).load().values()
    except EnrollmentError as e:
        raise click.ClickException(str(e)) from None
    rows = []
    for r in records:
        if r.is_pattern:  # one row for the pattern, then one per cgroup it matches now
            rows.append({"identity": r.identity or f"from {r.identity_from}", "groups": ",".join(r.groups),
                         "auth": r.auth, "accepts": ",".join(r.accepts), "workload_tls": r.workload_tls,
                         "cgroup_path": r.cgroup_path, "cgroup_id": None, "present": None, "enrolled_at": r.enrolled_at})
            try:
                matches = containers.expand(r.cgroup_path, r.identity, r.identity_from, cgroups.cgroup2_root(),
                                            ctx.obj.container_roots)
            except containers.ContainerError as e:
                raise click.ClickException(str(e)) from None
            for m in matches:
                rows.append({"identity": m.identity or f"(none: {m.reason})", "groups": ",".join(r.groups),
                             "auth": r.auth, "accepts": ",".join(r.accepts), "workload_tls": r.workload_tls,
                             "cgroup_path": m.path,
                             "cgroup_id": _live_id(m.path), "present": True, "enrolled_at": r.enrolled_at})
            continue
        live_id = _live_id(r.cgroup_path)
        rows.append({"identity": r.identity, "groups": ",".join(r.groups), "auth": r.auth,
                     "accepts": ",".join(r.accepts), "workload_tls": r.workload_tls, "cgroup_path": r.cgroup_path,
                     "cgroup_id": live_id, "present": live_id is not None, "enrolled_at": r.enrolled_at})
    emit(rows, as_json=as_json, columns=("identity", "groups", "auth", "accepts", "workload_tls", "cgroup_path", "cgroup_id", "present",
                                         "enrolled_at"),
         title="enrolled workloads", times=("enrolled_at",))


def _live_id(path: str) -> int | None:
    try:
        return cgroups.resolve(path).id
    except cgroups.CgroupError:
        return None


def _wait_until_applied(ctx, cgroup_id: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads(ctx.obj.status_file.read_text())
            if any(w["cgroup_id"] == cgroup_id for w in status["workloads"]):
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    return False


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--identity", required=True, help="The workload identity for the command.")
@click.option("--group", "groups", multiple=True, help="A group the identity belongs to (repeatable).")
@click.option("--auth", type=click.Choice(["cgroup", "token", "cgroup+token"]), default="cgroup", show_default=True,
              help=_AUTH_HELP)
@click.option("--accept", "accepts", multiple=True, metavar="PATTERN", help=_ACCEPT_HELP)
@click.option("--workload-tls", "workload_tls", type=click.Choice(["refuse", "terminate"]), default="refuse",
              show_default=True, help=_WORKLOAD_TLS_HELP)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, identity: str, groups: tuple[str, ...], auth: str, accepts: tuple[str, ...], workload_tls: str,
        command: tuple[str, ...]) -> None:
    """Run COMMAND in a fresh cgroup enrolled as IDENTITY; unenrol and remove the cgroup afterwards.

    Exits with the command's exit status.

    \b
    Example:
      appliance run --identity orders -- kcat -b 127.0.0.1:19092 -t orders -P -l orders.txt
    """
    cg = cgroups.ensure(f"{_RUN_PARENT}/{identity}-{secrets.token_hex(4)}")
    _enroll(ctx, cg, identity, groups, auth, accepts, workload_tls=workload_tls)
    try:
        if not _wait_until_applied(ctx, cg.id):
            click.echo("appliance run: the appliance is not serving (no status); connections to steered brokers "
                       "will be refused", err=True)
        procs = cg.directory / "cgroup.procs"
        try:
            child = subprocess.Popen(command, preexec_fn=lambda: procs.write_text(str(os.getpid())))
        except OSError as e:
            raise click.ClickException(f"cannot run {command[0]!r}: {e.strerror}") from None
        try:
            code = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            code = child.wait()
    finally:
        _unenroll(ctx, cg.path)
        for _ in range(50):
            try:
                cgroups.remove(cg)
                break
            except cgroups.CgroupError:
                time.sleep(0.05)
    ctx.exit(code if code >= 0 else 128 - code)
