"""The audit's hash chain: every appended row, in every table, linked in one global order.

Each append-only table (`CHAINED_TABLES`) carries `chain_seq` (1, 2, 3, ...
across all tables together) and `chain_hash`:

    chain_hash[n] = SHA-256(chain_hash[n-1] || canonical(table, row))

with `GENESIS` (32 zero bytes) before the first. `sessions` rows change after
they are written, so they are not chained themselves: each change (open,
authenticated, closed, orphan-closed) is a row of the ledger `session_changes`,
chained like the others, and `verify` rebuilds the sessions from it.

The canonical form of a row is the compact JSON array
`[table, value, value, ...]` of its columns in the table's declared order (its
`id` first, the chain columns left out). Each value is first normalised the
way SQLite's column affinity stores it (`normalise`): what is hashed at write
time is what is bound, so it is what a reader gets back, and the hash a
verifier recomputes from the stored row is the one written.

The head of the chain (its last seq and hash) is the single row of
`chain_head`. Every writer (the serving process's writer thread, a CLI process
recording an event) appends inside `BEGIN IMMEDIATE`: it reads the head, links
its rows, writes them and the new head, and commits, so two processes never
link to the same head.

The writer thread shares the GIL with the proxy: `TableEncoder` is built once
per table, and a row whose values already have their column's storage type
(the usual case) costs one C-level JSON encoding and one SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

GENESIS = bytes(32)
CHAIN_COLUMNS = ("chain_seq", "chain_hash")
# The append-only tables whose rows are chained. A later append-only table is
# added here, given the two chain columns and a unique index on chain_seq by a
# migration, and written through `Link.rows`.
CHAINED_TABLES = ("operations", "events", "authentications", "gaps", "session_changes", "prunes", "record_excerpts")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# What SQLite takes for a number when text is stored in a column of numeric affinity
# (leading and trailing spaces allowed; hexadecimal is not converted).
_INTEGER_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*\Z")
_REAL_TEXT = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*\Z")

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, check_circular=False,
                                default=lambda b: {"blob": bytes(b).hex()}).encode


def affinity(declared: str) -> str:
    """SQLite's affinity for a declared column type (https://sqlite.org/datatype3.html, 3.1)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def _number_from_text(value: str) -> int | float | str:
    if _INTEGER_TEXT.match(value):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            return number
        return float(number)
    if _REAL_TEXT.match(value):
        return float(value)
    return value


def _integral(value: float) -> int | float:
    """A float SQLite's INTEGER and NUMERIC affinity store as an integer, as that integer."""
    if value.is_integer() and -9223372036854775808.0 <= value < 9223372036854775808.0:
        return int(value)
    return value


