"""Approval requests and grants in `<state_dir>/approvals.db`, shared by the serving process and the CLI.

Root-only, WAL, like the audit database; but this file is state, not the
record: what happened to each request is audited as events (docs/audit.md),
and this file says what holds now. Every change runs in `BEGIN IMMEDIATE`,
so a vote from the CLI and the serving process's expiry never interleave.
`changed()` tells the serving process cheaply (SQLite's data_version) that
another process wrote, so it reloads the grants only then.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, replace
from pathlib import Path

from appliance.approvals.model import (Approver, ApprovalError, ApprovalRequest, Grant, Need, State, Vote, expired,
                                       vote)
from appliance.policy.model import Approval, GrantScope

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, identity TEXT NOT NULL, groups TEXT NOT NULL, needs TEXT NOT NULL,
    api TEXT NOT NULL, session_id TEXT NOT NULL, cgroup_path TEXT, created_at REAL NOT NULL,
    hold_until REAL NOT NULL, expires_at REAL NOT NULL, approval TEXT NOT NULL, state TEXT NOT NULL,
    votes TEXT NOT NULL, decided_at REAL
);
CREATE INDEX IF NOT EXISTS requests_state ON requests(state, created_at);
CREATE INDEX IF NOT EXISTS requests_pending ON requests(identity, state, expires_at);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, request_id TEXT NOT NULL, identity TEXT NOT NULL, rule TEXT NOT NULL, scope TEXT NOT NULL,
    needs TEXT NOT NULL, approvers TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    revoked_at REAL, revoked_by TEXT, revoke_reason TEXT, uses INTEGER, used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS grants_expires ON grants(expires_at);
"""


class ApprovalStore:
    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        # The serving process asks with a short timeout: it asks from the event loop, and a store another
        # process holds locked is tried again at the next step rather than waited for.
        self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.executescript(_SCHEMA)
        if "uses" not in self._grant_columns():  # a store made before grants could be counted
            with self._immediate():
                if "uses" not in self._grant_columns():  # another process may have added them meanwhile
                    self.conn.execute("ALTER TABLE grants ADD COLUMN uses INTEGER")
                    self.conn.execute("ALTER TABLE grants ADD COLUMN used INTEGER NOT NULL DEFAULT 0")
        self._version = self._data_version()

    def close(self) -> None:
        self.conn.close()

    def _grant_columns(self) -> set[str]:
        return {row[1] for row in self.conn.execute("PRAGMA table_info(grants)")}

    # ---- change detection -------------------------------------------------------

    def _data_version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self) -> bool:
        """Whether another connection committed since the last call."""
        version = self._data_version()
        if version == self._version:
            return False
        self._version = version
        return True

    # ---- requests ---------------------------------------------------------------

    def pending_for(self, identity: str, rule: str, needs: tuple[Need, ...], now: float) -> ApprovalRequest | None:
        """A pending, unexpired request of this identity for exactly these needs: a retry joins it."""
        wanted = _needs_json(needs)
        for row in self.conn.execute("SELECT * FROM requests WHERE state = 'pending' AND identity = ? AND rule = ?"
                                     " AND needs = ? AND expires_at > ? ORDER BY created_at DESC LIMIT 1",
                                     (identity, rule, wanted, now)):
            return _request(row)
        return None

    def denied_since(self, identity: str, rule: str, needs: tuple[Need, ...], since: float) -> ApprovalRequest | None:
        """The latest request of this identity under this rule denied at or after `since` that asked for nothing
        these needs do not include: the same ask, reordered, or with more added to it."""
        for row in self.conn.execute("SELECT * FROM requests WHERE state = 'denied' AND identity = ? AND rule = ?"
                                     " AND needs = ? AND decided_at >= ? ORDER BY decided_at DESC LIMIT 1",
                                     (identity, rule, _needs_json(needs), since)):
            return _request(row)
        asked = set(needs)
        for row in self.conn.execute("SELECT * FROM requests WHERE state = 'denied' AND identity = ? AND rule = ?"
                                     " AND decided_at >= ? ORDER BY decided_at DESC LIMIT 1000",
                                     (identity, rule, since)):
            request = _request(row)
            if set(request.needs) <= asked:
                return request
        return None

    def pending_count(self, identity: str, now: float) -> int:
        return self.conn.execute("SELECT count(*) FROM requests WHERE state = 'pending' AND identity = ? "
                                 "AND expires_at > ?", (identity, now)).fetchone()[0]

    def file(self, request: ApprovalRequest) -> None:
        with self._immediate():
            self._save(request)

    def get(self, request_id: str) -> ApprovalRequest:
        row = self.conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval request {request_id!r} (see `appliance approvals list --all`)")
        return _request(row)

    def requests(self, *, state: State | None = None, limit: int = 100) -> list[ApprovalRequest]:
        if state is None:
            rows = self.conn.execute("SELECT * FROM requests ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self.conn.execute("SELECT * FROM requests WHERE state = ? ORDER BY created_at DESC LIMIT ?",
                                     (str(state), limit))
        return [_request(r) for r in rows]

    def vote(self, request_id: str, approver: Approver, approve: bool, reason: str,
             now: float) -> tuple[ApprovalRequest, Grant | None]:
        """Record a vote (raises ApprovalError with why it cannot be taken); the request and any grant made."""
        with self._immediate():
            request = self.get(request_id)
            if expired(request, now):
                self._save(_expire(request, now))
                raise ApprovalError(f"request {request_id} expired at {request.expires_at:.0f}; the workload's "
                                    "next attempt files a new one")
            request, grant = vote(request, approver, approve, reason, now)
            self._save(request)
            if grant is not None:
                self._save_grant(grant)
        return request, grant

    def expire_due(self, now: float) -> list[ApprovalRequest]:
        """Mark every pending request past its `expires_at` expired; the ones marked."""
        with self._immediate():
            due = [_request(r) for r in self.conn.execute(
                "SELECT * FROM requests WHERE state = 'pending' AND expires_at <= ?", (now,))]
            for request in due:
                self._save(_expire(request, now))
        return [_expire(r, now) for r in due]

    # ---- grants -----------------------------------------------------------------

    def grants(self, *, active_at: float | None = None, limit: int = 1000) -> list[Grant]:
        if active_at is None:
            rows = self.conn.execute("SELECT * FROM grants ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = self.conn.execute("SELECT * FROM grants WHERE revoked_at IS NULL AND expires_at > ? AND "
                                     "(uses IS NULL OR used < uses) ORDER BY created_at DESC LIMIT ?",
                                     (active_at, limit))
        return [_grant(r) for r in rows]

    def revoke(self, grant_id: str, by: str, reason: str, now: float, *,
               groups: tuple[str, ...] | None = None) -> Grant:
        """Revoke a grant. `groups`: a person's (the console's), who must be in one of the approver groups of
        the rule that made it, as for a vote; None: the local root operator (the CLI), who may revoke any."""
        reason = reason.strip()
        if not reason:
            raise ApprovalError("a reason is required: say why, for the audit")
        with self._immediate():
            row = self.conn.execute("SELECT * FROM grants WHERE id = ?", (grant_id,)).fetchone()
            if row is None:
                raise ApprovalError(f"no grant {grant_id!r} (see `appliance approvals grants --all`)")
            grant = _grant(row)
            if groups is not None:
                approvers = self.get(grant.request_id).approval.approver_groups
                if not set(groups) & set(approvers):
                    raise ApprovalError(f"{by} is in none of rule {grant.rule}'s approver groups "
                                        f"({', '.join(approvers)}) and cannot revoke its grant {grant_id}")
            if grant.revoked_at is not None:
                raise ApprovalError(f"grant {grant_id} was already revoked by {grant.revoked_by}")
            if grant.used_up:
                raise ApprovalError(f"grant {grant_id} was already used up ({grant.used} of {grant.uses} uses)")
            if not grant.active(now):
                raise ApprovalError(f"grant {grant_id} already ended at {grant.expires_at:.0f}")
            self.conn.execute("UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ? WHERE id = ?",
                              (now, by, reason, grant_id))
        return _grant(self.conn.execute("SELECT * FROM grants WHERE id = ?", (grant_id,)).fetchone())

    def use(self, counts: dict[str, int]) -> None:
        """Add the requests each counted grant let through (grant id -> how many) to what it has used."""
        with self._immediate():
            self.conn.executemany("UPDATE grants SET used = used + ? WHERE id = ? AND uses IS NOT NULL",
                                  [(n, grant_id) for grant_id, n in counts.items()])

    # ---- rows -------------------------------------------------------------------

    def _immediate(self):
        return _Immediate(self.conn)

    def _save(self, r: ApprovalRequest) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.id, r.rule, r.identity, json.dumps(list(r.groups)), _needs_json(r.needs), r.api, r.session_id,
             r.cgroup_path, r.created_at, r.hold_until, r.expires_at, json.dumps(asdict(r.approval)), str(r.state),
             json.dumps([asdict(v) for v in r.votes]), r.decided_at))

    def _save_grant(self, g: Grant) -> None:
        self.conn.execute(
            "INSERT INTO grants (id, request_id, identity, rule, scope, needs, approvers, created_at, expires_at, "
            "revoked_at, revoked_by, revoke_reason, uses, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (g.id, g.request_id, g.identity, g.rule, str(g.scope), _needs_json(g.needs), json.dumps(list(g.approvers)),
             g.created_at, g.expires_at, g.revoked_at, g.revoked_by, g.revoke_reason, g.uses, g.used))


