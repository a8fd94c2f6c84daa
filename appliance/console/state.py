"""The console's I/O over the appliance's state directory: the one module here that opens its files.

- the audit database, read through read-only connections (one per call; a
  console never migrates or writes it), except that each console action is
  appended as an event with `audit.store.record_event`, as the CLI's are;
- approvals.db through ApprovalStore, so votes and revocations run the same
  rules and transactions as `appliance approvals`;
- status.json, for the live sessions `serve` writes once a second;
- the record's verify report, cached: verifying recomputes the whole chain,
  so it runs on demand, one at a time, and the page shows the last result.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from appliance.approvals.model import ApprovalRequest, Approver, Grant, State
from appliance.approvals.store import ApprovalStore
from appliance.audit import checkpoint as checkpoints
from appliance.audit import replay, store
from appliance.audit.records import Event
from appliance.config import Config


class ConsoleState:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._approvals: ApprovalStore | None = None
        self._approvals_lock = threading.Lock()
        self._verify_lock = threading.Lock()
        self.verified: dict[str, Any] | None = None
        self.verified_at: float | None = None
        self.verify_error: str | None = None

    # ---- status.json --------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """serve's last snapshot, or None when it is not running (no file, or one being replaced)."""
        try:
            return json.loads(self.config.status_file.read_text())
        except (OSError, ValueError):
            return None

    # ---- the audit ------------------------------------------------------------------

    def _read(self):
        path = self.config.audit_db
        if not Path(path).exists():
            raise FileNotFoundError(f"no audit database at {path} yet (it is created when `appliance serve` starts)")
        return store.open_read_only(path)

    def query(self, what: str, **filters: Any) -> list[dict[str, Any]]:
        """`sessions`, `operations` or `events` rows, newest first, as `appliance audit` lists them."""
        db = self._read()
        try:
            return {"sessions": store.query_sessions, "operations": store.query_operations,
                    "events": store.query_events}[what](db, **filters)
        finally:
            db.conn.close()

    def refusals(self, kinds: tuple[str, ...], limit: int) -> tuple[list[dict], list[dict]]:
        """Operations not allowed and refusal events, newest first."""
        db = self._read()
        try:
            marks = ", ".join("?" for _ in kinds)
            operations = list(db.query(
                "SELECT o.*, s.identity FROM operations o JOIN sessions s USING (session_id) WHERE o.decision IS "
                "NOT NULL AND o.decision != 'allowed' ORDER BY o.at DESC, o.id DESC LIMIT ?", [limit]))
            events = list(db.query(f"SELECT * FROM events WHERE kind IN ({marks}) ORDER BY at DESC, id DESC LIMIT ?",
                                   [*kinds, limit]))
            return operations, events
        finally:
            db.conn.close()

    def timeline(self, session_id: str) -> tuple[dict, list[replay.Entry]]:
        db = self._read()
        try:
            return replay.timeline(db.conn, session_id)
        finally:
            db.conn.close()

    def record(self, kind: str, message: str, *, identity: str | None = None, session_id: str | None = None,
               **detail: Any) -> None:
        store.record_event(self.config.audit_db, Event(at=time.time(), kind=kind, message=message, identity=identity,
                                                       session_id=session_id,
                                                       detail=json.dumps(detail, default=str)))

    def verify(self) -> bool:
        """Recompute the chain now, in one read snapshot, and keep the report (or why it could not run); False,
        at once, when a verify is already under way: presses from many tabs must not each hold one of the
        console's worker threads waiting for the lock (the console would stop answering anyone)."""
        if not self._verify_lock.acquire(blocking=False):
            return False
        try:
            self._verify()
        finally:
            self._verify_lock.release()
        return True

    def _verify(self) -> None:
        from appliance.audit.verify import verify

        started = time.time()
        try:
            vkey = checkpoints.vkey_path(self.config.audit_signing_key)
            verifier = checkpoints.Verifier.parse(vkey.read_text(), str(vkey)) if vkey.exists() else None
            db = self._read()
            try:
                db.conn.execute("BEGIN")
                report = verify(db.conn, verifier)
                db.conn.execute("ROLLBACK")
            finally:
                db.conn.close()
        except (OSError, sqlite3.Error, checkpoints.CheckpointError) as e:
            self.verified, self.verified_at, self.verify_error = None, started, str(e)
            return
        self.verified, self.verified_at, self.verify_error = report.as_json(), started, None

    # ---- approvals.db ---------------------------------------------------------------

    def requests(self, state: State | None, limit: int = 100) -> list[ApprovalRequest]:
        with self._approvals_lock:
            return self._store().requests(state=state, limit=limit)

    def request(self, request_id: str) -> ApprovalRequest:
        """One request by id (ApprovalError naming it when there is none)."""
        with self._approvals_lock:
            return self._store().get(request_id)

    def grants(self, active_at: float | None) -> list[Grant]:
        with self._approvals_lock:
            return self._store().grants(active_at=active_at)

    def vote(self, request_id: str, approver: Approver, approve: bool, reason: str):
        with self._approvals_lock:
            return self._store().vote(request_id, approver, approve, reason, time.time())

    def revoke(self, grant_id: str, by: str, reason: str, groups: tuple[str, ...]) -> Grant:
        with self._approvals_lock:
            return self._store().revoke(grant_id, by, reason, time.time(), groups=groups)

    def _store(self) -> ApprovalStore:
        if self._approvals is None:
            self._approvals = ApprovalStore(self.config.approvals_db)
        return self._approvals
