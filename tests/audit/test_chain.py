"""The chain's canonical form and links: what is hashed at write time is what a reader recomputes."""

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.audit import store
from appliance.audit.chain import GENESIS, TableEncoder, affinity, link_hash, normalise, read_head
from appliance.audit.records import Event, SessionClosed
from tests.audit.test_store import op, opened

_DECLARED = ("INTEGER", "REAL", "TEXT", "BLOB", "NUMERIC", "")
_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.text(alphabet="0123456789+-.eE ", max_size=8), st.binary(max_size=8),
    st.sampled_from([3.0, -0.0, 1e300, 2.0 ** 63, -(2.0 ** 63), 9.2e18, " 12 ", "1e5", ".5", "0x10", "NaN"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_DECLARED), _values), min_size=1, max_size=8))
def test_the_canonical_form_hashed_at_write_time_is_recomputed_from_the_row_read_back(columns):
    conn = sqlite3.connect(":memory:")
    spec = ", ".join(f"c{i} {declared}" for i, (declared, _) in enumerate(columns))
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {spec})")
    encoder = TableEncoder.of(conn, "t")
    written, bound = encoder.canonical((1, *(value for _, value in columns)))
    conn.execute(f"INSERT INTO t VALUES ({', '.join('?' * len(bound))})", bound)
    row = conn.execute("SELECT * FROM t").fetchone()
    assert encoder.canonical(row)[0] == written, (row, bound)


def test_affinity_follows_sqlites_rules_and_values_as_sqlite_stores_them():
    assert [affinity(t) for t in ("INTEGER", "BIGINT", "REAL", "DOUBLE", "TEXT", "VARCHAR(3)", "BLOB", "", "DECIMAL")] \
        == ["INTEGER", "INTEGER", "REAL", "REAL", "TEXT", "TEXT", "BLOB", "BLOB", "NUMERIC"]
    assert normalise(True, "INTEGER") == 1 and type(normalise(3, "REAL")) is float
    assert normalise(3.0, "INTEGER") == 3 and normalise(1.5, "TEXT") == "1.5" and normalise(float("nan"), "REAL") is None
    assert normalise(" 12 ", "INTEGER") == 12 and normalise("0x10", "INTEGER") == "0x10"


def test_every_batch_links_to_the_head_in_one_contiguous_order_across_tables():
    db = store.open_db(":memory:")
    store.write_batch(db, [opened(), op(), Event(at=1.0, kind="start", message="m")])
    store.write_batch(db, [op(at=102.0), SessionClosed("s1", 110.0, 1, 2, 3, "bye")])
    entries = sorted(
        (seq, table, bytes(h)) for table in ("operations", "events", "session_changes")
        for seq, h in db.execute(f"SELECT chain_seq, chain_hash FROM {table}").fetchall())
    assert [seq for seq, _, _ in entries] == [1, 2, 3, 4, 5]
    assert [table for _, table, _ in entries] == ["session_changes", "operations", "events", "operations",
                                                  "session_changes"]
    head = read_head(db.conn)
    assert (head.seq, head.hash) == (5, entries[-1][2])
    first = db.execute("SELECT id, session_id, kind, changes FROM session_changes WHERE chain_seq = 1").fetchone()
    encoder = TableEncoder.of(db.conn, "session_changes")
    assert entries[0][2] == link_hash(GENESIS, encoder.canonical(first)[0])
    assert encoder.canonical(first)[0].startswith(b'["session_changes",1,"s1","open",')
