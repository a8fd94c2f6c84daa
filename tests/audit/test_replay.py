"""`appliance replay` and `appliance audit export` over a real audit database written the way serve writes it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from appliance.audit import store
from appliance.audit.records import Authentication, Event, Operation, SessionClosed, SessionOpened
from appliance.audit.replay import EXPORT_SCHEMA, ReplayError, export_rows, timeline

SID = "3f9c0e2a71aa4c1e9d0b2c3d4e5f6a7b"


def opened(sid=SID, at=100.0):
    return SessionOpened(session_id=sid, started_at=at, identity="orders", groups=("payments",), cgroup_id=7,
                         cgroup_path="/orders", enrolled_cgroup_id=7, pid=4242, uid=1000, gid=1000,
                         command="python producer.py --password ***", client_address="127.0.0.1:50000",
                         broker_address="127.0.0.1:19092")


def operation(at, api="Produce", decision="allowed", checks='[["topic","orders",\"produce\","allow","orders-rw"]]',
              error=0, records=3):
    return Operation(session_id=SID, at=at, api_key=0, api_name=api, api_version=9, correlation_id=int(at),
                     client_id="c", topics='{"orders": [0]}', group_id=None, records=records, record_bytes=30,
                     request_bytes=100, response_bytes=50, error_code=error, latency_ms=1.25, outcome="forwarded",
                     decision=decision, checks=checks, masked=None)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "audit.db"
    database = store.open_db(path)
    store.write_batch(database, [
        opened(),
        Authentication(session_id=SID, at=100.1, kind="initial", mechanism="OAUTHBEARER", outcome="ok",
                       reason="token of orders", method="token", identity="orders"),
        operation(100.2),
        Event(at=100.3, kind="approval-requested", message="approval request apr-1 held", identity="orders",
              session_id=SID, detail='{"request": "apr-1"}'),
        operation(100.4, api="CreateTopics", decision="refused",
                  checks='[["topic","vault","create","deny","vault-needs-approval"]]', error=29, records=None),
        SessionClosed(session_id=SID, ended_at=101.0, bytes_from_client=500, bytes_to_client=300, requests=2,
                      close_reason="client closed the connection"),
        opened(sid="ffffffff00000000", at=200.0),
    ])
    yield path, database
    database.conn.close()


def test_a_session_replays_as_a_timeline_in_order(db):
    _, database = db
    session, entries = timeline(database.conn, SID[:8])
    assert session["session_id"] == SID
    assert [e.kind for e in entries] == ["connect", "authentication", "request", "event", "request", "close"]
    assert "orders connected from 127.0.0.1:50000 (pid 4242, uid 1000, cgroup /orders)" in entries[0].text
    assert entries[2].text == "Produce v9 orders[0]: allowed by orders-rw, forwarded, 3 records, 1.2 ms"
    assert "refused by vault-needs-approval" in entries[4].text and "error 29" in entries[4].text
    assert entries[3].text == "[approval-requested] approval request apr-1 held"
    assert entries[-1].text.startswith("closed: client closed the connection (2 requests")
    assert entries[0].text.endswith(": python producer.py --password ***")
    assert entries[0].detail["command"] == "python producer.py --password ***"
    _, later = timeline(database.conn, SID, after=100.3)
    assert [e.kind for e in later] == ["request", "close"]


@pytest.mark.parametrize("wanted, message", [("3f9c", "not a session id"), ("abcdef", "no session 'abcdef'"),
                                             ("3f9c0e2a' OR 1=1", "not a session id")])
def test_a_session_not_named_clearly_is_an_error_that_says_so(db, wanted, message):
    with pytest.raises(ReplayError, match=message):
        timeline(db[1].conn, wanted)


def test_export_writes_every_row_of_the_span_in_the_documented_schema_in_chain_order(db):
    rows = list(export_rows(db[1].conn, None, None))
    assert {r["schema"] for r in rows} == {EXPORT_SCHEMA}
    kinds = [r["record"] for r in rows]
    assert kinds.count("operation") == 2 and kinds.count("session") == 2 and "session-change" in kinds
    chained = [r["chain_seq"] for r in rows if r.get("chain_seq") is not None]
    assert chained == sorted(chained) and len(chained) == len(set(chained))
    assert all(isinstance(r["chain_hash"], str) for r in rows if r.get("chain_seq") is not None)
    only_the_second = list(export_rows(db[1].conn, 150.0, None))
    assert [r["record"] for r in only_the_second if r["record"] == "session"] == ["session"]
    assert not [r for r in only_the_second if r["record"] == "operation"]


def test_the_commands_print_the_timeline_and_the_export(db, tmp_path):
    path, _ = db
    config = tmp_path / "appliance.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "audit_dir": str(path.parent)}))
    run = lambda *args: subprocess.run([sys.executable, "-m", "appliance", "--config", str(config), *args],
                                       capture_output=True, text=True, timeout=60)
    shown = run("replay", SID[:10])
    assert shown.returncode == 0, shown.stderr
    assert "Produce v9 orders[0]: allowed by orders-rw" in shown.stdout and "closed:" in shown.stdout
    lines = run("replay", SID, "--json").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in lines][0] == "connect"
    missing = run("replay", "0123456789")
    assert missing.returncode != 0 and "no session '0123456789'" in missing.stderr
    out = tmp_path / "export.jsonl"
    exported = run("audit", "export", "--output", str(out))
    assert exported.returncode == 0, exported.stderr
    assert (out.stat().st_mode & 0o777) == 0o600
    assert all(json.loads(line)["schema"] == EXPORT_SCHEMA for line in out.read_text().splitlines())
    backwards = run("audit", "export", "--since", "1h", "--until", "2h")
    assert backwards.returncode != 0 and "is not after --since" in backwards.stderr
