"""The audit's write path: records to chained rows, one transaction per batch.

The writer thread and short-lived CLI processes (`store.record_event`) both
call `write_batch`. Each batch runs in BEGIN IMMEDIATE, so it links its rows
to the chain head no other process can move meanwhile (`chain`).

`sessions` rows are written and then updated; each change to one is also
appended, chained, to `session_changes` with the columns it set, in the same
order the table receives it, so `verify` can rebuild every sessions row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import fields
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Iterator

from appliance.audit import checkpoint as checkpoints
from appliance.audit.excerpts import ExcerptRow, build as build_excerpts
from appliance.audit.chain import Encoders, Link, canonical_json, normalise, read_head
from appliance.audit.records import (AuditRecord, Authentication, Event, Gap, Operation, RecordedOperation,
                                     SessionClosed, SessionOpened)

# Session change kinds, and what each sets (docs/audit.md, Tamper evidence).
OPEN, AUTHENTICATED, CLOSED, ORPHAN_CLOSED = "open", "authenticated", "closed", "orphan-closed"
# Written by retention (`prune`) when it deletes changes of a session whose row stays: every column, as the
# session's changes up to then make it, so the kept changes still rebuild the row.
RETAINED = "retained"
# An authenticated change adds this to reauthentications (1 for a re-authentication) rather than setting it.
REAUTHENTICATIONS_ADDED = "reauthentications_added"

_SESSION_COLUMNS = tuple(f.name for f in fields(SessionOpened))
_SESSION_INSERT = (f"INSERT OR REPLACE INTO sessions ({', '.join(_SESSION_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(_SESSION_COLUMNS))})")
_AUTHENTICATED_COLUMNS = ("identity", "groups", "auth_method", "subject", "issuer", "token_client_id", "jti",
                          "token_issued_at", "token_expires_at")
# A completed authentication names the session's identity from then on (a token's, in auth token mode).
_SESSION_AUTHENTICATED = (f"UPDATE sessions SET {', '.join(c + '=?' for c in _AUTHENTICATED_COLUMNS)},"
                          " reauthentications=reauthentications + ? WHERE session_id=?")
_CLOSED_COLUMNS = ("ended_at", "bytes_from_client", "bytes_to_client", "requests", "close_reason")
_SESSION_CLOSE = f"UPDATE sessions SET {', '.join(c + '=?' for c in _CLOSED_COLUMNS)} WHERE session_id=?"


def _getter(cls: type) -> Any:
    return attrgetter(*(f.name for f in fields(cls)))


_EXCERPT_GETTER = _getter(ExcerptRow)


def excerpt_rows(record: RecordedOperation) -> list[ExcerptRow]:
    """The record_excerpts rows of an operation recorded at depth excerpts, built before the transaction
    (decoding and masking never hold the write lock); the held bytes go back to their budget."""
    rows: list[ExcerptRow] = []
    for source in record.sources:
        try:
            rows += build_excerpts(source, record.direction)
        finally:
            source.release()
    return rows


# Rows are built straight from the frozen records with attrgetter and written
# with executemany: the writer thread shares the GIL with the proxy's event
# loop, and sqlite-utils' insert_all (type sniffing, dicts) cost several times
# more per row on this path. A table's record fields are its columns after id,
# in declared order (checked by `Encoders` building each insert from the schema).
_RECORDS = {"operations": Operation, "events": Event, "gaps": Gap, "authentications": Authentication}
_GETTERS = {table: _getter(cls) for table, cls in _RECORDS.items()}


class Appender:
    """One connection's write path: its tables' encoders, built once."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.encoders = Encoders(conn)
        self._session_affinity = self.encoders.affinities("sessions")
        for table, cls in _RECORDS.items():
            columns = self.encoders[table][0].columns[1:]
            if columns != tuple(f.name for f in fields(cls)):
                raise ValueError(f"audit table {table} has the columns {', '.join(columns)} after id, but "
                                 f"{cls.__name__} has the fields {', '.join(f.name for f in fields(cls))}: "
                                 "a migration and the record type must add the same columns in the same order")
        excerpt_columns = ("operation_id", "session_id", "at", "direction") + tuple(f.name for f in fields(ExcerptRow))
        if self.encoders["record_excerpts"][0].columns[1:] != excerpt_columns:
            raise ValueError(f"audit table record_excerpts has the columns "
                             f"{', '.join(self.encoders['record_excerpts'][0].columns[1:])} after id, but the "
                             f"writer writes {', '.join(excerpt_columns)}")

    def _change(self, session_id: str, kind: str, columns: Iterable[str], values: Iterable[Any],
                extra: dict[str, Any] | None = None) -> tuple[str, str, str]:
        affinity = self._session_affinity
        changes = {c: normalise(v, affinity[c]) for c, v in zip(columns, values)}
        if extra:
            changes.update(extra)
        return session_id, kind, canonical_json(changes)

    def write_batch(self, records: Iterable[AuditRecord]) -> None:
        """Write records in one transaction, chained in the order the tables receive them."""
        opened, closed, operations, events, gaps, authentications, authenticated = [], [], [], [], [], [], []
        excerpts: list[tuple[int, RecordedOperation, list]] = []  # (index in operations, record, rows)
        for record in records:
            if isinstance(record, Operation):
                operations.append(record)
            elif isinstance(record, RecordedOperation):
                excerpts.append((len(operations), record, excerpt_rows(record)))
                operations.append(record.operation)
            elif isinstance(record, Authentication):
                authentications.append(record)
                if record.outcome == "ok":
                    authenticated.append((record.identity, record.groups, record.method, record.subject,
                                          record.issuer, record.client_id, record.jti, record.issued_at,
                                          record.expires_at, int(record.kind == "reauth"), record.session_id))
            elif isinstance(record, SessionOpened):
                row = list(attrgetter(*_SESSION_COLUMNS)(record))
                row[3] = json.dumps(list(record.groups))  # groups, the fourth field
                opened.append(row)
            elif isinstance(record, SessionClosed):
                closed.append((record.ended_at, record.bytes_from_client, record.bytes_to_client, record.requests,
                               record.close_reason, record.session_id))
            elif isinstance(record, Event):
                events.append(record)
            elif isinstance(record, Gap):
                gaps.append(record)
        conn = self.conn
        with immediate(conn):
            link = Link(conn, self.encoders)
            if opened:
                link.rows("session_changes", [self._change(r[0], OPEN, _SESSION_COLUMNS, r) for r in opened])
                conn.executemany(_SESSION_INSERT, opened)
            if authentications:
                link.rows("authentications", authentications, _GETTERS["authentications"])
                if authenticated:
                    link.rows("session_changes", [
                        self._change(a[-1], AUTHENTICATED, _AUTHENTICATED_COLUMNS, a[:-2],
                                     {REAUTHENTICATIONS_ADDED: a[-2]}) for a in authenticated])
                    conn.executemany(_SESSION_AUTHENTICATED, authenticated)
            if operations:
                first_id = link.rows("operations", operations, _GETTERS["operations"])
                if excerpts:
                    link.rows("record_excerpts", [
                        (first_id + index, record.operation.session_id, record.operation.at, record.direction,
                         *_EXCERPT_GETTER(row)) for index, record, rows in excerpts for row in rows])
            if events:
                link.rows("events", events, _GETTERS["events"])
            if closed:
                link.rows("session_changes", [self._change(c[-1], CLOSED, _CLOSED_COLUMNS, c[:-1]) for c in closed])
                conn.executemany(_SESSION_CLOSE, closed)
            if gaps:
                link.rows("gaps", gaps, _GETTERS["gaps"])
            link.finish()

    def close_orphan_sessions(self, reason: str) -> int:
        """End every session row that has no end, at the last time the audit saw it; returns how many.

        Called at start, before anything is served, so no live session is among
        them. `ended_at` becomes the session's last operation's time (or its start):
        the end itself was never recorded, and the reason says so.
        """
        conn = self.conn
        with immediate(conn):
            ends = conn.execute(
                "SELECT session_id, coalesce((SELECT max(o.at) FROM operations o"
                " WHERE o.session_id = sessions.session_id), started_at) FROM sessions WHERE ended_at IS NULL"
                " ORDER BY rowid").fetchall()
            link = Link(conn, self.encoders)
            link.rows("session_changes", [self._change(sid, ORPHAN_CLOSED, ("ended_at", "close_reason"), (end, reason))
                                          for sid, end in ends])
            conn.executemany("UPDATE sessions SET ended_at = ?, close_reason = ? WHERE session_id = ?",
                             [(end, reason, sid) for sid, end in ends])
            link.finish()
        return len(ends)

    def checkpoint(self, key: checkpoints.SigningKey, directory: Path | None,
                   at: float | None = None) -> checkpoints.Checkpoint | None:
        """Sign the chain's head into `checkpoints` and `<directory>/<size>.txt`; None when it has not moved.

        Nothing is written for an empty chain, or one no longer than the last checkpoint.
        """
        conn = self.conn
        head = read_head(conn)
        last = conn.execute("SELECT max(tree_size) FROM checkpoints").fetchone()[0]
        if head.seq == 0 or (last is not None and head.seq <= last):
            return None
        checkpoint, note = checkpoints.make(head.seq, head.hash, key, at)
        with immediate(conn):
            conn.execute("INSERT OR IGNORE INTO checkpoints (tree_size, root_hash, at, note) VALUES (?, ?, ?, ?)",
                         (checkpoint.size, checkpoint.root_hash, checkpoint.at, note))
        if directory is not None:
            write_note(Path(directory), checkpoint.size, note)
        return checkpoint


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One BEGIN IMMEDIATE transaction: the chain head cannot move under it; committed, or rolled back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # On SQLITE_FULL and I/O errors SQLite has already rolled the transaction
        # back; a ROLLBACK then would raise and hide the real reason.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def write_note(directory: Path, size: int, note: str) -> Path:
    """`<directory>/<size>.txt`, written whole (temporary file, then rename)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = directory / f"{size}.txt"
    tmp = directory / f".{size}.txt.tmp"
    tmp.write_text(note)
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path
