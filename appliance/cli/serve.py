"""`appliance serve|status|demo`: run the appliance, look at it, or watch it work on the embedded broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from appliance.cli.output import emit, when


@click.command()
@click.option("--supervise", is_flag=True,
              help="Run the appliance as a child and restart it at once if it dies (backoff if it keeps dying); "
                   "enrolled connects are refused, never sent direct, while it restarts.")
@click.option("--keep-steering", is_flag=True,
              help="On stop, leave the steering programs attached and their maps pinned, as a crash would: "
                   "connects to the brokers stay refused (never sent direct) until the next serve takes them "
                   "over; `appliance detach` removes them. appliance.service runs serve so.")
@click.pass_context
def serve(ctx, supervise: bool, keep_steering: bool) -> None:
    """Run the appliance: attach steering, proxy enrolled workloads, audit everything.

    With no --config it runs on the embedded defaults, steering the embedded
    broker's addresses (127.0.0.1:19092 and [::1]:19093). Stops cleanly on
    Ctrl-C or SIGTERM, detaching every program it attached.

    \b
    Example:
      appliance serve
      appliance --config /etc/appliance/appliance.yaml serve --supervise
      appliance --config /etc/appliance/appliance.yaml serve --keep-steering
    """
    from appliance.broker.credentials import CredentialsError
    from appliance.policy.parser import PolicyError
    from appliance.service import AlreadyServing
    from appliance.service import serve as run_service

    if os.geteuid() != 0:
        raise click.ClickException("serve must run as root: it loads BPF programs and moves itself into a cgroup")
    if supervise:
        from appliance.supervisor import supervise as run_supervised

        config = ctx.obj
        argv = [sys.executable, "-m", "appliance"]
        if config.source != "embedded defaults":
            argv += ["--config", config.source]
        if ctx.find_root().params.get("verbose"):
            argv.append("--verbose")
        sys.exit(run_supervised(argv + ["serve"] + (["--keep-steering"] if keep_steering else [])))
    try:
        run_service(ctx.obj, keep_steering=keep_steering)
    except CredentialsError as e:
        raise click.ClickException(f"{e} (start the embedded broker with `appliance broker start`, "
                                   "or set upstream_credentials in the config)") from None
    except PolicyError as e:
        raise click.ClickException(f"the policy does not load, so the appliance does not start: {e}") from None
    except AlreadyServing as e:
        raise click.ClickException(str(e)) from None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The whole status as JSON.")
@click.pass_context
def status(ctx, as_json: bool) -> None:
    """Show programs attached and where, maps and their fill, the listener, live sessions, per-cgroup counts.

    \b
    Example:
      appliance status
    """
    from appliance.steering.loader import attached_programs

    if os.geteuid() != 0:
        raise click.ClickException("status must run as root: it asks the kernel which programs are attached")
    config = ctx.obj
    try:
        snapshot = json.loads(config.status_file.read_text())
        if not _alive(snapshot.get("pid")):
            snapshot = None
    except (OSError, ValueError):
        snapshot = None
    kernel = attached_programs()
    if as_json:
        click.echo(json.dumps({"serving": snapshot is not None, "status": snapshot, "attached_programs": kernel},
                              indent=2, default=str))
        return
    if snapshot is None:
        click.echo("appliance: not serving")
    else:
        click.echo(f"appliance: serving since {when(snapshot['started_at'])} (pid {snapshot['pid']}, "
                   f"config: {snapshot['config']})")
        listener = snapshot["listener"]
        click.echo(f"listener: {', '.join(listener['hosts'])} port {listener['port']}")
        inside = snapshot.get("netns_listeners") or []
        if inside:
            click.echo("also listening in workload network namespaces: " + ", ".join(
                f"{n['netns']} (cookie {n['netns_cookie']}, slot {n['slot']})" for n in inside))
        for path, count in (snapshot.get("netns_beyond_limit") or {}).items():
            click.echo(f"  not listening in {count} more network namespace(s) of {path}: beyond its "
                       "max_netns_per_workload, so its connects from those are refused")
        click.echo(f"steered brokers: {', '.join(snapshot['brokers'])}")
        for name, addresses in (snapshot.get("broker_names") or {}).items():
            click.echo(f"  {name} resolves to {', '.join(addresses) or 'nothing (yet)'}")
        if snapshot.get("discovered_brokers"):
            click.echo(f"discovered brokers (steered): {', '.join(snapshot['discovered_brokers'])}")
        if snapshot.get("outside_brokers"):
            click.echo(f"discovered brokers outside discovery.allowed_networks: {', '.join(snapshot['outside_brokers'])}")
        if snapshot.get("forgotten_brokers"):
            click.echo(f"discovered brokers forgotten since start: {snapshot['forgotten_brokers']} "
                       "(appliance audit events --kind broker-forgotten)")
        upstream = snapshot.get("upstream_auth")
        if upstream:  # the appliance's own OAUTHBEARER token for the brokers
            click.echo(_upstream_auth_line(upstream))
        pool = snapshot.get("upstream_pool") or {}
        click.echo("upstream pool: " + (", ".join(f"{address} {n} ready" for address, n in pool.items())
                                        or "empty (fills once a workload connects)"))
        audit = snapshot["audit"]
        if audit.get("failing"):
            what = ("new requests refused with KAFKA_STORAGE_ERROR" if audit.get("audit_failure") == "refuse"
                    else "requests forwarded unaudited (audit_failure: forward)")
            click.echo(f"audit: FAILING since {when(audit['failing_since'])}: {audit['failing']}; {what}; "
                       f"{audit['lost']} records lost")
        limits = snapshot.get("limits")
        if limits:
            click.echo(f"sessions: {limits['sessions']} of {limits['max_sessions']} "
                       f"({limits['session_limit_refusals']} refused at the limit); held "
                       f"{limits['held_bytes']} of {limits['buffer_budget_bytes']} bytes, "
                       f"{limits['paused_sessions']} paused; deadline closes: "
                       f"{', '.join(f'{k} {n}' for k, n in limits['deadline_closes'].items()) or 'none'}")
        click.echo(f"audit: {snapshot['audit']['path']} ({snapshot['audit']['written']} records written, "
                   f"{snapshot['audit']['failed_batches']} failed batches)")
        click.echo(_audit_retention_line(audit))
        excerpts = _excerpts_line(audit)
        if excerpts:
            click.echo(excerpts)
        states = snapshot.get("broker_states") or {}
        click.echo("broker reachability: " + (", ".join(f"{b} {state}" for b, state in states.items()) or "unknown"))
        health = snapshot.get("kernel_health") or {}
        click.echo("kernel health: " + ", ".join(f"{name} {n}" for name, n in health.items()))
    emit(kernel, as_json=False, columns=("name", "attach_type", "cgroup"), title="programs attached (from the kernel)")
    if snapshot is None:
        return
    emit(snapshot["steering"].get("maps", []), as_json=False,
         columns=("name", "pinned", "entries", "max_entries"), title="maps")
    emit(snapshot["workloads"], as_json=False,
         columns=("identity", "groups", "cgroup_path", "cgroup_id", "steered", "refused"), title="enrolled workloads")
    emit(snapshot["exempt"], as_json=False, columns=("cgroup_path", "cgroup_id", "steered", "refused"),
         title="exempt cgroups")
    others = [{"cgroup_id": k, **v} for k, v in snapshot["counters"].items()
              if int(k) not in {w["cgroup_id"] for w in snapshot["workloads"]} and v.get("refused")]
    emit(others, as_json=False, columns=("cgroup_id", "steered", "refused"), title="other cgroups refused")
    emit(snapshot["sessions"], as_json=False,
         columns=("session_id", "identity", "auth", "subject", "pid", "command", "broker_address", "started_at",
                  "token_expires_at", "reauthenticate_by"),
         title="live sessions", times=("started_at", "token_expires_at", "reauthenticate_by"))


def _excerpts_line(audit: dict) -> str | None:
    """What is held for record excerpts (docs/recording.md, Depth); None while nothing is held or was dropped."""
    excerpts = audit.get("excerpts") or {}
    if not (excerpts.get("held_bytes") or excerpts.get("not_kept")):
        return None
    return (f"record excerpts: {excerpts['held_bytes']:,} of {excerpts['limit_bytes']:,} bytes of records held for "
            f"the audit writer; {excerpts['not_kept']:,} not kept at that bound")


def _audit_retention_line(audit: dict) -> str:
    """The audit's size and the retention in force, from the status snapshot."""
    size = audit.get("bytes") or {}
    line = f"audit size: {size.get('database', 0):,} bytes (+{size.get('wal', 0):,} in the WAL); retention: "
    retention = audit.get("retention") or {}
    kept = []
    if retention.get("max_age_days") is not None:
        kept.append(f"{retention['max_age_days']:g} days")
    if retention.get("max_bytes") is not None:
        kept.append(f"{retention['max_bytes']:,} bytes")
    line += ("at most " + " and ".join(kept) + f", checked every {retention.get('interval_s', 0):g} s") if kept \
        else "keep everything (audit_retention not set)"
    last = retention.get("last_prune")
    if last:
        line += (f"; last prune {when(last['at'])}: {last['entries']:,} entries, the chain now starts at chain_seq "
                 f"{last['first_seq']:,}")
    if retention.get("pruning"):
        line += "; a prune is under way"
    if retention.get("error"):
        line += f"; RETENTION STOPPED: {retention['error']}"
    return line


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (TypeError, ValueError, ProcessLookupError):
        return False