def normalise(value: Any, column_affinity: str) -> Any:
    """The value as a column of this affinity stores it, and so as it reads back.

    Binding the result stores it unchanged: an int into a REAL column is a
    float, a bool an int, a number into a TEXT column its text, numeric text
    into a numeric column the number, NaN NULL.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)  # SQLite stores a BLOB as it is, whatever the column
    if column_affinity == "TEXT":
        if isinstance(value, float):
            return repr(value)
        return value if isinstance(value, str) else str(value)
    if column_affinity == "BLOB":
        return value
    if isinstance(value, str):
        value = _number_from_text(value)
        if isinstance(value, str):
            return value
    if column_affinity == "REAL":
        return float(value) or 0.0  # SQLite stores -0.0 in a REAL column as the integer 0, read back as 0.0
    if isinstance(value, float):
        return _integral(value)
    return value


_NATIVE = {"INTEGER": int, "REAL": float, "TEXT": str, "BLOB": bytes, "NUMERIC": int}


class TableEncoder:
    """The canonical form of one table's rows: its columns (id first) in declared order, with their affinities."""

    __slots__ = ("table", "columns", "affinities", "_clean", "_prefix")

    def __init__(self, table: str, columns: Sequence[str], affinities: Sequence[str]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.affinities = tuple(affinities)
        # Rows whose value types are each their column's storage type (or NULL) need no
        # normalising; which type tuples are such is learned once per tuple seen.
        self._clean: dict[tuple[type, ...], bool] = {}
        self._prefix = _encode_json([table])[:-1] + ","

    @classmethod
    def of(cls, conn: sqlite3.Connection, table: str) -> "TableEncoder":
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        if not info:
            raise ValueError(f"the audit database has no table {table!r}")
        columns = [(name, declared) for _, name, declared, *_ in info if name not in CHAIN_COLUMNS]
        return cls(table, [c for c, _ in columns], [affinity(d) for _, d in columns])

    def _is_clean(self, types: tuple[type, ...]) -> bool:
        clean = len(types) == len(self.affinities) and all(
            t is type(None) or t is _NATIVE[a] for t, a in zip(types, self.affinities))
        self._clean[types] = clean
        return clean

    def canonical(self, row: Sequence[Any]) -> tuple[bytes, Sequence[Any]]:
        """(canonical bytes, the values to bind) for a row of this table's columns in declared order."""
        types = tuple(map(type, row))
        clean = self._clean.get(types)
        if clean is None:
            clean = self._is_clean(types)
        if clean:
            text = _encode_json(row)
            # A NaN float is stored as NULL and -0.0 as 0 (a string holding either takes the slow way too).
            if "NaN" not in text and "-0.0" not in text:
                return (self._prefix + text[1:]).encode(), row
        if len(row) != len(self.affinities):
            raise ValueError(f"a row of {self.table} has {len(row)} values for its {len(self.affinities)} columns "
                             f"({', '.join(self.columns)})")
        row = tuple(normalise(v, a) for v, a in zip(row, self.affinities))
        return (self._prefix + _encode_json(row)[1:]).encode(), row


def link_hash(previous: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(previous + canonical).digest()


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes


def read_head(conn: sqlite3.Connection) -> Head:
    row = conn.execute("SELECT seq, hash FROM chain_head WHERE id = 1").fetchone()
    if row is None:
        raise ValueError("the audit database has no chain head (table chain_head is empty)")
    return Head(row[0], bytes(row[1]))


class Encoders:
    """Each chained table's encoder and insert statement, built once per connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._tables: dict[str, tuple[TableEncoder, str]] = {}

    def __getitem__(self, table: str) -> tuple[TableEncoder, str]:
        found = self._tables.get(table)
        if found is None:
            encoder = TableEncoder.of(self._conn, table)
            names = encoder.columns + CHAIN_COLUMNS
            sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            found = self._tables[table] = (encoder, sql)
        return found

    def affinities(self, table: str) -> dict[str, str]:
        """Column name -> affinity, for a table that is not chained itself (sessions)."""
        encoder = self[table][0] if table in self._tables else TableEncoder.of(self._conn, table)
        return dict(zip(encoder.columns, encoder.affinities))


class Link:
    """One transaction's appends: call inside BEGIN IMMEDIATE, then `finish` before COMMIT."""

    def __init__(self, conn: sqlite3.Connection, encoders: Encoders) -> None:
        self._conn = conn
        self._encoders = encoders
        head = read_head(conn)
        self.seq = head.seq
        self.hash = head.hash
        self._start = head.seq
        self._next_id: dict[str, int] = {}

    def rows(self, table: str, rows: Iterable[Sequence[Any]], getter: Callable[[Any], tuple] | None = None) -> int:
        """Append rows (each the table's columns after `id`, or a record `getter` reads them from), in order;
        returns the id the first was given (the others follow it, one by one)."""
        encoder, sql = self._encoders[table]
        next_id = self._next_id.get(table)
        if next_id is None:
            next_id = (self._conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0] or 0) + 1
        first_id = next_id
        canonical = encoder.canonical
        seq, previous = self.seq, self.hash
        bound = []
        append = bound.append
        sha256 = hashlib.sha256
        for row in rows:
            values = (next_id, *(getter(row) if getter is not None else row))
            data, values = canonical(values)
            seq += 1
            previous = sha256(previous + data).digest()
            append((*values, seq, previous))
            next_id += 1
        if bound:
            self._conn.executemany(sql, bound)
        self.seq, self.hash = seq, previous
        self._next_id[table] = next_id
        return first_id

    def finish(self) -> None:
        if self.seq != self._start:
            self._conn.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (self.seq, self.hash))


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, compact, ASCII): a session change's columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
