"""Retention over real SQLite files: pruning by age and by size keeps the chain verifiable, and never hides a tamper.

Rows are written through the real write path (store.write_batch, the Appender,
the writer thread); tampering is done with plain SQL on another connection, as
someone holding the file would.
"""

import json
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
from appliance.audit import store
from appliance.audit.append import Appender
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.prune import PruneRefused, Pruner, prune, read_boundary, sizes
from appliance.audit.records import Event, SessionClosed
from appliance.audit.verify import verify
from tests.audit.test_store import op, opened
from tests.audit.test_verify import ROOT

DAY = 86400.0


def report_of(path, given=()):
    db = store.open_db(path)
    try:
        key = load_or_create_signing_key(path.parent / "audit-signing.key", "gw1/appliance-audit")
        return verify(db.conn, key.verifier, list(given))
    finally:
        db.conn.close()


def sql(path, statement):
    conn = sqlite3.connect(path)
    conn.executescript(statement)
    conn.close()


@pytest.fixture
def audit(tmp_path):
    """Two sessions 10 days old (s1 closed, s2 still open), 200 old and 50 new operations, a checkpoint."""
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    old, new = 1000 * DAY, 1010 * DAY
    store.write_batch(db, [opened("s1"), opened("s2", "billing"), Event(at=old, kind="start", message="serving")]
                      + [op("s1", at=old + i) for i in range(100)] + [op("s2", at=old + 100 + i) for i in range(100)])
    key = load_or_create_signing_key(tmp_path / "audit-signing.key", "gw1/appliance-audit")
    Appender(db.conn).checkpoint(key, tmp_path / "checkpoints", at=old + 120)  # size 203
    store.write_batch(db, [SessionClosed("s1", old + 150, 500, 60, 100, "client closed the connection")])
    Appender(db.conn).checkpoint(key, tmp_path / "checkpoints", at=old + 200)  # size 204, the boundary to come
    store.write_batch(db, [replace(opened("s3", "ledger"), started_at=new)] + [op("s3", at=new + i) for i in range(50)])
    db.conn.close()
    return path


def pruned(path, *, now=1011 * DAY, max_age_s=None, max_bytes=None, batch=7):
    db = store.open_db(path)
    try:
        return prune(Appender(db.conn), now=now, max_age_s=max_age_s, max_bytes=max_bytes, batch=batch)
    finally:
        db.conn.close()


def test_a_prune_by_age_deletes_the_old_prefix_in_batches_and_the_chain_still_verifies(audit):
    before = report_of(audit)
    assert before.ok and before.size == 255
    event = pruned(audit, max_age_s=5 * DAY)
    detail = json.loads(event.detail)
    # Entries 1..204 are older than five days (sessions s1, s2 opened; the start event; 200 operations; s1's
    # close): deleted in batches of 7, each its own transaction with its own prunes row.
    assert detail["deleted"]["operations"] == 200 and detail["deleted"]["events"] == 1
    # s1 and s2 were opened in the first batch and have rows after it: their rows stay, each with a retained
    # change holding its state (s2 is still open; s1's own rows ran on past the first batch).
    assert detail["deleted"]["retained_changes"] == 2 and "sessions" not in detail["deleted"]
    assert detail["batches"] == 30 and detail["reason"].startswith("older than 5 days")
    assert detail["bytes_before"] >= detail["bytes_after"] > 0
    report = report_of(audit)
    assert report.ok, report.faults
    assert report.rows["operations"] == 50 and report.rows["prunes"] == 30
    assert report.pruned["entries"] == 204 and report.pruned["first_seq"] == 205
    assert report.size == before.size + 2 + 30 + 1  # the retained changes, the prunes rows, the event
    db = store.open_db(audit)
    assert db.execute("SELECT kind FROM events WHERE kind = 'audit-pruned'").fetchall() == [("audit-pruned",)]
    db.conn.close()
    # The checkpoint before the boundary (203) went with the rows it covered; the one at it is checked
    # against the boundary hash.
    assert report.checkpoints == [{"source": "checkpoints table", "size": 204, "ok": True}]
    # A second run with nothing older to delete changes nothing.
    assert pruned(audit, max_age_s=5 * DAY) is None
    # Once everything is old, the prune passes s1's retained change: s1 is closed with nothing left, and goes.
    detail = json.loads(pruned(audit, now=time.time() + 10 * DAY, max_age_s=5 * DAY).detail)
    assert detail["deleted"]["sessions"] == 1 and report_of(audit).ok
    db = store.open_db(audit)
    assert [r[0] for r in db.execute("SELECT session_id FROM sessions ORDER BY session_id")] == ["s2", "s3"]
    db.conn.close()


