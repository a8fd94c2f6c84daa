"""`appliance audit verify`: recompute the audit chain and check it against its head and checkpoints.

One pass over every chained table at once, merged by chain_seq (each table's
rows come in index order from its unique chain_seq index, so nothing is
sorted or held but the sessions being rebuilt). For each entry it checks that
its seq follows the one before (a gap is a deleted entry, a repeat a copied
one) and that SHA-256(previous hash || canonical row) is its chain_hash (an
edited or moved row). Then it checks:

- `chain_head` against the last entry (rows deleted from the tail, with the
  head left as it was);
- each stored checkpoint's signature, and that the chain at its size has its
  root hash; the same for each checkpoint file given (one exported earlier
  catches a tail deleted together with the head and the stored checkpoints,
  and a chain recomputed after an edit);
- every `sessions` row against the one its `session_changes` rebuild.

Rows written before the chain began (NULL chain columns) are counted, and
must all come before the first chained row of their table.

After retention pruned the oldest entries (`prune`), the chain is checked
from the last `prunes` row's boundary: the first kept entry must be its
`first_seq` and link to its `boundary_hash`; that row is itself chained (and
signed into the next checkpoint), so the boundary cannot be moved without
breaking the chain after it. Entries missing at the start with no prune
recorded are a deletion like any other. A checkpoint signed before the
boundary cannot be checked against rows that are gone: it is reported as
such, not as a fault (one signed exactly at the boundary is checked against
its hash).
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from appliance.audit import checkpoint as checkpoints
from appliance.audit.append import AUTHENTICATED, OPEN, REAUTHENTICATIONS_ADDED, RETAINED
from appliance.audit.chain import CHAINED_TABLES, GENESIS, TableEncoder, link_hash, read_head
from appliance.audit.prune import Boundary, read_boundary, session_defaults

MAX_FAULTS = 100
PRE_CHAIN = "pre-chain"


@dataclass(frozen=True, slots=True)
class Fault:
    table: str
    row: str  # "id 17", "session_id 3f…", "tree_size 120"
    chain_seq: int | None
    what: str

    def __str__(self) -> str:
        seq = f" chain_seq {self.chain_seq}" if self.chain_seq is not None else ""
        return f"{self.table} {self.row}{seq}: {self.what}"


@dataclass
class Report:
    size: int = 0
    head_hash: bytes = GENESIS
    rows: dict[str, int] = field(default_factory=dict)
    pre_chain: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    pre_chain_sessions: int = 0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    more_faults: int = 0
    boundary: Boundary = field(default_factory=lambda: Boundary(1, GENESIS))
    prunes: int = 0  # prunes rows kept (one per batch of the runs since the boundary's entries)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def pruned(self) -> dict[str, Any] | None:
        """How much retention deleted, and when it last did; None when nothing was pruned."""
        b = self.boundary
        if b.first_seq == 1:
            return None
        return {"entries": b.first_seq - 1, "first_seq": b.first_seq, "boundary_hash": b.hash.hex(),
                "last_prune_at": b.at, "prune_chain_seq": b.prune_seq, "prunes_kept": self.prunes}

    def fault(self, table: str, row: str, seq: int | None, what: str) -> None:
        if len(self.faults) < MAX_FAULTS:
            self.faults.append(Fault(table, row, seq, what))
        else:
            self.more_faults += 1

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "size": self.size, "head_hash": self.head_hash.hex(), "rows": self.rows,
                "pre_chain_rows": self.pre_chain, "sessions": self.sessions,
                "pre_chain_sessions": self.pre_chain_sessions, "checkpoints": self.checkpoints,
                "pruned": self.pruned,
                "first_fault": str(self.faults[0]) if self.faults else None,
                "faults": [{"table": f.table, "row": f.row, "chain_seq": f.chain_seq, "what": f.what, "text": str(f)}
                           for f in self.faults], "more_faults": self.more_faults, "seconds": round(self.seconds, 3)}


def _rows(conn: sqlite3.Connection, index: int, encoder: TableEncoder) -> Iterator[tuple[int, int, tuple]]:
    cursor = conn.execute(f"SELECT {', '.join(encoder.columns)}, chain_seq, chain_hash FROM {encoder.table}"
                          " WHERE chain_seq IS NOT NULL ORDER BY chain_seq")
    cursor.arraysize = 1000
    while batch := cursor.fetchmany():
        for row in batch:
            yield row[-2], index, row


def _check_pre_chain(conn: sqlite3.Connection, table: str, report: Report) -> None:
    extra = " AND kind = 'pre-chain'" if table == "session_changes" else ""
    report.pre_chain[table] = conn.execute(f"SELECT count(*) FROM {table} WHERE chain_seq IS NULL{extra}").fetchone()[0]
    if extra:
        row = conn.execute("SELECT id, kind FROM session_changes WHERE chain_seq IS NULL AND kind != 'pre-chain'"
                           " ORDER BY id LIMIT 1").fetchone()
        if row is not None:
            report.fault(table, f"id {row[0]}", None, f"a {row[1]!r} change without chain columns: written outside "
                         "the audit writer, or its chain columns cleared")
    first = conn.execute(f"SELECT min(id) FROM {table} WHERE chain_seq IS NOT NULL").fetchone()[0]
    if first is not None:
        late = conn.execute(f"SELECT id FROM {table} WHERE chain_seq IS NULL AND id > ? ORDER BY id LIMIT 1",
                            (first,)).fetchone()
        if late is not None:
            report.fault(table, f"id {late[0]}", None, "has no chain columns but comes after chained rows: "
                         "inserted outside the audit writer, or its chain_seq and chain_hash cleared")


class _Sessions:
    """The sessions rows that session_changes, replayed in chain order, say should exist."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        info = conn.execute("PRAGMA table_info(sessions)").fetchall()
        self.columns = [name for _, name, *_ in info]
        self.defaults = session_defaults(conn)
        self.expected: dict[str, tuple[dict[str, Any], int]] = {}  # session_id -> (row, last change's seq)
        self.partial: dict[str, tuple[dict[str, Any], int]] = {}  # changed after the chain, opened before it
        self.pre_chain: set[str] = set()

    def apply(self, row: tuple, report: Report) -> None:
        _, session_id, kind, changes, seq, _ = row
        try:
            values = json.loads(changes)
        except (TypeError, ValueError):
            report.fault("session_changes", f"id {row[0]}", seq, f"changes is not JSON: {changes!r}")
            return
        if kind == OPEN:
            expected = dict(self.defaults)
            expected.update(values)
            self.expected[session_id] = (expected, seq)
            return
        if kind == RETAINED:  # every column, as its pruned changes made it
            self.partial.pop(session_id, None)
            self.expected[session_id] = (values, seq)
            return
        added = values.pop(REAUTHENTICATIONS_ADDED, 0) if kind == AUTHENTICATED else 0
        if session_id in self.expected:
            expected = self.expected[session_id][0]
            expected.update(values)
            if added:
                expected["reauthentications"] = (expected.get("reauthentications") or 0) + added
            self.expected[session_id] = (expected, seq)
        else:
            partial = self.partial.get(session_id, ({}, seq))[0]
            partial.update(values)
            self.partial[session_id] = (partial, seq)

    def compare(self, conn: sqlite3.Connection, report: Report) -> None:
        for (session_id,) in conn.execute("SELECT session_id FROM session_changes WHERE kind = ?", (PRE_CHAIN,)):
            self.pre_chain.add(session_id)
        cursor = conn.execute(f"SELECT {', '.join(self.columns)} FROM sessions ORDER BY rowid")
        index = self.columns.index("session_id")
        for values in cursor:
            report.sessions += 1
            session_id = values[index]
            row = dict(zip(self.columns, values))
            found = self.expected.pop(session_id, None)
            if found is None:
                found = self.partial.pop(session_id, None)
                if session_id not in self.pre_chain:
                    report.fault("sessions", f"session_id {session_id}", None, "no change of this session is "
                                 "recorded: the row was inserted outside the audit writer")
                    continue
                report.pre_chain_sessions += 1
                if found is None:
                    continue
            expected, seq = found
            for column, value in expected.items():
                if column in row and row[column] != value:
                    report.fault("sessions", f"session_id {session_id}", seq,
                                 f"{column} is {row[column]!r}, but its recorded changes (last at this chain_seq) "
                                 f"make it {value!r}")
                    break
        for session_id, (_, seq) in self.expected.items():
            report.fault("sessions", f"session_id {session_id}", seq, "the row is missing (deleted), though "
                         "session_changes records it")
        missing = self.pre_chain - set(r[0] for r in conn.execute("SELECT session_id FROM sessions"))
        for session_id in sorted(missing)[:5]:
            report.fault("sessions", f"session_id {session_id}", None, "a session written before the chain began "
                         "is missing (deleted)")


