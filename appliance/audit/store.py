"""The audit database's schema (named, append-only migrations) and its read-side queries.

Opened in WAL mode with synchronous=NORMAL: a committed batch survives a crash
of the appliance; only batches still queued in the writer are lost (see
`writer` for that window).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils

from appliance.audit.append import Appender
from appliance.audit.records import AuditRecord, Event

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
    (
        # The hash chain (appliance/audit/chain.py; docs/audit.md, Tamper evidence). Rows already
        # here keep NULL chain columns: verify counts them as written before the chain began.
        "0007_audit_chain",
        """
        ALTER TABLE operations ADD COLUMN chain_seq INTEGER;
        ALTER TABLE operations ADD COLUMN chain_hash BLOB;
        CREATE UNIQUE INDEX operations_chain_seq ON operations(chain_seq);
        ALTER TABLE events ADD COLUMN chain_seq INTEGER;
        ALTER TABLE events ADD COLUMN chain_hash BLOB;
        CREATE UNIQUE INDEX events_chain_seq ON events(chain_seq);
        ALTER TABLE authentications ADD COLUMN chain_seq INTEGER;
        ALTER TABLE authentications ADD COLUMN chain_hash BLOB;
        CREATE UNIQUE INDEX authentications_chain_seq ON authentications(chain_seq);
        ALTER TABLE gaps ADD COLUMN chain_seq INTEGER;
        ALTER TABLE gaps ADD COLUMN chain_hash BLOB;
        CREATE UNIQUE INDEX gaps_chain_seq ON gaps(chain_seq);
        CREATE TABLE session_changes (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            changes TEXT,
            chain_seq INTEGER,
            chain_hash BLOB
        );
        CREATE UNIQUE INDEX session_changes_chain_seq ON session_changes(chain_seq);
        CREATE INDEX session_changes_session ON session_changes(session_id);
        INSERT INTO session_changes (session_id, kind) SELECT session_id, 'pre-chain' FROM sessions ORDER BY rowid;
        CREATE TABLE chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL
        );
        INSERT INTO chain_head VALUES (1, 0, zeroblob(32));
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            tree_size INTEGER NOT NULL UNIQUE,
            root_hash BLOB NOT NULL,
            at REAL NOT NULL,
            note TEXT NOT NULL
        );
        """,
    ),
    (
        # Retention (appliance/audit/prune.py; docs/audit.md, Tamper evidence): each batch of a prune
        # deletes a prefix of the chain and appends one of these rows, chained, in the same transaction.
        "0008_audit_prunes",
        """
        CREATE TABLE prunes (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            first_seq INTEGER NOT NULL,
            boundary_hash BLOB NOT NULL,
            deleted TEXT NOT NULL,
            reason TEXT NOT NULL,
            chain_seq INTEGER,
            chain_hash BLOB
        );
        CREATE UNIQUE INDEX prunes_chain_seq ON prunes(chain_seq);
        """,
    ),
    (
        # Recording at depth excerpts (docs/recording.md, Depth): one row per excerpted record (or a note on
        # why a partition's excerpts end), chained right after the operations row it belongs to.
        "0009_record_excerpts",
        """
        CREATE TABLE record_excerpts (
            id INTEGER PRIMARY KEY,
            operation_id INTEGER NOT NULL,
            session_id TEXT NOT NULL,
            at REAL NOT NULL,
            direction TEXT NOT NULL,
            topic TEXT NOT NULL,
            partition INTEGER,
            offset INTEGER,
            offset_delta INTEGER,
            timestamp INTEGER,
            key TEXT,
            key_length INTEGER,
            headers TEXT,
            value TEXT,
            value_length INTEGER,
            masked INTEGER,
            rule TEXT,
            note TEXT,
            chain_seq INTEGER,
            chain_hash BLOB
        );
        CREATE UNIQUE INDEX record_excerpts_chain_seq ON record_excerpts(chain_seq);
        CREATE INDEX record_excerpts_operation ON record_excerpts(operation_id);
        CREATE INDEX record_excerpts_session ON record_excerpts(session_id, at);
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
EVENT_KINDS += ("approval-requested", "approval-notified", "approval-vote", "approval-approved", "approval-denied", "approval-expired",
                "approval-refused", "grant-used", "grant-revoked")
# Retention deleting the oldest part of the audit (docs/recording.md, Retention).
EVENT_KINDS += ("audit-pruned",)
# The web console (docs/console.md): logins, refused requests, verify runs; its votes use the approval kinds.
EVENT_KINDS += ("console-login", "console-logout", "console-refused", "console-verify")


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
    # A new database frees the pages retention prunes with `PRAGMA incremental_vacuum` (appliance.audit.prune);
    # this only takes effect before the first table is made. An older one keeps auto_vacuum NONE until a VACUUM.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
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


def write_batch(db: sqlite_utils.Database, records: Iterable[AuditRecord]) -> None:
    """Write records in one chained transaction (`append.Appender.write_batch`); for callers that write once."""
    Appender(db.conn).write_batch(records)


def record_event(path: Path, event: Event) -> None:
    """Append one event from a process that is not the server (the CLI)."""
    db = open_db(path)
    try:
        write_batch(db, [event])
    finally:
        db.conn.close()


def close_orphan_sessions(db: sqlite_utils.Database, reason: str) -> int:
    """End every session row that has no end (`append.Appender.close_orphan_sessions`); returns how many."""
    return Appender(db.conn).close_orphan_sessions(reason)


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