def test_the_open_session_whose_changes_were_pruned_still_rebuilds_and_its_close_is_checked(audit):
    pruned(audit, max_age_s=5 * DAY)
    db = store.open_db(audit)
    store.write_batch(db, [SessionClosed("s2", 1011 * DAY, 9, 9, 100, "client closed the connection")])
    db.conn.close()
    assert report_of(audit).ok
    sql(audit, "UPDATE sessions SET close_reason = 'nothing to see' WHERE session_id = 's2'")
    fault = report_of(audit).faults[0]
    assert (fault.table, fault.row) == ("sessions", "session_id s2") and "close_reason" in fault.what


def test_a_prune_by_size_brings_the_database_under_max_bytes_and_shrinks_the_file(tmp_path):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    for start in range(0, 20_000, 2000):
        store.write_batch(db, [opened(f"s{start}")] + [op(f"s{start}", at=100.0 + start + i) for i in range(2000)]
                          + [SessionClosed(f"s{start}", 100.0 + start + 2000, 1, 1, 2000, "client closed")])
    total, used = sizes(db.conn)
    db.conn.close()
    limit = max(used // 2, 1 << 20)
    event = pruned(path, max_bytes=limit, batch=1000)
    detail = json.loads(event.detail)
    assert detail["reason"].startswith(f"database over max_bytes {limit:,}")
    assert detail["bytes_after"] <= limit < detail["bytes_before"]  # incremental vacuum gave the pages back
    assert detail["vacuum_steps"] >= 1
    report = report_of(path)
    assert report.ok, report.faults
    assert 0 < report.rows["operations"] < 20_000 and report.pruned["entries"] == detail["entries"]


@pytest.mark.parametrize("statement, table, what", [
    ("UPDATE operations SET records = 0 WHERE id = 220", "operations", "does not hash to its chain_hash"),
    ("DELETE FROM operations WHERE id = 230", "operations", "(chain_seq 235) are missing: deleted, or"),
    ("UPDATE prunes SET first_seq = 100 WHERE id = (SELECT max(id) FROM prunes)", "prunes",
     "does not hash to its chain_hash"),
    ("UPDATE prunes SET boundary_hash = zeroblob(32) WHERE id = (SELECT max(id) FROM prunes)", "session_changes",
     "does not hash to its chain_hash"),
])
def test_a_tamper_after_a_prune_is_named(audit, statement, table, what):
    pruned(audit, max_age_s=5 * DAY)
    sql(audit, statement)
    faults = report_of(audit).faults
    # (A prunes row edited to move the boundary is named by its own hash, after what the moved start shows.)
    assert any(f.table == table and what in f.what for f in faults), faults


def test_a_prefix_deleted_without_a_recorded_prune_is_caught(audit):
    sql(audit, "".join(f"DELETE FROM {t} WHERE chain_seq <= 10;" for t in
                       ("operations", "events", "session_changes")))
    fault = report_of(audit).faults[0]
    assert fault.chain_seq == 11 and "chain_seq 1..10) are missing: deleted with no prune recorded" in fault.what


def test_a_prefix_deleted_past_the_recorded_boundary_is_caught(audit):
    pruned(audit, max_age_s=5 * DAY)
    sql(audit, "DELETE FROM operations WHERE chain_seq <= 215; DELETE FROM session_changes WHERE chain_seq <= 215")
    fault = report_of(audit).faults[0]
    assert fault.chain_seq == 216 and "chain_seq 205..215) are missing: deleted past the prune boundary" in fault.what


def test_the_prune_rows_deleted_with_their_prefix_are_caught(audit):
    """Removing every prunes row makes the boundary's absence a prefix deletion again."""
    pruned(audit, max_age_s=5 * DAY)
    sql(audit, "DELETE FROM prunes")
    faults = report_of(audit).faults
    assert any("deleted with no prune recorded" in f.what for f in faults), faults


def test_a_prune_refuses_to_delete_a_tampered_prefix_and_deletes_nothing(audit):
    sql(audit, "UPDATE operations SET topics = '{}' WHERE id = 50")
    with pytest.raises(PruneRefused, match=r"operations id 50 chain_seq 52: its content does not hash"):
        pruned(audit, max_age_s=5 * DAY, batch=500)
    sql(audit, "UPDATE operations SET topics = '{\"orders\": [0]}' WHERE id = 50")
    assert report_of(audit).ok and read_boundary(sqlite3.connect(audit)).first_seq == 1
    sql(audit, "UPDATE sessions SET close_reason = 'x' WHERE session_id = 's1'")
    with pytest.raises(PruneRefused, match="sessions session_id s1: close_reason is 'x'"):
        pruned(audit, max_age_s=5 * DAY, batch=500)


def test_a_checkpoint_older_than_the_boundary_is_unchecked_not_a_fault_and_a_later_one_is_checked(audit, tmp_path):
    from appliance.audit.checkpoint import verify as verify_note
    key = load_or_create_signing_key(tmp_path / "audit-signing.key", "gw1/appliance-audit")
    old = verify_note((tmp_path / "checkpoints" / "203.txt").read_text(), key.verifier, "203.txt")
    pruned(audit, max_age_s=5 * DAY)
    db = store.open_db(audit)
    later = Appender(db.conn).checkpoint(key, tmp_path / "checkpoints")
    db.conn.close()
    report = report_of(audit, [("203.txt", old), (f"{later.size}.txt", later)])
    assert report.ok, report.faults
    unchecked, checked = report.checkpoints[-2:]
    assert unchecked["ok"] is None and "before the prune boundary" in unchecked["unchecked"]
    assert checked["ok"] is True
    # A later checkpoint still catches the chain recomputed behind it.
    sql(audit, "DELETE FROM operations WHERE chain_seq = (SELECT max(chain_seq) FROM operations)")
    assert not report_of(audit, [(f"{later.size}.txt", later)]).ok


def test_a_prune_racing_a_cli_appender_keeps_the_chain_valid(tmp_path):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    store.write_batch(db, [opened("s1")] + [op("s1", at=100.0 + i) for i in range(5000)]
                      + [SessionClosed("s1", 6000.0, 1, 1, 5000, "client closed")])
    script = ("import sys; from pathlib import Path; from appliance.audit import store; "
              "from appliance.audit.records import Event\n"
              "for i in range(60): store.record_event(Path(sys.argv[1]), Event(at=9e9 + i, kind='enroll', message='e'))")
    cli = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT)
    pruner = Pruner(Appender(db.conn), now=9e9, max_age_s=1.0, batch=50)
    while pruner.step():
        pass
    assert cli.wait(timeout=60) == 0
    db.conn.close()
    report = report_of(path)
    assert report.ok, report.faults
    assert report.rows["operations"] == 0 and report.rows["events"] == 60 and report.pruned["entries"] >= 5002


