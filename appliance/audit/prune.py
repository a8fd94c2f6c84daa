"""Audit retention: delete the oldest part of the chain in bounded batches, and record each cut in the chain.

A prune deletes a whole prefix of the chain, chain_seq 1..N across every
chained table, never a row from the middle. Each batch is one `BEGIN
IMMEDIATE` transaction of at most `batch` entries (5000 by default) that

- deletes those entries from every chained table, the stored checkpoints
  signed before the cut, and each `sessions` row none of whose rows are left;
- for a session whose row stays (still open, or with rows after the cut) but
  whose changes were deleted, appends a `retained` change holding every column
  as its changes made it, so the kept changes still rebuild the row (unless a
  retained change of it is kept already). Its row then stays until a later
  prune passes that change too;
- appends one `prunes` row, chained like the others: the new first chain_seq,
  the hash of the last entry deleted (`boundary_hash`), and what it deleted.

So the database verifies after every batch, including after a crash between
two: `verify` starts at the last prune row's `first_seq` and checks that the
first kept entry links to its `boundary_hash`. A prefix deleted without such a
row is still a gap at the start of the chain.

Before deleting, a batch recomputes the entries it deletes from the previous
boundary and compares the sessions rows it drops or carries over with their
changes: retention never deletes the evidence of an edited or missing row.
It refuses (`PruneRefused`, naming the row) and deletes nothing.

After the deletes, `vacuum_step` returns freed pages to the file system with
`PRAGMA incremental_vacuum`, a bounded number of pages at a time, when the
database has auto_vacuum INCREMENTAL (every database made since migration
0008). An older one keeps auto_vacuum NONE: its freed pages are reused by new
rows, so it stops growing, but it shrinks only after one VACUUM with the
appliance stopped (docs/recording.md, Retention). The appliance never runs
that VACUUM itself: it rewrites the whole file while holding the write lock,
and the proxy's audit writes would wait behind it for as long.

The caller (the serving process's writer thread) calls `step` between its own
batches of records, so records never wait behind more than one prune batch.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from appliance.audit.append import (AUTHENTICATED, OPEN, REAUTHENTICATIONS_ADDED, RETAINED, Appender,
                                    immediate)
from appliance.audit.chain import CHAINED_TABLES, GENESIS, Link, TableEncoder, canonical_json, read_head
from appliance.audit.records import Event

BATCH = 5000
VACUUM_PAGES = 1024  # 4 MiB of 4 KiB pages per incremental_vacuum step (about 25 ms measured)
# A prune by size takes the database down to this fraction of max_bytes, so it is not
# run again for every few rows written.
LOW_WATER = 0.9
PRE_CHAIN = "pre-chain"
# Each chained table's time, as SQL: a prune by age stops before the first entry at or after the cutoff.
# A session change has the time it records (its open's start, its close's end); an authenticated or
# retained change has none, and goes with the entries after it. `+`: the range is read by the chain_seq
# index, never the time index (which would span the whole kept part).
_TIMES = {"operations": "+at", "events": "+at", "authentications": "+at", "gaps": "+ended_at", "prunes": "+at",
          "record_excerpts": "+at",
          "session_changes": "(CASE kind WHEN 'open' THEN json_extract(changes, '$.started_at') WHEN 'closed' THEN "
                             "json_extract(changes, '$.ended_at') WHEN 'orphan-closed' THEN "
                             "json_extract(changes, '$.ended_at') END)"}


class PruneRefused(RuntimeError):
    """The entries a prune would delete do not verify; the message names the row. Nothing was deleted."""


@dataclass(frozen=True, slots=True)
class Boundary:
    """Where the kept chain starts: its first chain_seq and the hash of the entry before it."""

    first_seq: int
    hash: bytes
    at: float | None = None  # when the last prune ran
    prune_seq: int | None = None  # the chain_seq of the prunes row that says so


def read_boundary(conn: sqlite3.Connection) -> Boundary:
    """The last prune's boundary, or the chain's start (1, GENESIS) when nothing was pruned."""
    row = conn.execute("SELECT first_seq, boundary_hash, at, chain_seq FROM prunes WHERE chain_seq IS NOT NULL"
                       " ORDER BY chain_seq DESC LIMIT 1").fetchone()
    if row is None:
        return Boundary(1, GENESIS)
    return Boundary(row[0], bytes(row[1]) if isinstance(row[1], bytes) else b"", row[2], row[3])


def sizes(conn: sqlite3.Connection) -> tuple[int, int]:
    """(bytes the database file holds, bytes in pages in use): page_count and freelist_count by page_size."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return count * page, (count - free) * page