_DEMO_WORKLOAD = Path(__file__).with_name("demo_workload.py")


@click.command()
@click.option("--seconds", type=float, default=None, help="Stop by itself after this long (default: until Ctrl-C).")
@click.pass_context
def demo(ctx, seconds: float | None) -> None:
    """Start the embedded broker and the appliance, enrol a demo workload and show live traffic.

    The demo workload (identity `orders`) produces and consumes through the
    appliance under the embedded policy, which also refuses its attempts on
    `demo-secrets`, stores its card numbers as their last four digits and
    masks e-mail addresses when it reads them back; a few seconds in, a
    process in an unenrolled cgroup tries the broker and is refused in the
    kernel. The workload also asks to create demo-orders-archive, which the
    policy holds for a person's approval: the screen shows the request and
    the `appliance approvals approve` command that lets it on. Beside it, once the local identity provider (Keycloak, as
    `appliance idp start` runs it) is up, a token-authenticated workload
    (identity `ledger`, enrolled auth cgroup+token) fetches its own OIDC
    token and writes demo-ledger over SASL/OAUTHBEARER. Ctrl-C stops
    everything and detaches every program. This is what `make run` does.

    \b
    Example:
      appliance demo
      appliance demo --seconds 20
    """
    from rich.console import Group
    from rich.live import Live

    from appliance.broker.embedded import EmbeddedBroker
    from appliance.identity import cgroups

    config = ctx.obj
    try:
        running = json.loads(config.status_file.read_text()).get("pid")
    except (OSError, ValueError):
        running = None
    if running and _alive(running):
        raise click.ClickException(f"an appliance is already serving with this configuration (pid {running}); "
                                   "stop it first")
    broker = EmbeddedBroker(config.embedded_broker)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    idp = _DemoIdp(config)
    click.echo("starting the embedded broker (and the local identity provider beside it) ...")
    broker.start()
    click.echo(f"broker: {', '.join(broker.status().client_addresses)}; starting the appliance ...")
    env = dict(os.environ)
    source = _demo_config(config, idp)
    args = [sys.executable, "-m", "appliance", "--config", str(source)]
    log_path = config.state_dir / "serve.log"
    config.state_dir.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(args + ["serve"], env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    workload = intruder = token_workload = None
    demo_cg = unenrolled_cg = token_cg = None
    try:
        _wait_for(lambda: config.status_file.exists() and _alive(json.loads(config.status_file.read_text())["pid"]),
                  30, f"the appliance did not start; see {log_path}", server)
        demo_cg = cgroups.ensure("appliance-demo/orders")
        unenrolled_cg = cgroups.ensure("appliance-demo/unenrolled")
        subprocess.run(args + ["enroll", demo_cg.path, "--identity", "orders", "--group", "payments"], check=True)
        _wait_for(lambda: any(w["cgroup_id"] == demo_cg.id for w in json.loads(config.status_file.read_text())["workloads"]),
                  5, "the enrolment did not reach the appliance", server)
        seen = config.state_dir / "demo-last-read.json"
        archive = config.state_dir / "demo-archive.txt"
        workload = _in_cgroup(demo_cg, [sys.executable, str(_DEMO_WORKLOAD),
                                        f"{config.embedded_broker.host4}:{config.embedded_broker.port4}",
                                        "--seen", str(seen), "--archive", str(archive)])
        started = time.monotonic()
        token_cg = cgroups.ensure("appliance-demo/ledger")
        with Live(refresh_per_second=2, screen=False) as live:
            while seconds is None or time.monotonic() - started < seconds:
                if intruder is None and time.monotonic() - started > 4:
                    intruder = _in_cgroup(unenrolled_cg, [sys.executable, str(_DEMO_WORKLOAD), "--once",
                                          f"{config.embedded_broker.host4}:{config.embedded_broker.port4}"])
                if token_workload is None and idp.ready:
                    token_workload = _start_token_workload(config, args, idp, token_cg)
                live.update(Group(*_live_tables(config), _last_read(seen), _held(config, archive), idp.line()))
                if server.poll() is not None:
                    raise click.ClickException(f"the appliance exited ({server.returncode}); see {log_path}")
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping ...")
        for proc in (workload, intruder, token_workload):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        for cg in (demo_cg, token_cg if token_workload is not None else None):
            if cg is not None:
                subprocess.run(args + ["unenroll", cg.path], check=False, stdout=subprocess.DEVNULL)
        idp.stop()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        broker.stop()
        for cg in (demo_cg, unenrolled_cg, token_cg):
            if cg is not None:
                cgroups.remove(cg)
        try:  # their parent too, once empty
            cgroups.remove(cgroups.resolve("appliance-demo"))
        except cgroups.CgroupError:
            pass
        from appliance.steering.loader import attached_programs

        left = [p["name"] for p in attached_programs() if p.get("bpffs_dir") in (str(config.bpffs_dir), None)]
        if left:
            raise click.ClickException(f"programs still attached after the appliance stopped: {', '.join(left)}")
        click.echo(f"stopped: broker down, appliance down, none of this appliance's programs attached. "
                   f"The audit stays in {config.audit_db}.")


_DEMO_TOKEN_CLIENT = "ledger"  # the demo realm's client whose identity and group (payments) the policy names


class _DemoIdp:
    """The local identity provider, started in the background while the broker and the appliance start."""

    def __init__(self, config) -> None:
        import threading

        from appliance.idp import IdpError, LocalKeycloak

        self.started = threading.Event()
        self.failed: str | None = None
        self.server = LocalKeycloak(config.state_dir / "idp", jar_cache=config.embedded_broker.jar_cache)
        self._error = IdpError
        threading.Thread(target=self._run, name="demo-idp", daemon=True).start()

    def _run(self) -> None:
        try:
            self.server.start()
        except self._error as e:
            self.failed = str(e)
        finally:
            self.started.set()

    @property
    def ready(self) -> bool:
        return self.started.is_set() and self.failed is None

    def line(self):
        from rich.text import Text

        if not self.started.is_set():
            return Text("the local identity provider is starting (Keycloak: about a minute the first time) ...",
                        "dim")
        if self.failed is not None:
            return Text(f"no token-authenticated workload: the local identity provider did not start: "
                        f"{self.failed[:300]}", "red")
        return Text.assemble(("token workload: ", "bold"),
                             f"identity {_DEMO_TOKEN_CLIENT} (enrolled auth cgroup+token) with its own token from "
                             f"{self.server.endpoints.issuer}, writing demo-ledger over SASL/OAUTHBEARER")

    def stop(self) -> None:
        self.started.wait(120)  # a start under way would leave Keycloak running behind the demo
        self.server.stop()


def _upstream_auth_line(upstream: dict) -> str:
    """One line on the token the appliance presents to the brokers: whose, until when, and what went wrong."""
    line = f"upstream auth: {upstream.get('mechanism')} as client {upstream.get('client_id')!r}, "
    if upstream.get("token_valid"):
        line += f"token valid until {when(upstream['token_expires_at'])}, next refresh in {upstream['next_refresh_in_s']} s"
    else:
        line += "NO VALID TOKEN: new broker connections cannot authenticate"
    if upstream.get("consecutive_failures"):
        line += f"; {upstream['consecutive_failures']} failed fetch(es) in a row, last: {upstream.get('last_error')}"
    return line


def _demo_config(config, idp: _DemoIdp) -> Path:
    """The configuration `serve` runs with: the user's (or the embedded defaults), trusting the local
    identity provider's tokens when it names no provider of its own."""
    import yaml

    settings = {} if config.source == "embedded defaults" else yaml.safe_load(Path(config.source).read_text()) or {}
    if not config.identity.providers:
        identity = dict(settings.get("identity") or {})
        identity["providers"] = [{"issuer": idp.server.endpoints.issuer, "audiences": [idp.server.realm.audience],
                                  "identity_claim": "azp"}]
        settings["identity"] = identity
    path = config.state_dir / "demo-config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _start_token_workload(config, args: list[str], idp: _DemoIdp, cg) -> subprocess.Popen:
    subprocess.run(args + ["enroll", cg.path, "--identity", _DEMO_TOKEN_CLIENT, "--group", "payments",
                           "--auth", "cgroup+token", "--accept", _DEMO_TOKEN_CLIENT], check=True,
                   stdout=subprocess.DEVNULL)
    secret = idp.server.client_secret(_DEMO_TOKEN_CLIENT)
    return _in_cgroup(cg, [sys.executable, str(_DEMO_WORKLOAD),
                           f"{config.embedded_broker.host4}:{config.embedded_broker.port4}",
                           "--oauth", f"{_DEMO_TOKEN_CLIENT}:{secret}@{idp.server.endpoints.token}",
                           "--topic", "demo-ledger", "--group", "payments-ledger"])


def _held(config, archive: Path):
    """The demo's held operation: what waits for approval, and how to approve it (docs/approvals.md)."""
    from rich.text import Text

    from appliance.approvals.model import State
    from appliance.approvals.store import ApprovalStore

    try:
        state = archive.read_text().strip()
    except OSError:
        state = "not asked for yet"
    pending = []
    if config.approvals_db.exists():
        store = ApprovalStore(config.approvals_db, busy_timeout_ms=100)
        try:
            pending = store.requests(state=State.PENDING, limit=5)
        finally:
            store.close()
    text = Text.assemble(("held for approval: ", "bold"), f"creating demo-orders-archive: {state}")
    for request in pending:
        text.append(f"\n  {request.id}: {request.describe()}; approve it in another terminal with: ", "yellow")
        text.append(f"appliance approvals approve {request.id} --reason \"looks fine\"", "bold yellow")
    return text


def _last_read(path: Path):
    from rich.text import Text

    try:
        value = path.read_text().strip()
    except OSError:
        value = "(nothing yet)"
    return Text.assemble(("the workload last read: ", "bold"), value,
                         ("\n(card: stored as its last four digits; e-mail: masked on read for `orders`)", "dim"))


def _in_cgroup(cg, argv: list[str]) -> subprocess.Popen:
    procs = cg.directory / "cgroup.procs"
    return subprocess.Popen(argv, preexec_fn=lambda: procs.write_text(str(os.getpid())),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(check, timeout: float, message: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        if server.poll() is not None:
            break
        time.sleep(0.1)
    raise click.ClickException(message)


def _live_tables(config):
    from rich.table import Table

    from appliance.audit import store

    if not config.audit_db.exists():
        return []
    db = store.open_read_only(config.audit_db)
    try:
        sessions = store.query_sessions(db, limit=5)
        operations = store.query_operations(db, limit=12)
        events = store.query_events(db, limit=5)
    finally:
        db.conn.close()
    tables = []
    for title, rows, columns in (
        ("sessions", sessions, ("started_at", "identity", "cgroup_path", "pid", "command", "broker_address", "requests", "close_reason")),
        ("operations", operations, ("at", "identity", "api_name", "topics", "records", "decision", "masked",
                                    "error_code", "latency_ms")),
        ("events", events, ("at", "kind", "message")),
    ):
        table = Table(title=title, title_justify="left")
        for c in columns:
            table.add_column(c, overflow="fold", max_width=50)
        for row in rows:
            table.add_row(*(when(row[c])[11:] if c in ("at", "started_at") else ("" if row[c] is None else str(row[c])[:80])
                            for c in columns))
        tables.append(table)
    return tables
