import json
import sqlite3
import time

import pytest

from appliance.audit import store
from appliance.audit.records import Event, Operation, SessionClosed, SessionOpened
from appliance.audit.writer import AuditWriter


def opened(session_id="s1", identity="orders"):
    return SessionOpened(session_id, 100.0, identity, ("payments",), 42, "/orders", 42, 1234, 0, 0, "kcat -P",
                         "127.0.0.1:5555", "127.0.0.1:19092")


def op(session_id="s1", topics='{"orders": [0]}', at=101.0):
    return Operation(session_id, at, 0, "Produce", 9, 7, "kcat", topics, None, 3, 300, 400, 60, 0, 1.5, "forwarded")


def test_migrations_are_named_and_applied_once():
    db = store.open_db(":memory:")
    assert [r["name"] for r in db.query("SELECT name FROM migrations")] == [name for name, _ in store.MIGRATIONS]
    assert store.migrate(db) == []


def test_session_lifecycle_and_filters():
    db = store.open_db(":memory:")
    store.write_batch(db, [opened(), op(), op(topics='{"payments": [1]}', at=102.0),
                           opened("s2", "billing"), Event(at=103.0, kind="enroll", message="m", identity="orders")])
    store.write_batch(db, [SessionClosed("s1", 110.0, 500, 60, 2, "client closed the connection")])
    s1 = store.query_sessions(db, identity="orders")[0]
    assert (s1["ended_at"], s1["bytes_from_client"], s1["close_reason"], json.loads(s1["groups"])) == \
        (110.0, 500, "client closed the connection", ["payments"])
    assert [r["topics"] for r in store.query_operations(db, topic="payments")] == ['{"payments": [1]}']
    assert len(store.query_operations(db, identity="orders", since=101.5)) == 1
    assert store.query_events(db, kind="enroll")[0]["identity"] == "orders"


def test_batch_is_atomic(tmp_path):
    db = store.open_db(tmp_path / "a.db")
    with pytest.raises(sqlite3.Error):
        store.write_batch(db, [opened(), Operation(*([None] * 16))])  # NOT NULL violated
    assert store.query_sessions(db) == []


def test_read_only_sql_refuses_writes(tmp_path):
    path = tmp_path / "a.db"
    store.open_db(path).conn.close()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.read_only_query(path, "DELETE FROM sessions")
    assert store.read_only_query(path, "SELECT count(*) AS n FROM sessions") == [{"n": 0}]


def test_writer_batches_and_close_drains(tmp_path):
    path = tmp_path / "audit.db"
    writer = AuditWriter(path, flush_ms=50)
    writer.submit(opened())
    for i in range(2000):
        writer.submit(op(at=200.0 + i))
    writer.close()
    db = store.open_db(path)
    assert db["operations"].count == 2000
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
