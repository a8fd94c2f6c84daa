"""A session as a timeline, from the audit: what `appliance replay` prints and the console will play.

`timeline(db, session_id)` reads the session's row, its authentications, its
operations and the events naming it (approvals, grants, refusals) and returns
them as `Entry`s in time order: connect, authentication, each request with its
decision, the rules that decided, topics, records, latency and error, each
approval and grant, and the close. Pure over a read-only SQLite connection;
nothing here writes.

`export_rows(db, since, until)` is `appliance audit export`: every audit row
in that span as one JSON object, `record` naming its table, in a stable schema (EXPORT_SCHEMA, described
in docs/recording.md), ordered by the chain where rows are chained.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterator

EXPORT_SCHEMA = "appliance.audit.export/1"
# The tables exported, each as the `kind` its rows carry, and the column that says when.
# (session_changes has no time of its own: it goes with the sessions exported, those started in the span.)
_EXPORTED = (("sessions", "session", "started_at"), ("session_changes", "session-change", None),
             ("authentications", "authentication", "at"), ("operations", "operation", "at"),
             ("events", "event", "at"), ("gaps", "gap", "started_at"), ("prunes", "prune", "at"),
             ("record_excerpts", "record-excerpt", "at"))


class ReplayError(LookupError):
    """No such session (or a prefix naming more than one); the message says which and how to find it."""


@dataclass(frozen=True, slots=True)
class Entry:
    at: float
    kind: str  # connect | authentication | request | event | close
    text: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "text": self.text, **self.detail}


def _rows(db: sqlite3.Connection, sql: str, params: tuple) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def find_session(db: sqlite3.Connection, session_id: str) -> dict[str, Any]:
    """The session row for an id or a unique prefix of one (at least 6 characters)."""
    if len(session_id) < 6 or not session_id.isalnum():
        raise ReplayError(f"{session_id!r} is not a session id: give the id or at least its first 6 characters "
                          "(see `appliance audit sessions`)")
    found = _rows(db, "SELECT * FROM sessions WHERE session_id >= ? AND session_id < ? LIMIT 2",
                  (session_id, session_id + "\uffff"))
    if not found:
        raise ReplayError(f"no session {session_id!r} in the audit (see `appliance audit sessions`)")
    if len(found) > 1:
        raise ReplayError(f"{session_id!r} names more than one session: give more of the id")
    return found[0]


def _one_line(command: str | None, limit: int = 160) -> str:
    """A command line as one short line for the timeline (the JSON entry keeps it whole)."""
    text = " ".join((command or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _decided(checks: str | None) -> str:
    if not checks:
        return ""
    rows = json.loads(checks)
    denied = [r for r in rows if r[3] != "allow"]
    shown = denied or rows
    rules = ", ".join(dict.fromkeys(str(r[4]) for r in shown))
    return f" by {rules}"


def _excerpt_json(x: dict[str, Any]) -> dict[str, Any]:
    return {"topic": x["topic"], "partition": x["partition"], "offset": x["offset"], "offset_delta": x["offset_delta"],
            "timestamp": x["timestamp"], "key": x["key"], "key_length": x["key_length"],
            "headers": json.loads(x["headers"]) if x["headers"] else [], "value": x["value"],
            "value_length": x["value_length"], "masked": x["masked"], "rule": x["rule"], "note": x["note"]}


def _excerpt_line(x: dict[str, Any]) -> str:
    """One excerpt as a line under its request: where, key, headers, value (cut to 120 characters here)."""
    where = f"{x['topic']}[{x['partition']}]"
    if x["offset"] is not None:
        where += f"@{x['offset']}"
    elif x["offset_delta"] is not None:
        where += f"+{x['offset_delta']}"
    if x["value_length"] is None:  # a note only: why the partition's excerpts end
        return f"{where} {x['note']}"
    parts = [where]
    if x["key_length"] is not None and x["key_length"] >= 0:
        parts.append(f"key={_one_line(x['key'] if x['key'] is not None else '(not stored)', 60)}")
    if x["headers"]:
        parts.append("headers=" + ",".join(f"{k}={'null' if v is None else _one_line(v, 40)}"
                                            for k, v in json.loads(x["headers"])))
    if x["value_length"] < 0:
        parts.append("value=null")
    else:
        shown = _one_line(x["value"], 120) if x["value"] is not None else "(not stored)"
        parts.append(f"value={shown} ({x['value_length']:,} bytes)")
    if x["masked"]:
        parts.append(f"{x['masked']} masked")
    if x["note"]:
        parts.append(f"[{x['note']}]")
    return " ".join(parts)


def _operation(op: dict[str, Any], excerpts: list[dict[str, Any]] = ()) -> Entry:
    topics = json.loads(op["topics"]) if op["topics"] else {}
    where = (" " + ", ".join(f"{t}{list(p) if p else ''}" for t, p in topics.items())) if topics else ""
    group = f" group {op['group_id']}" if op["group_id"] else ""
    records = f", {op['records']} records" if op["records"] else ""
    masked = f", {op['masked']} masked" if op["masked"] else ""
    latency = f", {op['latency_ms']:.1f} ms" if op["latency_ms"] is not None else ""
    error = f", error {op['error_code']}" if op["error_code"] else ""
    decision = op["decision"] or "no policy check"
    text = (f"{op['api_name']} v{op['api_version']}{where}{group}: {decision}{_decided(op['checks'])}, "
            f"{op['outcome']}{records}{masked}{latency}{error}")
    for x in excerpts:
        text += "\n" + " " * 40 + "excerpt " + _excerpt_line(x)
    extra = {"excerpts": [_excerpt_json(x) for x in excerpts]} if excerpts else {}
    return Entry(op["at"], "request", text, {**extra,
        "api": op["api_name"], "version": op["api_version"], "correlation_id": op["correlation_id"],
        "topics": topics, "group": op["group_id"], "decision": op["decision"],
        "checks": json.loads(op["checks"]) if op["checks"] else [], "outcome": op["outcome"],
        "records": op["records"], "record_bytes": op["record_bytes"], "masked": op["masked"],
        "latency_ms": op["latency_ms"], "error_code": op["error_code"]})


def timeline(db: sqlite3.Connection, session_id: str, *, after: float | None = None) -> tuple[dict, list[Entry]]:
    """The session's row and its entries in time order (only those after `after`, for --follow)."""
    s = find_session(db, session_id)
    sid = s["session_id"]
    entries = [Entry(s["started_at"], "connect",
                     f"{s['identity'] or '(not yet authenticated)'} connected from {s['client_address']} "
                     f"(pid {s['pid']}, uid {s['uid']}, cgroup {s['cgroup_path']}) to {s['broker_address']}"
                     + (f", in {s['netns']}" if s.get("netns") else "") + f": {_one_line(s['command'])}",
                     {"identity": s["identity"], "cgroup_path": s["cgroup_path"], "pid": s["pid"],
                      "broker": s["broker_address"], "command": s["command"]})]
    for a in _rows(db, "SELECT * FROM authentications WHERE session_id = ? ORDER BY at, id", (sid,)):
        who = f" as {a['identity']}" if a["identity"] else ""
        entries.append(Entry(a["at"], "authentication",
                             f"{a['kind']} {a['mechanism']} {a['outcome']}{who} ({a['method'] or 'cgroup'}): "
                             f"{a['reason']}", {"mechanism": a["mechanism"], "outcome": a["outcome"],
                                                "identity": a["identity"], "subject": a["subject"]}))
    excerpts: dict[int, list[dict[str, Any]]] = {}
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'record_excerpts'").fetchone():
        for x in _rows(db, "SELECT * FROM record_excerpts WHERE session_id = ? ORDER BY id", (sid,)):
            excerpts.setdefault(x["operation_id"], []).append(x)
    entries += [_operation(op, excerpts.get(op["id"], []))
                for op in _rows(db, "SELECT * FROM operations WHERE session_id = ? ORDER BY at, id", (sid,))]
    for e in _rows(db, "SELECT * FROM events WHERE session_id = ? ORDER BY at, id", (sid,)):
        entries.append(Entry(e["at"], "event", f"[{e['kind']}] {e['message']}",
                             {"event": e["kind"], "event_detail": json.loads(e["detail"]) if e["detail"] else None}))
    if s["ended_at"] is not None:
        entries.append(Entry(s["ended_at"], "close",
                             f"closed: {s['close_reason']} ({s['requests']} requests, {s['bytes_from_client']} bytes "
                             f"in, {s['bytes_to_client']} bytes out)",
                             {"reason": s["close_reason"], "requests": s["requests"]}))
    order = {"connect": 0, "authentication": 1, "request": 2, "event": 3, "close": 4}
    entries.sort(key=lambda e: (e.at, order[e.kind]))
    if after is not None:
        entries = [e for e in entries if e.at > after]
    return s, entries


