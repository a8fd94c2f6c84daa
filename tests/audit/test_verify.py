"""`audit verify` against an attacker with the sqlite3 shell: each way of changing the file is caught and named.

The database is a real file written through the write path (and the CLI's own
process for the interleaving test); each tamper is done by /usr/bin/sqlite3,
as someone holding the file but not the appliance's code would.
"""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from appliance.audit import store
from appliance.audit.append import Appender
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.records import Authentication, Event, Gap, SessionClosed
from tests.audit.test_store import op, opened

SQLITE3 = shutil.which("sqlite3")
ROOT = Path(__file__).resolve().parents[2]  # `python -m appliance` from here runs this checkout's code


@pytest.fixture
def state(tmp_path):
    """A state dir with an audit of two sessions, 40 operations, events, a gap and a signed checkpoint."""
    if SQLITE3 is None:
        pytest.fail("the sqlite3 shell is missing: scripts/setup installs Debian's sqlite3")
    (tmp_path / "appliance.yaml").write_text(f"state_dir: {tmp_path}\n")
    db = store.open_db(tmp_path / "audit.db")
    store.write_batch(db, [opened("s1"), Event(at=99.0, kind="start", message="serving")]
                      + [op("s1", at=100.0 + i) for i in range(20)])
    store.write_batch(db, [opened("s2", "billing"), Authentication("s2", 120.5, "initial", "PLAIN", "ok", "fine",
                                                                   "static", "billing", '["b"]')]
                      + [op("s2", at=121.0 + i) for i in range(20)])
    store.write_batch(db, [SessionClosed("s1", 150.0, 500, 60, 20, "client closed the connection"),
                           Gap(130.0, 131.0, 3, "3 by write error"), Event(at=151.0, kind="stop", message="m")])
    key = load_or_create_signing_key(tmp_path / "audit-signing.key", "gw1/appliance-audit")
    Appender(db.conn).checkpoint(key, tmp_path / "checkpoints")
    db.conn.close()
    return tmp_path


def sql(state, statement):
    subprocess.run([SQLITE3, str(state / "audit.db"), statement], check=True, capture_output=True, text=True)


