"""Retention enforced by the serving appliance: old sessions go, newer ones stay, the record still verifies.

The appliance is restarted with `audit_retention: {max_age_days: 0.00025, interval_s: 1}` (21.6 s), so the
test sees a prune by age within a minute. A session older than that is deleted whole (its operations, its
changes, its row); a newer one stays and replays; `audit verify` passes from the prune boundary the chained
prunes rows record. The configuration is put back after it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import time

import yaml

from tests.integration.conftest import BROKER4, PY, STATE, audit, cli, eventually

MAX_AGE_DAYS = 0.00025
MAX_AGE_S = MAX_AGE_DAYS * 86400


def _rows(query: str, *args) -> list[tuple]:
    conn = sqlite3.connect(f"file:{STATE / 'audit.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def _session_of(topic: str) -> str:
    (row,) = _rows("SELECT DISTINCT session_id FROM operations WHERE api_name = 'Produce' AND topics LIKE ?",
                   f"%{topic}%")
    return row[0]


def _produce(workload, topic: str) -> str:
    result = workload.client("confluent.py", BROKER4, topic, "--create", "--produce", "3")
    assert result["errors"] == [], result
    return eventually(lambda: _session_of(topic) if _rows(
        "SELECT 1 FROM operations WHERE api_name = 'Produce' AND topics LIKE ?", f"%{topic}%") else None,
        timeout=10, message=f"the Produce to {topic} audited")


def test_the_serving_appliance_prunes_by_age_and_the_record_verifies_from_the_boundary(appliance, config_path,
                                                                                        enroll):
    original = config_path.read_text()
    settings = yaml.safe_load(original)
    settings["audit_retention"] = {"max_age_days": MAX_AGE_DAYS, "interval_s": 1}
    appliance.stop()
    config_path.write_text(yaml.safe_dump(settings))
    try:
        appliance.start()
        status = eventually(lambda: (appliance.status() or {}).get("audit", {}).get("retention"), timeout=10,
                            message="status showing the retention in force")
        assert status["max_age_days"] == MAX_AGE_DAYS, status

        workload = enroll("orders")
        old_topic, new_topic = f"ret-old-{secrets.token_hex(3)}", f"ret-new-{secrets.token_hex(3)}"
        old_session = _produce(workload, old_topic)
        produced_old = time.time()
        time.sleep(MAX_AGE_S * 0.6)
        new_session = _produce(workload, new_topic)

        # The old session goes whole once it is past the age; the new one, younger, stays.
        eventually(lambda: not _rows("SELECT 1 FROM operations WHERE session_id = ?", old_session),
                   timeout=MAX_AGE_S + 20, interval=0.5, message="the old session's operations pruned")
        pruned_after = time.time() - produced_old
        assert pruned_after >= MAX_AGE_S - 1, f"pruned {pruned_after:.1f} s after, before its age"
        assert _rows("SELECT 1 FROM operations WHERE session_id = ?", new_session), "the young session was pruned"
        eventually(lambda: not _rows("SELECT 1 FROM sessions WHERE session_id = ?", old_session), timeout=10,
                   message="the old session's row gone with its changes")
        assert not _rows("SELECT 1 FROM session_changes WHERE session_id = ?", old_session)

        runs = [json.loads(e["detail"]) for e in audit(config_path, "events", "--kind", "audit-pruned")]
        assert runs, "no audit-pruned event"
        assert sum(r["deleted"].get("operations", 0) for r in runs) > 0, runs
        assert all(r["reason"] and r["first_seq"] > 1 for r in runs), runs

        result = subprocess.run([PY, "-m", "appliance", "--config", str(config_path), "audit", "verify", "--json"],
                                capture_output=True, text=True, timeout=120)
        report = json.loads(result.stdout)
        assert result.returncode == 0 and report["ok"], report
        assert report["pruned"]["first_seq"] > 1 and report["pruned"]["entries"] > 0, report["pruned"]

        gone = cli(config_path, "replay", old_session, check=False)
        assert gone.returncode != 0 and old_session[:12] in gone.stderr, gone.stderr
        kept = cli(config_path, "replay", new_session).stdout
        assert "Produce" in kept and new_topic in kept, kept
    finally:
        appliance.stop()
        config_path.write_text(original)
        appliance.start()


FLOOD = """
import json, socket, sys, time
sys.path.insert(0, %r)
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from tests.kafka.builders import request_frame
host, port = sys.argv[1].rsplit(":", 1)
topic, seconds = sys.argv[2], float(sys.argv[3])
sock = socket.create_connection((host, int(port)), timeout=30)
sent = got = 0
buffer = b""
started = time.monotonic()
while time.monotonic() - started < seconds:
    batch = b"".join(request_frame(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name=topic),),
        allow_auto_topic_creation=False, include_topic_authorized_operations=False), correlation_id=sent + i)
        for i in range(200))
    sock.sendall(batch)
    sent += 200
    while got < sent:
        buffer += sock.recv(1 << 20)
        while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
            buffer = buffer[4 + int.from_bytes(buffer[:4], "big"):]
            got += 1
print(json.dumps({"sent": sent, "answered": got, "seconds": time.monotonic() - started}))
""" % str(__import__("pathlib").Path(__file__).resolve().parents[2])


def test_every_refused_request_of_a_flooding_workload_is_recorded_and_its_rate_is_what_max_bytes_must_allow_for(
        appliance, enroll):
    """A risk, measured: a workload with no right to a topic asks for its metadata as fast as one connection goes.
    Each refusal is an operations row (none is sampled or dropped: the property this test holds), about 360
    bytes in the database; so with audit_retention.max_bytes set, such a flood moves the prune boundary
    forward at this rate, and a workload can push the record of what it did before out of the database.
    Size max_bytes (and export the record off the gateway) for the worst rate, not the usual one."""
    bot = enroll("approval-bot")  # may describe apr- topics only
    topic = f"victim-{secrets.token_hex(3)}"
    out, err = bot.popen([PY, "-c", FLOOD, BROKER4, topic, "5"]).communicate(timeout=60)
    assert out.strip(), err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["answered"] == result["sent"], result
    recorded = eventually(lambda: (lambda n: n if n >= result["sent"] else None)(
        _rows("SELECT count(*) FROM operations WHERE topics LIKE ?", f"%{topic}%")[0][0]),
        timeout=60, message="every refused request recorded")
    assert recorded == result["sent"]
    rate = result["sent"] / result["seconds"]
    print(f"\nFLOOD: {result['sent']} refused Metadata requests in {result['seconds']:.1f} s on one connection: "
          f"{rate:,.0f}/s, about {rate * 360 / 1e6:.1f} MB/s of audit")
