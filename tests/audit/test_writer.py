"""Audit failure is a state with a gap marker, not a log line: SQLite's own "database or disk is full"."""

import sqlite3
import time

from appliance.audit import store
from appliance.audit.records import Event, SessionOpened
from appliance.audit.writer import AuditWriter
from tests.audit.test_store import op, opened


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError("condition did not hold")


def test_a_full_database_sets_failing_and_the_first_commit_after_writes_the_gap(tmp_path):
    writer = AuditWriter(tmp_path / "audit.db", flush_ms=20)
    writer.submit(opened())
    writer.flush()
    pages = writer._db.execute("PRAGMA page_count").fetchone()[0]
    # SQLite reports a database that may not grow exactly as it reports a full disk.
    writer._db.execute(f"PRAGMA max_page_count = {pages}")
    for i in range(3000):
        writer.submit(op(at=1000.0 + i))
    writer.submit(Event(at=1500.0, kind="audit-failing", message="audit records cannot be written"))
    writer.flush()
    assert writer.failing is not None and "database or disk is full" in writer.failing
    assert writer.lost == 3000 and writer.failed_batches >= 1
    writer._db.execute("PRAGMA max_page_count = 1073741823")  # space returns; nothing new is submitted
    wait_for(lambda: writer.failing is None)
    writer.close()
    db = store.open_db(tmp_path / "audit.db")
    (gap,) = store.query_gaps(db)
    assert (gap["started_at"], gap["ended_at"], gap["records_lost"]) == (1000.0, 3999.0, 3000)
    assert "database or disk is full" in gap["reason"]
    assert [e["at"] for e in store.query_events(db, kind="audit-failing")] == [1500.0]  # kept, written late
    (recovered,) = store.query_events(db, kind="audit-recovered")
    assert "3000 records lost" in recovered["message"]
    assert db["operations"].count == 0 and db["sessions"].count == 1


def test_a_full_queue_refuses_records_counts_them_and_marks_the_gap(tmp_path):
    writer = AuditWriter(tmp_path / "audit.db", flush_ms=20, queue_max=1000)
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # hold the writer back, as a stalled disk would
    writer.submit(opened())
    time.sleep(0.1)
    accepted = [writer.submit(op(at=2000.0 + i)) for i in range(1500)]
    assert accepted.count(False) >= 500
    assert writer.failing.startswith("audit queue full (1000 records waiting")
    other.execute("ROLLBACK")
    wait_for(lambda: writer.failing is None)
    writer.close()
    db = store.open_db(tmp_path / "audit.db")
    (gap,) = store.query_gaps(db)
    assert gap["records_lost"] == accepted.count(False) and "audit queue full" in gap["reason"]
    assert db["operations"].count == accepted.count(True)


def test_sessions_without_an_end_are_closed_at_their_last_operation():
    db = store.open_db(":memory:")
    store.write_batch(db, [opened("s1"), op("s1", at=150.0), opened("s2"),
                           Event(at=1.0, kind="start", message="m")])
    assert store.close_orphan_sessions(db, "appliance stopped uncleanly") == 2
    rows = {r["session_id"]: r for r in store.query_sessions(db)}
    assert (rows["s1"]["ended_at"], rows["s2"]["ended_at"]) == (150.0, 100.0)
    assert {r["close_reason"] for r in rows.values()} == {"appliance stopped uncleanly"}
    assert store.close_orphan_sessions(db, "again") == 0