def test_the_writer_thread_prunes_between_its_batches_and_audits_the_run(audit):
    from appliance.audit.writer import AuditWriter
    writer = AuditWriter(audit, flush_ms=5, max_age_days=5.0, prune_batch=10)
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            writer.submit(op("s3", at=2e9 + i))
            i += 1
            stop.wait(0.001)

    producer = threading.Thread(target=produce)
    producer.start()
    writer.enforce_retention()
    for _ in range(500):
        writer.flush()
        if writer.last_prune is not None:
            break
    stop.set()
    producer.join()
    writer.close()
    # Everything the fixture wrote is older than five days of today; the records submitted meanwhile are not.
    assert writer.last_prune["entries"] == 255 and writer.prune_error is None
    assert writer.last_prune["batches"] == 26
    report = report_of(audit)
    assert report.ok, report.faults
    db = store.open_db(audit)
    (detail,) = db.execute("SELECT detail FROM events WHERE kind = 'audit-pruned'").fetchone()
    db.conn.close()
    assert json.loads(detail)["first_seq"] == 256


def test_the_export_carries_the_prune_rows_so_a_siem_sees_the_cut(audit):
    from appliance.audit.replay import export_rows
    pruned(audit, max_age_s=5 * DAY)
    conn = sqlite3.connect(audit)
    rows = list(export_rows(conn, None, None))
    conn.close()
    cuts = [r for r in rows if r["record"] == "prune"]
    assert len(cuts) == 30 and cuts[-1]["first_seq"] == 205 and len(cuts[-1]["boundary_hash"]) == 64
    json.dumps(rows)  # every value is JSON


