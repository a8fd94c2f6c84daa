"""`appliance audit ...`: query the audit database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import click

from appliance.audit import checkpoint as checkpoints
from appliance.audit import store
from appliance.audit.append import Appender, write_note
from appliance.audit.verify import verify as verify_chain
from appliance.cli.output import emit, parse_since, when

_SESSION_COLUMNS = ("started_at", "session_id", "identity", "auth_method", "subject", "cgroup_path", "pid", "uid",
                    "command", "client_address", "broker_address", "requests", "bytes_from_client", "bytes_to_client",
                    "token_expires_at", "reauthentications", "ended_at", "close_reason")
_AUTHENTICATION_COLUMNS = ("at", "session_id", "kind", "mechanism", "outcome", "method", "identity", "groups",
                           "subject", "issuer", "client_id", "jti", "expires_at", "session_expires_at", "reason")
_OPERATION_COLUMNS = ("at", "identity", "pid", "api_name", "api_version", "correlation_id", "client_id", "topics",
                      "group_id", "records", "record_bytes", "decision", "masked", "error_code", "latency_ms",
                      "outcome")
_EVENT_COLUMNS = ("at", "kind", "identity", "cgroup_path", "pid", "message")
_GAP_COLUMNS = ("started_at", "ended_at", "records_lost", "reason")


def _db(ctx: click.Context):
    path = ctx.obj.audit_db
    if not path.exists():
        raise click.ClickException(f"no audit database at {path} yet (it is created when `appliance serve` starts)")
    try:
        return store.open_read_only(path)
    except sqlite3.Error as e:
        raise click.ClickException(f"cannot read the audit database {path}: {e} (it is readable by root only)") from None


@click.group()
def audit() -> None:
    """Query the audit database: sessions, operations, events, or read-only SQL.

    \b
    Example:
      appliance audit sessions --identity orders --since 1h
      appliance audit operations --topic payments --json
    """


@audit.command()
@click.option("--identity", help="Only this workload identity.")
@click.option("--subject", help="Only sessions whose token had this subject (sub claim).")
@click.option("--since", help="Only since this long ago (30s, 10m, 2h, 1d) or an ISO-8601 time.")
@click.option("--limit", default=100, show_default=True, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by column name.")
@click.pass_context
def sessions(ctx, identity, subject, since, limit, as_json) -> None:
    """Connections: who (identity, how it authenticated, token subject, cgroup, pid, uid, command), to which
    broker, bytes each way, token expiry, re-authentications, why closed.

    \b
    Example:
      appliance audit sessions --identity orders --since 10m
      appliance audit sessions --subject 6f1c...-service-account
    """
    rows = store.query_sessions(_db(ctx), identity=identity, subject=subject, since=parse_since(since), limit=limit)
    emit(rows, as_json=as_json, columns=_SESSION_COLUMNS, title="sessions",
         times=("started_at", "ended_at", "token_expires_at"))


@audit.command()
@click.option("--session", help="Only this session id.")
@click.option("--subject", help="Only this token subject (sub claim).")
@click.option("--outcome", type=click.Choice(["ok", "refused"]), help="Only exchanges that ended this way.")
@click.option("--since", help="Only since this long ago (30s, 10m, 2h, 1d) or an ISO-8601 time.")
@click.option("--limit", default=100, show_default=True, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by column name.")
@click.pass_context
def authentications(ctx, session, subject, outcome, since, limit, as_json) -> None:
    """SASL exchanges workloads made with the appliance: first ones and re-authentications, each with the
    mechanism, who it proved (token subject, issuer, client id, token id, groups), until when, or why refused.

    \b
    Example:
      appliance audit authentications --outcome refused --since 1h
    """
    rows = store.query_authentications(_db(ctx), session=session, subject=subject, outcome=outcome,
                                       since=parse_since(since), limit=limit)
    emit(rows, as_json=as_json, columns=_AUTHENTICATION_COLUMNS, title="authentications",
         times=("at", "expires_at", "session_expires_at"))


@audit.command()
@click.option("--identity", help="Only this workload identity.")
@click.option("--topic", help="Only operations that name this topic.")
@click.option("--session", help="Only this session id.")
@click.option("--decision", type=click.Choice(["allowed", "partly refused", "refused"]),
              help="Only requests the policy decided this way.")
@click.option("--since", help="Only since this long ago (30s, 10m, 2h, 1d) or an ISO-8601 time.")
@click.option("--limit", default=100, show_default=True, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by column name.")
@click.pass_context
def operations(ctx, identity, topic, session, decision, since, limit, as_json) -> None:
    """Requests: api and version, topics and partitions, records and bytes, the policy's decision and rule, error, latency.

    \b
    Example:
      appliance audit operations --identity orders --topic payments --since 1h
      appliance audit operations --decision refused --json
    """
    rows = store.query_operations(_db(ctx), identity=identity, topic=topic, session=session, decision=decision,
                                  since=parse_since(since), limit=limit)
    emit(rows, as_json=as_json, columns=_OPERATION_COLUMNS, title="operations", times=("at",))


@audit.command()
@click.option("--kind", type=click.Choice(store.EVENT_KINDS), help="Only events of this kind.")
@click.option("--identity", help="Only this workload identity.")
@click.option("--since", help="Only since this long ago (30s, 10m, 2h, 1d) or an ISO-8601 time.")
@click.option("--limit", default=100, show_default=True, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by column name.")
@click.pass_context
def events(ctx, kind, identity, since, limit, as_json) -> None:
    """Enrolments, refused connects from unenrolled cgroups, starts, stops and errors.

    \b
    Example:
      appliance audit events --kind refused-connect --since 1d
    """
    rows = store.query_events(_db(ctx), kind=kind, identity=identity, since=parse_since(since), limit=limit)
    emit(rows, as_json=as_json, columns=_EVENT_COLUMNS, title="events", times=("at",))


@audit.command()
@click.option("--since", help="Only gaps ending since this long ago (30s, 10m, 2h, 1d) or an ISO-8601 time.")
@click.option("--limit", default=100, show_default=True, help="At most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by column name.")
@click.pass_context
def gaps(ctx, since, limit, as_json) -> None:
    """What the audit is missing: spans of time whose records could not be written, how many, and why.

    \b
    Example:
      appliance audit gaps --since 1d
    """
    rows = store.query_gaps(_db(ctx), since=parse_since(since), limit=limit)
    emit(rows, as_json=as_json, columns=_GAP_COLUMNS, title="gaps", times=("started_at", "ended_at"))


@audit.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects keyed by column name.")
@click.pass_context
def sql(ctx, query, as_json) -> None:
    """Run a read-only SQL query (tables: sessions, operations, events, gaps, authentications, session_changes,
    checkpoints, chain_head, migrations).

    \b
    Example:
      appliance audit sql "SELECT identity, count(*) FROM sessions GROUP BY identity"
    """
    _db(ctx).conn.close()  # clear error if it is missing or unreadable
    try:
        rows = store.read_only_query(ctx.obj.audit_db, query)
    except sqlite3.Error as e:
        raise click.ClickException(f"query failed: {e}") from None
    emit(rows, as_json=as_json, columns=list(rows[0]) if rows else [], title="result")


class BadInput(click.ClickException):
    """A checkpoint file or verifier key that cannot be used: exit status 2, apart from a broken chain's 1."""

    exit_code = 2