class _Immediate:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _expire(request: ApprovalRequest, now: float) -> ApprovalRequest:
    return replace(request, state=State.EXPIRED, decided_at=now)


def _needs_json(needs: tuple[Need, ...]) -> str:
    return json.dumps([[n.rule, n.operation, n.resource, n.name] for n in needs])


def _needs(text: str) -> tuple[Need, ...]:
    return tuple(Need(*item) for item in json.loads(text))


def _request(row) -> ApprovalRequest:
    (id_, rule, identity, groups, needs, api, session_id, cgroup_path, created_at, hold_until, expires_at, approval,
     state, votes, decided_at) = row
    a = json.loads(approval)
    a["approver_groups"] = tuple(a["approver_groups"])
    a["grant_scope"] = GrantScope(a["grant_scope"])
    return ApprovalRequest(id=id_, rule=rule, identity=identity, groups=tuple(json.loads(groups)), needs=_needs(needs),
                           api=api, session_id=session_id, cgroup_path=cgroup_path, created_at=created_at,
                           hold_until=hold_until, expires_at=expires_at, approval=Approval(**a), state=State(state),
                           votes=tuple(Vote(**v) for v in json.loads(votes)), decided_at=decided_at)


def _grant(row) -> Grant:
    (id_, request_id, identity, rule, scope, needs, approvers, created_at, expires_at, revoked_at, revoked_by,
     revoke_reason, uses, used) = row
    return Grant(id=id_, request_id=request_id, identity=identity, rule=rule, scope=GrantScope(scope),
                 needs=_needs(needs), approvers=tuple(json.loads(approvers)), created_at=created_at,
                 expires_at=expires_at, revoked_at=revoked_at, revoked_by=revoked_by, revoke_reason=revoke_reason,
                 uses=uses, used=used)
