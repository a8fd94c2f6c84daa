"""The audit database's schema (named, append-only migrations) and its read-side queries.

Opened in WAL mode with synchronous=NORMAL: a committed batch survives a crash
of the appliance; only batches still queued in the writer are lost (see
`writer` for that window).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import fields
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from appliance.audit.records import (AuditRecord, Authentication, Event, Gap, Operation, SessionClosed,
                                     SessionOpened)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_sessions_operations_events",
        """
        CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL,
            identity TEXT,
            groups TEXT,
            cgroup_id INTEGER,
            cgroup_path TEXT,
            enrolled_cgroup_id INTEGER,
            pid INTEGER,
            uid INTEGER,
            gid INTEGER,
            command TEXT,
            client_address TEXT,
            broker_address TEXT,
            bytes_from_client INTEGER DEFAULT 0,
            bytes_to_client INTEGER DEFAULT 0,
            requests INTEGER DEFAULT 0,
            close_reason TEXT
        );
        CREATE INDEX sessions_identity ON sessions(identity, started_at);
        CREATE TABLE operations (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(session_id),
            at REAL NOT NULL,
            api_key INTEGER NOT NULL,
            api_name TEXT NOT NULL,
            api_version INTEGER NOT NULL,
            correlation_id INTEGER,
            client_id TEXT,
            topics TEXT,
            group_id TEXT,
            records INTEGER,
            record_bytes INTEGER,
            request_bytes INTEGER,
            response_bytes INTEGER,
            error_code INTEGER,
            latency_ms REAL,
            outcome TEXT NOT NULL
        );
        CREATE INDEX operations_session ON operations(session_id, at);
        CREATE INDEX operations_at ON operations(at);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            identity TEXT,
            cgroup_id INTEGER,
            cgroup_path TEXT,
            pid INTEGER,
            session_id TEXT,
            detail TEXT
        );
        CREATE INDEX events_at ON events(at);
        """,
    ),
    (
        "0002_operation_decisions",
        """
        ALTER TABLE operations ADD COLUMN decision TEXT;
        ALTER TABLE operations ADD COLUMN checks TEXT;
        CREATE INDEX operations_decision ON operations(decision, at);
        """,
    ),
    (
        "0003_operation_masked_values",
        """
        ALTER TABLE operations ADD COLUMN masked INTEGER;
        """,
    ),
    (
        "0004_audit_gaps",
        """
        CREATE TABLE gaps (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            records_lost INTEGER NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX gaps_started_at ON gaps(started_at);
        """,
    ),
    (
        "0005_workload_authentication",
        """
        ALTER TABLE sessions ADD COLUMN auth_method TEXT;
        ALTER TABLE sessions ADD COLUMN subject TEXT;
        ALTER TABLE sessions ADD COLUMN issuer TEXT;
        ALTER TABLE sessions ADD COLUMN token_client_id TEXT;
        ALTER TABLE sessions ADD COLUMN jti TEXT;
        ALTER TABLE sessions ADD COLUMN token_issued_at REAL;
        ALTER TABLE sessions ADD COLUMN token_expires_at REAL;
        ALTER TABLE sessions ADD COLUMN reauthentications INTEGER DEFAULT 0;
        CREATE INDEX sessions_subject ON sessions(subject, started_at);
        CREATE TABLE authentications (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(session_id),
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            mechanism TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT NOT NULL,
            method TEXT,
            identity TEXT,
            groups TEXT,
            subject TEXT,
            issuer TEXT,
            client_id TEXT,
            jti TEXT,
            issued_at REAL,
            expires_at REAL,
            session_expires_at REAL,
            username TEXT
        );
        CREATE INDEX authentications_session ON authentications(session_id, at);
        CREATE INDEX authentications_subject ON authentications(subject, at);
        """,
    ),
    (
        "0006_session_network_namespace",
        """
        ALTER TABLE sessions ADD COLUMN netns_cookie INTEGER;
        ALTER TABLE sessions ADD COLUMN netns TEXT;
        """,
    ),
]


EVENT_KINDS = ("start", "stop", "enroll", "unenroll", "refused-connect", "refused-session", "policy-load",
               "policy-error", "error", "broker-down", "broker-up")

# The audit's own failures and the proxy's limits (docs/audit.md).
EVENT_KINDS += ("unclean-stop", "audit-failing", "audit-recovered", "session-limit")
# Workload authentication (docs/identity.md).
EVENT_KINDS += ("revoke",)
# The appliance's own broker connections renewing their SASL session (KIP-368, docs/identity.md).
EVENT_KINDS += ("upstream-reauth",)
# The proxy's listeners in workloads' network namespaces (docs/audit.md).
EVENT_KINDS += ("netns-listen", "netns-close", "netns-limit")
# A cgroup an enrolment pattern matches but that gets no identity (appliance.identity.containers).
EVENT_KINDS += ("enroll-skipped",)
# Brokers learned from the cluster's own answers, steered or refused (docs/operations.md, Clusters).
EVENT_KINDS += ("broker-discovered", "discovery-refused", "broker-resolved")
# A discovered broker the cluster stopped naming, un-steered (docs/operations.md, Clusters).
EVENT_KINDS += ("broker-forgotten",)
# Workload TLS the proxy terminated (docs/tls.md).
EVENT_KINDS += ("workload-tls",)
# Approvals: requests held for a person, their decisions, the grants they made (docs/approvals.md).
EVENT_KINDS += ("approval-requested", "approval-vote", "approval-approved", "approval-denied", "approval-expired",
                "approval-refused", "grant-used", "grant-revoked")


def open_db(path: Path | str) -> sqlite_utils.Database:
    """Open (creating if needed) the audit database and apply pending migrations.

    The file holds command lines and who did what: it is created readable by
    its owner (root) only.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    db = sqlite_utils.Database(conn)
    if str(path) != ":memory:":
        db.enable_wal()
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(db)
    return db


def open_read_only(path: Path) -> sqlite_utils.Database:
    """A read-only connection for queries: no migration, no write, safe beside the writer."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("SELECT 1 FROM sessions LIMIT 1")  # fails clearly on an unreadable or foreign file
    return sqlite_utils.Database(conn)


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply, in order, each named migration not yet recorded; return the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations").fetchall()}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with db.conn:
            db.conn.execute("BEGIN")
            for statement in sql.split(";"):
                if statement.strip():
                    db.conn.execute(statement)
            db.conn.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied


def _insert_sql(table: str, cls: type, verb: str = "INSERT") -> tuple[str, Any]:
    names = [f.name for f in fields(cls)]
    sql = f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    return sql, attrgetter(*names)


# Rows are built straight from the frozen records with attrgetter and written
# with executemany: the writer thread shares the GIL with the proxy's event
# loop, and sqlite-utils' insert_all (type sniffing, dicts) cost several times
# more per row on this path. sqlite-utils still owns the schema and queries.
_OPERATION_INSERT = _insert_sql("operations", Operation)
_EVENT_INSERT = _insert_sql("events", Event)
_GAP_INSERT = _insert_sql("gaps", Gap)
_AUTHENTICATION_INSERT = _insert_sql("authentications", Authentication)
# A completed authentication names the session's identity from then on (a token's, in auth token mode).
_SESSION_AUTHENTICATED = (
    "UPDATE sessions SET identity=?, groups=?, auth_method=?, subject=?, issuer=?, token_client_id=?, jti=?,"
    " token_issued_at=?, token_expires_at=?, reauthentications=reauthentications + ? WHERE session_id=?")
_SESSION_INSERT = _insert_sql("sessions", SessionOpened, "INSERT OR REPLACE")
_SESSION_CLOSE = ("UPDATE sessions SET ended_at=?, bytes_from_client=?, bytes_to_client=?, requests=?, close_reason=?"
                  " WHERE session_id=?")


def write_batch(db: sqlite_utils.Database, records: Iterable[AuditRecord]) -> None:
    """Write records in one transaction; the writer thread and short-lived CLI processes call this."""
    opened, closed, operations, events, gaps, authentications, authenticated = [], [], [], [], [], [], []
    for record in records:
        if isinstance(record, Operation):
            operations.append(_OPERATION_INSERT[1](record))
        elif isinstance(record, Authentication):
            authentications.append(_AUTHENTICATION_INSERT[1](record))
            if record.outcome == "ok":
                authenticated.append((record.identity, record.groups, record.method, record.subject, record.issuer,
                                      record.client_id, record.jti, record.issued_at, record.expires_at,
                                      int(record.kind == "reauth"), record.session_id))
        elif isinstance(record, SessionOpened):
            row = list(_SESSION_INSERT[1](record))
            row[3] = json.dumps(list(record.groups))  # groups, the fourth field
            opened.append(row)
        elif isinstance(record, SessionClosed):
            closed.append((record.ended_at, record.bytes_from_client, record.bytes_to_client, record.requests,
                           record.close_reason, record.session_id))
        elif isinstance(record, Event):
            events.append(_EVENT_INSERT[1](record))
        elif isinstance(record, Gap):
            gaps.append(_GAP_INSERT[1](record))
    conn = db.conn
    conn.execute("BEGIN")
    try:
        if opened:
            conn.executemany(_SESSION_INSERT[0], opened)
        if authentications:
            conn.executemany(_AUTHENTICATION_INSERT[0], authentications)
            conn.executemany(_SESSION_AUTHENTICATED, authenticated)
        if operations:
            conn.executemany(_OPERATION_INSERT[0], operations)
        if events:
            conn.executemany(_EVENT_INSERT[0], events)
        if closed:
            conn.executemany(_SESSION_CLOSE, closed)
        if gaps:
            conn.executemany(_GAP_INSERT[0], gaps)
        conn.execute("COMMIT")
    except BaseException:
        # On SQLITE_FULL and I/O errors SQLite has already rolled the transaction
        # back; a ROLLBACK then would raise and hide the real reason.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def record_event(path: Path, event: Event) -> None:
    """Append one event from a process that is not the server (the CLI)."""
    db = open_db(path)
    try:
        write_batch(db, [event])
    finally:
        db.conn.close()


def close_orphan_sessions(db: sqlite_utils.Database, reason: str) -> int:
    """End every session row that has no end, at the last time the audit saw it; returns how many.

    Called at start, before anything is served, so no live session is among
    them. `ended_at` becomes the session's last operation's time (or its start):
    the end itself was never recorded, and the reason says so.
    """
    conn = db.conn
    conn.execute("BEGIN")
    try:
        cursor = conn.execute(
            "UPDATE sessions SET close_reason = ?, ended_at = coalesce("
            "(SELECT max(o.at) FROM operations o WHERE o.session_id = sessions.session_id), started_at)"
            " WHERE ended_at IS NULL", (reason,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return cursor.rowcount


# ---- queries --------------------------------------------------------------------

def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def query_sessions(db, *, identity: str | None = None, subject: str | None = None, since: float | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    clauses, params = [], []
    if identity:
        clauses.append("identity = ?"), params.append(identity)
    if subject:
        clauses.append("subject = ?"), params.append(subject)
    if since is not None:
        clauses.append("started_at >= ?"), params.append(since)
    sql = f"SELECT * FROM sessions{_where(clauses)} ORDER BY started_at DESC LIMIT ?"
    return list(db.query(sql, params + [limit]))


def query_operations(
    db, *, identity: str | None = None, topic: str | None = None, since: float | None = None,
    session: str | None = None, decision: str | None = None, limit: int = 100,
) -> list[dict[str, Any]]:
    clauses, params = [], []
    if decision:
        clauses.append("o.decision = ?"), params.append(decision)
    if identity:
        clauses.append("s.identity = ?"), params.append(identity)
    if topic:
        clauses.append("EXISTS (SELECT 1 FROM json_each(o.topics) WHERE json_each.key = ?)"), params.append(topic)
    if since is not None:
        clauses.append("o.at >= ?"), params.append(since)
    if session:
        clauses.append("o.session_id = ?"), params.append(session)
    sql = (
        "SELECT o.*, s.identity, s.pid, s.cgroup_path FROM operations o JOIN sessions s USING (session_id)"
        f"{_where(clauses)} ORDER BY o.at DESC, o.id DESC LIMIT ?"
    )
    return list(db.query(sql, params + [limit]))


def query_events(db, *, kind: str | None = None, identity: str | None = None, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
    clauses, params = [], []
    if kind:
        clauses.append("kind = ?"), params.append(kind)
    if identity:
        clauses.append("identity = ?"), params.append(identity)
    if since is not None:
        clauses.append("at >= ?"), params.append(since)
    sql = f"SELECT * FROM events{_where(clauses)} ORDER BY at DESC, id DESC LIMIT ?"
    return list(db.query(sql, params + [limit]))


def query_authentications(db, *, session: str | None = None, subject: str | None = None,
                          outcome: str | None = None, since: float | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
    clauses, params = [], []
    for column, value in (("session_id", session), ("subject", subject), ("outcome", outcome)):
        if value:
            clauses.append(f"{column} = ?"), params.append(value)
    if since is not None:
        clauses.append("at >= ?"), params.append(since)
    sql = f"SELECT * FROM authentications{_where(clauses)} ORDER BY at DESC, id DESC LIMIT ?"
    return list(db.query(sql, params + [limit]))


def query_gaps(db, *, since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("ended_at >= ?"), params.append(since)
    sql = f"SELECT * FROM gaps{_where(clauses)} ORDER BY started_at DESC LIMIT ?"
    return list(db.query(sql, params + [limit]))


def read_only_query(path: Path, sql: str) -> list[dict[str, Any]]:
    """Run operator SQL on a read-only connection: anything that writes fails in SQLite itself."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()