def _verifier(ctx: click.Context, key: str | None) -> checkpoints.Verifier | None:
    """The key given (a verifier key, or a file holding one), else the one beside the appliance's signing key."""
    if key is None:
        path = checkpoints.vkey_path(ctx.obj.audit_signing_key)
        if not path.exists():
            return None
        key = str(path)
    where = "--key"
    if Path(key).is_file():
        where = key
        try:
            key = Path(key).read_text()
        except OSError as e:
            raise BadInput(f"{where}: cannot read the verifier key: {e.strerror}") from None
    try:
        return checkpoints.Verifier.parse(key, where)
    except checkpoints.CheckpointError as e:
        raise BadInput(str(e)) from None


def _read_checkpoint(path: Path, verifier: checkpoints.Verifier | None) -> checkpoints.Checkpoint:
    try:
        note = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read the checkpoint: {getattr(e, 'strerror', None) or e}") from None
    if verifier is None:
        raise BadInput(f"{path}: no verifier key to check its signature with: give --key (the published "
                       "name+hash+key, or a file holding it)")
    try:
        return checkpoints.verify(note, verifier, str(path))
    except checkpoints.CheckpointError as e:
        raise BadInput(str(e)) from None


@audit.command()
@click.option("--checkpoint", "checkpoint_files", multiple=True, type=click.Path(path_type=Path),
              help="A checkpoint exported earlier (repeatable): the chain must still have its root hash at its size.")