def session_defaults(conn: sqlite3.Connection) -> dict[str, Any]:
    """Each sessions column's default, as a row inserted without it has it."""
    return {name: _literal(default) for _, name, _, _, default, _ in conn.execute("PRAGMA table_info(sessions)")}


def _literal(default: str | None) -> Any:
    if default is None or default.upper() == "NULL":
        return None
    if default.startswith("'") and default.endswith("'"):
        return default[1:-1].replace("''", "'")
    try:
        return int(default)
    except ValueError:
        return float(default)


def apply_change(state: dict[str, Any] | None, kind: str, values: dict[str, Any],
                 defaults: dict[str, Any]) -> dict[str, Any]:
    """A session's row after one of its changes (None before its first)."""
    if kind == OPEN:
        return {**defaults, **values}
    if kind == RETAINED:
        return dict(values)
    state = dict(state or {})
    added = values.pop(REAUTHENTICATIONS_ADDED, 0) if kind == AUTHENTICATED else 0
    state.update(values)
    if added:
        state["reauthentications"] = (state.get("reauthentications") or 0) + added
    return state


class Pruner:
    """One prune run over an Appender's connection: call `step` until it returns False, then `event`."""

    def __init__(self, appender: Appender, *, now: float, max_age_s: float | None = None,
                 max_bytes: int | None = None, batch: int = BATCH, vacuum_pages: int = VACUUM_PAGES) -> None:
        self.appender = appender
        conn = self.conn = appender.conn
        self.now = now
        self.batch = batch
        self.vacuum_pages = vacuum_pages
        self.cutoff = None if max_age_s is None else now - max_age_s
        boundary = read_boundary(conn)
        self.started_first = self.first = boundary.first_seq
        self.hash = boundary.hash
        # The run deletes nothing written after it began (its own prunes rows among them), so it ends.
        self.limit = read_head(conn).seq
        self.bytes_before, used = sizes(conn)
        self.size_end = self.first - 1  # the size target: delete up to this chain_seq at least
        reasons = []
        if self.cutoff is not None:
            reasons.append(f"older than {max_age_s / 86400:g} days (before "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.cutoff))})")
        if max_bytes is not None and used > max_bytes:
            kept = self.limit - self.first + 1
            excess = used - int(max_bytes * LOW_WATER)
            self.size_end = self.first - 1 + min(kept, math.ceil(kept * excess / used))
            reasons.append(f"database over max_bytes {max_bytes:,} ({used:,} bytes in use)")
        self.reason = "; ".join(reasons) or "nothing to prune"
        self.deleted: Counter[str] = Counter()
        self.batches = 0
        self.longest_hold_s = 0.0
        self.vacuum_steps = 0
        self.longest_vacuum_s = 0.0
        self.started = time.monotonic()
        self._deleting = True
        self._encoders = [TableEncoder.of(conn, t) for t in CHAINED_TABLES]
        self._defaults = session_defaults(conn)
        self._vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        self._last_free: int | None = None

    # ---- the steps -----------------------------------------------------------------

    def step(self) -> bool:
        """One batch of deletes, or one step of incremental vacuum; False when the run is done."""
        if self._deleting:
            if self._delete_batch():
                return True
            self._deleting = False
        return self.vacuum_step()

    def vacuum_step(self) -> bool:
        if not self._vacuum or not self.deleted:
            return False
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free == 0 or free == self._last_free:  # done, or nothing more it can give back
            return False
        self._last_free = free
        started = time.monotonic()
        # executescript steps the pragma to its end: execute() steps it once, and each step frees one page.
        self.conn.executescript(f"PRAGMA incremental_vacuum({int(self.vacuum_pages)})")
        self.longest_vacuum_s = max(self.longest_vacuum_s, time.monotonic() - started)
        self.vacuum_steps += 1
        return True

    def _delete_batch(self) -> bool:
        conn, first = self.conn, self.first
        candidate = min(first + self.batch - 1, self.limit)
        if candidate < first:
            return False
        end = min(max(self.size_end, first - 1), candidate)
        if self.cutoff is not None and end < candidate:
            end = max(end, self._last_older(first, candidate))
        if end < first:
            return False
        end_hash, changes, touched = self._read_verified(first, end)
        started = time.monotonic()
        with immediate(conn):
            if read_boundary(conn).first_seq != first:
                raise PruneRefused(f"another process pruned the audit meanwhile (the boundary moved from "
                                   f"chain_seq {first})")
            states = self._session_states(changes)
            deleted: Counter[str] = Counter()
            for table in CHAINED_TABLES:
                deleted[table] = conn.execute(f"DELETE FROM {table} WHERE chain_seq BETWEEN ? AND ?",
                                              (first, end)).rowcount
            deleted["checkpoints"] = conn.execute("DELETE FROM checkpoints WHERE tree_size < ?", (end,)).rowcount
            retained = []
            for session_id in touched:
                row = conn.execute("SELECT ended_at FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
                if row is None:
                    continue
                if row[0] is None or self._has_rows(session_id, end):
                    # A retained change kept after the cut already holds every column (and what changed since
                    # follows it), so one is written only when none is.
                    if session_id in states and not conn.execute(
                            "SELECT 1 FROM session_changes WHERE session_id = ? AND kind = ? AND chain_seq > ?",
                            (session_id, RETAINED, end)).fetchone():
                        retained.append((session_id, RETAINED, canonical_json(states[session_id])))
                else:
                    conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
                    deleted["sessions"] += 1
            link = Link(conn, self.appender.encoders)
            link.rows("session_changes", retained)
            deleted["retained_changes"] = len(retained)
            counts = {t: n for t, n in deleted.items() if n}
            link.rows("prunes", [(time.time(), end + 1, end_hash, canonical_json(counts), self.reason)])
            link.finish()
        self.longest_hold_s = max(self.longest_hold_s, time.monotonic() - started)
        self.batches += 1
        self.deleted.update(deleted)
        self.first, self.hash = end + 1, end_hash
        return end == candidate

    # ---- what a batch reads ----------------------------------------------------------

    def _last_older(self, first: int, last: int) -> int:
        """The last chain_seq in first..last to delete by age: all of them when none is at or after the cutoff,
        else up to the last timed entry before the first that is (the session changes between them are kept
        with the newer entries they precede, such as a new session's open)."""
        newest = last + 1
        for table, when in _TIMES.items():
            seq = self.conn.execute(f"SELECT min(chain_seq) FROM {table} WHERE chain_seq BETWEEN ? AND ?"
                                    f" AND {when} >= ?", (first, last, self.cutoff)).fetchone()[0]
            if seq is not None:
                newest = min(newest, seq)
        if newest > last:
            return last
        older = [self.conn.execute(f"SELECT max(chain_seq) FROM {table} WHERE chain_seq BETWEEN ? AND ?"
                                   f" AND {when} IS NOT NULL", (first, newest - 1)).fetchone()[0]
                 for table, when in _TIMES.items()]
        return max([seq for seq in older if seq is not None], default=first - 1)

    def _read_verified(self, first: int, end: int) -> tuple[bytes, list[tuple], list[str]]:
        """The hash of entry `end`, the session changes in first..end, and the sessions any entry names;
        PruneRefused unless the entries are contiguous and each links to the one before."""
        def rows(index: int, encoder: TableEncoder):
            cursor = self.conn.execute(f"SELECT {', '.join(encoder.columns)}, chain_seq, chain_hash"
                                       f" FROM {encoder.table} WHERE chain_seq BETWEEN ? AND ? ORDER BY chain_seq",
                                       (first, end))
            for row in cursor:
                yield row[-2], index, row

        previous, expected = self.hash, first
        changes, touched = [], {}
        sessions_at = {t: e.columns.index("session_id") for t, e in zip(CHAINED_TABLES, self._encoders)
                       if "session_id" in e.columns and t != "events"}
        for seq, index, row in heapq.merge(*(rows(i, e) for i, e in enumerate(self._encoders))):
            encoder = self._encoders[index]
            where = f"{encoder.table} id {row[0]} chain_seq {seq}"
            if seq != expected:
                raise PruneRefused(f"{where}: expected chain_seq {expected} here (entries missing or repeated); "
                                   "run `appliance audit verify`")
            previous = hashlib.sha256(previous + encoder.canonical(row[:-2])[0]).digest()
            if previous != row[-1]:
                raise PruneRefused(f"{where}: its content does not hash to its chain_hash; run "
                                   "`appliance audit verify`")
            expected += 1
            if encoder.table in sessions_at:
                touched[row[sessions_at[encoder.table]]] = None
            if encoder.table == "session_changes":
                changes.append(row)
        if expected != end + 1:
            raise PruneRefused(f"chain_seq {expected}..{end} are missing; run `appliance audit verify`")
        return previous, changes, list(touched)

    def _session_states(self, changes: list[tuple]) -> dict[str, dict[str, Any]]:
        """Each session with changes in this batch: its row as all its changes make it (PruneRefused when the
        table says otherwise); sessions opened before the chain began are left out."""
        states = {}
        for session_id in dict.fromkeys(row[1] for row in changes):
            state, pre_chain = None, False
            for kind, text in self.conn.execute("SELECT kind, changes FROM session_changes WHERE session_id = ?"
                                                " ORDER BY chain_seq", (session_id,)):
                if kind == PRE_CHAIN:
                    pre_chain = True
                    continue
                try:
                    state = apply_change(state, kind, json.loads(text), self._defaults)
                except (TypeError, ValueError):
                    raise PruneRefused(f"session_changes of session_id {session_id}: changes is not JSON: "
                                       f"{text!r}") from None
            if pre_chain or state is None:
                continue
            cursor = self.conn.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
            found = cursor.fetchone()
            if found is None:
                continue
            row = dict(zip([c[0] for c in cursor.description], found))
            for column, value in state.items():
                if column in row and row[column] != value:
                    raise PruneRefused(f"sessions session_id {session_id}: {column} is {row[column]!r}, but its "
                                       f"recorded changes make it {value!r}; run `appliance audit verify`")
            states[session_id] = state
        return states

    def _has_rows(self, session_id: str, end: int) -> bool:
        for table in ("session_changes", "operations", "authentications", "record_excerpts"):
            if self.conn.execute(f"SELECT 1 FROM {table} WHERE session_id = ? AND chain_seq > ? LIMIT 1",
                                 (session_id, end)).fetchone():
                return True
        return False

    # ---- the record of the run -------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        after, used = sizes(self.conn)
        return {"deleted": {t: n for t, n in self.deleted.items() if n}, "entries": self.first - self.started_first,
                "first_seq": self.first, "boundary_hash": self.hash.hex(), "bytes_before": self.bytes_before,
                "bytes_after": after, "bytes_in_use": used, "reason": self.reason, "batches": self.batches,
                "longest_hold_ms": round(self.longest_hold_s * 1000, 1), "vacuum_steps": self.vacuum_steps,
                "longest_vacuum_ms": round(self.longest_vacuum_s * 1000, 1),
                "seconds": round(time.monotonic() - self.started, 3)}

    def event(self) -> Event | None:
        """The `audit-pruned` event of this run, or None when it deleted nothing."""
        if not self.deleted:
            return None
        s = self.summary()
        tables = ", ".join(f"{t} {n:,}" for t, n in s["deleted"].items())
        return Event(at=time.time(), kind="audit-pruned",
                     message=f"retention deleted audit entries {self.started_first:,}..{self.first - 1:,} "
                             f"({s['reason']}): {tables}; the chain now starts at chain_seq {self.first:,}; "
                             f"database {s['bytes_before']:,} -> {s['bytes_after']:,} bytes",
                     detail=json.dumps(s))


def prune(appender: Appender, *, now: float, max_age_s: float | None = None, max_bytes: int | None = None,
          batch: int = BATCH) -> Event | None:
    """A whole prune run at once (tests, tools): every step, then its `audit-pruned` event written."""
    pruner = Pruner(appender, now=now, max_age_s=max_age_s, max_bytes=max_bytes, batch=batch)
    while pruner.step():
        pass
    event = pruner.event()
    if event is not None:
        appender.write_batch([event])
    return event
