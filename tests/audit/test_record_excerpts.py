"""Record excerpts in real SQLite files: chained after their operation, verified, pruned, exported, replayed,
and no clear card number or e-mail address anywhere in the file's bytes (the WAL included)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from appliance.audit import store
from appliance.audit.prune import prune
from appliance.audit.records import RecordedOperation
from appliance.audit.replay import export_rows, timeline
from appliance.audit.append import Appender
from appliance.audit.verify import verify
from appliance.masking.excerpts import Budget, plan_for, take_topic
from appliance.policy.parser import parse_policy
from tests.audit.test_store import op, opened
from tests.masking.builders import Rec, build_batch

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"
POLICY = parse_policy("""
version: 1
recording:
  - {name: pay, identities: [orders], topics: ["prefix:pay"], depth: excerpts, value_bytes: 64}
masking:
  - {name: pii, topics: ["prefix:pay"], on: [fetch], detectors: [card, email]}
""", source="t")
DAY = 86400.0


def recorded(session_id="s1", at=101.0, n=3, budget=None):
    batch = build_batch([Rec(json.dumps({"i": i, "card": CARD, "mail": EMAIL}).encode(), key=f"k{i}".encode())
                         for i in range(n)], base_offset=10)
    plan = plan_for(POLICY, "orders", "pay", None)
    sources = take_topic("pay", [(0, batch)], plan, budget=budget or Budget())
    return RecordedOperation(replace(op(session_id, '{"pay": [0]}', at), api_key=1, api_name="Fetch"), "fetch",
                             tuple(sources))


def clear_bytes(path: Path) -> list[str]:
    found = []
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            data = p.read_bytes()
            for secret in (CARD, CARD.replace(" ", ""), EMAIL):
                if secret.encode() in data:
                    found.append(f"{p.name}: {secret}")
    return found


def test_excerpts_are_chained_after_their_operation_and_verify(tmp_path):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    budget = Budget()
    store.write_batch(db, [opened(), op(), recorded(budget=budget), op(at=102.0)])
    assert budget.held == 0  # built and given back
    rows = list(db.query("SELECT * FROM record_excerpts ORDER BY chain_seq"))
    ops = list(db.query("SELECT id, chain_seq FROM operations ORDER BY chain_seq"))
    assert [r["operation_id"] for r in rows] == [ops[1]["id"]] * 3
    # in the same transaction, after the operations rows of its batch
    assert [r["chain_seq"] for r in rows] == [ops[-1]["chain_seq"] + 1 + i for i in range(3)]
    assert [r["offset"] for r in rows] == [10, 11, 12] and rows[0]["key"] == "k0"
    assert all("[REDACTED]" in r["value"] and len(r["value"].encode()) <= 64 for r in rows)
    report = verify(db.conn, None)
    assert report.ok and report.rows["record_excerpts"] == 3, [str(f) for f in report.faults]
    db.conn.close()
    assert clear_bytes(path) == []


def test_an_edited_or_deleted_excerpt_is_found(tmp_path):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    store.write_batch(db, [opened(), recorded(), op(at=102.0)])
    db.conn.execute("UPDATE record_excerpts SET value = 'nothing to see' WHERE offset = 11")
    faults = [str(f) for f in verify(db.conn, None).faults]
    assert any(f.startswith("record_excerpts id 2") and "does not hash" in f for f in faults), faults
    db.conn.execute("DELETE FROM record_excerpts WHERE offset = 10")
    faults = [str(f) for f in verify(db.conn, None).faults]
    assert any("are missing" in f for f in faults), faults


def test_retention_deletes_excerpts_with_the_prefix_and_the_rest_verifies(tmp_path):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    old, new = 1000 * DAY, 1010 * DAY
    store.write_batch(db, [replace(opened(), started_at=old)] + [recorded(at=old + i) for i in range(5)])
    store.write_batch(db, [replace(opened("s2"), started_at=new)] + [recorded("s2", at=new + i) for i in range(2)])
    event = prune(Appender(db.conn), now=new + 10, max_age_s=5 * DAY)
    assert event is not None and json.loads(event.detail)["deleted"]["record_excerpts"] == 15
    left = [r["session_id"] for r in db.query("SELECT session_id FROM record_excerpts")]
    assert left == ["s2"] * 6
    report = verify(db.conn, None)
    assert report.ok and report.pruned is not None, [str(f) for f in report.faults]


def test_export_and_replay_show_the_excerpts(tmp_path, monkeypatch):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    store.write_batch(db, [replace(opened(), session_id="abcdef01"), recorded("abcdef01"), op("abcdef01", at=102.0)])
    exported = [r for r in export_rows(db.conn, None, None) if r["record"] == "record-excerpt"]
    assert len(exported) == 3 and exported[0]["schema"] == "appliance.audit.export/1"
    assert {"operation_id", "topic", "partition", "offset", "key", "value", "value_length", "chain_seq",
            "chain_hash"} <= set(exported[0])
    _, entries = timeline(db.conn, "abcdef")
    request = next(e for e in entries if e.kind == "request" and e.detail.get("excerpts"))
    assert [x["offset"] for x in request.detail["excerpts"]] == [10, 11, 12]
    assert "excerpt pay[0]@10 key=k0 value=" in request.text and CARD not in request.text
    db.conn.close()


def test_the_replay_command_prints_excerpts_in_text_and_json(tmp_path):
    path = tmp_path / "audit.db"
    db = store.open_db(path)
    store.write_batch(db, [replace(opened(), session_id="abcdef123456"), recorded("abcdef123456")])
    db.conn.close()
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    repo = Path(__file__).resolve().parents[2]
    base = [sys.executable, "-m", "appliance", "--config", str(config), "replay", "abcdef"]
    text = subprocess.run(base, capture_output=True, text=True, cwd=repo, env={"PYTHONPATH": str(repo)})
    assert text.returncode == 0, text.stderr
    assert text.stdout.count(" excerpt pay[0]@") == 3
    out = subprocess.run(base + ["--json"], capture_output=True, text=True, cwd=repo, env={"PYTHONPATH": str(repo)})
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    assert sum(len(e.get("excerpts", [])) for e in entries) == 3