@click.option("--key", help="The verifier key to check signatures with (name+hash+key, or a file holding it); "
              "default: audit-signing.vkey beside the appliance's signing key.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.pass_context
def verify(ctx, checkpoint_files, key, as_json) -> None:
    """Recompute the audit's hash chain and check it: every row, the chain head, every stored checkpoint's
    signature and root hash, every session against its recorded changes. Names the first bad row and exits 1
    when anything is wrong (2 for an unusable checkpoint file or key).

    A checkpoint exported earlier (`audit checkpoint --export`) also catches rows deleted from the tail and a
    chain recomputed after an edit, which the database alone cannot show.

    \b
    Example:
      appliance audit verify
      appliance audit verify --checkpoint /mnt/published/4711.txt --key vm/appliance-audit+5cf61737+AdaH...
    """
    verifier = _verifier(ctx, key)
    given = [(str(path), _read_checkpoint(path, verifier)) for path in checkpoint_files]
    path = ctx.obj.audit_db
    if not path.exists():
        raise click.ClickException(f"no audit database at {path} yet (it is created when `appliance serve` starts)")
    db = store.open_db(path)  # applies a pending migration, so an old database gets its (empty) chain
    try:
        db.conn.execute("BEGIN")  # one snapshot: the writer's appends meanwhile are not half seen
        report = verify_chain(db.conn, verifier, given)
        db.conn.execute("ROLLBACK")
    finally:
        db.conn.close()
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        counts = ", ".join(f"{t} {n:,}" for t, n in report.rows.items())
        click.echo(f"chain: {report.size:,} entries ({counts}); head {report.head_hash.hex()}")
        pre = {t: n for t, n in report.pre_chain.items() if n}
        if pre:
            click.echo("written before the chain began (not covered): "
                       + ", ".join(f"{t} {n:,}" for t, n in pre.items()))
        pruned = report.pruned
        if pruned:
            click.echo(f"pruned by retention: entries 1..{pruned['first_seq'] - 1:,}, last on "
                       f"{when(pruned['last_prune_at'])}; the kept chain starts at chain_seq {pruned['first_seq']:,} "
                       f"and links to the recorded boundary hash {pruned['boundary_hash'][:16]}…")
        good = sum(1 for c in report.checkpoints if c["ok"])
        unchecked = sum(1 for c in report.checkpoints if c["ok"] is None)
        click.echo(f"checkpoints: {good} of {len(report.checkpoints) - unchecked} verify"
                   + (f"; {unchecked} signed before the prune boundary, not checkable against deleted rows"
                      if unchecked else "")
                   + ("" if verifier else " (no verifier key: signatures not checked)"))
        click.echo(f"sessions: {report.sessions:,} checked against session_changes"
                   + (f" ({report.pre_chain_sessions:,} opened before the chain)" if report.pre_chain_sessions else ""))
        click.echo(f"verified in {report.seconds:.2f} s")
        for fault in report.faults:
            click.echo(f"FAULT {fault}", err=True)
        if report.more_faults:
            click.echo(f"... and {report.more_faults} more", err=True)
    if not report.ok:
        ctx.exit(1)


@audit.command()
@click.option("--now", is_flag=True, help="First sign a new checkpoint of the chain's current head (root; "
              "makes the signing key if there is none).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the checkpoint as DIR/<size>.txt and the verifier key as DIR/audit-signing.vkey.")
@click.option("--json", "as_json", is_flag=True, help="The checkpoint and verifier key as one JSON object.")
@click.pass_context
def checkpoint(ctx, now, export_dir, as_json) -> None:
    """Print the latest signed checkpoint of the audit chain and the verifier key, to publish elsewhere (a
    C2SP tlog-checkpoint note; the root hash is the hash chain's head). Kept outside the gateway, they let
    `audit verify --checkpoint` show that history up to them was not rewritten.

    \b
    Example:
      appliance audit checkpoint
      appliance audit checkpoint --now --export /mnt/published
    """
    config = ctx.obj
    if now:
        try:
            key = checkpoints.load_or_create_signing_key(config.audit_signing_key)
        except (ValueError, OSError) as e:
            raise BadInput(str(e)) from None
        db = store.open_db(config.audit_db)
        try:
            Appender(db.conn).checkpoint(key, config.checkpoint_dir)
        finally:
            db.conn.close()
    db = _db(ctx)
    try:
        row = db.execute("SELECT tree_size, note FROM checkpoints ORDER BY tree_size DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.conn.close()
    if row is None:
        raise click.ClickException(f"{config.audit_db} has no checkpoint yet (`appliance serve` signs one every "
                                   "audit_checkpoint_interval_s; `--now` signs one)")
    size, note = row
    verifier = _verifier(ctx, None)
    if export_dir is not None:
        write_note(export_dir, size, note)
        if verifier is not None:
            (export_dir / "audit-signing.vkey").write_text(verifier.vkey + "\n")
    if as_json:
        click.echo(json.dumps({"tree_size": size, "note": note, "verifier_key": verifier.vkey if verifier else None},
                              indent=2))
        return
    click.echo(note, nl=False)
    click.echo(f"\nverifier key: {verifier.vkey if verifier else '(none: no audit-signing.vkey)'}")
    if export_dir is not None:
        click.echo(f"exported to {export_dir}/{size}.txt" + (" and audit-signing.vkey" if verifier else ""))


@audit.command()
@click.option("--since", help="Rows from this long ago (30s, 10m, 2h, 1d) or an ISO-8601 time on; default: all.")
@click.option("--until", "until_", help="Rows before this ISO-8601 time (or this long ago); default: now.")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True,
              help="One JSON object a line, schema appliance.audit.export/1 (docs/recording.md).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file (created root-only) instead of standard output.")
@click.pass_context
def export(ctx, since, until_, fmt, output) -> None:
    """Every audit row in a span, one JSON object a line, for a SIEM: sessions, their changes,
    authentications, operations, events and gaps, chained rows in chain order.

    \b
    Example:
      appliance audit export --since 1d > audit-today.jsonl
      appliance audit export --since 2026-12-01T00:00:00 --until 2026-12-02T00:00:00 --output dec1.jsonl
    """
    from appliance.audit.replay import export_rows

    db = _db(ctx)
    start, end = parse_since(since), parse_since(until_)
    if start is not None and end is not None and end <= start:
        raise click.UsageError(f"--until ({until_}) is not after --since ({since})")
    rows = export_rows(db.conn, start, end)
    if output is None:
        for row in rows:
            click.echo(json.dumps(row, separators=(",", ":"), default=str))
        return
    import os

    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count = 0
    with os.fdopen(fd, "w") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":"), default=str) + "\n")
            count += 1
    click.echo(f"{count} rows written to {output}", err=True)


@audit.command()
@click.pass_context
def key(ctx) -> None:
    """Make the audit's signing key if there is none (root-only, in the state directory; scripts/install runs
    this, and serve would at its first start) and print its verifier key. Record that line somewhere the
    gateway's root cannot change: checkpoints are checked against it (`audit verify --key`).

    \b
    Example:
      appliance audit key
    """
    path = ctx.obj.audit_signing_key
    made = not path.exists()
    try:
        signing = checkpoints.load_or_create_signing_key(path)
    except (OSError, ValueError) as e:  # SecretError and CheckpointError are ValueErrors naming the file
        raise BadInput(f"the audit signing key {path}: {e}") from None
    click.echo(signing.verifier.vkey)
    click.echo(f"{'made' if made else 'kept'} {path} (root-only); verifier key also in "
               f"{checkpoints.vkey_path(path)}", err=True)