def verify(conn: sqlite3.Connection, verifier: checkpoints.Verifier | None,
           given: list[tuple[str, checkpoints.Checkpoint]] = ()) -> Report:
    """Check the whole chain, its head, its stored checkpoints and `given` ones (already signature-checked)."""
    started = time.monotonic()
    report = Report()
    encoders = [TableEncoder.of(conn, table) for table in CHAINED_TABLES]
    for table in CHAINED_TABLES:
        _check_pre_chain(conn, table, report)
        report.rows[table] = 0
    stored = conn.execute("SELECT id, tree_size, root_hash, note FROM checkpoints ORDER BY tree_size").fetchall()
    wanted = {size for _, size, _, _ in stored} | {cp.size for _, cp in given}
    at_size: dict[int, bytes] = {}
    sessions = _Sessions(conn)
    boundary = report.boundary = read_boundary(conn)
    previous, expected_seq, last_table = boundary.hash, boundary.first_seq, None
    prune_index, last_prune_first = CHAINED_TABLES.index("prunes"), 1
    session_index = CHAINED_TABLES.index("session_changes")
    rows = report.rows
    names = CHAINED_TABLES
    canonicals = [e.canonical for e in encoders]
    for seq, index, row in heapq.merge(*(_rows(conn, i, e) for i, e in enumerate(encoders))):
        table = names[index]
        rows[table] += 1
        stored_hash = row[-1]
        if seq < boundary.first_seq:
            report.fault(table, f"id {row[0]}", seq, f"comes before the prune boundary (the chain starts at "
                         f"chain_seq {boundary.first_seq}, the prunes row at chain_seq {boundary.prune_seq} says): "
                         "restored or inserted after the prune")
            continue
        if seq != expected_seq:
            if seq < expected_seq:
                report.fault(table, f"id {row[0]}", seq, f"chain_seq {seq} is used twice (also by {last_table}): "
                             "a row copied, or its chain_seq changed")
            else:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                if last_table is None and boundary.first_seq == 1:
                    why = "deleted with no prune recorded (retention appends a prunes row), or their chain_seq changed"
                elif last_table is None:
                    why = (f"deleted past the prune boundary (the prunes row at chain_seq {boundary.prune_seq} "
                           f"keeps chain_seq {boundary.first_seq} on), or their chain_seq changed")
                else:
                    why = "deleted, or their chain_seq changed"
                report.fault(table, f"id {row[0]}", seq, f"the entries before it (chain_seq {missing}) are "
                             f"missing: {why}")
            previous = bytes(stored_hash) if isinstance(stored_hash, bytes) else previous
        else:
            computed = link_hash(previous, canonicals[index](row[:-2])[0])
            if computed != stored_hash:
                report.fault(table, f"id {row[0]}", seq, "its content does not hash to its chain_hash: the row "
                             "was edited, or moved from another chain_seq")
                previous = bytes(stored_hash) if isinstance(stored_hash, bytes) else computed
            else:
                previous = computed
        if seq in wanted:
            at_size[seq] = previous
        if index == session_index:
            if row[2] != PRE_CHAIN:
                sessions.apply(row, report)
        elif index == prune_index:
            report.prunes += 1
            first = row[2]
            if not isinstance(first, int) or not last_prune_first <= first <= seq:
                report.fault(table, f"id {row[0]}", seq, f"first_seq {first!r} is not between the previous prune's "
                             f"({last_prune_first}) and its own chain_seq: a prune only moves the start forward")
            else:
                last_prune_first = first
        expected_seq = max(expected_seq, seq + 1)
        last_table = table
    report.size = expected_seq - 1
    report.head_hash = previous
    _check_head(conn, report)
    if boundary.first_seq > 1:
        at_size[boundary.first_seq - 1] = boundary.hash
    _check_checkpoints(stored, given, at_size, verifier, report)
    sessions.compare(conn, report)
    report.seconds = time.monotonic() - started
    return report


