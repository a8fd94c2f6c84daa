"""`appliance audit ...`: query the audit database."""

from __future__ import annotations

import sqlite3

import click

from appliance.audit import store
from appliance.cli.output import emit, parse_since

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
    """Run a read-only SQL query (tables: sessions, operations, events, gaps, migrations).

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