def verify(state, *args):
    # A process of its own, as the operator runs it (and click's per-command help option, cached on first
    # use in this process, stays as docs/cli.md's generator expects).
    result = subprocess.run([sys.executable, "-m", "appliance", "--config", str(state / "appliance.yaml"), "audit",
                             "verify", "--json", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return result.returncode, (json.loads(result.stdout) if result.returncode in (0, 1) else result.stderr)


def first_fault(state, *args):
    code, report = verify(state, *args)
    assert code == 1 and not report["ok"], report
    return report["faults"][0]


def test_an_untouched_audit_verifies(state):
    code, report = verify(state)
    assert code == 0 and report["ok"], report
    assert report["size"] == 48 and report["rows"]["operations"] == 40 and report["sessions"] == 2
    assert report["checkpoints"] == [{"source": "checkpoints table", "size": 48, "ok": True}]


def test_an_edited_value_is_named(state):
    sql(state, "UPDATE operations SET records = 0 WHERE id = 7")
    fault = first_fault(state)
    assert (fault["table"], fault["row"], fault["chain_seq"]) == ("operations", "id 7", 8)
    assert "does not hash to its chain_hash" in fault["what"]


def test_a_row_deleted_in_the_middle_is_named_by_the_row_after_it(state):
    sql(state, "DELETE FROM operations WHERE id = 10")
    fault = first_fault(state)
    assert (fault["table"], fault["row"], fault["chain_seq"]) == ("operations", "id 11", 12)
    assert "chain_seq 11) are missing" in fault["what"]


def test_two_rows_with_their_contents_swapped_are_named(state):
    columns = "session_id, at, api_key, api_name, records, outcome"
    sql(state, f"""CREATE TEMP TABLE a AS SELECT {columns} FROM operations WHERE id = 3;
                   CREATE TEMP TABLE b AS SELECT {columns} FROM operations WHERE id = 30;
                   UPDATE operations SET ({columns}) = (SELECT {columns} FROM b) WHERE id = 3;
                   UPDATE operations SET ({columns}) = (SELECT {columns} FROM a) WHERE id = 30;""")
    fault = first_fault(state)
    assert (fault["table"], fault["row"]) == ("operations", "id 3")


def test_reordered_chain_seqs_are_named(state):
    sql(state, "UPDATE operations SET chain_seq = -1 WHERE id = 4; UPDATE operations SET chain_seq = 5 WHERE id = 5;"
               "UPDATE operations SET chain_seq = 6 WHERE id = 4")
    fault = first_fault(state)
    assert (fault["table"], fault["row"], fault["chain_seq"]) == ("operations", "id 5", 5)


def test_a_deleted_tail_is_caught_by_the_head_and_with_head_and_checkpoints_gone_only_by_an_exported_checkpoint(state):
    exported = state / "published"
    shutil.copytree(state / "checkpoints", exported)
    sql(state, "DELETE FROM gaps")  # the last entry
    fault = first_fault(state)
    assert fault["table"] == "chain_head" and "entry 48 was deleted from the tail" in fault["what"]
    # The attacker also moves the head back and drops the stored checkpoints: the database alone looks whole.
    sql(state, "UPDATE chain_head SET seq = 47, hash = (SELECT chain_hash FROM session_changes WHERE chain_seq = 47);"
               "DELETE FROM checkpoints")
    code, report = verify(state)
    assert code == 0, report
    fault = first_fault(state, "--checkpoint", str(exported / "48.txt"))
    assert fault["table"] == "checkpoint" and "now has 47: entry 48 was deleted (truncated)" in fault["what"]


def test_an_edited_close_reason_is_named_by_its_session(state):
    sql(state, "UPDATE sessions SET close_reason = 'nothing to see' WHERE session_id = 's1'")
    fault = first_fault(state)
    assert (fault["table"], fault["row"]) == ("sessions", "session_id s1")
    assert "close_reason is 'nothing to see', but its recorded changes" in fault["what"]


def test_a_forged_checkpoint_signature_is_named(state, tmp_path_factory):
    forger = load_or_create_signing_key(tmp_path_factory.mktemp("forger") / "k.key", "gw1/appliance-audit")
    db = store.open_db(state / "audit.db")
    note = db.execute("SELECT note FROM checkpoints").fetchone()[0]
    db.conn.close()
    from appliance.audit.checkpoint import make
    forged = make(48, bytes(32), forger, at=1.0)[1]
    sql(state, f"UPDATE checkpoints SET note = '{forged}', root_hash = zeroblob(32)")
    fault = first_fault(state)
    assert fault["table"] == "checkpoints" and "no signature by the key gw1/appliance-audit" in fault["what"]
    (state / "forged.txt").write_text(forged)
    code, output = verify(state, "--checkpoint", str(state / "forged.txt"))
    assert code == 2 and "forged.txt: no signature by the key gw1/appliance-audit" in output
    assert note  # the genuine one was replaced


def test_a_chain_recomputed_after_an_edit_is_caught_only_against_an_exported_checkpoint(state):
    exported = state / "published"
    shutil.copytree(state / "checkpoints", exported)
    # Recomputing needs the canonical form and SHA-256: done here with the appliance's own code, as an
    # attacker who read it would; then the stored checkpoints are dropped (or re-signed with a stolen key).
    sql(state, "UPDATE operations SET topics = '{\"other\": [0]}' WHERE id = 2; DELETE FROM checkpoints")
    subprocess.run([sys.executable, "-c", RECHAIN, str(state / "audit.db")], check=True, cwd=ROOT)
    code, report = verify(state)
    assert code == 0, report  # the database alone is consistent
    fault = first_fault(state, "--checkpoint", str(exported / "48.txt"))
    assert fault["table"] == "checkpoint" and "changed (and the chain recomputed) since" in fault["what"]


RECHAIN = """
import sqlite3, sys
from appliance.audit.chain import CHAINED_TABLES, GENESIS, TableEncoder, link_hash
conn = sqlite3.connect(sys.argv[1])
encoders = {t: TableEncoder.of(conn, t) for t in CHAINED_TABLES}
entries = sorted((seq, t, row) for t, e in encoders.items()
                 for *row, seq in conn.execute(f"SELECT {', '.join(e.columns)}, chain_seq FROM {t} WHERE chain_seq IS NOT NULL"))
previous = GENESIS
for seq, t, row in entries:
    previous = link_hash(previous, encoders[t].canonical(tuple(row))[0])
    conn.execute(f"UPDATE {t} SET chain_hash = ? WHERE chain_seq = ?", (previous, seq))
conn.execute("UPDATE chain_head SET hash = ?", (previous,))
conn.commit()
"""


def test_a_malformed_checkpoint_file_and_a_wrong_key_are_refused_naming_the_file(state):
    (state / "bad.txt").write_text("gw1/appliance-audit\nforty\nAAAA\n\n\u2014 gw1/appliance-audit AAAA\n")
    code, output = verify(state, "--checkpoint", str(state / "bad.txt"))
    assert code == 2 and "bad.txt line 2: the tree size must be a decimal number, got 'forty'" in output
    code, output = verify(state, "--key", "gw1/appliance-audit+00000000+AQ==")
    assert code == 2 and "--key: the verifier key is not an Ed25519 key" in output


def test_a_cli_event_between_the_writers_batches_keeps_the_chain_whole(state):
    """Two processes append: the serving process's writer and a CLI recording an event (appliance enroll)."""
    from appliance.audit.writer import AuditWriter
    writer = AuditWriter(state / "audit.db", flush_ms=5)
    script = ("import sys; from pathlib import Path; from appliance.audit import store; "
              "from appliance.audit.records import Event\n"
              "for i in range(30): store.record_event(Path(sys.argv[1]), Event(at=500.0 + i, kind='enroll', message='e'))")
    cli = subprocess.Popen([sys.executable, "-c", script, str(state / "audit.db")], cwd=ROOT)
    for i in range(300):
        writer.submit(op("s2", at=600.0 + i))
        if i % 10 == 0:
            writer.flush()
    assert cli.wait(timeout=60) == 0
    writer.close()
    code, report = verify(state)
    assert code == 0, report
    assert report["rows"]["events"] == 2 + 30 and report["size"] == 48 + 30 + 300


def test_an_old_database_upgrades_and_counts_its_rows_from_before_the_chain(tmp_path):
    path = tmp_path / "audit.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for name, migration in store.MIGRATIONS[:6]:
        conn.executescript(migration)
        conn.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    conn.execute("INSERT INTO sessions (session_id, started_at, identity) VALUES ('old', 1.0, 'orders')")
    conn.execute("INSERT INTO operations (session_id, at, api_key, api_name, api_version, outcome)"
                 " VALUES ('old', 2.0, 0, 'Produce', 9, 'forwarded')")
    conn.commit()
    conn.close()
    db = store.open_db(path)
    assert store.close_orphan_sessions(db, "stopped uncleanly") == 1
    store.write_batch(db, [opened("new"), op("new")])
    db.conn.close()
    (tmp_path / "appliance.yaml").write_text(f"state_dir: {tmp_path}\n")
    code, report = verify(tmp_path)
    assert code == 0, report
    assert report["pre_chain_rows"]["operations"] == 1 and report["pre_chain_sessions"] == 1
    assert report["size"] == 3 and report["rows"]["operations"] == 1