def _check_head(conn: sqlite3.Connection, report: Report) -> None:
    try:
        head = read_head(conn)
    except ValueError as e:
        report.fault("chain_head", "id 1", None, str(e))
        return
    if head.seq != report.size:
        if head.seq > report.size:
            what = (f"says the chain has {head.seq} entries, but the rows end at chain_seq {report.size}: "
                    f"{_span(report.size + 1, head.seq)} deleted from the tail")
        else:
            what = (f"says the chain has {head.seq} entries, but rows go on to chain_seq {report.size}: "
                    "rows were added outside the audit writer, or the head was moved back")
        report.fault("chain_head", "id 1", head.seq, what)
    elif head.hash != report.head_hash:
        report.fault("chain_head", "id 1", head.seq, "its hash is not the last entry's chain_hash")


def _span(first: int, last: int) -> str:
    return f"entry {first} was" if first == last else f"entries {first}..{last} were"


def _check_one(where: str, table_row: str, checkpoint: checkpoints.Checkpoint, at_size: dict[int, bytes],
               report: Report, table: str) -> bool | None:
    """True when the checkpoint holds, False (and a fault) when not, None when it precedes the prune boundary."""
    if 0 < checkpoint.size < report.boundary.first_seq - 1:
        return None
    if checkpoint.size > report.size:
        report.fault(table, table_row, checkpoint.size,
                     f"{where} was signed when the chain had {checkpoint.size} entries, but it now has "
                     f"{report.size}: {_span(report.size + 1, checkpoint.size)} deleted (truncated)")
        return False
    if checkpoint.size == 0:
        return True
    if checkpoint.size not in at_size:
        report.fault(table, table_row, checkpoint.size, f"{where} covers chain_seq {checkpoint.size}, which no row has")
        return False
    if at_size[checkpoint.size] != checkpoint.root_hash:
        report.fault(table, table_row, checkpoint.size,
                     f"the chain at size {checkpoint.size} hashes to {at_size[checkpoint.size].hex()[:16]}…, but "
                     f"{where} signed {checkpoint.root_hash.hex()[:16]}…: entries up to it were changed "
                     "(and the chain recomputed) since")
        return False
    return True