def export_rows(db: sqlite3.Connection, since: float | None, until: float | None) -> Iterator[dict[str, Any]]:
    """Every row of the exported tables whose time is in [since, until), as `{...columns, "schema", "record"}`,
    chained rows in chain order, then the rest (sessions' current rows) by time."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rows: list[tuple[tuple, dict[str, Any]]] = []
    for table, kind, when in _EXPORTED:
        if table not in tables:
            continue
        clauses, params = [], []
        column = when or "(SELECT started_at FROM sessions s WHERE s.session_id = session_changes.session_id)"
        if since is not None:
            clauses.append(f"{column} >= ?"), params.append(since)
        if until is not None:
            clauses.append(f"{column} < ?"), params.append(until)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        for row in _rows(db, f"SELECT * FROM {table}{where}", tuple(params)):
            seq = row.get("chain_seq")
            for name, value in row.items():  # chain_hash, a prune's boundary_hash
                if isinstance(value, bytes):
                    row[name] = value.hex()
            key = (0, seq, 0.0) if seq is not None else (1, 0, (row.get(when) if when else None) or 0.0)
            rows.append((key, {**row, "schema": EXPORT_SCHEMA, "record": kind}))
    rows.sort(key=lambda item: item[0])
    for _, row in rows:
        yield row