def test_verify_as_the_operator_runs_it_reports_the_prune_and_an_unrecorded_cut(audit, tmp_path):
    import subprocess as sp
    (tmp_path / "appliance.yaml").write_text(f"state_dir: {tmp_path}\n")
    pruned(audit, max_age_s=5 * DAY)

    def run():
        return sp.run([sys.executable, "-m", "appliance", "--config", str(tmp_path / "appliance.yaml"), "audit",
                       "verify"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    result = run()
    assert result.returncode == 0, result.stderr
    assert "pruned by retention: entries 1..204" in result.stdout and "starts at chain_seq 205" in result.stdout
    sql(audit, "DELETE FROM prunes")
    result = run()
    assert result.returncode == 1 and "deleted with no prune recorded" in result.stderr


def _hash_at(path, seq):
    from appliance.audit.chain import CHAINED_TABLES

    conn = sqlite3.connect(path)
    try:
        for table in CHAINED_TABLES:
            row = conn.execute(f"SELECT chain_hash FROM {table} WHERE chain_seq = ?", (seq,)).fetchone()
            if row is not None:
                return bytes(row[0])
    finally:
        conn.close()
    raise AssertionError(f"no entry at chain_seq {seq}")


def test_a_prunes_row_forged_with_the_sqlite3_shell_to_cover_a_deleted_prefix_is_caught(audit):
    """Someone holding the file appends a prunes row by hand (the real boundary hash of entry 100, the next
    chain_seq, a hash they cannot make canonical with the shell) and deletes entries 1..100 under it."""
    head = max(r[0] for r in sqlite3.connect(audit).execute(
        "SELECT max(chain_seq) FROM operations UNION SELECT max(chain_seq) FROM events "
        "UNION SELECT max(chain_seq) FROM session_changes"))
    boundary = _hash_at(audit, 100)
    conn = sqlite3.connect(audit)
    conn.execute("INSERT INTO prunes (at, first_seq, boundary_hash, deleted, reason, chain_seq, chain_hash) "
                 "VALUES (?, 101, ?, '{}', 'older than 90 days', ?, randomblob(32))",
                 (1011 * DAY, boundary, head + 1))
    for table in ("operations", "events", "session_changes"):
        conn.execute(f"DELETE FROM {table} WHERE chain_seq <= 100")
    conn.commit()
    conn.close()
    report = report_of(audit)
    assert not report.ok
    assert any(f.table == "prunes" for f in report.faults), report.faults


def test_a_forged_prune_made_with_the_appliances_own_code_is_in_the_report_not_hidden(audit):
    """The limit of a hash chain: root running the appliance's own pruner can cut any prefix, and the chain
    verifies. What it cannot do is cut it silently: the verify report names the prune (its first kept chain_seq
    and when it really ran), and checkpoints kept off the gateway from before it are reported as unchecked
    (test above), so a prune nobody's retention settings explain stands out."""
    pruned(audit, now=1011 * DAY, max_age_s=0.5 * DAY)  # "retention" of half a day, run by hand
    report = report_of(audit)
    assert report.ok
    assert report.pruned is not None and report.pruned["first_seq"] > 200
    assert abs(report.pruned["last_prune_at"] - time.time()) < 60  # when it really ran, not the "now" it was given