def _check_checkpoints(stored: list, given: list[tuple[str, checkpoints.Checkpoint]], at_size: dict[int, bytes],
                       verifier: checkpoints.Verifier | None, report: Report) -> None:
    for id_, size, root_hash, note in stored:
        where = f"the stored checkpoint at size {size}"
        entry = {"source": "checkpoints table", "size": size, "ok": False}
        report.checkpoints.append(entry)
        if verifier is None:
            report.fault("checkpoints", f"id {id_}", size, "cannot check its signature: no verifier key "
                         "(give --key, or keep audit-signing.vkey beside the signing key)")
            continue
        try:
            checkpoint = checkpoints.verify(note, verifier, where)
        except checkpoints.CheckpointError as e:
            report.fault("checkpoints", f"id {id_}", size, str(e))
            continue
        if (checkpoint.size, checkpoint.root_hash) != (size, bytes(root_hash)):
            report.fault("checkpoints", f"id {id_}", size, "its tree_size and root_hash columns are not what its "
                         "signed note says")
            continue
        _checked(entry, _check_one(where, f"id {id_}", checkpoint, at_size, report, "checkpoints"), report)
    for where, checkpoint in given:
        entry = {"source": where, "size": checkpoint.size, "ok": False}
        report.checkpoints.append(entry)
        _checked(entry, _check_one(f"the checkpoint {where}", f"file {where}", checkpoint, at_size, report,
                                   "checkpoint"), report)


def _checked(entry: dict[str, Any], ok: bool | None, report: Report) -> None:
    entry["ok"] = ok
    if ok is None:
        entry["unchecked"] = (f"signed at size {entry['size']}, before the prune boundary: entries up to "
                              f"chain_seq {report.boundary.first_seq - 1} were deleted by retention, so it cannot "
                              "be checked against them (not a fault of the chain)")
